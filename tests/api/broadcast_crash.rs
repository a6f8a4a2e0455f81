//! A broadcast on PostgreSQL worked by two real gateway processes, one of
//! them killed with SIGKILL mid-job and started again: every recipient is
//! notified exactly once at the fake, and the job's counts equal the fake's.
//!
//! Size: `RECIPIENTS` (20,000), about 11 s in a debug build on an idle
//! two-core machine; `FORMID_BROADCAST_CRASH_RECIPIENTS` sets another.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_wechat::{FakeWeChat, FakeWeChatServer, SystemClock};
use serde_json::{json, Value};

use crate::helpers::{drop_postgres_database, fresh_database, Backend};
use crate::process::GatewayProcess as Gateway;

const APPID: &str = "wxbcrash00000001";
const TEMPLATE: &str = "tmpl-broadcast-crash";
const KEY: &str = "broadcast-crash-key-0123456789";
const RECIPIENTS: usize = 20_000;

fn write_config(dir: &std::path::Path, database_url: &str, wechat: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
database_url = "{database_url}"
[wechat]
base_url = "{wechat}"
connect_timeout_ms = 1000
request_timeout_ms = 2500
[ledger]
lease_secs = 4
recovery_interval_secs = 1
max_batch = 1000
[broadcasts]
rate_per_sec = 10000
batch = 100
lease_ms = 5000
recheck_ms = 500
poll_ms = 50
[apps.{APPID}]
secret = "broadcast-crash-secret"
[api_keys.all]
key = "{KEY}"
apps = ["*"]
scopes = ["admin"]
"#
        ),
    )
    .unwrap();
    path
}

async fn progress(client: &reqwest::Client, address: &str, id: &str) -> Value {
    client
        .get(format!("{address}/v1/apps/{APPID}/broadcasts/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_sigkill_with_every_recipient_notified_once() {
    let recipients: usize = std::env::var("FORMID_BROADCAST_CRASH_RECIPIENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(RECIPIENTS);
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("formid-bcrash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = FakeWeChat::new(SystemClock);
    fake.register_app(APPID, "broadcast-crash-secret");
    fake.register_template(APPID, TEMPLATE);
    let fake_server = FakeWeChatServer::start(fake.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let database_url = fresh_database(Backend::Postgres).await.0;
    let config = write_config(&dir, &database_url, &fake_server.base_url);

    let first = Gateway::start(&config).await;
    let mut second = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    // One form_id for each user.
    let users: Vec<String> = (0..recipients).map(|n| format!("o-b{n:05}")).collect();
    for chunk in users.chunks(1000) {
        let credentials: Vec<Value> = chunk
            .iter()
            .map(|openid| json!({"openid": openid, "kind": "form_id", "value": fake.mint_form_id(APPID, openid)}))
            .collect();
        let answer = client
            .post(format!("{}/v1/apps/{APPID}/credentials", first.address))
            .bearer_auth(KEY)
            .json(&json!({"credentials": credentials}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // Calls take a moment, so the kill finds sends in flight.
    fake.set_latency(Duration::from_millis(20));
    let created: Value = client
        .post(format!("{}/v1/apps/{APPID}/broadcasts", first.address))
        .bearer_auth(KEY)
        .json(
            &json!({"template_id": TEMPLATE, "data": {"keyword1": {"value": "restock"}},
            "audience": "holders"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["recipients"], recipients, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    // Kill the second process once a tenth of the job is done, then start it again.
    // Generous for a loaded machine: a minute, and 20 ms a recipient.
    let deadline =
        Instant::now() + Duration::from_secs(60) + Duration::from_millis(20) * recipients as u32;
    loop {
        let now = progress(&client, &first.address, &id).await;
        if now["sent"].as_i64().unwrap_or(0) >= (recipients / 10) as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not start: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.kill();
    let killed_at = fake.sends().len();
    let _second = Gateway::start(&config).await;

    let done = loop {
        let now = progress(&client, &first.address, &id).await;
        if now["finished_at"].is_string() {
            break now;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for send in fake.sends().into_iter().filter(|send| send.delivered) {
        *delivered.entry(send.touser).or_default() += 1;
    }
    let twice: Vec<_> = delivered.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "notified twice: {twice:?}");
    assert_eq!(
        delivered.len(),
        recipients,
        "every recipient notified: {done}"
    );
    assert_eq!(
        done["sent"], recipients,
        "the job's count equals the fake's: {done}"
    );
    assert_eq!(done["remaining"], 0);
    assert!(
        killed_at < recipients,
        "the kill fell mid-job ({killed_at} calls before it)"
    );
    eprintln!(
        "broadcast crash test: {recipients} recipients in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(first);
    drop_postgres_database(&database_url);
    let _ = std::fs::remove_dir_all(&dir);
}
