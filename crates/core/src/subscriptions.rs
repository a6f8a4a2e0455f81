//! The result of `wx.requestSubscribeMessage`, as a frontend posts it: what
//! it must look like before anything is granted.

use serde_json::{Map, Value};

use super::collect::{is_plain_identifier, Rejection, MAX_OPENID_LEN};
use super::states::{Decision, PushEffect};
use crate::ledger::PromptDecision;

/// The one `errMsg` of a prompt that resolved.
pub const PROMPT_OK: &str = "requestSubscribeMessage:ok";

/// Templates one prompt can carry. The documents say 3 in one place
/// (`tmplIds` of `wx.requestSubscribeMessage`) and 5 in others; the larger
/// bound refuses nothing WeChat can produce.
pub const MAX_TEMPLATES_PER_PROMPT: usize = 5;

/// `request_id`: made by the frontend per prompt, 1 to 64 visible ASCII characters.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// WeChat's template ids are base64url-like (`priTmplId`, 43 characters
/// today); anything outside this alphabet or length cannot be one.
const MAX_TEMPLATE_ID_LEN: usize = 128;

/// A prompt result, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub openid: String,
    pub request_id: String,
    /// One per template of the prompt, in the order posted.
    pub decisions: Vec<PromptDecision>,
}

/// Parses `{"openid","request_id","result":{…}}`. `result` is the object
/// `wx.requestSubscribeMessage` resolved with, passed through untouched.
pub fn parse_prompt(body: &Value) -> Result<Prompt, Rejection> {
    let object = prompt_object(body)?;
    let openid = required_text(object, "openid")?;
    if !is_plain_identifier(openid, MAX_OPENID_LEN) {
        return Err(Rejection::new(
            "invalid_openid",
            format!("openid must be 1 to {MAX_OPENID_LEN} printable ASCII characters"),
        ));
    }
    let request_id = required_text(object, "request_id")?;
    if !is_plain_identifier(request_id, MAX_REQUEST_ID_LEN) {
        return Err(Rejection::new(
            "invalid_request_id",
            format!("request_id must be 1 to {MAX_REQUEST_ID_LEN} visible ASCII characters"),
        ));
    }
    let result = resolved_result(object)?;
    Ok(Prompt {
        openid: openid.to_owned(),
        request_id: request_id.to_owned(),
        decisions: prompt_decisions(result)?,
    })
}

/// The body as an object holding no field but `openid`, `request_id` and
/// `result`.
fn prompt_object(body: &Value) -> Result<&Map<String, Value>, Rejection> {
    let Some(object) = body.as_object() else {
        return Err(Rejection::new(
            "invalid_body",
            "the body must be a JSON object",
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "openid" | "request_id" | "result"))
    {
        return Err(Rejection::new(
            "unknown_field",
            format!("unknown field {unknown:?}: the body is openid, request_id and result"),
        ));
    }
    Ok(object)
}

fn required_text<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, Rejection> {
    object.get(field).and_then(Value::as_str).ok_or_else(|| {
        Rejection::new(
            "missing_field",
            format!("{field} is required and must be a string"),
        )
    })
}

/// `result`, if it is the object of a prompt that resolved: a failed or
/// cancelled prompt grants nothing.
fn resolved_result(object: &Map<String, Value>) -> Result<&Map<String, Value>, Rejection> {
    let Some(result) = object.get("result").and_then(Value::as_object) else {
        return Err(Rejection::new(
            "invalid_result",
            "result is required: the object wx.requestSubscribeMessage resolved with",
        ));
    };
    match result.get("errMsg").and_then(Value::as_str) {
        Some(PROMPT_OK) => Ok(result),
        Some(other) => Err(Rejection::new(
            "prompt_failed",
            format!("the prompt did not resolve ({other:?}); nothing was granted"),
        )),
        None => Err(Rejection::new(
            "invalid_result",
            format!("result.errMsg must be {PROMPT_OK:?}"),
        )),
    }
}

/// The decision on each template `result` names (every member but
/// `errMsg`), in the order posted.
fn prompt_decisions(result: &Map<String, Value>) -> Result<Vec<PromptDecision>, Rejection> {
    let entries: Vec<_> = result.iter().filter(|(key, _)| *key != "errMsg").collect();
    if entries.is_empty() {
        return Err(Rejection::new("invalid_result", "result names no template"));
    }
    if entries.len() > MAX_TEMPLATES_PER_PROMPT {
        return Err(Rejection::new(
            "too_many_templates",
            format!("one prompt carries at most {MAX_TEMPLATES_PER_PROMPT} templates"),
        ));
    }
    entries
        .into_iter()
        .map(|(template_id, status)| template_decision(template_id, status))
        .collect()
}

fn template_decision(template_id: &str, status: &Value) -> Result<PromptDecision, Rejection> {
    if !is_template_id(template_id) {
        return Err(Rejection::new(
            "invalid_template_id",
            format!("{template_id:?} cannot be a template id"),
        ));
    }
    let decision = status
        .as_str()
        .and_then(Decision::from_wechat)
        .ok_or_else(|| {
            Rejection::new(
                "invalid_status",
                format!(
                    "result.{template_id} must be accept, acceptWithAudio, acceptWithAlert, \
                     reject, ban or filter"
                ),
            )
        })?;
    Ok(PromptDecision {
        template_id: template_id.to_owned(),
        decision,
    })
}

/// Letters, digits, `-` and `_`, as in every `priTmplId` WeChat hands out.
fn is_template_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TEMPLATE_ID_LEN
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// What one template of a recorded prompt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptEffect {
    /// One one-time grant added.
    Granted,
    /// The long-term subscription is on.
    LongTermOn,
    /// The decision was recorded; nothing was granted.
    Recorded,
}

