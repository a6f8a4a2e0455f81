//! The WeChat-compatible endpoint (`proxy.listen`), spoken to as an SDK
//! would: the central token handed out without a fetch, calls forwarded
//! with the gateway's token, subscribe sends through the ledger, media byte
//! for byte, and the hostile-input table.

use std::io::{Read, Write};
use std::time::Duration;

use rstest::rstest;
use serde_json::{json, Value};

use formid_gateway::ledger::states::Channel;

use crate::helpers::*;

/// A gateway with the endpoint on, body limits small enough to test.
pub async fn spawn_proxy_app(backend: Backend) -> TestApp {
    spawn_proxy_app_with(backend, |_| {}).await
}

/// [`spawn_proxy_app`] whose settings `adjust` may change first.
pub async fn spawn_proxy_app_with(backend: Backend, adjust: impl FnOnce(&mut Value)) -> TestApp {
    spawn_app_with(backend, |settings| {
        settings["proxy"] = json!({"listen": "127.0.0.1:0", "max_body_bytes": 65_536});
        settings["http"] = json!({"body_timeout_ms": 500});
        adjust(settings);
    })
    .await
}

/// The endpoint's URL of `path_and_query`.
pub fn proxy_url(app: &TestApp, path_and_query: &str) -> String {
    let base = app.proxy_address.as_deref().expect("the endpoint is on");
    format!("{base}{path_and_query}")
}

/// A GET at the endpoint, its body as JSON.
pub async fn proxy_get(app: &TestApp, path_and_query: &str) -> Value {
    let response = app
        .client
        .get(proxy_url(app, path_and_query))
        .send()
        .await
        .expect("calling the endpoint");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON answer")
}

/// A JSON POST at the endpoint, its body as JSON.
pub async fn proxy_post(app: &TestApp, path_and_query: &str, body: &Value) -> Value {
    let response = app
        .client
        .post(proxy_url(app, path_and_query))
        .json(body)
        .send()
        .await
        .expect("calling the endpoint");
    response.json().await.expect("a JSON answer")
}

/// The token the endpoint hands an SDK.
pub async fn sdk_token(app: &TestApp) -> String {
    let answer = proxy_get(
        app,
        &format!(
            "/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret=secret-of-app-one"
        ),
    )
    .await;
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a token: {answer}"))
        .to_owned()
}

/// A one-time subscribe template at the fake and in the app's catalogue.
pub async fn subscribe_template(app: &TestApp) -> String {
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .expect("the fake adds the template");
    app.catalogue
        .refresh(APPID, &[Channel::Subscribe])
        .await
        .expect("the catalogue reads the template");
    template
}

