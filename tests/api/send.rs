//! The send path: what is claimed, what WeChat receives, what is recorded.

use chrono::Duration;
use serde_json::json;

use rstest::rstest;

use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_spends_the_form_id_and_records_the_message(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.collect_form_id("o-alice").await;
    let answer = app.notify("o-alice").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "sent");
    assert_eq!(
        answer.body["attempts"],
        json!([{"credential_kind": "form_id", "errcode": 0, "outcome": "sent"}])
    );
    let sends = app.fake.sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].form_id, value);
    assert_eq!(sends[0].touser, "o-alice");
    assert_eq!(sends[0].template_id, TEMPLATE);
    assert!(sends[0].delivered);
    assert_eq!(app.sends_available("o-alice").await, 0);

    let id = answer.body["id"].as_str().unwrap();
    let message = app.message(id).await;
    assert_eq!(message.status, 200);
    assert_eq!(message.body["status"], "sent");
    assert_eq!(message.body["touser"], "o-alice");
    assert_eq!(message.body["attempts"][0]["errcode"], 0);
    assert_eq!(message.body["attempts"][0]["credential_kind"], "form_id");
    assert!(message.body.get("error").is_none());
    let body = message.body.to_string();
    assert!(
        !body.contains(&value),
        "a credential never leaves the gateway"
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_credential_is_409_and_nothing_is_sent(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let answer = app.notify("o-nobody").await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["error"]["code"], "no_credential");
    assert_eq!(answer.body["status"], "failed");
    assert!(app.fake.sends().is_empty());
    let message = app.message(answer.body["id"].as_str().unwrap()).await;
    assert_eq!(message.body["status"], "failed");
    assert_eq!(message.body["error"]["code"], "no_credential");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepay_id_gives_three_sends(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.collect_prepay_id("o-bob").await;
    for left in [2, 1, 0] {
        assert_eq!(app.notify("o-bob").await.status, 200);
        assert_eq!(app.sends_available("o-bob").await, left);
    }
    assert_eq!(app.notify("o-bob").await.status, 409);
    assert_eq!(
        app.delivered_form_ids(),
        vec![value.clone(), value.clone(), value]
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_that_expires_soonest_goes_first_across_kinds(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.now_ms();
    // Collected at different times; the fake minted them all now, so all are valid there.
    let fresh_form = app.fake.mint_form_id(APPID, "o-cat");
    let old_prepay = app.fake.mint_prepay_id(APPID, "o-cat");
    let middle_form = app.fake.mint_form_id(APPID, "o-cat");
    app.post_one("o-cat", "form_id", &fresh_form, Some(now))
        .await;
    app.post_one("o-cat", "prepay_id", &old_prepay, Some(now - 3 * DAY_MS))
        .await;
    app.post_one("o-cat", "form_id", &middle_form, Some(now - DAY_MS))
        .await;
    for _ in 0..5 {
        assert_eq!(app.notify("o-cat").await.status, 200);
    }
    assert_eq!(
        app.delivered_form_ids(),
        vec![
            old_prepay.clone(),
            old_prepay.clone(),
            old_prepay,
            middle_form,
            fresh_form
        ]
    );
    assert_eq!(app.notify("o-cat").await.status, 409);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_work_only_for_their_user_and_app(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-dan").await;
    assert_eq!(app.notify("o-eve").await.status, 409);
    let other = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{OTHER_APPID}/messages"),
            Some(OTHER_APP_KEY),
            Some(json!({"touser": "o-dan", "template_id": TEMPLATE})),
        )
        .await;
    assert_eq!(other.status, 409);
    assert!(app.fake.sends().is_empty());
    assert_eq!(app.notify("o-dan").await.status, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_body_that_names_a_credential_or_breaks_bounds_is_refused(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-fox").await;
    let with_form_id = app
        .send(json!({"touser": "o-fox", "template_id": TEMPLATE, "form_id": "mine"}))
        .await;
    assert_eq!(with_form_id.status, 400);
    assert_eq!(with_form_id.body["error"]["code"], "invalid_json");
    let missing = app.send(json!({"template_id": TEMPLATE})).await;
    assert_eq!(missing.status, 400);
    let huge = app.send(json!({"touser": "o-fox", "template_id": TEMPLATE, "data": {"k": {"value": "x".repeat(2000)}}})).await;
    assert_eq!(huge.status, 422);
    assert_eq!(huge.body["error"]["code"], "invalid_field");
    let shape = app
        .send(json!({"touser": "o-fox", "template_id": TEMPLATE, "data": {"k": "flat"}}))
        .await;
    assert_eq!(shape.status, 422);
    let keyword = app
        .send(
            json!({"touser": "o-fox", "template_id": TEMPLATE, "emphasis_keyword": "k".repeat(65)}),
        )
        .await;
    assert_eq!(keyword.status, 422);
    let array = app
        .send(json!([
            "o-fox", TEMPLATE, null, null, null, null, null, null, null
        ]))
        .await;
    assert_eq!(array.status, 400);
    assert_eq!(array.body["error"]["code"], "invalid_json");
    assert!(app.fake.sends().is_empty());
    assert_eq!(app.sends_available("o-fox").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_is_404(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let answer = app.message(&uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["error"]["code"], "message_not_found");
    assert_eq!(app.message("not-a-uuid").await.status, 404);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_one_app_are_invisible_to_another(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-gil").await;
    let sent = app.notify("o-gil").await;
    let id = sent.body["id"].as_str().unwrap();
    let answer = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{OTHER_APPID}/messages/{id}"),
            Some(OTHER_APP_KEY),
            None,
        )
        .await;
    assert_eq!(answer.status, 404);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_of_the_ledger_decides_expiry_not_the_database(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-hat").await;
    app.advance(Duration::days(30));
    assert_eq!(app.notify("o-hat").await.status, 409);
}
