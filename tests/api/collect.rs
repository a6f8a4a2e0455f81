//! Collecting credentials and reading quotas.

use chrono::Duration;
use serde_json::json;

use rstest::rstest;

use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_id_is_one_send_for_seven_days(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-alice").await;
    let quota = app.quota("o-alice").await;
    assert_eq!(quota["sends_available"], 1);
    assert_eq!(quota["by_kind"]["form_id"]["credentials"], 1);
    assert_eq!(quota["by_kind"]["prepay_id"]["credentials"], 0);
    let next_expiry =
        chrono::DateTime::parse_from_rfc3339(quota["next_expiry"].as_str().unwrap()).unwrap();
    assert_eq!(next_expiry.timestamp_millis(), app.now_ms() + 7 * DAY_MS);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepay_id_is_three_sends_and_loses_its_prefix(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.fake.mint_prepay_id(APPID, "o-bob");
    app.post_one("o-bob", "prepay_id", &format!("prepay_id={value}"), None)
        .await;
    // The same value without the prefix is the same credential.
    let again = app
        .post_credentials(json!({"openid": "o-bob", "kind": "prepay_id", "value": value}))
        .await;
    assert_eq!(again.body["accepted"], 0);
    assert_eq!(again.body["duplicates"], 1);
    let quota = app.quota("o-bob").await;
    assert_eq!(quota["sends_available"], 3);
    assert_eq!(quota["by_kind"]["prepay_id"]["credentials"], 1);
    assert_eq!(app.notify("o-bob").await.status, 200);
    // The fake saw the bare value: the prefix was stripped before storing.
    assert_eq!(app.delivered_form_ids(), vec![value]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_the_same_value_again_is_not_a_second_credential(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.collect_form_id("o-carol").await;
    let again = app
        .post_credentials(json!({"openid": "o-carol", "kind": "form_id", "value": value}))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body,
        json!({"accepted": 0, "duplicates": 1, "rejected": []})
    );
    let batch = app
        .post_credentials(json!({"credentials": [
            {"openid": "o-carol", "kind": "form_id", "value": value},
            {"openid": "o-carol", "kind": "form_id", "value": "new-value-1"},
            {"openid": "o-carol", "kind": "form_id", "value": "new-value-1"},
        ]}))
        .await;
    assert_eq!(
        batch.body,
        json!({"accepted": 1, "duplicates": 2, "rejected": []})
    );
    assert_eq!(app.sends_available("o-carol").await, 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_held_by_another_user_is_refused(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.collect_form_id("o-dave").await;
    let theft = app
        .post_credentials(json!({"openid": "o-eve", "kind": "form_id", "value": value}))
        .await;
    assert_eq!(theft.status, 422);
    assert_eq!(theft.body["error"]["code"], "owned_by_another_user");
    assert_eq!(app.sends_available("o-eve").await, 0);
    assert_eq!(app.sends_available("o-dave").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_the_good_items_and_names_each_bad_one(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    let answer = app.post_credentials(json!({"credentials": [
        {"openid": "o-fay", "kind": "form_id", "value": "good-1"},
        {"openid": "o-fay", "kind": "form_id", "value": "the formId is a mock one"},
        {"openid": "o-fay", "kind": "form_id", "value": ""},
        {"openid": "o-fay", "kind": "form_id", "value": "x".repeat(65)},
        {"openid": "o-fay", "kind": "form_id", "value": "bad\u{7}bell"},
        {"openid": "o-fay", "kind": "form_id", "value": "future", "collected_at": now + DAY_MS},
        {"openid": "o-fay", "kind": "form_id", "value": "stale", "collected_at": now - 8 * DAY_MS},
        {"openid": "o-fay", "kind": "subscribe", "value": "unknown-kind"},
        {"openid": "", "kind": "form_id", "value": "no-openid"},
        {"openid": "o-fay", "kind": "prepay_id", "value": "good-2", "collected_at": now - DAY_MS},
        {"openid": "o-fay", "kind": "form_id", "value": "good-3", "collected_at": "2020-01-01T00:00:00Z"},
    ]})).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["accepted"], 2);
    let codes: Vec<(u64, String)> = answer.body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["index"].as_u64().unwrap(),
                item["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        (1, "mock_form_id"),
        (2, "empty_value"),
        (3, "value_too_long"),
        (4, "invalid_characters"),
        (5, "collected_in_future"),
        (6, "already_expired"),
        (7, "unknown_kind"),
        (8, "invalid_openid"),
        (10, "already_expired"),
    ];
    let expected: Vec<(u64, String)> = expected.iter().map(|(i, c)| (*i, c.to_string())).collect();
    assert_eq!(codes, expected);
    assert_eq!(app.sends_available("o-fay").await, 4);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_bad_item_is_a_4xx_and_stores_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let mock = app
        .post_credentials(
            json!({"openid": "o-gus", "kind": "form_id", "value": "the formId is a mock one"}),
        )
        .await;
    assert_eq!(mock.status, 422);
    assert_eq!(mock.body["error"]["code"], "mock_form_id");
    let batch = app.post_credentials(json!({"credentials": vec![json!({"openid": "o-gus", "kind": "form_id", "value": "v"}); 1001]})).await;
    assert_eq!(batch.status, 413);
    assert_eq!(batch.body["error"]["code"], "too_many_items");
    let shape = app.post_credentials(json!(["not", "an", "object"])).await;
    assert_eq!(shape.status, 400);
    assert_eq!(shape.body["error"]["code"], "invalid_body");
    assert_eq!(app.sends_available("o-gus").await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_collected_in_the_past_expires_seven_days_after_collection(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let value = app.fake.mint_form_id(APPID, "o-hal");
    // Collected six days ago: one day left.
    app.advance(Duration::days(6));
    app.post_one("o-hal", "form_id", &value, Some(app.now_ms() - 6 * DAY_MS))
        .await;
    assert_eq!(app.sends_available("o-hal").await, 1);
    app.advance(Duration::days(1));
    assert_eq!(app.sends_available("o-hal").await, 0);
    let answer = app.notify("o-hal").await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["error"]["code"], "no_credential");
    assert!(app.fake.sends().is_empty(), "nothing may reach WeChat");
    // The sweeper marks it expired.
    let report = app.sweeper.run_once().await.unwrap();
    assert_eq!(report.expired, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_margin_keeps_nearly_expired_credentials_back(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.fake.mint_form_id(APPID, "o-ivy");
    app.post_one("o-ivy", "form_id", &value, Some(app.now_ms()))
        .await;
    // 30 s before expiry: inside the default 60 s margin.
    app.advance(Duration::days(7) - Duration::seconds(30));
    assert_eq!(app.sends_available("o-ivy").await, 0);
    assert_eq!(app.notify("o-ivy").await.status, 409);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_deletes_dead_rows_after_their_retention(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-jay").await;
    assert_eq!(app.notify("o-jay").await.status, 200);
    app.collect_form_id("o-jay").await;
    app.advance(Duration::days(8));
    let report = app.sweeper.run_once().await.unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(
        report.deleted_credentials, 0,
        "retention is 7 days after expiry"
    );
    app.advance(Duration::days(7));
    let report = app.sweeper.run_once().await.unwrap();
    assert_eq!(report.deleted_credentials, 2);
}
