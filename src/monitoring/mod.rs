//! The metrics room: what the gateway counts, and `/metrics` in the
//! Prometheus text format on a listener of its own (`metrics.listen`; off
//! unless set, never on the public listener).
//!
//! Every feature records through the `metrics` facade, by the functions
//! below: names (`formid_…`) and labels (snake_case) live in this one file,
//! and label values are the ledger's enums' names, route templates, AppIDs
//! and errcodes: never an openid, a raw path or anything a caller chose
//! freely. Whatever the facade records (the ledger-count gauges of the stats
//! worker included) is exported.
//!
//! The recorder is process-wide (the facade has one global recorder): the
//! first gateway of the process that turns metrics on installs it, and every
//! later one (tests start many in one process) shares its handle. Without
//! it the facade's calls go nowhere, at the cost of building their labels.

mod backlog;

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::ContentType;
use actix_web::middleware::Next;
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context as _;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use backlog::Backlog;

use crate::ledger::states::{AttemptOutcome, Channel, MessageStatus, PushEffect};

/// Seconds: HTTP requests and WeChat calls, 5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Writes per group-commit batch: 1 to its most, 64.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on the first call.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("formid_group_commit_batch_size".into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Only fails when another recorder was installed first: its handle
        // is not ours to render, so ours renders what reaches it (nothing).
        if let Err(error) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%error, "another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// The HELP line of every metric recorded here.
fn describe() {
    describe_counter!(
        "formid_http_requests_total",
        "HTTP requests of the API by route template, method and status"
    );
    describe_histogram!(
        "formid_http_request_duration_seconds",
        "Time to answer an API request (head of the answer), by route template, method and status"
    );
    describe_counter!(
        "formid_sends_total",
        "Runs of a send (first, resumed or recovered) by channel, where the message stands after it, and its last errcode"
    );
    describe_counter!(
        "formid_send_attempts_total",
        "Credentials spent or tried: one per call to WeChat or decision not to call, by outcome and errcode"
    );
    describe_counter!(
        "formid_unknown_outcomes_total",
        "Messages that ended with their delivery unknown (WeChat may have delivered; never sent again)"
    );
    describe_histogram!(
        "formid_wechat_call_duration_seconds",
        "Time of one call to WeChat by API and result (answered, not_sent, ambiguous)"
    );
    describe_counter!(
        "formid_claims_total",
        "Claims of a credential for a message, by result"
    );
    describe_histogram!(
        "formid_group_commit_batch_size",
        "Writes (starts and ends of sends) per group-commit batch"
    );
    describe_counter!(
        "formid_token_refreshes_total",
        "access_token fetches from WeChat by result (issued, refused, failed)"
    );
    describe_gauge!(
        "formid_token_expires_in_seconds",
        "Seconds until the app's current access_token expires, as last seen by this instance"
    );
    describe_gauge!(
        "formid_breaker_open",
        "1 while the app's circuit to WeChat is open or probing in this instance, else 0"
    );
    describe_gauge!(
        "formid_messages",
        "Messages of the app that are waiting, pending or scheduled"
    );
    describe_counter!(
        "formid_push_events_total",
        "Items of WeChat's message pushes by event and what they did to the ledger"
    );
    describe_counter!(
        "formid_push_refused_total",
        "Message pushes refused, by reason (the error code answered)"
    );
    describe_counter!(
        "formid_webhook_deliveries_total",
        "Webhook delivery attempts by outcome"
    );
    describe_counter!(
        "formid_broadcast_recipients_total",
        "Broadcast recipients handled, by where each stands after its batch"
    );
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = recorder();
    // Without the exporter's own listener, nobody else drains the
    // histograms' old samples.
    handle.run_upkeep();
    handle.render()
}

async fn metrics_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .expect("a media type"),
        ))
        .body(render())
}

/// Binds `listen` and starts the `/metrics` server (it serves once awaited);
/// returns the port bound. Installs the recorder.
pub fn serve(listen: &str, head_timeout: Duration) -> anyhow::Result<(u16, Server)> {
    recorder();
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(|| App::new().route("/metrics", web::get().to(metrics_page)))
        .workers(1)
        .client_request_timeout(head_timeout)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
    tracing::info!(port, "metrics listening");
    Ok((port, server))
}

