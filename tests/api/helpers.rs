//! `spawn_app`: a gateway on a fresh database (SQLite file or PostgreSQL
//! database), a fake WeChat on loopback, and one manual clock both share.

use std::sync::Arc;

use chrono::Duration;
use fake_wechat::{FakeWeChat, FakeWeChatServer};
use formid_gateway::broadcasts::BroadcastWorker;
use formid_gateway::clock::{Clock, ManualClock};
use formid_gateway::config::Settings;
use formid_gateway::monitoring::Backlog;
use formid_gateway::startup::Application;
use formid_gateway::stats::Stats;
use formid_gateway::storage::Storage;
use formid_gateway::templates::Catalogue;
use formid_gateway::webhooks::WebhookDelivery;
use formid_gateway::workers::{Recovery, ScheduledSender, Sweeper, TokenRefresher, WaitingSender};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;

pub const APPID: &str = "wxtest0000000001";
pub const OTHER_APPID: &str = "wxtest0000000002";
pub const TEMPLATE: &str = "tmpl-order-shipped";
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const COLLECT_KEY: &str = "test-collect-key-0123456789";
pub const SEND_KEY: &str = "test-send-key-0123456789";
pub const TOKEN_KEY: &str = "test-token-key-0123456789";
pub const OTHER_APP_KEY: &str = "test-other-app-key-0123456789";

/// Which ledger a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("FORMID_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A running gateway and everything a test needs to drive and inspect it.
pub struct TestApp {
    pub address: String,
    /// `http://127.0.0.1:PORT` of the WeChat-compatible endpoint, when the
    /// settings turn it on (`proxy.listen`).
    pub proxy_address: Option<String>,
    /// `http://127.0.0.1:PORT/metrics`, when the settings turn it on
    /// (`metrics.listen`).
    pub metrics_address: Option<String>,
    /// The worker of the message gauges, when metrics are on.
    pub backlog: Option<Backlog>,
    pub client: reqwest::Client,
    pub fake: FakeWeChat,
    pub clock: Arc<ManualClock>,
    pub storage: Arc<dyn Storage>,
    pub token_refresher: TokenRefresher,
    pub sweeper: Sweeper,
    pub waiting: WaitingSender,
    pub scheduled: ScheduledSender,
    pub recovery: Recovery,
    pub broadcasts: BroadcastWorker,
    pub catalogue: Catalogue,
    pub webhook_delivery: WebhookDelivery,
    /// The operators' figures (the console's overview and the gauges).
    pub stats: Stats,
    pub database_url: String,
    pub wechat_base_url: String,
    shutdown: CancellationToken,
    _fake_server: FakeWeChatServer,
    sqlite_dir: Option<std::path::PathBuf>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.database_url.starts_with("postgres") {
            drop_postgres_database(&self.database_url);
        }
    }
}

/// Drops a test's PostgreSQL database so that runs do not pile them up. Runs
/// on its own thread and runtime: `Drop` cannot await.
pub fn drop_postgres_database(database_url: &str) {
    let Some((_, name)) = database_url.rsplit_once('/') else {
        return;
    };
    let statement = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut connection = PgConnection::connect(&postgres_admin_url()).await?;
            connection.execute(statement.as_str()).await?;
            anyhow::Ok(())
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        eprintln!("could not drop the test database {database_url}");
    }
}

/// A port nobody listens on (for a gateway process the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .expect("a bound port")
        .port()
}

/// A fresh, empty database URL for one test.
pub async fn fresh_database(backend: Backend) -> (String, Option<std::path::PathBuf>) {
    let name = format!("formid_test_{}", uuid::Uuid::new_v4().simple());
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(&name);
            std::fs::create_dir_all(&dir).expect("creating the test directory");
            (format!("sqlite://{}/ledger.db", dir.display()), Some(dir))
        }
        Backend::Postgres => {
            let admin_url = postgres_admin_url();
            let mut connection = PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "PostgreSQL must be reachable at {admin_url} for the test suite: {error}"
                    )
                });
            connection
                .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                .await
                .expect("creating the test database");
            let base = admin_url.rsplit_once('/').expect("a database URL").0;
            (format!("{base}/{name}"), None)
        }
    }
}

