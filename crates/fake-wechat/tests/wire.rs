//! Drives a real `FakeWeChatServer` over HTTP with a manual clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use fake_wechat::{FakeWeChat, FakeWeChatServer, Fault};

/// A clock that only moves when told to; the fake reads it through a closure.
struct ManualClock(AtomicI64);

impl ManualClock {
    fn new(start: DateTime<Utc>) -> Self {
        Self(AtomicI64::new(start.timestamp_millis()))
    }

    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }

    fn set(&self, at: DateTime<Utc>) {
        self.0.store(at.timestamp_millis(), Ordering::SeqCst);
    }
}

const APP: &str = "wxapp000000000001";
const SECRET: &str = "secret-1";
const APP2: &str = "wxapp000000000002";
const SECRET2: &str = "secret-2";
const TPL: &str = "TPL-ORDER-SHIPPED";
const USER: &str = "o-user-1";
const USER2: &str = "o-user-2";
const SEND_PATH: &str = "/cgi-bin/message/wxopen/template/send";

struct Harness {
    server: FakeWeChatServer,
    clock: Arc<ManualClock>,
    http: reqwest::Client,
}

/// 2024-05-01 10:00 in China (02:00 UTC).
fn start_time() -> DateTime<Utc> {
    "2024-05-01T02:00:00Z".parse().unwrap()
}

async fn harness() -> Harness {
    let clock = Arc::new(ManualClock::new(start_time()));
    let shared = clock.clone();
    let fake = FakeWeChat::new(move || shared.now_ms());
    fake.register_app(APP, SECRET);
    fake.register_template(APP, TPL);
    fake.register_user(APP, USER);
    fake.register_user(APP, USER2);
    fake.register_app(APP2, SECRET2);
    fake.register_template(APP2, TPL);
    let server = FakeWeChatServer::start(fake, "127.0.0.1:0").await.unwrap();
    Harness {
        server,
        clock,
        http: reqwest::Client::new(),
    }
}

