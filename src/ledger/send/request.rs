//! What a business service asks to send, and the body WeChat gets.

use serde_json::{Map, Value};

/// What a business service asks to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    pub data: Option<Map<String, Value>>,
    pub emphasis_keyword: Option<String>,
    pub color: Option<String>,
    /// Seconds to wait for a credential when the user holds none.
    pub wait_seconds: Option<u64>,
    /// Whether an unknown outcome may be retried with another credential at
    /// the risk of a second notification.
    pub at_least_once: bool,
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
