//! A token another party retires, at the worst moment for each limit on the
//! token path (the fetch budget, the refresh lease, the breaker, the
//! single flight across instances): the next sends succeed with one fetch,
//! and a send that cannot have a token waits for one instead of failing.
//!
//! "Another party" is what WeChat documents (docs/wechat/tokens.md): a second
//! server that fetches `cgi-bin/token` twice (the first retires the
//! gateway's token after its overlap, the second at once), one that forces a
//! `stable_token` refresh (no overlap), or a secret reset in the console.

use chrono::Duration;
use fake_wechat::Fault;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

/// How another party retires the app's token.
#[derive(Debug, Clone, Copy)]
enum Retirement {
    /// Another server fetches `cgi-bin/token` twice.
    TwoForeignFetches,
    /// Another server calls `stable_token` with `force_refresh: true`.
    ForcedStableRefresh,
    /// The secret is reset in WeChat's console: every token dies at once.
    SecretReset,
}

impl Retirement {
    fn token_mode(self) -> &'static str {
        match self {
            Retirement::ForcedStableRefresh => "stable_token",
            Retirement::TwoForeignFetches | Retirement::SecretReset => "token",
        }
    }

    /// Retires the token through the fake's own endpoints (or its console);
    /// returns the tokens the other party fetched.
    async fn retire(self, app: &TestApp) -> usize {
        let client = reqwest::Client::new();
        let base = &app.wechat_base_url;
        match self {
            Retirement::TwoForeignFetches => {
                for _ in 0..2 {
                    let answer: Value = client
                        .get(format!("{base}/cgi-bin/token"))
                        .query(&[
                            ("grant_type", "client_credential"),
                            ("appid", APPID),
                            ("secret", "secret-of-app-one"),
                        ])
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert!(answer["access_token"].is_string(), "{answer}");
                }
                2
            }
            Retirement::ForcedStableRefresh => {
                let answer: Value = client
                    .post(format!("{base}/cgi-bin/stable_token"))
                    .json(&json!({
                        "grant_type": "client_credential",
                        "appid": APPID,
                        "secret": "secret-of-app-one",
                        "force_refresh": true,
                    }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert!(answer["access_token"].is_string(), "{answer}");
                1
            }
            Retirement::SecretReset => {
                app.fake.invalidate_tokens(APPID);
                0
            }
        }
    }
}

async fn spawn_in(backend: Backend, retirement: Retirement) -> TestApp {
    spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["token_mode"] = json!(retirement.token_mode());
    })
    .await
}

/// Right after the gateway's own fetch, in each mode and each way.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_retired_right_after_the_gateways_fetch_costs_one_fetch(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
    #[values(
        Retirement::TwoForeignFetches,
        Retirement::ForcedStableRefresh,
        Retirement::SecretReset
    )]
    retirement: Retirement,
) {
    let app = spawn_in(backend, retirement).await;
    app.collect_form_id("o-right-after").await;
    let before = app.access_token().await.body["access_token"].clone();
    let foreign = retirement.retire(&app).await;
    let fetched = app.fake.token_fetches(APPID);
    let answer = app.notify("o-right-after").await;
    assert_eq!(answer.status, 200, "{retirement:?}: {:?}", answer.body);
    assert_eq!(
        app.fake.token_fetches(APPID),
        fetched + 1,
        "{retirement:?}: one fetch"
    );
    assert_eq!(app.fake.token_fetches(APPID), 1 + foreign + 1);
    // The app's other servers get the live token, not the retired one.
    let served = app.access_token().await.body["access_token"].clone();
    assert_ne!(served, before);
    assert_eq!(app.fake.current_token(APPID).as_deref(), served.as_str());
}

/// The issue's own run: 40 concurrent sends to one user right after the
/// token was retired, each with a credential of its own.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_sends_after_a_retirement_all_go_out_with_one_fetch(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    for _ in 0..40 {
        app.collect_form_id("o-forty").await;
    }
    app.access_token().await;
    app.fake.invalidate_tokens(APPID);
    let fetched = app.fake.token_fetches(APPID);
    let sends = (0..40).map(|_| app.notify("o-forty"));
    let answers = futures::future::join_all(sends).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(app.fake.token_fetches(APPID), fetched + 1, "one fetch");
    assert_eq!(app.delivered_form_ids().len(), 40);
    assert_eq!(app.sends_available("o-forty").await, 0);
}

/// During the 5-minute overlap after the gateway's refresh-ahead fetch: the
/// old token still works, then every token dies.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_retired_during_the_overlap_costs_one_fetch(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.token_refresher.run_once().await.unwrap();
    app.advance(Duration::seconds(7200 - 600));
    assert_eq!(app.token_refresher.run_once().await.unwrap(), 2);
    for user in ["o-overlap-1", "o-overlap-2"] {
        app.collect_form_id(user).await;
    }
    assert_eq!(app.notify("o-overlap-1").await.status, 200);
    app.fake.invalidate_tokens(APPID);
    let fetched = app.fake.token_fetches(APPID);
    let answer = app.notify("o-overlap-2").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(app.fake.token_fetches(APPID), fetched + 1);
}

/// During the gateway's fetch: WeChat issued the new token, and it was
/// retired before the answer reached the gateway, which stores a dead token.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_retired_during_the_gateways_fetch_is_replaced_by_the_next(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.collect_form_id("o-during").await;
    // The token at start has expired: the send fetches, and the answer hangs.
    app.advance(Duration::hours(3));
    app.fake
        .push_token_faults([Fault::Hang(std::time::Duration::from_millis(1000))]);
    let fetched = app.fake.token_fetches(APPID);
    let (answer, ()) = tokio::join!(app.notify("o-during"), async {
        // The fake issues the token, then holds its answer: retire it then,
        // however long the gateway took to ask.
        while app.fake.token_fetches(APPID) == fetched {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        app.fake.invalidate_tokens(APPID);
    });
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        app.fake.token_fetches(APPID),
        fetched + 2,
        "the fetch that was retired in flight, and one more"
    );
}

