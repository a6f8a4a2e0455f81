//! Mini-program login sessions: `wx.login` → a session → the `/me` routes,
//! with no API key on the client; a replayed code; WeChat's refusals; the
//! bad-input table of the session routes; CORS; the per-session and per-IP
//! limits and the recovery they leave room for.

use chrono::Duration;
use fake_wechat::LoginFault;
use reqwest::Method;
use rstest::rstest;
use serde_json::{json, Value};

use crate::helpers::*;

/// The user calls `wx.login` and the mini-program posts the code.
pub async fn login(app: &TestApp, appid: &str, openid: &str) -> Answer {
    let code = app.fake.mint_login_code(appid, openid);
    post_code(app, appid, &code).await
}

pub async fn post_code(app: &TestApp, appid: &str, code: &str) -> Answer {
    app.call(
        Method::POST,
        &format!("/v1/apps/{appid}/sessions"),
        None,
        Some(json!({"code": code})),
    )
    .await
}

/// A session token of `openid` in the test app.
pub async fn session_of(app: &TestApp, openid: &str) -> String {
    let answer = login(app, APPID, openid).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["session_token"].as_str().unwrap().to_owned()
}

pub async fn me(
    app: &TestApp,
    method: Method,
    rest: &str,
    token: &str,
    body: Option<Value>,
) -> Answer {
    app.call(
        method,
        &format!("/v1/apps/{APPID}/me/{rest}"),
        Some(token),
        body,
    )
    .await
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mini_program_posts_for_its_user_and_a_send_spends_it(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    let template = app
        .fake
        .add_subscribe_template(APPID, 401, &[1, 2])
        .expect("the fake adds the template");
    let answer = login(&app, APPID, "o-mini").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["openid"], "o-mini");
    let token = answer.body["session_token"].as_str().unwrap().to_owned();
    assert!(
        token.starts_with("fgs_") && token.len() >= 4 + 22,
        "{token}"
    );
    assert!(answer.body["expires_at"].is_string());
    assert_eq!(
        answer.body.as_object().unwrap().len(),
        3,
        "{:?}",
        answer.body
    );

    let form_id = app.fake.mint_form_id(APPID, "o-mini");
    let posted = me(
        &app,
        Method::POST,
        "credentials",
        &token,
        Some(json!({"kind": "form_id", "value": form_id})),
    )
    .await;
    assert_eq!(posted.status, 200, "{:?}", posted.body);
    assert_eq!(posted.body["accepted"], 1);
    app.fake.grant(APPID, "o-mini", &template);
    let prompt = json!({"request_id": "p-1", "result": {"errMsg": "requestSubscribeMessage:ok", template.as_str(): "accept"}});
    let recorded = me(
        &app,
        Method::POST,
        "subscriptions",
        &token,
        Some(prompt.clone()),
    )
    .await;
    assert_eq!(recorded.status, 200, "{:?}", recorded.body);
    assert_eq!(recorded.body["granted"], 1);
    assert_eq!(recorded.body["openid"], "o-mini");
    let again = me(&app, Method::POST, "subscriptions", &token, Some(prompt)).await;
    assert_eq!(again.body["replayed"], true, "{:?}", again.body);
    let quota = me(&app, Method::GET, "quota", &token, None).await;
    assert_eq!(quota.status, 200, "{:?}", quota.body);
    assert_eq!(quota.body["openid"], "o-mini");
    assert_eq!(quota.body["sends_available"], 1);

    // A business service spends both: the form_id and the grant.
    assert_eq!(app.notify("o-mini").await.status, 200);
    assert_eq!(app.delivered_form_ids(), vec![form_id]);
    let data =
        json!({"thing1": {"value": "Blue mug"}, "character_string2": {"value": "SN20240501001"}});
    let sent = app
        .send(json!({"touser": "o-mini", "template_id": template, "data": data}))
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert_eq!(
        me(&app, Method::GET, "quota", &token, None).await.body["sends_available"],
        0
    );

    // Logout ends the session.
    let out = app
        .call(
            Method::DELETE,
            &format!("/v1/apps/{APPID}/sessions/current"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(out.status, 204, "{:?}", out.body);
    let after = me(&app, Method::GET, "quota", &token, None).await;
    assert_eq!(after.status, 401);
    assert_eq!(after.body["error"]["code"], "invalid_session");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_code_gets_the_same_session_within_its_five_minutes(#[case] backend: Backend) {
    let app = spawn_app(backend).await;
    app.fake.set_login_unionid(APPID, true);
    let code = app.fake.mint_login_code(APPID, "o-replay");
    let first = post_code(&app, APPID, &code).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert!(first.body.get("unionid").is_none(), "{:?}", first.body);
    let second = post_code(&app, APPID, &code).await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(second.body, first.body);
    assert_eq!(
        app.fake.login_exchanges(),
        1,
        "a replay asks WeChat nothing"
    );
    // The unionid is kept on the session, never returned.
    let stored: Option<String> = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
            sqlx::query_scalar("SELECT unionid FROM sessions")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    if backend == Backend::Postgres {
        assert_eq!(stored.as_deref(), Some("unionid-o-replay"));
    }
    app.advance(Duration::minutes(5));
    let late = post_code(&app, APPID, &code).await;
    assert_eq!(late.status, 401, "{:?}", late.body);
    assert_eq!(late.body["error"]["code"], "invalid_code");
    // The session itself lives on.
    let token = first.body["session_token"].as_str().unwrap();
    assert_eq!(
        me(&app, Method::GET, "quota", token, None).await.status,
        200
    );
    // Another app's code, and a code used by someone else than us.
    let other = app.fake.mint_login_code(OTHER_APPID, "o-replay");
    let refused = post_code(&app, APPID, &other).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"]["wechat_errcode"], 40029);
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_refusals_answer_what_the_frontend_can_do(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][OTHER_APPID]["secret"] = "not-the-secret".into();
    })
    .await;
    let table = [
        (
            LoginFault::Errcode(45011),
            429,
            "login_rate_limited",
            Some(45011),
        ),
        (LoginFault::Errcode(40226), 403, "user_blocked", Some(40226)),
        (LoginFault::Errcode(-1), 503, "wechat_unavailable", Some(-1)),
        (LoginFault::LoseAnswer, 503, "wechat_unavailable", None),
    ];
    for (fault, status, code, errcode) in table {
        app.fake.push_login_faults([fault]);
        let answer = login(&app, APPID, "o-refused").await;
        assert_eq!(answer.status, status, "{fault:?}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], code, "{fault:?}");
        assert_eq!(
            answer.body["error"]["wechat_errcode"].as_i64(),
            errcode,
            "{fault:?}"
        );
        if status == 429 || status == 503 {
            assert!(answer.headers.contains_key("retry-after"), "{fault:?}");
        }
    }
    let misconfigured = login(&app, OTHER_APPID, "o-refused").await;
    assert_eq!(misconfigured.status, 502, "{:?}", misconfigured.body);
    assert_eq!(misconfigured.body["error"]["code"], "app_configuration");
    assert_eq!(misconfigured.body["error"]["wechat_errcode"], 40125);
}

// A lost answer burns the code at WeChat: the same code is then 401 and the
// frontend's next wx.login works, even with a per-IP limit that a few
// retries would reach, because the replay and the refusal cost WeChat
// nothing and a new session has its own per-session limit.
#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_leave_room_to_recover_from_a_lost_answer(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["limits"] = json!({"per_session_per_minute": 2, "per_ip_per_minute": 8});
    })
    .await;
    app.fake.push_login_faults([LoginFault::LoseAnswer]);
    let code = app.fake.mint_login_code(APPID, "o-lost");
    assert_eq!(post_code(&app, APPID, &code).await.status, 503);
    let again = post_code(&app, APPID, &code).await;
    assert_eq!(again.status, 401, "{:?}", again.body);
    assert_eq!(again.body["error"]["wechat_errcode"], 40163);
    let token = session_of(&app, "o-lost").await;
    // The session's own limit: 2 a minute, then 429 with Retry-After.
    for _ in 0..2 {
        assert_eq!(
            me(&app, Method::GET, "quota", &token, None).await.status,
            200
        );
    }
    let limited = me(&app, Method::GET, "quota", &token, None).await;
    assert_eq!(limited.status, 429, "{:?}", limited.body);
    assert_eq!(limited.body["error"]["code"], "rate_limited");
    let wait: i64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another user's session from the same address is not held back by it.
    let other = session_of(&app, "o-other").await;
    assert_eq!(
        me(&app, Method::GET, "quota", &other, None).await.status,
        200
    );
    // The per-IP limit: 8 a minute over login and /me together.
    let over_ip = me(&app, Method::GET, "quota", &other, None).await;
    assert_eq!(over_ip.status, 429, "{:?}", over_ip.body);
    app.advance(Duration::seconds(wait.max(60)));
    assert_eq!(
        me(&app, Method::GET, "quota", &token, None).await.status,
        200
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_over_its_limit_is_told_when_to_come_back(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["limits"] = json!({"per_api_key_per_minute": 2});
    })
    .await;
    for _ in 0..2 {
        assert_eq!(app.access_token().await.status, 200);
    }
    let limited = app.access_token().await;
    assert_eq!(limited.status, 429, "{:?}", limited.body);
    assert!(limited.headers.contains_key("retry-after"));
    // Another key has its own limit.
    assert_eq!(app.quota("o-any").await["openid"], "o-any");
    app.advance(Duration::seconds(60));
    assert_eq!(app.access_token().await.status, 200);
}

