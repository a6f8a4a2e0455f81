//! Several gateway instances on one PostgreSQL ledger, each with its own
//! pools, driven concurrently: nothing spent twice, nothing lost, one token
//! fetch per expiry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::Duration;
use fake_wechat::Fault;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

const USERS: usize = 100;
const SENDS: usize = 2_000;
const CLIENTS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_ledger_never_spend_a_credential_twice() {
    let app = spawn_app(Backend::Postgres).await;
    let siblings = [spawn_sibling(&app).await, spawn_sibling(&app).await];
    let addresses: Vec<String> = std::iter::once(app.address.clone())
        .chain(siblings.iter().map(|sibling| sibling.address.clone()))
        .collect();

    // 600 credentials: 4 form_ids and 2 prepay_ids for each of 100 users.
    let mut batch = Vec::new();
    for user in 0..USERS {
        let openid = format!("o-many-{user}");
        for _ in 0..4 {
            batch.push(json!({"openid": openid, "kind": "form_id", "value": app.fake.mint_form_id(APPID, &openid)}));
        }
        for _ in 0..2 {
            // Collected a day earlier: they expire first, so the run spends them
            // first and the lost answers land on prepay_ids with sends left.
            batch.push(json!({
                "openid": openid,
                "kind": "prepay_id",
                "value": app.fake.mint_prepay_id(APPID, &openid),
                "collected_at": app.now_ms() - 86_400_000,
            }));
        }
    }
    for chunk in batch.chunks(500) {
        let answer = app.post_credentials(json!({"credentials": chunk})).await;
        assert_eq!(answer.body["accepted"], chunk.len(), "{:?}", answer.body);
    }
    app.access_token().await;
    // Answers lost after delivery and busy answers, scattered through the
    // run between normal calls (a zero hang is a normal answer), never five
    // failures in a row, which would open the circuit on a clock that stands still.
    let normal = || Fault::Hang(std::time::Duration::ZERO);
    let mut faults = Vec::new();
    for _ in 0..30 {
        faults.extend([
            Fault::DeliverThenFail(502),
            normal(),
            normal(),
            Fault::Errcode(-1),
            normal(),
            normal(),
        ]);
    }
    app.fake.push_send_faults(faults);

    let next = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(HashMap::<u16, usize>::new()));
    let clients = (0..CLIENTS).map(|client| {
        let next = next.clone();
        let statuses = statuses.clone();
        let addresses = addresses.clone();
        let http = app.client.clone();
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= SENDS {
                    break;
                }
                let address = &addresses[(client + i) % addresses.len()];
                let openid = format!("o-many-{}", (i * 37) % USERS);
                let answer = call(
                    &http,
                    &format!("{address}/v1/apps/{APPID}/messages"),
                    reqwest::Method::POST,
                    Some(SEND_KEY),
                    Some(json!({"touser": openid, "template_id": TEMPLATE})),
                )
                .await;
                assert!(
                    matches!(answer.status, 200 | 409 | 502 | 503),
                    "{}: {:?}",
                    answer.status,
                    answer.body
                );
                *statuses.lock().unwrap().entry(answer.status).or_default() += 1;
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert_eq!(statuses.values().sum::<usize>(), SENDS);

    // What WeChat (the fake) saw.
    let mut delivered: HashMap<String, usize> = HashMap::new();
    let mut delivered_per_user: HashMap<String, usize> = HashMap::new();
    for send in app.fake.sends().into_iter().filter(|send| send.delivered) {
        *delivered.entry(send.form_id).or_default() += 1;
        *delivered_per_user.entry(send.touser).or_default() += 1;
    }
    // What the ledger says.
    let pool = PgPool::connect(&app.database_url).await.unwrap();
    let credentials: Vec<(String, String, i64, String)> =
        sqlx::query_as("SELECT kind, value, uses_left, state FROM credentials")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(credentials.len(), 600);
    for (kind, value, uses_left, state) in &credentials {
        let allowed = if kind == "form_id" { 1 } else { 3 };
        let spent = (allowed - uses_left) as usize;
        let seen = delivered.get(value).copied().unwrap_or(0);
        assert!(
            seen <= allowed as usize,
            "{kind} {value} delivered {seen} times"
        );
        assert_eq!(
            spent, seen,
            "{kind} {value} ({state}): the ledger's spent count is what WeChat delivered"
        );
        assert_ne!(state, "leased", "no lease outlives the run");
    }
    let by_status: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT touser, status, COUNT(*) FROM messages GROUP BY touser, status")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut recorded_per_user: HashMap<String, usize> = HashMap::new();
    let mut sent_total = 0;
    for (touser, status, count) in &by_status {
        assert_ne!(status, "pending", "every message ended");
        if status == "sent" || status == "unknown" {
            *recorded_per_user.entry(touser.clone()).or_default() += *count as usize;
        }
        if status == "sent" {
            sent_total += *count as usize;
        }
    }
    // Only faults that deliver were injected, so every unknown was delivered:
    // per user, what WeChat delivered is exactly what the ledger recorded.
    assert_eq!(delivered_per_user, recorded_per_user);
    assert_eq!(statuses.get(&200).copied().unwrap_or(0), sent_total);
    assert_eq!(
        delivered.values().sum::<usize>(),
        1_000,
        "every credential's every send was used"
    );
    let unknown: usize = by_status
        .iter()
        .filter(|(_, status, _)| status == "unknown")
        .map(|(_, _, count)| *count as usize)
        .sum();
    eprintln!(
        "three instances: answers by status {statuses:?}; ledger: {sent_total} sent, {unknown} unknown; \
         WeChat delivered {} sends with {} distinct credentials",
        delivered.values().sum::<usize>(),
        delivered.len()
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_fetch_one_token_per_expiry_and_serve_only_live_tokens() {
    let app = spawn_app(Backend::Postgres).await;
    let siblings = [spawn_sibling(&app).await, spawn_sibling(&app).await];
    let refreshers = [
        app.token_refresher.clone(),
        siblings[0].token_refresher.clone(),
        siblings[1].token_refresher.clone(),
    ];
    let addresses = [
        app.address.clone(),
        siblings[0].address.clone(),
        siblings[1].address.clone(),
    ];
    for user in 0..3 {
        for _ in 0..4 {
            app.collect_form_id(&format!("o-tok-{user}")).await;
        }
    }
    for expiry in 0..4 {
        // Every instance's worker runs at once.
        let runs = refreshers.iter().map(|refresher| refresher.run_once());
        for run in futures::future::join_all(runs).await {
            run.unwrap();
        }
        assert_eq!(
            app.fake.token_fetches(APPID),
            expiry + 1,
            "one fetch per expiry"
        );
        let live = app.fake.current_token(APPID).expect("a live token");
        for address in &addresses {
            let answer = call(
                &app.client,
                &format!("{address}/v1/apps/{APPID}/access_token"),
                reqwest::Method::GET,
                Some(TOKEN_KEY),
                None,
            )
            .await;
            assert_eq!(
                answer.body["access_token"],
                live.as_str(),
                "every instance serves the live token"
            );
        }
        for (user, address) in addresses.iter().enumerate() {
            let answer = call(
                &app.client,
                &format!("{address}/v1/apps/{APPID}/messages"),
                reqwest::Method::POST,
                Some(SEND_KEY),
                Some(json!({"touser": format!("o-tok-{user}"), "template_id": TEMPLATE})),
            )
            .await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
        }
        // Into the next refresh window: 14 minutes before this token expires.
        app.advance(Duration::seconds(7200 - 840));
    }
    let rejected = app
        .fake
        .sends()
        .iter()
        .filter(|send| matches!(send.errcode, 40001 | 40014 | 42001))
        .count();
    assert_eq!(rejected, 0, "no call ever carried a dead token");
}

/// Sends queued for a call slot longer than a lease. A send waits for its
/// slot before it claims, renews a lease that lacks room for the call, and a
/// run whose lease was taken writes nothing and moves on to nothing. Were
/// the lease started before the wait for a slot, another instance's recovery
/// could take the credential and probe it (delivering), and the first
/// instance would call anyway, meet 41029, retire it and send again with the
/// user's next form_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queued_longer_than_a_lease_are_never_sent_twice() {
    let tight = |settings: &mut serde_json::Value| {
        settings["ledger"]["lease_secs"] = json!(4);
        settings["wechat"]["max_concurrent_calls_per_app"] = json!(4);
    };
    let app = spawn_app_with(Backend::Postgres, tight).await;
    let sender = spawn_sibling_with(&app, tight).await;
    const QUEUED: usize = 60;
    let mut batch = Vec::new();
    for user in 0..QUEUED {
        let openid = format!("o-queue-{user}");
        for _ in 0..2 {
            batch.push(json!({"openid": openid, "kind": "form_id", "value": app.fake.mint_form_id(APPID, &openid)}));
        }
    }
    let answer = app.post_credentials(json!({"credentials": batch})).await;
    assert_eq!(answer.body["accepted"], QUEUED * 2, "{:?}", answer.body);
    app.access_token().await;
    app.fake.set_latency(std::time::Duration::from_millis(500));
    // The ledger's clock runs at twice real time, and the other instance's
    // recovery runs all along: a lease outlives a call, not the queue.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let background = {
        let (clock, recovery, running) = (app.clock.clone(), app.recovery.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                clock.advance(Duration::milliseconds(200));
                recovery.run_once().await.unwrap();
            }
        })
    };
    let sends: Vec<_> = (0..QUEUED)
        .map(|user| {
            let (client, url) = (
                app.client.clone(),
                format!("{}/v1/apps/{APPID}/messages", sender.address),
            );
            tokio::spawn(async move {
                let body = json!({"touser": format!("o-queue-{user}"), "template_id": TEMPLATE});
                call(
                    &client,
                    &url,
                    reqwest::Method::POST,
                    Some(SEND_KEY),
                    Some(body),
                )
                .await
            })
        })
        .collect();
    let mut answered: HashMap<String, usize> = HashMap::new();
    for send in sends {
        let answer = send.await.unwrap();
        *answered
            .entry(answer.body["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    // Let recovery settle whatever was handed over, then stop it.
    for _ in 0..50 {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE status = 'pending'")
                .fetch_one(&PgPool::connect(&app.database_url).await.unwrap())
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    running.store(false, Ordering::SeqCst);
    background.await.unwrap();
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for send in app.fake.sends().into_iter().filter(|send| send.delivered) {
        *per_user.entry(send.touser).or_default() += 1;
    }
    eprintln!(
        "queued sends: answered {answered:?}; {} users notified",
        per_user.len()
    );
    assert!(
        per_user.values().all(|count| *count == 1),
        "a user notified twice: {per_user:?}"
    );
    assert_eq!(per_user.len(), QUEUED, "every queued send delivered once");
}
