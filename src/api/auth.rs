//! API keys: `Authorization: Bearer <key>`, each allowed for some apps and scopes.
//!
//! Keys are kept only as SHA-256 digests, so a key never sits in memory in a
//! form a debug print could leak, and lookups cost the same for every key.

use std::collections::{BTreeSet, HashMap};

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::error::AccessError;
use crate::config::{ApiKeySettings, Scope};

#[derive(Debug, Clone)]
struct Grant {
    /// `None` means every app.
    apps: Option<BTreeSet<String>>,
    scopes: BTreeSet<Scope>,
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Grant>,
}

impl ApiKeys {
    /// Builds the table from validated settings.
    pub fn from_settings<'a>(
        keys: impl IntoIterator<Item = &'a ApiKeySettings>,
    ) -> anyhow::Result<Self> {
        let mut by_digest = HashMap::new();
        for key in keys {
            let apps = (!key.apps.iter().any(|app| app == "*"))
                .then(|| key.apps.iter().cloned().collect());
            let grant = Grant {
                apps,
                scopes: key.parsed_scopes()?.into_iter().collect(),
            };
            by_digest.insert(digest(key.key.expose_secret()), grant);
        }
        Ok(Self { by_digest })
    }

    /// Checks the request's key against the app and any one of `scopes`.
    pub fn authorize(
        &self,
        request: &HttpRequest,
        appid: &str,
        app_exists: bool,
        scopes: &[Scope],
    ) -> Result<(), AccessError> {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .ok_or(AccessError::MissingKey)?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or(AccessError::InvalidKey)?;
        let grant = self
            .by_digest
            .get(&digest(key))
            .ok_or(AccessError::InvalidKey)?;
        if !app_exists {
            return Err(AccessError::UnknownApp);
        }
        let app_allowed = grant.apps.as_ref().is_none_or(|apps| apps.contains(appid));
        let scope_allowed = grant.scopes.contains(&Scope::Admin)
            || scopes.iter().any(|scope| grant.scopes.contains(scope));
        if app_allowed && scope_allowed {
            Ok(())
        } else {
            Err(AccessError::Forbidden)
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
