//! Webhooks: every event of a flow verified by the `standardwebhooks`
//! package from PyPI (a verifier nobody here wrote), during a secret
//! rotation too; retries under one id; nothing for a change that rolled
//! back; the admin API against hostile input; the outbox's leases.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::Duration;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Statuses to answer, in order; 200 once they run out.
    script: VecDeque<u16>,
}

/// A webhook receiver on loopback.
pub struct Receiver {
    pub url: String,
    state: Arc<Mutex<ReceiverState>>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
    }
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<ReceiverState>>>,
) -> HttpResponse {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut state = state.lock().unwrap();
    state.received.push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = state.script.pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("ok")
}

impl Receiver {
    /// A receiver answering `script` in order, then 200.
    pub async fn start(script: &[u16]) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.iter().copied().collect(),
            ..ReceiverState::default()
        }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hooks"),
            state,
            handle,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The types received, in order.
    pub fn types(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|event| event.json()["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The Python with `standardwebhooks` installed: a venv under the target
/// directory, made (and the package installed from PyPI) when missing.
pub fn standardwebhooks_python() -> std::path::PathBuf {
    crate::helpers::pypi_python("webhook-venv", "standardwebhooks", "standardwebhooks")
}

const VERIFY: &str = r#"
import json, sys
from standardwebhooks import Webhook
data = json.load(sys.stdin)
for secret in data["secrets"]:
    hook = Webhook(secret)
    for event in data["events"]:
        payload = hook.verify(event["body"], {
            "webhook-id": event["id"],
            "webhook-timestamp": event["timestamp"],
            "webhook-signature": event["signature"],
        })
        assert payload == json.loads(event["body"])
print(len(data["events"]))
"#;

/// Every event verified with every secret by `standardwebhooks`.
pub fn verify_with_standardwebhooks(secrets: &[&str], events: &[Received]) {
    let input = json!({
        "secrets": secrets,
        "events": events.iter().map(|event| json!({
            "id": event.id, "timestamp": event.timestamp,
            "signature": event.signature, "body": event.body,
        })).collect::<Vec<_>>(),
    });
    let output = crate::helpers::run_python(
        &standardwebhooks_python(),
        VERIFY,
        input.to_string().as_bytes(),
    );
    assert!(
        output.status.success(),
        "standardwebhooks refused an event: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        events.len().to_string()
    );
}

/// A gateway whose endpoints may be on loopback (the test receivers).
pub async fn spawn_webhook_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |settings| {
        settings["webhooks"] = json!({"allow_private_targets": true});
    })
    .await
}

/// Registers an endpoint; its answer (with the secret).
pub async fn create_endpoint(app: &TestApp, url: &str, types: Option<&[&str]>) -> Answer {
    let mut body = json!({"url": url});
    if let Some(types) = types {
        body["event_types"] = json!(types);
    }
    app.call(
        reqwest::Method::POST,
        &format!("/v1/apps/{APPID}/webhooks"),
        Some(ADMIN_KEY),
        Some(body),
    )
    .await
}

