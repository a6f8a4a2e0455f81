//! The WeChat-compatible endpoint driven by an SDK nobody here wrote:
//! wechatpy from PyPI (`tests/sdk/wechatpy_driver.py`), pointed at the
//! endpoint by its base URL, against the fake. The SDK's own token fetches
//! land on the endpoint and cost WeChat none.
//!
//! wechatpy lives in a virtualenv under the target directory
//! (`<target>/sdk-venv`), which `.ci/run` prepares and these tests create
//! when it is missing (`python3 -m venv`, `pip install`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::proxy::{
    data_401, grant, ledger_grants, media_bytes, spawn_proxy_app, subscribe_template,
};

/// The wechatpy release the tests and `.ci/run` install.
const WECHATPY: &str = "wechatpy==1.8.18";

/// One install at a time across the suite's threads.
static INSTALL: Mutex<()> = Mutex::new(());

/// The target directory the test binary runs from (`<target>/debug/deps/api-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the target directory")
        .to_path_buf()
}

/// The virtualenv's python with wechatpy installed, installing it first when
/// missing.
fn wechatpy_python() -> PathBuf {
    let _installing = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = target_dir().join("sdk-venv");
    let python = venv.join("bin").join("python");
    let has_wechatpy = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import wechatpy, cryptography"])
            .status()
            .is_ok_and(|status| status.success())
    };
    if has_wechatpy(&python) {
        return python;
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 must be installed for the SDK tests");
    assert!(created.success(), "python3 -m venv failed");
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", WECHATPY, "cryptography"])
        .status()
        .expect("running pip");
    assert!(installed.success(), "pip install {WECHATPY} failed");
    assert!(has_wechatpy(&python));
    python
}

