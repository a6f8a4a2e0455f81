//! `POST /v1/apps/{appid}/messages` and `GET /v1/apps/{appid}/messages/{id}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::{self, render, AccessError, ApiErrorCode, BodyError};
use super::ApiContext;
use crate::clock::{from_ms, ms};
use crate::config::Scope;
use crate::ledger::failure::SendFailure;
use crate::ledger::kinds::CredentialKind;
use crate::ledger::message::parse_send_request;
use crate::ledger::send::{AttemptSummary, InvalidTemplateData, SendResult, SubscribeDefaults};
use crate::ledger::states::{IdempotencyState, MessageStatus};
use crate::ledger::templates::{check_send, SendParts};
use crate::storage::{IdempotencyBegin, IdempotencyRecord};

/// Errors of the send endpoint before the send starts.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    InvalidField(String),
    /// The request breaks a rule of its channel or its template.
    #[error("{0}")]
    InvalidTemplateData(#[from] InvalidTemplateData),
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with another request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still in flight (message {message_id})")]
    IdempotencyKeyInFlight { message_id: String },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for SendError {
    fn status_code(&self) -> StatusCode {
        match self {
            SendError::Access(error) => error.status_code(),
            SendError::Body(error) => error.status_code(),
            SendError::InvalidField(_)
            | SendError::InvalidTemplateData(_)
            | SendError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            SendError::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            SendError::IdempotencyKeyInFlight { .. } => StatusCode::CONFLICT,
            SendError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for SendError {
    fn code(&self) -> &'static str {
        match self {
            SendError::Access(error) => error.code(),
            SendError::Body(error) => error.code(),
            SendError::InvalidField(_) => "invalid_field",
            SendError::InvalidTemplateData(_) => "invalid_template_data",
            SendError::InvalidIdempotencyKey => "invalid_idempotency_key",
            SendError::IdempotencyKeyReused => "idempotency_key_reused",
            SendError::IdempotencyKeyInFlight { .. } => "idempotency_key_in_flight",
            SendError::Unexpected(_) => "internal",
        }
    }

    fn details(&self) -> Option<serde_json::Map<String, Value>> {
        let SendError::InvalidTemplateData(invalid) = self else {
            return None;
        };
        let mut details = serde_json::Map::new();
        details.insert("field".into(), invalid.field.clone().into());
        details.insert("rule".into(), invalid.rule.into());
        Some(details)
    }
}

/// The status an unsent message answers with.
fn failure_status(failure: &SendFailure) -> StatusCode {
    match failure {
        SendFailure::NoCredential
        | SendFailure::GrantsRevoked { .. }
        | SendFailure::CredentialNotReady => StatusCode::CONFLICT,
        SendFailure::QuotaExhausted { .. } | SendFailure::RateLimited => {
            StatusCode::TOO_MANY_REQUESTS
        }
        SendFailure::RequestInvalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::TokenUnavailable { .. }
        | SendFailure::CircuitOpen { .. }
        | SendFailure::AttemptLimit => StatusCode::SERVICE_UNAVAILABLE,
        SendFailure::ApiRetired { .. }
        | SendFailure::TokenRejected { .. }
        | SendFailure::OutcomeUnknown
        | SendFailure::Unexpected { .. } => StatusCode::BAD_GATEWAY,
        SendFailure::OutcomePending => StatusCode::ACCEPTED,
    }
}

/// Seconds a caller should wait before trying again, where waiting helps.
fn retry_after_secs(failure: &SendFailure, now_ms: i64) -> Option<i64> {
    match failure {
        SendFailure::QuotaExhausted { until_ms } => Some(((until_ms - now_ms) / 1000).max(1)),
        SendFailure::RateLimited => Some(60),
        SendFailure::CredentialNotReady => Some(10),
        SendFailure::CircuitOpen { retry_after_ms } => Some((retry_after_ms / 1000).max(1)),
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::AttemptLimit => Some(1),
        _ => None,
    }
}

/// The answer to a send: its status, a Retry-After where waiting helps, and the body.
fn answer(result: SendResult, now_ms: i64) -> (StatusCode, Option<i64>, Value) {
    let mut body = json!({
        "id": result.message_id,
        "status": result.status,
        "attempts": result.attempts,
    });
    let Some(failure) = result.failure else {
        let status = if result.status == MessageStatus::Waiting {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return (status, None, body);
    };
    let mut error = error::body(failure.code(), &failure.message(), failure.wechat_errcode());
    // WeChat's own words on a refused request: a 47003's errmsg names the field.
    if let SendFailure::RequestInvalid { .. } = failure {
        if let Some(errmsg) = result
            .attempts
            .iter()
            .rev()
            .find_map(|attempt| attempt.errmsg.clone())
        {
            error["error"]["wechat_errmsg"] = errmsg.into();
        }
    }
    body["error"] = error["error"].clone();
    (
        failure_status(&failure),
        retry_after_secs(&failure, now_ms),
        body,
    )
}

/// Keys are opaque to us, but bounded: they are stored and compared.
fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, SendError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| SendError::InvalidIdempotencyKey)?;
    let valid = (1..=255).contains(&key.len()) && key.bytes().all(|byte| byte.is_ascii_graphic());
    if valid {
        Ok(Some(key.to_owned()))
    } else {
        Err(SendError::InvalidIdempotencyKey)
    }
}

/// The same request, whatever its whitespace: the hash of its parsed JSON.
fn request_hash(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<Value>(body)
        .map(|value| value.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    hex::encode(Sha256::digest(canonical))
}

/// Sends a template message to a user with the credential that expires soonest.
///
/// With an `Idempotency-Key`, the first answer is stored and replayed for the
/// same key and body (also a 5xx: the send may have gone out, so it is never
/// run twice), refused for another body, and answered 409 while in flight.
pub async fn send(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, SendError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Send])?;
    let key = idempotency_key(&request)?;
    // The strict reader refuses duplicate keys at any depth (also in
    // `data`); the request rules then read the same bytes.
    let body = context.read_json_text(&request, payload).await?;
    let send_request = parse_send_request(&body).map_err(|rejection| match rejection.code {
        "invalid_json" => SendError::Body(BodyError::InvalidJson(rejection.message)),
        _ => SendError::InvalidField(rejection.message),
    })?;
    // The channel and the body WeChat will get, checked before anything is
    // claimed or an idempotency key is taken: against the template when the
    // catalogue knows it, else by the rules of the channel alone (WeChat
    // then judges the data, and the answer says it was unchecked).
    let known = context
        .catalogue
        .for_send(&appid, &send_request.template_id)
        .await?;
    let template = known.template;
    let known = known.channel;
    let channel = send_request.channel(known);
    if let Some(template) = &template {
        check_send(
            template,
            &SendParts {
                channel,
                data: send_request.data.as_ref(),
                page: send_request.page.as_deref(),
                emphasis_keyword: send_request.emphasis_keyword.as_deref(),
                color: send_request.color.as_deref(),
            },
        )?;
    }
    let defaults = context
        .apps
        .get(&appid)
        .map(|app| SubscribeDefaults {
            miniprogram_state: app.miniprogram_state,
            lang: app.lang,
        })
        .unwrap_or_default();
    let prepared = send_request.prepare(channel, defaults)?;
    let checked = template.is_some();
    // Time-ordered (v7): new messages land at one end of the primary key
    // index instead of all over it.
    let message_id = uuid::Uuid::now_v7().to_string();
    if let Some(key) = &key {
        let now = context.clock.now_ms();
        let expires_at = now + ms(context.ledger.idempotency_retention);
        let hash = request_hash(&body);
        let begin = context
            .storage
            .begin_idempotent(&appid, key, &hash, &message_id, now, expires_at)
            .await?;
        if let IdempotencyBegin::Existing(record) = begin {
            return replay(&context, &appid, key, record, &hash).await;
        }
    }
    let mut settled = true;
    let (status, retry_after, body) = match context.sender.send(&appid, prepared, &message_id).await
    {
        Ok(result) => {
            // Still being settled: the key stays in flight, and a retry is
            // answered from the message once it has ended.
            settled = result.status != MessageStatus::Pending;
            // WeChat does not know the template: the catalogue is stale.
            if result
                .attempts
                .iter()
                .any(|attempt| attempt.errcode == Some(40037))
            {
                context.catalogue.refresh_in_background(&appid);
            }
            let (status, retry_after, mut body) = answer(result, context.clock.now_ms());
            body["channel"] = json!(channel);
            body["checked"] = checked.into();
            (status, retry_after, body)
        }
        Err(error) => {
            tracing::error!(error = ?error, message = %message_id, "send failed");
            let body = error::body("internal", "internal error", None);
            (StatusCode::INTERNAL_SERVER_ERROR, None, body)
        }
    };
    if let Some(key) = key.as_ref().filter(|_| settled) {
        context
            .storage
            .complete_idempotent(&appid, key, &message_id, status.as_u16(), &body.to_string())
            .await?;
    }
    Ok(respond(status, retry_after, body))
}

fn respond(status: StatusCode, retry_after: Option<i64>, body: Value) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if let Some(seconds) = retry_after {
        response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
    }
    response.json(body)
}

