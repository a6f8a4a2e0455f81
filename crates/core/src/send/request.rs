//! What a business service asks to send, and the body WeChat gets.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::states::{Channel, Delivery};
use crate::templates::check_no_template_fields;
pub use crate::templates::InvalidTemplateData;

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
    #[serde(default, deserialize_with = "crate::nulls::null_as_default")]
    pub delivery: Delivery,
    /// The API to send through; by default the template decides (see
    /// [`SendRequest::prepare`]).
    pub channel: Option<Channel>,
    /// Subscribe messages: which version of the mini-program the card opens.
    pub miniprogram_state: Option<MiniprogramState>,
    /// Subscribe messages: the card's language.
    pub lang: Option<Lang>,
    /// Send even inside the app's quiet hours (needs the `urgent` scope).
    #[serde(default, deserialize_with = "crate::nulls::null_as_default")]
    pub urgent: bool,
    /// Keep the message as scheduled and send it at this time (RFC 3339);
    /// a time already past sends at once.
    #[serde(default)]
    pub send_at: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The caller's own name for the message (1 to 256 printable
    /// characters, see `message::is_reference`): kept on the message and
    /// passed through on every event about it.
    #[serde(default)]
    pub reference: Option<String>,
    /// The `Idempotency-Key` the send came with: set by the HTTP layer from
    /// the header, never read from the body. Kept like `reference`.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

/// A request checked for its channel, with the body WeChat will get
/// (without the credential, which a template send adds per call).
#[derive(Debug, Clone)]
pub struct PreparedSend {
    pub touser: String,
    pub template_id: String,
    pub channel: Channel,
    pub payload: Map<String, Value>,
    pub delivery: Delivery,
    pub wait_seconds: Option<u64>,
    /// Sent even inside quiet hours.
    pub urgent: bool,
    /// When to send it (Unix ms), for a scheduled send.
    pub send_at_ms: Option<i64>,
    /// The caller's reference, passed through to the message's events.
    pub reference: Option<String>,
    /// The send's `Idempotency-Key`, passed through likewise.
    pub idempotency_key: Option<String>,
}

/// An app's defaults for the fields of a subscribe send.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribeDefaults {
    pub miniprogram_state: MiniprogramState,
    pub lang: Lang,
}

impl SendRequest {
    /// The channel: the one the request names, else `known` (what the
    /// app's catalogue or the user's grants say of the template), else the
    /// legacy template channel.
    pub fn channel(&self, known: Option<Channel>) -> Channel {
        self.channel.or(known).unwrap_or(Channel::Template)
    }

    /// Checks the request against the rules of `channel` and shapes its
    /// body. A subscribe send carries no colour, no `emphasis_keyword` and
    /// no `.DATA` suffix: WeChat would refuse them (47003) or drop them
    /// silently, so they are refused here, before anything is spent. Takes
    /// the request, whose fields move into the body (the send path copies
    /// nothing it does not have to).
    pub fn prepare(
        self,
        channel: Channel,
        defaults: SubscribeDefaults,
    ) -> Result<PreparedSend, InvalidTemplateData> {
        match channel {
            Channel::Template => self.check_template_fields()?,
            Channel::Subscribe => self.check_subscribe_fields()?,
        }
        // touser, template_id, page and data: the fields both APIs share.
        let mut payload = Map::new();
        payload.insert("touser".into(), self.touser.clone().into());
        payload.insert("template_id".into(), self.template_id.clone().into());
        if let Some(page) = self.page {
            payload.insert("page".into(), page.into());
        }
        if let Some(data) = self.data {
            payload.insert("data".into(), Value::Object(data));
        }
        match channel {
            Channel::Template => {
                let optional = [
                    ("emphasis_keyword", self.emphasis_keyword),
                    ("color", self.color),
                ];
                for (field, value) in optional {
                    if let Some(value) = value {
                        payload.insert(field.into(), value.into());
                    }
                }
            }
            Channel::Subscribe => {
                let state = self.miniprogram_state.unwrap_or(defaults.miniprogram_state);
                let lang = self.lang.unwrap_or(defaults.lang);
                payload.insert(
                    "miniprogram_state".into(),
                    serde_json::to_value(state).unwrap_or_default(),
                );
                payload.insert(
                    "lang".into(),
                    serde_json::to_value(lang).unwrap_or_default(),
                );
            }
        }
        Ok(PreparedSend {
            touser: self.touser,
            template_id: self.template_id,
            channel,
            payload,
            delivery: self.delivery,
            wait_seconds: self.wait_seconds,
            urgent: self.urgent,
            send_at_ms: self.send_at.map(|at| at.timestamp_millis()),
            reference: self.reference,
            idempotency_key: self.idempotency_key,
        })
    }