/// The settings every test starts from.
pub fn test_settings(database_url: &str, wechat_base_url: &str) -> Value {
    json!({
        "listen": "127.0.0.1:0",
        "database_url": database_url,
        "database_max_connections": 8,
        "wechat": {"base_url": wechat_base_url, "connect_timeout_ms": 1000, "request_timeout_ms": 3000},
        "ledger": {"busy_retries": 2},
        "tokens": {"wait_ms": 5000},
        "apps": {
            APPID: {"secret": "secret-of-app-one"},
            OTHER_APPID: {"secret": "secret-of-app-two"},
        },
        "api_keys": {
            "admin": {"key": ADMIN_KEY, "apps": ["*"], "scopes": ["admin"]},
            "collect": {"key": COLLECT_KEY, "apps": [APPID], "scopes": ["collect"]},
            "send": {"key": SEND_KEY, "apps": [APPID], "scopes": ["send"]},
            "token": {"key": TOKEN_KEY, "apps": [APPID], "scopes": ["token"]},
            "other": {"key": OTHER_APP_KEY, "apps": [OTHER_APPID], "scopes": ["collect", "send", "token"]},
        },
    })
}

/// A gateway with the default test settings.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Logs go to the test output only when `TEST_LOG` is set.
static TRACING: std::sync::Once = std::sync::Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
                .with_test_writer()
                .init();
        }
    });
}

/// A gateway whose settings `adjust` may change first.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Value)) -> TestApp {
    init_tracing();
    let clock = Arc::new(ManualClock::starting_now());
    // The fake reads the gateway's manual clock: both see the same "later".
    let shared = clock.clone();
    let fake = FakeWeChat::new(move || shared.now_ms());
    fake.register_app(APPID, "secret-of-app-one");
    fake.register_app(OTHER_APPID, "secret-of-app-two");
    fake.register_template(APPID, TEMPLATE);
    fake.register_template(OTHER_APPID, TEMPLATE);
    let fake_server = FakeWeChatServer::start(fake.clone(), "127.0.0.1:0")
        .await
        .expect("starting the fake WeChat");
    let (database_url, sqlite_dir) = fresh_database(backend).await;
    let mut settings = test_settings(&database_url, &fake_server.base_url);
    adjust(&mut settings);
    let parts = start_instance(settings, clock.clone()).await;
    TestApp {
        address: parts.address,
        proxy_address: parts.proxy_address,
        metrics_address: parts.metrics_address,
        backlog: parts.backlog,
        client: parts.client,
        fake,
        clock: parts.clock,
        storage: parts.storage,
        token_refresher: parts.token_refresher,
        sweeper: parts.sweeper,
        waiting: parts.waiting,
        scheduled: parts.scheduled,
        recovery: parts.recovery,
        broadcasts: parts.broadcasts,
        catalogue: parts.catalogue,
        webhook_delivery: parts.webhook_delivery,
        stats: parts.stats,
        database_url: parts.database_url,
        wechat_base_url: fake_server.base_url.clone(),
        shutdown: parts.shutdown,
        _fake_server: fake_server,
        sqlite_dir,
    }
}

/// A second gateway instance on the same ledger and fake as `app`.
pub async fn spawn_sibling(app: &TestApp) -> Instance {
    spawn_sibling_with(app, |_| {}).await
}

/// A sibling whose settings `adjust` may change first.
pub async fn spawn_sibling_with(app: &TestApp, adjust: impl FnOnce(&mut Value)) -> Instance {
    start_sibling(app, app.clock.clone(), adjust).await
}

/// A second gateway instance on the same ledger and fake as `app`, on a
/// clock of its own (one that runs ahead or behind `app`'s).
pub async fn spawn_sibling_on_clock(app: &TestApp, clock: Arc<ManualClock>) -> Instance {
    start_sibling(app, clock, |_| {}).await
}

