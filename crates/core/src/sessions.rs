//! The rules of mini-program login sessions and of bearer tokens: what a
//! `jscode2session` answer means (docs/wechat/login.md), when a login code
//! posted again is a replay the gateway answers from its own memory, whether
//! a stored session still holds, which kind of bearer a token is, and how a
//! `/me` body is credited to the session's user.
//!
//! Pure: every time is handed in as Unix milliseconds.

use serde_json::{Map, Value};

/// How long a `wx.login` code is valid at WeChat (docs/wechat/login.md,
/// "The code"): the window in which the same code posted again gets the
/// session its first exchange made.
pub const CODE_VALIDITY_MS: i64 = 5 * 60 * 1_000;

/// The visible prefix of a session token.
pub const SESSION_TOKEN_PREFIX: &str = "fgs_";

/// The visible prefix of an API key kept as data.
pub const API_KEY_PREFIX: &str = "fgk_";

/// The longest login code accepted (WeChat's are 32 characters).
pub const MAX_CODE_LEN: usize = 128;

/// What a bearer token is, by its visible prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerKind {
    /// `fgs_…`: a mini-program login session.
    Session,
    /// `fgk_…`: an API key kept in the database.
    StoredKey,
    /// Anything else: an API key of the configuration file.
    ConfiguredKey,
}

/// Which kind of bearer `token` is.
pub fn bearer_kind(token: &str) -> BearerKind {
    if token.starts_with(SESSION_TOKEN_PREFIX) {
        BearerKind::Session
    } else if token.starts_with(API_KEY_PREFIX) {
        BearerKind::StoredKey
    } else {
        BearerKind::ConfiguredKey
    }
}

/// Why a login failed, from WeChat's errcode (docs/wechat/login.md,
/// "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// 40029 (invalid, expired or another app's code) or 40163 (used): the
    /// frontend calls `wx.login` again.
    InvalidCode,
    /// 45011: the user's per-minute limit at WeChat.
    RateLimited,
    /// 40226: WeChat blocks this (high-risk) user's login.
    UserBlocked,
    /// 40013, 40125, 40164, 41002, 41004, 40243: the app's configuration
    /// (appid, secret, IP whitelist) is wrong; the operator must act.
    AppConfiguration,
    /// -1 or any other errcode: WeChat is busy or said something unknown;
    /// the same code may be tried again.
    Unavailable,
}

/// The errcode WeChat answers a second exchange of one code with.
pub const CODE_USED: i64 = 40163;

/// What a `jscode2session` errcode other than 0 means.
pub fn login_failure(errcode: i64) -> LoginFailure {
    match errcode {
        40029 | CODE_USED => LoginFailure::InvalidCode,
        45011 => LoginFailure::RateLimited,
        40226 => LoginFailure::UserBlocked,
        40013 | 40125 | 40164 | 41002 | 41004 | 40243 => LoginFailure::AppConfiguration,
        _ => LoginFailure::Unavailable,
    }
}

/// Whether a session made from a code at `created_at` answers the same code
/// posted again at `now`: within the code's validity, and only while the
/// session itself holds.
pub fn replay_answers(created_at: i64, session: SessionCheck, now: i64) -> bool {
    session == SessionCheck::Valid && now - created_at < CODE_VALIDITY_MS
}

/// What a stored session is worth at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// It authenticates its user.
    Valid,
    /// Its time ran out.
    Expired,
    /// The user logged out (or an operator revoked it).
    Revoked,
}

/// Whether a session expiring at `expires_at`, revoked at `revoked_at`,
/// still holds at `now`.
pub fn check_session(expires_at: i64, revoked_at: Option<i64>, now: i64) -> SessionCheck {
    if revoked_at.is_some_and(|at| at <= now) {
        SessionCheck::Revoked
    } else if now >= expires_at {
        SessionCheck::Expired
    } else {
        SessionCheck::Valid
    }
}

/// Whether a posted login code is plausible: 1 to [`MAX_CODE_LEN`] printable
/// ASCII characters without spaces. Anything else is refused before WeChat
/// is asked.
pub fn plausible_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_CODE_LEN
        && code.bytes().all(|byte| byte.is_ascii_graphic())
}

/// A `/me` body named an openid: only the session's user may be credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenidNamed;

/// Credits a `/me/credentials` body (one item, or `{"credentials": [...]}`)
/// to the session's `openid`: every item object gets it, and an item that
/// names an openid (any, even the session's) refuses the whole body.
/// Anything else is left for the collect rules to refuse.
pub fn credit_credentials(body: &mut Value, openid: &str) -> Result<(), OpenidNamed> {
    let Some(object) = body.as_object_mut() else {
        return Ok(());
    };
    match object.get_mut("credentials") {
        Some(Value::Array(items)) => {
            if items.iter().any(|item| {
                item.as_object()
                    .is_some_and(|item| item.contains_key("openid"))
            }) {
                return Err(OpenidNamed);
            }
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                item.insert("openid".into(), Value::String(openid.to_owned()));
            }
            Ok(())
        }
        Some(_) => Ok(()),
        None => credit_object(object, openid),
    }
}