/// Every instance on one ledger meets the retired token at once: the lease in
/// the apps row makes it one fetch between them.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_meeting_a_retired_token_at_once_costs_one_fetch(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let siblings = [spawn_sibling(&app).await, spawn_sibling(&app).await];
    let addresses = [
        app.address.clone(),
        siblings[0].address.clone(),
        siblings[1].address.clone(),
    ];
    for _ in 0..12 {
        app.collect_form_id("o-everywhere").await;
    }
    // Every instance has read the token before it dies.
    for address in &addresses {
        let url = format!("{address}/v1/apps/{APPID}/access_token");
        let answer = call(
            &app.client,
            &url,
            reqwest::Method::GET,
            Some(TOKEN_KEY),
            None,
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    app.fake.invalidate_tokens(APPID);
    let fetched = app.fake.token_fetches(APPID);
    let urls: Vec<String> = addresses
        .iter()
        .cycle()
        .take(12)
        .map(|address| format!("{address}/v1/apps/{APPID}/messages"))
        .collect();
    let sends = urls.iter().map(|url| {
        call(
            &app.client,
            url,
            reqwest::Method::POST,
            Some(SEND_KEY),
            Some(json!({"touser": "o-everywhere", "template_id": TEMPLATE})),
        )
    });
    for answer in futures::future::join_all(sends).await {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(
        app.fake.token_fetches(APPID),
        fetched + 1,
        "one fetch in all"
    );
    assert_eq!(app.delivered_form_ids().len(), 12);
}

/// The budget: a rejection with none left makes the send wait, its
/// credential untouched, and it goes out when the budget refills. A WeChat
/// that rejects every token never gets more fetches than the budget.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_makes_sends_wait_and_bounds_a_runaway(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["tokens"]["fetch_burst"] = json!(2);
        settings["tokens"]["fetch_refill_secs"] = json!(60);
    })
    .await;
    app.collect_form_id("o-budget").await;
    app.access_token().await;
    // A runaway: WeChat rejects every call, whatever the token.
    app.fake.push_send_faults(vec![Fault::Errcode(40001); 50]);
    let answer = app.notify("o-budget").await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "waiting");
    assert_eq!(
        app.sends_available("o-budget").await,
        1,
        "credential untouched"
    );
    assert_eq!(app.fake.token_fetches(APPID), 2, "the burst, and no more");
    for _ in 0..5 {
        app.advance(Duration::seconds(5));
        app.waiting.run_once().await.unwrap();
    }
    assert!(app.fake.token_fetches(APPID) <= 3, "one more per 60 s");
    // WeChat works again: the message goes out.
    app.fake.clear_send_faults();
    let id = answer.body["id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..40 {
        app.advance(Duration::seconds(60));
        app.waiting.run_once().await.unwrap();
        status = app.message(&id).await.body["status"].clone();
        if status == "sent" {
            break;
        }
    }
    assert_eq!(status, "sent");
    assert_eq!(app.delivered_form_ids().len(), 1);
}

/// The refresh lease: an instance died holding it. Sends that meet the
/// retired token wait (not fail) until the lease runs out, then go out.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_dead_instance_delays_a_send_but_never_fails_it(
    #[case] backend: Backend,
) {
    let app = spawn_app_with(backend, |settings| {
        settings["tokens"]["wait_ms"] = json!(300);
    })
    .await;
    app.collect_form_id("o-lease").await;
    app.access_token().await;
    let now = app.now_ms();
    assert!(app
        .storage
        .try_lease_token_refresh(APPID, "a-dead-instance", now, now + 30_000)
        .await
        .unwrap());
    app.fake.invalidate_tokens(APPID);
    let answer = app.notify("o-lease").await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "waiting");
    assert_eq!(app.sends_available("o-lease").await, 1);
    app.advance(Duration::seconds(31));
    let fetched = app.fake.token_fetches(APPID);
    assert_eq!(app.waiting.run_once().await.unwrap(), 1);
    let id = answer.body["id"].as_str().unwrap();
    assert_eq!(app.message(id).await.body["status"], "sent");
    assert_eq!(app.fake.token_fetches(APPID), fetched + 1);
}

/// The breaker: open while WeChat was busy; its first call after the
/// cooldown meets a token retired meanwhile, refreshes, and goes out.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breakers_first_call_after_a_retirement_recovers_with_one_fetch(
    #[case] backend: Backend,
) {
    let app = spawn_app(backend).await;
    for user in ["o-busy-1", "o-busy-2", "o-breaker"] {
        app.collect_form_id(user).await;
    }
    app.access_token().await;
    app.fake.push_send_faults(vec![Fault::Errcode(-1); 6]);
    for user in ["o-busy-1", "o-busy-2"] {
        assert_eq!(app.notify(user).await.status, 503);
    }
    let open = app.notify("o-breaker").await;
    assert_eq!(
        open.body["error"]["code"], "upstream_circuit_open",
        "{:?}",
        open.body
    );
    app.fake.invalidate_tokens(APPID);
    app.advance(Duration::seconds(11));
    let fetched = app.fake.token_fetches(APPID);
    let answer = app.notify("o-breaker").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(app.fake.token_fetches(APPID), fetched + 1);
    assert_eq!(
        app.notify("o-busy-1").await.status,
        200,
        "the circuit closed"
    );
}