    fn check_template_fields(&self) -> Result<(), InvalidTemplateData> {
        for (field, given) in [
            ("miniprogram_state", self.miniprogram_state.is_some()),
            ("lang", self.lang.is_some()),
        ] {
            if given {
                return Err(InvalidTemplateData::new(
                    field,
                    "not_in_template",
                    "only a subscribe message has this field",
                ));
            }
        }
        Ok(())
    }

    fn check_subscribe_fields(&self) -> Result<(), InvalidTemplateData> {
        check_no_template_fields(self.emphasis_keyword.as_deref(), self.color.as_deref())?;
        for (key, field) in self.data.iter().flatten() {
            if key.ends_with(".DATA") {
                return Err(InvalidTemplateData::new(
                    format!("data.{key}"),
                    "data_suffix",
                    format!(
                        "a subscribe key has no .DATA suffix: write {:?}",
                        key.trim_end_matches(".DATA")
                    ),
                ));
            }
            if let Some(object) = field.as_object() {
                if let Some(extra) = object.keys().find(|name| *name != "value") {
                    let field = format!("data.{key}.{extra}");
                    return Err(if extra == "color" {
                        InvalidTemplateData::new(
                            field,
                            "not_in_subscribe",
                            "a subscribe message has no colours: remove it",
                        )
                    } else {
                        InvalidTemplateData::new(
                            field,
                            "value_shape",
                            "a subscribe value is {\"value\": …} and nothing else",
                        )
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: Value) -> SendRequest {
        serde_json::from_value(json).expect("a send request")
    }

    #[test]
    fn a_subscribe_body_has_the_app_defaults_and_no_legacy_fields() {
        let send = request(serde_json::json!({
            "touser": "o1", "template_id": "T", "page": "pages/a?x=1",
            "data": {"thing1": {"value": "hi"}}, "lang": "en_US"
        }));
        let prepared = send
            .prepare(Channel::Subscribe, SubscribeDefaults::default())
            .expect("valid");
        assert_eq!(
            Value::Object(prepared.payload),
            serde_json::json!({
                "touser": "o1", "template_id": "T", "page": "pages/a?x=1",
                "data": {"thing1": {"value": "hi"}},
                "miniprogram_state": "formal", "lang": "en_US"
            })
        );
    }

    #[test]
    fn legacy_fields_on_a_subscribe_send_are_refused_not_dropped() {
        for (json, field) in [
            (
                serde_json::json!({"emphasis_keyword": "keyword1.DATA"}),
                "emphasis_keyword",
            ),
            (serde_json::json!({"color": "#173177"}), "color"),
            (
                serde_json::json!({"data": {"thing1.DATA": {"value": "x"}}}),
                "data.thing1.DATA",
            ),
            (
                serde_json::json!({"data": {"thing1": {"value": "x", "color": "#000000"}}}),
                "data.thing1.color",
            ),
        ] {
            let mut body = serde_json::json!({"touser": "o1", "template_id": "T"});
            for (key, value) in json.as_object().unwrap() {
                body[key] = value.clone();
            }
            let error = request(body)
                .prepare(Channel::Subscribe, SubscribeDefaults::default())
                .expect_err(field);
            assert_eq!(error.field, field);
        }
    }

    #[test]
    fn subscribe_fields_on_a_template_send_are_refused() {
        let send = request(serde_json::json!({
            "touser": "o1", "template_id": "T", "miniprogram_state": "trial"
        }));
        let error = send
            .prepare(Channel::Template, SubscribeDefaults::default())
            .expect_err("refused");
        assert_eq!(error.field, "miniprogram_state");
    }

    #[test]
    fn the_named_channel_wins_over_what_the_ledger_knows() {
        let send =
            request(serde_json::json!({"touser": "o", "template_id": "T", "channel": "template"}));
        assert_eq!(send.channel(Some(Channel::Subscribe)), Channel::Template);
        let send = request(serde_json::json!({"touser": "o", "template_id": "T"}));
        assert_eq!(send.channel(Some(Channel::Subscribe)), Channel::Subscribe);
        assert_eq!(send.channel(None), Channel::Template);
    }
}

/// Which version of the mini-program a subscribe message opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MiniprogramState {
    Developer,
    Trial,
    /// WeChat's own default.
    #[default]
    Formal,
}

/// The language of a subscribe message's card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Lang {
    /// WeChat's own default.
    #[default]
    #[serde(rename = "zh_CN")]
    ZhCn,
    #[serde(rename = "en_US")]
    EnUs,
    #[serde(rename = "zh_HK")]
    ZhHk,
    #[serde(rename = "zh_TW")]
    ZhTw,
}