/// The user accepts `template` once: WeChat counts it and the frontend
/// posts it to the ledger.
pub async fn grant(app: &TestApp, openid: &str, template: &str) {
    app.fake.grant(APPID, openid, template);
    let answer = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{APPID}/subscriptions"),
            Some(COLLECT_KEY),
            Some(json!({
                "openid": openid,
                "request_id": uuid::Uuid::new_v4().to_string(),
                "result": {"errMsg": "requestSubscribeMessage:ok", template: "accept"},
            })),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

pub fn data_401() -> Value {
    json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN20240501001"}})
}

/// The one-time grants the ledger holds for `openid`, of any template.
pub async fn ledger_grants(app: &TestApp, openid: &str) -> i64 {
    app.quota(openid).await["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["one_time_grants"].as_i64().unwrap_or(0))
        .sum()
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoints_answer_the_central_token_without_a_fetch(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let token = sdk_token(&app).await;
    assert_eq!(Some(token.clone()), app.fake.current_token(APPID));
    // Every SDK "fetch" after the first is a read of the central token.
    for _ in 0..3 {
        assert_eq!(sdk_token(&app).await, token);
    }
    let stable = proxy_post(
        &app,
        "/cgi-bin/stable_token",
        &json!({"grant_type": "client_credential", "appid": APPID, "secret": "secret-of-app-one"}),
    )
    .await;
    assert_eq!(stable["access_token"], token.as_str());
    assert_eq!(stable["expires_in"], 7200);
    // A forced refresh of a token WeChat accepts is a check, not a fetch.
    let forced = proxy_post(
        &app,
        "/cgi-bin/stable_token",
        &json!({"grant_type": "client_credential", "appid": APPID, "secret": "secret-of-app-one", "force_refresh": true}),
    )
    .await;
    assert_eq!(forced["access_token"], token.as_str());
    assert_eq!(app.fake.token_fetches(APPID), 1, "the gateway's one fetch");
    // The remaining lifetime, not WeChat's full one.
    app.advance(chrono::Duration::seconds(1_000));
    assert_eq!(
        proxy_post(
            &app,
            "/cgi-bin/stable_token",
            &json!({"grant_type": "client_credential", "appid": APPID, "secret": "secret-of-app-one"}),
        )
        .await["expires_in"],
        6_200
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_forwarded_with_the_gateways_token_and_retried_once_after_a_token_errcode(
    #[case] backend: Backend,
) {
    let app = spawn_proxy_app(backend).await;
    subscribe_template(&app).await;
    let token = sdk_token(&app).await;
    let listed = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/gettemplate?access_token={token}"),
    )
    .await;
    assert_eq!(listed["errcode"], 0, "{listed}");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));
    // WeChat retires every token of the app: the endpoint refreshes (once)
    // and calls again; the caller never sees the rejection, and may keep
    // using the token it holds.
    app.fake.invalidate_tokens(APPID);
    let fetches = app.fake.token_fetches(APPID);
    let listed = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/gettemplate?access_token={token}"),
    )
    .await;
    assert_eq!(listed["errcode"], 0, "{listed}");
    assert_eq!(app.fake.token_fetches(APPID), fetches + 1);
    let listed = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/gettemplate?access_token={token}"),
    )
    .await;
    assert_eq!(listed["errcode"], 0, "{listed}");
    assert_eq!(app.fake.token_fetches(APPID), fetches + 1, "one refresh");
    // Another errcode is WeChat's answer, not retried.
    let bad = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/getpubtemplatekeywords?access_token={token}&tid=notanumber"),
    )
    .await;
    assert_ne!(bad["errcode"], 0, "{bad}");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_send_spends_a_grant_of_the_ledger(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let template = subscribe_template(&app).await;
    let token = sdk_token(&app).await;
    grant(&app, "user-1", &template).await;
    assert_eq!(ledger_grants(&app, "user-1").await, 1);
    let path = format!("/cgi-bin/message/subscribe/send?access_token={token}");
    let body = json!({"touser": "user-1", "template_id": template, "data": data_401()});
    let sent = proxy_post(&app, &path, &body).await;
    assert_eq!(sent["errcode"], 0, "{sent}");
    assert!(
        sent["msgid"].is_u64(),
        "WeChat's msgid, as a number: {sent}"
    );
    assert_eq!(ledger_grants(&app, "user-1").await, 0, "the grant is spent");
    assert_eq!(app.fake.subscribe_sends().len(), 1);
    // No grant left: 43101 without a call to WeChat.
    let refused = proxy_post(&app, &path, &body).await;
    assert_eq!(refused["errcode"], 43101, "{refused}");
    assert_eq!(app.fake.subscribe_sends().len(), 1, "no call at WeChat");
    // A body the template's rules refuse: 47003, nothing spent.
    grant(&app, "user-1", &template).await;
    let wrong =
        json!({"touser": "user-1", "template_id": template, "data": {"thing1": {"value": "x"}}});
    assert_eq!(proxy_post(&app, &path, &wrong).await["errcode"], 47003);
    assert_eq!(ledger_grants(&app, "user-1").await, 1);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_ledger_sends_is_forwarded_as_is(#[case] backend: Backend) {
    let app = spawn_proxy_app_with(backend, |settings| {
        settings["proxy"]["apps"] = json!({APPID: {"ledger_sends": false}});
    })
    .await;
    let template = subscribe_template(&app).await;
    let token = sdk_token(&app).await;
    // The user accepted at WeChat; the ledger was never told.
    app.fake.grant(APPID, "user-1", &template);
    let path = format!("/cgi-bin/message/subscribe/send?access_token={token}");
    let body = json!({"touser": "user-1", "template_id": template, "data": data_401()});
    let sent = proxy_post(&app, &path, &body).await;
    assert_eq!(sent["errcode"], 0, "{sent}");
    // WeChat's own 43101 comes back as it came.
    assert_eq!(proxy_post(&app, &path, &body).await["errcode"], 43101);
    assert_eq!(app.fake.subscribe_sends().len(), 2);
}

/// A one-pixel PNG with every byte value a text path could mangle.
pub fn media_bytes() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..=255u8).chain(b"\r\n--boundary\r\n".iter().copied()));
    bytes
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_passes_byte_for_byte(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let token = sdk_token(&app).await;
    let file = media_bytes();
    let mut body = b"--XBOUNDARYX\r\nContent-Disposition: form-data; name=\"media\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend(&file);
    body.extend(b"\r\n--XBOUNDARYX--\r\n");
    let uploaded: Value = app
        .client
        .post(proxy_url(
            &app,
            &format!("/cgi-bin/media/upload?access_token={token}&type=image"),
        ))
        .header("content-type", "multipart/form-data; boundary=XBOUNDARYX")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let media_id = uploaded["media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{uploaded}"));
    assert_eq!(
        app.fake.media()[media_id].bytes,
        file,
        "uploaded byte for byte"
    );
    let downloaded = app
        .client
        .get(proxy_url(
            &app,
            &format!("/cgi-bin/media/get?access_token={token}&media_id={media_id}"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.headers()["content-type"], "image/png");
    assert!(downloaded.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("p.png"));
    assert_eq!(
        downloaded.bytes().await.unwrap().to_vec(),
        file,
        "downloaded byte for byte"
    );
}

/// One raw HTTP/1.1 exchange: the status and the body, the request exactly
/// as written (no client normalises its path).
fn raw_exchange(address: &str, request: &str) -> (u16, String) {
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// The hostile-input table of the endpoint: each row a request and the
/// answer WeChat (or a careful proxy) gives; none reaches WeChat unless the
/// row says so.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_at_the_endpoint(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let token = sdk_token(&app).await;
    let other_token = {
        let answer = proxy_get(
            &app,
            &format!("/cgi-bin/token?grant_type=client_credential&appid={OTHER_APPID}&secret=secret-of-app-two"),
        )
        .await;
        answer["access_token"].as_str().unwrap().to_owned()
    };
    let fetches = app.fake.token_fetches(APPID);
    let token_rows: &[(&str, i64)] = &[
        (
            "grant_type=client_credential&appid=wxtest0000000001&secret=wrong",
            40125,
        ),
        (
            "grant_type=client_credential&appid=wxtest0000000001&secret=secret-of-app-two",
            40125,
        ),
        (
            "grant_type=client_credential&appid=wxtest0000000001&secret=secret-of-app-on",
            40125,
        ),
        (
            "grant_type=client_credential&appid=wxunknown&secret=secret-of-app-one",
            40013,
        ),
        ("grant_type=client_credential&appid=wxtest0000000001", 41004),
        (
            "grant_type=client_credential&secret=secret-of-app-one",
            41002,
        ),
        (
            "grant_type=password&appid=wxtest0000000001&secret=secret-of-app-one",
            40002,
        ),
    ];
    for (query, errcode) in token_rows {
        let answer = proxy_get(&app, &format!("/cgi-bin/token?{query}")).await;
        assert_eq!(answer["errcode"], *errcode, "{query}: {answer}");
        assert!(answer.get("access_token").is_none());
    }
    let stable = proxy_post(
        &app,
        "/cgi-bin/stable_token",
        &json!({"grant_type": "client_credential", "appid": APPID, "secret": "nope", "force_refresh": true}),
    )
    .await;
    assert_eq!(stable["errcode"], 40125);
    assert_eq!(
        app.fake.token_fetches(APPID),
        fetches,
        "no fetch for any of them"
    );

    let calls = app.fake.manage_calls().len();
    // A token WeChat issued straight to someone, never through the gateway,
    // a made-up one, and a token given twice: 40001.
    for query in [
        "access_token=made-up".to_owned(),
        format!("access_token={token}x"),
        format!("access_token={token}&access_token={token}"),
    ] {
        let answer = proxy_get(&app, &format!("/wxaapi/newtmpl/gettemplate?{query}")).await;
        assert_eq!(answer["errcode"], 40001, "{answer}");
    }
    assert_eq!(
        proxy_get(&app, "/wxaapi/newtmpl/gettemplate").await["errcode"],
        41001
    );
    // Another app's token speaks for that app only: its templates, not ours.
    let theirs = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/gettemplate?access_token={other_token}"),
    )
    .await;
    assert_eq!(theirs["errcode"], 0);
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0));
    // Paths that are not plain segments never leave.
    let proxy = app.proxy_address.clone().unwrap();
    for path in [
        "/cgi-bin/../cgi-bin/token",
        "/wxaapi/newtmpl/%2e%2e/gettemplate",
        "/wxaapi%2Fnewtmpl%2Fgettemplate",
        "/wxaapi//newtmpl/gettemplate",
        "/wxaapi/newtmpl/gettemplate/",
        "/wxaapi/newtmpl/get%74emplate",
        "/CGI-BIN/TOKEN",
        "/cgi-bin/Stable_Token",
    ] {
        let request = format!(
            "GET {path}?access_token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_exchange(&proxy, &request);
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(
        app.fake.manage_calls().len(),
        calls + 1,
        "only the other app's call went out"
    );
    // A Host header, or an absolute URI, naming another host: the call goes to
    // the configured WeChat all the same.
    for target in [
        format!("/wxaapi/newtmpl/gettemplate?access_token={token}"),
        format!("http://evil.example.com/wxaapi/newtmpl/gettemplate?access_token={token}"),
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_exchange(&proxy, &request);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"errcode\":0"), "{body}");
    }
    assert_eq!(app.fake.manage_calls().len(), calls + 3);
    // A huge body: refused before WeChat.
    let huge = app
        .client
        .post(proxy_url(
            &app,
            &format!("/cgi-bin/media/upload?access_token={token}&type=image"),
        ))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    assert!(app.fake.media().is_empty());
    // A stalled body: cut off after `http.body_timeout_ms`.
    let stalled = format!(
        "POST /cgi-bin/media/upload?access_token={token}&type=image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\nonly a little"
    );
    let started = std::time::Instant::now();
    let (status, _) = tokio::task::spawn_blocking(move || raw_exchange(&proxy, &stalled))
        .await
        .unwrap();
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(app.fake.media().is_empty());
    // A token past the lifetime it was handed out with: 42001 (WeChat's
    // "expired"), and the SDK takes a new one.
    app.advance(chrono::Duration::seconds(7_201));
    let expired = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/gettemplate?access_token={token}"),
    )
    .await;
    assert_eq!(expired["errcode"], 42001, "{expired}");
    let fresh = sdk_token(&app).await;
    assert_ne!(fresh, token);
    let listed = proxy_get(
        &app,
        &format!("/wxaapi/newtmpl/gettemplate?access_token={fresh}"),
    )
    .await;
    assert_eq!(listed["errcode"], 0);
}

