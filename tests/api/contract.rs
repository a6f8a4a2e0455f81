//! The contract: the OpenAPI document served at `/openapi.json` against the
//! router it describes, the catalogue of error codes and the source that
//! produces them, each both ways; and two faults found from outside: an
//! optional field sent as `null`, and a 4xx without the error shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use formid_gateway::api::error::codes::{self, CODES};
use formid_gateway::api::{openapi, route_table};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::helpers::{spawn_app, Backend, TestApp, ADMIN_KEY, APPID, SEND_KEY, TEMPLATE};

/// The methods an OpenAPI path item can hold.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document's operations, as `(method, path)`.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(move |method| (method.to_string(), path.clone()))
        })
        .collect()
}

/// The routes the router serves, as `(method, path)`; HEAD is served with
/// every GET and documented as its companion, so it is left out where its
/// GET is there (a HEAD alone stays, and fails the comparison).
fn served() -> BTreeSet<(String, String)> {
    let table = route_table();
    let gets: BTreeSet<&String> = table
        .iter()
        .filter(|(method, _)| *method == actix_web::http::Method::GET)
        .map(|(_, path)| path)
        .collect();
    table
        .iter()
        .filter(|(method, path)| !(*method == actix_web::http::Method::HEAD && gets.contains(path)))
        .map(|(method, path)| (method.as_str().to_lowercase(), path.clone()))
        .collect()
}

async fn document_of(app: &TestApp) -> Value {
    let answer = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body
}

#[tokio::test]
async fn the_document_lists_every_route_the_router_serves_and_no_other() {
    let app = spawn_app(Backend::Sqlite).await;
    let document = document_of(&app).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let documented = operations(&document);
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "routes the document lacks: {undocumented:?}; documented routes that do not exist: {unserved:?}"
    );
    // Every operation is reachable by its id, which generators name methods by.
    let ids: Vec<&str> = documented
        .iter()
        .filter_map(|(method, path)| document["paths"][path][method]["operationId"].as_str())
        .collect();
    assert_eq!(ids.len(), documented.len(), "an operation without an id");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "operation ids repeat"
    );
    // Swagger UI shows the same document from assets inside the binary.
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("swagger"));
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()["location"], "/docs/");
}

