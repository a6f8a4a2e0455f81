//! Every errcode rule of the send path, checked against the fake WeChat.

use chrono::Duration;
use fake_wechat::Fault;
use serde_json::json;

use rstest::rstest;

use crate::helpers::*;

/// The outcomes of the attempts in a send answer.
fn outcomes(answer: &Answer) -> Vec<(Option<i64>, String)> {
    answer.body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| {
            (
                attempt["errcode"].as_i64(),
                attempt["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn attempt(errcode: i64, outcome: &str) -> (Option<i64>, String) {
    (Some(errcode), outcome.to_owned())
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_credentials_are_retired_and_the_next_one_is_tried(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    for errcode in [41028, 41029, 41031, 41032, 41034, 41035] {
        let user = format!("o-dead-{errcode}");
        let dead = app.collect_form_id(&user).await;
        app.advance(Duration::seconds(1));
        let alive = app.collect_form_id(&user).await;
        app.fake.block_credential(&dead, errcode);
        let answer = app.notify(&user).await;
        assert_eq!(answer.status, 200, "{errcode}: {:?}", answer.body);
        assert_eq!(
            outcomes(&answer),
            vec![attempt(errcode, "retired"), attempt(0, "sent")],
            "{errcode}"
        );
        assert_eq!(app.delivered_form_ids().last(), Some(&alive));
        // The retired one is never tried again.
        let again = app.notify(&user).await;
        assert_eq!(again.status, 409, "{errcode}");
        assert_eq!(app.sends_available(&user).await, 0);
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_id_wechat_never_issued_is_retired_with_41028(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.fake.register_user(APPID, "o-forger");
    app.post_one(
        "o-forger",
        "form_id",
        "0123456789abcdef0123456789abcdef",
        None,
    )
    .await;
    let answer = app.notify("o-forger").await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["error"]["code"], "no_credential");
    assert_eq!(outcomes(&answer), vec![attempt(41028, "retired")]);
    let message = app.message(answer.body["id"].as_str().unwrap()).await;
    assert_eq!(message.body["attempts"][0]["errcode"], 41028);
    assert_eq!(message.body["attempts"][0]["outcome"], "retired");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_prepay_id_answered_41028_is_kept_for_later(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.fake
        .set_prepay_sync_lag(std::time::Duration::from_secs(10));
    app.collect_prepay_id("o-payer").await;
    let early = app.notify("o-payer").await;
    assert_eq!(early.status, 409);
    assert_eq!(early.body["error"]["code"], "credential_not_ready");
    assert_eq!(early.headers["retry-after"], "10");
    assert_eq!(outcomes(&early), vec![attempt(41028, "not_ready")]);
    assert_eq!(
        app.sends_available("o-payer").await,
        3,
        "not retired, not spent"
    );
    app.advance(Duration::seconds(11));
    let later = app.notify("o-payer").await;
    assert_eq!(later.status, 200, "{:?}", later.body);
    assert_eq!(app.sends_available("o-payer").await, 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_prepay_id_answered_41028_is_retired(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let value = app.collect_prepay_id("o-old-payer").await;
    app.advance(Duration::seconds(31));
    app.fake.block_credential(&value, 41028);
    let answer = app.notify("o-old-payer").await;
    assert_eq!(answer.status, 409);
    assert_eq!(outcomes(&answer), vec![attempt(41028, "retired")]);
    assert_eq!(app.sends_available("o-old-payer").await, 0);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_request_keeps_the_credential_and_answers_422(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-kim").await;
    let cases = [
        (
            json!({"touser": "o-kim", "template_id": "no-such-template"}),
            40037,
            "invalid_template_id",
        ),
        (
            json!({"touser": "o-kim", "template_id": TEMPLATE, "page": "/pages/index"}),
            41030,
            "invalid_page",
        ),
    ];
    for (body, errcode, code) in cases {
        let answer = app.send(body).await;
        assert_eq!(answer.status, 422, "{errcode}");
        assert_eq!(answer.body["error"]["code"], code);
        assert_eq!(answer.body["error"]["wechat_errcode"], errcode);
        assert_eq!(
            app.sends_available("o-kim").await,
            1,
            "{errcode}: the credential goes back"
        );
    }
    for errcode in [47001, 47003, 40003] {
        app.fake.push_send_faults([Fault::Errcode(errcode)]);
        let answer = app.notify("o-kim").await;
        assert_eq!(answer.status, 422, "{errcode}");
        assert_eq!(answer.body["error"]["wechat_errcode"], errcode);
        assert_eq!(outcomes(&answer), vec![attempt(errcode, "kept")]);
        assert_eq!(
            app.sends_available("o-kim").await,
            1,
            "{errcode}: the credential goes back"
        );
    }
    assert!(app.delivered_form_ids().is_empty());
    assert_eq!(app.notify("o-kim").await.status, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openid_wechat_does_not_know_is_422(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.post_one(
        "o-stranger",
        "form_id",
        "abcdefabcdefabcdefabcdefabcdefab",
        None,
    )
    .await;
    let answer = app.notify("o-stranger").await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["error"]["code"], "invalid_openid");
    assert_eq!(app.sends_available("o-stranger").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_refreshed_once_and_the_send_retried(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    for errcode in [40001, 40014, 42001] {
        let user = format!("o-token-{errcode}");
        app.collect_form_id(&user).await;
        assert_eq!(app.access_token().await.status, 200);
        let fetches = app.fake.token_fetches(APPID);
        app.fake.push_send_faults([Fault::Errcode(errcode)]);
        let answer = app.notify(&user).await;
        assert_eq!(answer.status, 200, "{errcode}: {:?}", answer.body);
        assert_eq!(
            outcomes(&answer),
            vec![attempt(errcode, "token_rejected"), attempt(0, "sent")]
        );
        assert_eq!(
            app.fake.token_fetches(APPID),
            fetches + 1,
            "{errcode}: one refresh"
        );
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_invalidated_upstream_is_replaced(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-lee").await;
    let before = app.access_token().await.body["access_token"].clone();
    // Right after the gateway's fetch: nothing but WeChat's word says it is dead.
    app.fake.invalidate_tokens(APPID);
    let answer = app.notify("o-lee").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        outcomes(&answer),
        vec![attempt(40001, "token_rejected"), attempt(0, "sent")]
    );
    assert_ne!(app.access_token().await.body["access_token"], before);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_again_and_again_waits_and_is_sent_when_one_works(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-max").await;
    // Every token the call meets is refused: WeChat processed nothing.
    app.fake.push_send_faults([
        Fault::Errcode(40001),
        Fault::Errcode(40001),
        Fault::Errcode(40001),
    ]);
    let answer = app.notify("o-max").await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "waiting");
    assert_eq!(
        app.sends_available("o-max").await,
        1,
        "the credential is untouched"
    );
    // Due again after tokens.send_retry_secs, and sent.
    app.advance(Duration::seconds(5));
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(app.message(id).await.body["status"], "sent");
    assert_eq!(app.sends_available("o-max").await, 0);
    assert_eq!(app.delivered_form_ids().len(), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_not_refreshed_when_another_send_already_did(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-ned").await;
    let stale = app.access_token().await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another server already replaced the token: a compare-and-refresh with the
    // stale one answers the current token without a fetch.
    let fresh = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/access_token/refresh"),
            Some(TOKEN_KEY),
            Some(json!({"stale_token": stale})),
        )
        .await;
    let fetches = app.fake.token_fetches(APPID);
    let again = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/access_token/refresh"),
            Some(TOKEN_KEY),
            Some(json!({"stale_token": stale})),
        )
        .await;
    assert_eq!(again.body["access_token"], fresh.body["access_token"]);
    assert_eq!(app.fake.token_fetches(APPID), fetches);
    assert_eq!(app.notify("o-ned").await.status, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_quota_answers_429_without_calling_wechat_until_midnight(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-ola").await;
    app.fake.push_send_faults([Fault::Errcode(45009)]);
    let answer = app.notify("o-ola").await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.body["error"]["code"], "daily_quota_exhausted");
    assert_eq!(answer.body["error"]["wechat_errcode"], 45009);
    let retry_after: i64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry_after));
    assert_eq!(app.sends_available("o-ola").await, 1);
    let calls = app.fake.sends().len();
    let blocked = app.notify("o-ola").await;
    assert_eq!(blocked.status, 429);
    assert_eq!(
        app.fake.sends().len(),
        calls,
        "no call while the quota is spent"
    );
    app.advance(Duration::seconds(retry_after + 1));
    assert_eq!(app.notify("o-ola").await.status, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_api_is_a_502_that_says_so(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-pam").await;
    app.fake.set_retired(true);
    let answer = app.notify("o-pam").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.body["error"]["code"], "api_retired");
    assert_eq!(answer.body["error"]["wechat_errcode"], 45103);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("retired"));
    assert_eq!(app.sends_available("o-pam").await, 1);
    app.fake.set_retired(false);
    app.fake.push_send_faults([Fault::Errcode(45109)]);
    let answer = app.notify("o-pam").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.body["error"]["wechat_errcode"], 45109);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_busy_is_retried_with_backoff_then_given_up(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-quin").await;
    app.fake.push_send_faults([Fault::Errcode(-1)]);
    let answer = app.notify("o-quin").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        outcomes(&answer),
        vec![attempt(-1, "busy"), attempt(0, "sent")]
    );
    app.collect_form_id("o-quin").await;
    app.fake
        .push_send_faults([Fault::Errcode(-1), Fault::Errcode(-1), Fault::Errcode(-1)]);
    let answer = app.notify("o-quin").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body["error"]["code"], "upstream_busy");
    assert_eq!(app.sends_available("o-quin").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_on_a_form_id_is_resolved_by_probing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // Delivered, but the answer was lost: the probe gets 41029, which proves delivery.
    let first = app.collect_form_id("o-rex").await;
    app.fake.push_send_faults([Fault::DeliverThenFail(502)]);
    let answer = app.notify("o-rex").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "sent");
    assert_eq!(
        outcomes(&answer),
        vec![
            (None, "ambiguous".to_owned()),
            attempt(41029, "confirmed_sent")
        ]
    );
    // Not delivered and the answer garbled: the probe delivers it now.
    let second = app.collect_form_id("o-rex").await;
    app.fake.push_send_faults([Fault::Garbage]);
    let answer = app.notify("o-rex").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        outcomes(&answer),
        vec![(None, "ambiguous".to_owned()), attempt(0, "sent_on_probe")]
    );
    // Exactly once each.
    assert_eq!(app.delivered_form_ids(), vec![first, second]);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_on_a_prepay_id_with_sends_left_is_unknown_and_never_resent(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.collect_prepay_id("o-sam").await;
    app.fake.push_send_faults([Fault::HttpStatus(503)]);
    let answer = app.notify("o-sam").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.body["status"], "unknown");
    assert_eq!(answer.body["error"]["code"], "outcome_unknown");
    assert_eq!(outcomes(&answer), vec![(None, "ambiguous".to_owned())]);
    assert_eq!(
        app.sends_available("o-sam").await,
        2,
        "the unknown send counts as spent"
    );
    let message = app.message(answer.body["id"].as_str().unwrap()).await;
    assert_eq!(message.body["status"], "unknown");
    assert!(app.delivered_form_ids().is_empty());
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_delivery_retries_an_unknown_outcome_with_the_next_credential(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    let prepay = app.collect_prepay_id("o-tia").await;
    app.fake.push_send_faults([Fault::DeliverThenFail(500)]);
    let answer = app
        .send(json!({"touser": "o-tia", "template_id": TEMPLATE, "delivery": "at_least_once"}))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        outcomes(&answer),
        vec![(None, "ambiguous".to_owned()), attempt(0, "sent")]
    );
    // Delivered twice: what the caller accepted by asking for at-least-once.
    assert_eq!(app.delivered_form_ids(), vec![prepay.clone(), prepay]);
    assert_eq!(app.sends_available("o-tia").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_wechat_sends_nothing_and_keeps_the_credential(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["wechat"]["base_url"] = json!("http://127.0.0.1:9");
    })
    .await;
    app.fake.register_user(APPID, "o-uma");
    app.post_one("o-uma", "form_id", "abcdef0123456789abcdef0123456789", None)
        .await;
    // No token can be had: the message waits for one, its credential untouched.
    let answer = app.notify("o-uma").await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "waiting");
    assert_eq!(app.sends_available("o-uma").await, 1);
    app.advance(Duration::seconds(5));
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(app.message(id).await.body["status"], "waiting");
    assert_eq!(app.sends_available("o-uma").await, 1);
}

/// An answer lost *before* WeChat processed it still counts a use in the
/// ledger, so WeChat may hold one more use than the ledger says. Such a
/// credential is never probed again: a probe would simply deliver a second
/// time. The case: one prepay_id, three sends.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_with_an_unproven_use_is_never_probed(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.collect_prepay_id("o-una").await;
    let first = app.notify("o-una").await;
    assert_eq!(first.body["status"], "sent", "{:?}", first.body);
    // A 500 that WeChat never processed: unknown, counted spent.
    app.fake.push_send_faults([Fault::HttpStatus(500)]);
    let second = app.notify("o-una").await;
    assert_eq!(second.body["status"], "unknown", "{:?}", second.body);
    // Delivered, answer lost: the ledger shows one use left, WeChat holds two.
    app.fake.push_send_faults([Fault::DeliverThenFail(502)]);
    let third = app.notify("o-una").await;
    assert_eq!(third.status, 502, "{:?}", third.body);
    assert_eq!(third.body["status"], "unknown");
    assert_eq!(
        outcomes(&third),
        vec![(None, "ambiguous".to_owned())],
        "no probe: it would deliver the third message twice"
    );
    let delivered = app.delivered_form_ids().len();
    assert_eq!(delivered, 2, "first and third, once each");
    assert_eq!(app.sends_available("o-una").await, 0);
}

/// The ledger's expiry is an estimate (a formId posted late,
/// a fast phone clock, no `collected_at`). A probe that meets a credential
/// WeChat already considers expired gets 41028, which proves nothing about
/// the first call: the message ends unknown and nothing else is sent.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_answered_41028_proves_nothing(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    // WeChat issued it 7 days ago minus 5 minutes; the frontend posted it
    // without collected_at, so the ledger thinks it has 7 days.
    let value = app.fake.mint_form_id(APPID, "o-exp");
    app.advance(Duration::days(7) - Duration::minutes(5));
    app.post_one("o-exp", "form_id", &value, None).await;
    app.collect_form_id("o-exp").await;
    // The first call delivers, its answer hangs past the client's timeout;
    // by the probe WeChat's real expiry has passed.
    app.fake
        .push_send_faults([Fault::Hang(std::time::Duration::from_millis(3500))]);
    let clock = app.clock.clone();
    let advance = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        clock.advance(Duration::minutes(10));
    });
    let answer = app.notify("o-exp").await;
    advance.await.unwrap();
    assert_eq!(answer.body["status"], "unknown", "{:?}", answer.body);
    assert_eq!(
        outcomes(&answer),
        vec![
            (None, "ambiguous".to_owned()),
            attempt(41028, "probe_inconclusive")
        ]
    );
    let delivered = app.delivered_form_ids().len();
    assert_eq!(
        delivered, 1,
        "the user's next form_id was not spent on a second copy"
    );
    assert_eq!(app.sends_available("o-exp").await, 1);
}
