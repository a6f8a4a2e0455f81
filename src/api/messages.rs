//! `POST /v1/apps/{appid}/messages` and `GET /v1/apps/{appid}/messages/{id}`.

use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::authorized::{Authorized, SendScope};
use super::error::{ApiError, ErrorBody};
use super::responses::{Attempt, Message, SendBody, Sent};
use super::ApiContext;
use crate::clock::ms;
use crate::ledger::failure::SendFailure;
use crate::ledger::kinds::CredentialKind;
use crate::ledger::message::parse_send_request;
use crate::ledger::states::{IdempotencyState, MessageStatus};
use crate::sending::{AttemptSummary, CheckedSend, SendRequest, SendResult};
use crate::storage::{IdempotencyBegin, IdempotencyRecord};

/// The header of an answer given again for an idempotency key.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The answer to a send: its status, a Retry-After where waiting helps, and
/// the body.
struct Reply {
    status: StatusCode,
    retry_after: Option<i64>,
    body: SendBody,
}

impl Reply {
    /// The answer to a send that ran.
    fn of(result: SendResult, now_ms: i64) -> Self {
        let attempts: Vec<Attempt> = result.attempts.into_iter().map(Attempt::from).collect();
        let mut sent = Sent {
            attempts,
            channel: None,
            checked: None,
            error: None,
            id: result.message_id,
            reference: None,
            status: result.status,
        };
        let Some(failure) = result.failure else {
            let status = if matches!(
                result.status,
                MessageStatus::Waiting | MessageStatus::Scheduled
            ) {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            return Self {
                status,
                retry_after: None,
                body: SendBody::Answer(sent),
            };
        };
        let mut error = ApiError::from_send_failure(&failure, now_ms);
        // WeChat's own words on a refused request: a 47003's errmsg names the field.
        if let SendFailure::RequestInvalid { .. } = failure {
            let errmsg = sent.attempts.iter().rev().find_map(|a| a.errmsg.clone());
            if let Some(errmsg) = errmsg {
                error = error.with_detail("wechat_errmsg", errmsg);
            }
        }
        let (status, retry_after) = (error.status(), error.retry_after_secs());
        sent.error = Some(error.public_object());
        Self {
            status,
            retry_after,
            body: SendBody::Answer(sent),
        }
    }

    /// The answer to a send the user's send rules refused before anything
    /// was stored: an error body (no message id: there is no message).
    fn refused(failure: &SendFailure, now_ms: i64) -> Self {
        let mut error = ApiError::from_send_failure(failure, now_ms);
        let at = match failure {
            SendFailure::QuietHours { opens_at_ms } => Some(("opens_at", *opens_at_ms)),
            SendFailure::UserSendLimit { retry_at_ms } => Some(("retry_at", *retry_at_ms)),
            _ => None,
        };
        if let Some((name, at)) = at {
            if let Some(time) = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at) {
                error = error.with_detail(name, time.to_rfc3339());
            }
        }
        let mut body = ErrorBody::new(error.code(), "");
        body.error = error.public_object();
        Self {
            status: error.status(),
            retry_after: error.retry_after_secs(),
            body: SendBody::Error(body),
        }
    }

    /// The answer when the send failed on our side: the outcome is unknown
    /// to the caller, and the message may exist.
    fn internal() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            retry_after: None,
            body: SendBody::Error(ErrorBody::new("internal", "internal error")),
        }
    }

    /// The caller's reference on the answer of a send that has a message.
    fn with_reference(mut self, reference: Option<String>) -> Self {
        if let SendBody::Answer(sent) = &mut self.body {
            sent.reference = reference;
        }
        self
    }

    /// The body as stored for an idempotency key.
    fn stored_body(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(&self.body)?)
    }

    fn respond(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        response.json(&self.body)
    }
}

