//! Malformed, hostile and unauthorised requests against every endpoint: each
//! gets its exact status and error code in the one error shape, and none of
//! them changes the ledger.

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rstest::rstest;

use crate::helpers::*;

/// The openid the ledger is seeded for.
const SEEDED: &str = "o-seeded";
/// An openid the hostile bodies try to give credentials to.
const ATTACKER: &str = "o-attacker";
const JSON: Option<&str> = Some("application/json");

/// What a case expects in a 200: the batch answer with each item rejected
/// with this code.
const BATCH_REJECTS: u16 = 200;

/// One malformed request and the answer it must get.
struct Case {
    name: String,
    method: Method,
    path: String,
    /// The whole `Authorization` header, or none.
    authorization: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// An `Idempotency-Key` header, for sends.
    idempotency_key: Option<Vec<u8>>,
    /// Send the path byte for byte over a socket: an HTTP client would
    /// resolve the `..` segments before sending.
    raw_path: bool,
    /// Send the head and only the first byte of the body, then wait.
    stall: bool,
    status: u16,
    code: &'static str,
}

fn bearer(key: &str) -> Option<Vec<u8>> {
    Some(format!("Bearer {key}").into_bytes())
}

/// Builds the table tersely.
struct Table {
    cases: Vec<Case>,
}

impl Table {
    /// A case: the request's name, method and path, its head (the
    /// `Authorization` and `Content-Type` values), its body, and the status
    /// and error code it must be answered with.
    fn add(
        &mut self,
        name: impl Into<String>,
        method: Method,
        path: impl Into<String>,
        (authorization, content_type): (Option<Vec<u8>>, Option<&'static str>),
        body: impl Into<Vec<u8>>,
        (status, code): (u16, &'static str),
    ) {
        self.cases.push(Case {
            name: name.into(),
            method,
            path: path.into(),
            authorization,
            content_type,
            body: body.into(),
            idempotency_key: None,
            raw_path: false,
            stall: false,
            status,
            code,
        });
    }

    fn add_raw_path(
        &mut self,
        name: &str,
        method: Method,
        path: &str,
        key: &str,
        status: u16,
        code: &'static str,
    ) {
        self.add(
            name,
            method,
            path,
            (bearer(key), None),
            Vec::new(),
            (status, code),
        );
        self.cases.last_mut().unwrap().raw_path = true;
    }

    /// The last case, sent over a socket that stops after the body's first byte.
    fn stall(&mut self) {
        let case = self.cases.last_mut().unwrap();
        case.raw_path = true;
        case.stall = true;
    }

    /// The last case, with an `Idempotency-Key` header.
    fn with_idempotency_key(&mut self, key: impl Into<Vec<u8>>) {
        self.cases.last_mut().unwrap().idempotency_key = Some(key.into());
    }
}

/// An answer, whatever its body.
struct RawAnswer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn send_case(app: &TestApp, case: &Case) -> RawAnswer {
    if case.raw_path {
        return send_over_socket(app, case).await;
    }
    let mut request = app.client.request(case.method.clone(), app.url(&case.path));
    if let Some(authorization) = &case.authorization {
        let value = reqwest::header::HeaderValue::from_bytes(authorization).unwrap();
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    if let Some(content_type) = case.content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    if let Some(key) = &case.idempotency_key {
        let value = reqwest::header::HeaderValue::from_bytes(key).unwrap();
        request = request.header("idempotency-key", value);
    }
    if !case.body.is_empty() || case.method == Method::POST {
        request = request.body(case.body.clone());
    }
    let response = request.send().await.expect("calling the gateway");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = response.bytes().await.expect("reading the answer").to_vec();
    RawAnswer {
        status,
        content_type,
        body,
    }
}

/// HTTP/1.1 by hand, for paths a client would normalise.
async fn send_over_socket(app: &TestApp, case: &Case) -> RawAnswer {
    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        case.method,
        case.path,
        case.body.len()
    )
    .into_bytes();
    if let Some(authorization) = &case.authorization {
        request.extend_from_slice(b"Authorization: ");
        request.extend_from_slice(authorization);
        request.extend_from_slice(b"\r\n");
    }
    if let Some(content_type) = case.content_type {
        request.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let body = if case.stall {
        &case.body[..1]
    } else {
        &case.body[..]
    };
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    // A stalled body keeps the socket open on our side: the gateway must
    // answer and close it by itself, well within this bound.
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(15),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("the gateway answers a stalled body")
    .unwrap();
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the socket client reads only sized bodies: {head}"
    );
    RawAnswer {
        status,
        content_type,
        body: response[split + 4..].to_vec(),
    }
}

/// `{"error":{"code":<snake_case>,"message":<string>}}` and nothing else.
fn error_shape_problem(body: &Value) -> Option<String> {
    let Some(object) = body.as_object() else {
        return Some("the body is not a JSON object".into());
    };
    if object.len() != 1 {
        return Some("the body has keys besides \"error\"".into());
    }
    let Some(error) = object.get("error").and_then(Value::as_object) else {
        return Some("\"error\" is not an object".into());
    };
    let Some(code) = error.get("code").and_then(Value::as_str) else {
        return Some("error.code is not a string".into());
    };
    let snake = code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !snake {
        return Some(format!("error.code {code:?} is not snake_case"));
    }
    if !error.get("message").is_some_and(Value::is_string) {
        return Some("error.message is not a string".into());
    }
    if error.keys().any(|key| key != "code" && key != "message") {
        return Some("error has unexpected keys".into());
    }
    None
}

fn item(openid: &str, kind: &str, value: &str) -> Value {
    json!({"openid": openid, "kind": kind, "value": value})
}

fn bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

/// A send body that is valid except for what `change` does to it.
fn send_body(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = json!({
        "touser": SEEDED,
        "template_id": TEMPLATE,
        "page": "pages/order/detail?id=1",
        "data": {"keyword1": {"value": "Order 1"}},
    });
    change(&mut body);
    bytes(body)
}

/// Every malformed request, with the answer it must get.
#[rustfmt::skip]
fn table(now_ms: i64, seeded_message: &str, seeded_prepay: &str) -> Vec<Case> {
    use Method as M;
    let mut t = Table { cases: Vec::new() };
    let app_path = |tail: &str| format!("/v1/apps/{APPID}{tail}");
    let credentials = app_path("/credentials");
    let quota = |openid: &str| app_path(&format!("/users/{openid}/quota"));
    let messages = app_path("/messages");
    let message = |id: &str| app_path(&format!("/messages/{id}"));
    let token = app_path("/access_token");
    let refresh = app_path("/access_token/refresh");
    let collect = bearer(COLLECT_KEY);
    let send = bearer(SEND_KEY);
    let token_key = bearer(TOKEN_KEY);
    let good_item = bytes(item(ATTACKER, "form_id", "good-looking-form-id-1"));
    let too_large = {
        let mut body = b"{\"openid\": \"".to_vec();
        body.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 1));
        body.extend_from_slice(b"\"}");
        body
    };
    let sql = "%27%20OR%201%3D1%20--";
    let basic = Some(b"Basic dGVzdDp0ZXN0".to_vec());
    let unknown_app = "/v1/apps/wxnotconfigured0001";

