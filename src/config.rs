//! Configuration: a TOML file, then environment variables, which win.
//!
//! Environment names are `FORMID__` plus the path in upper case with `__`
//! between levels: `FORMID__DATABASE_URL`, `FORMID__WECHAT__BASE_URL`,
//! `FORMID__APPS__WXAPPID__SECRET`, `FORMID__API_KEYS__BILLING__KEY`. Keys from
//! the environment are lower-cased, as WeChat AppIDs already are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Everything the gateway needs to start.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// `sqlite://path` (the embedded default) or `postgres://…`.
    #[serde(default = "defaults::database_url")]
    pub database_url: String,
    /// Connections of the PostgreSQL pool, or SQLite readers.
    #[serde(default = "defaults::database_max_connections")]
    pub database_max_connections: u32,
    /// Names this process in leases; random when unset.
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub wechat: WeChatSettings,
    #[serde(default)]
    pub ledger: LedgerSettings,
    #[serde(default)]
    pub tokens: TokenSettings,
    /// The mini-programs this gateway serves, by AppID.
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
    /// API keys by a name of your choosing.
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeySettings>,
}

/// How to reach WeChat.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WeChatSettings {
    pub base_url: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Calls in flight to WeChat per app, per process.
    pub max_concurrent_calls_per_app: usize,
    /// Failures in a row that open an app's circuit.
    pub breaker_failure_threshold: u32,
    /// How long an open circuit fails sends fast before one probe call.
    pub breaker_cooldown_secs: i64,
}

impl Default for WeChatSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.weixin.qq.com".into(),
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            max_concurrent_calls_per_app: 64,
            breaker_failure_threshold: 5,
            breaker_cooldown_secs: 10,
        }
    }
}

/// Rules of the ledger that are a matter of policy rather than WeChat's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LedgerSettings {
    /// A credential this close to its expiry is not claimed: the send could
    /// reach WeChat after it died.
    pub safety_margin_secs: i64,
    /// A prepay_id younger than this that gets 41028 is not retired (payment
    /// data reaches the template backend late).
    pub fresh_prepay_grace_secs: i64,
    /// How long a claim holds a credential before recovery may take it back.
    pub lease_secs: i64,
    /// Credentials one send may try before giving up.
    pub max_attempts_per_send: u32,
    /// Retries of one call answered errcode -1 (system busy).
    pub busy_retries: u32,
    /// Items one collection request may carry.
    pub max_batch: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Tolerated clock skew of a frontend's `collected_at`.
    pub collected_at_skew_secs: i64,
    /// How soon a message whose only credential is a syncing prepay_id retries.
    pub not_ready_retry_secs: i64,
    /// Probe calls for one credential whose first outcome was unknown.
    pub probe_limit: u32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention_hours: i64,
    /// How often waiting messages are looked at.
    pub waiting_poll_ms: u64,
    /// How often expired leases and abandoned messages are looked for.
    pub recovery_interval_secs: u64,
    pub sweep_interval_secs: u64,
    /// How long spent, retired and expired credentials stay after expiry.
    pub credential_retention_days: i64,
    pub message_retention_days: i64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            safety_margin_secs: 60,
            fresh_prepay_grace_secs: 30,
            lease_secs: 120,
            max_attempts_per_send: 10,
            busy_retries: 2,
            max_batch: 1_000,
            max_body_bytes: 1024 * 1024,
            collected_at_skew_secs: 60,
            not_ready_retry_secs: 5,
            probe_limit: 2,
            idempotency_retention_hours: 24,
            waiting_poll_ms: 500,
            recovery_interval_secs: 15,
            sweep_interval_secs: 300,
            credential_retention_days: 7,
            message_retention_days: 30,
        }
    }
}