async fn start_sibling(
    app: &TestApp,
    clock: Arc<ManualClock>,
    adjust: impl FnOnce(&mut Value),
) -> Instance {
    let mut settings = test_settings(&app.database_url, &app.wechat_base_url);
    adjust(&mut settings);
    let settings: Settings = serde_json::from_value(settings).expect("valid test settings");
    let application = Application::build(settings, clock)
        .await
        .expect("building a sibling gateway");
    let address = format!("http://127.0.0.1:{}", application.port());
    let shutdown = application.shutdown_signal();
    let token_refresher = application.token_refresher();
    let broadcasts = application.broadcast_worker();
    tokio::spawn(application.run_api_until_stopped());
    Instance {
        address,
        token_refresher,
        broadcasts,
        shutdown,
    }
}

/// Another instance on a shared ledger.
pub struct Instance {
    pub address: String,
    pub token_refresher: TokenRefresher,
    pub broadcasts: BroadcastWorker,
    shutdown: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_instance(settings: Value, clock: Arc<ManualClock>) -> TestAppParts {
    let database_url = settings["database_url"].as_str().unwrap().to_owned();
    let settings: Settings = serde_json::from_value(settings).expect("valid test settings");
    let application = Application::build(settings, clock.clone())
        .await
        .expect("building the gateway");
    let parts = TestAppParts {
        address: format!("http://127.0.0.1:{}", application.port()),
        proxy_address: application
            .proxy_port()
            .map(|port| format!("http://127.0.0.1:{port}")),
        metrics_address: application
            .metrics_port()
            .map(|port| format!("http://127.0.0.1:{port}/metrics")),
        backlog: application.backlog(),
        client: reqwest::Client::new(),
        clock,
        storage: application.storage(),
        token_refresher: application.token_refresher(),
        sweeper: application.sweeper(),
        waiting: application.waiting_sender(),
        scheduled: application.scheduled_sender(),
        recovery: application.recovery(),
        broadcasts: application.broadcast_worker(),
        catalogue: application.catalogue(),
        webhook_delivery: application.webhook_delivery(),
        stats: application.stats(),
        database_url,
        shutdown: application.shutdown_signal(),
    };
    tokio::spawn(application.run_api_until_stopped());
    parts
}

/// A [`TestApp`] before its fake is attached.
struct TestAppParts {
    address: String,
    proxy_address: Option<String>,
    metrics_address: Option<String>,
    backlog: Option<Backlog>,
    client: reqwest::Client,
    clock: Arc<ManualClock>,
    storage: Arc<dyn Storage>,
    token_refresher: TokenRefresher,
    sweeper: Sweeper,
    waiting: WaitingSender,
    scheduled: ScheduledSender,
    recovery: Recovery,
    broadcasts: BroadcastWorker,
    catalogue: Catalogue,
    webhook_delivery: WebhookDelivery,
    stats: Stats,
    database_url: String,
    shutdown: CancellationToken,
}

/// A JSON answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    /// A send with an `Idempotency-Key` header.
    pub async fn send_with_key(&self, key: &str, body: Value) -> Answer {
        let response = self
            .client
            .post(self.url(&format!("/v1/apps/{APPID}/messages")))
            .bearer_auth(SEND_KEY)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// The user accepts `template` in a subscribe prompt: WeChat counts the
    /// grant, and the frontend posts the result under `request_id`.
    pub async fn accept_prompt(&self, openid: &str, template: &str, request_id: &str) {
        self.fake.grant(APPID, openid, template);
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/apps/{APPID}/subscriptions"),
                Some(COLLECT_KEY),
                Some(
                    serde_json::json!({"openid": openid, "request_id": request_id,
                    "result": {"errMsg": "requestSubscribeMessage:ok", template: "accept"}}),
                ),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with a key (or none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        call(&self.client, &self.url(path), method, key, body).await
    }

    pub async fn post_credentials(&self, body: Value) -> Answer {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/credentials"),
            Some(COLLECT_KEY),
            Some(body),
        )
        .await
    }

    /// A user submits a form: the fake mints a formId and the frontend posts it.
    pub async fn collect_form_id(&self, openid: &str) -> String {
        let value = self.fake.mint_form_id(APPID, openid);
        self.post_one(openid, "form_id", &value, None).await;
        value
    }

    /// A user pays: the fake mints a prepay_id and the frontend posts it.
    pub async fn collect_prepay_id(&self, openid: &str) -> String {
        let value = self.fake.mint_prepay_id(APPID, openid);
        self.post_one(openid, "prepay_id", &value, None).await;
        value
    }

    /// Posts one credential and insists it was accepted.
    pub async fn post_one(&self, openid: &str, kind: &str, value: &str, collected_at: Option<i64>) {
        let mut item = json!({"openid": openid, "kind": kind, "value": value});
        if let Some(at) = collected_at {
            item["collected_at"] = at.into();
        }
        let answer = self.post_credentials(item).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.body["accepted"], 1, "{:?}", answer.body);
    }

