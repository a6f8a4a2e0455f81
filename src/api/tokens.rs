//! `GET /v1/apps/{appid}/access_token` and `POST …/access_token/refresh`: the
//! central token server WeChat's docs ask for, for the app's other servers.
//! The only responses that ever carry a token.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::json;

use super::error::{render, AccessError, ApiErrorCode, BodyError};
use super::ApiContext;
use crate::clock::from_ms;
use crate::config::Scope;
use crate::tokens::{CurrentToken, TokenError};

/// Errors of the token endpoints.
#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("stale_token must be a non-empty string")]
    InvalidStaleToken,
    #[error("WeChat refused to issue a token")]
    Refused { errcode: i64 },
    #[error("no token could be obtained from WeChat")]
    Unavailable(TokenError),
    #[error("WeChat rejected the app's token and its budget of fetches is spent for now")]
    BudgetSpent { retry_after_secs: i64 },
}

impl TokenEndpointError {
    fn from_token(error: TokenError, now_ms: i64) -> Self {
        match error {
            TokenError::Refused { errcode, .. } => TokenEndpointError::Refused { errcode },
            TokenError::BudgetExhausted { retry_at_ms } => TokenEndpointError::BudgetSpent {
                retry_after_secs: (retry_at_ms - now_ms + 999) / 1000,
            },
            other => TokenEndpointError::Unavailable(other),
        }
    }
}

impl ResponseError for TokenEndpointError {
    fn status_code(&self) -> StatusCode {
        match self {
            TokenEndpointError::Access(error) => error.status_code(),
            TokenEndpointError::Body(error) => error.status_code(),
            TokenEndpointError::InvalidStaleToken => StatusCode::UNPROCESSABLE_ENTITY,
            TokenEndpointError::Refused { .. } => StatusCode::BAD_GATEWAY,
            TokenEndpointError::Unavailable(TokenError::Storage(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            TokenEndpointError::Unavailable(_) | TokenEndpointError::BudgetSpent { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        render(self)
    }
}

impl ApiErrorCode for TokenEndpointError {
    fn code(&self) -> &'static str {
        match self {
            TokenEndpointError::Access(error) => error.code(),
            TokenEndpointError::Body(error) => error.code(),
            TokenEndpointError::InvalidStaleToken => "invalid_stale_token",
            TokenEndpointError::Refused { .. } => "token_refused",
            TokenEndpointError::Unavailable(_) | TokenEndpointError::BudgetSpent { .. } => {
                "token_unavailable"
            }
        }
    }

    fn retry_after_secs(&self) -> Option<i64> {
        match self {
            TokenEndpointError::BudgetSpent { retry_after_secs } => Some(*retry_after_secs),
            TokenEndpointError::Unavailable(error) if error.is_transient() => Some(1),
            _ => None,
        }
    }

    fn wechat_errcode(&self) -> Option<i64> {
        match self {
            TokenEndpointError::Refused { errcode } => Some(*errcode),
            _ => None,
        }
    }
}

fn token_response(token: CurrentToken, now_ms: i64) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "access_token": token.token,
            "expires_at": from_ms(token.expires_at_ms),
            "expires_in": (token.expires_at_ms - now_ms) / 1000,
        }))
}

/// The app's current token and its expiry.
pub async fn current(
    request: HttpRequest,
    path: web::Path<String>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TokenEndpointError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Token])?;
    let token = context
        .tokens
        .current(&appid)
        .await
        .map_err(|error| TokenEndpointError::from_token(error, context.clock.now_ms()))?;
    Ok(token_response(token, context.clock.now_ms()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    stale_token: String,
}

/// Refreshes only while `stale_token` is still current and WeChat rejects it
/// (the gateway checks first); otherwise answers the current token, so a
/// fleet of callers seeing 40001 causes one check and at most one fetch.
pub async fn refresh(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, TokenEndpointError> {
    let appid = path.into_inner();
    context.authorize(&request, &appid, &[Scope::Token])?;
    let body = context.read_json(&request, payload).await?.value;
    // serde reads a struct from a JSON array of its fields too: refuse that.
    if !body.is_object() {
        return Err(BodyError::InvalidJson("the body must be a JSON object".into()).into());
    }
    let body: RefreshBody =
        serde_json::from_value(body).map_err(|error| BodyError::InvalidJson(error.to_string()))?;
    if body.stale_token.trim().is_empty() {
        return Err(TokenEndpointError::InvalidStaleToken);
    }
    let token = context
        .tokens
        .refresh_on_request(&appid, &body.stale_token)
        .await
        .map_err(|error| TokenEndpointError::from_token(error, context.clock.now_ms()))?;
    Ok(token_response(token, context.clock.now_ms()))
}
