//! `GET /cgi-bin/token` and `POST /cgi-bin/stable_token`: the gateway's
//! current token and its remaining lifetime, never a fetch on the caller's
//! behalf (docs/wechat/tokens.md, "Two ways to get a token", for the shapes
//! and errcodes). The only answers of the endpoint that carry a token.

use std::collections::HashMap;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::book::same_secret;
use super::{wechat_error, wechat_json, ProxyContext};
use crate::api::json::{read_body, BodyLimits};
use crate::tokens::{CurrentToken, TokenError};

/// The largest stable_token body read (four short fields).
const MAX_TOKEN_BODY: usize = 4_096;

/// What a token request names.
struct TokenAsk<'a> {
    grant_type: Option<&'a str>,
    appid: Option<&'a str>,
    secret: Option<&'a str>,
}

/// The app a token request may have, or WeChat's errcode for it, checked in
/// WeChat's order: grant type, appid given, secret given, appid known,
/// secret right (in constant time).
fn authenticate(context: &ProxyContext, ask: &TokenAsk) -> Result<String, i64> {
    if ask.grant_type != Some("client_credential") {
        return Err(40002);
    }
    let appid = ask.appid.filter(|a| !a.is_empty()).ok_or(41002)?;
    let secret = ask.secret.filter(|s| !s.is_empty()).ok_or(41004)?;
    let app = context.apps.get(appid).ok_or(40013)?;
    if !same_secret(app.secret.expose_secret(), secret) {
        tracing::warn!(appid, "a token request named a wrong secret");
        return Err(40125);
    }
    Ok(appid.to_owned())
}

/// `{"access_token","expires_in"}`: the token and its remaining lifetime in
/// seconds, remembered as one the app's callers may hold.
fn token_answer(context: &ProxyContext, appid: &str, token: &CurrentToken) -> HttpResponse {
    let now = context.clock.now_ms();
    context.book.observe(appid, token, now);
    let expires_in = ((token.expires_at_ms - now) / 1000).max(0);
    wechat_json(&json!({"access_token": token.token, "expires_in": expires_in}))
}

/// The answer when no token can be had: WeChat's busy answer, which every
/// SDK treats as "try again".
fn no_token(appid: &str, error: &TokenError) -> HttpResponse {
    tracing::warn!(appid, %error, "the endpoint has no token to hand out");
    wechat_error(-1)
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`.
#[tracing::instrument(name = "proxy_token", skip_all)]
pub async fn token(request: HttpRequest, context: web::Data<ProxyContext>) -> HttpResponse {
    if request.method() != Method::GET {
        return wechat_error(43001);
    }
    let query = web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let ask = TokenAsk {
        grant_type: query.get("grant_type").map(String::as_str),
        appid: query.get("appid").map(String::as_str),
        secret: query.get("secret").map(String::as_str),
    };
    let appid = match authenticate(&context, &ask) {
        Ok(appid) => appid,
        Err(errcode) => return wechat_error(errcode),
    };
    match context.tokens.current(&appid).await {
        Ok(token) => token_answer(&context, &appid, &token),
        Err(error) => no_token(&appid, &error),
    }
}

/// `POST /cgi-bin/stable_token` with `{"grant_type","appid","secret",
/// "force_refresh"}`. A forced refresh goes through the keeper's
/// compare-and-refresh (WeChat is asked whether the current token works
/// first) and its budgets; refused, it answers the current token.
#[tracing::instrument(name = "proxy_stable_token", skip_all)]
pub async fn stable_token(
    request: HttpRequest,
    payload: web::Payload,
    context: web::Data<ProxyContext>,
) -> HttpResponse {
    if request.method() != Method::POST {
        return wechat_error(43002);
    }
    let limits = BodyLimits {
        max_bytes: MAX_TOKEN_BODY,
        timeout: context.body_timeout,
    };
    let Ok(body) = read_body(payload, limits).await else {
        return wechat_error(47001);
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return wechat_error(44002);
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return wechat_error(47001);
    };
    let force_refresh = match fields.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return wechat_error(47001),
    };
    let ask = TokenAsk {
        grant_type: fields.get("grant_type").and_then(Value::as_str),
        appid: fields.get("appid").and_then(Value::as_str),
        secret: fields.get("secret").and_then(Value::as_str),
    };
    let appid = match authenticate(&context, &ask) {
        Ok(appid) => appid,
        Err(errcode) => return wechat_error(errcode),
    };
    let current = match context.tokens.current(&appid).await {
        Ok(token) => token,
        Err(error) => return no_token(&appid, &error),
    };
    if !force_refresh {
        return token_answer(&context, &appid, &current);
    }
    match context
        .tokens
        .refresh_on_request(&appid, &current.token)
        .await
    {
        Ok(token) => token_answer(&context, &appid, &token),
        Err(error) => {
            tracing::warn!(appid, %error, "a forced refresh was refused: answering the current token");
            token_answer(&context, &appid, &current)
        }
    }
}
