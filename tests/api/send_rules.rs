//! The send rules: per-user send caps (across instances too), quiet hours,
//! scheduled sends. Each checked from the fake WeChat's side as well as from
//! the answers.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

/// A key with the `send` and `urgent` scopes.
const URGENT_KEY: &str = "test-urgent-key-0123456789";

/// 23:00 in China (UTC+8), inside a 22:00–08:00 window.
fn late_evening() -> DateTime<Utc> {
    "2027-01-05T15:00:00Z".parse().unwrap()
}

/// 08:00 in China the next morning: the window's opening.
fn next_morning() -> DateTime<Utc> {
    "2027-01-06T00:00:00Z".parse().unwrap()
}

fn with_rules(caps: Value, quiet: Option<Value>) -> impl FnOnce(&mut Value) {
    move |settings: &mut Value| {
        settings["apps"][APPID]["send_caps"] = caps;
        if let Some(quiet) = quiet {
            settings["apps"][APPID]["quiet_hours"] = quiet;
        }
        settings["api_keys"]["urgent"] =
            json!({"key": URGENT_KEY, "apps": [APPID], "scopes": ["send", "urgent"]});
    }
}

fn delivered_to(app: &TestApp, openid: &str) -> usize {
    app.fake
        .sends()
        .into_iter()
        .filter(|send| send.delivered && send.touser == openid)
        .count()
}

