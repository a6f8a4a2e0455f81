//! Idempotency keys, waiting for a credential, recovery after a crash, the
//! circuit breaker and the bound on concurrent calls.

use chrono::Duration;
use fake_wechat::Fault;
use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::ledger::states::{AttemptOutcome, Delivery, MessageStatus};
use formid_gateway::storage::{Claim, ClaimRequest, Lease, NewAttempt, NewMessage, Settlement};
use serde_json::{json, Value};

use rstest::rstest;

use crate::helpers::*;

fn notification(openid: &str) -> Value {
    json!({"touser": openid, "template_id": TEMPLATE, "data": {"keyword1": {"value": "Order 7"}}})
}

impl TestApp {
    /// A pending message whose process "died" right after claiming a credential.
    async fn crashed_mid_send(&self, openid: &str) -> (Lease, i64) {
        let now = self.now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let payload = json!({"touser": openid, "template_id": TEMPLATE});
        let message = NewMessage {
            id: id.clone(),
            appid: APPID.into(),
            touser: openid.into(),
            template_id: TEMPLATE.into(),
            payload: payload.to_string(),
            status: MessageStatus::Pending,
            delivery: Delivery::AtMostOnce,
            wait_until: None,
            lease_until: now + 120_000,
            lease_token: 1,
            channel: formid_gateway::ledger::states::Channel::Template,
            reference: None,
            idempotency_key: None,
        };
        self.storage.create_message(&message, now).await.unwrap();
        let lease = Lease {
            message_id: id,
            token: 1,
        };
        let Claim::Claimed(claimed) = self
            .storage
            .claim_credential(&ClaimRequest {
                appid: APPID,
                openid,
                grant_of: None,
                lease: &lease,
                valid_after: now + 60_000,
                lease_until: now + 120_000,
                now,
            })
            .await
            .unwrap()
        else {
            panic!("a credential to claim")
        };
        (lease, claimed.id)
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_and_body_replays_the_first_answer(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-ida").await;
    app.collect_form_id("o-ida").await;
    let first = app
        .send_with_key("order-7-shipped", notification("o-ida"))
        .await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = app
        .send_with_key("order-7-shipped", notification("o-ida"))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.delivered_form_ids().len(), 1, "sent once");
    assert_eq!(app.sends_available("o-ida").await, 1);
    // Failures replay too: the stored answer, not a new attempt.
    let refused = app
        .send_with_key(
            "order-8",
            json!({"touser": "o-nobody", "template_id": TEMPLATE}),
        )
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(
        app.send_with_key(
            "order-8",
            json!({"touser": "o-nobody", "template_id": TEMPLATE})
        )
        .await
        .body,
        refused.body
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_refused(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-ike").await;
    assert_eq!(
        app.send_with_key("k-1", notification("o-ike")).await.status,
        200
    );
    let other = app
        .send_with_key(
            "k-1",
            json!({"touser": "o-ike", "template_id": TEMPLATE, "page": "pages/x"}),
        )
        .await;
    assert_eq!(other.status, 422);
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    let bad = app
        .send_with_key(&"k".repeat(300), notification("o-ike"))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], "invalid_idempotency_key");
    // Keys are per app: another app may use the same key.
    assert_eq!(app.delivered_form_ids().len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_in_flight_is_409_and_still_one_send(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-jon").await;
    app.collect_form_id("o-jon").await;
    app.access_token().await;
    app.fake.set_latency(std::time::Duration::from_millis(800));
    let app = std::sync::Arc::new(app);
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.send_with_key("k-flight", notification("o-jon")).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = app.send_with_key("k-flight", notification("o-jon")).await;
    assert_eq!(second.status, 409);
    assert_eq!(second.body["error"]["code"], "idempotency_key_in_flight");
    assert_eq!(first.await.unwrap().status, 200);
    app.fake.set_latency(std::time::Duration::ZERO);
    assert_eq!(
        app.send_with_key("k-flight", notification("o-jon"))
            .await
            .status,
        200
    );
    assert_eq!(app.delivered_form_ids().len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_kept_a_day_then_swept(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-kay").await;
    app.collect_form_id("o-kay").await;
    assert_eq!(
        app.send_with_key("k-day", notification("o-kay"))
            .await
            .status,
        200
    );
    app.advance(Duration::hours(23));
    assert_eq!(
        app.sweeper
            .run_once()
            .await
            .unwrap()
            .deleted_idempotency_keys,
        0
    );
    assert_eq!(
        app.send_with_key("k-day", notification("o-kay"))
            .await
            .headers["idempotent-replayed"],
        "true"
    );
    app.advance(Duration::hours(2));
    assert_eq!(
        app.sweeper
            .run_once()
            .await
            .unwrap()
            .deleted_idempotency_keys,
        1
    );
    let fresh = app.send_with_key("k-day", notification("o-kay")).await;
    assert_eq!(fresh.status, 200);
    assert!(fresh.headers.get("idempotent-replayed").is_none());
    assert_eq!(app.delivered_form_ids().len(), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_send_goes_out_when_a_credential_arrives(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let mut body = notification("o-lin");
    body["wait_seconds"] = json!(600);
    let answer = app.send(body).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "waiting");
    let id = answer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(app.message(&id).await.body["status"], "waiting");
    assert_eq!(
        app.waiting.run_once().await.unwrap(),
        0,
        "not due before a credential arrives"
    );
    let value = app.collect_form_id("o-lin").await;
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    assert_eq!(app.message(&id).await.body["status"], "sent");
    assert_eq!(app.delivered_form_ids(), vec![value]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_send_fails_with_no_credential_when_the_wait_ends(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let mut body = notification("o-mo");
    body["wait_seconds"] = json!(30);
    let id = app.send(body).await.body["id"].as_str().unwrap().to_owned();
    app.advance(Duration::seconds(31));
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    let message = app.message(&id).await;
    assert_eq!(message.body["status"], "failed");
    assert_eq!(message.body["error"]["code"], "no_credential");
    assert!(app.fake.sends().is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syncing_prepay_id_is_retried_by_the_waiting_worker(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.fake
        .set_prepay_sync_lag(std::time::Duration::from_secs(8));
    app.collect_prepay_id("o-ned").await;
    let mut body = notification("o-ned");
    body["wait_seconds"] = json!(120);
    let answer = app.send(body).await;
    assert_eq!(answer.status, 202);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.sends_available("o-ned").await,
        3,
        "parked, then returned untouched"
    );
    app.advance(Duration::seconds(6));
    assert_eq!(
        app.waiting.run_once().await.unwrap(),
        1,
        "retried after the short delay"
    );
    assert_eq!(
        app.message(&id).await.body["status"],
        "waiting",
        "still syncing at 6 s"
    );
    app.advance(Duration::seconds(6));
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    assert_eq!(app.message(&id).await.body["status"], "sent");
    assert_eq!(app.sends_available("o-ned").await, 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_probes_a_form_id_whose_send_never_happened(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.collect_form_id("o-oli").await;
    let (Lease { message_id: id, .. }, _) = app.crashed_mid_send("o-oli").await;
    assert_eq!(
        app.recovery.run_once().await.unwrap().credentials,
        0,
        "the lease still runs"
    );
    app.advance(Duration::seconds(121));
    assert_eq!(app.recovery.run_once().await.unwrap().credentials, 1);
    let message = app.message(&id).await;
    assert_eq!(message.body["status"], "sent");
    assert_eq!(message.body["attempts"][0]["outcome"], "sent_on_probe");
    assert_eq!(app.delivered_form_ids(), vec![value]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_proves_an_earlier_delivery_with_41029_and_does_not_resend(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let value = app.collect_form_id("o-pat").await;
    let (Lease { message_id: id, .. }, _) = app.crashed_mid_send("o-pat").await;
    // The dead process's call did reach WeChat.
    let token = app.access_token().await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivered: Value = app
        .client
        .post(format!(
            "{}/cgi-bin/message/wxopen/template/send?access_token={token}",
            app.wechat_base_url
        ))
        .json(&json!({"touser": "o-pat", "template_id": TEMPLATE, "form_id": value}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(delivered["errcode"], 0);
    app.advance(Duration::seconds(121));
    app.recovery.run_once().await.unwrap();
    let message = app.message(&id).await;
    assert_eq!(message.body["status"], "sent");
    assert_eq!(message.body["attempts"][0]["errcode"], 41029);
    assert_eq!(message.body["attempts"][0]["outcome"], "confirmed_sent");
    assert_eq!(
        app.delivered_form_ids(),
        vec![value],
        "delivered exactly once"
    );
    assert_eq!(app.sends_available("o-pat").await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_counts_an_unprobeable_prepay_id_spent_and_the_message_unknown(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.collect_prepay_id("o-quy").await;
    let (Lease { message_id: id, .. }, _) = app.crashed_mid_send("o-quy").await;
    app.advance(Duration::seconds(121));
    app.recovery.run_once().await.unwrap();
    let message = app.message(&id).await;
    assert_eq!(message.body["status"], "unknown");
    assert_eq!(message.body["error"]["code"], "outcome_unknown");
    assert_eq!(app.sends_available("o-quy").await, 2);
    assert!(app.fake.sends().is_empty(), "never re-sent");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_carries_on_a_message_that_held_no_credential(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-ray").await;
    let now = app.now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let message = NewMessage {
        id: id.clone(),
        appid: APPID.into(),
        touser: "o-ray".into(),
        template_id: TEMPLATE.into(),
        payload: json!({"touser": "o-ray", "template_id": TEMPLATE}).to_string(),
        status: MessageStatus::Pending,
        delivery: Delivery::AtMostOnce,
        wait_until: None,
        lease_until: now + 120_000,
        lease_token: 1,
        channel: formid_gateway::ledger::states::Channel::Template,
        reference: None,
        idempotency_key: None,
    };
    app.storage.create_message(&message, now).await.unwrap();
    app.advance(Duration::seconds(121));
    let report = app.recovery.run_once().await.unwrap();
    assert_eq!((report.credentials, report.messages), (0, 1));
    assert_eq!(app.message(&id).await.body["status"], "sent");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_credential_left_by_a_crash_goes_back_untouched(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_prepay_id("o-sol").await;
    let (lease, credential) = app.crashed_mid_send("o-sol").await;
    // Parked, as the send path does with a syncing prepay_id, then the process died.
    let now = app.now_ms();
    let attempt = NewAttempt {
        credential_id: Some(credential),
        credential_kind: Some(CredentialKind::PrepayId),
        errcode: Some(41028),
        outcome: AttemptOutcome::NotReady,
        detail: None,
        msgid: None,
    };
    let parked = Settlement::Parked { until: now + 1000 };
    app.storage
        .record_attempt(&lease, &attempt, Some((credential, parked)), None, now)
        .await
        .unwrap();
    app.advance(Duration::seconds(2));
    let report = app.recovery.run_once().await.unwrap();
    assert_eq!(report.credentials, 1);
    assert_eq!(
        app.sends_available("o-sol").await,
        3,
        "back with every send"
    );
    assert!(app.fake.sends().is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_open_the_circuit_then_one_probe_closes_it(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-tom").await;
    app.access_token().await;
    // Five busy answers in a row: three for the first send (a call and two
    // retries), the circuit opens on the second send's second call.
    app.fake.push_send_faults(vec![Fault::Errcode(-1); 5]);
    assert_eq!(
        app.notify("o-tom").await.body["error"]["code"],
        "upstream_busy"
    );
    assert_eq!(
        app.notify("o-tom").await.body["error"]["code"],
        "upstream_circuit_open"
    );
    let calls = app.fake.sends().len();
    let fast = app.notify("o-tom").await;
    assert_eq!(fast.status, 503);
    assert_eq!(fast.body["error"]["code"], "upstream_circuit_open");
    assert!(fast.headers.contains_key("retry-after"));
    assert_eq!(
        app.fake.sends().len(),
        calls,
        "no call while the circuit is open"
    );
    assert_eq!(app.sends_available("o-tom").await, 1);
    app.advance(Duration::seconds(11));
    assert_eq!(
        app.notify("o-tom").await.status,
        200,
        "the probe goes through"
    );
    app.collect_form_id("o-tom").await;
    assert_eq!(app.notify("o-tom").await.status, 200, "closed again");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_wechat_are_bounded_per_app(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["wechat"]["max_concurrent_calls_per_app"] = json!(3);
    })
    .await;
    for i in 0..12 {
        app.collect_form_id(&format!("o-bound-{i}")).await;
    }
    app.access_token().await;
    app.fake.set_latency(std::time::Duration::from_millis(100));
    let app = std::sync::Arc::new(app);
    let sends = (0..12).map(|i| {
        let app = app.clone();
        tokio::spawn(async move { app.notify(&format!("o-bound-{i}")).await.status })
    });
    for status in futures::future::join_all(sends).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(app.fake.max_concurrent_sends(), 3);
}

/// A credential posted between the claim that found nothing
/// and the moment the message is marked waiting makes it due at once,
/// instead of leaving it to wait out its whole wait.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_posted_just_before_the_wait_wakes_the_message(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let message = NewMessage {
        id: id.clone(),
        appid: APPID.into(),
        touser: "o-wake".into(),
        template_id: TEMPLATE.into(),
        payload: json!({"touser": "o-wake", "template_id": TEMPLATE}).to_string(),
        status: MessageStatus::Pending,
        delivery: Delivery::AtMostOnce,
        wait_until: Some(now + 86_400_000),
        lease_until: now + 120_000,
        lease_token: 5,
        channel: formid_gateway::ledger::states::Channel::Template,
        reference: None,
        idempotency_key: None,
    };
    app.storage.create_message(&message, now).await.unwrap();
    // The claim found nothing; now the credential lands; then the wait.
    app.collect_form_id("o-wake").await;
    let lease = Lease {
        message_id: id.clone(),
        token: 5,
    };
    assert!(app
        .storage
        .wait_message(&lease, now + 86_400_000, now + 60_000, now)
        .await
        .unwrap());
    assert_eq!(app.waiting.run_once().await.unwrap(), 1, "due at once");
    assert_eq!(app.message(&id).await.body["status"], "sent");
}

/// When the ledger fails after WeChat delivered, the caller
/// gets the message id and `pending` (202, poll it), never a 500 without
/// an id; the settlement is retried while the lease lasts, and recovery
/// settles the message from WeChat's side afterwards (41029: delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_failure_after_delivery_answers_pending_and_recovery_settles_it() {
    use sqlx::Connection;
    let app = spawn_app(Backend::Sqlite).await;
    app.collect_form_id("o-dbf").await;
    assert_eq!(app.access_token().await.status, 200);
    app.fake.set_latency(std::time::Duration::from_millis(1000));
    let send = {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/v1/apps/{APPID}/messages")),
        );
        tokio::spawn(async move {
            call(
                &client,
                &url,
                reqwest::Method::POST,
                Some(SEND_KEY),
                Some(notification("o-dbf")),
            )
            .await
        })
    };
    // While the call is in flight, another process takes SQLite's write
    // lock and keeps it: every write of the settlement fails (busy).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut blocker = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut blocker)
        .await
        .unwrap();
    // The retries go on while the lease leaves room for them.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    app.advance(Duration::seconds(119));
    let answer = send.await.unwrap();
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "pending");
    assert_eq!(answer.body["error"]["code"], "outcome_pending");
    let id = answer.body["id"].as_str().unwrap().to_owned();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert_eq!(app.message(&id).await.body["status"], "pending");
    app.fake.set_latency(std::time::Duration::ZERO);
    app.advance(Duration::seconds(2));
    let report = app.recovery.run_once().await.unwrap();
    assert_eq!(report.credentials, 1);
    let message = app.message(&id).await;
    assert_eq!(message.body["status"], "sent", "{:?}", message.body);
    let delivered = app.delivered_form_ids().len();
    assert_eq!(delivered, 1, "delivered once, proven by the probe's 41029");
}
