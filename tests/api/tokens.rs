//! The access_token keeper and its endpoints.

use std::sync::Arc;

use chrono::Duration;
use fake_wechat::Fault;
use formid_gateway::clock::{Clock, ManualClock};
use serde_json::json;

use rstest::rstest;

use crate::helpers::*;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_serves_what_wechat_issued(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let answer = app.access_token().await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let token = answer.body["access_token"].as_str().unwrap();
    assert_eq!(Some(token.to_owned()), app.fake.current_token(APPID));
    assert!(
        token.len() > 512,
        "tokens longer than 512 characters are kept whole"
    );
    assert_eq!(answer.body["expires_in"], 7200);
    assert_eq!(answer.headers["cache-control"], "no-store");
    // Served from the ledger afterwards: no second fetch.
    app.access_token().await;
    assert_eq!(app.fake.token_fetches(APPID), 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_refreshes_ahead_of_expiry_and_not_before(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.token_refresher.run_once().await.unwrap(),
        2,
        "both apps fetched at start"
    );
    assert_eq!(
        app.token_refresher.run_once().await.unwrap(),
        0,
        "nothing due"
    );
    let first = app.access_token().await.body["access_token"].clone();
    // 16 minutes left: outside the default 15-minute window.
    app.advance(Duration::seconds(7200 - 960));
    assert_eq!(app.token_refresher.run_once().await.unwrap(), 0);
    app.advance(Duration::seconds(120));
    assert_eq!(app.token_refresher.run_once().await.unwrap(), 2);
    let second = app.access_token().await;
    assert_ne!(second.body["access_token"], first);
    assert_eq!(second.body["expires_in"], 7200);
    assert_eq!(app.fake.token_fetches(APPID), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_replaced_on_demand(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.access_token().await.body["access_token"].clone();
    app.advance(Duration::hours(3));
    let second = app.access_token().await.body["access_token"].clone();
    assert_ne!(first, second);
    assert_eq!(app.fake.token_fetches(APPID), 2);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_refresh_fetches_only_for_the_current_token(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let refresh = |stale: serde_json::Value| {
        let app = &app;
        async move {
            app.call(
                reqwest::Method::POST,
                &format!("/v1/apps/{APPID}/access_token/refresh"),
                Some(TOKEN_KEY),
                Some(json!({"stale_token": stale})),
            )
            .await
        }
    };
    let current = app.access_token().await.body["access_token"].clone();
    let not_current = refresh(json!("some-other-token")).await;
    assert_eq!(not_current.status, 200);
    assert_eq!(not_current.body["access_token"], current);
    assert_eq!(app.fake.token_fetches(APPID), 1);
    // The current token, which WeChat still accepts: checked, not replaced.
    let live = refresh(current.clone()).await;
    assert_eq!(live.body["access_token"], current);
    assert_eq!(app.fake.token_checks(APPID), 1);
    assert_eq!(app.fake.token_fetches(APPID), 1);
    // Once WeChat rejects it, the same call replaces it, with one fetch.
    app.fake.invalidate_tokens(APPID);
    app.advance(Duration::seconds(10));
    let refreshed = refresh(current.clone()).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
    assert_ne!(refreshed.body["access_token"], current);
    assert_eq!(app.fake.token_fetches(APPID), 2);
    let empty = refresh(json!("")).await;
    assert_eq!(empty.status, 422);
    assert_eq!(empty.body["error"]["code"], "invalid_stale_token");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_token_mode_uses_the_stable_endpoint(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["token_mode"] = json!("stable_token");
    })
    .await;
    let first = app.access_token().await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(
        app.fake.current_token(APPID).as_deref(),
        first.body["access_token"].as_str()
    );
    app.collect_form_id("o-stable").await;
    assert_eq!(app.notify("o-stable").await.status, 200);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_clear_error_without_the_secret(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["secret"] = json!("not-the-right-secret");
    })
    .await;
    let answer = app.access_token().await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.body["error"]["code"], "token_refused");
    assert_eq!(answer.body["error"]["wechat_errcode"], 40125);
    assert!(!answer.body.to_string().contains("not-the-right-secret"));
    app.collect_form_id("o-sec").await;
    let send = app.notify("o-sec").await;
    assert_eq!(send.status, 503);
    assert_eq!(send.body["error"]["code"], "token_unavailable");
    assert_eq!(app.sends_available("o-sec").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_ledger_fetch_one_token_between_them(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let sibling = spawn_sibling(&app).await;
    let mut calls = Vec::new();
    for i in 0..16 {
        let address = if i % 2 == 0 {
            app.address.clone()
        } else {
            sibling.address.clone()
        };
        let client = app.client.clone();
        calls.push(tokio::spawn(async move {
            call(
                &client,
                &format!("{address}/v1/apps/{APPID}/access_token"),
                reqwest::Method::GET,
                Some(TOKEN_KEY),
                None,
            )
            .await
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for answer in futures::future::join_all(calls).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        tokens.insert(answer.body["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 1, "every instance serves the one token");
    assert_eq!(app.fake.token_fetches(APPID), 1, "exactly one fetch");
}

async fn refresh_call(app: &TestApp, stale: &serde_json::Value) -> Answer {
    app.call(
        reqwest::Method::POST,
        &format!("/v1/apps/{APPID}/access_token/refresh"),
        Some(TOKEN_KEY),
        Some(json!({"stale_token": stale})),
    )
    .await
}

// Reading the token and posting it back as stale, in a loop, must not make
// the gateway fetch a token per call: a claim is checked at WeChat (once per
// tokens.check_reuse_secs), and a token WeChat accepts is never replaced.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_refresh_cannot_be_spun_into_a_fetch_per_call(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.access_token().await.body["access_token"].clone();
    for _ in 0..20 {
        let current = app.access_token().await.body["access_token"].clone();
        let answer = refresh_call(&app, &current).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(
            answer.body["access_token"], first,
            "answered without a fetch"
        );
        app.advance(Duration::seconds(1));
    }
    assert_eq!(app.fake.token_fetches(APPID), 1, "one fetch, not twenty");
    assert_eq!(
        app.fake.token_checks(APPID),
        2,
        "one check per 10 s of calls (tokens.check_reuse_secs)"
    );
    // Concurrent callers share one check.
    app.advance(Duration::seconds(10));
    let calls = (0..10).map(|_| refresh_call(&app, &first));
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer.body["access_token"], first);
    }
    assert_eq!(app.fake.token_checks(APPID), 3);
    // Once WeChat rejects it, concurrent callers cause one fetch between them.
    app.fake.invalidate_tokens(APPID);
    app.advance(Duration::seconds(10));
    let calls = (0..10).map(|_| refresh_call(&app, &first));
    let answers = futures::future::join_all(calls).await;
    let second = answers[0].body["access_token"].clone();
    assert_ne!(second, first);
    for answer in &answers {
        assert_eq!(answer.body["access_token"], second, "{:?}", answer.body);
    }
    assert_eq!(app.fake.token_fetches(APPID), 2);
    assert_eq!(app.fake.token_checks(APPID), 4);
}

// The budget bounds fetches whatever asks for them, and a dry budget says
// when to come back; it refills at its configured pace.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_budget_is_configurable_and_says_when_it_refills(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["tokens"]["fetch_burst"] = json!(2);
        settings["tokens"]["fetch_refill_secs"] = json!(60);
    })
    .await;
    let mut current = app.access_token().await.body["access_token"].clone();
    // One fetch of the two spent; a rejected token is replaced once more.
    app.fake.invalidate_tokens(APPID);
    let answer = refresh_call(&app, &current).await;
    assert_ne!(answer.body["access_token"], current);
    current = answer.body["access_token"].clone();
    // The budget is dry now (one more each 60 s, the first 60 s from now).
    app.fake.invalidate_tokens(APPID);
    let dry = refresh_call(&app, &current).await;
    assert_eq!(dry.status, 503, "{:?}", dry.body);
    assert_eq!(dry.body["error"]["code"], "token_unavailable");
    let wait: i64 = dry.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    assert_eq!(app.fake.token_fetches(APPID), 2);
    app.advance(Duration::seconds(wait));
    let refilled = refresh_call(&app, &current).await;
    assert_eq!(refilled.status, 200, "{:?}", refilled.body);
    assert_ne!(refilled.body["access_token"], current);
    assert_eq!(app.fake.token_fetches(APPID), 3);
}

// In stable_token mode a passive refresh of the token WeChat still calls
// current needs force_refresh, which WeChat allows 20 times a day, 30 s
// apart: the gateway never asks more often, whatever callers do, and the
// fake answers 45009 past 20 as WeChat does.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_token_forced_refreshes_stay_inside_wechats_budget(#[case] backend: Backend) {
    // WeChat rejects a send's token (a fault) yet stable_token keeps calling
    // it current: only a forced refresh replaces it.
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["token_mode"] = json!("stable_token");
        settings["tokens"]["force_refreshes_per_day"] = json!(20);
        settings["tokens"]["fetch_burst"] = json!(100);
    })
    .await;
    // WeChat's budget is per China day: start the rounds just after its
    // midnight, so that all of them fall in one day whenever the test runs.
    start_of_a_china_day(&app);
    let mut tokens = std::collections::HashSet::new();
    tokens.insert(app.access_token().await.body["access_token"].clone());
    for round in 0..25 {
        app.advance(Duration::seconds(31));
        let user = format!("o-force-{round}");
        app.collect_form_id(&user).await;
        app.fake.push_send_faults([Fault::Errcode(40001)]);
        let answer = app.notify(&user).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let current = app.access_token().await.body["access_token"].clone();
        assert_eq!(app.fake.current_token(APPID).as_deref(), current.as_str());
        tokens.insert(current);
    }
    assert_eq!(tokens.len(), 21, "the first token and 20 forced ones");
    // Rejections inside 30 s of a forced refresh never reach force_refresh.
    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings["apps"][APPID]["token_mode"] = json!("stable_token");
        settings["tokens"]["force_refreshes_per_day"] = json!(20);
        settings["tokens"]["fetch_burst"] = json!(100);
    })
    .await;
    start_of_a_china_day(&app);
    let first = app.access_token().await.body["access_token"].clone();
    let rejected_send = |round: usize| {
        let app = &app;
        async move {
            let user = format!("o-spaced-{round}");
            app.collect_form_id(&user).await;
            app.fake.push_send_faults([Fault::Errcode(40001)]);
            assert_eq!(app.notify(&user).await.status, 200);
            app.access_token().await.body["access_token"].clone()
        }
    };
    let forced = rejected_send(0).await;
    assert_ne!(forced, first);
    for round in 1..6 {
        app.advance(Duration::seconds(5));
        assert_eq!(rejected_send(round).await, forced, "not forced within 30 s");
    }
    app.advance(Duration::seconds(5));
    assert_ne!(rejected_send(6).await, forced);
}