/// What one item of a push asks of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAction {
    /// A popup answer: recorded as the user's latest decision; when
    /// `grants` (the app's grants come from WeChat) an accept grants one
    /// send, or switches a long-term template on.
    Decide { decision: Decision, grants: bool },
    /// A change event's `reject`: the user's grants of the template still in
    /// the pool retired, the long-term subscription off, the decision
    /// `revoked`.
    Revoke,
    /// A sent event: the final delivery of the message whose attempt
    /// carries `msgid`.
    Delivery {
        msgid: String,
        error_code: i64,
        error_status: String,
    },
    /// A status the ledger does not act on: only remembered.
    Ignore,
}

/// What an effect depends on that only the ledger knows, and the effect for
/// each answer. The rules make the plan; storage reads the one fact it names,
/// in the transaction that applies the effect, and takes the effect for what
/// it read ([`EffectPlan::resolve`]): it decides nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectPlan<E> {
    /// Known without reading the ledger.
    Fixed(E),
    /// Depends on whether the template is one of the app's long-term
    /// templates (type 3 in the catalogue).
    ByTemplateType { long_term: E, one_time: E },
    /// Depends on whether a message of the app and user carries the item's
    /// `msgid`.
    ByMessage { found: E, missing: E },
}

impl<E: Copy> EffectPlan<E> {
    /// The effect, given what the ledger knows.
    pub fn resolve(self, facts: LedgerFacts) -> E {
        match self {
            Self::Fixed(effect) => effect,
            Self::ByTemplateType {
                long_term,
                one_time,
            } => {
                if facts.long_term {
                    long_term
                } else {
                    one_time
                }
            }
            Self::ByMessage { found, missing } => {
                if facts.message_found {
                    found
                } else {
                    missing
                }
            }
        }
    }
}

/// What one template's answer in a prompt does: with `grants` (the app's
/// grants come from its frontend), an accept grants one send of a one-time
/// template or switches a long-term one on (what the catalogue says of the
/// template); otherwise the decision is only recorded.
pub fn prompt_plan(grants: bool, decision: Decision) -> EffectPlan<PromptEffect> {
    if grants && decision.grants() {
        EffectPlan::ByTemplateType {
            long_term: PromptEffect::LongTermOn,
            one_time: PromptEffect::Granted,
        }
    } else {
        EffectPlan::Fixed(PromptEffect::Recorded)
    }
}

/// What the ledger knows when it applies one push item or prompt answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerFacts {
    /// The item's template is a long-term one of the app.
    pub long_term: bool,
    /// A message of the app and user carries the item's msgid.
    pub message_found: bool,
}

