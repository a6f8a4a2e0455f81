//! Property tests of the two parsers that stand between the network and the
//! ledger: `parse_item` (a posted credential) and `parse_send_request` (the
//! body of a send).

use formid_gateway::ledger::collect::{
    parse_item, CollectContext, MAX_OPENID_LEN, MAX_VALUE_LEN, MOCK_FORM_ID,
};
use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::ledger::message::{parse_send_request, MAX_WAIT_SECONDS};
use formid_gateway::ledger::states::Delivery;
use formid_gateway::storage::NewCredential;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const NOW: i64 = 1_800_000_000_000;
const SKEW: i64 = 60_000;
const DAY: i64 = 86_400_000;
const LIFETIME: i64 = 7 * DAY;
const CONTEXT: CollectContext = CollectContext {
    now_ms: NOW,
    skew_ms: SKEW,
};
const PREPAY_PREFIX: &str = "prepay_id=";

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |float| {
            serde_json::Number::from_f64(float).map(Value::Number)
        }),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Strings near the edges of what a credential value or openid may be.
fn edgy_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,64}",
        "[A-Za-z0-9_-]{60,70}",
        "prepay_id=[A-Za-z0-9]{0,66}",
        "(prepay_id=){1,3}[A-Za-z0-9]{0,8}",
        "requestFormId:fail[ a-z]{0,10}",
        Just(MOCK_FORM_ID.to_owned()),
        Just(format!("{PREPAY_PREFIX}{MOCK_FORM_ID}")),
        Just(String::new()),
        "[a-z \t\n\r\u{0}\u{7f}\u{85}\u{a0}\u{200b}\u{3000}]{0,10}",
        "\\PC{0,70}",
        ".{0,70}",
    ]
}

/// What a frontend might put in `collected_at`.
fn edgy_collected_at() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (NOW - 8 * DAY..NOW + DAY).prop_map(|at| Some(json!(at))),
        any::<i64>().prop_map(|at| Some(json!(at))),
        (NOW - 8 * DAY..NOW + DAY).prop_map(|at| Some(json!(rfc3339(at)))),
        any::<f64>().prop_map(|at| Some(json!(at))),
        ".{0,30}".prop_map(|text| Some(json!(text))),
        any_json().prop_map(Some),
    ]
}

