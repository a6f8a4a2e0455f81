//! `GET /sns/jscode2session` (docs/wechat/login.md): login codes minted by a
//! control endpoint (`POST /fake/apps/{appid}/users/{openid}/login_code`,
//! or [`FakeWeChat::mint_login_code`]), valid 5 minutes by the fake's clock,
//! exchanged once (40163 the second time), bound to their app (40029 for
//! another, or an unknown or expired code). The answer is JSON served as
//! `text/plain`, and a success carries no `errcode`. Faults queued with
//! [`FakeWeChat::push_login_faults`] answer 45011, 40226, -1 (any errcode)
//! or lose the answer after the code was used.

use std::collections::{HashMap, HashSet, VecDeque};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::codes::error_body;
use super::state::random_token;
use super::FakeWeChat;

/// A code is good for 5 minutes (docs/wechat/login.md, "The code").
const CODE_VALIDITY_MS: i64 = 5 * 60 * 1_000;

/// A fault of the next `jscode2session` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFault {
    /// Answer this errcode; the code is not used.
    Errcode(i64),
    /// Use the code and issue the session, then answer HTTP 502: the
    /// caller never learns the openid, and the code is spent.
    LoseAnswer,
}

#[derive(Debug)]
struct LoginCode {
    appid: String,
    openid: String,
    minted_ms: i64,
    used: bool,
}

/// The login side of the fake.
#[derive(Debug, Default)]
pub(crate) struct LoginState {
    codes: HashMap<String, LoginCode>,
    faults: VecDeque<LoginFault>,
    /// Apps bound to an Open Platform account: their answers carry a unionid.
    unionid_apps: HashSet<String>,
    /// Every session_key handed out, for tests that look for leaks.
    session_keys: Vec<String>,
    /// Exchanges answered with an openid.
    exchanges: usize,
}

impl FakeWeChat {
    /// A user called `wx.login` in the app: a code good for one exchange
    /// within 5 minutes.
    pub fn mint_login_code(&self, appid: &str, openid: &str) -> String {
        let code = random_token(32);
        let minted_ms = self.now_ms();
        self.register_user(appid, openid);
        self.login().codes.insert(
            code.clone(),
            LoginCode {
                appid: appid.to_owned(),
                openid: openid.to_owned(),
                minted_ms,
                used: false,
            },
        );
        code
    }

    /// Faults for the next `jscode2session` calls, one each, in order.
    pub fn push_login_faults(&self, faults: impl IntoIterator<Item = LoginFault>) {
        self.login().faults.extend(faults);
    }

    /// Binds the app to an Open Platform account: logins carry a unionid
    /// (`unionid-<openid>`).
    pub fn set_login_unionid(&self, appid: &str, bound: bool) {
        let mut login = self.login();
        if bound {
            login.unionid_apps.insert(appid.to_owned());
        } else {
            login.unionid_apps.remove(appid);
        }
    }

    /// Every session_key the fake handed out.
    pub fn session_keys(&self) -> Vec<String> {
        self.login().session_keys.clone()
    }

    /// How many exchanges were answered with an openid.
    pub fn login_exchanges(&self) -> usize {
        self.login().exchanges
    }

    fn login(&self) -> std::sync::MutexGuard<'_, LoginState> {
        self.login_state().lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to one exchange, and whether to lose it.
    fn exchange(&self, query: &HashMap<String, String>) -> (Value, bool) {
        let field = |name: &str| {
            query
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let Some(appid) = field("appid") else {
            return (error_body(41002), false);
        };
        let secret = self.lock_apps_secret(appid);
        let Some(expected) = secret else {
            return (error_body(40013), false);
        };
        if field("secret") != Some(expected.as_str()) {
            return (error_body(40125), false);
        }
        if field("grant_type") != Some("authorization_code") {
            return (error_body(40002), false);
        }
        let Some(code) = field("js_code") else {
            return (error_body(41008), false);
        };
        let now = self.now_ms();
        let mut login = self.login();
        let fault = login.faults.pop_front();
        if let Some(LoginFault::Errcode(errcode)) = fault {
            return (error_body(errcode), false);
        }
        let unionid = login.unionid_apps.contains(appid);
        let Some(entry) = login.codes.get_mut(code) else {
            return (error_body(40029), false);
        };
        if entry.appid != appid || now - entry.minted_ms >= CODE_VALIDITY_MS {
            return (error_body(40029), false);
        }
        if entry.used {
            return (error_body(40163), false);
        }
        entry.used = true;
        let openid = entry.openid.clone();
        let session_key = random_token(24);
        login.session_keys.push(session_key.clone());
        login.exchanges += 1;
        let mut answer = json!({"session_key": session_key, "openid": openid});
        if unionid {
            answer["unionid"] = Value::String(format!("unionid-{openid}"));
        }
        (answer, fault == Some(LoginFault::LoseAnswer))
    }
}

/// `GET /sns/jscode2session`.
pub(crate) async fn jscode2session(req: HttpRequest, fake: web::Data<FakeWeChat>) -> HttpResponse {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let (answer, lost) = fake.exchange(&query);
    if lost {
        return HttpResponse::BadGateway()
            .content_type("text/html")
            .body(super::codes::html_status_page(502));
    }
    // Served as text/plain (docs/wechat/login.md, "The exchange").
    HttpResponse::Ok()
        .content_type("text/plain")
        .body(answer.to_string())
}

/// `POST /fake/apps/{appid}/users/{openid}/login_code`: `{"code": "…"}`.
pub(crate) async fn mint_login_code(
    path: web::Path<(String, String)>,
    fake: web::Data<FakeWeChat>,
) -> HttpResponse {
    let (appid, openid) = path.into_inner();
    HttpResponse::Ok().json(json!({"code": fake.mint_login_code(&appid, &openid)}))
}