impl Harness {
    fn fake(&self) -> &FakeWeChat {
        &self.server.fake
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.base_url, path)
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    async fn token_raw(&self, query: &[(&str, &str)]) -> Value {
        self.http
            .get(self.url("/cgi-bin/token"))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A fresh cgi-bin/token token for the app.
    async fn token_for(&self, appid: &str, secret: &str) -> String {
        let v = self
            .token_raw(&[
                ("grant_type", "client_credential"),
                ("appid", appid),
                ("secret", secret),
            ])
            .await;
        v["access_token"].as_str().expect("a token").to_owned()
    }

    async fn token(&self) -> String {
        self.token_for(APP, SECRET).await
    }

    async fn stable(&self, body: Value) -> Value {
        self.http
            .post(self.url("/cgi-bin/stable_token"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stable_token(&self, force_refresh: bool) -> Value {
        self.stable(json!({
            "grant_type": "client_credential",
            "appid": APP,
            "secret": SECRET,
            "force_refresh": force_refresh,
        }))
        .await
    }

    async fn send_raw(&self, token: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(self.url(SEND_PATH))
            .query(&[("access_token", token)])
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn send(&self, token: &str, body: Value) -> Value {
        let resp = self.send_raw(token, body.to_string().into_bytes()).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn send_code(&self, token: &str, body: Value) -> i64 {
        self.send(token, body).await["errcode"].as_i64().unwrap()
    }

    /// The errcode a token gets from the send API with an empty object: 40003
    /// means the token itself was accepted.
    async fn token_code(&self, token: &str) -> i64 {
        self.send_code(token, json!({})).await
    }
}

fn msg(openid: &str, form_id: &str) -> Value {
    json!({
        "touser": openid,
        "template_id": TPL,
        "page": "pages/order/detail?id=42",
        "form_id": form_id,
        "data": {"keyword1": {"value": "339208499"}, "keyword2": {"value": 12.5}},
        "emphasis_keyword": "keyword1.DATA",
    })
}

fn code(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap()
}

fn assert_errmsg_shape(v: &Value, stem: &str) {
    let m = v["errmsg"].as_str().unwrap();
    assert!(m.starts_with(stem), "{m:?} should start with {stem:?}");
    assert!(m.contains(" rid: "), "{m:?} should carry a rid");
}

const ACCEPTED: i64 = 40003;

// ------------------------------------------------------------------ tokens

#[tokio::test]
async fn token_errors_and_success_shape() {
    let h = harness().await;
    let cases: &[(&[(&str, &str)], i64)] = &[
        (
            &[
                ("grant_type", "password"),
                ("appid", APP),
                ("secret", SECRET),
            ],
            40002,
        ),
        (&[("appid", APP), ("secret", SECRET)], 40002),
        (
            &[("grant_type", "client_credential"), ("secret", SECRET)],
            41002,
        ),
        (
            &[("grant_type", "client_credential"), ("appid", APP)],
            41004,
        ),
        (
            &[
                ("grant_type", "client_credential"),
                ("appid", "wxnope"),
                ("secret", "x"),
            ],
            40013,
        ),
        (
            &[
                ("grant_type", "client_credential"),
                ("appid", APP),
                ("secret", "wrong"),
            ],
            40125,
        ),
    ];
    for (query, expected) in cases {
        let v = h.token_raw(query).await;
        assert_eq!(code(&v), *expected, "{query:?} -> {v}");
        assert!(v["errmsg"].as_str().unwrap().contains(" rid: "));
    }
    let v = h
        .token_raw(&[
            ("grant_type", "client_credential"),
            ("appid", APP),
            ("secret", SECRET),
        ])
        .await;
    assert!(v.get("errcode").is_none(), "success has no errcode: {v}");
    assert_eq!(v["expires_in"], 7200);
    let t = v["access_token"].as_str().unwrap();
    assert_eq!(t.len(), 600);
    assert!(t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    assert_eq!(h.fake().token_fetches(APP), 1);
    assert_eq!(h.fake().current_token(APP).as_deref(), Some(t));

    // GET only.
    let resp = h.http.post(h.url("/cgi-bin/token")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    h.server.stop().await;
}

#[tokio::test]
async fn previous_token_overlaps_five_minutes_older_stop_at_once() {
    let h = harness().await;
    let t1 = h.token().await;
    h.advance(Duration::minutes(10));
    let t2 = h.token().await;
    assert_ne!(t1, t2);
    assert_eq!(h.token_code(&t1).await, ACCEPTED);
    assert_eq!(h.token_code(&t2).await, ACCEPTED);
    h.advance(Duration::seconds(299));
    assert_eq!(h.token_code(&t1).await, ACCEPTED);
    h.advance(Duration::seconds(1));
    let v = h.send(&t1, json!({})).await;
    assert_eq!(code(&v), 40001);
    assert_errmsg_shape(
        &v,
        "invalid credential, access_token is invalid or not latest",
    );
    assert_eq!(h.token_code(&t2).await, ACCEPTED);

    // Two issues in a row: the one before the previous stops at once.
    let t3 = h.token().await;
    let t4 = h.token().await;
    assert_eq!(h.token_code(&t2).await, 40001);
    assert_eq!(h.token_code(&t3).await, ACCEPTED);
    assert_eq!(h.token_code(&t4).await, ACCEPTED);
    assert_eq!(h.fake().token_fetches(APP), 4);
    assert_eq!(h.fake().current_token(APP), Some(t4.clone()));

    // invalidate_tokens: everything answers 40001 at once.
    h.fake().invalidate_tokens(APP);
    assert_eq!(h.token_code(&t3).await, 40001);
    assert_eq!(h.token_code(&t4).await, 40001);
    assert_eq!(h.fake().current_token(APP), None);
    h.server.stop().await;
}

#[tokio::test]
async fn token_expiry_missing_and_unknown() {
    let h = harness().await;
    h.fake().set_token_expires_in(60);
    h.fake().set_token_len(16);
    let t = h.token().await;
    assert_eq!(t.len(), 16);
    h.advance(Duration::seconds(59));
    assert_eq!(h.token_code(&t).await, ACCEPTED);
    h.advance(Duration::seconds(1));
    let v = h.send(&t, json!({})).await;
    assert_eq!(code(&v), 42001);
    assert_errmsg_shape(&v, "access_token expired");

    // Overlap is capped by the old token's own expiry.
    let a = h.token().await;
    h.advance(Duration::seconds(30));
    let _b = h.token().await;
    assert_eq!(h.token_code(&a).await, ACCEPTED);
    h.advance(Duration::seconds(30));
    assert_ne!(h.token_code(&a).await, ACCEPTED);

    // Missing / unknown token.
    let resp = h
        .http
        .post(h.url(SEND_PATH))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), 41001);
    assert_eq!(h.token_code("").await, 41001);
    let v = h.send("not-a-token", json!({})).await;
    assert_eq!(code(&v), 40014);
    assert_errmsg_shape(&v, "invalid access_token");
    h.server.stop().await;
}

#[tokio::test]
async fn stable_token_same_while_valid_then_rotates_early() {
    let h = harness().await;
    let v1 = h.stable_token(false).await;
    assert!(v1.get("errcode").is_none());
    let s1 = v1["access_token"].as_str().unwrap().to_owned();
    assert_eq!(v1["expires_in"], 7200);

    h.advance(Duration::seconds(100));
    let v = h.stable_token(false).await;
    assert_eq!(v["access_token"], s1.as_str());
    assert_eq!(v["expires_in"], 7100);

    // cgi-bin/token does not touch stable tokens (and vice versa).
    let plain = h.token().await;
    let _ = h.token().await;
    let _ = h.token().await;
    assert_eq!(h.token_code(&s1).await, ACCEPTED);
    assert_eq!(h.stable_token(false).await["access_token"], s1.as_str());

    // With 5 min or less left, a new token; the old works until its expiry.
    h.advance(Duration::seconds(7100 - 300));
    let v = h.stable_token(false).await;
    let s2 = v["access_token"].as_str().unwrap().to_owned();
    assert_ne!(s1, s2);
    assert_eq!(v["expires_in"], 7200);
    assert_eq!(h.token_code(&s1).await, ACCEPTED);
    h.advance(Duration::seconds(299));
    assert_eq!(h.token_code(&s1).await, ACCEPTED);
    h.advance(Duration::seconds(1));
    assert_eq!(h.token_code(&s1).await, 42001);
    assert_eq!(h.token_code(&s2).await, ACCEPTED);
    assert_eq!(h.token_code(&plain).await, 40001);
    h.server.stop().await;
}

#[tokio::test]
async fn stable_token_force_refresh_limits() {
    let h = harness().await;
    let s1 = h.stable_token(false).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let s2 = h.stable_token(true).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(s1, s2);
    // No grace period after a forced refresh.
    assert_eq!(h.token_code(&s1).await, 40001);

    // Within 30 s of the last forced refresh: same token.
    h.advance(Duration::seconds(29));
    assert_eq!(h.stable_token(true).await["access_token"], s2.as_str());
    h.advance(Duration::seconds(1));
    let s3 = h.stable_token(true).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(s2, s3);

    // 20 forced refreshes per (China) day, then 45009.
    for _ in 2..20 {
        h.advance(Duration::seconds(31));
        assert!(h.stable_token(true).await.get("access_token").is_some());
    }
    h.advance(Duration::seconds(31));
    let v = h.stable_token(true).await;
    assert_eq!(code(&v), 45009, "{v}");
    // Normal mode still works.
    assert!(h.stable_token(false).await.get("access_token").is_some());
    // After midnight in China the counter resets.
    h.clock.set("2024-05-01T16:00:00Z".parse().unwrap());
    assert!(h.stable_token(true).await.get("access_token").is_some());
    h.server.stop().await;
}

#[tokio::test]
async fn stable_token_request_errors() {
    let h = harness().await;
    let resp = h
        .http
        .get(h.url("/cgi-bin/stable_token"))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(code(&v), 43002);
    assert_errmsg_shape(&v, "require POST method");

    let post = |body: &'static str| {
        h.http
            .post(h.url("/cgi-bin/stable_token"))
            .body(body)
            .send()
    };
    let v: Value = post("grant_type=client_credential")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(code(&v), 47001);
    let v: Value = post("").await.unwrap().json().await.unwrap();
    assert_eq!(code(&v), 44002);

    let base = json!({"grant_type": "client_credential", "appid": APP, "secret": SECRET});
    let with = |k: &str, val: Value| {
        let mut b = base.clone();
        b[k] = val;
        b
    };
    assert_eq!(code(&h.stable(with("grant_type", json!("x"))).await), 40002);
    assert_eq!(code(&h.stable(with("appid", json!(""))).await), 41002);
    assert_eq!(code(&h.stable(with("secret", json!(""))).await), 41004);
    assert_eq!(code(&h.stable(with("appid", json!("wxnope"))).await), 40013);
    assert_eq!(code(&h.stable(with("secret", json!("bad"))).await), 40125);
    assert_eq!(h.fake().token_fetches(APP), 0);
    assert!(h.stable(base).await.get("access_token").is_some());
    assert_eq!(h.fake().token_fetches(APP), 1);
    h.server.stop().await;
}

// ------------------------------------------------------------- credentials

#[tokio::test]
async fn form_id_one_send_then_41029() {
    let h = harness().await;
    let token = h.token().await;
    let f = h.fake().mint_form_id(APP, USER);
    assert_eq!(f.len(), 32);
    assert!(f.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(h.fake().uses_left(&f), Some(1));

    let v = h.send(&token, msg(USER, &f)).await;
    assert_eq!(v, json!({"errcode": 0, "errmsg": "ok"}));
    assert_eq!(h.fake().uses_left(&f), Some(0));
    let v = h.send(&token, msg(USER, &f)).await;
    assert_eq!(code(&v), 41029);
    assert_errmsg_shape(&v, "form id used count reach limit");

    let sends = h.fake().sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].appid.as_deref(), Some(APP));
    assert_eq!(sends[0].touser, USER);
    assert_eq!(sends[0].template_id, TPL);
    assert_eq!(sends[0].form_id, f);
    assert_eq!((sends[0].errcode, sends[0].delivered), (0, true));
    assert_eq!((sends[1].errcode, sends[1].delivered), (41029, false));
    h.server.stop().await;
}

#[tokio::test]
async fn prepay_id_three_sends_then_41029() {
    let h = harness().await;
    let token = h.token().await;
    let p = h.fake().mint_prepay_id(APP, USER);
    assert_eq!(p.len(), 36);
    assert!(p.starts_with("wx2024050110"), "{p}"); // China time
    assert!(p[2..16].chars().all(|c| c.is_ascii_digit()));
    assert!(p[16..].chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(h.fake().uses_left(&p), Some(3));

    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 0);
    // The JSAPI package form is accepted too.
    let prefixed = format!("prepay_id={p}");
    assert_eq!(h.send_code(&token, msg(USER, &prefixed)).await, 0);
    assert_eq!(h.fake().uses_left(&prefixed), Some(1));
    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 0);
    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 41029);
    assert_eq!(h.fake().uses_left(&p), Some(0));
    h.server.stop().await;
}

#[tokio::test]
async fn credential_bound_to_openid_and_app() {
    let h = harness().await;
    let token = h.token().await;
    let token2 = h.token_for(APP2, SECRET2).await;
    let f = h.fake().mint_form_id(APP, USER);
    let v = h.send(&token, msg(USER2, &f)).await;
    assert_eq!(code(&v), 41028);
    assert_errmsg_shape(&v, "invalid form id");

    // Minted in APP2 for a user both apps know: 41028 when sent through APP.
    h.fake().register_user(APP2, USER);
    let f2 = h.fake().mint_form_id(APP2, USER);
    assert_eq!(h.send_code(&token, msg(USER, &f2)).await, 41028);
    // ... and fine through APP2.
    assert_eq!(h.send_code(&token2, msg(USER, &f2)).await, 0);

    // Unknown, empty, missing.
    assert_eq!(h.send_code(&token, msg(USER, "deadbeef")).await, 41028);
    assert_eq!(h.send_code(&token, msg(USER, "")).await, 41028);
    let mut m = msg(USER, "x");
    m.as_object_mut().unwrap().remove("form_id");
    assert_eq!(h.send_code(&token, m).await, 41028);
    // Nothing was spent by the failures.
    assert_eq!(h.fake().uses_left(&f), Some(1));
    h.server.stop().await;
}

#[tokio::test]
async fn credentials_expire_after_seven_days() {
    let h = harness().await;
    let f = h.fake().mint_form_id(APP, USER);
    let p = h.fake().mint_prepay_id(APP, USER);
    let f_ok = h.fake().mint_form_id(APP, USER);
    h.advance(Duration::days(7) - Duration::seconds(1));
    let token = h.token().await;
    assert_eq!(h.send_code(&token, msg(USER, &f_ok)).await, 0);
    h.advance(Duration::seconds(1));
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, 41028);
    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 41028);
    h.server.stop().await;
}