/// The codes of an error response's schema.
fn codes_of(response: &Value) -> Vec<String> {
    let schema = &response["content"]["application/json"]["schema"];
    let variants: Vec<&Value> = match schema["anyOf"].as_array() {
        Some(variants) => variants.iter().collect(),
        None => vec![schema],
    };
    variants
        .iter()
        .filter_map(|variant| {
            variant["properties"]["error"]["properties"]["code"]["enum"].as_array()
        })
        .flatten()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_operation_lists_its_error_codes_from_the_catalogue() {
    let app = spawn_app(Backend::Sqlite).await;
    let document = document_of(&app).await;
    let mut problems = Vec::new();
    let mut documented_codes = BTreeSet::new();
    for (method, path) in operations(&document) {
        if method != "options" && openapi::errors_of(&method, &path).is_none() {
            problems.push(format!("{method} {path}: no entry in openapi::ERRORS"));
        }
        let responses = document["paths"][&path][&method]["responses"]
            .as_object()
            .unwrap();
        for (status, response) in responses {
            let status: u16 = status.parse().unwrap();
            for code in codes_of(response) {
                match codes::find(&code) {
                    Some(entry) if entry.statuses.contains(&status) => {}
                    Some(_) => problems.push(format!("{method} {path}: {code} with {status}")),
                    None => {
                        problems.push(format!("{method} {path}: {code} is not in the catalogue"))
                    }
                }
                documented_codes.insert(code);
            }
        }
    }
    for (method, path, _) in openapi::ERRORS {
        if document["paths"][path][method].is_null() {
            problems.push(format!(
                "openapi::ERRORS lists {method} {path}, which is no operation"
            ));
        }
    }
    documented_codes.extend(openapi::UNROUTED.iter().map(|code| code.to_string()));
    for code in CODES {
        if !documented_codes.contains(code.code) {
            problems.push(format!(
                "{} is in the catalogue and no operation answers it",
                code.code
            ));
        }
        if document["x-error-codes"][code.code].is_null() {
            problems.push(format!("x-error-codes lacks {}", code.code));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The source files that make the gateway's answers, without their tests.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, files: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(&path).unwrap();
                // A file's unit tests sit at its end, after `#[cfg(test)]`;
                // a `tests.rs` is all tests.
                let text = match text.find("#[cfg(test)]") {
                    Some(at) => text[..at].to_owned(),
                    None => text,
                };
                if !name.ends_with("tests.rs") {
                    files.push((name, text));
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    walk(&root.join("crates/core/src"), &mut files);
    files
}

/// The codes the source hands to an error answer: literal codes of
/// `ApiError::new`, of the helpers that take one, of rejections, of the
/// tables of WeChat's failures, and of the `code()` functions of the
/// features' errors.
fn produced_codes(files: &[(String, String)]) -> BTreeMap<String, String> {
    let patterns = [
        r#"ApiError::new\(\s*[\w:]+,\s*"([a-z0-9_]+)""#,
        r#"Rejection::new\(\s*"([a-z0-9_]+)""#,
        r#"Rejection \{\s*code: "([a-z0-9_]+)""#,
        r#"ItemRejection \{\s*index,\s*code: "([a-z0-9_]+)""#,
        r#"\binvalid\(\s*"([a-z0-9_]+)""#,
        r#"\(S::[A-Z_]+, "([a-z0-9_]+)""#,
        r#"\(\d+, S::[A-Z_]+, "([a-z0-9_]+)""#,
        r#"StatusCode::[A-Z_]+,\s*"([a-z0-9_]+)",\s*"[A-Z]"#,
    ]
    .map(|pattern| regex::Regex::new(pattern).unwrap());
    let code_functions = regex::Regex::new(
        r"fn (code|request_error_code|code_for_status)\([^)]*\) -> &'static str \{",
    )
    .unwrap();
    let arm = regex::Regex::new(r#"=> "([a-z0-9_]+)""#).unwrap();
    let mut produced = BTreeMap::new();
    for (name, text) in files {
        if name.ends_with("error/codes.rs") || name.ends_with("api/openapi.rs") {
            continue;
        }
        for pattern in &patterns {
            for found in pattern.captures_iter(text) {
                produced.insert(found[1].to_owned(), name.clone());
            }
        }
        for function in code_functions.find_iter(text) {
            let body = &text[function.end()..];
            let body = &body[..body.find("\n}").unwrap_or(body.len())];
            for found in arm.captures_iter(body) {
                produced.insert(found[1].to_owned(), name.clone());
            }
        }
    }
    produced
}

#[test]
fn the_catalogue_holds_the_codes_the_source_produces_and_no_other() {
    let files = sources();
    let produced = produced_codes(&files);
    assert!(
        produced.len() > 50,
        "the scan found too little: {produced:?}"
    );
    let unlisted: Vec<_> = produced
        .iter()
        .filter(|(code, _)| codes::find(code).is_none())
        .collect();
    assert!(
        unlisted.is_empty(),
        "codes the source produces that the catalogue (and so the document) lacks: {unlisted:?}"
    );
    // A catalogued code is one the source writes somewhere (outside the
    // catalogue and the document's assembly).
    let never: Vec<_> = CODES
        .iter()
        .filter(|code| {
            let literal = format!("\"{}\"", code.code);
            !files.iter().any(|(name, text)| {
                !name.ends_with("error/codes.rs")
                    && !name.ends_with("api/openapi.rs")
                    && text.contains(&literal)
            })
        })
        .map(|code| code.code)
        .collect();
    assert!(
        never.is_empty(),
        "catalogued codes nothing produces: {never:?}"
    );
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    let mut concrete = path.replace("{appid}", APPID);
    while let Some(start) = concrete.find('{') {
        let end = concrete[start..].find('}').unwrap() + start;
        concrete.replace_range(start..=end, "x");
    }
    concrete
}

/// An error answer in the API's shape with `code`.
fn assert_shaped(what: &str, status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"]["code"], want_code, "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

#[tokio::test]
async fn methods_and_paths_the_router_does_not_serve_answer_in_the_error_shape() {
    let app = spawn_app(Backend::Sqlite).await;
    let document = document_of(&app).await;
    let documented = operations(&document);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in paths {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let name = method.as_str().to_lowercase();
            if documented.contains(&(name, path.clone())) {
                continue;
            }
            let answer = app
                .call(method.clone(), &concrete(path), Some(ADMIN_KEY), None)
                .await;
            let what = format!("{method} {path}");
            assert_shaped(
                &what,
                answer.status,
                &answer.body,
                405,
                "method_not_allowed",
            );
            assert!(answer.headers.contains_key("allow"), "{what}: no Allow");
        }
    }
    for path in ["/nowhere", "/v1/apps", "/v1/apps/x/unknown", "/docs-not"] {
        let answer = app.call(Method::GET, path, Some(ADMIN_KEY), None).await;
        assert_shaped(path, answer.status, &answer.body, 404, "not_found");
    }
}

/// Follows a `$ref` of the document.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            resolve(document, &document["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The object schema of a request body that `example` fits: the body's own,
/// or the variant of a `oneOf` whose fields hold the example's.
fn object_schema<'a>(document: &'a Value, schema: &'a Value, example: &Value) -> &'a Value {
    let schema = resolve(document, schema);
    let variants = schema["oneOf"].as_array().or(schema["anyOf"].as_array());
    let Some(variants) = variants else {
        return schema;
    };
    variants
        .iter()
        .map(|variant| resolve(document, variant))
        .find(|variant| {
            let properties = variant["properties"].as_object();
            example
                .as_object()
                .unwrap()
                .keys()
                .all(|key| properties.is_some_and(|properties| properties.contains_key(key)))
        })
        .expect("a variant the example fits")
}

/// The optional fields of an object schema.
fn optional_fields(schema: &Value) -> Vec<String> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|required| required.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|properties| {
            properties
                .keys()
                .filter(|name| !required.contains(&name.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A body each JSON route takes (by operation id), with the bearer it
/// needs; `None` for the session of a user, logged in first.
fn examples(openid: &str) -> BTreeMap<&'static str, (Option<&'static str>, Value)> {
    let data = json!({"keyword1": {"value": "Order 1024"}});
    BTreeMap::from([
        (
            "send_message",
            (
                Some(SEND_KEY),
                json!({"touser": openid, "template_id": TEMPLATE, "data": data}),
            ),
        ),
        (
            "collect_credentials",
            (
                Some(ADMIN_KEY),
                json!({"openid": openid, "kind": "form_id", "value": "form-null-test"}),
            ),
        ),
        (
            "me_collect_credentials",
            (
                None,
                json!({"kind": "form_id", "value": "form-null-test-me"}),
            ),
        ),
        (
            "add_template",
            (
                Some(ADMIN_KEY),
                json!({"channel": "subscribe", "tid": 401, "keyword_ids": [1, 2, 3]}),
            ),
        ),
        (
            "create_broadcast",
            (
                Some(ADMIN_KEY),
                json!({"template_id": TEMPLATE, "data": data, "audience": "holders"}),
            ),
        ),
        (
            "create_webhook",
            (Some(ADMIN_KEY), json!({"url": "https://example.com/hook"})),
        ),
        (
            "lint_template",
            (Some(ADMIN_KEY), json!({"title": "订单发货通知"})),
        ),
    ])
}

/// Every optional field of every JSON route sent as `null` is taken as
/// unset: the answer is the one to the same body without it. A route with
/// optional fields and no example here fails the test until it has one.
#[tokio::test]
async fn null_means_unset_in_every_optional_field_of_every_json_route() {
    let app = spawn_app(Backend::Sqlite).await;
    let document = document_of(&app).await;
    let openid = "o-null-user";
    // Two sends go out: each needs a credential.
    for _ in 0..2 {
        app.collect_form_id(openid).await;
    }
    let session = crate::sessions::session_of(&app, "o-null-session").await;
    let examples = examples(openid);
    let mut problems = Vec::new();
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][&method];
        let Some(schema) = operation["requestBody"]["content"]["application/json"].get("schema")
        else {
            continue;
        };
        let id = operation["operationId"].as_str().unwrap();
        let optional = match examples.get(id) {
            Some((_, example)) => optional_fields(object_schema(&document, schema, example)),
            None => optional_fields(resolve(&document, schema)),
        };
        if optional.is_empty() {
            continue;
        }
        let Some((key, example)) = examples.get(id) else {
            problems.push(format!(
                "{id} has optional fields {optional:?} and no example here"
            ));
            continue;
        };
        let mut nulls: Map<String, Value> = example.as_object().unwrap().clone();
        for field in &optional {
            nulls.entry(field.clone()).or_insert(Value::Null);
        }
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let bearer = key.unwrap_or(&session);
        let plain = app
            .call(
                method.clone(),
                &concrete(&path),
                Some(bearer),
                Some(example.clone()),
            )
            .await;
        let with_nulls = app
            .call(
                method,
                &concrete(&path),
                Some(bearer),
                Some(Value::Object(nulls)),
            )
            .await;
        if !(200..300).contains(&plain.status) {
            problems.push(format!(
                "{id}: the example was refused: {} {}",
                plain.status, plain.body
            ));
        }
        if with_nulls.status != plain.status
            || with_nulls.body["error"]["code"] != plain.body["error"]["code"]
        {
            problems.push(format!(
                "{id}: with {optional:?} null: {} {}, without: {}",
                with_nulls.status, with_nulls.body, plain.status
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The send route's optional fields, each alone as `null`, send.
#[tokio::test]
async fn a_send_with_null_optional_fields_sends() {
    let app = spawn_app(Backend::Sqlite).await;
    let openid = "o-null-send";
    let fields = [
        "page",
        "emphasis_keyword",
        "color",
        "wait_seconds",
        "delivery",
        "channel",
        "miniprogram_state",
        "lang",
        "urgent",
        "send_at",
    ];
    for field in fields {
        app.collect_form_id(openid).await;
        let mut body = json!({"touser": openid, "template_id": TEMPLATE,
            "data": {"keyword1": {"value": "Order 1024"}}});
        body[field] = Value::Null;
        let answer = app.send(body).await;
        assert_eq!(answer.status, 200, "{field}: null: {}", answer.body);
        assert_eq!(answer.body["status"], "sent", "{field}: {}", answer.body);
    }
}

/// What the HTTP server answers to `head` sent raw: its status line's code
/// and the body after the head.
async fn raw_answer(app: &TestApp, head: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = match text.find("\r\n\r\n") {
        Some(end) => answer[end + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// The answers the HTTP server makes before the gateway sees a request
/// have no body, so they cannot have the error shape: they are the ones the
/// document names, and no others.
#[tokio::test]
async fn the_answers_the_http_server_makes_itself_are_the_documented_ones() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |settings| {
        settings["http"] = json!({"head_timeout_ms": 300});
    })
    .await;
    let description = document_of(&app).await["info"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "bad header bytes",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "headers too large",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        (
            "a head that never finishes",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
            408,
        ),
    ];
    for (what, head, status) in cases {
        let (answered, body) = raw_answer(&app, &head).await;
        assert_eq!(answered, status, "{what}");
        assert!(
            body.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            description.contains(&format!("{status} for")),
            "{what}: the document does not name {status}"
        );
    }
}