// Without a budget (the default) stable_token mode never forces a refresh.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_token_mode_never_forces_by_default(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["token_mode"] = json!("stable_token");
    })
    .await;
    let first = app.access_token().await.body["access_token"].clone();
    for _ in 0..3 {
        app.advance(Duration::seconds(31));
        assert_eq!(refresh_call(&app, &first).await.body["access_token"], first);
    }
}

/// A token is used until its real expiry, so a short lifetime costs one
/// fetch per lifetime, not one per send, and every send goes out.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_token_lifetime_does_not_make_every_send_fetch(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.fake.set_token_expires_in(30);
    let mut sent = 0;
    for second in (0..120).step_by(5) {
        let user = format!("o-short-{second}");
        app.collect_form_id(&user).await;
        let answer = app.notify(&user).await;
        if answer.status == 200 {
            sent += 1;
        }
        app.advance(Duration::seconds(5));
    }
    let fetches = app.fake.token_fetches(APPID);
    assert!(
        fetches <= 120 / 30 + 1,
        "{fetches} fetches in 120 s of 30 s tokens"
    );
    assert_eq!(sent, 24, "every send went out");
}

/// A `refresh_ahead_secs` below a minute is taken as given, not raised to
/// 60.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_refresh_ahead_is_honoured(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["tokens"]["refresh_ahead_secs"] = json!(10);
    })
    .await;
    app.fake.set_token_expires_in(120);
    // Whatever was fetched at start has expired: the next token lives 120 s.
    app.advance(Duration::seconds(7200));
    app.token_refresher.run_once().await.unwrap();
    let fetched = app.fake.token_fetches(APPID);
    app.advance(Duration::seconds(100));
    app.token_refresher.run_once().await.unwrap();
    assert_eq!(app.fake.token_fetches(APPID), fetched, "20 s left: not due");
    app.advance(Duration::seconds(11));
    app.token_refresher.run_once().await.unwrap();
    assert_eq!(app.fake.token_fetches(APPID), fetched + 1, "9 s left: due");
}

