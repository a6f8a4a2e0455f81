//! `POST /v1/apps/{appid}/messages` and `GET /v1/apps/{appid}/messages/{id}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::{json, Value};

use super::error::{self, render, AccessError, ApiErrorCode, BodyError};
use super::{read_body, ApiContext};
use crate::clock::from_ms;
use crate::config::Scope;
use crate::ledger::message::parse_send_request;
use crate::ledger::send::{SendFailure, SendResult};

/// Errors of the send endpoint before the send starts.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    InvalidField(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for SendError {
    fn status_code(&self) -> StatusCode {
        match self {
            SendError::Access(error) => error.status_code(),
            SendError::Body(error) => error.status_code(),
            SendError::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
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
            SendError::Unexpected(_) => "internal",
        }
    }
}

/// The status an unsent message answers with.
fn failure_status(failure: &SendFailure) -> StatusCode {
    match failure {
        SendFailure::NoCredential | SendFailure::CredentialNotReady => StatusCode::CONFLICT,
        SendFailure::QuotaExhausted { .. } | SendFailure::RateLimited => {
            StatusCode::TOO_MANY_REQUESTS
        }
        SendFailure::RequestInvalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::TokenUnavailable { .. }
        | SendFailure::AttemptLimit => StatusCode::SERVICE_UNAVAILABLE,
        SendFailure::ApiRetired { .. }
        | SendFailure::TokenRejected { .. }
        | SendFailure::OutcomeUnknown
        | SendFailure::Unexpected { .. } => StatusCode::BAD_GATEWAY,
    }
}

/// Seconds a caller should wait before trying again, where waiting helps.
fn retry_after_secs(failure: &SendFailure, now_ms: i64) -> Option<i64> {
    match failure {
        SendFailure::QuotaExhausted { until_ms } => Some(((until_ms - now_ms) / 1000).max(1)),
        SendFailure::RateLimited => Some(60),
        SendFailure::CredentialNotReady => Some(10),
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::AttemptLimit => Some(1),
        _ => None,
    }
}

fn answer(result: SendResult, now_ms: i64) -> HttpResponse {
    let mut body = json!({
        "id": result.message_id,
        "status": result.status,
        "attempts": result.attempts,
    });
    let Some(failure) = result.failure else {
        return HttpResponse::Ok().json(body);
    };
    let error = error::body(failure.code(), &failure.message(), failure.wechat_errcode());
    body["error"] = error["error"].clone();
    let mut response = HttpResponse::build(failure_status(&failure));
    if let Some(seconds) = retry_after_secs(&failure, now_ms) {
        response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
    }
    response.json(body)
}

/// Sends a template message to a user with the credential that expires soonest.
pub async fn send(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, SendError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Send])?;
    let body = read_body(payload, context.ledger.max_body_bytes).await?;
    let send_request = parse_send_request(&body).map_err(|rejection| match rejection.code {
        "invalid_json" => SendError::Body(BodyError::InvalidJson(rejection.message)),
        _ => SendError::InvalidField(rejection.message),
    })?;
    let result = context.sender.send(&appid, &send_request).await?;
    Ok(answer(result, context.clock.now_ms()))
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
            json!({
                "credential_kind": attempt.credential_kind,
                "errcode": attempt.errcode,
                "outcome": attempt.outcome,
                "at": from_ms(attempt.at),
            })
        })
        .collect();
    let mut body = json!({
        "id": message.id,
        "status": message.status,
        "touser": message.touser,
        "template_id": message.template_id,
        "created_at": from_ms(message.created_at),
        "updated_at": from_ms(message.updated_at),
        "attempts": attempts,
    });
    if let Some(code) = message.error_code {
        let mut error = json!({"code": code});
        if let Some(errcode) = message.wechat_errcode {
            error["wechat_errcode"] = errcode.into();
        }
        body["error"] = error;
    }
    Ok(HttpResponse::Ok().json(body))
}
