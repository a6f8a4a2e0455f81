//! A real gateway process killed with SIGKILL in the middle of sends, and a
//! second one that resolves what it left behind; and a clean SIGTERM.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_wechat::{FakeWeChat, FakeWeChatServer, Fault, SystemClock};
use rstest::rstest;
use serde_json::json;

use crate::helpers::{drop_postgres_database, fresh_database, Backend};
use crate::process::GatewayProcess as Gateway;
use sqlx::{Connection, PgConnection};

const APPID: &str = "wxcrash000000001";
const TEMPLATE: &str = "tmpl-crash";
const KEY: &str = "crash-test-key-0123456789";

/// Posts credentials, as a frontend does.
async fn post_credentials(
    gateway: &Gateway,
    client: &reqwest::Client,
    credentials: Vec<serde_json::Value>,
) -> reqwest::Response {
    client
        .post(format!("{}/v1/apps/{APPID}/credentials", gateway.address))
        .bearer_auth(KEY)
        .json(&json!({"credentials": credentials}))
        .send()
        .await
        .unwrap()
}

/// Starts one send to each of users `{prefix}0` … `{prefix}{users - 1}`,
/// each in its own task, with the user's name as its Idempotency-Key:
/// the status it answers, or the error if none.
fn spawn_sends(
    gateway: &Gateway,
    client: &reqwest::Client,
    prefix: &str,
    users: usize,
) -> Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::StatusCode>>> {
    (0..users)
        .map(|user| {
            let request = client
                .post(format!("{}/v1/apps/{APPID}/messages", gateway.address))
                .bearer_auth(KEY)
                .header("Idempotency-Key", format!("{prefix}{user}"))
                .json(&json!({"touser": format!("{prefix}{user}"), "template_id": TEMPLATE}));
            tokio::spawn(async move { request.send().await.map(|response| response.status()) })
        })
        .collect()
}

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
[apps.{APPID}]
secret = "crash-secret"
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

/// Rows of a query run straight on the ledger's database, either kind.
async fn ledger_rows<T>(database_url: &str, query: &str) -> Vec<T>
where
    T: Send
        + Unpin
        + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    if database_url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query_as(query)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = PgConnection::connect(database_url).await.unwrap();
        sqlx::query_as(query)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    }
}

/// Leased credentials and pending messages: what a crash leaves in flight.
async fn ledger_counts(database_url: &str) -> (i64, i64) {
    let query = "SELECT (SELECT COUNT(*) FROM credentials WHERE state = 'leased'), \
                        (SELECT COUNT(*) FROM messages WHERE status = 'pending')";
    ledger_rows(database_url, query).await[0]
}

async fn messages_by_user(database_url: &str) -> Vec<(String, String)> {
    ledger_rows(database_url, "SELECT touser, status FROM messages").await
}

/// A fake WeChat on loopback, a fresh ledger and a configuration pointing at both.
struct Setup {
    dir: std::path::PathBuf,
    fake: FakeWeChat,
    fake_server: FakeWeChatServer,
    database_url: String,
    config: std::path::PathBuf,
}

