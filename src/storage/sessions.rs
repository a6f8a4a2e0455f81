//! The storage of login sessions ([`SessionStore`]) and of API keys kept as
//! data ([`KeyStore`]), both backends stamped from one body
//! ([`impl_session_storage!`], the statements in `sql.rs`). It records and
//! reads; whether a session or key holds is decided by the caller with the
//! core's rules (`formid_core::sessions`).

use std::fmt;

use async_trait::async_trait;

/// A session to store. The token itself is not here: only its hash.
#[derive(Clone)]
pub struct NewSession {
    pub id: String,
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub token_hash: String,
    pub code_hash: String,
    pub token_salt: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl fmt::Debug for NewSession {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("NewSession")
            .field("id", &self.id)
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

/// A stored session.
#[derive(Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// With the login code, gives the token again (a replayed code).
    pub token_salt: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl fmt::Debug for SessionRow {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SessionRow")
            .field("id", &self.id)
            .field("appid", &self.appid)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// An API key to store: its hash, never the key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key_id: String,
    pub name: String,
    pub key_hash: String,
    /// Comma-separated AppIDs, or `*`.
    pub apps: String,
    /// Comma-separated scopes.
    pub scopes: String,
    pub created_at: i64,
}

/// A stored API key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub name: String,
    pub key_hash: String,
    pub apps: String,
    pub scopes: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Login sessions.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a session; `false` when the app already has one for the same
    /// code (nothing stored).
    async fn insert_session(&self, session: &NewSession) -> anyhow::Result<bool>;

    /// The session whose token has `token_hash`.
    async fn session_by_token(&self, token_hash: &str) -> anyhow::Result<Option<SessionRow>>;

    /// The app's session made from the code with `code_hash`.
    async fn session_by_code(
        &self,
        appid: &str,
        code_hash: &str,
    ) -> anyhow::Result<Option<SessionRow>>;

    /// Revokes a session at `now`; `false` when it was revoked already.
    async fn revoke_session(&self, id: &str, now: i64) -> anyhow::Result<bool>;

    /// Deletes the sessions expired at `now`.
    async fn delete_expired_sessions(&self, now: i64) -> anyhow::Result<u64>;
}

/// API keys kept as data.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a key; `false` when its name is taken (nothing stored).
    async fn insert_api_key(&self, key: &NewApiKey) -> anyhow::Result<bool>;

    /// The key with the visible id `key_id`.
    async fn api_key(&self, key_id: &str) -> anyhow::Result<Option<ApiKeyRow>>;

    /// Every key, by name.
    async fn api_keys(&self) -> anyhow::Result<Vec<ApiKeyRow>>;

    /// Revokes the key named `name`; `false` when there is none left to revoke.
    async fn revoke_api_key(&self, name: &str, now: i64) -> anyhow::Result<bool>;

    /// Records that the key was used at `now`.
    async fn touch_api_key(&self, key_id: &str, now: i64) -> anyhow::Result<()>;
}

/// Implements [`SessionStore`] and [`KeyStore`] for `$storage`, a
/// [`Backend`](super::shared::Backend).
macro_rules! impl_session_storage {
    ($storage:ty) => {
        const _: () = {
            use ::anyhow::Context as _;

            use $crate::storage::sessions::{
                ApiKeyRow, KeyStore, NewApiKey, NewSession, SessionRow, SessionStore,
            };
            use $crate::storage::shared::Backend;
            use $crate::storage::sql;

            #[async_trait::async_trait]
            impl SessionStore for $storage {
                async fn insert_session(&self, session: &NewSession) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::INSERT_SESSION)
                        .bind(&session.id)
                        .bind(&session.appid)
                        .bind(&session.openid)
                        .bind(&session.unionid)
                        .bind(&session.token_hash)
                        .bind(&session.code_hash)
                        .bind(&session.token_salt)
                        .bind(session.created_at)
                        .bind(session.expires_at)
                        .execute(self.writer())
                        .await
                        .context("storing a session")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn session_by_token(
                    &self,
                    token_hash: &str,
                ) -> anyhow::Result<Option<SessionRow>> {
                    sqlx::query_as(sql::SESSION_BY_TOKEN)
                        .bind(token_hash)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading a session")
                }

                async fn session_by_code(
                    &self,
                    appid: &str,
                    code_hash: &str,
                ) -> anyhow::Result<Option<SessionRow>> {
                    // Why the writer: a replay follows its first exchange
                    // closely, and must see the session that exchange wrote.
                    sqlx::query_as(sql::SESSION_BY_CODE)
                        .bind(appid)
                        .bind(code_hash)
                        .fetch_optional(self.writer())
                        .await
                        .context("reading a session by its code")
                }

                async fn revoke_session(&self, id: &str, now: i64) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::REVOKE_SESSION)
                        .bind(id)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("revoking a session")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn delete_expired_sessions(&self, now: i64) -> anyhow::Result<u64> {
                    let done = sqlx::query(sql::DELETE_EXPIRED_SESSIONS)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("deleting expired sessions")?;
                    Ok(done.rows_affected())
                }
            }

            #[async_trait::async_trait]
            impl KeyStore for $storage {
                async fn insert_api_key(&self, key: &NewApiKey) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::INSERT_API_KEY)
                        .bind(&key.key_id)
                        .bind(&key.name)
                        .bind(&key.key_hash)
                        .bind(&key.apps)
                        .bind(&key.scopes)
                        .bind(key.created_at)
                        .execute(self.writer())
                        .await
                        .context("storing an API key")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn api_key(&self, key_id: &str) -> anyhow::Result<Option<ApiKeyRow>> {
                    // Why the writer: a revocation must be seen by the next
                    // refill of this process's copy, not a replica's past.
                    sqlx::query_as(sql::API_KEY_BY_ID)
                        .bind(key_id)
                        .fetch_optional(self.writer())
                        .await
                        .context("reading an API key")
                }

                async fn api_keys(&self) -> anyhow::Result<Vec<ApiKeyRow>> {
                    sqlx::query_as(sql::API_KEYS)
                        .fetch_all(self.reader())
                        .await
                        .context("listing API keys")
                }

                async fn revoke_api_key(&self, name: &str, now: i64) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::REVOKE_API_KEY)
                        .bind(name)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("revoking an API key")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn touch_api_key(&self, key_id: &str, now: i64) -> anyhow::Result<()> {
                    sqlx::query(sql::TOUCH_API_KEY)
                        .bind(key_id)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("recording an API key's use")?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use impl_session_storage;