/// Credits a `/me/subscriptions` body (a prompt result) to the session's
/// `openid`; a body that names an openid is refused.
pub fn credit_prompt(body: &mut Value, openid: &str) -> Result<(), OpenidNamed> {
    match body.as_object_mut() {
        Some(object) => credit_object(object, openid),
        None => Ok(()),
    }
}

fn credit_object(object: &mut Map<String, Value>, openid: &str) -> Result<(), OpenidNamed> {
    if object.contains_key("openid") {
        return Err(OpenidNamed);
    }
    object.insert("openid".into(), Value::String(openid.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_me_body_is_credited_to_the_session_and_may_not_name_an_openid() {
        let mut single = json!({"kind": "form_id", "value": "v"});
        assert_eq!(credit_credentials(&mut single, "o-me"), Ok(()));
        assert_eq!(single["openid"], "o-me");
        let mut batch = json!({"credentials": [{"kind": "form_id", "value": "v"}, 7]});
        assert_eq!(credit_credentials(&mut batch, "o-me"), Ok(()));
        assert_eq!(batch["credentials"][0]["openid"], "o-me");
        assert_eq!(batch["credentials"][1], 7);
        let mut prompt = json!({"request_id": "r", "result": {}});
        assert_eq!(credit_prompt(&mut prompt, "o-me"), Ok(()));
        assert_eq!(prompt["openid"], "o-me");
        let refused = [
            json!({"openid": "o-other", "kind": "form_id", "value": "v"}),
            json!({"openid": "o-me", "kind": "form_id", "value": "v"}),
            json!({"credentials": [{"kind": "form_id", "value": "w"}, {"openid": "o-other", "kind": "form_id", "value": "v"}]}),
        ];
        for mut body in refused {
            let before = body.clone();
            assert_eq!(
                credit_credentials(&mut body, "o-me"),
                Err(OpenidNamed),
                "{before}"
            );
        }
        assert_eq!(
            credit_prompt(&mut json!({"openid": "o-other", "request_id": "r"}), "o-me"),
            Err(OpenidNamed)
        );
    }

    #[test]
    fn errcodes_map_to_failures() {
        let table = [
            (40029, LoginFailure::InvalidCode),
            (40163, LoginFailure::InvalidCode),
            (45011, LoginFailure::RateLimited),
            (40226, LoginFailure::UserBlocked),
            (40013, LoginFailure::AppConfiguration),
            (40125, LoginFailure::AppConfiguration),
            (40164, LoginFailure::AppConfiguration),
            (-1, LoginFailure::Unavailable),
            (12345, LoginFailure::Unavailable),
        ];
        let wrong: Vec<_> = table
            .iter()
            .filter(|(errcode, expected)| login_failure(*errcode) != *expected)
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn sessions_hold_until_expiry_or_revocation() {
        let table = [
            (100, None, 99, SessionCheck::Valid),
            (100, None, 100, SessionCheck::Expired),
            (100, Some(50), 60, SessionCheck::Revoked),
            (100, Some(50), 200, SessionCheck::Revoked),
            (100, Some(70), 60, SessionCheck::Valid),
        ];
        let wrong: Vec<_> = table
            .iter()
            .filter(|(expires, revoked, now, expected)| {
                check_session(*expires, *revoked, *now) != *expected
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn a_replay_is_answered_only_inside_the_code_validity() {
        let table = [
            (0, SessionCheck::Valid, CODE_VALIDITY_MS - 1, true),
            (0, SessionCheck::Valid, CODE_VALIDITY_MS, false),
            (0, SessionCheck::Revoked, 10, false),
            (0, SessionCheck::Expired, 10, false),
        ];
        let wrong: Vec<_> = table
            .iter()
            .filter(|(created, check, now, expected)| {
                replay_answers(*created, *check, *now) != *expected
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn bearers_are_told_apart_by_prefix() {
        assert_eq!(bearer_kind("fgs_abc"), BearerKind::Session);
        assert_eq!(bearer_kind("fgk_abc"), BearerKind::StoredKey);
        assert_eq!(bearer_kind("test-send-key"), BearerKind::ConfiguredKey);
    }

    #[test]
    fn codes_are_plausible_or_refused() {
        assert!(plausible_code("0a3bC9xYz"));
        assert!(!plausible_code(""));
        assert!(!plausible_code("has space"));
        assert!(!plausible_code(&"x".repeat(MAX_CODE_LEN + 1)));
        assert!(!plausible_code("ключ"));
    }
}