/// Moves the clock to one minute past the next midnight in China (UTC+8),
/// when WeChat's daily budgets reset.
fn start_of_a_china_day(app: &TestApp) {
    const DAY_MS: i64 = 86_400_000;
    const CHINA_OFFSET_MS: i64 = 8 * 3_600_000;
    let now = app.now_ms();
    let next_midnight = ((now + CHINA_OFFSET_MS) / DAY_MS + 1) * DAY_MS - CHINA_OFFSET_MS;
    app.advance(Duration::milliseconds(next_midnight - now + 60_000));
}

/// An instance whose clock runs behind the one that stored the token
/// replaces that token when WeChat rejects it: the refresh lease orders the
/// fetches, whatever the instances' clocks say. Were the stored token taken
/// as the newer one by its fetch time, the instance behind could store none
/// until its clock caught up, and each of its sends would fetch again only
/// to be handed the dead token back (found by formid-sim).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_clock_runs_behind_replaces_a_rejected_token(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.access_token().await.body["access_token"].clone();
    let behind = Arc::new(ManualClock::new(app.clock.now() - Duration::seconds(20)));
    let sibling = spawn_sibling_on_clock(&app, behind).await;
    app.fake.invalidate_tokens(APPID);
    app.collect_form_id("o-behind").await;
    let answer = call(
        &app.client,
        &format!("{}/v1/apps/{APPID}/messages", sibling.address),
        reqwest::Method::POST,
        Some(SEND_KEY),
        Some(json!({
            "touser": "o-behind",
            "template_id": TEMPLATE,
            "data": {"keyword1": {"value": "Order 1"}},
        })),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(app.fake.token_fetches(APPID), 2, "one fetch replaced it");
    assert_ne!(
        app.fake.current_token(APPID).as_deref(),
        first.as_str(),
        "WeChat's current token is the replacement"
    );
}

