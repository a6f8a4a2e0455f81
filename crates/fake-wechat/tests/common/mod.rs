//! A fake on a manual clock, driven over HTTP, shared by the subscribe and
//! template tests.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use fake_wechat::{FakeWeChat, FakeWeChatServer};

pub const APP: &str = "wxapp000000000001";
pub const SECRET: &str = "secret-1";
pub const APP2: &str = "wxapp000000000002";
pub const SECRET2: &str = "secret-2";
pub const USER: &str = "o-user-1";
pub const USER2: &str = "o-user-2";
pub const SUBSCRIBE_PATH: &str = "/cgi-bin/message/subscribe/send";

/// 2024-05-01 10:00 in China.
pub const START_MS: i64 = 1_714_528_800_000;

pub struct Harness {
    pub server: FakeWeChatServer,
    pub clock: Arc<AtomicI64>,
    pub http: reqwest::Client,
}

pub async fn harness() -> Harness {
    let clock = Arc::new(AtomicI64::new(START_MS));
    let shared = clock.clone();
    let fake = FakeWeChat::new(move || shared.load(Ordering::SeqCst));
    fake.register_app(APP, SECRET);
    fake.register_app(APP2, SECRET2);
    let server = FakeWeChatServer::start(fake, "127.0.0.1:0").await.unwrap();
    Harness {
        server,
        clock,
        http: reqwest::Client::new(),
    }
}

impl Harness {
    pub fn fake(&self) -> &FakeWeChat {
        &self.server.fake
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.base_url, path)
    }

    pub fn advance_ms(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    pub async fn token_for(&self, appid: &str, secret: &str) -> String {
        let v: Value = self
            .http
            .get(self.url("/cgi-bin/token"))
            .query(&[
                ("grant_type", "client_credential"),
                ("appid", appid),
                ("secret", secret),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().expect("a token").to_owned()
    }

    pub async fn token(&self) -> String {
        self.token_for(APP, SECRET).await
    }

    /// POSTs raw bytes with an access_token and a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .query(&[("access_token", token)])
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs JSON and reads the JSON answer (HTTP 200 expected).
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let resp = self
            .post_raw(
                path,
                token,
                "application/json",
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// POSTs a form (`key=value&…`, keys may repeat) and reads the JSON answer.
    pub async fn post_form(&self, path: &str, token: &str, form: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .post(self.url(path))
            .query(&[("access_token", token)])
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// GETs with an access_token and extra query pairs.
    pub async fn get(&self, path: &str, token: &str, query: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .get(self.url(path))
            .query(&[("access_token", token)])
            .query(query)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub async fn subscribe(&self, token: &str, body: Value) -> Value {
        self.post(SUBSCRIBE_PATH, token, body).await
    }

    pub async fn subscribe_code(&self, token: &str, body: Value) -> i64 {
        code(&self.subscribe(token, body).await)
    }

    /// Adds a subscribe template through `addtemplate` and returns its id.
    pub async fn add_subscribe_template(&self, token: &str, tid: u32, kids: &[u32]) -> String {
        let tid = tid.to_string();
        let kids: Vec<String> = kids.iter().map(u32::to_string).collect();
        let mut form = vec![("tid", tid.as_str()), ("sceneDesc", "测试")];
        form.extend(kids.iter().map(|k| ("kidList", k.as_str())));
        let v = self
            .post_form("/wxaapi/newtmpl/addtemplate", token, &form)
            .await;
        assert_eq!(code(&v), 0, "{v}");
        v["priTmplId"].as_str().unwrap().to_owned()
    }
}

pub fn code(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap()
}

pub fn errmsg(v: &Value) -> &str {
    v["errmsg"].as_str().unwrap()
}

/// The errmsg starts with `stem` and carries a rid (docs/wechat/errcodes.md,
/// "The shape of an answer").
pub fn assert_errmsg(v: &Value, stem: &str) {
    let m = errmsg(v);
    assert!(m.starts_with(stem), "{m:?} should start with {stem:?}");
    assert!(m.contains(" rid: "), "{m:?} should carry a rid");
}

/// A subscribe-send body for template 401 with keywords 1 and 2 (`thing1`,
/// `character_string2`).
pub fn order_msg(openid: &str, template_id: &str) -> Value {
    json!({
        "touser": openid,
        "template_id": template_id,
        "page": "pages/order/detail?id=42",
        "miniprogram_state": "formal",
        "lang": "zh_CN",
        "data": {
            "thing1": {"value": "咖啡"},
            "character_string2": {"value": "SN20240501001"},
        },
    })
}
