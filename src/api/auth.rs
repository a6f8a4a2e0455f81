//! Who calls: the API keys of the configuration (`Authorization: Bearer
//! <key>`, each allowed some apps and scopes), the keys kept as data
//! (`fgk_…`, [`crate::keys`]), the mini-program sessions (`fgs_…`,
//! [`crate::sessions`]), and the [`Principal`] a request authenticates as.
//! The visible prefix tells a bearer's kind (`formid_core::sessions`).
//!
//! Keys are kept only as SHA-256 digests, so a key never sits in memory in a
//! form a debug print could leak; the digest of a request's key is compared
//! with every configured one in constant time, so the answer takes as long
//! for any key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{ApiKeySettings, Scope};

/// What a key may do: some apps (or all) and some scopes.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `None` means every app.
    apps: Option<BTreeSet<String>>,
    scopes: BTreeSet<Scope>,
}

impl From<crate::keys::KeyGrant> for Grant {
    fn from(grant: crate::keys::KeyGrant) -> Self {
        Self {
            apps: grant.apps,
            scopes: grant.scopes,
        }
    }
}

impl Grant {
    /// Whether the grant covers `appid`.
    pub fn allows_app(&self, appid: &str) -> bool {
        self.apps.as_ref().is_none_or(|apps| apps.contains(appid))
    }

    /// Whether the grant holds any one of `scopes`, or `admin`.
    pub fn allows_any(&self, scopes: &[Scope]) -> bool {
        self.scopes.contains(&Scope::Admin)
            || scopes.iter().any(|scope| self.scopes.contains(scope))
    }
}

/// Who a request authenticated as.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A key of `[api_keys]`: a service of the app's owner, allowed the
    /// key's apps and scopes.
    ApiKey {
        /// The key's name in the configuration (never the key).
        name: Arc<str>,
        /// What the key may do.
        grant: Arc<Grant>,
    },
    /// A mini-program user's login session: that user only, on the session
    /// and `/me` routes of its own app only.
    Session {
        /// The session's id (never its token).
        id: Arc<str>,
        /// The app it was made for.
        appid: Arc<str>,
        /// The user it authenticates.
        openid: Arc<str>,
    },
}

impl Principal {
    /// A name for logs: never a secret.
    pub fn name(&self) -> &str {
        match self {
            Principal::ApiKey { name, .. } => name,
            Principal::Session { .. } => "session",
        }
    }

    /// Checks that the principal may act with any one of `scopes`, whatever
    /// app (a route that names no app in its path).
    pub fn check_scopes(&self, scopes: &[Scope]) -> Result<(), ApiError> {
        match self {
            Principal::ApiKey { grant, .. } if grant.allows_any(scopes) => Ok(()),
            Principal::ApiKey { .. } => Err(ApiError::forbidden()),
            Principal::Session { .. } => Err(ApiError::api_key_required()),
        }
    }

    /// Checks that the principal may act on `appid` with any one of
    /// `scopes`. `app_exists` says whether the gateway serves the app.
    pub fn check_app(
        &self,
        appid: &str,
        app_exists: bool,
        scopes: &[Scope],
    ) -> Result<(), ApiError> {
        match self {
            Principal::ApiKey { grant, .. } => {
                // A key limited to some apps gets 403 for every other appid,
                // whether it is configured or not: 404 against 403 would tell
                // it which appids this gateway serves.
                if !grant.allows_app(appid) {
                    return Err(ApiError::forbidden());
                }
                if !app_exists {
                    return Err(ApiError::unknown_app());
                }
                self.check_scopes(scopes)
            }
            Principal::Session { .. } => Err(ApiError::api_key_required()),
        }
    }
}

/// One configured key.
#[derive(Clone)]
struct ConfiguredKey {
    digest: [u8; 32],
    name: Arc<str>,
    grant: Arc<Grant>,
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ConfiguredKey>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(self.keys.iter().map(|key| (&key.name, &key.grant)))
            .finish()
    }
}

impl ApiKeys {
    /// Builds the table from validated settings, by key name.
    pub fn from_settings(keys: &BTreeMap<String, ApiKeySettings>) -> anyhow::Result<Self> {
        let mut configured = Vec::with_capacity(keys.len());
        for (name, key) in keys {
            let apps = (!key.apps.iter().any(|app| app == "*"))
                .then(|| key.apps.iter().cloned().collect());
            let grant = Grant {
                apps,
                scopes: key.parsed_scopes()?.into_iter().collect(),
            };
            configured.push(ConfiguredKey {
                digest: digest(key.key.expose_secret()),
                name: name.as_str().into(),
                grant: Arc::new(grant),
            });
        }
        Ok(Self { keys: configured })
    }

    /// The principal of the request's `Authorization` header: 401 when it
    /// is missing, not `Bearer <key>`, or not a configured key.
    pub fn principal(&self, request: &HttpRequest) -> Result<Principal, ApiError> {
        self.configured(bearer_of(request)?)
    }

    /// The configured key `key` is: 401 when none.
    pub fn configured(&self, key: &str) -> Result<Principal, ApiError> {
        let digest = digest(key);
        let mut found = None;
        for configured in &self.keys {
            if bool::from(configured.digest.ct_eq(&digest)) {
                found = Some(configured);
            }
        }
        let configured = found.ok_or_else(ApiError::invalid_api_key)?;
        Ok(Principal::ApiKey {
            name: configured.name.clone(),
            grant: configured.grant.clone(),
        })
    }
}

/// The bearer token of the request's `Authorization` header: 401
/// `missing_api_key` without one, `invalid_api_key` when it is not `Bearer
/// <token>`.
pub fn bearer_of(request: &HttpRequest) -> Result<&str, ApiError> {
    request
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(ApiError::missing_api_key)?
        .to_str()
        .ok()
        .and_then(bearer_token)
        .ok_or_else(ApiError::invalid_api_key)
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
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer k", "bearer k", "BEARER k", "bEaReR  k "] {
            assert_eq!(bearer_token(header), Some("k"), "{header}");
        }
        for header in ["Basic k", "Bearer", "Bearer ", "Bearerk", "Token k"] {
            assert_eq!(bearer_token(header), None, "{header}");
        }
    }

    fn principal(apps: &[&str], scopes: &[Scope]) -> Principal {
        let apps = (!apps.contains(&"*")).then(|| apps.iter().map(|app| app.to_string()).collect());
        Principal::ApiKey {
            name: "test".into(),
            grant: Arc::new(Grant {
                apps,
                scopes: scopes.iter().copied().collect(),
            }),
        }
    }

    #[test]
    fn a_key_is_checked_for_its_app_before_the_app_exists() {
        let limited = principal(&["wxa"], &[Scope::Send]);
        let code = |result: Result<(), ApiError>| result.err().map(|error| error.code());
        assert_eq!(code(limited.check_app("wxa", true, &[Scope::Send])), None);
        assert_eq!(
            code(limited.check_app("wxb", false, &[Scope::Send])),
            Some("forbidden")
        );
        assert_eq!(
            code(limited.check_app("wxa", true, &[Scope::Token])),
            Some("forbidden")
        );
        let every = principal(&["*"], &[Scope::Admin]);
        assert_eq!(
            code(every.check_app("wxb", false, &[Scope::Send])),
            Some("unknown_app")
        );
        assert_eq!(code(every.check_app("wxb", true, &[Scope::Token])), None);
        assert_eq!(code(every.check_scopes(&[Scope::Collect])), None);
    }
}