/// Objects with a credential's fields, each drawn from near-valid values
/// and sometimes from any JSON at all.
fn near_valid_item() -> impl Strategy<Value = Value> {
    let field = |strings: BoxedStrategy<String>| {
        prop_oneof![
            4 => strings.prop_map(|text| Some(Value::String(text))),
            1 => Just(None),
            1 => any_json().prop_map(Some),
        ]
    };
    let kinds = prop_oneof![
        Just("form_id".to_owned()),
        Just("prepay_id".to_owned()),
        Just("subscribe".to_owned()),
        Just("FORM_ID".to_owned()),
        ".{0,10}",
    ]
    .boxed();
    (
        field(edgy_string().boxed()),
        field(kinds),
        field(edgy_string().boxed()),
        edgy_collected_at(),
        prop::option::of((".{1,8}", any_json())),
    )
        .prop_map(|(openid, kind, value, collected_at, extra)| {
            let mut object = Map::new();
            let fields = [
                ("openid", openid),
                ("kind", kind),
                ("value", value),
                ("collected_at", collected_at),
            ];
            for (name, field) in fields {
                if let Some(field) = field {
                    object.insert(name.into(), field);
                }
            }
            if let Some((name, field)) = extra {
                object.entry(name).or_insert(field);
            }
            Value::Object(object)
        })
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Openids, values and other identifiers are printable ASCII without spaces.
fn is_plain(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.chars().all(|c| c.is_ascii_graphic())
}

/// Everything an accepted credential must satisfy, whatever was posted.
fn check_credential(credential: &NewCredential) -> Result<(), TestCaseError> {
    let value = &credential.value;
    prop_assert!(!value.is_empty(), "empty value");
    prop_assert!(
        value.chars().count() <= MAX_VALUE_LEN,
        "value too long: {value:?}"
    );
    prop_assert!(
        value.chars().all(|c| c.is_ascii_graphic()),
        "not printable ASCII: {value:?}"
    );
    prop_assert_ne!(value.as_str(), MOCK_FORM_ID);
    prop_assert!(is_plain(&credential.openid, MAX_OPENID_LEN));
    match credential.kind {
        CredentialKind::FormId => prop_assert_eq!(credential.uses, 1),
        CredentialKind::PrepayId => {
            prop_assert_eq!(credential.uses, 3);
            prop_assert!(
                !value.starts_with(PREPAY_PREFIX),
                "a prepay_id stored with its prefix: {value:?}"
            );
        }
        kind @ (CredentialKind::Subscribe | CredentialKind::LongTerm) => {
            prop_assert!(false, "a {kind:?} accepted from a credential post")
        }
    }
    prop_assert!(credential.collected_at <= NOW + SKEW);
    prop_assert_eq!(
        Some(credential.expires_at),
        credential.collected_at.checked_add(LIFETIME)
    );
    prop_assert!(credential.expires_at > NOW);
    Ok(())
}

/// Everything an accepted send request must satisfy.
fn check_send(request: &formid_gateway::sending::SendRequest) -> Result<(), TestCaseError> {
    prop_assert!(
        is_plain(&request.touser, MAX_OPENID_LEN),
        "{:?}",
        request.touser
    );
    prop_assert!(
        is_plain(&request.template_id, 128),
        "{:?}",
        request.template_id
    );
    prop_assert!(request.page.as_ref().is_none_or(|page| page.len() <= 1024));
    if let Some(data) = &request.data {
        prop_assert!(data.len() <= 64);
        for field in data.values() {
            let ok = match &field["value"] {
                Value::String(text) => text.chars().count() <= 1024,
                Value::Number(_) => true,
                _ => false,
            };
            prop_assert!(ok, "data field {field}");
        }
    }
    prop_assert!(request
        .wait_seconds
        .is_none_or(|wait| (1..=MAX_WAIT_SECONDS).contains(&wait)));
    Ok(())
}

/// The fields of a send request, comparable.
type SendFields = (
    String,
    String,
    Option<String>,
    Option<Map<String, Value>>,
    Option<String>,
    Option<String>,
    Option<u64>,
    bool,
);

fn fields(request: &formid_gateway::sending::SendRequest) -> SendFields {
    (
        request.touser.clone(),
        request.template_id.clone(),
        request.page.clone(),
        request.data.clone(),
        request.emphasis_keyword.clone(),
        request.color.clone(),
        request.wait_seconds,
        request.delivery == Delivery::AtLeastOnce,
    )
}

/// A send body again, from what was parsed.
fn reserialise(request: &formid_gateway::sending::SendRequest) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("touser".into(), json!(request.touser));
    body.insert("template_id".into(), json!(request.template_id));
    let optional = [
        ("page", request.page.clone().map(Value::from)),
        ("data", request.data.clone().map(Value::Object)),
        (
            "emphasis_keyword",
            request.emphasis_keyword.clone().map(Value::from),
        ),
        ("color", request.color.clone().map(Value::from)),
        ("wait_seconds", request.wait_seconds.map(Value::from)),
        (
            "delivery",
            Some(Value::from(if request.delivery == Delivery::AtLeastOnce {
                "at_least_once"
            } else {
                "at_most_once"
            })),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    serde_json::to_vec(&Value::Object(body)).unwrap()
}

/// A valid send body, as JSON.
fn valid_send_body() -> impl Strategy<Value = Value> {
    let data_value = prop_oneof![
        "\\PC{0,40}".prop_map(Value::from),
        ".{1000,1024}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ];
    let data_field = (data_value, prop::option::of("#[0-9a-f]{6}")).prop_map(|(value, color)| {
        let mut field = json!({"value": value});
        if let Some(color) = color {
            field["color"] = json!(color);
        }
        field
    });
    (
        "[A-Za-z0-9_-]{1,128}",
        "[!-~]{1,128}",
        prop::option::of(".{0,100}"),
        prop::option::of(prop::collection::btree_map(
            "keyword[0-9]{1,3}",
            data_field,
            0..64,
        )),
        prop::option::of("keyword[0-9]\\.DATA"),
        prop::option::of("#[0-9a-f]{6}"),
        prop::option::of(prop_oneof![
            Just(0u64),
            Just(MAX_WAIT_SECONDS),
            0..=MAX_WAIT_SECONDS
        ]),
        prop::option::of(prop_oneof![Just("at_most_once"), Just("at_least_once")]),
    )
        .prop_map(
            |(touser, template_id, page, data, emphasis, color, wait, delivery)| {
                let mut body = json!({"touser": touser, "template_id": template_id});
                if let Some(page) = page {
                    body["page"] = json!(page);
                }
                if let Some(data) = data {
                    body["data"] = Value::Object(data.into_iter().collect());
                }
                if let Some(emphasis) = emphasis {
                    body["emphasis_keyword"] = json!(emphasis);
                }
                if let Some(color) = color {
                    body["color"] = json!(color);
                }
                if let Some(wait) = wait {
                    body["wait_seconds"] = json!(wait);
                }
                if let Some(delivery) = delivery {
                    body["delivery"] = json!(delivery);
                }
                body
            },
        )
}

/// Send bodies with each field near its bounds or of the wrong type.
fn near_valid_send_body() -> impl Strategy<Value = Value> {
    let text = || {
        prop_oneof![
            4 => edgy_string().prop_map(Value::from),
            1 => "[a-z]{120,130}".prop_map(Value::from),
            1 => any_json(),
        ]
    };
    let data = prop_oneof![
        prop::collection::btree_map(".{0,6}", any_json(), 0..4)
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        prop::collection::btree_map(
            "k[0-9]{1,3}",
            prop_oneof![
                ".{0,20}".prop_map(|text| json!({"value": text})),
                ".{1020,1030}".prop_map(|text| json!({"value": text})),
                any_json().prop_map(|value| json!({"value": value})),
                any_json(),
            ],
            0..70
        )
        .prop_map(|map| Value::Object(map.into_iter().collect())),
        any_json(),
    ];
    let wait = prop_oneof![
        any::<i64>().prop_map(Value::from),
        (MAX_WAIT_SECONDS - 2..MAX_WAIT_SECONDS + 2).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any_json(),
    ];
    (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(prop_oneof![
            ".{1020,1030}".prop_map(Value::from),
            any_json()
        ]),
        prop::option::of(data),
        prop::option::of(wait),
        prop::option::of(prop_oneof![
            Just("form_id"),
            Just("prepay_id"),
            Just("credential"),
            Just("color"),
            Just("emphasis_keyword"),
            Just("delivery"),
        ]),
        any_json(),
    )
        .prop_map(
            |(touser, template_id, page, data, wait, extra, extra_value)| {
                let mut body = Map::new();
                let fields = [
                    ("touser", touser),
                    ("template_id", template_id),
                    ("page", page),
                    ("data", data),
                    ("wait_seconds", wait),
                    (extra.unwrap_or("touser"), extra.map(|_| extra_value)),
                ];
                for (name, field) in fields {
                    if let Some(field) = field {
                        body.insert(name.into(), field);
                    }
                }
                Value::Object(body)
            },
        )
}

proptest! {
    // No regression files: this file is the whole test.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn parse_item_never_panics_and_what_it_accepts_is_sound(item in any_json()) {
        if let Ok(credential) = parse_item(&item, CONTEXT) {
            check_credential(&credential)?;
        }
    }

    #[test]
    fn near_valid_items_are_judged_soundly(item in near_valid_item()) {
        if let Ok(credential) = parse_item(&item, CONTEXT) {
            check_credential(&credential)?;
            prop_assert_eq!(&item["openid"], &json!(credential.openid));
            prop_assert_eq!(&item["kind"], &json!(credential.kind.as_str()));
        }
    }

    #[test]
    fn any_valid_value_round_trips(
        openid in "[A-Za-z0-9_-]{1,128}",
        value in prop_oneof!["[A-Za-z0-9_-]{1,64}", "[!-~]{1,64}"],
        prepay in any::<bool>(),
        prefixed in any::<bool>(),
        collected_at in prop::option::of(NOW - LIFETIME + 1..=NOW + SKEW),
        as_text in any::<bool>(),
    ) {
        let lower = value.to_ascii_lowercase();
        prop_assume!(lower != "theformidisamockone" && !lower.starts_with("requestformid:fail"));
        prop_assume!(!lower.starts_with("prepay_id=") && !lower.starts_with("prepay_id%3d"));
        let (kind, posted) = if prepay && prefixed {
            (CredentialKind::PrepayId, format!("{PREPAY_PREFIX}{value}"))
        } else if prepay {
            (CredentialKind::PrepayId, value.clone())
        } else {
            (CredentialKind::FormId, value.clone())
        };
        let mut item = json!({"openid": openid, "kind": kind.as_str(), "value": posted});
        if let Some(at) = collected_at {
            item["collected_at"] = if as_text { json!(rfc3339(at)) } else { json!(at) };
        }
        let credential = parse_item(&item, CONTEXT);
        prop_assert!(credential.is_ok(), "{item} was refused: {:?}", credential.err());
        let credential = credential.unwrap();
        check_credential(&credential)?;
        prop_assert_eq!(&credential.openid, &openid);
        prop_assert_eq!(credential.kind, kind);
        prop_assert_eq!(&credential.value, &value);
        prop_assert_eq!(credential.collected_at, collected_at.unwrap_or(NOW));
        prop_assert_eq!(credential.expires_at, credential.collected_at + LIFETIME);
    }

    #[test]
    fn parse_send_request_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = parse_send_request(&body) {
            check_send(&request)?;
        }
    }

    #[test]
    fn parse_send_request_never_panics_on_json(body in any_json()) {
        if let Ok(request) = parse_send_request(&serde_json::to_vec(&body).unwrap()) {
            check_send(&request)?;
        }
    }

    #[test]
    fn near_valid_send_bodies_are_judged_soundly(body in near_valid_send_body()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        if let Ok(request) = parse_send_request(&bytes) {
            check_send(&request)?;
            prop_assert_eq!(&body["touser"], &json!(request.touser));
            prop_assert_eq!(&body["template_id"], &json!(request.template_id));
            let credential_named = ["form_id", "prepay_id", "credential"]
                .iter()
                .any(|name| body.get(*name).is_some());
            prop_assert!(!credential_named, "a body naming a credential was accepted: {body}");
        }
    }

    #[test]
    fn a_valid_send_body_parses_to_its_fields_and_round_trips(body in valid_send_body()) {
        let request = parse_send_request(&serde_json::to_vec(&body).unwrap());
        prop_assert!(request.is_ok(), "{body} was refused: {:?}", request.err());
        let request = request.unwrap();
        check_send(&request)?;
        prop_assert_eq!(&json!(request.touser), &body["touser"]);
        prop_assert_eq!(&json!(request.template_id), &body["template_id"]);
        prop_assert_eq!(&json!(request.page), &body["page"]);
        prop_assert_eq!(&request.data.clone().map(Value::Object).unwrap_or(Value::Null), &body["data"]);
        prop_assert_eq!(&json!(request.emphasis_keyword), &body["emphasis_keyword"]);
        prop_assert_eq!(&json!(request.color), &body["color"]);
        let wait = body["wait_seconds"].as_u64().filter(|wait| *wait > 0);
        prop_assert_eq!(request.wait_seconds, wait);
        prop_assert_eq!(
            request.delivery == Delivery::AtLeastOnce,
            body["delivery"] == "at_least_once"
        );
        let again = parse_send_request(&reserialise(&request));
        prop_assert!(again.is_ok(), "the re-serialised body was refused: {:?}", again.err());
        prop_assert_eq!(fields(&again.unwrap()), fields(&request));
    }

    #[test]
    fn a_prepay_id_is_stored_without_its_prefix_however_it_was_posted(
        prefixes in 0..4usize,
        value in "[A-Za-z0-9]{1,40}",
    ) {
        let posted = format!("{}{value}", PREPAY_PREFIX.repeat(prefixes));
        let item = json!({"openid": "o1", "kind": "prepay_id", "value": posted});
        if let Ok(credential) = parse_item(&item, CONTEXT) {
            check_credential(&credential)?;
            prop_assert_eq!(&credential.value, &value, "posted {}", posted);
        }
    }

    #[test]
    fn a_send_body_must_be_a_json_object(
        touser in "[A-Za-z0-9_-]{1,28}",
        length in 0..16usize,
    ) {
        // The fields in declaration order, the rest null: serde's derive
        // takes a sequence for a struct unless the parser forbids it.
        let mut array = vec![json!(touser), json!("tmpl-order-shipped")];
        array.resize(length.max(2), Value::Null);
        array.truncate(length);
        let body = serde_json::to_vec(&Value::Array(array)).unwrap();
        let parsed = parse_send_request(&body);
        prop_assert!(
            parsed.is_err(),
            "the array {} was accepted as a send request",
            String::from_utf8_lossy(&body)
        );
    }
}