    pub async fn quota(&self, openid: &str) -> Value {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/apps/{APPID}/users/{openid}/quota"),
                Some(SEND_KEY),
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        answer.body
    }

    pub async fn sends_available(&self, openid: &str) -> i64 {
        self.quota(openid).await["sends_available"]
            .as_i64()
            .unwrap()
    }

    pub async fn send(&self, body: Value) -> Answer {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/messages"),
            Some(SEND_KEY),
            Some(body),
        )
        .await
    }

    /// Sends the standard test template to `openid`.
    pub async fn notify(&self, openid: &str) -> Answer {
        self.send(json!({
            "touser": openid,
            "template_id": TEMPLATE,
            "page": "pages/order/detail?id=1",
            "data": {"keyword1": {"value": "Order 1"}, "keyword2": {"value": "Shipped"}},
        }))
        .await
    }

    pub async fn message(&self, id: &str) -> Answer {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/messages/{id}"),
            Some(SEND_KEY),
            None,
        )
        .await
    }

    pub async fn access_token(&self) -> Answer {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/apps/{APPID}/access_token"),
            Some(TOKEN_KEY),
            None,
        )
        .await
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The form_ids the fake delivered messages with, in order.
    pub fn delivered_form_ids(&self) -> Vec<String> {
        self.fake
            .sends()
            .into_iter()
            .filter(|send| send.delivered)
            .map(|send| send.form_id)
            .collect()
    }
}

/// One HTTP call, its body read as JSON (`Null` when empty or not JSON).
pub async fn call(
    client: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = client.request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("calling the gateway");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("reading the answer");
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Rows of a table, read straight from the ledger.
pub async fn count_rows(app: &TestApp, table: &str) -> i64 {
    use sqlx::Connection;
    let statement = format!("SELECT COUNT(*) FROM {table}");
    if app.database_url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::query_scalar(&statement)
            .fetch_one(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::query_scalar(&statement)
            .fetch_one(&mut connection)
            .await
            .unwrap()
    }
}

/// Runs statements on the ledger beside the gateway.
pub async fn execute_sql(app: &TestApp, statements: &[&str]) {
    use sqlx::{Connection, Executor};
    if app.database_url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(&app.database_url)
            .await
            .unwrap();
        for statement in statements {
            connection.execute(*statement).await.unwrap();
        }
    } else {
        let mut connection = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        for statement in statements {
            connection.execute(*statement).await.unwrap();
        }
    }
}

/// The Python of the venv `name` under the target directory with
/// `requirement` installed from PyPI (`module` imports when it is): made
/// when missing. `.ci/run` prepares the same venvs beforehand.
pub fn pypi_python(name: &str, requirement: &str, module: &str) -> std::path::PathBuf {
    // One installer at a time: tests on both databases, and the crash test,
    // ask for a venv at once on a fresh machine, and a second `venv` or
    // `pip` run over a half-made one fails.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let ready = |python: &std::path::Path| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|status| status.success())
    };
    if !ready(&python) {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (with venv and pip) must be installed for these tests");
        assert!(made.success(), "python3 -m venv failed");
        let installed = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", requirement])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {requirement} failed");
    }
    python
}

/// Runs `script` with `python` (`python -c`), `input` on its standard
/// input; its output, standard output and error captured.
pub fn run_python(python: &std::path::Path, script: &str, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