/// One row of the table: a request and the answer it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    bearer: Option<String>,
    origin: Option<&'static str>,
    body: Option<Value>,
    status: u16,
    code: &'static str,
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_routes_refuse_what_they_must(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["cors_origins"] = json!(["https://shop.example.com"]);
    })
    .await;
    let token = session_of(&app, "o-table").await;
    let other_app_token = {
        let answer = login(&app, OTHER_APPID, "o-table").await;
        answer.body["session_token"].as_str().unwrap().to_owned()
    };
    let expired = session_of(&app, "o-expired").await;
    let revoked = session_of(&app, "o-revoked").await;
    app.call(
        Method::DELETE,
        &format!("/v1/apps/{APPID}/sessions/current"),
        Some(&revoked),
        None,
    )
    .await;
    let used_code = app.fake.mint_login_code(APPID, "o-used");
    app.fake.push_login_faults([LoginFault::LoseAnswer]);
    post_code(&app, APPID, &used_code).await;
    let me_path = |rest: &str| format!("/v1/apps/{APPID}/me/{rest}");
    let item = json!({"kind": "form_id", "value": "v-table-1"});
    let forged = format!("fgs_{}", "A".repeat(43));
    let case =
        |name, method, path: String, bearer: Option<&str>, body: Option<Value>, status, code| {
            Case {
                name,
                method,
                path,
                bearer: bearer.map(str::to_owned),
                origin: None,
                body,
                status,
                code,
            }
        };
    let mut cases = vec![
        case(
            "forged token",
            Method::GET,
            me_path("quota"),
            Some(&forged),
            None,
            401,
            "invalid_session",
        ),
        case(
            "no token",
            Method::GET,
            me_path("quota"),
            None,
            None,
            401,
            "missing_api_key",
        ),
        case(
            "revoked token",
            Method::GET,
            me_path("quota"),
            Some(&revoked),
            None,
            401,
            "invalid_session",
        ),
        case(
            "other app's session",
            Method::GET,
            me_path("quota"),
            Some(&other_app_token),
            None,
            403,
            "forbidden",
        ),
        case(
            "session on a key route",
            Method::POST,
            format!("/v1/apps/{APPID}/credentials"),
            Some(&token),
            Some(json!({"openid": "o-table", "kind": "form_id", "value": "v-table-2"})),
            403,
            "api_key_required",
        ),
        case(
            "session on a send",
            Method::POST,
            format!("/v1/apps/{APPID}/messages"),
            Some(&token),
            Some(json!({"touser": "o-table", "template_id": TEMPLATE})),
            403,
            "api_key_required",
        ),
        case(
            "session on the admin keys",
            Method::GET,
            "/v1/admin/keys".into(),
            Some(&token),
            None,
            403,
            "api_key_required",
        ),
        case(
            "key on /me",
            Method::POST,
            me_path("credentials"),
            Some(COLLECT_KEY),
            Some(item.clone()),
            403,
            "session_required",
        ),
        case(
            "admin key on /me",
            Method::GET,
            me_path("quota"),
            Some(ADMIN_KEY),
            None,
            403,
            "session_required",
        ),
        case(
            "openid in a /me body",
            Method::POST,
            me_path("credentials"),
            Some(&token),
            Some(json!({"openid": "o-else", "kind": "form_id", "value": "v-table-3"})),
            422,
            "openid_not_allowed",
        ),
        case(
            "openid in a /me batch",
            Method::POST,
            me_path("credentials"),
            Some(&token),
            Some(
                json!({"credentials": [{"openid": "o-else", "kind": "form_id", "value": "v-table-4"}]}),
            ),
            422,
            "openid_not_allowed",
        ),
        case(
            "openid in a /me prompt",
            Method::POST,
            me_path("subscriptions"),
            Some(&token),
            Some(
                json!({"openid": "o-else", "request_id": "r", "result": {"errMsg": "requestSubscribeMessage:ok"}}),
            ),
            422,
            "openid_not_allowed",
        ),
        case(
            "a code used already",
            Method::POST,
            format!("/v1/apps/{APPID}/sessions"),
            None,
            Some(json!({"code": used_code})),
            401,
            "invalid_code",
        ),
        case(
            "login with more than a code",
            Method::POST,
            format!("/v1/apps/{APPID}/sessions"),
            None,
            Some(json!({"code": "c", "openid": "o"})),
            422,
            "invalid_body",
        ),
        case(
            "login to an unknown app",
            Method::POST,
            "/v1/apps/wxnotserved000000/sessions".into(),
            None,
            Some(json!({"code": "c"})),
            404,
            "unknown_app",
        ),
    ];
    let mut cors = case(
        "origin not allowed",
        Method::POST,
        me_path("credentials"),
        Some(&token),
        Some(item.clone()),
        403,
        "origin_not_allowed",
    );
    cors.origin = Some("https://evil.example.com");
    cases.push(cors);
    let mut preflight = case(
        "preflight of an origin not allowed",
        Method::OPTIONS,
        me_path("credentials"),
        None,
        None,
        403,
        "origin_not_allowed",
    );
    preflight.origin = Some("https://evil.example.com");
    cases.push(preflight);

    let mut wrong = Vec::new();
    for case in &cases {
        let mut request = app.client.request(case.method.clone(), app.url(&case.path));
        if let Some(bearer) = &case.bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(origin) = case.origin {
            request = request.header("origin", origin);
        }
        if let Some(body) = &case.body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let allow_origin = response
            .headers()
            .contains_key("access-control-allow-origin");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != case.status || body["error"]["code"] != case.code || allow_origin {
            wrong.push(format!("{}: {status} {body}", case.name));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Nothing was stored for anyone by the refusals.
    for openid in ["o-table", "o-else"] {
        assert_eq!(app.sends_available(openid).await, 0, "{openid}");
    }
    // A session lives sessions.ttl_secs (24 h by default).
    assert_eq!(
        me(&app, Method::GET, "quota", &expired, None).await.status,
        200
    );
    app.advance(Duration::hours(24));
    let late = me(&app, Method::GET, "quota", &expired, None).await;
    assert_eq!(late.status, 401, "{:?}", late.body);
    assert_eq!(late.body["error"]["code"], "invalid_session");
    // The sweep deletes it; the token stays refused.
    app.sweeper.run_once().await.unwrap();
    assert_eq!(
        me(&app, Method::GET, "quota", &expired, None).await.status,
        401
    );
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_its_preflight_and_its_answer(#[case] backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings["apps"][APPID]["cors_origins"] = json!(["https://shop.example.com"]);
    })
    .await;
    let origin = "https://shop.example.com";
    let preflight = app
        .client
        .request(
            Method::OPTIONS,
            app.url(&format!("/v1/apps/{APPID}/sessions")),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    assert!(preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let code = app.fake.mint_login_code(APPID, "o-web");
    let answer = app
        .client
        .post(app.url(&format!("/v1/apps/{APPID}/sessions")))
        .header("origin", origin)
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], origin);
    // No origin is allowed by default, and the API-key routes have no CORS.
    let other = app
        .client
        .request(
            Method::OPTIONS,
            app.url(&format!("/v1/apps/{OTHER_APPID}/sessions")),
        )
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let keyed = app
        .client
        .get(app.url(&format!("/v1/apps/{APPID}/users/o-web/quota")))
        .bearer_auth(SEND_KEY)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert!(!keyed.headers().contains_key("access-control-allow-origin"));
}

