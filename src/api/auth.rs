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

    /// Checks the request's key for any one of `scopes`, whatever apps it
    /// is allowed (a route that names no app in its path).
    pub fn authorize_scope(
        &self,
        request: &HttpRequest,
        scopes: &[Scope],
    ) -> Result<(), AccessError> {
        let grant = self.grant_of(request)?;
        if grant.scopes.contains(&Scope::Admin)
            || scopes.iter().any(|scope| grant.scopes.contains(scope))
        {
            Ok(())
        } else {
            Err(AccessError::Forbidden)
        }
    }

    /// The grant of the request's key.
    fn grant_of(&self, request: &HttpRequest) -> Result<&Grant, AccessError> {
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .ok_or(AccessError::MissingKey)?;
        let key = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or(AccessError::InvalidKey)?;
        self.by_digest
            .get(&digest(key))
            .ok_or(AccessError::InvalidKey)
    }

    /// Checks the request's key against the app and any one of `scopes`.
    pub fn authorize(
        &self,
        request: &HttpRequest,
        appid: &str,
        app_exists: bool,
        scopes: &[Scope],
    ) -> Result<(), AccessError> {
        let grant = self.grant_of(request)?;
        // A key limited to some apps gets 403 for every other appid, whether
        // it is configured or not: 404 against 403 would tell it which
        // appids this gateway serves.
        let app_allowed = grant.apps.as_ref().is_none_or(|apps| apps.contains(appid));
        if !app_allowed {
            return Err(AccessError::Forbidden);
        }
        if !app_exists {
            return Err(AccessError::UnknownApp);
        }
        let scope_allowed = grant.scopes.contains(&Scope::Admin)
            || scopes.iter().any(|scope| grant.scopes.contains(scope));
        if scope_allowed {
            Ok(())
        } else {
            Err(AccessError::Forbidden)
        }
    }
}

/// The token of `Bearer <token>`: the scheme is case-insensitive (RFC 7235
/// §2.1), spaces around the token are not part of it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer k", "bearer k", "BEARER k", "bEaReR  k "] {
            assert_eq!(bearer_token(header), Some("k"), "{header}");
        }
        for header in ["Basic k", "Bearer", "Bearer ", "Bearerk", "Token k"] {
            assert_eq!(bearer_token(header), None, "{header}");
        }
    }
}
