//! What a business service asks to send, and the body WeChat gets.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ledger::states::Delivery;

/// What a business service asks to send: the body of `POST …/messages`,
/// bounded by `ledger::message::parse_send_request`. Business services
/// never name a credential: the gateway picks it, so `form_id` is refused as
/// an unknown field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    pub data: Option<Map<String, Value>>,
    pub emphasis_keyword: Option<String>,
    pub color: Option<String>,
    /// When the user holds no credential, keep the message this long and
    /// send it as soon as one arrives (answer 202).
    pub wait_seconds: Option<u64>,
    /// `at_most_once` (the default): an unknown outcome is never retried with
    /// another credential. `at_least_once`: it is, at the risk of a duplicate.
    #[serde(default)]
    pub delivery: Delivery,
}

impl SendRequest {
    /// The body WeChat will get, without the credential.
    pub fn payload(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("touser".into(), self.touser.clone().into());
        body.insert("template_id".into(), self.template_id.clone().into());
        let optional = [
            ("page", self.page.clone().map(Value::from)),
            ("data", self.data.clone().map(Value::Object)),
            (
                "emphasis_keyword",
                self.emphasis_keyword.clone().map(Value::from),
            ),
            ("color", self.color.clone().map(Value::from)),
        ];
        for (field, value) in optional {
            if let Some(value) = value {
                body.insert(field.into(), value);
            }
        }
        body
    }
}