    // POST /v1/apps/{appid}/credentials: the body.
    let c = &credentials;
    t.add("collect: broken JSON", M::POST, c, (collect.clone(), JSON), "{\"openid\": ", (400, "invalid_json"));
    t.add("collect: empty body", M::POST, c, (collect.clone(), JSON), "", (400, "invalid_json"));
    t.add("collect: form-encoded body", M::POST, c, (collect.clone(), Some("application/x-www-form-urlencoded")), "openid=o&kind=form_id&value=v", (415, "unsupported_media_type"));
    t.add("collect: trailing garbage", M::POST, c, (collect.clone(), JSON), [good_item.clone(), b"}}".to_vec()].concat(), (400, "invalid_json"));
    t.add("collect: null", M::POST, c, (collect.clone(), JSON), "null", (400, "invalid_body"));
    t.add("collect: array at the top", M::POST, c, (collect.clone(), JSON), bytes(json!([item(ATTACKER, "form_id", "v-1")])), (400, "invalid_body"));
    t.add("collect: a bare string", M::POST, c, (collect.clone(), JSON), "\"form_id\"", (400, "invalid_body"));
    t.add("collect: a number", M::POST, c, (collect.clone(), JSON), "12", (400, "invalid_body"));
    t.add("collect: credentials is an object", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": item(ATTACKER, "form_id", "v-1")})), (400, "invalid_body"));
    t.add("collect: credentials is a string", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": "v-1"})), (400, "invalid_body"));
    t.add("collect: credentials is null", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": null})), (400, "invalid_body"));
    t.add("collect: openid is a number", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": 5, "kind": "form_id", "value": "v-1"})), (422, "invalid_type"));
    t.add("collect: value is a number", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": 123456})), (422, "invalid_type"));
    t.add("collect: kind is an array", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": ["form_id"], "value": "v-1"})), (422, "invalid_type"));
    t.add("collect: value is an object", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": {"value": "v-1"}})), (422, "invalid_type"));
    t.add("collect: no value", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id"})), (422, "missing_field"));
    t.add("collect: no openid", M::POST, c, (collect.clone(), JSON), bytes(json!({"kind": "form_id", "value": "v-1"})), (422, "missing_field"));
    t.add("collect: empty object", M::POST, c, (collect.clone(), JSON), "{}", (422, "missing_field"));
    t.add("collect: null kind", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": null, "value": "v-1"})), (422, "missing_field"));
    t.add("collect: one item of an unknown kind", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "subscribe", "v-1")), (422, "unknown_kind"));
    t.add("collect: kind in upper case", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "FORM_ID", "v-1")), (422, "unknown_kind"));
    t.add("collect: a batch of unknown kinds", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": [item(ATTACKER, "subscribe", "v-1"), item(SEEDED, "sms", "v-2")]})), (BATCH_REJECTS, "unknown_kind"));
    t.add("collect: a batch of non-objects", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": ["v-1", [1, 2], null, 7]})), (BATCH_REJECTS, "invalid_item"));
    t.add("collect: a batch of mock formIds", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": [item(SEEDED, "form_id", "the formId is a mock one")]})), (BATCH_REJECTS, "mock_form_id"));
    t.add("collect: the devtools mock formId", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "the formId is a mock one")), (422, "mock_form_id"));
    t.add("collect: a failed report-submit", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "requestFormId:fail timeout")), (422, "client_failure"));
    t.add("collect: empty value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "")), (422, "empty_value"));
    t.add("collect: a bare prepay_id= prefix", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "prepay_id", "prepay_id=")), (422, "empty_value"));
    t.add("collect: a 65-character value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", &"a".repeat(65))), (422, "value_too_long"));
    t.add("collect: a value with a newline", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "abc\ndef")), (422, "invalid_characters"));
    t.add("collect: a value with a NUL", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "abc\u{0}def")), (422, "invalid_characters"));
    t.add("collect: SQL in the value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "' OR 1=1 --")), (422, "invalid_characters"));
    t.add("collect: SQL in the openid", M::POST, c, (collect.clone(), JSON), bytes(item("' OR 1=1 --", "form_id", "v-1")), (422, "invalid_openid"));
    t.add("collect: a NUL in the openid", M::POST, c, (collect.clone(), JSON), bytes(item("o\u{0}", "form_id", "v-1")), (422, "invalid_openid"));
    t.add("collect: a 129-character openid", M::POST, c, (collect.clone(), JSON), bytes(item(&"o".repeat(129), "form_id", "v-1")), (422, "invalid_openid"));
    t.add("collect: another user's prepay_id", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "prepay_id", &format!("prepay_id={seeded_prepay}"))), (422, "owned_by_another_user"));
    t.add("collect: collected_at a day ahead", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": "v-1", "collected_at": now_ms + 86_400_000})), (422, "collected_in_future"));
    t.add("collect: collected_at in 2999", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": "v-1", "collected_at": "2999-01-01T00:00:00Z"})), (422, "collected_in_future"));
    t.add("collect: collected_at i64::MAX", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": "v-1", "collected_at": i64::MAX})), (422, "collected_in_future"));
    t.add("collect: collected_at i64::MIN", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": "v-1", "collected_at": i64::MIN})), (422, "already_expired"));
    t.add("collect: collected_at 8 days ago", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "prepay_id", "value": "v-1", "collected_at": now_ms - 8 * 86_400_000})), (422, "already_expired"));
    t.add("collect: collected_at is prose", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": "v-1", "collected_at": "yesterday"})), (422, "invalid_collected_at"));
    t.add("collect: collected_at is 1e30", M::POST, c, (collect.clone(), JSON), format!(r#"{{"openid":"{ATTACKER}","kind":"form_id","value":"v-1","collected_at":1e30}}"#), (422, "invalid_collected_at"));
    t.add("collect: collected_at is an array", M::POST, c, (collect.clone(), JSON), bytes(json!({"openid": ATTACKER, "kind": "form_id", "value": "v-1", "collected_at": [1]})), (422, "invalid_collected_at"));
    t.add("collect: invalid UTF-8 in a string", M::POST, c, (collect.clone(), JSON), b"{\"openid\":\"o-\xff\xfe\",\"kind\":\"form_id\",\"value\":\"v-1\"}".to_vec(), (400, "invalid_json"));
    t.add("collect: invalid UTF-8 only", M::POST, c, (collect.clone(), JSON), b"\xff\xfe\xfd\x00".to_vec(), (400, "invalid_json"));
    t.add("collect: a lone surrogate escape", M::POST, c, (collect.clone(), JSON), format!(r#"{{"openid":"{ATTACKER}","kind":"form_id","value":"\ud800"}}"#), (400, "invalid_json"));
    t.add("collect: body over 1 MiB", M::POST, c, (collect.clone(), JSON), too_large.clone(), (413, "body_too_large"));
    let batch: Vec<Value> = (0..1001).map(|index| item(ATTACKER, "form_id", &format!("batch-{index}"))).collect();
    t.add("collect: 1001 items", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": batch})), (413, "too_many_items"));
    // …: duplicate keys, at any depth (one strict reader for every route).
    t.add("collect: openid twice", M::POST, c, (collect.clone(), JSON), format!(r#"{{"openid":"{ATTACKER}","openid":"{SEEDED}","kind":"form_id","value":"dup-1"}}"#), (400, "invalid_json"));
    t.add("collect: openid twice in a batch item", M::POST, c, (collect.clone(), JSON), format!(r#"{{"credentials":[{{"openid":"{ATTACKER}","openid":"{SEEDED}","kind":"form_id","value":"dup-2"}}]}}"#), (400, "invalid_json"));
    t.add("collect: credentials twice", M::POST, c, (collect.clone(), JSON), format!(r#"{{"credentials":[],"credentials":[{{"openid":"{SEEDED}","kind":"form_id","value":"dup-3"}}]}}"#), (400, "invalid_json"));
    t.add("collect: value twice, escaped", M::POST, c, (collect.clone(), JSON), format!(r#"{{"openid":"{SEEDED}","kind":"form_id","value":"dup-4","v\u0061lue":"dup-5"}}"#), (400, "invalid_json"));
    // …: Content-Type.
    t.add("collect: text/plain", M::POST, c, (collect.clone(), Some("text/plain")), good_item.clone(), (415, "unsupported_media_type"));
    t.add("collect: no Content-Type", M::POST, c, (collect.clone(), None), good_item.clone(), (415, "unsupported_media_type"));
    t.add("collect: JSON in Latin-1", M::POST, c, (collect.clone(), Some("application/json; charset=iso-8859-1")), good_item.clone(), (415, "unsupported_media_type"));
    t.add("collect: application/jsonp", M::POST, c, (collect.clone(), Some("application/jsonp")), good_item.clone(), (415, "unsupported_media_type"));
    t.add("collect: multipart", M::POST, c, (collect.clone(), Some("multipart/form-data; boundary=x")), good_item.clone(), (415, "unsupported_media_type"));
    // …: a body that never finishes.
    t.add("collect: a body that stalls", M::POST, c, (collect.clone(), JSON), good_item.clone(), (408, "body_timeout"));
    t.stall();
    // …: one value is one credential, whatever its kind.
    t.add("collect: the seeded prepay_id as a form_id", M::POST, c, (collect.clone(), JSON), bytes(item(SEEDED, "form_id", seeded_prepay)), (422, "kind_conflict"));
    t.add("collect: the seeded prepay_id as another user's form_id", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", seeded_prepay)), (422, "owned_by_another_user"));
    t.add("collect: a batch posting the seeded prepay_id as a form_id", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": [item(SEEDED, "form_id", seeded_prepay)]})), (BATCH_REJECTS, "kind_conflict"));
    // …: the normal form of values and openids.
    t.add("collect: prepay_id%3D posted as a form_id", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "prepay_id%3Dwx20180126161440ba0061")), (422, "kind_mismatch"));
    t.add("collect: PREPAY_ID= posted as a form_id", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "PREPAY_ID=wx20180126161440ba0061")), (422, "kind_mismatch"));
    t.add("collect: the seeded prepay_id URL-encoded for another user", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "prepay_id", &format!("prepay_id%3D{seeded_prepay}"))), (422, "owned_by_another_user"));
    t.add("collect: the seeded prepay_id upper-case prefix for another user", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "prepay_id", &format!("PREPAY_ID={seeded_prepay}"))), (422, "owned_by_another_user"));
    t.add("collect: a prefix twice", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "prepay_id", "prepay_id=prepay_id%3Dwx1")), (422, "invalid_characters"));
    t.add("collect: the mock formId in capitals", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "THE FORMID IS A MOCK ONE")), (422, "mock_form_id"));
    t.add("collect: the mock formId without spaces", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "theformIdisamockone")), (422, "mock_form_id"));
    t.add("collect: the mock formId with a zero-width space", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "the formId is a\u{200B} mock one")), (422, "mock_form_id"));
    t.add("collect: the mock formId with a BOM", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "\u{FEFF}the formId is a mock one")), (422, "mock_form_id"));
    t.add("collect: a report-submit-timeout failure in capitals", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "REQUESTFORMID:FAIL timeout")), (422, "client_failure"));
    t.add("collect: a failure behind a zero-width space", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "\u{200B}requestFormId:fail")), (422, "client_failure"));
    t.add("collect: a zero-width space in the value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "22d907226dcd\u{200B}4542afb8829fa5e20768")), (422, "invalid_characters"));
    t.add("collect: a BOM before the value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "\u{FEFF}22d907226dcd4542afb8829fa5e20768")), (422, "invalid_characters"));
    t.add("collect: an RTL override in the value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "prepay_id", "wx2018\u{202E}0126")), (422, "invalid_characters"));
    t.add("collect: a Cyrillic letter in the value", M::POST, c, (collect.clone(), JSON), bytes(item(ATTACKER, "form_id", "22d9\u{0441}7226dcd4542afb8829fa5e20768")), (422, "invalid_characters"));
    t.add("collect: a zero-width space in the openid", M::POST, c, (collect.clone(), JSON), bytes(item(&format!("{SEEDED}\u{200B}"), "form_id", "zw-1")), (422, "invalid_openid"));
    t.add("collect: a BOM before the openid", M::POST, c, (collect.clone(), JSON), bytes(item(&format!("\u{FEFF}{SEEDED}"), "form_id", "zw-2")), (422, "invalid_openid"));
    t.add("collect: an RTL override in the openid", M::POST, c, (collect.clone(), JSON), bytes(item("o-\u{202E}dedees", "form_id", "zw-3")), (422, "invalid_openid"));
    t.add("collect: a batch of invisible openids", M::POST, c, (collect.clone(), JSON), bytes(json!({"credentials": [item(&format!("{SEEDED}\u{200D}"), "form_id", "zw-4"), item(&format!("{SEEDED}\u{2066}"), "form_id", "zw-5")]})), (BATCH_REJECTS, "invalid_openid"));
    // …: who asks, and where.
    t.add("collect: no key", M::POST, c, (None, JSON), good_item.clone(), (401, "missing_api_key"));
    t.add("collect: wrong key", M::POST, c, (bearer("not-a-key-at-all-000000"), JSON), good_item.clone(), (401, "invalid_api_key"));
    t.add("collect: Basic auth", M::POST, c, (basic.clone(), JSON), good_item.clone(), (401, "invalid_api_key"));
    t.add("collect: the collect key as Basic", M::POST, c, (Some(format!("Basic {COLLECT_KEY}").into_bytes()), JSON), good_item.clone(), (401, "invalid_api_key"));
    t.add("collect: empty Bearer", M::POST, c, (Some(b"Bearer ".to_vec()), JSON), good_item.clone(), (401, "invalid_api_key"));
    t.add("collect: non-ASCII key bytes", M::POST, c, (Some(b"Bearer \xff\xfe".to_vec()), JSON), good_item.clone(), (401, "invalid_api_key"));
    t.add("collect: the send key", M::POST, c, (send.clone(), JSON), good_item.clone(), (403, "forbidden"));
    t.add("collect: the token key", M::POST, c, (token_key.clone(), JSON), good_item.clone(), (403, "forbidden"));
    t.add("collect: another app's key", M::POST, c, (bearer(OTHER_APP_KEY), JSON), good_item.clone(), (403, "forbidden"));
    t.add("collect: unknown app, a one-app key", M::POST, format!("{unknown_app}/credentials"), (collect.clone(), JSON), good_item.clone(), (403, "forbidden"));
    t.add("collect: unknown app, the admin key", M::POST, format!("{unknown_app}/credentials"), (bearer(ADMIN_KEY), JSON), good_item.clone(), (404, "unknown_app"));
    t.add("collect: SQL as the appid", M::POST, format!("/v1/apps/{sql}/credentials"), (bearer(ADMIN_KEY), JSON), good_item.clone(), (404, "unknown_app"));
    t.add("collect: a quote after the appid", M::POST, format!("/v1/apps/{APPID}%27/credentials"), (bearer(ADMIN_KEY), JSON), good_item.clone(), (404, "unknown_app"));
    t.add("collect: encoded ../ before the appid", M::POST, format!("/v1/apps/%2E%2E%2F{APPID}/credentials"), (bearer(ADMIN_KEY), JSON), good_item.clone(), (404, "unknown_app"));
    t.add("collect: ..%2F as the appid", M::POST, format!("/v1/apps/..%2F{APPID}/credentials"), (bearer(ADMIN_KEY), JSON), good_item.clone(), (404, "unknown_app"));
    // A wrong method on a known route is 405 with Allow.
    t.add("collect: GET instead of POST", M::GET, c, (collect.clone(), None), "", (405, "method_not_allowed"));
    t.add("collect: PUT", M::PUT, c, (collect.clone(), JSON), good_item.clone(), (405, "method_not_allowed"));
    t.add("collect: DELETE", M::DELETE, c, (collect.clone(), None), "", (405, "method_not_allowed"));

    // GET /v1/apps/{appid}/users/{openid}/quota
    t.add("quota: SQL as the openid", M::GET, quota(sql), (send.clone(), None), "", (400, "invalid_openid"));
    t.add("quota: seeded openid plus SQL", M::GET, quota(&format!("{SEEDED}%27%20OR%20%271%27%3D%271")), (send.clone(), None), "", (400, "invalid_openid"));
    t.add("quota: a NUL in the openid", M::GET, quota("o%00"), (send.clone(), None), "", (400, "invalid_openid"));
    t.add("quota: a tab in the openid", M::GET, quota("o%09x"), (send.clone(), None), "", (400, "invalid_openid"));
    t.add("quota: a 129-character openid", M::GET, quota(&"o".repeat(129)), (send.clone(), None), "", (400, "invalid_openid"));
    t.add_raw_path("quota: raw ../ around the openid", M::GET, &format!("/v1/apps/{APPID}/users/../users/{SEEDED}/quota"), SEND_KEY, 404, "not_found");
    t.add_raw_path("quota: raw ../ out of the app", M::GET, &format!("/v1/apps/{OTHER_APPID}/../{APPID}/users/{SEEDED}/quota"), OTHER_APP_KEY, 404, "not_found");
    t.add("quota: no key", M::GET, quota(SEEDED), (None, None), "", (401, "missing_api_key"));
    t.add("quota: Basic auth", M::GET, quota(SEEDED), (basic.clone(), None), "", (401, "invalid_api_key"));
    t.add("quota: the token key", M::GET, quota(SEEDED), (token_key.clone(), None), "", (403, "forbidden"));
    t.add("quota: another app's key", M::GET, quota(SEEDED), (bearer(OTHER_APP_KEY), None), "", (403, "forbidden"));
    t.add("quota: unknown app, a one-app key", M::GET, format!("{unknown_app}/users/{SEEDED}/quota"), (send.clone(), None), "", (403, "forbidden"));
    t.add("quota: POST", M::POST, quota(SEEDED), (send.clone(), JSON), "{}", (405, "method_not_allowed"));
    t.add("quota: SQL as the appid", M::GET, format!("/v1/apps/{sql}/users/{SEEDED}/quota"), (bearer(ADMIN_KEY), None), "", (404, "unknown_app"));

    // POST /v1/apps/{appid}/messages: the body.
    let m = &messages;
    t.add("send: broken JSON", M::POST, m, (send.clone(), JSON), "{\"touser\": ", (400, "invalid_json"));
    t.add("send: empty body", M::POST, m, (send.clone(), JSON), "", (400, "invalid_json"));
    t.add("send: an empty array", M::POST, m, (send.clone(), JSON), "[]", (400, "invalid_json"));
    t.add("send: the fields as an array", M::POST, m, (send.clone(), JSON), bytes(json!(["o-nobody", TEMPLATE, null, null, null, null, null, null])), (400, "invalid_json"));
    t.add("send: touser is a number", M::POST, m, (send.clone(), JSON), send_body(|body| body["touser"] = json!(42)), (400, "invalid_json"));
    t.add("send: template_id is an array", M::POST, m, (send.clone(), JSON), send_body(|body| body["template_id"] = json!([TEMPLATE])), (400, "invalid_json"));
    t.add("send: template_id is null", M::POST, m, (send.clone(), JSON), send_body(|body| body["template_id"] = Value::Null), (400, "invalid_json"));
    t.add("send: no touser", M::POST, m, (send.clone(), JSON), send_body(|body| { body.as_object_mut().unwrap().remove("touser"); }), (400, "invalid_json"));
    t.add("send: data is an array", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = json!([{"value": "x"}])), (400, "invalid_json"));
    t.add("send: a data value is a string", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = json!({"keyword1": "Order 1"})), (422, "invalid_field"));
    t.add("send: a data value is an array", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = json!({"keyword1": [{"value": "x"}]})), (422, "invalid_field"));
    t.add("send: a data value without value", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = json!({"keyword1": {"color": "#000"}})), (422, "invalid_field"));
    t.add("send: a data value's value is an object", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = json!({"keyword1": {"value": {"a": 1}}})), (422, "invalid_field"));
    t.add("send: a 1025-character data value", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = json!({"keyword1": {"value": "x".repeat(1025)}})), (422, "invalid_field"));
    let many: serde_json::Map<String, Value> = (0..65).map(|index| (format!("keyword{index}"), json!({"value": "x"}))).collect();
    t.add("send: 65 data fields", M::POST, m, (send.clone(), JSON), send_body(|body| body["data"] = Value::Object(many)), (422, "invalid_field"));
    t.add("send: a form_id in the body", M::POST, m, (send.clone(), JSON), send_body(|body| body["form_id"] = json!("22d907226dcd4542afb8829fa5e20768")), (400, "invalid_json"));
    t.add("send: a prepay_id in the body", M::POST, m, (send.clone(), JSON), send_body(|body| body["prepay_id"] = json!(seeded_prepay)), (400, "invalid_json"));
    t.add("send: touser twice", M::POST, m, (send.clone(), JSON), format!(r#"{{"touser":"o-nobody","touser":"{SEEDED}","template_id":"{TEMPLATE}"}}"#), (400, "invalid_json"));
    t.add("send: a data key twice", M::POST, m, (send.clone(), JSON), format!(r#"{{"touser":"{SEEDED}","template_id":"{TEMPLATE}","data":{{"keyword1":{{"value":"a"}},"keyword1":{{"value":"b"}}}}}}"#), (400, "invalid_json"));
    t.add("send: a data value twice", M::POST, m, (send.clone(), JSON), format!(r#"{{"touser":"{SEEDED}","template_id":"{TEMPLATE}","data":{{"keyword1":{{"value":"a","value":"b"}}}}}}"#), (400, "invalid_json"));
    t.add("send: data twice", M::POST, m, (send.clone(), JSON), format!(r#"{{"touser":"{SEEDED}","template_id":"{TEMPLATE}","data":{{}},"data":{{"keyword1":{{"value":"b"}}}}}}"#), (400, "invalid_json"));
    t.add("send: text/plain", M::POST, m, (send.clone(), Some("text/plain")), send_body(|_| {}), (415, "unsupported_media_type"));
    t.add("send: form-encoded", M::POST, m, (send.clone(), Some("application/x-www-form-urlencoded")), send_body(|_| {}), (415, "unsupported_media_type"));
    t.add("send: no Content-Type", M::POST, m, (send.clone(), None), send_body(|_| {}), (415, "unsupported_media_type"));
    t.add("send: a body that stalls", M::POST, m, (send.clone(), JSON), send_body(|_| {}), (408, "body_timeout"));
    t.stall();
    t.add("send: a zero-width space in touser", M::POST, m, (send.clone(), JSON), send_body(|body| body["touser"] = json!(format!("{SEEDED}\u{200B}"))), (422, "invalid_field"));
    t.add("send: wait_seconds negative", M::POST, m, (send.clone(), JSON), send_body(|body| body["wait_seconds"] = json!(-1)), (400, "invalid_json"));
    t.add("send: wait_seconds a string", M::POST, m, (send.clone(), JSON), send_body(|body| body["wait_seconds"] = json!("60")), (400, "invalid_json"));
    t.add("send: wait_seconds a fraction", M::POST, m, (send.clone(), JSON), send_body(|body| body["wait_seconds"] = json!(1.5)), (400, "invalid_json"));
    t.add("send: wait_seconds over 7 days", M::POST, m, (send.clone(), JSON), send_body(|body| body["wait_seconds"] = json!(7 * 86_400 + 1)), (422, "invalid_field"));
    t.add("send: wait_seconds u64::MAX", M::POST, m, (send.clone(), JSON), send_body(|body| body["wait_seconds"] = json!(u64::MAX)), (422, "invalid_field"));
    t.add("send: send_at not a time", M::POST, m, (send.clone(), JSON), send_body(|body| body["send_at"] = json!("tomorrow")), (400, "invalid_json"));
    t.add("send: send_at without an offset", M::POST, m, (send.clone(), JSON), send_body(|body| body["send_at"] = json!("2030-01-01T09:00:00")), (400, "invalid_json"));
    t.add("send: send_at over 30 days ahead", M::POST, m, (send.clone(), JSON), send_body(|body| body["send_at"] = json!("2999-01-01T09:00:00+08:00")), (422, "invalid_field"));
    t.add("send: urgent without the scope", M::POST, m, (send.clone(), JSON), send_body(|body| body["urgent"] = json!(true)), (403, "urgent_not_allowed"));
    t.add("send: urgent a string", M::POST, m, (send.clone(), JSON), send_body(|body| body["urgent"] = json!("yes")), (400, "invalid_json"));
    t.add("send: an unknown delivery", M::POST, m, (send.clone(), JSON), send_body(|body| body["delivery"] = json!("exactly_once")), (422, "invalid_field"));
    t.add("send: delivery a number", M::POST, m, (send.clone(), JSON), send_body(|body| body["delivery"] = json!(1)), (400, "invalid_json"));
    t.add("send: SQL as touser", M::POST, m, (send.clone(), JSON), send_body(|body| body["touser"] = json!("' OR 1=1 --")), (422, "invalid_field"));
    t.add("send: empty touser", M::POST, m, (send.clone(), JSON), send_body(|body| body["touser"] = json!("")), (422, "invalid_field"));
    t.add("send: a NUL in touser", M::POST, m, (send.clone(), JSON), send_body(|body| body["touser"] = json!("o\u{0}")), (422, "invalid_field"));
    t.add("send: template_id with a space", M::POST, m, (send.clone(), JSON), send_body(|body| body["template_id"] = json!("tmpl order")), (422, "invalid_field"));
    t.add("send: a 129-character template_id", M::POST, m, (send.clone(), JSON), send_body(|body| body["template_id"] = json!("t".repeat(129))), (422, "invalid_field"));
    t.add("send: a 1025-byte page", M::POST, m, (send.clone(), JSON), send_body(|body| body["page"] = json!("p".repeat(1025))), (422, "invalid_field"));
    t.add("send: invalid UTF-8", M::POST, m, (send.clone(), JSON), b"{\"touser\":\"o-\xc3\x28\",\"template_id\":\"t\"}".to_vec(), (400, "invalid_json"));
    t.add("send: body over 1 MiB", M::POST, m, (send.clone(), JSON), too_large.clone(), (413, "body_too_large"));
    // …: a valid body with a bad Idempotency-Key.
    let good_send = send_body(|_| {});
    t.add("send: Idempotency-Key with a space", M::POST, m, (send.clone(), JSON), good_send.clone(), (400, "invalid_idempotency_key"));
    t.with_idempotency_key("key with space");
    t.add("send: a 256-byte Idempotency-Key", M::POST, m, (send.clone(), JSON), good_send.clone(), (400, "invalid_idempotency_key"));
    t.with_idempotency_key("k".repeat(256));
    t.add("send: an empty Idempotency-Key", M::POST, m, (send.clone(), JSON), good_send.clone(), (400, "invalid_idempotency_key"));
    t.with_idempotency_key("");
    t.add("send: a non-ASCII Idempotency-Key", M::POST, m, (send.clone(), JSON), good_send.clone(), (400, "invalid_idempotency_key"));
    t.with_idempotency_key(b"key-\xff".to_vec());
    // …: who asks, and where.
    t.add("send: no key", M::POST, m, (None, JSON), good_send.clone(), (401, "missing_api_key"));
    t.add("send: Basic auth", M::POST, m, (basic.clone(), JSON), good_send.clone(), (401, "invalid_api_key"));
    t.add("send: the collect key", M::POST, m, (collect.clone(), JSON), good_send.clone(), (403, "forbidden"));
    t.add("send: the token key", M::POST, m, (token_key.clone(), JSON), good_send.clone(), (403, "forbidden"));
    t.add("send: another app's key", M::POST, m, (bearer(OTHER_APP_KEY), JSON), good_send.clone(), (403, "forbidden"));
    t.add("send: unknown app", M::POST, format!("{unknown_app}/messages"), (bearer(ADMIN_KEY), JSON), good_send.clone(), (404, "unknown_app"));
    t.add("send: SQL as the appid", M::POST, format!("/v1/apps/{sql}/messages"), (send.clone(), JSON), good_send.clone(), (403, "forbidden"));
    t.add("send: the other app through a one-app key", M::POST, format!("/v1/apps/{OTHER_APPID}/messages"), (send.clone(), JSON), good_send.clone(), (403, "forbidden"));
    t.add("send: GET", M::GET, m, (send.clone(), None), "", (405, "method_not_allowed"));

    // GET /v1/apps/{appid}/messages/{id}
    t.add("message: SQL as the id", M::GET, message(sql), (send.clone(), None), "", (404, "message_not_found"));
    t.add("message: the seeded id plus SQL", M::GET, message(&format!("{seeded_message}%27%20OR%20%271%27%3D%271")), (send.clone(), None), "", (404, "message_not_found"));
    t.add("message: encoded ../ as the id", M::GET, message("%2E%2E%2F%2E%2E%2Fcredentials"), (send.clone(), None), "", (404, "message_not_found"));
    t.add("message: a NUL as the id", M::GET, message("%00"), (send.clone(), None), "", (404, "message_not_found"));
    t.add("message: an unknown uuid", M::GET, message(&uuid::Uuid::new_v4().to_string()), (send.clone(), None), "", (404, "message_not_found"));
    t.add_raw_path("message: raw ../ into the id", M::GET, &format!("/v1/apps/{APPID}/messages/../messages/{seeded_message}"), SEND_KEY, 404, "not_found");
    t.add("message: through another app", M::GET, format!("/v1/apps/{OTHER_APPID}/messages/{seeded_message}"), (bearer(OTHER_APP_KEY), None), "", (404, "message_not_found"));
    t.add("message: no key", M::GET, message(seeded_message), (None, None), "", (401, "missing_api_key"));
    t.add("message: wrong key", M::GET, message(seeded_message), (bearer("not-a-key-at-all-000000"), None), "", (401, "invalid_api_key"));
    t.add("message: the collect key", M::GET, message(seeded_message), (collect.clone(), None), "", (403, "forbidden"));
    t.add("message: another app's key", M::GET, message(seeded_message), (bearer(OTHER_APP_KEY), None), "", (403, "forbidden"));
    t.add("message: unknown app", M::GET, format!("{unknown_app}/messages/{seeded_message}"), (bearer(ADMIN_KEY), None), "", (404, "unknown_app"));
    t.add("message: DELETE of a sent message", M::DELETE, message(seeded_message), (send.clone(), None), "", (409, "not_scheduled"));
    t.add("message: DELETE of an unknown uuid", M::DELETE, message(&uuid::Uuid::new_v4().to_string()), (send.clone(), None), "", (404, "message_not_found"));
    t.add("message: DELETE with SQL as the id", M::DELETE, message(sql), (send.clone(), None), "", (404, "message_not_found"));
    t.add("message: DELETE through another app", M::DELETE, format!("/v1/apps/{OTHER_APPID}/messages/{seeded_message}"), (bearer(OTHER_APP_KEY), None), "", (404, "message_not_found"));
    t.add("message: DELETE with the collect key", M::DELETE, message(seeded_message), (collect.clone(), None), "", (403, "forbidden"));
    t.add("message: POST", M::POST, message(seeded_message), (send.clone(), JSON), "{}", (405, "method_not_allowed"));

    // GET /v1/apps/{appid}/access_token
    t.add("token: no key", M::GET, &token, (None, None), "", (401, "missing_api_key"));
    t.add("token: Basic auth", M::GET, &token, (basic.clone(), None), "", (401, "invalid_api_key"));
    t.add("token: the send key", M::GET, &token, (send.clone(), None), "", (403, "forbidden"));
    t.add("token: the collect key", M::GET, &token, (collect.clone(), None), "", (403, "forbidden"));
    t.add("token: another app's key", M::GET, &token, (bearer(OTHER_APP_KEY), None), "", (403, "forbidden"));
    t.add("token: unknown app", M::GET, format!("{unknown_app}/access_token"), (bearer(ADMIN_KEY), None), "", (404, "unknown_app"));
    t.add("token: SQL as the appid", M::GET, format!("/v1/apps/{sql}/access_token"), (token_key.clone(), None), "", (403, "forbidden"));
    t.add("token: unknown app, a one-app key", M::GET, format!("{unknown_app}/access_token"), (token_key.clone(), None), "", (403, "forbidden"));
    t.add("token: lower-case bearer, the send key", M::GET, &token, (Some(format!("bearer {SEND_KEY}").into_bytes()), None), "", (403, "forbidden"));
    t.add("token: DELETE", M::DELETE, &token, (token_key.clone(), None), "", (405, "method_not_allowed"));
    t.add("token: encoded ../ as the appid", M::GET, format!("/v1/apps/%2E%2E%2F{APPID}/access_token"), (bearer(ADMIN_KEY), None), "", (404, "unknown_app"));

    // POST /v1/apps/{appid}/access_token/refresh
    let r = &refresh;
    t.add("refresh: broken JSON", M::POST, r, (token_key.clone(), JSON), "{\"stale_token\"", (400, "invalid_json"));
    t.add("refresh: empty body", M::POST, r, (token_key.clone(), JSON), "", (400, "invalid_json"));
    t.add("refresh: no stale_token", M::POST, r, (token_key.clone(), JSON), "{}", (400, "invalid_json"));
    t.add("refresh: stale_token is a number", M::POST, r, (token_key.clone(), JSON), bytes(json!({"stale_token": 5})), (400, "invalid_json"));
    t.add("refresh: the field as an array", M::POST, r, (token_key.clone(), JSON), bytes(json!(["stale"])), (400, "invalid_json"));
    t.add("refresh: an unknown field", M::POST, r, (token_key.clone(), JSON), bytes(json!({"stale_token": "t", "force": true})), (400, "invalid_json"));
    t.add("refresh: invalid UTF-8", M::POST, r, (token_key.clone(), JSON), b"{\"stale_token\":\"\xff\"}".to_vec(), (400, "invalid_json"));
    t.add("refresh: empty stale_token", M::POST, r, (token_key.clone(), JSON), bytes(json!({"stale_token": ""})), (422, "invalid_stale_token"));
    t.add("refresh: blank stale_token", M::POST, r, (token_key.clone(), JSON), bytes(json!({"stale_token": " \t "})), (422, "invalid_stale_token"));
    t.add("refresh: body over 1 MiB", M::POST, r, (token_key.clone(), JSON), too_large, (413, "body_too_large"));
    t.add("refresh: no key", M::POST, r, (None, JSON), bytes(json!({"stale_token": "t"})), (401, "missing_api_key"));
    t.add("refresh: Basic auth", M::POST, r, (basic, JSON), bytes(json!({"stale_token": "t"})), (401, "invalid_api_key"));
    t.add("refresh: the send key", M::POST, r, (send, JSON), bytes(json!({"stale_token": "t"})), (403, "forbidden"));
    t.add("refresh: another app's key", M::POST, r, (bearer(OTHER_APP_KEY), JSON), bytes(json!({"stale_token": "t"})), (403, "forbidden"));
    t.add("refresh: unknown app", M::POST, format!("{unknown_app}/access_token/refresh"), (bearer(ADMIN_KEY), JSON), bytes(json!({"stale_token": "t"})), (404, "unknown_app"));
    t.add("refresh: GET", M::GET, r, (token_key.clone(), None), "", (405, "method_not_allowed"));
    t.add("refresh: stale_token twice", M::POST, r, (token_key.clone(), JSON), r#"{"stale_token":"a","stale_token":"b"}"#, (400, "invalid_json"));
    t.add("refresh: text/plain", M::POST, r, (token_key.clone(), Some("text/plain")), bytes(json!({"stale_token": "t"})), (415, "unsupported_media_type"));
    t.add("refresh: no Content-Type", M::POST, r, (token_key.clone(), None), bytes(json!({"stale_token": "t"})), (415, "unsupported_media_type"));
    t.add("refresh: unknown app, a one-app key", M::POST, format!("{unknown_app}/access_token/refresh"), (token_key.clone(), JSON), bytes(json!({"stale_token": "t"})), (403, "forbidden"));
    t.add("refresh: a body that stalls", M::POST, r, (token_key, JSON), bytes(json!({"stale_token": "t"})), (408, "body_timeout"));
    t.stall();

    // Routes outside an app.
    t.add("healthz: POST", M::POST, "/healthz", (None, JSON), "{}", (405, "method_not_allowed"));
    t.add("readyz: DELETE", M::DELETE, "/readyz", (None, None), "", (405, "method_not_allowed"));
    t.cases
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_exact_errors_and_change_nothing(#[case] backend: Backend) {
    // A short body timeout, so that the stalled bodies answer quickly.
    let app = spawn_app_with(backend, |settings| {
        settings["http"] = json!({"body_timeout_ms": 500});
    })
    .await;
    app.collect_form_id(SEEDED).await;
    app.collect_form_id(SEEDED).await;
    let seeded_prepay = app.collect_prepay_id(SEEDED).await;
    let sent = app.notify(SEEDED).await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    let seeded_message = sent.body["id"].as_str().unwrap().to_owned();

    let watched = [SEEDED, ATTACKER, "o-nobody", "o-seeded'--", "o-seeded\"--"];
    let mut quotas_before = Vec::new();
    for openid in watched {
        quotas_before.push(app.quota(openid).await);
    }
    assert_eq!(quotas_before[0]["sends_available"], 4);
    let sends_before = app.fake.sends().len();
    let message_before = app.message(&seeded_message).await;
    assert_eq!(message_before.status, 200);

    let cases = table(app.now_ms(), &seeded_message, &seeded_prepay);
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let answer = send_case(&app, case).await;
        let text = String::from_utf8_lossy(&answer.body);
        let shown = format!(
            "{} {} -> {} [{}] {}",
            case.method,
            case.path,
            answer.status,
            answer.content_type,
            text.chars().take(300).collect::<String>()
        );
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let mut problems = Vec::new();
        if answer.status != case.status {
            problems.push(format!(
                "status {} instead of {}",
                answer.status, case.status
            ));
        }
        if !answer.content_type.starts_with("application/json") {
            problems.push("not application/json".to_owned());
        }
        if case.status == BATCH_REJECTS {
            let rejected = body["rejected"].as_array().cloned().unwrap_or_default();
            if body["accepted"] != 0 || body["duplicates"] != 0 || rejected.is_empty() {
                problems.push("a batch that stored something or rejected nothing".to_owned());
            }
            if rejected
                .iter()
                .any(|rejection| rejection["code"] != case.code)
            {
                problems.push(format!("a rejection other than {}", case.code));
            }
        } else {
            if body["error"]["code"] != case.code {
                problems.push(format!(
                    "code {} instead of {}",
                    body["error"]["code"], case.code
                ));
            }
            if let Some(problem) = error_shape_problem(&body) {
                problems.push(problem);
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    {shown}",
                case.name,
                problems.join("; ")
            ));
        }
    }
    let wrong_answers = failures.len();

    // Nothing changed: reported together with the wrong answers.
    for (openid, before) in watched.iter().zip(&quotas_before) {
        let after = app.quota(openid).await;
        if &after != before {
            failures.push(format!(
                "the quota of {openid} changed:\n    {before}\n -> {after}"
            ));
        }
    }
    let sends_after = app.fake.sends().len();
    if sends_after != sends_before {
        failures.push(format!("WeChat got {} sends", sends_after - sends_before));
    }
    let message_after = app.message(&seeded_message).await;
    if (message_after.status, &message_after.body) != (200, &message_before.body) {
        failures.push(format!(
            "the seeded message changed: {:?}",
            message_after.body
        ));
    }
    assert!(
        failures.is_empty(),
        "{wrong_answers} of {} cases got the wrong answer; {} ledger changes:\n{}",
        cases.len(),
        failures.len() - wrong_answers,
        failures.join("\n")
    );

    // And the service still works.
    let health = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    let again = app.notify(SEEDED).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["status"], "sent");
    assert_eq!(app.sends_available(SEEDED).await, 3);
    assert_eq!(app.fake.sends().len(), sends_before + 1);
}