/// The middleware that counts and times the API's requests (register with
/// `actix_web::middleware::from_fn`). The route is the matched pattern
/// (`/v1/apps/{appid}/users/{openid}/quota`), never the path itself; a
/// request that matched no route counts as `unmatched`.
pub async fn track_requests(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.call(request).await?;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("route", route),
        ("method", method.to_owned()),
        ("status", status),
    ];
    counter!("formid_http_requests_total", &labels).increment(1);
    histogram!("formid_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// The request's method as a label: a caller may send any token as a
/// method, so only the standard ones become labels.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// An errcode as a label: its number, or `none` when WeChat said nothing.
fn errcode_label(errcode: Option<i64>) -> String {
    errcode.map_or_else(|| "none".to_owned(), |errcode| errcode.to_string())
}

/// A run of a send ended with the message in `status`; `errcode` is its
/// last attempt's.
pub fn send_ran(appid: &str, channel: Channel, status: MessageStatus, errcode: Option<i64>) {
    counter!(
        "formid_sends_total",
        "app" => appid.to_owned(),
        "channel" => channel.as_str(),
        "outcome" => status.as_str(),
        "errcode" => errcode_label(errcode),
    )
    .increment(1);
    if status == MessageStatus::Unknown {
        counter!(
            "formid_unknown_outcomes_total",
            "app" => appid.to_owned(),
            "channel" => channel.as_str(),
        )
        .increment(1);
    }
}

/// One attempt of a send recorded.
pub fn send_attempt(appid: &str, channel: Channel, outcome: AttemptOutcome, errcode: Option<i64>) {
    counter!(
        "formid_send_attempts_total",
        "app" => appid.to_owned(),
        "channel" => channel.as_str(),
        "outcome" => outcome.as_str(),
        "errcode" => errcode_label(errcode),
    )
    .increment(1);
}

/// How one call to WeChat came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// WeChat answered (with whatever errcode).
    Answered,
    /// The call surely did not reach WeChat.
    NotSent,
    /// It may have reached WeChat: no usable answer came back.
    Ambiguous,
}

impl CallResult {
    fn as_str(self) -> &'static str {
        match self {
            CallResult::Answered => "answered",
            CallResult::NotSent => "not_sent",
            CallResult::Ambiguous => "ambiguous",
        }
    }
}

/// One call to WeChat's `api` (its path, like `cgi-bin/token`) took `took`.
pub fn wechat_call(api: &'static str, result: CallResult, took: Duration) {
    histogram!(
        "formid_wechat_call_duration_seconds",
        "api" => api,
        "result" => result.as_str(),
    )
    .record(took.as_secs_f64());
}

/// What a claim of a credential came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// A credential is leased to the message.
    Claimed,
    /// The user holds no usable credential.
    NoneLeft,
    /// The message was no longer the run's.
    LeaseLost,
}

impl ClaimResult {
    /// `Claimed` when a credential was found, else `NoneLeft`.
    pub fn found(claimed: bool) -> Self {
        if claimed {
            ClaimResult::Claimed
        } else {
            ClaimResult::NoneLeft
        }
    }
}

/// One claim of a credential for a message of `appid`.
pub fn claim(appid: &str, result: ClaimResult) {
    let result = match result {
        ClaimResult::Claimed => "claimed",
        ClaimResult::NoneLeft => "none_left",
        ClaimResult::LeaseLost => "lease_lost",
    };
    counter!("formid_claims_total", "app" => appid.to_owned(), "result" => result).increment(1);
}

/// One group-commit batch of `writes` writes ran.
pub fn group_commit_batch(writes: usize) {
    histogram!("formid_group_commit_batch_size").record(writes as f64);
}

/// What one access_token fetch from WeChat came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenResult {
    /// A token was issued.
    Issued,
    /// WeChat refused with an errcode.
    Refused,
    /// No usable answer (unreachable, an HTTP error, garbage).
    Failed,
}

