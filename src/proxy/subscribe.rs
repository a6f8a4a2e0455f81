//! `POST /cgi-bin/message/subscribe/send` through the ledger: the body an
//! SDK sends (docs/wechat/subscribe-messages.md, "The send") is read as a
//! send request on the subscribe channel and goes the way of
//! `POST /v1/apps/{appid}/messages` (`Sender::check`, then `Sender::send`:
//! claim a grant of exactly that template, call, settle, record the message
//! and its attempts). The SDK is answered what WeChat answered, `msgid`
//! included; a user without a grant gets 43101 without a call to WeChat.
//! An app with `proxy.apps.<appid>.ledger_sends = false` is forwarded as is.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use formid_core::proxy::{redact_query, CallerQuery};
use serde_json::{json, Value};

use super::forward::{call_with_token, caller_app, read_bounded, Outgoing};
use super::{stem, wechat_error, wechat_error_msg, wechat_json, ProxyContext};
use crate::ledger::failure::SendFailure;
use crate::ledger::message::parse_send_request;
use crate::ledger::states::{Channel, MessageStatus};
use crate::sending::{SendRefusal, SendResult};

/// The subscribe send.
#[tracing::instrument(
    name = "proxy_subscribe_send",
    skip_all,
    fields(query = %redact_query(request.query_string()), appid, message_id)
)]
pub async fn send(
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ProxyContext>,
) -> HttpResponse {
    let query = match CallerQuery::parse(request.query_string()) {
        Ok(query) => query,
        Err(_) => return wechat_error(40001),
    };
    let appid = match caller_app(&context, &query).await {
        Ok(appid) => appid,
        Err(answer) => return answer,
    };
    tracing::Span::current().record("appid", appid.as_str());
    if request.method() != Method::POST {
        return wechat_error(43002);
    }
    let body = match read_bounded(&context, payload).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    if !context.settings.ledger_sends(&appid) {
        let outgoing = Outgoing {
            method: reqwest::Method::POST,
            path: "/cgi-bin/message/subscribe/send",
            query,
            content_type: Some("application/json".into()),
            body,
        };
        return call_with_token(&context, &appid, &outgoing).await;
    }
    through_ledger(&context, &appid, &body).await
}

/// Checks and sends the body as a subscribe send of the ledger.
async fn through_ledger(context: &super::ProxyContext, appid: &str, body: &[u8]) -> HttpResponse {
    if body.iter().all(u8::is_ascii_whitespace) {
        return wechat_error(44002);
    }
    let mut send_request = match parse_send_request(body) {
        Ok(send_request) => send_request,
        Err(rejection) => {
            tracing::info!(reason = %rejection.message, "a subscribe send body was refused");
            let errcode = if rejection.code == "invalid_json" {
                47001
            } else {
                47003
            };
            return wechat_error(errcode);
        }
    };
    send_request.channel = Some(Channel::Subscribe);
    let checked = match context.sender.check(appid, send_request).await {
        Ok(checked) => checked,
        Err(SendRefusal::Invalid(invalid)) => {
            tracing::info!(%invalid, "a subscribe send failed its template's rules");
            return wechat_error_msg(47003, &format!("argument invalid! {invalid}"));
        }
        Err(SendRefusal::Ledger(error)) => {
            tracing::error!(?error, "reading the ledger for a subscribe send failed");
            return wechat_error(-1);
        }
    };
    let message_id = uuid::Uuid::now_v7().to_string();
    tracing::Span::current().record("message_id", message_id.as_str());
    match context.sender.send(appid, checked, &message_id).await {
        Ok(outcome) => wechat_json(&answer_of(&outcome.result)),
        Err(error) => {
            tracing::error!(?error, "a subscribe send through the endpoint failed");
            wechat_error(-1)
        }
    }
}

/// What WeChat answered the send, as WeChat's JSON: `{"errcode":0,
/// "errmsg":"ok","msgid":N}`, WeChat's errcode and errmsg of a refusal,
/// 43101 for a user without a grant (no call made), and -1 (WeChat's "system
/// error", which SDKs treat as "try later") when the outcome is not known or
/// no call could be made.
fn answer_of(result: &SendResult) -> Value {
    if result.status == MessageStatus::Sent {
        let msgid = result.attempts.iter().rev().find_map(|a| a.msgid.clone());
        let msgid = msgid.map_or(Value::Null, |id| {
            id.parse::<u64>().map_or(Value::String(id), Value::from)
        });
        return json!({"errcode": 0, "errmsg": "ok", "msgid": msgid});
    }
    let errcode = match &result.failure {
        Some(SendFailure::NoCredential) => 43101,
        Some(failure) => failure.wechat_errcode().unwrap_or(-1),
        None => -1,
    };
    let errmsg = result
        .attempts
        .iter()
        .rev()
        .find(|attempt| attempt.errcode == Some(errcode))
        .and_then(|attempt| attempt.errmsg.clone())
        .unwrap_or_else(|| format!("{} rid: {}", stem(errcode), super::rid()));
    json!({"errcode": errcode, "errmsg": errmsg})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::states::AttemptOutcome;
    use crate::sending::AttemptSummary;

    fn result(
        status: MessageStatus,
        failure: Option<SendFailure>,
        attempts: Vec<AttemptSummary>,
    ) -> SendResult {
        SendResult {
            message_id: "m".into(),
            status,
            failure,
            attempts,
        }
    }

    fn attempt(errcode: i64, errmsg: Option<&str>, msgid: Option<&str>) -> AttemptSummary {
        AttemptSummary {
            credential_kind: Some("subscribe"),
            errcode: Some(errcode),
            outcome: AttemptOutcome::Sent,
            errmsg: errmsg.map(str::to_owned),
            msgid: msgid.map(str::to_owned),
        }
    }

    #[test]
    fn the_sdk_is_answered_what_wechat_answered() {
        let sent = result(
            MessageStatus::Sent,
            None,
            vec![attempt(0, None, Some("2919893478396723201"))],
        );
        assert_eq!(
            answer_of(&sent),
            json!({"errcode": 0, "errmsg": "ok", "msgid": 2919893478396723201_u64})
        );
        let none = result(
            MessageStatus::Failed,
            Some(SendFailure::NoCredential),
            vec![],
        );
        assert_eq!(answer_of(&none)["errcode"], 43101);
        let refused = result(
            MessageStatus::Failed,
            Some(SendFailure::RequestInvalid { errcode: 47003 }),
            vec![attempt(
                47003,
                Some("argument invalid! data.thing1.value rid: x"),
                None,
            )],
        );
        assert_eq!(
            answer_of(&refused),
            json!({"errcode": 47003, "errmsg": "argument invalid! data.thing1.value rid: x"})
        );
        let unknown = result(
            MessageStatus::Unknown,
            Some(SendFailure::OutcomeUnknown),
            vec![],
        );
        assert_eq!(answer_of(&unknown)["errcode"], -1);
        let quota = result(
            MessageStatus::Failed,
            Some(SendFailure::QuotaExhausted { until_ms: 0 }),
            vec![],
        );
        assert_eq!(answer_of(&quota)["errcode"], 45009);
    }
}