/// A real gateway process with the endpoint on, its log read whole: no line
/// shows the secret, a token or a js_code, whatever the calls were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_shows_a_secret_or_a_token() {
    const SECRET: &str = "S3cretOfTheLogTest0123";
    const APP: &str = "wxlogtest00000001";
    let fake = fake_wechat::FakeWeChat::new(fake_wechat::SystemClock);
    fake.register_app(APP, SECRET);
    let server = fake_wechat::FakeWeChatServer::start(fake.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "formid-proxy-log-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, proxy_port) = (free_port(), free_port());
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"sqlite://{dir}/ledger.db\"\n[wechat]\nbase_url = \"{base}\"\n\
             [proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n[apps.{APP}]\nsecret = \"{SECRET}\"\n\
             [api_keys.a]\nkey = \"0123456789abcdef0123\"\napps = [\"*\"]\nscopes = [\"admin\"]\n",
            dir = dir.display(),
            base = server.base_url,
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_formid-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("FORMID__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug,sqlx=info,hyper=info,h2=info,rustls=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let (out, err) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token_url =
        format!("{proxy}/cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET}");
    let answer: Value = client
        .get(&token_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let calls = [
        format!("{proxy}/wxaapi/newtmpl/gettemplate?access_token={token}"),
        format!("{proxy}/wxaapi/newtmpl/gettemplate?access_token={token}XX"),
        format!("{proxy}/sns/jscode2session?appid={APP}&secret={SECRET}&js_code=JsCodeOfTheLogTest&grant_type=authorization_code"),
        format!("{proxy}/cgi-bin/../x?access_token={token}&secret={SECRET}"),
        format!("{proxy}/cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET}X"),
    ];
    for url in calls {
        client.get(url).send().await.unwrap();
    }
    client
        .post(format!("{proxy}/cgi-bin/stable_token"))
        .json(&json!({"grant_type": "client_credential", "appid": APP, "secret": SECRET}))
        .send()
        .await
        .unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let log = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(
        log.contains("proxy_forward"),
        "the calls were logged: {log}"
    );
    for secret in [SECRET, &token[..40], "JsCodeOfTheLogTest"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The retired template send is forwarded and answers what WeChat answers;
/// forwards stand behind the sends' breaker, which opens on WeChat's
/// failures and lets a probe through after its cooldown (the bound does not
/// block recovery).
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_share_the_breaker_and_recover_after_its_cooldown(#[case] backend: Backend) {
    let app = spawn_proxy_app(backend).await;
    let token = sdk_token(&app).await;
    let path = format!("/cgi-bin/message/wxopen/template/send?access_token={token}");
    let body = json!({"touser": "o-legacy", "template_id": TEMPLATE, "form_id": "made-up"});
    app.fake.set_retired(true);
    assert_eq!(proxy_post(&app, &path, &body).await["errcode"], 45103);
    app.fake.set_retired(false);
    // Five failures in a row (WeChat's front answering 502) open the circuit.
    app.fake
        .push_send_faults((0..5).map(|_| fake_wechat::Fault::HttpStatus(502)));
    for _ in 0..5 {
        let response = app
            .client
            .post(proxy_url(&app, &path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "WeChat's status as it came");
    }
    let calls = app.fake.sends().len();
    assert_eq!(proxy_post(&app, &path, &body).await["errcode"], -1);
    assert_eq!(
        app.fake.sends().len(),
        calls,
        "the open circuit made no call"
    );
    // After the cooldown, a probe goes out and WeChat's answer comes back.
    app.advance(chrono::Duration::seconds(11));
    let answer = proxy_post(&app, &path, &body).await;
    assert_eq!(app.fake.sends().len(), calls + 1, "{answer}");
    assert_ne!(answer["errcode"], -1, "{answer}");
    assert_ne!(answer["errcode"], 0, "a made-up form_id: {answer}");
}
