//! Validation of credentials posted by frontends.
//!
//! Each item is judged on its own, so one bad item in a batch of 500 rejects
//! that item with its reason and keeps the other 499.

use chrono::DateTime;
use serde_json::Value;

use super::kinds::CredentialKind;
use crate::ledger::NewCredential;

/// What WeChat's developer tools hand out instead of a real formId
/// (docs/wechat/template-messages.md, "formId and prepay_id").
pub const MOCK_FORM_ID: &str = "the formId is a mock one";

/// A formId the client failed to obtain with `report-submit-timeout` starts with this.
const CLIENT_FAILURE_PREFIX: &str = "requestFormId:fail";

/// The prefix a prepay_id carries in WeChat Pay's `package` field.
const PREPAY_PREFIX: &str = "prepay_id=";

/// WeChat's own field is String(64); nothing longer is a credential.
pub const MAX_VALUE_LEN: usize = 64;

/// Openids are 28 characters today; leave room without accepting junk.
pub const MAX_OPENID_LEN: usize = 128;

/// The fewest bytes one item of a batch takes, with its separating comma:
/// `{"openid":"o","kind":"form_id","value":"v"},`. No body of
/// `ledger.max_body_bytes` can carry more items than that many bytes allow.
pub const MIN_ITEM_BYTES: usize = 44;

/// Why an item was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The clock and tolerance a collection is judged by.
#[derive(Debug, Clone, Copy)]
pub struct CollectContext {
    pub now_ms: i64,
    pub skew_ms: i64,
}

