//! Mini-program login sessions: a `wx.login` code exchanged at WeChat
//! (`jscode2session`) for the user's openid, and a session token the
//! mini-program then calls the `/me` routes with, so that a user can only
//! ever post for themselves and no team needs a relay backend.
//!
//! What is kept: the SHA-256 of the token (never the token), the SHA-256 of
//! the code (never the code), the openid, the unionid when WeChat gives one
//! (never returned to a client), and a random salt. The token is derived from
//! the salt and the code, so the same code posted again within its validity
//! (a frontend that lost the answer) gets the same token back, while the
//! database alone cannot give it. WeChat's `session_key` is never read.
//! The rules (which errcode means what, when a replay is answered, whether a
//! session holds) are `formid_core::sessions`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::clock::{ms, SharedClock};
use crate::config::AppSettings;
use crate::storage::{NewSession, SessionRow, Storage};
use crate::wechat::{LoginReply, SharedWeChat};
use formid_core::sessions::{
    check_session, login_failure, replay_answers, LoginFailure, SessionCheck, CODE_USED,
    SESSION_TOKEN_PREFIX,
};

/// A session handed out by a login.
pub struct IssuedSession {
    /// The bearer token: in this answer only, never stored or logged.
    pub token: SecretString,
    pub openid: String,
    pub expires_at: i64,
    /// Whether this is the session an earlier post of the same code made.
    pub replayed: bool,
}

impl fmt::Debug for IssuedSession {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("IssuedSession")
            .field("expires_at", &self.expires_at)
            .field("replayed", &self.replayed)
            .finish_non_exhaustive()
    }
}

/// Why a login gave no session.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// WeChat refused the code (40029, 40163 not a replay of ours), or the
    /// code was ours and its session is gone.
    #[error("the login code is invalid, expired or used")]
    InvalidCode { errcode: Option<i64> },
    /// 45011: the user's per-minute limit at WeChat.
    #[error("WeChat's login limit for this user was reached")]
    RateLimited { errcode: i64 },
    /// 40226: WeChat blocks this user's login.
    #[error("WeChat blocks this user's login")]
    UserBlocked { errcode: i64 },
    /// The app's appid, secret or IP whitelist is wrong at WeChat.
    #[error("WeChat refused the app's configuration (errcode {errcode})")]
    AppConfiguration { errcode: i64 },
    /// WeChat was busy, unreachable, or its answer was lost.
    #[error("WeChat could not answer the login")]
    Unavailable { errcode: Option<i64> },
    /// The ledger failed.
    #[error("the ledger failed: {0:#}")]
    Storage(#[from] anyhow::Error),
}

/// A session a request authenticated with.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    pub id: String,
    pub appid: String,
    pub openid: String,
}

/// Why a token authenticates no one.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session has this token (forged, or swept after expiry).
    #[error("unknown session")]
    Unknown,
    /// Its time ran out or it was revoked.
    #[error("session {0:?}")]
    Ended(SessionCheck),
    /// The ledger failed.
    #[error("the ledger failed: {0:#}")]
    Storage(#[from] anyhow::Error),
}

/// Logs users in and checks their tokens.
#[derive(Clone)]
pub struct Sessions {
    storage: Arc<dyn Storage>,
    wechat: SharedWeChat,
    apps: Arc<BTreeMap<String, AppSettings>>,
    clock: SharedClock,
    ttl: Duration,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What [`Sessions::new`] needs.
pub struct SessionParts {
    pub storage: Arc<dyn Storage>,
    pub wechat: SharedWeChat,
    pub apps: Arc<BTreeMap<String, AppSettings>>,
    pub clock: SharedClock,
    pub ttl: Duration,
}

impl Sessions {
    /// Sessions over the ledger and WeChat.
    pub fn new(parts: SessionParts) -> Self {
        Self {
            storage: parts.storage,
            wechat: parts.wechat,
            apps: parts.apps,
            clock: parts.clock,
            ttl: parts.ttl,
        }
    }

    /// Exchanges `code` for a session of `appid`'s user; the same code
    /// posted again within its validity answers the same session without
    /// asking WeChat. The caller checked that the app is served and the code
    /// plausible.
    #[tracing::instrument(name = "login", skip_all, fields(appid = %appid))]
    pub async fn login(&self, appid: &str, code: &str) -> Result<IssuedSession, LoginError> {
        let code_hash = code_hash(appid, code);
        if let Some(row) = self.storage.session_by_code(appid, &code_hash).await? {
            return self.replay(row, code);
        }
        let secret = match self.apps.get(appid) {
            Some(app) => app.secret.clone(),
            None => return Err(LoginError::InvalidCode { errcode: None }),
        };
        let reply = self.wechat.code_to_session(appid, &secret, code).await;
        let identity = match reply {
            Ok(LoginReply::Identity(identity)) => identity,
            Ok(LoginReply::Refused(reply)) => {
                return self.refused(appid, code, &code_hash, reply.errcode).await
            }
            Err(error) => {
                tracing::warn!(%error, "jscode2session failed");
                return Err(LoginError::Unavailable { errcode: None });
            }
        };
        let now = self.clock.now_ms();
        let salt = random_salt();
        let token = derive_token(&salt, appid, code);
        let session = NewSession {
            id: uuid::Uuid::new_v4().simple().to_string(),
            appid: appid.to_owned(),
            openid: identity.openid,
            unionid: identity.unionid,
            token_hash: token_hash(token.expose_secret()),
            code_hash: code_hash.clone(),
            token_salt: salt,
            created_at: now,
            expires_at: now + ms(self.ttl),
        };
        if !self.storage.insert_session(&session).await? {
            // Another exchange of the same code stored its session first.
            return match self.storage.session_by_code(appid, &code_hash).await? {
                Some(row) => self.replay(row, code),
                None => Err(LoginError::Unavailable { errcode: None }),
            };
        }
        tracing::info!(session = %session.id, "session created");
        Ok(IssuedSession {
            token,
            openid: session.openid,
            expires_at: session.expires_at,
            replayed: false,
        })
    }

