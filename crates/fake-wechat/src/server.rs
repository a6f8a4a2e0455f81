//! The HTTP face of the fake: actix routes and the running server.

use std::collections::HashMap;
use std::net::TcpListener;

use actix_web::dev::ServerHandle;
use actix_web::http::{header::ContentType, Method, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;
use tokio::task::JoinHandle;

use super::codes;
use super::push::{PushEvent, PushTarget};
use super::state::{Answer, CredentialKind, Reply, State};
use super::templates::{ManageApi, ManageCall};
use super::FakeWeChat;

/// A running fake on a bound listener.
pub struct FakeWeChatServer {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// The fake behind the server, for configuring and inspecting it.
    pub fake: FakeWeChat,
    handle: ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for FakeWeChatServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWeChatServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl FakeWeChatServer {
    /// Binds `addr` (use `"127.0.0.1:0"` in tests) and spawns the actix server
    /// on the current tokio runtime. Works from `#[tokio::test]`.
    pub async fn start(fake: FakeWeChat, addr: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let data = web::Data::new(fake.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
            .workers(2)
            // The owner decides when to stop (tests, or run_cli on Ctrl-C).
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)?
            .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        tracing::info!(%local, "fake wechat listening");
        Ok(Self {
            base_url: format!("http://{local}"),
            fake,
            handle,
            task,
        })
    }

    /// Stops the server (in-flight answers get up to 1 s) and waits for it.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "fake wechat server task failed");
        }
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    for api in ManageApi::ALL {
        // Any method: the wrong one is answered 43001/43002 the WeChat way.
        cfg.route(
            api.path(),
            web::route().to(
                move |req: HttpRequest, body: web::Bytes, fake: web::Data<FakeWeChat>| {
                    manage(api, req, body, fake)
                },
            ),
        );
    }
    cfg.service(
        // GET only; any other method gets actix's 405.
        web::resource("/cgi-bin/token").route(web::get().to(token)),
    )
    // Any method: a GET must reach the handler to be answered 43002
    // (docs/wechat/tokens.md, "Two ways to get a token").
    .route("/cgi-bin/stable_token", web::route().to(stable_token))
    .service(web::resource("/cgi-bin/get_api_domain_ip").route(web::get().to(api_domain_ip)))
    .service(
        web::resource("/sns/jscode2session").route(web::get().to(super::login::jscode2session)),
    )
    .route(
        "/fake/apps/{appid}/users/{openid}/login_code",
        web::post().to(super::login::mint_login_code),
    )
    .route(
        "/cgi-bin/message/wxopen/template/send",
        web::route().to(template_send),
    )
    .route(
        "/cgi-bin/message/subscribe/send",
        web::route().to(subscribe_send),
    )
    .route(
        "/fake/apps/{appid}/users/{openid}/grants/{template_id}",
        web::get().to(grants),
    )
    .route(
        "/fake/apps/{appid}/users/{openid}/grants/{template_id}/{action}",
        web::post().to(user_acts),
    )
    .route("/fake/subscribe_sends", web::get().to(subscribe_sends))
    .route(
        "/fake/apps/{appid}/users/{openid}/form_id",
        web::post().to(mint_form_id),
    )
    .route(
        "/fake/apps/{appid}/users/{openid}/prepay_id",
        web::post().to(mint_prepay_id),
    )
    .route(
        "/fake/apps/{appid}/templates/{template_id}",
        web::post().to(add_template),
    )
    .route("/fake/sends", web::get().to(sends))
    .service(
        web::resource("/fake/apps/{appid}/push_target")
            .route(web::put().to(set_push_target))
            .route(web::get().to(get_push_target))
            .route(web::delete().to(clear_push_target)),
    )
    .route("/fake/apps/{appid}/push", web::post().to(push_now))
    .route("/fake/pushes", web::get().to(pushes))
    .service(
        web::resource("/cgi-bin/media/upload")
            // WeChat's largest temporary media is 10 MB; a body past that is
            // read and refused as WeChat refuses it, not cut off by actix.
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route(web::route().to(super::media::upload)),
    )
    .route("/cgi-bin/media/get", web::route().to(super::media::get));
}

impl FakeWeChat {
    /// Runs `f` on the locked state with the current time; the lock is
    /// released before returning, so never across an await.
    pub(crate) fn call<R>(&self, f: impl FnOnce(&mut State, i64) -> R) -> R {
        let now = self.now_ms();
        f(&mut self.lock(), now)
    }

    pub(crate) async fn apply_latency(&self) {
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    fn is_registered(&self, appid: &str) -> bool {
        self.lock()
            .apps
            .get(appid)
            .is_some_and(|a| a.secret.is_some())
    }
}

async fn render(reply: Reply) -> HttpResponse {
    if let Some(d) = reply.hang {
        tokio::time::sleep(d).await;
    }
    match reply.answer {
        // A captured error came back as `application/json; encoding=utf-8`
        // (docs/wechat/errcodes.md, "The shape of an answer").
        Answer::Json(body) => HttpResponse::Ok()
            .insert_header(("content-type", "application/json; encoding=utf-8"))
            .body(body.to_string()),
        Answer::Status(status) => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
                .content_type(ContentType::html())
                .body(codes::html_status_page(status))
        }
        Answer::Garbage => HttpResponse::Ok()
            .insert_header(("content-type", "application/json; encoding=utf-8"))
            .body(codes::GARBAGE_BODY),
    }
}

fn query_map(req: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

async fn token(req: HttpRequest, fake: web::Data<FakeWeChat>) -> HttpResponse {
    fake.apply_latency().await;
    let query = query_map(&req);
    let reply = fake.call(|s, now| s.plain_token(&query, now));
    render(reply).await
}

async fn stable_token(
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    fake.apply_latency().await;
    let is_post = req.method() == Method::POST;
    let reply = fake.call(|s, now| s.stable_token(is_post, &body, now));
    render(reply).await
}

async fn api_domain_ip(req: HttpRequest, fake: web::Data<FakeWeChat>) -> HttpResponse {
    fake.apply_latency().await;
    let query = query_map(&req);
    let token = query.get("access_token").map(String::as_str);
    let reply = fake.call(|s, now| s.api_domain_ip(token, now));
    render(reply).await
}

async fn template_send(
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let _in_flight = fake.enter_send();
    fake.apply_latency().await;
    let query = query_map(&req);
    let token = query.get("access_token").map(String::as_str);
    let is_post = req.method() == Method::POST;
    let reply = fake.call(|s, now| s.template_send(token, is_post, &body, now));
    render(reply).await
}

async fn subscribe_send(
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let _in_flight = fake.enter_send();
    fake.apply_latency().await;
    let query = query_map(&req);
    let token = query.get("access_token").map(String::as_str);
    let is_post = req.method() == Method::POST;
    let (reply, delivered) = fake.call(|s, now| {
        let reply = s.subscribe_send(token, is_post, &body, now);
        let delivered = s.subscribe_sends.last().filter(|r| r.delivered()).cloned();
        (reply, delivered)
    });
    // WeChat pushes the final result later (docs/wechat/message-push.md,
    // "The events").
    if let Some(record) = delivered {
        fake.push_sent_event(&record);
    }
    render(reply).await
}

async fn manage(
    api: ManageApi,
    req: HttpRequest,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    fake.apply_latency().await;
    let query = query_map(&req);
    let call = ManageCall {
        api,
        is_get: req.method() == Method::GET,
        is_post: req.method() == Method::POST,
        query: &query,
        body: &body,
    };
    let token = query.get("access_token").map(String::as_str);
    let reply = fake.call(|s, now| s.manage(token, &call, now));
    render(reply).await
}

/// `GET /fake/apps/{appid}/users/{openid}/grants/{template_id}`:
/// `{"one_time":N,"long_term":bool}`.
async fn grants(
    path: web::Path<(String, String, String)>,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let (appid, openid, template_id) = path.into_inner();
    HttpResponse::Ok().json(fake.subscribe_grants(&appid, &openid, &template_id))
}

/// `POST /fake/apps/{appid}/users/{openid}/grants/{template_id}/{accept|long_term|reject|revoke}`:
/// the user accepts once, switches a long-term subscription on, rejects a
/// popup, or turns the template off. Answers what the user holds after it.
/// With a push target set, the matching event is pushed in the background
/// (see `GET /fake/pushes`).
async fn user_acts(
    path: web::Path<(String, String, String, String)>,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let (appid, openid, template_id, action) = path.into_inner();
    if !fake.is_registered(&appid) {
        return unknown_app(&appid);
    }
    match action.as_str() {
        "accept" => fake.grant(&appid, &openid, &template_id),
        "long_term" => fake.grant_long_term(&appid, &openid, &template_id),
        "reject" => fake.reject(&appid, &openid, &template_id),
        "revoke" => fake.revoke(&appid, &openid, &template_id),
        other => {
            return HttpResponse::NotFound().json(json!({
                "error": format!("unknown action {other}: accept, long_term, reject or revoke")
            }))
        }
    }
    HttpResponse::Ok().json(fake.subscribe_grants(&appid, &openid, &template_id))
}

async fn subscribe_sends(fake: web::Data<FakeWeChat>) -> HttpResponse {
    HttpResponse::Ok().json(fake.subscribe_sends())
}

fn unknown_app(appid: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": format!("unknown app {appid}")}))
}

async fn mint_form_id(
    path: web::Path<(String, String)>,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let (appid, openid) = path.into_inner();
    if !fake.is_registered(&appid) {
        return unknown_app(&appid);
    }
    let form_id =
        fake.call(|s, now| s.mint_credential(&appid, &openid, CredentialKind::FormId, now));
    HttpResponse::Ok().json(json!({ "form_id": form_id }))
}

async fn mint_prepay_id(
    path: web::Path<(String, String)>,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let (appid, openid) = path.into_inner();
    if !fake.is_registered(&appid) {
        return unknown_app(&appid);
    }
    let prepay_id =
        fake.call(|s, now| s.mint_credential(&appid, &openid, CredentialKind::PrepayId, now));
    HttpResponse::Ok().json(json!({ "prepay_id": prepay_id }))
}

async fn add_template(
    path: web::Path<(String, String)>,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let (appid, template_id) = path.into_inner();
    if !fake.is_registered(&appid) {
        return unknown_app(&appid);
    }
    fake.register_template(&appid, &template_id);
    HttpResponse::Ok().json(json!({ "appid": appid, "template_id": template_id }))
}

async fn sends(fake: web::Data<FakeWeChat>) -> HttpResponse {
    HttpResponse::Ok().json(fake.sends())
}

/// `PUT /fake/apps/{appid}/push_target` with
/// `{"url","token","encoding_aes_key","mode":"plain|compatible|safe","format":"xml|json"}`
/// (optional `gh_id`, `timeout_ms`, `attempts`, `sent_event_delay_ms`): the
/// console's push configuration. 400 for a bad body or key.
async fn set_push_target(
    path: web::Path<String>,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let appid = path.into_inner();
    if !fake.is_registered(&appid) {
        return unknown_app(&appid);
    }
    let target: PushTarget = match serde_json::from_slice(&body) {
        Ok(target) => target,
        Err(e) => return HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    };
    match fake.set_push_target(&appid, target) {
        Ok(()) => get_push_target(web::Path::from(appid), fake).await,
        Err(e) => HttpResponse::BadRequest().json(json!({ "error": e })),
    }
}

/// `GET /fake/apps/{appid}/push_target`: the target without its token and
/// key; 404 when none.
async fn get_push_target(path: web::Path<String>, fake: web::Data<FakeWeChat>) -> HttpResponse {
    let appid = path.into_inner();
    match fake.push_target(&appid) {
        Some(t) => HttpResponse::Ok().json(json!({
            "appid": appid,
            "url": t.url,
            "mode": t.mode,
            "format": t.format,
            "gh_id": t.gh_id,
            "timeout_ms": u64::try_from(t.timeout.as_millis()).unwrap_or(u64::MAX),
            "attempts": t.attempts,
        })),
        None => {
            HttpResponse::NotFound().json(json!({"error": format!("no push target for {appid}")}))
        }
    }
}

/// `DELETE /fake/apps/{appid}/push_target`: stop pushing.
async fn clear_push_target(path: web::Path<String>, fake: web::Data<FakeWeChat>) -> HttpResponse {
    fake.clear_push_target(&path.into_inner());
    HttpResponse::NoContent().finish()
}

/// `POST /fake/apps/{appid}/push` with an event
/// (`{"event":"popup","openid":…,"items":[{"template_id":…,"status":"accept"}]}`,
/// `{"event":"change","openid":…,"template_ids":[…]}`,
/// `{"event":"sent","openid":…,"items":[{"template_id","msgid","error_code","error_status"}]}`):
/// pushes it now, retries included, and answers the record. 404 without a
/// target.
async fn push_now(
    path: web::Path<String>,
    body: web::Bytes,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let appid = path.into_inner();
    let event: PushEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => return HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    };
    match fake.push_event(&appid, event).await {
        Some(record) => HttpResponse::Ok().json(record),
        None => {
            HttpResponse::NotFound().json(json!({"error": format!("no push target for {appid}")}))
        }
    }
}

/// `GET /fake/pushes`: every push made, in order.
async fn pushes(fake: web::Data<FakeWeChat>) -> HttpResponse {
    HttpResponse::Ok().json(fake.pushes())
}
