//! The settings of who may call: login sessions, API keys kept as data, the
//! request rate limits, and each app's CORS origins (on
//! [`AppSettings`](super::AppSettings)).

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::{duration_in_range, in_range, secs, whole, DAY};

/// Mini-program login sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    /// How long a session token lives.
    #[serde(rename = "ttl_secs", deserialize_with = "secs")]
    pub ttl: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(DAY),
        }
    }
}

/// API keys kept in the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KeySettings {
    /// How long a process answers a stored key from memory: the bound on how
    /// long a revoked key keeps working on an instance that saw it last.
    #[serde(rename = "cache_secs", deserialize_with = "secs")]
    pub cache: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            cache: Duration::from_secs(5),
        }
    }
}

/// Request rate limits, per instance: each is a number of requests a
/// minute, spent at a steady pace with bursts up to a minute's worth; 0
/// turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Per session token, on the `/me` routes and the logout.
    #[serde(deserialize_with = "whole")]
    pub per_session_per_minute: u32,
    /// Per client IP, on the login and the `/me` routes.
    #[serde(deserialize_with = "whole")]
    pub per_ip_per_minute: u32,
    /// Per API key, on every route that takes one.
    #[serde(deserialize_with = "whole")]
    pub per_api_key_per_minute: u32,
    /// Take the client IP from the first address of `X-Forwarded-For` (only
    /// behind a proxy that sets it); otherwise the peer address.
    pub trust_forwarded_for: bool,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_session_per_minute: 120,
            per_ip_per_minute: 600,
            per_api_key_per_minute: 600_000,
            trust_forwarded_for: false,
        }
    }
}

/// Checks the access settings.
pub(super) fn validate(
    sessions: &SessionSettings,
    keys: &KeySettings,
    limits: &LimitSettings,
) -> anyhow::Result<()> {
    duration_in_range(
        "sessions.ttl_secs",
        sessions.ttl,
        Duration::from_secs(60),
        Duration::from_secs(30 * DAY),
    )?;
    duration_in_range(
        "keys.cache_secs",
        keys.cache,
        Duration::from_secs(0),
        Duration::from_secs(300),
    )?;
    for (name, value) in [
        (
            "limits.per_session_per_minute",
            limits.per_session_per_minute,
        ),
        ("limits.per_ip_per_minute", limits.per_ip_per_minute),
        (
            "limits.per_api_key_per_minute",
            limits.per_api_key_per_minute,
        ),
    ] {
        in_range(name, value.into(), 0, 100_000_000, " (0 turns it off)")?;
    }
    Ok(())
}

/// Checks an app's CORS origins: each `scheme://host[:port]`, no path, no `*`.
pub(super) fn validate_origins(appid: &str, origins: &[String]) -> anyhow::Result<()> {
    for origin in origins {
        let parsed = reqwest::Url::parse(origin).ok();
        let plain = parsed.as_ref().is_some_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.path() == "/"
                && url.query().is_none()
                && !origin.ends_with('/')
        });
        if !plain {
            bail!("apps.{appid}.cors_origins: {origin:?} is not an origin like https://shop.example.com (scheme, host and port only; no path, no *)");
        }
    }
    Ok(())
}