/// Logs `openid` in with `X-Forwarded-For: forwarded_for`; the answer's status.
async fn login_from(app: &TestApp, openid: &str, forwarded_for: &str) -> u16 {
    let code = app.fake.mint_login_code(APPID, openid);
    app.client
        .post(app.url(&format!("/v1/apps/{APPID}/sessions")))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

// The per-IP limit keys on the peer's address; `X-Forwarded-For` counts
// only when the operator says a proxy in front sets it. Untrusted, a client
// cannot escape its limit by claiming other addresses; trusted, the users
// behind one proxy are not one bucket.
#[rstest]
#[case::untrusted(false)]
#[case::trusted(true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_reads_x_forwarded_for_only_when_trusted(#[case] trusted: bool) {
    let app = spawn_app_with(Backend::Sqlite, |settings| {
        settings["limits"] = json!({"per_ip_per_minute": 2, "trust_forwarded_for": trusted});
    })
    .await;
    assert_eq!(login_from(&app, "o-a", "203.0.113.1").await, 200);
    assert_eq!(login_from(&app, "o-b", "203.0.113.1").await, 200);
    // The same claimed address is over its limit either way.
    assert_eq!(login_from(&app, "o-c", "203.0.113.1").await, 429);
    let other_address = login_from(&app, "o-d", "203.0.113.2").await;
    if trusted {
        assert_eq!(other_address, 200, "another client behind the proxy");
    } else {
        assert_eq!(other_address, 429, "a claimed address escaped the limit");
    }
}