/// Answers a request whose key was seen before: its stored answer; or, when
/// the request that took the key never stored one (its process died, or its
/// outcome was still being settled) but its message has ended since, the
/// answer rebuilt from the message, which then becomes the key's answer.
async fn replay(
    context: &ApiContext,
    appid: &str,
    key: &str,
    record: IdempotencyRecord,
    hash: &str,
) -> Result<HttpResponse, SendError> {
    if record.request_hash != hash {
        return Err(SendError::IdempotencyKeyReused);
    }
    if record.state == IdempotencyState::InFlight {
        if let Some(result) = ended_message(context, appid, &record.message_id).await? {
            let (status, retry_after, body) = answer(result, context.clock.now_ms());
            context
                .storage
                .complete_idempotent(
                    appid,
                    key,
                    &record.message_id,
                    status.as_u16(),
                    &body.to_string(),
                )
                .await?;
            let mut response = respond(status, retry_after, body);
            response.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
                actix_web::http::header::HeaderValue::from_static("true"),
            );
            return Ok(response);
        }
    }
    match (record.state, record.response_status, record.response_body) {
        (IdempotencyState::Done, Some(status), Some(body)) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|status| StatusCode::from_u16(status).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok(HttpResponse::build(status)
                .insert_header(("Idempotent-Replayed", "true"))
                .content_type("application/json")
                .body(body))
        }
        _ => Err(SendError::IdempotencyKeyInFlight {
            message_id: record.message_id,
        }),
    }
}