/// The access_token keeper's timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TokenSettings {
    /// Refresh when less than this is left (cgi-bin/token mode).
    pub refresh_ahead_secs: i64,
    /// How often the background task looks.
    pub check_interval_secs: u64,
    /// How long one instance may hold the refresh lease.
    pub lease_secs: i64,
    /// How long a caller waits for another instance's refresh.
    pub wait_ms: u64,
    /// How long a process answers the token and quota block from memory.
    pub cache_ms: i64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            refresh_ahead_secs: 900,
            check_interval_secs: 30,
            lease_secs: 30,
            wait_ms: 15_000,
            cache_ms: 1_000,
        }
    }
}

/// Which WeChat endpoint issues an app's tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenMode {
    /// `GET /cgi-bin/token`: each fetch invalidates the previous token after 5 minutes.
    #[default]
    Token,
    /// `POST /cgi-bin/stable_token`: the same token until 5 minutes before expiry.
    StableToken,
}

/// One mini-program.
#[derive(Debug, Clone, Deserialize)]
pub struct AppSettings {
    pub secret: SecretString,
    #[serde(default)]
    pub token_mode: TokenMode,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Post credentials (frontends).
    Collect,
    /// Send messages and read them and quotas (business services).
    Send,
    /// Read and refresh access tokens (the app's other servers).
    Token,
    /// Everything.
    Admin,
}

/// One API key.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeySettings {
    pub key: SecretString,
    /// AppIDs, or `*` for all. A comma-separated string works too (environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub apps: Vec<String>,
    #[serde(deserialize_with = "list_or_csv")]
    pub scopes: Vec<String>,
}

impl ApiKeySettings {
    /// The key's scopes, parsed.
    pub fn parsed_scopes(&self) -> anyhow::Result<Vec<Scope>> {
        self.scopes
            .iter()
            .map(|scope| {
                serde_json::from_value(serde_json::Value::String(scope.trim().to_owned()))
                    .with_context(|| {
                        format!("unknown scope {scope:?} (collect, send, token, admin)")
                    })
            })
            .collect()
    }
}

