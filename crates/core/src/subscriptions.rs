//! The result of `wx.requestSubscribeMessage`, as a frontend posts it: what
//! it must look like before anything is granted.

use serde_json::Value;

use super::collect::{is_plain_identifier, Rejection, MAX_OPENID_LEN};
use super::states::Decision;
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
    let text = |field: &str| {
        object.get(field).and_then(Value::as_str).ok_or_else(|| {
            Rejection::new(
                "missing_field",
                format!("{field} is required and must be a string"),
            )
        })
    };
    let openid = text("openid")?;
    if !is_plain_identifier(openid, MAX_OPENID_LEN) {
        return Err(Rejection::new(
            "invalid_openid",
            format!("openid must be 1 to {MAX_OPENID_LEN} printable ASCII characters"),
        ));
    }
    let request_id = text("request_id")?;
    if !is_plain_identifier(request_id, MAX_REQUEST_ID_LEN) {
        return Err(Rejection::new(
            "invalid_request_id",
            format!("request_id must be 1 to {MAX_REQUEST_ID_LEN} visible ASCII characters"),
        ));
    }
    let Some(result) = object.get("result").and_then(Value::as_object) else {
        return Err(Rejection::new(
            "invalid_result",
            "result is required: the object wx.requestSubscribeMessage resolved with",
        ));
    };
    match result.get("errMsg").and_then(Value::as_str) {
        Some(PROMPT_OK) => {}
        Some(other) => {
            return Err(Rejection::new(
                "prompt_failed",
                format!("the prompt did not resolve ({other:?}); nothing was granted"),
            ))
        }
        None => {
            return Err(Rejection::new(
                "invalid_result",
                format!("result.errMsg must be {PROMPT_OK:?}"),
            ))
        }
    }
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
    let mut decisions = Vec::with_capacity(entries.len());
    for (template_id, status) in entries {
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
        decisions.push(PromptDecision {
            template_id: template_id.clone(),
            decision,
        });
    }
    Ok(Prompt {
        openid: openid.to_owned(),
        request_id: request_id.to_owned(),
        decisions,
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
}