    /// The session an earlier exchange of the code made, when the code is
    /// still within its validity and the session holds.
    fn replay(&self, row: SessionRow, code: &str) -> Result<IssuedSession, LoginError> {
        let now = self.clock.now_ms();
        let check = check_session(row.expires_at, row.revoked_at, now);
        if !replay_answers(row.created_at, check, now) {
            return Err(LoginError::InvalidCode { errcode: None });
        }
        tracing::info!(session = %row.id, "login code replayed: the same session");
        Ok(IssuedSession {
            token: derive_token(&row.token_salt, &row.appid, code),
            openid: row.openid,
            expires_at: row.expires_at,
            replayed: true,
        })
    }

    /// What a refusal of WeChat's answers. A 40163 may be a twin exchange of
    /// ours that stored its session meanwhile: that session is answered.
    async fn refused(
        &self,
        appid: &str,
        code: &str,
        code_hash: &str,
        errcode: i64,
    ) -> Result<IssuedSession, LoginError> {
        if errcode == CODE_USED {
            if let Some(row) = self.storage.session_by_code(appid, code_hash).await? {
                return self.replay(row, code);
            }
        }
        Err(match login_failure(errcode) {
            LoginFailure::InvalidCode => LoginError::InvalidCode {
                errcode: Some(errcode),
            },
            LoginFailure::RateLimited => LoginError::RateLimited { errcode },
            LoginFailure::UserBlocked => LoginError::UserBlocked { errcode },
            LoginFailure::AppConfiguration => {
                tracing::error!(
                    errcode,
                    "jscode2session refused the app's configuration (appid, secret or IP whitelist)"
                );
                LoginError::AppConfiguration { errcode }
            }
            LoginFailure::Unavailable => LoginError::Unavailable {
                errcode: Some(errcode),
            },
        })
    }

    /// The session of a bearer token (`fgs_…`), if it holds now.
    pub async fn authenticate(&self, token: &str) -> Result<ActiveSession, SessionError> {
        let row = self
            .storage
            .session_by_token(&token_hash(token))
            .await?
            .ok_or(SessionError::Unknown)?;
        match check_session(row.expires_at, row.revoked_at, self.clock.now_ms()) {
            SessionCheck::Valid => Ok(ActiveSession {
                id: row.id,
                appid: row.appid,
                openid: row.openid,
            }),
            ended => Err(SessionError::Ended(ended)),
        }
    }

    /// Ends a session (the user logged out).
    pub async fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        self.storage.revoke_session(id, self.clock.now_ms()).await
    }
}

/// 32 random bytes, hex: the token's randomness (256 bits).
fn random_salt() -> String {
    let mut salt = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut salt);
    hex::encode(salt)
}

/// `fgs_` and 43 characters: the SHA-256 of the salt, the app and the code.
fn derive_token(salt: &str, appid: &str, code: &str) -> SecretString {
    let mut hasher = Sha256::new();
    hasher.update(b"formid-gateway session token\0");
    hasher.update(salt.as_bytes());
    hasher.update([0]);
    hasher.update(appid.as_bytes());
    hasher.update([0]);
    hasher.update(code.as_bytes());
    let token = format!(
        "{SESSION_TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(hasher.finalize())
    );
    SecretString::from(token)
}

/// The stored form of a token.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The stored form of a login code: never the code.
fn code_hash(appid: &str, code: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"formid-gateway login code\0");
    hasher.update(appid.as_bytes());
    hasher.update([0]);
    hasher.update(code.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_from_its_salt_and_code_and_is_long_enough() {
        let salt = random_salt();
        let one = derive_token(&salt, "wxa", "code-1");
        assert_eq!(
            one.expose_secret(),
            derive_token(&salt, "wxa", "code-1").expose_secret()
        );
        assert_ne!(
            one.expose_secret(),
            derive_token(&salt, "wxa", "code-2").expose_secret()
        );
        assert_ne!(
            one.expose_secret(),
            derive_token(&random_salt(), "wxa", "code-1").expose_secret()
        );
        assert!(one.expose_secret().starts_with("fgs_"));
        assert_eq!(one.expose_secret().len(), 4 + 43);
        assert_ne!(token_hash(one.expose_secret()), code_hash("wxa", "code-1"));
    }
}