fn list_or_csv<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(deserializer)? {
        ListOrCsv::List(list) => list,
        ListOrCsv::Csv(csv) => csv
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

mod defaults {
    pub fn listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn database_url() -> String {
        "sqlite://data/formid-gateway.db".into()
    }
    pub fn database_max_connections() -> u32 {
        8
    }
}

impl Settings {
    /// Reads the file (when given or when `formid-gateway.toml` exists), then
    /// the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                builder = builder.add_source(config::File::from(path).required(true));
            }
            None => {
                builder =
                    builder.add_source(config::File::with_name("formid-gateway").required(false));
            }
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("FORMID")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .context("reading the configuration")?
            .try_deserialize()
            .context("the configuration does not have the expected shape")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Says what is wrong, so that a bad configuration stops the process at start.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen.parse::<SocketAddr>().with_context(|| {
            format!(
                "listen: {:?} is not an address like 127.0.0.1:8080",
                self.listen
            )
        })?;
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres:")
            || self.database_url.starts_with("postgresql:"))
        {
            bail!("database_url: must start with sqlite: or postgres:");
        }
        let base = reqwest::Url::parse(&self.wechat.base_url)
            .with_context(|| format!("wechat.base_url: {:?} is not a URL", self.wechat.base_url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("wechat.base_url: must be http or https");
        }
        if self.wechat.connect_timeout_ms == 0 || self.wechat.request_timeout_ms == 0 {
            bail!("wechat: timeouts must be positive");
        }
        if self.wechat.max_concurrent_calls_per_app == 0 || self.wechat.breaker_cooldown_secs <= 0 {
            bail!(
                "wechat: max_concurrent_calls_per_app and breaker_cooldown_secs must be positive"
            );
        }
        let ledger = &self.ledger;
        if ledger.max_batch == 0 || ledger.max_attempts_per_send == 0 || ledger.lease_secs <= 0 {
            bail!("ledger: max_batch, max_attempts_per_send and lease_secs must be positive");
        }
        if ledger.idempotency_retention_hours < 24 {
            bail!("ledger.idempotency_retention_hours: keys are kept at least 24 hours");
        }
        if ledger.lease_secs * 1000 <= self.wechat.request_timeout_ms as i64 {
            bail!("ledger.lease_secs must be longer than wechat.request_timeout_ms: a lease may not run out during a call");
        }
        if ledger.safety_margin_secs < 0 || ledger.fresh_prepay_grace_secs < 0 {
            bail!("ledger: safety_margin_secs and fresh_prepay_grace_secs cannot be negative");
        }
        if self.tokens.lease_secs <= 0 || self.tokens.check_interval_secs == 0 {
            bail!("tokens: lease_secs and check_interval_secs must be positive");
        }
        if self.apps.is_empty() {
            bail!("apps: no mini-program is configured (add [apps.<appid>] with its secret)");
        }
        for (appid, app) in &self.apps {
            if !crate::ledger::collect::is_plain_identifier(appid, 64) {
                bail!("apps: {appid:?} is not an AppID");
            }
            if app.secret.expose_secret().trim().is_empty() {
                bail!("apps.{appid}.secret: empty");
            }
        }
        if self.api_keys.is_empty() {
            bail!("api_keys: none configured; every endpoint but /healthz and /readyz needs one");
        }
        for (name, key) in &self.api_keys {
            if key.key.expose_secret().len() < 16 {
                bail!("api_keys.{name}.key: shorter than 16 characters");
            }
            key.parsed_scopes()
                .with_context(|| format!("api_keys.{name}.scopes"))?;
            if key.scopes.is_empty() || key.apps.is_empty() {
                bail!("api_keys.{name}: needs at least one app and one scope");
            }
            for app in &key.apps {
                if app != "*" && !self.apps.contains_key(app) {
                    bail!("api_keys.{name}.apps: {app:?} is not a configured app");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> anyhow::Result<Settings> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    const VALID: &str = r#"
        [apps.wx0123456789abcdef]
        secret = "s3cret"
        [api_keys.a]
        key = "0123456789abcdef0123"
        apps = "wx0123456789abcdef"
        scopes = "collect, send"
    "#;

    #[test]
    fn the_example_file_is_valid() {
        let text = std::fs::read_to_string("formid-gateway.example.toml").unwrap();
        let settings = from_toml(&text).unwrap();
        assert_eq!(settings.apps.len(), 1);
        assert_eq!(settings.api_keys.len(), 3);
    }

    #[test]
    fn defaults_fill_what_is_left_out_and_csv_lists_parse() {
        let settings = from_toml(VALID).unwrap();
        assert_eq!(settings.database_url, "sqlite://data/formid-gateway.db");
        assert_eq!(settings.wechat.base_url, "https://api.weixin.qq.com");
        assert_eq!(
            settings.api_keys["a"].parsed_scopes().unwrap(),
            vec![Scope::Collect, Scope::Send]
        );
    }

    #[test]
    fn invalid_settings_say_what_is_wrong() {
        let cases = [
            ("", "no mini-program"),
            (r#"listen = "nowhere""#, "listen"),
            (r#"database_url = "mysql://x""#, "database_url"),
            ("[wechat]\nbase_url = \"ftp://x\"", "base_url"),
        ];
        for (prefix, expected) in cases {
            let text = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}\n{VALID}")
            };
            let error = format!("{:#}", from_toml(&text).unwrap_err());
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let short_key = VALID.replace("0123456789abcdef0123", "short");
        assert!(format!("{:#}", from_toml(&short_key).unwrap_err()).contains("16"));
        let bad_scope = VALID.replace("collect, send", "collect, root");
        assert!(format!("{:#}", from_toml(&bad_scope).unwrap_err()).contains("root"));
        let foreign = VALID.replace("apps = \"wx0123456789abcdef\"", "apps = \"wxother\"");
        assert!(format!("{:#}", from_toml(&foreign).unwrap_err()).contains("wxother"));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let settings = from_toml(VALID).unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cret"));
        assert!(!printed.contains("0123456789abcdef0123"));
    }
}