/// Keys are opaque to us, but bounded: they are stored and compared.
fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().filter(|key| {
        (1..=255).contains(&key.len()) && key.bytes().all(|byte| byte.is_ascii_graphic())
    });
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
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
#[utoipa::path(
    post, path = "/v1/apps/{appid}/messages", tag = "messages", operation_id = "send_message",
    params(("appid" = String, Path, description = "The app's AppID"), ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters: the first answer is kept and replayed for the same body")),
    request_body = crate::api::requests::SendMessage,
    responses(
        (status = 200, description = "Sent (or, with a failure, not sent: see `error`)", body = Sent),
        (status = 202, description = "Waiting for a credential, scheduled, or its outcome pending", body = Sent),
    ),
    security(("api_key" = [])),
)]
pub async fn send(
    auth: Authorized<SendScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let appid = auth.appid();
    let key = idempotency_key(&request)?;
    // The strict reader refuses duplicate keys at any depth (also in
    // `data`); the request rules then read the same bytes.
    let body = context.read_json_text(&request, payload).await?;
    // Checked before anything is claimed or an idempotency key is taken.
    let mut request = parse(&body)?;
    request.idempotency_key.clone_from(&key);
    let reference = request.reference.clone();
    check_send_rules(&auth, &context, &request)?;
    let checked = context.sender.check(appid, request).await?;
    // Time-ordered (v7): new messages land at one end of the primary key
    // index instead of all over it.
    let message_id = uuid::Uuid::now_v7().to_string();
    if let Some(key) = &key {
        let now = context.clock.now_ms();
        let expires_at = now + ms(context.ledger.idempotency_retention);
        let hash = request_hash(&body);
        let begin = context
            .storage
            .begin_idempotent(&crate::storage::IdempotencyRequest {
                appid,
                key,
                request_hash: &hash,
                message_id: &message_id,
                now,
                expires_at,
            })
            .await?;
        if let IdempotencyBegin::Existing(record) = begin {
            return replay(&context, appid, key, record, &hash).await;
        }
    }
    let (reply, settled) = run(&context, appid, checked, &message_id).await;
    let reply = reply.with_reference(reference);
    if let Some(key) = key.as_ref().filter(|_| settled) {
        let stored = reply.stored_body()?;
        context
            .storage
            .complete_idempotent(appid, key, &message_id, reply.status.as_u16(), &stored)
            .await?;
    }
    Ok(reply.respond())
}

/// The longest a message may be scheduled ahead: 30 days.
const MAX_SCHEDULE_MS: i64 = 30 * 86_400_000;

/// What the send rules ask of the caller: `urgent` needs a key with the
/// `urgent` scope; `send_at` lies at most 30 days ahead.
fn check_send_rules(
    auth: &Authorized<SendScope>,
    context: &ApiContext,
    request: &SendRequest,
) -> Result<(), ApiError> {
    if request.urgent {
        auth.principal()
            .check_scopes(&[crate::config::Scope::Urgent])
            .map_err(|_| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "urgent_not_allowed",
                    "\"urgent\": true needs an API key with the urgent scope",
                )
            })?;
    }
    let ahead = request
        .send_at
        .map(|at| at.timestamp_millis() - context.clock.now_ms());
    if ahead.is_some_and(|ahead| ahead > MAX_SCHEDULE_MS) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "send_at is more than 30 days ahead",
        ));
    }
    Ok(())
}

/// The send a body asks for, by the rules of a send request.
fn parse(body: &[u8]) -> Result<SendRequest, ApiError> {
    parse_send_request(body).map_err(|rejection| match rejection.code {
        "invalid_json" => ApiError::invalid_json(rejection.message),
        _ => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            rejection.message,
        ),
    })
}