#[tokio::test]
async fn prepay_sync_lag_answers_41028_then_works() {
    let h = harness().await;
    h.fake().set_prepay_sync_lag(StdDuration::from_secs(10));
    let token = h.token().await;
    let p = h.fake().mint_prepay_id(APP, USER);
    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 41028);
    h.advance(Duration::seconds(9));
    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 41028);
    assert_eq!(h.fake().uses_left(&p), Some(3));
    h.advance(Duration::seconds(1));
    assert_eq!(h.send_code(&token, msg(USER, &p)).await, 0);
    // Form ids do not lag.
    let f = h.fake().mint_form_id(APP, USER);
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn blocked_credentials_answer_their_code() {
    let h = harness().await;
    let token = h.token().await;
    for (errcode, stem) in [
        (41031, "the form id have been blocked!"),
        (
            41032,
            "not allow to send message with submitted form id, for punishment",
        ),
        (41034, "not allow to send message with submitted form id"),
        (
            41035,
            "not allow to send message with prepay id, for punishment",
        ),
    ] {
        let f = h.fake().mint_form_id(APP, USER);
        h.fake().block_credential(&f, errcode);
        let v = h.send(&token, msg(USER, &f)).await;
        assert_eq!(code(&v), errcode);
        assert_errmsg_shape(&v, stem);
        assert_eq!(h.fake().uses_left(&f), Some(1));
    }
    h.server.stop().await;
}

