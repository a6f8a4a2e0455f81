//! The WeChat-compatible endpoint: a second listener (`proxy.listen`) that
//! answers like `api.weixin.qq.com`, so that an SDK pointed at it by its one
//! base-URL setting takes the gateway's central token and sends subscribe
//! messages through the ledger, unmodified.
//!
//! - `GET /cgi-bin/token` and `POST /cgi-bin/stable_token` ([`tokens`])
//!   answer the gateway's current token and its remaining lifetime; they
//!   never fetch one on the caller's behalf (a forced stable_token refresh
//!   goes through the keeper's compare-and-refresh and budget).
//! - `POST /cgi-bin/message/subscribe/send` ([`subscribe`]) spends a grant of
//!   the ledger through the send path (`Sender::check`, `Sender::send`).
//! - Every other path ([`forward`]) goes to the configured WeChat base URL,
//!   never to a host the caller names, with the gateway's token in place of
//!   the caller's; the caller's token says which app speaks ([`book`]).
//!
//! Every answer the endpoint makes itself has WeChat's shape: HTTP 200,
//! `{"errcode":N,"errmsg":"<stem> rid: <hex>"}` (docs/wechat/errcodes.md,
//! "The shape of an answer"). No log line or span shows the query's
//! `access_token`, `secret` or `js_code` values
//! (`formid_core::proxy::redact_query`).

pub mod book;
mod forward;
mod subscribe;
mod tokens;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpResponse, HttpServer};
use anyhow::Context;
use rand::Rng;
use serde_json::json;

use crate::api::request_id;
use crate::clock::SharedClock;
use crate::config::{AppSettings, ProxySettings};
use crate::sending::Sender;
use crate::tokens::TokenKeeper;
use book::TokenBook;

/// What the endpoint's handlers share.
#[derive(Debug, Clone)]
pub struct ProxyContext {
    /// The apps' tokens.
    pub tokens: TokenKeeper,
    /// The send path (subscribe sends, and the call bound and breaker).
    pub sender: Sender,
    /// The configured apps and their secrets.
    pub apps: Arc<BTreeMap<String, AppSettings>>,
    /// The endpoint's settings.
    pub settings: ProxySettings,
    /// The service's clock.
    pub clock: SharedClock,
    /// Where WeChat is: the only host a call is forwarded to.
    pub upstream: Upstream,
    /// The tokens this process handed out, and whose app they speak for.
    pub book: Arc<TokenBook>,
    /// Time to receive a request's whole body.
    pub body_timeout: Duration,
}

/// The configured WeChat and a client that never follows a redirect (a
/// redirect could name another host).
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
    base_url: String,
}

impl Upstream {
    /// A client for `base_url` with the WeChat client's timeouts.
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the endpoint's WeChat client")?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

/// Binds `listen` and starts the endpoint's server (it serves once
/// awaited); returns the port bound.
pub fn serve(
    listen: &str,
    http: &crate::config::HttpSettings,
    context: ProxyContext,
) -> anyhow::Result<(u16, Server)> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let port = listener.local_addr()?.port();
    let context = web::Data::new(context);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(crate::api::request_id::access_log())
            .wrap(middleware::from_fn(request_id::middleware))
            .app_data(context.clone())
            .configure(routes)
    })
    .client_request_timeout(http.head_timeout)
    .keep_alive(http.keep_alive)
    .disable_signals()
    .shutdown_timeout(30)
    .listen(listener)?
    .run();
    tracing::info!(port, "WeChat-compatible endpoint listening");
    Ok((port, server))
}

fn routes(cfg: &mut web::ServiceConfig) {
    // Any method reaches each handler: WeChat answers a wrong one with
    // 43001/43002, and so does the endpoint.
    cfg.route("/cgi-bin/token", web::route().to(tokens::token))
        .route(
            "/cgi-bin/stable_token",
            web::route().to(tokens::stable_token),
        )
        .route(
            "/cgi-bin/message/subscribe/send",
            web::route().to(subscribe::send),
        )
        .default_service(web::route().to(forward::forward));
}

/// WeChat's request-id suffix, `xxxxxxxx-xxxxxxxx-xxxxxxxx`.
fn rid() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        rng.gen::<u32>(),
        rng.gen::<u32>(),
        rng.gen::<u32>()
    )
}

/// WeChat's errmsg stem of the codes the endpoint answers itself
/// (docs/wechat/errcodes.md, "Codes and their errmsg stems").
fn stem(errcode: i64) -> &'static str {
    match errcode {
        -1 => "system error",
        40001 => {
            "invalid credential, access_token is invalid or not latest, could get access_token \
             by getStableAccessToken, more details at https://mmbizurl.cn/s/JtxxFh33r"
        }
        40002 => "invalid grant_type",
        40013 => "invalid appid",
        40125 => "invalid appsecret",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        42001 => "access_token expired",
        43001 => "require GET method",
        43002 => "require POST method",
        43101 => "user refuse to accept the msg",
        44002 => "empty post data",
        45002 => "content size out of limit",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit must slower retry next minute",
        47001 => "data format error",
        47003 => "argument invalid!",
        _ => "system error",
    }
}

/// An answer of the endpoint's own, in WeChat's shape.
fn wechat_error(errcode: i64) -> HttpResponse {
    wechat_error_msg(errcode, stem(errcode))
}

/// [`wechat_error`] with a specific stem (a 47003 naming the field).
fn wechat_error_msg(errcode: i64, stem: &str) -> HttpResponse {
    wechat_json(&json!({"errcode": errcode, "errmsg": format!("{stem} rid: {}", rid())}))
}

/// HTTP 200 with `body`, as WeChat sends JSON.
fn wechat_json(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("content-type", "application/json; encoding=utf-8"))
        .insert_header(("cache-control", "no-store"))
        .body(body.to_string())
}
