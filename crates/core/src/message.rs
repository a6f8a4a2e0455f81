//! What a send request must look like before the gateway spends anything on it.

use serde_json::{Map, Value};

use super::collect::{is_plain_identifier, Rejection, MAX_OPENID_LEN};
use super::send::SendRequest;
use super::states::UnknownState;

/// Bounds on what is forwarded, well above WeChat's own so that WeChat, not
/// this gateway, judges the content, yet small enough to keep rows bounded.
const MAX_TEMPLATE_ID_LEN: usize = 128;
const MAX_PAGE_LEN: usize = 1024;
const MAX_DATA_FIELDS: usize = 64;
const MAX_DATA_VALUE_LEN: usize = 1024;
const MAX_KEYWORD_LEN: usize = 64;
/// The longest `reference` a caller may give, in characters.
pub const MAX_REFERENCE_LEN: usize = 256;
/// A credential lives 7 days: waiting longer than that for one is never useful.
pub const MAX_WAIT_SECONDS: u64 = 7 * 86_400;

/// Parses and bounds the body of `POST …/messages`.
pub fn parse_send_request(body: &[u8]) -> Result<SendRequest, Rejection> {
    let body = read_send_request(body)?;
    check_bounds(&body)?;
    Ok(SendRequest {
        wait_seconds: body.wait_seconds.filter(|wait| *wait > 0),
        ..body
    })
}

/// The body as a request, or why it is none: a broken body and a field
/// naming a value it cannot take are told apart.
fn read_send_request(body: &[u8]) -> Result<SendRequest, Rejection> {
    let not_a_request = |error: String| Rejection {
        code: "invalid_json",
        message: format!("the body is not a valid send request: {error}"),
    };
    // serde would also read a struct from a JSON array of its fields in
    // order, which no caller means: only an object is a request.
    if !is_json_object(body) {
        return Err(not_a_request("it must be a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|error| {
        // A well-formed string that names no delivery mode is a wrong field
        // value, not a broken body.
        let text = error.to_string();
        if text.starts_with(UnknownState::PREFIX) || text.starts_with("unknown variant") {
            Rejection {
                code: "invalid_field",
                message: format!(
                    "a field names no value it can take ({text}); delivery is \"at_most_once\" \
                     or \"at_least_once\", channel \"template\" or \"subscribe\""
                ),
            }
        } else {
            not_a_request(error.to_string())
        }
    })
}

fn invalid_field(message: &str) -> Result<(), Rejection> {
    Err(Rejection {
        code: "invalid_field",
        message: message.to_owned(),
    })
}

/// The bounds on each field, checked in the order the fields are written.
fn check_bounds(body: &SendRequest) -> Result<(), Rejection> {
    if !is_plain_identifier(&body.touser, MAX_OPENID_LEN) {
        return invalid_field("touser must be the user's openid");
    }
    if !is_plain_identifier(&body.template_id, MAX_TEMPLATE_ID_LEN) {
        return invalid_field("template_id must be 1 to 128 printable characters");
    }
    if body
        .page
        .as_ref()
        .is_some_and(|page| page.len() > MAX_PAGE_LEN)
    {
        return invalid_field("page is longer than 1024 bytes");
    }
    if let Some(data) = &body.data {
        check_data(data)?;
    }
    let too_long = |field: &Option<String>| {
        field
            .as_ref()
            .is_some_and(|text| text.chars().count() > MAX_KEYWORD_LEN)
    };
    if too_long(&body.emphasis_keyword) || too_long(&body.color) {
        return invalid_field("emphasis_keyword and color are at most 64 characters");
    }
    if body
        .wait_seconds
        .is_some_and(|wait| wait > MAX_WAIT_SECONDS)
    {
        return invalid_field("wait_seconds is longer than 7 days");
    }
    if body
        .reference
        .as_deref()
        .is_some_and(|reference| !is_reference(reference))
    {
        return invalid_field("reference must be 1 to 256 printable characters");
    }
    Ok(())
}

/// Whether `text` may be a caller's `reference`: 1 to
/// [`MAX_REFERENCE_LEN`] characters, none of them a control character
/// (it goes verbatim into event bodies and logs read by people).
pub fn is_reference(text: &str) -> bool {
    (1..=MAX_REFERENCE_LEN).contains(&text.chars().count()) && !text.chars().any(char::is_control)
}

/// `data`: at most [`MAX_DATA_FIELDS`] fields, each `{"value": …}` with a
/// number or a text of bounded length.
fn check_data(data: &Map<String, Value>) -> Result<(), Rejection> {
    if data.len() > MAX_DATA_FIELDS {
        return invalid_field("data has more than 64 fields");
    }
    for (key, field) in data {
        let value = field.get("value");
        let ok = field.is_object()
            && value.is_some_and(|value| match value {
                Value::String(text) => text.chars().count() <= MAX_DATA_VALUE_LEN,
                Value::Number(_) => true,
                _ => false,
            });
        if !ok {
            return Err(Rejection {
                code: "invalid_field",
                message: format!(
                    "data.{key} must be {{\"value\": text of at most {MAX_DATA_VALUE_LEN} characters}}"
                ),
            });
        }
    }
    Ok(())
}

/// Whether a body is a JSON object, judged by its first significant byte.
pub fn is_json_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_1_to_256_printable_characters() {
        assert!(is_reference("order-42"));
        assert!(is_reference("订单 42 · ✓"));
        assert!(is_reference(&"é".repeat(MAX_REFERENCE_LEN)));
        assert!(!is_reference(""));
        assert!(!is_reference(&"a".repeat(MAX_REFERENCE_LEN + 1)));
        for control in ["a\nb", "a\tb", "a\u{0}b", "a\u{7f}b", "a\u{85}b"] {
            assert!(!is_reference(control), "{control:?}");
        }
    }

    #[test]
    fn a_send_request_keeps_its_reference_and_refuses_a_bad_one() {
        let body = br#"{"touser":"o1","template_id":"T","reference":"order-42"}"#;
        let request = parse_send_request(body).expect("a valid request");
        assert_eq!(request.reference.as_deref(), Some("order-42"));
        assert_eq!(request.idempotency_key, None);
        for reference in ["\"\"", "\"a\\u0007b\"", &format!("\"{}\"", "x".repeat(257))] {
            let body = format!(r#"{{"touser":"o1","template_id":"T","reference":{reference}}}"#);
            let rejection = parse_send_request(body.as_bytes()).expect_err(reference);
            assert_eq!(rejection.code, "invalid_field");
        }
        // The key comes from the header, never from the body.
        let body = br#"{"touser":"o1","template_id":"T","idempotency_key":"k"}"#;
        assert_eq!(
            parse_send_request(body).expect_err("unknown field").code,
            "invalid_json"
        );
    }
}