/// One wechatpy process, driven a command at a time.
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Sdk {
    fn start(base_url: &str, appid: &str, secret: &str) -> Self {
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/wechatpy_driver.py");
        let mut child = Command::new(wechatpy_python())
            .arg(driver)
            .args([base_url, appid, secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the wechatpy driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and reads its answer (blocking this worker thread
    /// only: the gateway runs on the others).
    fn ask(&mut self, command: Value) -> Value {
        tokio::task::block_in_place(|| {
            writeln!(self.stdin, "{command}").expect("writing to the driver");
            self.stdin.flush().unwrap();
            let mut line = String::new();
            self.stdout
                .read_line(&mut line)
                .expect("reading the driver");
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("the driver said {line:?}"))
        })
    }

    /// A command that must succeed; its result.
    fn ok(&mut self, command: Value) -> Value {
        let answer = self.ask(command.clone());
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        answer["result"].clone()
    }

    /// The SDK's clock follows the test's manual clock.
    fn sync_clock(&mut self, app: &TestApp) {
        self.ok(json!({"op": "clock", "now_ms": app.now_ms()}));
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sdk_for(app: &TestApp) -> Sdk {
    let mut sdk = Sdk::start(
        app.proxy_address.as_deref().unwrap(),
        APPID,
        "secret-of-app-one",
    );
    sdk.sync_clock(app);
    sdk
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn wechatpy_takes_the_central_token_and_sends_through_the_ledger(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let template = subscribe_template(&app).await;
    let mut sdk = sdk_for(&app);
    let token = sdk.ok(json!({"op": "token"}));
    assert_eq!(token.as_str(), app.fake.current_token(APPID).as_deref());
    assert_eq!(app.fake.token_fetches(APPID), 1, "the gateway's own fetch");
    // It lists the subscribe templates through the endpoint.
    let listed = sdk.ok(json!({"op": "templates"}));
    assert_eq!(
        listed["data"][0]["priTmplId"],
        template.as_str(),
        "{listed}"
    );
    // A subscribe send spends the ledger's grant and answers WeChat's msgid.
    grant(&app, "o-py", &template).await;
    let send =
        json!({"op": "subscribe", "touser": "o-py", "template_id": template, "data": data_401()});
    let sent = sdk.ok(send.clone());
    assert_eq!(sent["errcode"], 0, "{sent}");
    assert!(sent["msgid"].is_u64());
    assert_eq!(ledger_grants(&app, "o-py").await, 0);
    // None left: WeChat's 43101, and no call at the fake.
    let refused = sdk.ask(send);
    assert_eq!(refused["errcode"], 43101, "{refused}");
    assert_eq!(app.fake.subscribe_sends().len(), 1);
    // WeChat retires the token: the endpoint's retry covers it.
    app.fake.invalidate_tokens(APPID);
    assert_eq!(sdk.ok(json!({"op": "templates"}))["errcode"], 0);
    // The SDK's token runs out (by the test's clock, which the SDK does not
    // see past its own margin): 42001, and wechatpy's own retry path takes
    // the new token from the endpoint.
    app.advance(chrono::Duration::seconds(7_300));
    assert_eq!(sdk.ok(json!({"op": "templates"}))["errcode"], 0);
    // A small media file, byte for byte.
    let file = media_bytes();
    let uploaded = sdk.ok(json!({"op": "upload", "hex": hex::encode(&file)}));
    let media_id = uploaded["media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{uploaded}"));
    assert_eq!(app.fake.media()[media_id].bytes, file);
    let downloaded = sdk.ok(json!({"op": "download", "media_id": media_id}));
    assert_eq!(downloaded["hex"], hex::encode(&file));
    let stats = sdk.ok(json!({"op": "stats"}));
    assert_eq!(stats["errcodes"], json!([43101, 42001]), "{stats}");
    // The fake counts the gateway's fetches only: the first, the refresh
    // after WeChat retired the token, and one after it ran out.
    assert_eq!(app.fake.token_fetches(APPID), 3);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn two_wechatpy_processes_and_the_gateway_share_one_app(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let template = subscribe_template(&app).await;
    let mut sdks = [sdk_for(&app), sdk_for(&app)];
    // Four hours of the test's clock in steps of ten minutes: every step,
    // the refresher's pass, each SDK lists templates and sends, and the
    // gateway sends through its own API.
    for step in 0..24 {
        app.token_refresher.run_once().await.unwrap();
        for (n, sdk) in sdks.iter_mut().enumerate() {
            sdk.sync_clock(&app);
            assert_eq!(sdk.ok(json!({"op": "templates"}))["errcode"], 0);
            let openid = format!("o-{step}-{n}");
            grant(&app, &openid, &template).await;
            let sent = sdk.ok(json!({"op": "subscribe", "touser": openid, "template_id": template, "data": data_401()}));
            assert_eq!(sent["errcode"], 0, "{sent}");
        }
        let openid = format!("o-{step}-gw");
        grant(&app, &openid, &template).await;
        let sent = app
            .send(json!({"touser": openid, "template_id": template, "data": data_401()}))
            .await;
        assert_eq!(sent.status, 200, "{:?}", sent.body);
        assert_eq!(
            sent.body["attempts"].as_array().map(Vec::len),
            Some(1),
            "{:?}",
            sent.body
        );
        app.advance(chrono::Duration::minutes(10));
    }
    for sdk in &mut sdks {
        let stats = sdk.ok(json!({"op": "stats"}));
        assert_eq!(stats["errcodes"], json!([]), "no call was refused: {stats}");
    }
    // One fetch per lifetime (two hours): the first and two refreshes.
    assert_eq!(app.fake.token_fetches(APPID), 3);
    assert_eq!(app.fake.subscribe_sends().len(), 24 * 3);
}

/// The co-wechat-api release the tests and `.ci/run` install from npm.
const CO_WECHAT_API: &str = "co-wechat-api@3.11.0";

/// `node_modules` holding co-wechat-api, installing it first when missing.
fn co_wechat_api_modules() -> PathBuf {
    let _installing = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let prefix = target_dir().join("sdk-node");
    let modules = prefix.join("node_modules");
    if !modules.join("co-wechat-api").exists() {
        std::fs::create_dir_all(&prefix).unwrap();
        let installed = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&prefix)
            .arg(CO_WECHAT_API)
            .status()
            .expect("npm must be installed for the SDK tests");
        assert!(installed.success(), "npm install {CO_WECHAT_API} failed");
    }
    modules
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn co_wechat_api_from_npm_takes_the_central_token_too(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let template = subscribe_template(&app).await;
    grant(&app, "o-node", &template).await;
    let spec = json!({
        "template_id": template,
        "granted": "o-node",
        "refused": "o-none",
        "data": data_401(),
        "media_hex": hex::encode(media_bytes()),
    });
    let driver =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/co_wechat_api_driver.js");
    let modules = co_wechat_api_modules();
    let proxy = app.proxy_address.clone().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(driver)
            .args([
                proxy.as_str(),
                APPID,
                "secret-of-app-one",
                &spec.to_string(),
            ])
            .env("NODE_PATH", modules)
            .output()
            .expect("running node")
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "the driver said {} / {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(
        out["token"]["result"].as_str(),
        app.fake.current_token(APPID).as_deref(),
        "{out}"
    );
    assert_eq!(out["sent"]["result"]["errcode"], 0, "{out}");
    assert!(out["sent"]["result"]["msgid"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(out["refused"]["errcode"], 43101, "{out}");
    assert_eq!(app.fake.subscribe_sends().len(), 1, "43101 without a call");
    assert_eq!(ledger_grants(&app, "o-node").await, 0);
    let media_id = out["uploaded"]["result"]["media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(app.fake.media()[media_id].bytes, media_bytes());
    assert_eq!(app.fake.token_fetches(APPID), 1, "the SDK fetched none");
}
