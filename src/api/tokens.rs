//! `GET /v1/apps/{appid}/access_token` and `POST …/access_token/refresh`: the
//! central token server WeChat's docs ask for, for the app's other servers.
//! The only responses that ever carry a token.

use actix_web::http::header::CACHE_CONTROL;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::authorized::{Authorized, TokenScope};
use super::error::ApiError;
use super::responses::AccessToken;
use super::ApiContext;
use crate::tokens::{CurrentToken, TokenError};

/// The answer carrying `token`, or the error of not having one.
fn token_response(
    token: Result<CurrentToken, TokenError>,
    context: &ApiContext,
) -> Result<HttpResponse, ApiError> {
    let now_ms = context.clock.now_ms();
    let token = token.map_err(|error| ApiError::from_token(error, now_ms))?;
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(AccessToken::new(token, now_ms)))
}

/// The app's current token and its expiry.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/access_token", tag = "tokens", operation_id = "access_token",
    params(("appid" = String, Path, description = "The app's AppID")),
    responses((status = 200, description = "The app's current access_token", body = AccessToken)),
    security(("api_key" = [])),
)]
pub async fn current(
    auth: Authorized<TokenScope>,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let token = context.tokens.current(auth.appid()).await;
    token_response(token, &context)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    stale_token: String,
}

/// Refreshes only while `stale_token` is still current and WeChat rejects it
/// (the gateway checks first); otherwise answers the current token, so a
/// fleet of callers seeing 40001 causes one check and at most one fetch.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/access_token/refresh", tag = "tokens", operation_id = "refresh_access_token",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::Refresh,
    responses((status = 200, description = "The current token (refreshed when the stale one was still current)", body = AccessToken)),
    security(("api_key" = [])),
)]
pub async fn refresh(
    auth: Authorized<TokenScope>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let body = context.read_json(&request, payload).await?.value;
    // serde reads a struct from a JSON array of its fields too: refuse that.
    if !body.is_object() {
        return Err(ApiError::invalid_json("the body must be a JSON object"));
    }
    let body: RefreshBody = serde_json::from_value(body).map_err(ApiError::invalid_json)?;
    if body.stale_token.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stale_token",
            "stale_token must be a non-empty string",
        ));
    }
    let token = context
        .tokens
        .refresh_on_request(auth.appid(), &body.stale_token)
        .await;
    token_response(token, &context)
}