// ------------------------------------------------------- request validation

#[tokio::test]
async fn message_validation_errors() {
    let h = harness().await;
    let token = h.token().await;
    let f = h.fake().mint_form_id(APP, USER);

    // 40003: unknown openid, empty, and an openid of another app.
    h.fake().register_user(APP2, "o-app2-only");
    for who in ["o-stranger", "", "o-app2-only"] {
        let v = h.send(&token, msg(who, &f)).await;
        assert_eq!(code(&v), 40003, "{who}");
        assert_errmsg_shape(&v, "invalid openid");
    }

    // 40037: unknown / missing template.
    let mut m = msg(USER, &f);
    m["template_id"] = json!("TPL-NOPE");
    let v = h.send(&token, m.clone()).await;
    assert_eq!(code(&v), 40037);
    assert_errmsg_shape(&v, "invalid template_id");
    m.as_object_mut().unwrap().remove("template_id");
    assert_eq!(h.send_code(&token, m).await, 40037);

    // 41030: a leading slash.
    let mut m = msg(USER, &f);
    m["page"] = json!("/pages/index/index");
    let v = h.send(&token, m).await;
    assert_eq!(code(&v), 41030);
    assert_errmsg_shape(&v, "invalid page");

    // 47003: a data field without a usable value.
    for data in [
        json!({"keyword1": {"value": "ok"}, "keyword2": {"color": "#000"}}),
        json!({"keyword2": {"value": {"nested": true}}}),
        json!({"keyword2": "plain"}),
    ] {
        let mut m = msg(USER, &f);
        m["data"] = data;
        let v = h.send(&token, m).await;
        assert_eq!(code(&v), 47003);
        assert_errmsg_shape(&v, "argument invalid! data.keyword2.value invalid");
    }
    let mut m = msg(USER, &f);
    m["data"] = json!("{\"keyword1\":{\"value\":\"x\"}}");
    assert_eq!(h.send_code(&token, m).await, 47003);

    // 47001: not JSON, or not an object.
    for body in [&b"touser=x"[..], b"[1,2]", b"{\"touser\":"] {
        let resp = h.send_raw(&token, body.to_vec()).await;
        let v: Value = resp.json().await.unwrap();
        assert_eq!(code(&v), 47001);
        assert_errmsg_shape(&v, "data format error");
    }

    // 44002: empty body.
    let v: Value = h.send_raw(&token, Vec::new()).await.json().await.unwrap();
    assert_eq!(code(&v), 44002);
    assert_errmsg_shape(&v, "empty post data");

    // 43002: GET.
    let resp = h
        .http
        .get(h.url(SEND_PATH))
        .query(&[("access_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), 43002);

    // None of that spent the form id; page and data are optional.
    assert_eq!(h.fake().uses_left(&f), Some(1));
    let mut m = msg(USER, &f);
    m.as_object_mut().unwrap().remove("page");
    m.as_object_mut().unwrap().remove("data");
    assert_eq!(h.send_code(&token, m).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn registered_pages_restrict_page() {
    let h = harness().await;
    h.fake().register_page(APP, "pages/order/detail");
    let token = h.token().await;
    let f = h.fake().mint_form_id(APP, USER);
    let mut m = msg(USER, &f);
    m["page"] = json!("pages/index/index");
    assert_eq!(h.send_code(&token, m).await, 41030);
    // msg() uses pages/order/detail?id=42: the query is ignored.
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn daily_quota_resets_at_china_midnight() {
    let h = harness().await;
    h.fake().set_daily_send_quota(APP, 2);
    let token = h.token().await;
    // Failing calls that passed the token/body checks count too.
    assert_eq!(h.token_code(&token).await, 40003);
    let f = h.fake().mint_form_id(APP, USER);
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, 0);
    let f2 = h.fake().mint_form_id(APP, USER);
    let v = h.send(&token, msg(USER, &f2)).await;
    assert_eq!(code(&v), 45009);
    assert_errmsg_shape(&v, "reach max api daily quota limit");
    assert_eq!(h.fake().uses_left(&f2), Some(1));
    // Another app has its own quota.
    let token2 = h.token_for(APP2, SECRET2).await;
    assert_eq!(h.token_code(&token2).await, 40003);

    // 2024-05-01 23:59:59 in China is still the same day.
    h.clock.set("2024-05-01T15:59:59Z".parse().unwrap());
    let token = h.token().await;
    assert_eq!(h.send_code(&token, msg(USER, &f2)).await, 45009);
    h.advance(Duration::seconds(1));
    assert_eq!(h.send_code(&token, msg(USER, &f2)).await, 0);
    h.server.stop().await;
}

#[tokio::test]
async fn retired_switch_answers_45103_first() {
    let h = harness().await;
    let token = h.token().await;
    let f = h.fake().mint_form_id(APP, USER);
    h.fake().push_send_faults([Fault::Errcode(-1)]);
    h.fake().set_retired(true);
    for t in [token.as_str(), "", "junk"] {
        let v = h.send(t, msg(USER, &f)).await;
        assert_eq!(code(&v), 45103);
        assert_errmsg_shape(&v, "This API has been unsupported");
    }
    assert_eq!(h.fake().uses_left(&f), Some(1));
    h.fake().set_retired(false);
    // The fault was not consumed by the retired calls.
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, -1);
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, 0);
    h.server.stop().await;
}

// ------------------------------------------------------------------ faults

#[tokio::test]
async fn send_faults_each_kind() {
    let h = harness().await;
    let token = h.token().await;
    let f = h.fake().mint_form_id(APP, USER);
    h.fake().push_send_faults([
        Fault::Errcode(-1),
        Fault::Errcode(45011),
        Fault::HttpStatus(502),
        Fault::Garbage,
    ]);

    // A token failure does not consume a fault.
    assert_eq!(h.send_code("junk", msg(USER, &f)).await, 40014);

    let v = h.send(&token, msg(USER, &f)).await;
    assert_eq!(code(&v), -1);
    assert_errmsg_shape(&v, "system error");
    assert_eq!(h.send_code(&token, msg(USER, &f)).await, 45011);

    let resp = h
        .send_raw(&token, msg(USER, &f).to_string().into_bytes())
        .await;
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");

    let resp = h
        .send_raw(&token, msg(USER, &f).to_string().into_bytes())
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    assert_eq!(
        h.fake().uses_left(&f),
        Some(1),
        "faults leave the credential alone"
    );

    // DeliverThenFail: consumed and delivered, but the answer is a bare 500.
    h.fake().push_send_faults([Fault::DeliverThenFail(500)]);
    let resp = h
        .send_raw(&token, msg(USER, &f).to_string().into_bytes())
        .await;
    assert_eq!(resp.status(), 500);
    let body = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    assert_eq!(h.fake().uses_left(&f), Some(0));

    let records: Vec<(i64, bool)> = h
        .fake()
        .sends()
        .iter()
        .map(|s| (s.errcode, s.delivered))
        .collect();
    assert_eq!(
        records,
        vec![
            (40014, false),
            (-1, false),
            (45011, false),
            (-2, false),
            (-2, false),
            (0, true)
        ]
    );
    assert_eq!(h.fake().sends()[0].appid, None);
    h.server.stop().await;
}

#[tokio::test]
async fn hang_fault_delays_the_answer_past_client_timeouts() {
    let h = harness().await;
    let token = h.token().await;
    let f = h.fake().mint_form_id(APP, USER);
    h.fake()
        .push_send_faults([Fault::Hang(StdDuration::from_millis(400))]);
    let started = Instant::now();
    let result = h
        .http
        .post(h.url(SEND_PATH))
        .query(&[("access_token", token.as_str())])
        .json(&msg(USER, &f))
        .timeout(StdDuration::from_millis(100))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    assert!(started.elapsed() < StdDuration::from_millis(400));
    // The send itself was processed when it arrived: ambiguous for the client.
    assert_eq!(h.fake().uses_left(&f), Some(0));
    assert!(h.fake().sends()[0].delivered);

    // Without a client timeout the normal answer arrives late.
    let f2 = h.fake().mint_form_id(APP, USER);
    h.fake()
        .push_send_faults([Fault::Hang(StdDuration::from_millis(300))]);
    let started = Instant::now();
    assert_eq!(h.send_code(&token, msg(USER, &f2)).await, 0);
    assert!(started.elapsed() >= StdDuration::from_millis(300));
    h.server.stop().await;
}

#[tokio::test]
async fn token_faults_apply_to_both_endpoints() {
    let h = harness().await;
    h.fake().push_token_faults([
        Fault::Errcode(-1),
        Fault::HttpStatus(503),
        Fault::Garbage,
        Fault::DeliverThenFail(502),
    ]);
    let q = [
        ("grant_type", "client_credential"),
        ("appid", APP),
        ("secret", SECRET),
    ];
    let v = h.token_raw(&q).await;
    assert_eq!(code(&v), -1);
    let resp = h
        .http
        .post(h.url("/cgi-bin/stable_token"))
        .json(&json!({"grant_type": "client_credential", "appid": APP, "secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = h
        .http
        .get(h.url("/cgi-bin/token"))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());
    assert_eq!(h.fake().token_fetches(APP), 0);

    // DeliverThenFail issues a token the caller never sees.
    let resp = h
        .http
        .get(h.url("/cgi-bin/token"))
        .query(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(h.fake().token_fetches(APP), 1);
    let unseen = h.fake().current_token(APP).unwrap();
    let t = h.token().await;
    assert_ne!(unseen, t);
    assert_eq!(h.fake().token_fetches(APP), 2);

    // Hang: the token arrives late.
    h.fake()
        .push_token_faults([Fault::Hang(StdDuration::from_millis(200))]);
    let started = Instant::now();
    let _ = h.token().await;
    assert!(started.elapsed() >= StdDuration::from_millis(200));
    h.server.stop().await;
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let h = harness().await;
    h.fake().set_latency(StdDuration::from_millis(150));
    let started = Instant::now();
    let token = h.token().await;
    assert!(started.elapsed() >= StdDuration::from_millis(150));
    let started = Instant::now();
    assert_eq!(h.token_code(&token).await, ACCEPTED);
    assert!(started.elapsed() >= StdDuration::from_millis(150));
    h.server.stop().await;
}

// ------------------------------------------------------------ helper routes

#[tokio::test]
async fn fake_helper_endpoints() {
    let h = harness().await;
    let post = |path: String| h.http.post(h.url(&path)).send();

    let resp = post(format!("/fake/apps/{APP}/templates/TPL-NEW"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = post(format!("/fake/apps/{APP}/users/o-new/form_id"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let f = v["form_id"].as_str().unwrap().to_owned();
    assert_eq!(f.len(), 32);
    let v: Value = post(format!("/fake/apps/{APP}/users/o-new/prepay_id"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = v["prepay_id"].as_str().unwrap().to_owned();
    assert_eq!(p.len(), 36);
    let resp = post("/fake/apps/wxnope/users/o-new/form_id".into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let token = h.token().await;
    let mut m = msg("o-new", &f);
    m["template_id"] = json!("TPL-NEW");
    assert_eq!(h.send_code(&token, m).await, 0);
    assert_eq!(h.send_code(&token, msg("o-new", &p)).await, 0);

    let sends: Vec<Value> = h
        .http
        .get(h.url("/fake/sends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0]["form_id"], f.as_str());
    assert_eq!(sends[0]["template_id"], "TPL-NEW");
    assert_eq!(sends[0]["appid"], APP);
    assert_eq!(sends[0]["delivered"], true);
    assert_eq!(sends[1]["errcode"], 0);
    assert!(sends[1]["at_ms"].as_i64().unwrap() > 0);
    h.server.stop().await;
}

// -------------------------------------------------------------------- cli

#[test]
fn cli_args_parse() {
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: fake_wechat::FakeWeChatArgs,
    }

    let cli = Cli::try_parse_from([
        "fake-wechat",
        "--app",
        "wxa:s1",
        "--app",
        "wxb:s:2",
        "--template",
        "wxa:TPL1",
        "--latency-ms",
        "5",
        "--prepay-sync-lag-ms",
        "7000",
        "--token-expires-in",
        "60",
    ])
    .unwrap();
    let a = cli.args;
    assert_eq!(a.listen, "127.0.0.1:9100");
    assert_eq!(
        a.apps,
        vec![("wxa".into(), "s1".into()), ("wxb".into(), "s:2".into())]
    );
    assert_eq!(a.templates, vec![("wxa".into(), "TPL1".into())]);
    assert_eq!(
        (a.latency_ms, a.prepay_sync_lag_ms, a.token_expires_in),
        (5, 7000, 60)
    );
    assert!(Cli::try_parse_from(["fake-wechat", "--app", "no-colon"]).is_err());
}