/// Turns one posted item into a credential ready for the ledger.
pub fn parse_item(item: &Value, context: CollectContext) -> Result<NewCredential, Rejection> {
    let Some(object) = item.as_object() else {
        return Err(Rejection::new(
            "invalid_item",
            "each credential must be a JSON object",
        ));
    };
    let openid = required_str(item, "openid")?;
    if !is_plain_identifier(openid, MAX_OPENID_LEN) {
        return Err(Rejection::new(
            "invalid_openid",
            format!(
                "openid must be 1 to {MAX_OPENID_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    let kind_name = required_str(item, "kind")?;
    // Subscribe grants are posted as prompt results (`/subscriptions`), not here.
    let Some(kind) = CredentialKind::parse(kind_name)
        .filter(|kind| kind.rules().channel == crate::states::Channel::Template)
    else {
        return Err(Rejection::new(
            "unknown_kind",
            "kind must be \"form_id\" or \"prepay_id\" (subscribe grants are posted to /subscriptions)",
        ));
    };
    let value = normalize_value(kind, required_str(item, "value")?)?;
    let collected_at = match object.get("collected_at") {
        None | Some(Value::Null) => context.now_ms,
        Some(raw) => parse_timestamp(raw)?,
    };
    if collected_at > context.now_ms + context.skew_ms {
        return Err(Rejection::new(
            "collected_in_future",
            "collected_at is later than now",
        ));
    }
    let expires_at = kind.expires_at_ms(collected_at);
    if expires_at <= context.now_ms {
        return Err(Rejection::new(
            "already_expired",
            format!("a {} expires 7 days after collection", kind.as_str()),
        ));
    }
    Ok(NewCredential {
        openid: openid.to_owned(),
        kind,
        value,
        uses: i64::from(kind.rules().sends),
        collected_at,
        expires_at,
    })
}

fn required_str<'a>(item: &'a Value, field: &'static str) -> Result<&'a str, Rejection> {
    match item.get(field) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(Rejection::new(
            "missing_field",
            format!("{field} is required"),
        )),
        Some(_) => Err(Rejection::new(
            "invalid_type",
            format!("{field} must be a string"),
        )),
    }
}

/// The forms of the `prepay_id=` prefix of WeChat Pay's `package` field
/// that a frontend may pass on: as is, or URL-encoded (`%3D`), in any case.
const PREPAY_PREFIXES: [&str; 2] = [PREPAY_PREFIX, "prepay_id%3d"];

/// The value without one leading prepay prefix, if it has one.
fn strip_prepay_prefix(raw: &str) -> Option<&str> {
    PREPAY_PREFIXES.iter().find_map(|prefix| {
        raw.get(..prefix.len())
            .filter(|head| head.eq_ignore_ascii_case(prefix))
            .map(|_| &raw[prefix.len()..])
    })
}

/// Characters that do not show: zero-width spaces and joiners, the BOM,
/// bidirectional overrides and isolates, the soft hyphen. A copy-and-paste
/// carries them along unseen.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The text as a person reads it: lower case, without spaces and invisible
/// characters. Used only to recognise the mock and failure markers in
/// whatever spelling they arrive.
fn folded(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && !is_invisible(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// True for a character WeChat puts in formIds, prepay_ids and openids:
/// printable ASCII, no space.
fn is_wechat_char(c: char) -> bool {
    c.is_ascii_graphic()
}

/// The normal form of a credential value: a prepay_id without any prefix,
/// and for every kind 1 to 64 printable ASCII characters. The devtools mock
/// and the `report-submit-timeout` failure marker are refused in any case,
/// spacing or with invisible characters; anything else that is not printable
/// ASCII cannot be a WeChat value and is refused, never cleaned up.
fn normalize_value(kind: CredentialKind, raw: &str) -> Result<String, Rejection> {
    let folded = folded(raw);
    if folded == folded_mock() {
        return Err(Rejection::new(
            "mock_form_id",
            "this formId comes from WeChat's developer tools; only a real device gives a usable one",
        ));
    }
    if folded.starts_with(&CLIENT_FAILURE_PREFIX.to_ascii_lowercase()) {
        return Err(Rejection::new(
            "client_failure",
            "the client failed to obtain a formId",
        ));
    }
    let value = match (kind, strip_prepay_prefix(raw)) {
        // Accepted with or without the `prepay_id=` of the Pay `package`, stored without.
        (CredentialKind::PrepayId, stripped) => stripped.unwrap_or(raw),
        (CredentialKind::FormId, Some(_)) => {
            return Err(Rejection::new(
                "kind_mismatch",
                "this value carries prepay_id=: post it with kind \"prepay_id\"",
            ))
        }
        (CredentialKind::FormId, None) => raw,
        // Refused before their value is read.
        (CredentialKind::Subscribe | CredentialKind::LongTerm, _) => raw,
    };
    if strip_prepay_prefix(value).is_some() {
        return Err(Rejection::new(
            "invalid_characters",
            "value carries the prepay_id= prefix more than once",
        ));
    }
    if value.is_empty() {
        return Err(Rejection::new("empty_value", "value is empty"));
    }
    if value.chars().count() > MAX_VALUE_LEN {
        return Err(Rejection::new(
            "value_too_long",
            format!("value is longer than {MAX_VALUE_LEN} characters"),
        ));
    }
    if !value.chars().all(is_wechat_char) {
        return Err(Rejection::new(
            "invalid_characters",
            "value must be printable ASCII without spaces, as WeChat's formIds and prepay_ids are",
        ));
    }
    Ok(value.to_owned())
}

/// [`MOCK_FORM_ID`] folded.
fn folded_mock() -> String {
    folded(MOCK_FORM_ID)
}

/// `collected_at` is RFC 3339 text or Unix milliseconds (what `Date.now()` gives).
fn parse_timestamp(raw: &Value) -> Result<i64, Rejection> {
    let parsed = match raw {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.timestamp_millis()),
        Value::Number(number) => number.as_i64(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        Rejection::new(
            "invalid_collected_at",
            "collected_at must be RFC 3339 text or Unix milliseconds",
        )
    })
}

/// True for 1..=max_len printable ASCII characters without spaces: openids,
/// AppIDs, template ids and other identifiers that end up in paths and SQL
/// binds. WeChat's own are ASCII; a zero-width space, a BOM or a
/// right-to-left override in one is a forgery or a copy-and-paste accident.
pub fn is_plain_identifier(text: &str, max_len: usize) -> bool {
    !text.is_empty() && text.len() <= max_len && text.chars().all(is_wechat_char)
}

/// What became of one credential handed to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored as a new credential.
    Inserted,
    /// The same value for the same user was already known.
    Duplicate,
    /// The value is already stored for another openid.
    OwnedByAnotherUser,
    /// The value is already stored for this openid, as another kind.
    KindConflict,
}

/// What the ledger holds for one credential it was handed: a fact, read in
/// the transaction that tried to store it, for [`insert_outcome`] to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredCredential {
    /// Stored as a new credential.
    Inserted,
    /// The value was already stored, for `owner` as `kind`.
    Existing { owner: String, kind: String },
}

/// Tells a repeated post of the user's own credential from a value that
/// already belongs to someone else, or to this user as another kind. The
/// owner is judged first: another user's value says nothing about its kind
/// to the caller.
pub fn insert_outcome(stored: &StoredCredential, item: &NewCredential) -> InsertOutcome {
    match stored {
        StoredCredential::Inserted => InsertOutcome::Inserted,
        StoredCredential::Existing { owner, .. } if *owner != item.openid => {
            InsertOutcome::OwnedByAnotherUser
        }
        StoredCredential::Existing { kind, .. } if kind != item.kind.as_str() => {
            InsertOutcome::KindConflict
        }
        StoredCredential::Existing { .. } => InsertOutcome::Duplicate,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const CONTEXT: CollectContext = CollectContext {
        now_ms: NOW,
        skew_ms: 60_000,
    };

    fn rejection(item: Value) -> &'static str {
        parse_item(&item, CONTEXT).unwrap_err().code
    }

    #[test]
    fn the_smallest_item_takes_min_item_bytes() {
        let smallest = json!({"openid": "o", "kind": "form_id", "value": "v"}).to_string();
        assert!(parse_item(&serde_json::from_str(&smallest).unwrap(), CONTEXT).is_ok());
        assert_eq!(smallest.len() + ",".len(), MIN_ITEM_BYTES);
    }

    #[test]
    fn accepts_a_form_id_with_seven_days_and_one_send() {
        let credential = parse_item(
            &json!({"openid": "o1", "kind": "form_id", "value": "22d907226dcd4542afb8829fa5e20768"}),
            CONTEXT,
        )
        .unwrap();
        assert_eq!(credential.uses, 1);
        assert_eq!(credential.collected_at, NOW);
        assert_eq!(credential.expires_at, NOW + 7 * 86_400_000);
    }

    #[test]
    fn strips_the_prepay_prefix() {
        let credential = parse_item(
            &json!({"openid": "o1", "kind": "prepay_id", "value": "prepay_id=wx20180126161440ba00614c4d0245522131"}),
            CONTEXT,
        )
        .unwrap();
        assert_eq!(credential.value, "wx20180126161440ba00614c4d0245522131");
        assert_eq!(credential.uses, 3);
    }

    #[test]
    fn rejects_what_cannot_be_a_credential() {
        let base = |value: &str| json!({"openid": "o1", "kind": "form_id", "value": value});
        assert_eq!(rejection(base(MOCK_FORM_ID)), "mock_form_id");
        assert_eq!(rejection(base("")), "empty_value");
        assert_eq!(rejection(base(&"a".repeat(65))), "value_too_long");
        assert_eq!(rejection(base("abc\u{0}def")), "invalid_characters");
        assert_eq!(
            rejection(base("requestFormId:fail timeout")),
            "client_failure"
        );
        assert_eq!(
            rejection(json!({"openid": "o1", "kind": "prepay_id", "value": "prepay_id="})),
            "empty_value"
        );
        assert_eq!(
            rejection(json!({"openid": "o1", "kind": "subscribe", "value": "x"})),
            "unknown_kind"
        );
        assert_eq!(
            rejection(json!({"kind": "form_id", "value": "x"})),
            "missing_field"
        );
        assert_eq!(
            rejection(json!({"openid": 5, "kind": "form_id", "value": "x"})),
            "invalid_type"
        );
        assert_eq!(rejection(json!("form_id")), "invalid_item");
    }

    #[test]
    fn prepay_prefixes_are_stripped_in_every_spelling() {
        for posted in [
            "prepay_id=wx2018",
            "PREPAY_ID=wx2018",
            "prepay_id%3Dwx2018",
            "Prepay_Id%3dwx2018",
            "wx2018",
        ] {
            let item = json!({"openid": "o1", "kind": "prepay_id", "value": posted});
            assert_eq!(
                parse_item(&item, CONTEXT).unwrap().value,
                "wx2018",
                "{posted}"
            );
        }
        let prepay = |value: &str| json!({"openid": "o1", "kind": "prepay_id", "value": value});
        assert_eq!(
            rejection(prepay("prepay_id=prepay_id%3Dwx1")),
            "invalid_characters"
        );
        assert_eq!(rejection(prepay("prepay_id%3D")), "empty_value");
        let form = |value: &str| json!({"openid": "o1", "kind": "form_id", "value": value});
        assert_eq!(rejection(form("prepay_id=wx2018")), "kind_mismatch");
        assert_eq!(rejection(form("PREPAY_ID%3Dwx2018")), "kind_mismatch");
    }

    #[test]
    fn mock_and_failure_markers_are_refused_in_any_spelling() {
        let form = |value: &str| json!({"openid": "o1", "kind": "form_id", "value": value});
        for mock in [
            "the formId is a mock one",
            "The FormId Is A Mock One",
            "the  formId is a mock one ",
            "theformIdisamockone",
            "the formId\u{200B} is a mock one",
            "\u{FEFF}the formId is a mock one",
            "the formId is a mock one\u{202E}",
            "the\tformId is a mock one",
        ] {
            assert_eq!(rejection(form(mock)), "mock_form_id", "{mock:?}");
        }
        for failure in [
            "requestFormId:fail timeout",
            "requestFormId:fail",
            "REQUESTFORMID:FAIL",
            " requestFormId:fail report-submit-timeout",
            "\u{200B}requestFormId:fail",
        ] {
            assert_eq!(rejection(form(failure)), "client_failure", "{failure:?}");
        }
    }

    #[test]
    fn values_and_openids_are_printable_ascii() {
        let form = |value: &str| json!({"openid": "o1", "kind": "form_id", "value": value});
        for value in [
            "abc\u{200B}def",
            "\u{FEFF}abcdef",
            "abc\u{202E}fed",
            "abc\u{2066}def",
            "abc\u{00AD}def",
            "abc\u{00A0}def",
            "ab\u{0441}def",
            "\u{FF41}bcdef",
            "abc\u{7F}def",
        ] {
            assert_eq!(rejection(form(value)), "invalid_characters", "{value:?}");
        }
        for openid in [
            "o1\u{200B}",
            "\u{FEFF}o1",
            "o\u{202E}1",
            "o\u{0441}1",
            "o 1",
        ] {
            let item = json!({"openid": openid, "kind": "form_id", "value": "abcdef"});
            assert_eq!(rejection(item), "invalid_openid", "{openid:?}");
        }
        let item = json!({"openid": "oAbC-_09", "kind": "form_id", "value": "22d907226dcd4542afb8829fa5e20768"});
        assert!(parse_item(&item, CONTEXT).is_ok());
    }

    #[test]
    fn judges_collected_at_against_the_lifetime() {
        let at = |collected_at: Value| json!({"openid": "o1", "kind": "form_id", "value": "abc", "collected_at": collected_at});
        assert_eq!(rejection(at(json!(NOW + 3_600_000))), "collected_in_future");
        assert_eq!(
            rejection(at(json!(NOW - 8 * 86_400_000))),
            "already_expired"
        );
        assert_eq!(rejection(at(json!("yesterday"))), "invalid_collected_at");
        let credential = parse_item(&at(json!("2027-01-15T08:00:00+08:00")), CONTEXT);
        assert!(credential.is_ok());
        let credential = parse_item(&at(json!(NOW - 86_400_000)), CONTEXT).unwrap();
        assert_eq!(credential.expires_at, NOW + 6 * 86_400_000);
    }
}