/// Runs a checked send: its answer, and whether its outcome is settled
/// (one still being settled leaves its idempotency key in flight, and a
/// retry is answered from the message once it has ended).
async fn run(
    context: &ApiContext,
    appid: &str,
    checked: CheckedSend,
    message_id: &str,
) -> (Reply, bool) {
    match context.sender.send(appid, checked, message_id).await {
        Ok(outcome) if outcome.refused => {
            let now = context.clock.now_ms();
            let reply = match &outcome.result.failure {
                Some(failure) => Reply::refused(failure, now),
                None => Reply::internal(),
            };
            (reply, true)
        }
        Ok(outcome) => {
            let settled = outcome.result.status != MessageStatus::Pending;
            let mut reply = Reply::of(outcome.result, context.clock.now_ms());
            if let SendBody::Answer(sent) = &mut reply.body {
                sent.channel = Some(outcome.channel);
                sent.checked = Some(outcome.checked);
            }
            (reply, settled)
        }
        Err(error) => {
            tracing::error!(error = ?error, message = %message_id, "send failed");
            (Reply::internal(), true)
        }
    }
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
) -> Result<HttpResponse, ApiError> {
    if record.request_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request body",
        ));
    }
    if record.state == IdempotencyState::InFlight {
        if let Some((result, reference)) = ended_message(context, appid, &record.message_id).await?
        {
            let reply = Reply::of(result, context.clock.now_ms()).with_reference(reference);
            let stored = reply.stored_body()?;
            let status = reply.status.as_u16();
            context
                .storage
                .complete_idempotent(appid, key, &record.message_id, status, &stored)
                .await?;
            let mut response = reply.respond();
            response
                .headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
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
                .insert_header((REPLAYED, "true"))
                .content_type("application/json")
                .body(body))
        }
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            format!(
                "a request with this Idempotency-Key is still in flight (message {})",
                record.message_id
            ),
        )),
    }
}

/// A message that has ended (or waits for a credential), as the send that
/// made it would have answered; `None` while it is still pending or unknown
/// to the ledger. With it, the caller's reference.
async fn ended_message(
    context: &ApiContext,
    appid: &str,
    message_id: &str,
) -> anyhow::Result<Option<(SendResult, Option<String>)>> {
    let Some((message, attempts)) = context.storage.message(appid, message_id).await? else {
        return Ok(None);
    };
    if message.status == MessageStatus::Pending {
        return Ok(None);
    }
    let failure = message.error_code.as_deref().and_then(|code| {
        SendFailure::from_stored(code, message.wechat_errcode, message.updated_at)
    });
    let result = SendResult {
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
    };
    Ok(Some((result, message.reference)))
}

/// The `{id}` of a message's route.
#[derive(Deserialize)]
pub struct MessagePath {
    id: String,
}

/// A message's status and attempts.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/messages/{id}", tag = "messages", operation_id = "get_message",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path, description = "The message id")),
    responses((status = 200, description = "The message, its attempts and delivery", body = Message)),
    security(("api_key" = [])),
)]
pub async fn lookup(
    auth: Authorized<SendScope>,
    path: web::Path<MessagePath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner().id;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "message_not_found",
            "no such message",
        )
    };
    if !crate::ledger::broadcast::is_message_id(&id) {
        return Err(not_found());
    }
    let (message, attempts) = context
        .storage
        .message(auth.appid(), &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(Message::new(message, attempts)))
}

/// Cancels a scheduled message: 200 with the message, now failed with
/// `cancelled`; 409 `not_scheduled` when it is no longer scheduled (it was
/// sent, or is being sent: nothing is cancelled then); 404 when unknown.
#[utoipa::path(
    delete, path = "/v1/apps/{appid}/messages/{id}", tag = "messages", operation_id = "cancel_message",
    params(("appid" = String, Path, description = "The app's AppID"), ("id" = String, Path, description = "The message id")),
    responses((status = 200, description = "The message, cancelled", body = Message)),
    security(("api_key" = [])),
)]
pub async fn cancel(
    auth: Authorized<SendScope>,
    path: web::Path<MessagePath>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner().id;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "message_not_found",
            "no such message",
        )
    };
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(not_found());
    }
    let now = context.clock.now_ms();
    let cancelled = context
        .storage
        .cancel_scheduled(auth.appid(), &id, now)
        .await?;
    let (message, attempts) = context
        .storage
        .message(auth.appid(), &id)
        .await?
        .ok_or_else(not_found)?;
    if !cancelled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_scheduled",
            format!(
                "the message is {}, not scheduled: nothing was cancelled",
                message.status
            ),
        ));
    }
    Ok(HttpResponse::Ok().json(Message::new(message, attempts)))
}