/// What one push item does, by what the ledger knows.
pub fn push_plan(action: &PushAction) -> EffectPlan<PushEffect> {
    match action {
        PushAction::Decide { decision, grants } if *grants && decision.grants() => {
            EffectPlan::ByTemplateType {
                long_term: PushEffect::LongTermOn,
                one_time: PushEffect::Granted,
            }
        }
        PushAction::Decide { .. } => EffectPlan::Fixed(PushEffect::Recorded),
        PushAction::Revoke => EffectPlan::Fixed(PushEffect::Revoked),
        PushAction::Delivery { .. } => EffectPlan::ByMessage {
            found: PushEffect::DeliveryRecorded,
            missing: PushEffect::NoMessage,
        },
        PushAction::Ignore => EffectPlan::Fixed(PushEffect::Ignored),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(result: Value) -> Value {
        json!({"openid": "o-1", "request_id": "r-1", "result": result})
    }

    #[test]
    fn the_documented_result_parses_in_order() {
        let prompt = parse_prompt(&body(json!({
            "errMsg": "requestSubscribeMessage:ok",
            "TMPL_A": "accept", "TMPL_B": "reject", "TMPL_C": "ban",
            "TMPL_D": "filter", "TMPL_E": "acceptWithAudio"
        })))
        .expect("valid");
        let decisions: Vec<_> = prompt
            .decisions
            .iter()
            .map(|d| (d.template_id.as_str(), d.decision))
            .collect();
        assert_eq!(
            decisions,
            [
                ("TMPL_A", Decision::Accept),
                ("TMPL_B", Decision::Reject),
                ("TMPL_C", Decision::Ban),
                ("TMPL_D", Decision::Filter),
                ("TMPL_E", Decision::AcceptWithAudio),
            ]
        );
    }

    #[test]
    fn every_refusal_has_its_code() {
        let ok = "requestSubscribeMessage:ok";
        let cases = [
            (json!([]), "invalid_body"),
            (json!({"openid": "o", "request_id": "r"}), "invalid_result"),
            (json!({"request_id": "r", "result": {}}), "missing_field"),
            (
                json!({"openid": "o o", "request_id": "r", "result": {}}),
                "invalid_openid",
            ),
            (
                json!({"openid": "o", "request_id": "", "result": {}}),
                "invalid_request_id",
            ),
            (
                json!({"openid": "o", "request_id": "x".repeat(65), "result": {}}),
                "invalid_request_id",
            ),
            (
                json!({"openid": "o", "request_id": "r", "result": {}, "extra": 1}),
                "unknown_field",
            ),
            (body(json!({"T": "accept"})), "invalid_result"),
            (
                body(json!({"errMsg": "requestSubscribeMessage:fail cancel", "T": "accept"})),
                "prompt_failed",
            ),
            (body(json!({"errMsg": ok})), "invalid_result"),
            (body(json!({"errMsg": ok, "T": "maybe"})), "invalid_status"),
            (body(json!({"errMsg": ok, "T": 1})), "invalid_status"),
            (
                body(json!({"errMsg": ok, "T/x": "accept"})),
                "invalid_template_id",
            ),
            (
                body(
                    json!({"errMsg": ok, "A": "accept", "B": "accept", "C": "accept",
                            "D": "accept", "E": "accept", "F": "accept"}),
                ),
                "too_many_templates",
            ),
        ];
        for (body, code) in cases {
            assert_eq!(
                parse_prompt(&body).map(|_| ()).unwrap_err().code,
                code,
                "{body}"
            );
        }
    }

    #[test]
    fn a_prompt_grants_only_an_accept_of_an_app_that_takes_grants_from_prompts() {
        use PromptEffect::*;
        let rows = [
            (true, Decision::Accept, false, Granted),
            (true, Decision::Accept, true, LongTermOn),
            (true, Decision::Reject, false, Recorded),
            (true, Decision::Reject, true, Recorded),
            (false, Decision::Accept, false, Recorded),
            (false, Decision::Accept, true, Recorded),
        ];
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(grants, decision, long_term, effect)| {
                prompt_plan(*grants, *decision).resolve(LedgerFacts {
                    long_term: *long_term,
                    message_found: false,
                }) != *effect
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn each_push_item_has_one_effect_given_what_the_ledger_knows() {
        let decide = |decision, grants| PushAction::Decide { decision, grants };
        let delivery = PushAction::Delivery {
            msgid: "1".into(),
            error_code: 0,
            error_status: "success".into(),
        };
        let facts = |long_term, message_found| LedgerFacts {
            long_term,
            message_found,
        };
        let rows = [
            (
                decide(Decision::Accept, true),
                facts(false, false),
                PushEffect::Granted,
            ),
            (
                decide(Decision::Accept, true),
                facts(true, false),
                PushEffect::LongTermOn,
            ),
            (
                decide(Decision::Accept, false),
                facts(true, false),
                PushEffect::Recorded,
            ),
            (
                decide(Decision::Reject, true),
                facts(false, false),
                PushEffect::Recorded,
            ),
            (PushAction::Revoke, facts(false, false), PushEffect::Revoked),
            (
                delivery.clone(),
                facts(false, true),
                PushEffect::DeliveryRecorded,
            ),
            (delivery, facts(false, false), PushEffect::NoMessage),
            (PushAction::Ignore, facts(true, true), PushEffect::Ignored),
        ];
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(action, facts, effect)| push_plan(action).resolve(*facts) != *effect)
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}