/// A message that has ended (or waits for a credential), as the send that
/// made it would have answered; `None` while it is still pending or unknown
/// to the ledger.
async fn ended_message(
    context: &ApiContext,
    appid: &str,
    message_id: &str,
) -> anyhow::Result<Option<SendResult>> {
    let Some((message, attempts)) = context.storage.message(appid, message_id).await? else {
        return Ok(None);
    };
    if message.status == MessageStatus::Pending {
        return Ok(None);
    }
    let failure = message.error_code.as_deref().and_then(|code| {
        SendFailure::from_stored(code, message.wechat_errcode, message.updated_at)
    });
    Ok(Some(SendResult {
        message_id: message.id,
        status: message.status,
        failure,
        attempts: attempts
            .into_iter()
            .map(|attempt| AttemptSummary {
                credential_kind: attempt
                    .credential_kind
                    .as_deref()
                    .and_then(CredentialKind::parse)
                    .map(CredentialKind::as_str),
                errcode: attempt.errcode,
                outcome: attempt.outcome,
                errmsg: attempt.errcode.and(attempt.detail),
                msgid: attempt.msgid,
            })
            .collect(),
    }))
}

/// Errors of the message lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("no such message")]
    NotFound,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for LookupError {
    fn status_code(&self) -> StatusCode {
        match self {
            LookupError::Access(error) => error.status_code(),
            LookupError::NotFound => StatusCode::NOT_FOUND,
            LookupError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for LookupError {
    fn code(&self) -> &'static str {
        match self {
            LookupError::Access(error) => error.code(),
            LookupError::NotFound => "message_not_found",
            LookupError::Unexpected(_) => "internal",
        }
    }
}

/// A message's status and attempts.
pub async fn lookup(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, LookupError> {
    let (appid, id) = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Send])?;
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(LookupError::NotFound);
    }
    let (message, attempts) = context
        .storage
        .message(&appid, &id)
        .await?
        .ok_or(LookupError::NotFound)?;
    let attempts: Vec<Value> = attempts
        .into_iter()
        .map(|attempt| {
            let mut row = json!({
                "credential_kind": attempt.credential_kind,
                "errcode": attempt.errcode,
                "outcome": attempt.outcome,
                "at": from_ms(attempt.at),
            });
            if let Some(msgid) = attempt.msgid {
                row["msgid"] = msgid.into();
            }
            row
        })
        .collect();
    let mut body = json!({
        "id": message.id,
        "status": message.status,
        "touser": message.touser,
        "template_id": message.template_id,
        "channel": message.channel,
        "created_at": from_ms(message.created_at),
        "updated_at": from_ms(message.updated_at),
        "attempts": attempts,
    });
    if let (Some(error_code), Some(at)) =
        (message.delivery_error_code, message.delivery_reported_at)
    {
        // WeChat's subscribe_msg_sent_event: how the send finally ended.
        body["delivery"] = json!({
            "error_code": error_code,
            "error_status": message.delivery_error_status,
            "at": from_ms(at),
        });
    }
    if let Some(code) = message.error_code {
        let mut error = json!({"code": code});
        if let Some(errcode) = message.wechat_errcode {
            error["wechat_errcode"] = errcode.into();
        }
        body["error"] = error;
    }
    Ok(HttpResponse::Ok().json(body))
}
