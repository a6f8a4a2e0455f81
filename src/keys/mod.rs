//! API keys kept as data: created by `formid-gateway keys create` or
//! `POST /v1/admin/keys`, shown once, stored only as their SHA-256 with a
//! visible id (`fgk_<id>_<secret>`), listed with their last use, revoked by
//! name. Keys of the configuration file keep working beside them.
//!
//! A process answers a stored key from memory for at most `keys.cache_secs`
//! (default 5 s) after it read it; a revocation written by any instance is
//! therefore refused by every instance at most that long after it commits.
//! The digest of a presented key is compared with the stored one in
//! constant time.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::config::Scope;
use crate::storage::{ApiKeyRow, NewApiKey, Storage};
use formid_core::sessions::API_KEY_PREFIX;

/// What a stored key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    /// `None`: every app.
    pub apps: Option<BTreeSet<String>>,
    pub scopes: BTreeSet<Scope>,
}

/// A stored key a request authenticated with.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub name: String,
    pub grant: KeyGrant,
}

/// A key as listed: never the key.
#[derive(Debug, Clone)]
pub struct KeyListing {
    pub name: String,
    pub key_id: String,
    pub grant: KeyGrant,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A key just created: the only time the key is seen.
pub struct CreatedKey {
    pub key: SecretString,
    pub listing: KeyListing,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CreatedKey")
            .field("listing", &self.listing)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a key named {0:?} exists (revoked keys keep their name)")]
    NameTaken(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the ledger failed: {0:#}")]
    Storage(#[from] anyhow::Error),
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub name: String,
    /// AppIDs, or `*` alone.
    pub apps: Vec<String>,
    pub scopes: Vec<Scope>,
}

/// The stored keys of the ledger, with this process's copies.
#[derive(Clone)]
pub struct StoredKeys {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    copies: Arc<TtlCache<ApiKeyRow>>,
}

impl fmt::Debug for StoredKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("StoredKeys").finish_non_exhaustive()
    }
}

impl StoredKeys {
    /// Keys of `storage`, each kept in memory `cache_ms` after it was read.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock, cache_ms: i64) -> Self {
        Self {
            copies: Arc::new(TtlCache::new(cache_ms, clock.clone())),
            storage,
            clock,
        }
    }

    /// Creates a key; `apps` are checked by the caller against the
    /// configured apps.
    pub async fn create(&self, request: &KeyRequest) -> Result<CreatedKey, CreateError> {
        check_request(request)?;
        let key_id = random_text(9);
        let key = format!("{API_KEY_PREFIX}{key_id}_{}", random_text(32));
        let now = self.clock.now_ms();
        let stored = NewApiKey {
            key_id: key_id.clone(),
            name: request.name.clone(),
            key_hash: digest_hex(&key),
            apps: request.apps.join(","),
            scopes: request
                .scopes
                .iter()
                .map(|scope| scope_name(*scope))
                .collect::<Vec<_>>()
                .join(","),
            created_at: now,
        };
        if !self.storage.insert_api_key(&stored).await? {
            return Err(CreateError::NameTaken(request.name.clone()));
        }
        tracing::info!(name = %request.name, key_id = %key_id, "API key created");
        Ok(CreatedKey {
            key: SecretString::from(key),
            listing: KeyListing {
                name: request.name.clone(),
                key_id,
                grant: grant_of(&stored.apps, &stored.scopes),
                created_at: now,
                last_used_at: None,
                revoked_at: None,
            },
        })
    }

    /// Every key, by name.
    pub async fn list(&self) -> anyhow::Result<Vec<KeyListing>> {
        Ok(self
            .storage
            .api_keys()
            .await?
            .into_iter()
            .map(|row| KeyListing {
                grant: grant_of(&row.apps, &row.scopes),
                name: row.name,
                key_id: row.key_id,
                created_at: row.created_at,
                last_used_at: row.last_used_at,
                revoked_at: row.revoked_at,
            })
            .collect())
    }

    /// Revokes the key named `name`: `false` when no live key has the name.
    pub async fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        let revoked = self
            .storage
            .revoke_api_key(name, self.clock.now_ms())
            .await?;
        if revoked {
            // This process refuses it at once; the others within the TTL.
            for row in self.storage.api_keys().await? {
                if row.name == name {
                    self.copies.invalidate(&row.key_id);
                }
            }
            tracing::info!(%name, "API key revoked");
        }
        Ok(revoked)
    }