fn body(openid: &str) -> Value {
    json!({"touser": openid, "template_id": TEMPLATE, "data": {"keyword1": {"value": "x"}}})
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_full_cap_answers_429_spends_nothing_and_frees_with_the_window(#[case] backend: Backend) {
    let app = spawn_app_with(
        backend,
        with_rules(json!([{"limit": 2, "window_secs": 86_400}]), None),
    )
    .await;
    for _ in 0..4 {
        app.collect_form_id("o-capped").await;
    }
    assert_eq!(app.send(body("o-capped")).await.status, 200);
    app.advance(Duration::hours(1));
    assert_eq!(app.send(body("o-capped")).await.status, 200);
    app.advance(Duration::hours(1));
    let calls = app.fake.sends().len();
    let capped = app.send(body("o-capped")).await;
    assert_eq!(capped.status, 429, "{:?}", capped.body);
    assert_eq!(capped.body["error"]["code"], "user_send_limit");
    // The first send leaves the window 22 hours from now.
    let retry: i64 = capped.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 22 * 3600, "{:?}", capped.headers);
    assert_eq!(app.fake.sends().len(), calls, "a capped send calls nothing");
    assert_eq!(
        app.sends_available("o-capped").await,
        2,
        "nor spends anything"
    );
    // Another user is not capped by this one.
    app.collect_form_id("o-other").await;
    assert_eq!(app.send(body("o-other")).await.status, 200);
    // Once the first send has left the window, one more fits.
    app.advance(Duration::hours(22));
    assert_eq!(app.send(body("o-capped")).await.status, 200);
    assert_eq!(app.send(body("o-capped")).await.status, 429);
    assert_eq!(delivered_to(&app, "o-capped"), 3);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_send_that_failed_without_a_call_does_not_eat_the_cap(#[case] backend: Backend) {
    let app = spawn_app_with(
        backend,
        with_rules(json!([{"limit": 1, "window_secs": 86_400}]), None),
    )
    .await;
    // No credential: failed, nothing sent, nothing counted.
    let none = app.send(body("o-recovers")).await;
    assert_eq!(none.status, 409, "{:?}", none.body);
    assert_eq!(none.body["error"]["code"], "no_credential");
    // WeChat refused the call (a busy WeChat, every retry): not delivered.
    app.collect_form_id("o-recovers").await;
    app.fake.push_send_faults([
        fake_wechat::Fault::Errcode(-1),
        fake_wechat::Fault::Errcode(-1),
        fake_wechat::Fault::Errcode(-1),
    ]);
    let busy = app.send(body("o-recovers")).await;
    assert_eq!(busy.status, 503, "{:?}", busy.body);
    // The user's one send in the window still goes.
    let sent = app.send(body("o-recovers")).await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert_eq!(delivered_to(&app, "o-recovers"), 1);
    app.collect_form_id("o-recovers").await;
    assert_eq!(app.send(body("o-recovers")).await.status, 429);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_template_cap_counts_only_its_template(#[case] backend: Backend) {
    let app = spawn_app_with(
        backend,
        with_rules(
            json!([{"template_id": TEMPLATE, "limit": 1, "window_secs": 3600}]),
            None,
        ),
    )
    .await;
    app.fake.register_template(APPID, "OTHER-TEMPLATE");
    for _ in 0..3 {
        app.collect_form_id("o-t").await;
    }
    assert_eq!(app.send(body("o-t")).await.status, 200);
    assert_eq!(app.send(body("o-t")).await.status, 429);
    let other = json!({"touser": "o-t", "template_id": "OTHER-TEMPLATE"});
    assert_eq!(app.send(other).await.status, 200);
}

/// Three instances on one PostgreSQL ledger, 30 concurrent sends to one user
/// with a cap of 3: exactly 3 delivered, never 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_exceed_a_users_cap() {
    let rules = || with_rules(json!([{"limit": 3, "window_secs": 86_400}]), None);
    let app = spawn_app_with(Backend::Postgres, rules()).await;
    let siblings = [
        spawn_sibling_with(&app, rules()).await,
        spawn_sibling_with(&app, rules()).await,
    ];
    let addresses: Vec<String> = std::iter::once(app.address.clone())
        .chain(siblings.iter().map(|sibling| sibling.address.clone()))
        .collect();
    for _ in 0..30 {
        app.collect_form_id("o-popular").await;
    }
    app.access_token().await;
    let client = Arc::new(app.client.clone());
    let sends = (0..30).map(|i| {
        let client = client.clone();
        let url = format!("{}/v1/apps/{APPID}/messages", addresses[i % 3]);
        tokio::spawn(async move {
            call(
                &client,
                &url,
                reqwest::Method::POST,
                Some(SEND_KEY),
                Some(body("o-popular")),
            )
            .await
            .status
        })
    });
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        27,
        "{statuses:?}"
    );
    assert_eq!(delivered_to(&app, "o-popular"), 3);
    assert_eq!(app.sends_available("o-popular").await, 27);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn quiet_hours_refuse_with_the_opening_and_urgent_needs_its_scope(#[case] backend: Backend) {
    let quiet = json!({"start": "22:00", "end": "08:00", "mode": "refuse"});
    let app = spawn_app_with(backend, with_rules(json!([]), Some(quiet))).await;
    app.clock.set(late_evening());
    app.collect_form_id("o-night").await;
    let calls = app.fake.sends().len();
    let refused = app.send(body("o-night")).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["code"], "quiet_hours");
    let retry: i64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 9 * 3600);
    let opens: DateTime<Utc> = refused.body["error"]["opens_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(opens, next_morning());
    assert_eq!(app.fake.sends().len(), calls);
    assert_eq!(app.sends_available("o-night").await, 1);
    // `urgent` without the scope: refused, before anything.
    let mut urgent = body("o-night");
    urgent["urgent"] = true.into();
    let path = format!("/v1/apps/{APPID}/messages");
    let forbidden = app
        .call(
            reqwest::Method::POST,
            &path,
            Some(SEND_KEY),
            Some(urgent.clone()),
        )
        .await;
    assert_eq!(forbidden.status, 403, "{:?}", forbidden.body);
    assert_eq!(forbidden.body["error"]["code"], "urgent_not_allowed");
    let sent = app
        .call(reqwest::Method::POST, &path, Some(URGENT_KEY), Some(urgent))
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert_eq!(delivered_to(&app, "o-night"), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn quiet_hours_that_wait_send_at_the_opening_without_a_second_post(#[case] backend: Backend) {
    let quiet = json!({"start": "22:00", "end": "08:00", "utc_offset": "+08:00"});
    let app = spawn_app_with(backend, with_rules(json!([]), Some(quiet))).await;
    app.clock.set(late_evening());
    app.collect_form_id("o-wait").await;
    let held = app.send(body("o-wait")).await;
    assert_eq!(held.status, 202, "{:?}", held.body);
    assert_eq!(held.body["status"], "scheduled");
    let id = held.body["id"].as_str().unwrap().to_owned();
    // Nothing is held while it waits, and nothing goes out in the window.
    assert_eq!(app.sends_available("o-wait").await, 1);
    app.advance(Duration::hours(8));
    assert_eq!(app.scheduled.run_once().await.unwrap().sent, 0);
    assert_eq!(delivered_to(&app, "o-wait"), 0);
    app.clock.set(next_morning());
    let report = app.scheduled.run_once().await.unwrap();
    assert_eq!(report.sent, 1, "{report:?}");
    assert_eq!(app.message(&id).await.body["status"], "sent");
    let delivery = app
        .fake
        .sends()
        .into_iter()
        .find(|send| send.delivered)
        .unwrap();
    assert!(delivery.at_ms >= next_morning().timestamp_millis());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_scheduled_send_goes_at_its_time_and_can_be_cancelled_before(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-later").await;
    let at = app.now_ms() + 3_600_000;
    let send_at = DateTime::<Utc>::from_timestamp_millis(at)
        .unwrap()
        .to_rfc3339();
    let mut later = body("o-later");
    later["send_at"] = send_at.clone().into();
    let path = format!("/v1/apps/{APPID}/messages");
    let scheduled = app
        .call(
            reqwest::Method::POST,
            &path,
            Some(SEND_KEY),
            Some(later.clone()),
        )
        .await;
    assert_eq!(scheduled.status, 202, "{:?}", scheduled.body);
    assert_eq!(scheduled.body["status"], "scheduled");
    let id = scheduled.body["id"].as_str().unwrap().to_owned();
    // Another, cancelled before its time.
    let mut cancelled_body = later.clone();
    cancelled_body["data"] = json!({"keyword1": {"value": "cancel me"}});
    let doomed = app
        .call(
            reqwest::Method::POST,
            &path,
            Some(SEND_KEY),
            Some(cancelled_body),
        )
        .await;
    let doomed_id = doomed.body["id"].as_str().unwrap().to_owned();
    let cancel_path = format!("/v1/apps/{APPID}/messages/{doomed_id}");
    let cancel = app
        .call(reqwest::Method::DELETE, &cancel_path, Some(SEND_KEY), None)
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.body);
    assert_eq!(cancel.body["status"], "failed");
    assert_eq!(cancel.body["error"]["code"], "cancelled");
    let again = app
        .call(reqwest::Method::DELETE, &cancel_path, Some(SEND_KEY), None)
        .await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    // No grant held while it waits; nothing before its time.
    assert_eq!(app.sends_available("o-later").await, 1);
    assert_eq!(app.scheduled.run_once().await.unwrap().sent, 0);
    app.advance(Duration::minutes(59));
    assert_eq!(app.scheduled.run_once().await.unwrap().sent, 0);
    assert_eq!(delivered_to(&app, "o-later"), 0);
    app.advance(Duration::minutes(1));
    assert_eq!(app.scheduled.run_once().await.unwrap().sent, 1);
    assert_eq!(app.message(&id).await.body["status"], "sent");
    assert_eq!(delivered_to(&app, "o-later"), 1);
    let delivery = app
        .fake
        .sends()
        .into_iter()
        .find(|send| send.delivered)
        .unwrap();
    assert!(delivery.at_ms >= at);
    // Sent: no longer cancellable.
    let late = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/apps/{APPID}/messages/{id}"),
            Some(SEND_KEY),
            None,
        )
        .await;
    assert_eq!(late.status, 409);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_scheduled_send_with_nothing_left_at_its_time_ends_no_credential(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let at = app.now_ms() + 60_000;
    let mut later = body("o-empty");
    later["send_at"] = DateTime::<Utc>::from_timestamp_millis(at)
        .unwrap()
        .to_rfc3339()
        .into();
    let key = "schedule-once";
    let post = || async {
        let mut request = app
            .client
            .post(app.url(&format!("/v1/apps/{APPID}/messages")))
            .bearer_auth(SEND_KEY)
            .header("idempotency-key", key)
            .json(&later);
        request = request.header("content-type", "application/json");
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body)
    };
    let (status, first) = post().await;
    assert_eq!(status, 202, "{first:?}");
    // The same key and body: the same message, not a second one.
    let (status, replay) = post().await;
    assert_eq!(status, 202);
    assert_eq!(replay["id"], first["id"]);
    app.advance(Duration::minutes(1));
    assert_eq!(app.scheduled.run_once().await.unwrap().sent, 1);
    let id = first["id"].as_str().unwrap();
    let message = app.message(id).await.body;
    assert_eq!(message["status"], "failed", "{message:?}");
    assert_eq!(message["error"]["code"], "no_credential");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test]
async fn a_scheduled_send_falling_in_quiet_hours_moves_to_their_end_and_obeys_the_cap(
    #[case] backend: Backend,
) {
    let quiet = json!({"start": "22:00", "end": "08:00", "mode": "refuse"});
    let caps = json!([{"limit": 1, "window_secs": 86_400}]);
    let app = spawn_app_with(backend, with_rules(caps, Some(quiet))).await;
    // 21:00 China time; scheduled for 23:00.
    app.clock.set(late_evening() - Duration::hours(2));
    app.collect_form_id("o-sched").await;
    app.collect_form_id("o-sched").await;
    let mut later = body("o-sched");
    later["send_at"] = late_evening().to_rfc3339().into();
    let path = format!("/v1/apps/{APPID}/messages");
    let scheduled = app
        .call(
            reqwest::Method::POST,
            &path,
            Some(SEND_KEY),
            Some(later.clone()),
        )
        .await;
    assert_eq!(scheduled.status, 202, "{:?}", scheduled.body);
    let second = app
        .call(reqwest::Method::POST, &path, Some(SEND_KEY), Some(later))
        .await;
    assert_eq!(second.status, 202, "{:?}", second.body);
    app.clock.set(late_evening());
    assert_eq!(app.scheduled.run_once().await.unwrap().sent, 0);
    app.clock.set(next_morning());
    let report = app.scheduled.run_once().await.unwrap();
    // One fits the cap; the other ends user_send_limit, its credential kept.
    assert_eq!((report.sent, report.capped), (1, 1), "{report:?}");
    assert_eq!(delivered_to(&app, "o-sched"), 1);
    assert_eq!(app.sends_available("o-sched").await, 1);
}