/// One access_token fetch from WeChat.
pub fn token_refresh(appid: &str, result: TokenResult) {
    let result = match result {
        TokenResult::Issued => "issued",
        TokenResult::Refused => "refused",
        TokenResult::Failed => "failed",
    };
    counter!("formid_token_refreshes_total", "app" => appid.to_owned(), "result" => result)
        .increment(1);
}

/// The app's current token expires in `ms` milliseconds (negative: it has).
pub fn token_expires_in(appid: &str, ms: i64) {
    gauge!("formid_token_expires_in_seconds", "app" => appid.to_owned()).set(ms as f64 / 1_000.0);
}

/// The app's circuit to WeChat opened (or is probing), or closed.
pub fn breaker(appid: &str, open: bool) {
    gauge!("formid_breaker_open", "app" => appid.to_owned()).set(if open { 1.0 } else { 0.0 });
}

/// How many of the app's messages are in `status`.
pub fn messages(appid: &str, status: MessageStatus, count: i64) {
    gauge!("formid_messages", "app" => appid.to_owned(), "status" => status.as_str())
        .set(count as f64);
}

/// What one item of a push did, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushItemEffect {
    /// Applied to the ledger now.
    Applied(PushEffect),
    /// A retried push: applied before, nothing changed now.
    Replayed,
    /// Not a subscribe event: nothing kept.
    Ignored,
}

/// One item of a push of `event` (a subscribe event's name, or `other`).
pub fn push_event(appid: &str, event: &'static str, effect: PushItemEffect) {
    let effect = match effect {
        PushItemEffect::Applied(effect) => effect.as_str(),
        PushItemEffect::Replayed => "replayed",
        PushItemEffect::Ignored => "ignored",
    };
    counter!(
        "formid_push_events_total",
        "app" => appid.to_owned(),
        "event" => event,
        "effect" => effect,
    )
    .increment(1);
}

/// A push refused with the error code `reason`.
pub fn push_refused(appid: &str, reason: &'static str) {
    counter!("formid_push_refused_total", "app" => appid.to_owned(), "reason" => reason)
        .increment(1);
}

/// One webhook delivery attempt came to `outcome` (its stored name).
pub fn webhook_delivery(appid: &str, outcome: &'static str) {
    counter!("formid_webhook_deliveries_total", "app" => appid.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Where a broadcast recipient stands after its batch: a final state, or
/// `requeued` / `recheck`.
pub fn broadcast_recipient(appid: &str, outcome: &'static str) {
    counter!("formid_broadcast_recipients_total", "app" => appid.to_owned(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;
    use actix_web::middleware::from_fn;
    use actix_web::test::{call_service, init_service, TestRequest};
    use actix_web::{web, App, HttpResponse};

    use super::*;

    /// Labels hold route templates and standard methods only: a path's
    /// segments (an openid) and a made-up method never become series.
    #[actix_web::test]
    async fn requests_are_labelled_by_template_never_by_path() {
        recorder();
        let app = init_service(App::new().wrap(from_fn(track_requests)).route(
            "/v1/tracked/{openid}/quota",
            web::get().to(HttpResponse::Ok),
        ))
        .await;
        let request = TestRequest::get()
            .uri("/v1/tracked/o-private-openid-1/quota")
            .to_request();
        assert_eq!(call_service(&app, request).await.status(), 200);
        let odd = TestRequest::default()
            .method(Method::from_bytes(b"BREW").unwrap())
            .uri("/v1/tracked-nowhere/o-private-openid-2")
            .to_request();
        assert_eq!(call_service(&app, odd).await.status(), 404);

        let page = render();
        assert!(
            page.contains(
                r#"formid_http_requests_total{route="/v1/tracked/{openid}/quota",method="GET",status="200"} "#
            ),
            "{page}"
        );
        assert!(
            page.contains(
                r#"formid_http_requests_total{route="unmatched",method="other",status="404"} "#
            ),
            "{page}"
        );
        assert!(!page.contains("o-private-openid"), "{page}");
        assert!(!page.contains("BREW"), "{page}");
    }
}