    /// The stored key `presented` (`fgk_…`) is, if it is one and not
    /// revoked. A copy read from the ledger is used for the cache's TTL; each
    /// read records the key's last use.
    pub async fn authenticate(&self, presented: &str) -> anyhow::Result<Option<StoredKey>> {
        let Some(key_id) = key_id_of(presented) else {
            return Ok(None);
        };
        let row = match self.copies.fresh(key_id) {
            Some(row) => row,
            None => {
                let Some(row) = self.storage.api_key(key_id).await? else {
                    return Ok(None);
                };
                let now = self.clock.now_ms();
                if row.revoked_at.is_none() {
                    self.storage.touch_api_key(key_id, now).await?;
                }
                self.copies.put(key_id, row.clone(), now);
                row
            }
        };
        let matches: bool = digest_hex(presented)
            .as_bytes()
            .ct_eq(row.key_hash.as_bytes())
            .into();
        if !matches || row.revoked_at.is_some() {
            return Ok(None);
        }
        Ok(Some(StoredKey {
            grant: grant_of(&row.apps, &row.scopes),
            name: row.name,
        }))
    }
}

/// A name is 1 to 64 letters, digits, `-` or `_`; apps are `*` alone or
/// AppIDs; at least one scope.
fn check_request(request: &KeyRequest) -> Result<(), CreateError> {
    let name_ok = (1..=64).contains(&request.name.len())
        && request
            .name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !name_ok {
        return Err(CreateError::Invalid(
            "name: 1 to 64 letters, digits, - or _".into(),
        ));
    }
    if request.apps.is_empty() || (request.apps.len() > 1 && request.apps.iter().any(|a| a == "*"))
    {
        return Err(CreateError::Invalid(
            "apps: one or more AppIDs, or * alone".into(),
        ));
    }
    if request.scopes.is_empty() {
        return Err(CreateError::Invalid(
            "scopes: one or more of collect, send, token, admin".into(),
        ));
    }
    Ok(())
}

/// The `<id>` of `fgk_<id>_<secret>`.
fn key_id_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(API_KEY_PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    (!key_id.is_empty() && !secret.is_empty()).then_some(key_id)
}

/// `bytes` random bytes: in hex up to 16 bytes (a key's id, which must
/// never hold the `_` separator), URL-safe base64 beyond (its secret: 256
/// bits).
fn random_text(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    if bytes <= 16 {
        hex::encode(buffer)
    } else {
        URL_SAFE_NO_PAD.encode(buffer)
    }
}

fn digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A listing as one tab-separated line (the `keys list` command): name,
/// key id, apps, scopes, created, last used, revoked (`-` for none).
pub fn listing_line(key: &KeyListing) -> String {
    let time = |ms: Option<i64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| crate::clock::from_ms(ms).to_rfc3339(),
        )
    };
    let apps = key.grant.apps.as_ref().map_or_else(
        || "*".to_owned(),
        |apps| apps.iter().cloned().collect::<Vec<_>>().join(","),
    );
    let scopes: Vec<&str> = key
        .grant
        .scopes
        .iter()
        .map(|scope| scope_name(*scope))
        .collect();
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        key.name,
        key.key_id,
        apps,
        scopes.join(","),
        time(Some(key.created_at)),
        time(key.last_used_at),
        time(key.revoked_at)
    )
}

/// The stored names of a scope.
pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Collect => "collect",
        Scope::Send => "send",
        Scope::Token => "token",
        Scope::Admin => "admin",
        Scope::Urgent => "urgent",
    }
}

/// A scope by its name.
pub fn parse_scope(name: &str) -> Option<Scope> {
    [
        Scope::Collect,
        Scope::Send,
        Scope::Token,
        Scope::Admin,
        Scope::Urgent,
    ]
    .into_iter()
    .find(|scope| scope_name(*scope) == name.trim())
}

fn grant_of(apps: &str, scopes: &str) -> KeyGrant {
    let apps: Vec<&str> = apps.split(',').filter(|app| !app.is_empty()).collect();
    KeyGrant {
        apps: (!apps.contains(&"*")).then(|| apps.iter().map(|app| app.to_string()).collect()),
        scopes: scopes.split(',').filter_map(parse_scope).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_id_and_nothing_else_does() {
        assert_eq!(
            key_id_of("fgk_abc123_secret_with_underscores"),
            Some("abc123")
        );
        assert_eq!(key_id_of("fgk_abc123"), None);
        assert_eq!(key_id_of("fgk__secret"), None);
        assert_eq!(key_id_of("some-config-key"), None);
    }

    #[test]
    fn grants_read_back_as_written() {
        let grant = grant_of("wxa,wxb", "send,collect");
        assert_eq!(
            grant.apps,
            Some(["wxa".to_string(), "wxb".to_string()].into())
        );
        assert_eq!(grant.scopes, [Scope::Send, Scope::Collect].into());
        assert_eq!(grant_of("*", "admin").apps, None);
    }
}