/// Runs the delivery worker until nothing is due.
pub async fn deliver_all(app: &TestApp) {
    for _ in 0..20 {
        let report = app.webhook_delivery.run_once().await.unwrap();
        if report.leased == 0 {
            return;
        }
    }
    panic!("the outbox did not drain");
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
    app.call(
        method,
        &format!("/v1/apps/{APPID}/webhooks{path}"),
        Some(ADMIN_KEY),
        body,
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_verifies_with_standardwebhooks_during_a_rotation_too(
    #[case] backend: Backend,
) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    let created = create_endpoint(&app, &receiver.url, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created.body["id"].as_str().unwrap().to_owned();

    // A send: message.sent; then a test event.
    app.collect_form_id("o-hook").await;
    let sent = app.notify("o-hook").await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    let test = admin(&app, reqwest::Method::POST, &format!("/{id}/test"), None).await;
    assert_eq!(test.status, 202, "{:?}", test.body);
    deliver_all(&app).await;
    // Events of different users (the test event has none) are not ordered.
    let mut before = receiver.received();
    before.sort_by_key(|event| event.json()["type"].as_str().unwrap().to_owned());
    let types: Vec<Value> = before
        .iter()
        .map(|event| event.json()["type"].clone())
        .collect();
    assert_eq!(types, ["message.sent", "webhook.test"], "{before:?}");
    let event = before[0].json();
    assert_eq!(event["data"]["appid"], APPID);
    assert_eq!(event["data"]["openid"], "o-hook");
    assert_eq!(event["data"]["message_id"], sent.body["id"]);
    assert_eq!(event["data"]["template_id"], TEMPLATE);
    assert_eq!(event["data"]["status"], "sent");
    assert_eq!(before[1].id, test.body["event_id"].as_str().unwrap());
    verify_with_standardwebhooks(&[&secret], &before);

    // Rotation: both secrets sign until the overlap ends.
    let rotated = admin(
        &app,
        reqwest::Method::POST,
        &format!("/{id}/rotate-secret"),
        None,
    )
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated.body["rotating"], true);
    app.collect_form_id("o-hook-2").await;
    assert_eq!(app.notify("o-hook-2").await.status, 200);
    deliver_all(&app).await;
    let after = receiver.received()[2..].to_vec();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].signature.split(' ').count(), 2);
    verify_with_standardwebhooks(&[&secret, &new_secret], &after);

    // The listing and the attempts show no secret.
    let listed = admin(&app, reqwest::Method::GET, "", None).await;
    assert_eq!(listed.status, 200);
    assert!(!listed.body.to_string().contains("whsec_"));
    let attempts = admin(&app, reqwest::Method::GET, &format!("/{id}/attempts"), None).await;
    assert_eq!(attempts.status, 200, "{:?}", attempts.body);
    assert_eq!(attempts.body["attempts"].as_array().unwrap().len(), 3);
    assert!(!attempts.body.to_string().contains("whsec_"));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_500_200_gets_the_event_three_times_under_one_id(
    #[case] backend: Backend,
) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[500, 500]).await;
    let created = create_endpoint(&app, &receiver.url, Some(&["message.sent"])).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    app.collect_form_id("o-retry").await;
    assert_eq!(app.notify("o-retry").await.status, 200);
    // Immediately, then 5 s later, then 5 min later (plus jitter).
    let first = app.webhook_delivery.run_once().await.unwrap();
    assert_eq!((first.leased, first.failed), (1, 1));
    assert_eq!(app.webhook_delivery.run_once().await.unwrap().leased, 0);
    app.advance(Duration::seconds(7));
    assert_eq!(app.webhook_delivery.run_once().await.unwrap().failed, 1);
    app.advance(Duration::seconds(60));
    assert_eq!(app.webhook_delivery.run_once().await.unwrap().leased, 0);
    app.advance(Duration::seconds(300));
    assert_eq!(app.webhook_delivery.run_once().await.unwrap().delivered, 1);
    deliver_all(&app).await;
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|event| event.id == received[0].id));
    assert!(received.iter().all(|event| event.body == received[0].body));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_that_rolled_back_writes_no_event_and_its_retry_writes_one(
    #[case] backend: Backend,
) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    assert_eq!(create_endpoint(&app, &receiver.url, None).await.status, 201);
    // The message's finish fails after the event was written in its
    // transaction: the whole transaction rolls back.
    let (fail, heal): (&[&str], &[&str]) = if backend == Backend::Sqlite {
        (
            &[
                "CREATE TRIGGER fail_finish BEFORE UPDATE OF status ON messages \
               WHEN NEW.status = 'sent' BEGIN SELECT RAISE(ABORT, 'injected'); END",
            ],
            &["DROP TRIGGER fail_finish"],
        )
    } else {
        (
            &[
                "CREATE FUNCTION fail_finish() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER fail_finish BEFORE UPDATE ON messages FOR EACH ROW \
                 WHEN (NEW.status = 'sent') EXECUTE FUNCTION fail_finish()",
            ],
            &["DROP TRIGGER fail_finish ON messages"],
        )
    };
    execute_sql(&app, fail).await;
    app.collect_form_id("o-rollback").await;
    let send = {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/apps/{APPID}/messages"));
        tokio::spawn(async move {
            call(
                &client,
                &url,
                reqwest::Method::POST,
                Some(SEND_KEY),
                Some(json!({"touser": "o-rollback", "template_id": TEMPLATE,
                    "data": {"keyword1": {"value": "x"}}})),
            )
            .await
        })
    };
    // WeChat delivered; the ledger's writes keep failing and rolling back.
    for _ in 0..100 {
        if app.fake.sends().iter().any(|send| send.delivered) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count_rows(&app, "webhook_outbox").await, 0);
    deliver_all(&app).await;
    assert!(receiver.received().is_empty());
    // Once the write commits, its one event goes out.
    execute_sql(&app, heal).await;
    let answer = send.await.unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    deliver_all(&app).await;
    assert_eq!(receiver.types(), ["message.sent"]);
    assert_eq!(count_rows(&app, "webhook_outbox").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_no_row_and_an_endpoint_gets_only_the_types_it_wants(#[case] backend: Backend) {
    let app = spawn_webhook_app(backend).await;
    app.collect_form_id("o-none").await;
    assert_eq!(app.notify("o-none").await.status, 200);
    assert_eq!(count_rows(&app, "webhook_outbox").await, 0);
    let receiver = Receiver::start(&[]).await;
    assert_eq!(
        create_endpoint(&app, &receiver.url, Some(&["message.failed"]))
            .await
            .status,
        201
    );
    app.collect_form_id("o-some").await;
    assert_eq!(app.notify("o-some").await.status, 200);
    // No credential left: the send fails.
    assert_eq!(app.notify("o-some").await.status, 409);
    deliver_all(&app).await;
    assert_eq!(receiver.types(), ["message.failed"]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_and_says_so_to_the_others(#[case] backend: Backend) {
    let app = spawn_webhook_app(backend).await;
    let gone = Receiver::start(&[410]).await;
    let watcher = Receiver::start(&[]).await;
    let gone_id = create_endpoint(&app, &gone.url, Some(&["message.sent"]))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    create_endpoint(&app, &watcher.url, Some(&["webhook.endpoint_disabled"])).await;
    app.collect_form_id("o-gone").await;
    assert_eq!(app.notify("o-gone").await.status, 200);
    deliver_all(&app).await;
    let endpoint = admin(&app, reqwest::Method::GET, &format!("/{gone_id}"), None).await;
    assert_eq!(endpoint.body["state"], "disabled");
    assert_eq!(endpoint.body["disabled_reason"], "gone");
    assert_eq!(watcher.types(), ["webhook.endpoint_disabled"]);
    assert_eq!(
        watcher.received()[0].json()["data"]["detail"],
        gone_id.as_str()
    );
    // A disabled endpoint gets nothing more.
    app.collect_form_id("o-gone").await;
    assert_eq!(app.notify("o-gone").await.status, 200);
    deliver_all(&app).await;
    assert_eq!(gone.received().len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_replayed_since_a_time_and_delivered_ones_swept(
    #[case] backend: Backend,
) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[500; 8]).await;
    let id = create_endpoint(&app, &receiver.url, None).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let start = app.now_ms();
    app.collect_form_id("o-replay").await;
    assert_eq!(app.notify("o-replay").await.status, 200);
    // Eight attempts over the schedule (about 28 h), then given up.
    for _ in 0..8 {
        deliver_all(&app).await;
        app.advance(Duration::hours(13));
    }
    assert_eq!(receiver.received().len(), 8);
    let since = formid_gateway::ledger::webhooks::rfc3339_ms(start - 1_000);
    let replay = admin(
        &app,
        reqwest::Method::POST,
        &format!("/{id}/replay"),
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(replay.status, 200, "{:?}", replay.body);
    assert_eq!(replay.body["replayed"], 1);
    deliver_all(&app).await;
    assert_eq!(receiver.received().len(), 9);
    assert_eq!(count_rows(&app, "webhook_outbox").await, 1);
    app.advance(Duration::hours(73));
    assert_eq!(app.webhook_delivery.sweep_once().await.unwrap(), 1);
    assert_eq!(count_rows(&app, "webhook_outbox").await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_endpoints_and_requests_are_refused_and_nothing_is_stored(
    #[case] backend: Backend,
) {
    // The production rule: no private targets.
    let app = spawn_app(backend).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://[fd00:ec2::254]/",
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "javascript:alert(1)",
        "",
    ] {
        let answer = create_endpoint(&app, url, None).await;
        assert_eq!(answer.status, 422, "{url}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], "invalid_webhook_url", "{url}");
    }
    // The gateway's own address, whatever the setting.
    let open = spawn_webhook_app(backend).await;
    let own = format!("{}/healthz", open.address);
    let answer = create_endpoint(&open, &own, None).await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    let answer = create_endpoint(&app, "https://example.com/h", Some(&["message.nope"])).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["error"]["code"], "unknown_event_type");
    for body in [
        json!({"url": "https://example.com/h", "secret": "mine"}),
        json!({"url": 7}),
        json!([]),
    ] {
        let answer = app
            .call(
                reqwest::Method::POST,
                &format!("/v1/apps/{APPID}/webhooks"),
                Some(ADMIN_KEY),
                Some(body.clone()),
            )
            .await;
        assert_eq!(answer.status, 422, "{body}: {:?}", answer.body);
    }
    // Only admin keys; only the key's apps.
    for key in [SEND_KEY, COLLECT_KEY, OTHER_APP_KEY] {
        let answer = app
            .call(
                reqwest::Method::GET,
                &format!("/v1/apps/{APPID}/webhooks"),
                Some(key),
                None,
            )
            .await;
        assert_eq!(answer.status, 403, "{key}");
    }
    let missing = admin(&app, reqwest::Method::POST, "/ep_nope/test", None).await;
    assert_eq!(missing.status, 404);
    let bad_since = admin(
        &app,
        reqwest::Method::POST,
        "/ep_nope/replay",
        Some(json!({"since": "yesterday"})),
    )
    .await;
    assert_eq!(bad_since.status, 422);
    let bad_limit = admin(
        &app,
        reqwest::Method::GET,
        "/ep_nope/attempts?limit=0",
        None,
    )
    .await;
    assert_eq!(bad_limit.status, 400);
    assert_eq!(count_rows(&app, "webhook_endpoints").await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_at_delivery_and_redirects_are_not_followed(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    // Accepted at creation (a name), refused where it resolves.
    let created = create_endpoint(&app, "http://localhost:9/x", None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.collect_form_id("o-ssrf").await;
    assert_eq!(app.notify("o-ssrf").await.status, 200);
    deliver_all(&app).await;
    let attempts = admin(&app, reqwest::Method::GET, &format!("/{id}/attempts"), None).await;
    assert_eq!(attempts.body["attempts"][0]["outcome"], "refused");
    // A receiver that redirects to the metadata address: not followed.
    let open = spawn_webhook_app(backend).await;
    let redirect = Receiver::start(&[302]).await;
    let id = create_endpoint(&open, &redirect.url, None).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    open.collect_form_id("o-ssrf").await;
    assert_eq!(open.notify("o-ssrf").await.status, 200);
    open.webhook_delivery.run_once().await.unwrap();
    let attempts = open
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/webhooks/{id}/attempts"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(attempts.body["attempts"][0]["outcome"], "rejected");
    assert_eq!(attempts.body["attempts"][0]["status_code"], 302);
    assert_eq!(redirect.received().len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_grant_send_and_revocation_arrive_in_commit_order_and_verify(
    #[case] backend: Backend,
) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    let created = create_endpoint(&app, &receiver.url, None).await;
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .unwrap();
    let data = json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN1"}});
    app.accept_prompt("o-sub", &template, "p1").await;
    app.accept_prompt("o-sub", &template, "p2").await;
    let sent = app
        .send(json!({"touser": "o-sub", "template_id": template, "data": data}))
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    // The user turns the template off: the next send meets 43101.
    app.fake.revoke(APPID, "o-sub", &template);
    let refused = app
        .send(json!({"touser": "o-sub", "template_id": template, "data": data}))
        .await;
    assert_eq!(refused.status, 409, "{:?}", refused.body);
    // One step at a time: per endpoint and user, one event in flight.
    deliver_all(&app).await;
    assert_eq!(
        receiver.types(),
        [
            "grant.accepted",
            "grant.accepted",
            "message.sent",
            "subscription.revoked",
            "message.failed"
        ]
    );
    let received = receiver.received();
    let revoked = received[3].json();
    assert_eq!(revoked["data"]["wechat_errcode"], 43101);
    assert_eq!(revoked["data"]["template_id"], template.as_str());
    assert_eq!(revoked["data"]["message_id"], refused.body["id"]);
    verify_with_standardwebhooks(&[&secret], &received);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_45009_reports_the_apps_quota_once(#[case] backend: Backend) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(&app, &receiver.url, Some(&["app.quota_exhausted"])).await;
    app.collect_form_id("o-quota").await;
    app.fake
        .push_send_faults([fake_wechat::Fault::Errcode(45009)]);
    assert_eq!(app.notify("o-quota").await.status, 429);
    assert_eq!(app.notify("o-quota").await.status, 429);
    deliver_all(&app).await;
    assert_eq!(receiver.types(), ["app.quota_exhausted"]);
    let event = receiver.received()[0].json();
    assert_eq!(event["data"]["wechat_errcode"], 45009);
    assert!(event["data"]["detail"].as_str().unwrap().ends_with('Z'));
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_message_ended_unsent_reports_message_failed_once(#[case] backend: Backend) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    assert_eq!(create_endpoint(&app, &receiver.url, None).await.status, 201);
    app.collect_form_id("o-later").await;
    let send_at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(app.now_ms() + 60_000)
        .unwrap()
        .to_rfc3339();
    let scheduled = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/messages"),
            Some(SEND_KEY),
            Some(json!({
                "touser": "o-later",
                "template_id": TEMPLATE,
                "data": {"keyword1": {"value": "later"}},
                "send_at": send_at,
            })),
        )
        .await;
    assert_eq!(scheduled.status, 202, "{:?}", scheduled.body);
    let id = scheduled.body["id"].as_str().unwrap().to_owned();
    // Scheduled: nothing to report yet.
    assert_eq!(count_rows(&app, "webhook_outbox").await, 0);
    let path = format!("/v1/apps/{APPID}/messages/{id}");
    let cancel = app
        .call(reqwest::Method::DELETE, &path, Some(SEND_KEY), None)
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.body);
    // A second cancel changes nothing and writes nothing.
    let again = app
        .call(reqwest::Method::DELETE, &path, Some(SEND_KEY), None)
        .await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    deliver_all(&app).await;
    let received = receiver.received();
    assert_eq!(receiver.types(), ["message.failed"]);
    let event = received[0].json();
    assert_eq!(event["data"]["message_id"], id.as_str());
    assert_eq!(event["data"]["openid"], "o-later");
    assert_eq!(event["data"]["error_code"], "cancelled");
    assert_eq!(received[0].id, format!("evt_{id}"));
}

/// The caller's key and reference as an event's body names them.
fn key_and_reference(event: &Received) -> (Value, Value) {
    let data = &event.json()["data"];
    (data["idempotency_key"].clone(), data["reference"].clone())
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sends_key_and_reference_ride_on_its_events_and_its_message(#[case] backend: Backend) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    let created = create_endpoint(&app, &receiver.url, None).await;
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    app.collect_form_id("o-ref").await;
    app.collect_form_id("o-plain").await;
    let sent = app
        .send_with_key(
            "key-ref-1",
            json!({"touser": "o-ref", "template_id": TEMPLATE,
            "data": {"keyword1": {"value": "Order 7"}}, "reference": "order-7 · 订单"}),
        )
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert_eq!(sent.body["reference"], "order-7 · 订单");
    let id = sent.body["id"].as_str().unwrap().to_owned();
    let message = app.message(&id).await;
    assert_eq!(
        message.body["reference"], "order-7 · 订单",
        "{:?}",
        message.body
    );
    // The replayed answer says it too.
    let replayed = app
        .send_with_key(
            "key-ref-1",
            json!({"touser": "o-ref", "template_id": TEMPLATE,
            "data": {"keyword1": {"value": "Order 7"}}, "reference": "order-7 · 订单"}),
        )
        .await;
    assert_eq!(replayed.body["reference"], "order-7 · 订单");
    // A send with neither: its event and message leave both out.
    let plain = app.notify("o-plain").await;
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    assert!(plain.body.get("reference").is_none(), "{:?}", plain.body);
    deliver_all(&app).await;
    let mut received = receiver.received();
    received.sort_by_key(|event| event.json()["data"]["openid"].as_str().unwrap().to_owned());
    assert_eq!(receiver.types(), ["message.sent", "message.sent"]);
    assert_eq!(
        key_and_reference(&received[1]),
        (json!("key-ref-1"), json!("order-7 · 订单"))
    );
    assert_eq!(received[1].json()["data"]["message_id"], id.as_str());
    let plain_data = received[0].json()["data"].clone();
    assert!(plain_data.get("idempotency_key").is_none(), "{plain_data}");
    assert!(plain_data.get("reference").is_none(), "{plain_data}");
    verify_with_standardwebhooks(&[&secret], &received);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_scheduled_sends_failed_event_names_its_key_and_reference(
    #[case] backend: Backend,
) {
    let app = spawn_webhook_app(backend).await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(&app, &receiver.url, Some(&["message.failed"])).await;
    let send_at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(app.now_ms() + 60_000)
        .unwrap()
        .to_rfc3339();
    let scheduled = app
        .send_with_key(
            "key-later",
            json!({"touser": "o-later", "template_id": TEMPLATE, "send_at": send_at,
            "data": {"keyword1": {"value": "later"}}, "reference": "invoice-9"}),
        )
        .await;
    assert_eq!(scheduled.status, 202, "{:?}", scheduled.body);
    assert_eq!(scheduled.body["reference"], "invoice-9");
    let id = scheduled.body["id"].as_str().unwrap().to_owned();
    let cancel = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/apps/{APPID}/messages/{id}"),
            Some(SEND_KEY),
            None,
        )
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.body);
    assert_eq!(cancel.body["reference"], "invoice-9");
    deliver_all(&app).await;
    let received = receiver.received();
    assert_eq!(receiver.types(), ["message.failed"]);
    assert_eq!(received[0].json()["data"]["error_code"], "cancelled");
    assert_eq!(
        key_and_reference(&received[0]),
        (json!("key-later"), json!("invoice-9"))
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_delivery_names_the_sends_key_and_reference(#[case] backend: Backend) {
    const PUSH_TOKEN: &str = "pushToken123";
    const PUSH_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let app = spawn_app_with(backend, |settings| {
        settings["webhooks"] = json!({"allow_private_targets": true});
        settings["apps"][APPID]["push_token"] = json!(PUSH_TOKEN);
        settings["apps"][APPID]["encoding_aes_key"] = json!(PUSH_KEY);
    })
    .await;
    let receiver = Receiver::start(&[]).await;
    create_endpoint(
        &app,
        &receiver.url,
        Some(&["message.sent", "message.delivered"]),
    )
    .await;
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .unwrap();
    app.accept_prompt("o-push", &template, "p1").await;
    // From here on WeChat pushes each accepted send's final delivery.
    let mut target = fake_wechat::PushTarget::new(
        app.url(&format!("/wechat/push/{APPID}")),
        PUSH_TOKEN,
        PUSH_KEY,
        fake_wechat::PushMode::Safe,
        fake_wechat::PushFormat::Xml,
    );
    target.sent_event_delay = std::time::Duration::from_millis(20);
    app.fake.set_push_target(APPID, target).unwrap();
    let data = json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN1"}});
    let sent = app
        .send_with_key(
            "key-push",
            json!({"touser": "o-push", "template_id": template, "data": data,
            "reference": "shipment-3"}),
        )
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    let pushes = app
        .fake
        .wait_for_pushes(1, std::time::Duration::from_secs(10))
        .await;
    assert!(
        pushes.iter().all(fake_wechat::PushRecord::acknowledged),
        "{pushes:?}"
    );
    deliver_all(&app).await;
    assert_eq!(receiver.types(), ["message.sent", "message.delivered"]);
    for event in receiver.received() {
        assert_eq!(event.json()["data"]["message_id"], sent.body["id"]);
        assert_eq!(
            key_and_reference(&event),
            (json!("key-push"), json!("shipment-3"))
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reference_is_refused_and_nothing_is_stored(#[case] backend: Backend) {
    let app = spawn_webhook_app(backend).await;
    app.collect_form_id("o-bad").await;
    for reference in [
        json!("x".repeat(257)),
        json!("line\nbreak"),
        json!("bell\u{7}"),
        json!(""),
        json!(42),
    ] {
        let answer = app
            .send_with_key(
                "key-bad",
                json!({"touser": "o-bad", "template_id": TEMPLATE, "reference": reference}),
            )
            .await;
        let expected = if reference.is_string() { 422 } else { 400 };
        assert_eq!(answer.status, expected, "{reference}: {:?}", answer.body);
        let code = if expected == 422 {
            "invalid_field"
        } else {
            "invalid_json"
        };
        assert_eq!(answer.body["error"]["code"], code, "{:?}", answer.body);
    }
    assert_eq!(count_rows(&app, "messages").await, 0);
    assert_eq!(count_rows(&app, "idempotency_keys").await, 0);
    assert_eq!(app.sends_available("o-bad").await, 1);
}
