//! Secrets stay secret: a gateway process logging at TRACE runs a login, a
//! collection through `/me`, a send, a token refresh and a key creation, and
//! some refusals; no app secret, access token, session token, session_key,
//! API key, login code or credential value appears in its logs or in any
//! error body, in text lines or in JSON ones (`log_format = "json"`).

use std::io::{BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_wechat::{FakeWeChat, FakeWeChatServer, SystemClock};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{call, free_port, Answer, TEMPLATE};

const APP: &str = "wxsecret00000001";
const APP_SECRET: &str = "app-secret-9f3c1e7a55d2";
const ADMIN: &str = "admin-key-1b7e44c0d9a3f2";
const SEND: &str = "send-key-6a0d2f9e8c7b15";
const TOKEN: &str = "token-key-3c5e7a9b1d2f40";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_trace_log_or_an_error_body() {
    run_with_secrets("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_json_log_line() {
    let logs = run_with_secrets("json").await;
    let mut in_requests = 0;
    for line in logs.lines().filter(|line| !line.trim().is_empty()) {
        let line: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(line["level"].is_string(), "{line}");
        let spans = line["spans"].as_array().cloned().unwrap_or_default();
        if spans.first().is_some_and(|span| span["name"] == "request") {
            in_requests += 1;
            assert!(spans[0]["request_id"].is_string(), "{line}");
        }
    }
    assert!(in_requests > 0, "no line written inside a request: {logs}");
}

/// Runs the scenario in a gateway logging at TRACE in `format`; checks
/// that no secret is in its logs or error bodies, and returns the logs.
async fn run_with_secrets(format: &str) -> String {
    let fake = FakeWeChat::new(SystemClock);
    fake.register_app(APP, APP_SECRET);
    fake.register_template(APP, TEMPLATE);
    let server = FakeWeChatServer::start(fake.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let dir =
        std::env::temp_dir().join(format!("formid-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = \"sqlite://{dir}/ledger.db\"\n[wechat]\nbase_url = \"{base}\"\n\
             [apps.{APP}]\nsecret = \"{APP_SECRET}\"\n\
             [api_keys.admin]\nkey = \"{ADMIN}\"\napps = [\"*\"]\nscopes = [\"admin\"]\n\
             [api_keys.send]\nkey = \"{SEND}\"\napps = [\"*\"]\nscopes = [\"send\"]\n\
             [api_keys.token]\nkey = \"{TOKEN}\"\napps = [\"*\"]\nscopes = [\"token\"]\n",
            dir = dir.display(),
            base = server.base_url,
        ),
    )
    .unwrap();
    let address = format!("http://127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_formid-gateway"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("FORMID__LISTEN", address.trim_start_matches("http://"))
        .env("RUST_LOG", "trace")
        .env("FORMID__LOG_FORMAT", format)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let collect = |pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(pipe).read_to_string(&mut text);
            text
        })
    };
    let (err_text, out_text) = (collect(Box::new(stderr)), collect(Box::new(stdout)));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = |method: Method, path: String, key: Option<String>, body: Option<Value>| {
        let client = client.clone();
        let url = format!("{address}{path}");
        async move { call(&client, &url, method, key.as_deref(), body).await }
    };
    let mut errors: Vec<Answer> = Vec::new();

    let code = fake.mint_login_code(APP, "o-secret");
    let login = run(
        Method::POST,
        format!("/v1/apps/{APP}/sessions"),
        None,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let session = login.body["session_token"].as_str().unwrap().to_owned();
    let form_id = fake.mint_form_id(APP, "o-secret");
    let posted = run(
        Method::POST,
        format!("/v1/apps/{APP}/me/credentials"),
        Some(session.clone()),
        Some(json!({"kind": "form_id", "value": form_id})),
    )
    .await;
    assert_eq!(posted.status, 200, "{:?}", posted.body);
    let sent = run(
        Method::POST,
        format!("/v1/apps/{APP}/messages"),
        Some(SEND.into()),
        Some(json!({"touser": "o-secret", "template_id": TEMPLATE, "data": {"keyword1": {"value": "x"}}})),
    )
    .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    let first_token = fake.current_token(APP).expect("the send fetched a token");
    fake.invalidate_tokens(APP);
    let refreshed = run(
        Method::POST,
        format!("/v1/apps/{APP}/access_token/refresh"),
        Some(TOKEN.into()),
        Some(json!({"stale_token": first_token})),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
    let created = run(
        Method::POST,
        "/v1/admin/keys".into(),
        Some(ADMIN.into()),
        Some(json!({"name": "orders", "apps": [APP], "scopes": ["send"]})),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let new_key = created.body["key"].as_str().unwrap().to_owned();
    // Refusals that hold a secret in their request.
    let replay = run(
        Method::POST,
        format!("/v1/apps/{APP}/sessions"),
        None,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(
        replay.body, login.body,
        "a replayed code answers the same session"
    );
    errors.push(
        run(
            Method::POST,
            format!("/v1/apps/{APP}/sessions"),
            None,
            Some(json!({"code": "never-issued-code"})),
        )
        .await,
    );
    fake.push_login_faults([fake_wechat::LoginFault::Errcode(40226)]);
    let blocked_code = fake.mint_login_code(APP, "o-blocked");
    errors.push(
        run(
            Method::POST,
            format!("/v1/apps/{APP}/sessions"),
            None,
            Some(json!({"code": blocked_code})),
        )
        .await,
    );
    errors.push(
        run(
            Method::GET,
            format!("/v1/apps/{APP}/me/quota"),
            Some(format!("{session}x")),
            None,
        )
        .await,
    );
    errors.push(
        run(
            Method::GET,
            format!("/v1/apps/{APP}/me/quota"),
            Some(new_key.clone()),
            None,
        )
        .await,
    );
    errors.push(
        run(
            Method::GET,
            format!("/v1/apps/{APP}/users/o/quota"),
            Some(format!("{new_key}x")),
            None,
        )
        .await,
    );
    errors.push(
        run(
            Method::POST,
            format!("/v1/apps/{APP}/credentials"),
            Some(session.clone()),
            Some(json!({"openid": "o", "kind": "form_id", "value": form_id})),
        )
        .await,
    );
    errors.push(
        run(
            Method::POST,
            format!("/v1/apps/{APP}/me/credentials"),
            Some(session.clone()),
            Some(json!({"openid": "o-secret", "kind": "form_id", "value": form_id})),
        )
        .await,
    );
    let out = run(
        Method::DELETE,
        format!("/v1/apps/{APP}/sessions/current"),
        Some(session.clone()),
        None,
    )
    .await;
    assert_eq!(out.status, 204);

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
    server.stop().await;
    let logs = format!("{}{}", err_text.join().unwrap(), out_text.join().unwrap());
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "not logging at TRACE: {logs}"
    );
    assert!(logs.contains("session created"), "{logs}");
    let mut secrets = vec![
        ("app secret", APP_SECRET.to_owned()),
        ("admin key", ADMIN.to_owned()),
        ("send key", SEND.to_owned()),
        ("token key", TOKEN.to_owned()),
        ("created key", new_key.clone()),
        ("session token", session.clone()),
        ("login code", code.clone()),
        ("blocked login code", blocked_code.clone()),
        ("form_id", form_id.clone()),
        ("first access token", first_token.clone()),
        ("current access token", fake.current_token(APP).unwrap()),
    ];
    for (index, key) in fake.session_keys().into_iter().enumerate() {
        secrets.push((
            if index == 0 {
                "session_key"
            } else {
                "a later session_key"
            },
            key,
        ));
    }
    let bodies: String = errors
        .iter()
        .map(|answer| answer.body.to_string())
        .collect();
    assert!(errors.iter().all(|answer| answer.status >= 400), "{bodies}");
    let mut leaks = Vec::new();
    for (name, secret) in &secrets {
        if logs.contains(secret.as_str()) {
            leaks.push(format!("{name} in the logs"));
        }
        if bodies.contains(secret.as_str()) {
            leaks.push(format!("{name} in an error body"));
        }
    }
    assert!(leaks.is_empty(), "{leaks:?}");
    let _ = std::fs::remove_dir_all(dir);
    logs
}
