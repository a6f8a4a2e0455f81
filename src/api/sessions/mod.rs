//! The routes of mini-program users, called from the mini-program itself
//! with no API key: `POST /v1/apps/{appid}/sessions` (login with a
//! `wx.login` code), `DELETE …/sessions/current` (logout), and, with the
//! session's token, `POST …/me/credentials`, `POST …/me/subscriptions` and
//! `GET …/me/quota`, which run the collect, prompt and quota paths of the
//! API-key routes for the session's openid only. A body that names an
//! openid is refused 422 `openid_not_allowed`. Every route here has CORS
//! ([`cors`]) and the per-IP rate limit; the session routes the per-session
//! one too.

mod cors;

pub use cors::cors;
pub mod responses;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::authorized::SessionAuthorized;
use super::credentials::{collect_body, quota_of};
use super::error::ApiError;
use super::subscriptions::record_body;
use super::{ApiContext, Route};
use crate::clock::from_ms;
use formid_core::sessions::{credit_credentials, credit_prompt, plausible_code, MAX_CODE_LEN};
use responses::SessionIssued;

/// The routes, inside the `/v1/apps/{appid}` scope.
pub fn endpoints() -> Vec<Route> {
    let browser = |path| Route::new(path).on(Method::OPTIONS, no_content).with_cors();
    vec![
        browser("/sessions").post(login),
        browser("/sessions/current").delete(logout),
        browser("/me/credentials").post(me_credentials),
        browser("/me/subscriptions").post(me_subscriptions),
        browser("/me/quota").get(me_quota),
    ]
}

/// An `OPTIONS` without `Origin` (not a browser's preflight).
async fn no_content() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// The `{appid}` of the login route.
#[derive(serde::Deserialize)]
struct AppPath {
    appid: String,
}

/// The code of a login body: `{"code": "…"}` and nothing else.
fn code_of(body: &Value) -> Result<&str, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "the body must be {{\"code\": \"…\"}}, the code of wx.login (1 to {MAX_CODE_LEN} printable characters)"
            ),
        )
    };
    let object = body.as_object().ok_or_else(invalid)?;
    if object.len() != 1 {
        return Err(invalid());
    }
    let code = object
        .get("code")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    if plausible_code(code) {
        Ok(code)
    } else {
        Err(invalid())
    }
}

/// Exchanges a `wx.login` code for a session of the app's user. The same
/// code posted again within its 5 minutes answers the same session.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/sessions", tag = "sessions", operation_id = "login",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::Login,
    responses((status = 200, description = "The user's session (its token is shown once)", body = SessionIssued)),
    security(()),
)]
#[tracing::instrument(name = "session_login", skip_all, fields(appid = %path.appid))]
async fn login(
    path: web::Path<AppPath>,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    context.limits.check_ip(&request)?;
    let appid = path.into_inner().appid;
    if !context.apps.contains_key(&appid) {
        return Err(ApiError::unknown_app());
    }
    let body = context.read_json(&request, payload).await?.value;
    let code = code_of(&body)?;
    let issued = context.sessions.login(&appid, code).await?;
    Ok(HttpResponse::Ok().json(SessionIssued {
        expires_at: from_ms(issued.expires_at),
        openid: issued.openid,
        session_token: issued.token.expose_secret().to_owned(),
    }))
}

/// Ends the session the request carries.
#[utoipa::path(
    delete, path = "/v1/apps/{appid}/sessions/current", tag = "sessions", operation_id = "logout",
    params(("appid" = String, Path, description = "The app's AppID")),
    responses((status = 204, description = "The session has ended")),
    security(("session" = [])),
)]
#[tracing::instrument(name = "session_logout", skip_all, fields(appid = %session.appid))]
async fn logout(
    session: SessionAuthorized,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    context.sessions.revoke(&session.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// 422: a `/me` body that names an openid (the session's is the only one).
fn openid_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "openid_not_allowed",
        "a /me body names no openid: the session's user is the one",
    )
}

/// `POST …/me/credentials`: the collect path, for the session's user.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/me/credentials", tag = "sessions", operation_id = "me_collect_credentials",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::MyCollect,
    responses((status = 200, description = "What became of each credential", body = crate::api::responses::Collected)),
    security(("session" = [])),
)]
#[tracing::instrument(name = "me_credentials", skip_all, fields(appid = %session.appid))]
async fn me_credentials(
    session: SessionAuthorized,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let mut body = context.read_json(&request, payload).await?.value;
    credit_credentials(&mut body, &session.openid).map_err(|_| openid_not_allowed())?;
    collect_body(&context, &session.appid, body).await
}

/// `POST …/me/subscriptions`: the prompt-result path, for the session's user.
#[utoipa::path(
    post, path = "/v1/apps/{appid}/me/subscriptions", tag = "sessions", operation_id = "me_record_prompt",
    params(("appid" = String, Path, description = "The app's AppID")),
    request_body = crate::api::requests::MyPromptResult,
    responses((status = 200, description = "The prompt's effect", body = crate::api::responses::PromptRecorded)),
    security(("session" = [])),
)]
#[tracing::instrument(name = "me_subscriptions", skip_all, fields(appid = %session.appid))]
async fn me_subscriptions(
    session: SessionAuthorized,
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    let mut body = context.read_json(&request, payload).await?.value;
    credit_prompt(&mut body, &session.openid).map_err(|_| openid_not_allowed())?;
    record_body(&context, &session.appid, &body).await
}

/// `GET …/me/quota`: the quota path, for the session's user.
#[utoipa::path(
    get, path = "/v1/apps/{appid}/me/quota", tag = "sessions", operation_id = "me_quota",
    params(("appid" = String, Path, description = "The app's AppID")),
    responses((status = 200, description = "The user's quota", body = crate::api::responses::Quota)),
    security(("session" = [])),
)]
async fn me_quota(
    session: SessionAuthorized,
    context: web::Data<ApiContext>,
) -> Result<HttpResponse, ApiError> {
    quota_of(&context, &session.appid, session.openid.to_string()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_login_body_is_a_code_alone() {
        assert_eq!(code_of(&json!({"code": "abc"})).unwrap(), "abc");
        for body in [
            json!({}),
            json!({"code": ""}),
            json!({"code": 5}),
            json!({"code": "abc", "openid": "o"}),
            json!("abc"),
        ] {
            assert_eq!(code_of(&body).unwrap_err().code(), "invalid_body");
        }
    }
}