/// A token that lives no longer than `refresh_ahead_secs` is refreshed
/// half-way through its life. Refreshed with the whole lead, it would be due
/// the moment it was fetched, and every pass of every instance's worker
/// would fetch (found by formid-sim).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_less_than_the_lead_is_refreshed_half_way(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.fake.set_token_expires_in(600);
    // Whatever was fetched at start has expired: the next token lives 600 s,
    // less than the default lead of 900 s.
    app.advance(Duration::seconds(7200));
    app.token_refresher.run_once().await.unwrap();
    let fetched = app.fake.token_fetches(APPID);
    for _ in 0..9 {
        app.advance(Duration::seconds(30));
        app.token_refresher.run_once().await.unwrap();
    }
    assert_eq!(
        app.fake.token_fetches(APPID),
        fetched,
        "330 s of 600 left: not due"
    );
    app.advance(Duration::seconds(31));
    app.token_refresher.run_once().await.unwrap();
    assert_eq!(
        app.fake.token_fetches(APPID),
        fetched + 1,
        "299 s left: due"
    );
}

/// While no new token can be had (here the fetch budget is spent), a send
/// waits for one without calling WeChat with the token WeChat rejected; once
/// the budget earns a fetch back, the waiting messages go out. Handed the
/// dead token, every send and every wake-up of a waiting message made one
/// more call answered 40001 (found by formid-sim).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_never_calls_with_a_token_wechat_rejected(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["tokens"]["fetch_burst"] = json!(1);
        settings["tokens"]["fetch_refill_secs"] = json!(120);
    })
    .await;
    app.access_token().await;
    app.fake.invalidate_tokens(APPID);
    let users = ["o-dead-1", "o-dead-2", "o-dead-3"];
    for user in users {
        app.collect_form_id(user).await;
    }
    let first = app.notify(users[0]).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(first.body["status"], "waiting");
    let calls = app.fake.sends().len();
    for user in &users[1..] {
        let answer = app.notify(user).await;
        assert_eq!(answer.status, 202, "{:?}", answer.body);
    }
    assert_eq!(
        app.fake.sends().len(),
        calls,
        "no call with the rejected token"
    );
    app.advance(Duration::seconds(121));
    app.waiting.run_once().await.unwrap();
    assert_eq!(app.delivered_form_ids().len(), 3);
    assert_eq!(app.fake.token_fetches(APPID), 2);
}