impl Setup {
    async fn new(backend: Backend) -> Self {
        let dir =
            std::env::temp_dir().join(format!("formid-crash-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = FakeWeChat::new(SystemClock);
        fake.register_app(APPID, "crash-secret");
        fake.register_template(APPID, TEMPLATE);
        let fake_server = FakeWeChatServer::start(fake.clone(), "127.0.0.1:0")
            .await
            .unwrap();
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}/ledger.db", dir.display()),
            Backend::Postgres => fresh_database(backend).await.0,
        };
        let config = write_config(&dir, &database_url, &fake_server.base_url);
        Self {
            dir,
            fake,
            fake_server,
            database_url,
            config,
        }
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_send_is_resolved_by_the_next_process(#[case] backend: Backend) {
    let Setup {
        dir,
        fake,
        fake_server,
        database_url,
        config,
    } = Setup::new(backend).await;

    let first = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    // 15 users with one form_id each, 5 with one prepay_id (3 sends) each.
    let mut credentials = Vec::new();
    for user in 0..20 {
        let openid = format!("o-crash-{user}");
        let (kind, value) = if user < 15 {
            ("form_id", fake.mint_form_id(APPID, &openid))
        } else {
            ("prepay_id", fake.mint_prepay_id(APPID, &openid))
        };
        credentials.push(json!({"openid": openid, "kind": kind, "value": value}));
    }
    let collected = post_credentials(&first, &client, credentials).await;
    assert_eq!(collected.status(), 200);
    client
        .get(format!("{}/v1/apps/{APPID}/access_token", first.address))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    // Some calls deliver at once and then hang (the answer never comes back
    // before the kill); the rest wait in the fake's latency, undelivered.
    fake.push_send_faults(vec![Fault::Hang(Duration::from_secs(5)); 6]);
    fake.set_latency(Duration::from_millis(1500));
    let sends = spawn_sends(&first, &client, "o-crash-", 20);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut first = first;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    for send in sends {
        assert!(
            send.await.unwrap().is_err(),
            "no answer came back from a killed process"
        );
    }
    let (leased, pending) = ledger_counts(&database_url).await;
    let delivered_before_restart = fake.sends().iter().filter(|send| send.delivered).count();
    assert!(
        leased > 0 && pending > 0,
        "the kill left sends in flight ({leased} leased, {pending} pending)"
    );

    // A new process on the same ledger resolves all of it.
    fake.set_latency(Duration::ZERO);
    let mut second = Gateway::start(&config).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if ledger_counts(&database_url).await == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovery did not finish: {:?}",
            ledger_counts(&database_url).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut delivered_per_user: HashMap<String, usize> = HashMap::new();
    let mut delivered_per_value: HashMap<String, usize> = HashMap::new();
    for send in fake.sends().into_iter().filter(|send| send.delivered) {
        *delivered_per_user.entry(send.touser).or_default() += 1;
        *delivered_per_value.entry(send.form_id).or_default() += 1;
    }
    assert!(
        delivered_per_user.values().all(|count| *count == 1),
        "no notification twice: {delivered_per_user:?}"
    );
    let messages = messages_by_user(&database_url).await;
    assert_eq!(messages.len(), 20);
    for (touser, status) in &messages {
        let delivered = delivered_per_user.get(touser).copied().unwrap_or(0);
        match status.as_str() {
            "sent" => assert_eq!(delivered, 1, "{touser} is recorded sent"),
            "unknown" => assert!(delivered <= 1, "{touser}"),
            other => {
                panic!("{touser} ended {other}: a message with a credential must not fail here")
            }
        }
    }
    // The killed process never stored its answers, so the keys
    // stayed in flight. A retry with the same key is answered from the
    // ended message (not 409 for a day) and sends nothing.
    let deliveries = fake.sends().iter().filter(|send| send.delivered).count();
    let retries = spawn_sends(&second, &client, "o-crash-", 20);
    for (user, retry) in retries.into_iter().enumerate() {
        let status = retry.await.unwrap().unwrap();
        let ended = &messages
            .iter()
            .find(|(touser, _)| *touser == format!("o-crash-{user}"))
            .unwrap()
            .1;
        let expected = if ended == "sent" { 200 } else { 502 };
        assert_eq!(status.as_u16(), expected, "o-crash-{user} ended {ended}");
    }
    assert_eq!(
        fake.sends().iter().filter(|send| send.delivered).count(),
        deliveries,
        "a retried key sends nothing"
    );
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for (_, status) in &messages {
        *by_status.entry(status.as_str()).or_default() += 1;
    }
    eprintln!(
        "{}: at the kill {leased} credentials leased and {pending} messages pending, \
         {delivered_before_restart} already delivered; after recovery {by_status:?}, \
         {} users notified once, none twice",
        if backend == Backend::Postgres {
            "postgres"
        } else {
            "sqlite"
        },
        delivered_per_user.len()
    );
    // Every form_id message ends known: probing resolves each of them.
    for user in 0..15 {
        let touser = format!("o-crash-{user}");
        let status = &messages.iter().find(|(t, _)| *t == touser).unwrap().1;
        assert_eq!(status, "sent", "{touser}");
    }

    second.signal("TERM");
    assert!(second.wait_exit(Duration::from_secs(30)).success());
    fake_server.stop().await;
    if backend == Backend::Postgres {
        drop_postgres_database(&database_url);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_sends_in_flight_and_exits_cleanly() {
    let Setup {
        dir,
        fake,
        fake_server,
        database_url,
        config,
    } = Setup::new(Backend::Sqlite).await;
    let mut gateway = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    let credentials: Vec<_> = (0..3)
        .map(|user| {
            let openid = format!("o-term-{user}");
            json!({"openid": openid, "kind": "form_id", "value": fake.mint_form_id(APPID, &openid)})
        })
        .collect();
    post_credentials(&gateway, &client, credentials).await;
    fake.set_latency(Duration::from_millis(1000));
    let sends = spawn_sends(&gateway, &client, "o-term-", 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    gateway.signal("TERM");
    for send in sends {
        assert_eq!(send.await.unwrap().unwrap(), 200, "in-flight sends finish");
    }
    assert!(gateway.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(ledger_counts(&database_url).await, (0, 0));
    fake_server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The webhook settings of the crash test's gateways: loopback receivers,
/// and a first process whose delivery worker never polls before it dies.
const NO_POLL: [(&str, &str); 2] = [
    ("FORMID__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
    ("FORMID__WEBHOOKS__POLL_MS", "60000"),
];
const POLL: [(&str, &str); 2] = [
    ("FORMID__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
    ("FORMID__WEBHOOKS__POLL_MS", "100"),
];

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_before_a_sigkill_is_delivered_after_the_restart_once(
    #[case] backend: Backend,
) {
    use crate::webhooks::{verify_with_standardwebhooks, Receiver};
    let Setup {
        dir,
        fake,
        fake_server,
        database_url,
        config,
    } = Setup::new(backend).await;
    let receiver = Receiver::start(&[]).await;
    let mut first = Gateway::start_with(&config, &NO_POLL).await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/apps/{APPID}/webhooks", first.address))
        .bearer_auth(KEY)
        .json(&json!({"url": receiver.url, "event_types": ["message.sent"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let secret = created.json::<serde_json::Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let users = 3;
    let credentials = (0..users)
        .map(|user| {
            let openid = format!("o-hook-{user}");
            json!({"openid": openid, "kind": "form_id", "value": fake.mint_form_id(APPID, &openid)})
        })
        .collect();
    assert_eq!(
        post_credentials(&first, &client, credentials)
            .await
            .status(),
        200
    );
    for send in spawn_sends(&first, &client, "o-hook-", users) {
        assert_eq!(send.await.unwrap().unwrap(), 200);
    }
    // The settlements committed with their events; none was delivered.
    let outbox: Vec<(i64,)> = ledger_rows(
        &database_url,
        "SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'",
    )
    .await;
    assert_eq!(outbox[0].0, users as i64);
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    assert!(receiver.received().is_empty());

    let second = Gateway::start_with(&config, &POLL).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.received().len() < users {
        assert!(Instant::now() < deadline, "the events did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more polls: nothing comes twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    let mut ids: Vec<&str> = received.iter().map(|event| event.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), users, "{received:?}");
    assert_eq!(received.len(), users, "{received:?}");
    verify_with_standardwebhooks(&[&secret], &received);
    drop(second);
    drop(fake_server);
    if backend == Backend::Postgres {
        drop_postgres_database(&database_url);
    }
    let _ = std::fs::remove_dir_all(dir);
}
