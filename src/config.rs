//! Configuration: a TOML file, then environment variables, which win.
//!
//! Environment names are `FORMID__` plus the path in upper case with `__`
//! between levels: `FORMID__DATABASE_URL`, `FORMID__WECHAT__BASE_URL`,
//! `FORMID__APPS__WXAPPID__SECRET`, `FORMID__API_KEYS__BILLING__KEY`. Keys from
//! the environment are lower-cased, as WeChat AppIDs already are.
//!
//! Three rules keep a configuration from lying:
//! - an environment value is a string, byte for byte, unless its setting is a
//!   number ([`whole`] parses those strictly): a key `00001234…` stays that key;
//! - a key nobody reads stops the process, naming the nearest valid one
//!   ([`Settings::load`]);
//! - every value is checked against its allowed range ([`Settings::validate`]),
//!   with a sentence that says what is allowed.
//!
//! Times are [`Duration`]s here, read from the integer `_ms`/`_secs`/
//! `_hours`/`_days` keys users write, so no call site converts units.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// Everything the gateway needs to start.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Address the HTTP API listens on: `host:port`, host names resolved.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    /// `sqlite://path` (the embedded default) or `postgres://…`.
    #[serde(default = "defaults::database_url")]
    pub database_url: String,
    /// Connections of the PostgreSQL pool (group commit holds two more of
    /// its own), or SQLite readers.
    #[serde(
        default = "defaults::database_max_connections",
        deserialize_with = "whole"
    )]
    pub database_max_connections: u32,
    /// Names this process in leases; random when unset.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long the API waits for a request to arrive.
    #[serde(default)]
    pub http: HttpSettings,
    /// How to reach WeChat.
    #[serde(default)]
    pub wechat: WeChatSettings,
    /// The ledger's policies.
    #[serde(default)]
    pub ledger: LedgerSettings,
    /// The access_token keeper's timing.
    #[serde(default)]
    pub tokens: TokenSettings,
    /// The mini-programs this gateway serves, by AppID.
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
    /// API keys by a name of your choosing.
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKeySettings>,
    /// Mini-program login sessions.
    #[serde(default)]
    pub sessions: SessionSettings,
    /// API keys kept in the database.
    #[serde(default)]
    pub keys: KeySettings,
    /// Request rate limits (per instance).
    #[serde(default)]
    pub limits: LimitSettings,
    /// The WeChat-compatible endpoint (off unless `proxy.listen` is set).
    #[serde(default)]
    pub proxy: ProxySettings,
    /// How broadcasts are paced and leased.
    #[serde(default)]
    pub broadcasts: BroadcastSettings,
    /// Delivery of events to the apps' webhook endpoints.
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhookSettings,
    /// How often the operators' figures are read again.
    #[serde(default)]
    pub stats: crate::stats::StatsSettings,
    /// `/metrics` (off unless `metrics.listen` is set).
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// How log lines are written: `text` (the default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// The Prometheus endpoint: `/metrics` on a listener of its own, never on
/// the API's (`src/monitoring/`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricsSettings {
    /// `host:port` to serve `/metrics` on; unset (the default), it is off.
    pub listen: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event, the spans' fields before it.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields`, `target`,
    /// and `spans` (each span's fields, the request's `request_id` among them).
    Json,
}

/// The WeChat-compatible endpoint: a second listener that answers like
/// `api.weixin.qq.com`, so an unmodified SDK takes the central token and its
/// subscribe sends go through the ledger (`src/proxy/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ProxySettings {
    /// `host:port` to listen on; unset (the default), the endpoint is off.
    pub listen: Option<String>,
    /// Largest request body forwarded (a media upload included), in bytes.
    #[serde(deserialize_with = "whole")]
    pub max_body_bytes: usize,
    /// Largest answer relayed, in bytes (a media download included).
    #[serde(deserialize_with = "whole")]
    pub max_response_bytes: usize,
    /// Per app: whether `/cgi-bin/message/subscribe/send` spends a grant of
    /// the ledger (the default) or is forwarded as it came.
    pub apps: BTreeMap<String, ProxyAppSettings>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            listen: None,
            // WeChat's largest temporary media (a video) is 10 MB, plus the
            // multipart framing.
            max_body_bytes: 11 * 1024 * 1024,
            max_response_bytes: 11 * 1024 * 1024,
            apps: BTreeMap::new(),
        }
    }
}

impl ProxySettings {
    /// Whether the app's subscribe sends through the endpoint go through the
    /// ledger.
    pub fn ledger_sends(&self, appid: &str) -> bool {
        self.apps.get(appid).is_none_or(|app| app.ledger_sends)
    }
}

/// One app's choices at the WeChat-compatible endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyAppSettings {
    /// `true` (the default): a subscribe send spends a grant of the ledger,
    /// and a user without one is answered 43101 without a call to WeChat.
    /// `false`: forwarded as it came, the ledger never told.
    #[serde(default = "defaults::yes")]
    pub ledger_sends: bool,
}

/// Time limits on reading a request, so a client that stalls cannot hold a
/// connection (and a worker) open.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// Time to receive a request's head (line and headers); then 408.
    #[serde(rename = "head_timeout_ms", deserialize_with = "millis")]
    pub head_timeout: Duration,
    /// Time to receive a request's whole body, counted from its head; then
    /// 408 in the API's error shape.
    #[serde(rename = "body_timeout_ms", deserialize_with = "millis")]
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection stays open. Longer than the
    /// idle timeouts of common clients' connection pools (90 s for reqwest
    /// and Go's `net/http`, 60 s for nginx upstreams), so that the client
    /// closes an idle connection first: a server that closes first races
    /// with a client reusing the connection, whose request is then lost on
    /// the wire (`IncompleteMessage`, "connection reset") with no way to
    /// know whether it was processed.
    #[serde(rename = "keep_alive_secs", deserialize_with = "secs")]
    pub keep_alive: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(120),
        }
    }
}

/// How to reach WeChat.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WeChatSettings {
    /// `https://api.weixin.qq.com`, or the fake.
    pub base_url: String,
    /// Time to connect to WeChat.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    /// Time for one whole call to WeChat.
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    /// Calls in flight to WeChat per app, per process.
    #[serde(deserialize_with = "whole")]
    pub max_concurrent_calls_per_app: usize,
    /// Failures in a row that open an app's circuit.
    #[serde(deserialize_with = "whole")]
    pub breaker_failure_threshold: u32,
    /// How long an open circuit fails sends fast before one probe call.
    #[serde(rename = "breaker_cooldown_secs", deserialize_with = "secs")]
    pub breaker_cooldown: Duration,
}

impl Default for WeChatSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.weixin.qq.com".into(),
            connect_timeout: Duration::from_millis(2_000),
            request_timeout: Duration::from_millis(10_000),
            max_concurrent_calls_per_app: 64,
            breaker_failure_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// Rules of the ledger that are a matter of policy rather than WeChat's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LedgerSettings {
    /// A credential this close to its expiry is not claimed: the send could
    /// reach WeChat after it died.
    #[serde(rename = "safety_margin_secs", deserialize_with = "secs")]
    pub safety_margin: Duration,
    /// A prepay_id younger than this that gets 41028 is not retired (payment
    /// data reaches the template backend late).
    #[serde(rename = "fresh_prepay_grace_secs", deserialize_with = "secs")]
    pub fresh_prepay_grace: Duration,
    /// How long a claim holds a credential before recovery may take it back.
    #[serde(rename = "lease_secs", deserialize_with = "secs")]
    pub lease: Duration,
    /// Credentials one send may try before giving up.
    #[serde(deserialize_with = "whole")]
    pub max_attempts_per_send: u32,
    /// Retries of one call answered errcode -1 (system busy).
    #[serde(deserialize_with = "whole")]
    pub busy_retries: u32,
    /// Items one collection request may carry.
    #[serde(deserialize_with = "whole")]
    pub max_batch: usize,
    /// Largest request body, in bytes.
    #[serde(deserialize_with = "whole")]
    pub max_body_bytes: usize,
    /// Tolerated clock skew of a frontend's `collected_at`.
    #[serde(rename = "collected_at_skew_secs", deserialize_with = "secs")]
    pub collected_at_skew: Duration,
    /// How soon a message whose only credential is a syncing prepay_id retries.
    #[serde(rename = "not_ready_retry_secs", deserialize_with = "secs")]
    pub not_ready_retry: Duration,
    /// Probe calls for one credential whose first outcome was unknown.
    #[serde(deserialize_with = "whole")]
    pub probe_limit: u32,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(rename = "idempotency_retention_hours", deserialize_with = "hours")]
    pub idempotency_retention: Duration,
    /// How often waiting messages are looked at.
    #[serde(rename = "waiting_poll_ms", deserialize_with = "millis")]
    pub waiting_poll: Duration,
    /// How often expired leases and abandoned messages are looked for.
    #[serde(rename = "recovery_interval_secs", deserialize_with = "secs")]
    pub recovery_interval: Duration,
    /// How often old rows are swept.
    #[serde(rename = "sweep_interval_secs", deserialize_with = "secs")]
    pub sweep_interval: Duration,
    /// How long spent, retired and expired credentials stay after expiry.
    #[serde(rename = "credential_retention_days", deserialize_with = "days")]
    pub credential_retention: Duration,
    /// How long ended messages and their attempts stay.
    #[serde(rename = "message_retention_days", deserialize_with = "days")]
    pub message_retention: Duration,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            safety_margin: Duration::from_secs(60),
            fresh_prepay_grace: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            max_attempts_per_send: 10,
            busy_retries: 2,
            max_batch: 1_000,
            max_body_bytes: 1024 * 1024,
            collected_at_skew: Duration::from_secs(60),
            not_ready_retry: Duration::from_secs(5),
            probe_limit: 2,
            idempotency_retention: Duration::from_secs(24 * HOUR),
            waiting_poll: Duration::from_millis(500),
            recovery_interval: Duration::from_secs(15),
            sweep_interval: Duration::from_secs(300),
            credential_retention: Duration::from_secs(7 * DAY),
            message_retention: Duration::from_secs(30 * DAY),
        }
    }
}

/// The access_token keeper's timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TokenSettings {
    /// Refresh when less than this is left (cgi-bin/token mode).
    #[serde(rename = "refresh_ahead_secs", deserialize_with = "secs")]
    pub refresh_ahead: Duration,
    /// How often the background task looks.
    #[serde(rename = "check_interval_secs", deserialize_with = "secs")]
    pub check_interval: Duration,
    /// How long one instance may hold the refresh lease.
    #[serde(rename = "lease_secs", deserialize_with = "secs")]
    pub lease: Duration,
    /// How long a caller waits for another instance's refresh.
    #[serde(rename = "wait_ms", deserialize_with = "millis")]
    pub wait: Duration,
    /// How long a process answers the token and quota block from memory.
    #[serde(rename = "cache_ms", deserialize_with = "millis")]
    pub cache: Duration,
    /// The app's budget of token fetches, shared by every instance: this
    /// many at once, then one more each `fetch_refill_secs`. Every fetch
    /// takes from it, whatever asked for it; it bounds a runaway (WeChat
    /// rejecting each new token) well inside WeChat's ~2,000 fetches a day
    /// (docs/wechat/tokens.md), and never delays the first fetch after a
    /// rejection.
    #[serde(deserialize_with = "whole")]
    pub fetch_burst: u32,
    /// How long the budget takes to earn one fetch back.
    #[serde(rename = "fetch_refill_secs", deserialize_with = "secs")]
    pub fetch_refill: Duration,
    /// A caller who reports the current token stale is answered from the
    /// last check at WeChat for this long, instead of a new check.
    #[serde(rename = "check_reuse_secs", deserialize_with = "secs")]
    pub check_reuse: Duration,
    /// How soon a message that found no usable token tries again.
    #[serde(rename = "send_retry_secs", deserialize_with = "secs")]
    pub send_retry: Duration,
    /// stable_token mode: forced refreshes (`force_refresh=true`) the gateway
    /// may use per app and China day, 0 (never) to 20 (WeChat's limit).
    #[serde(deserialize_with = "whole")]
    pub force_refreshes_per_day: u32,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            refresh_ahead: Duration::from_secs(900),
            check_interval: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            wait: Duration::from_millis(15_000),
            cache: Duration::from_millis(1_000),
            fetch_burst: 5,
            fetch_refill: Duration::from_secs(120),
            check_reuse: Duration::from_secs(10),
            send_retry: Duration::from_secs(5),
            force_refreshes_per_day: 0,
        }
    }
}

/// WeChat's limit on stable_token forced refreshes per app and day
/// (docs/wechat/tokens.md, "Two ways to get a token").
pub const WECHAT_FORCE_REFRESHES_PER_DAY: u32 = 20;

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

pub use formid_core::send::request::{Lang, MiniprogramState};

mod access;
pub use access::{KeySettings, LimitSettings, SessionSettings};

/// One mini-program.
#[derive(Debug, Clone, Deserialize)]
pub struct AppSettings {
    /// The AppSecret, byte for byte.
    pub secret: SecretString,
    /// Which endpoint issues its tokens.
    #[serde(default)]
    pub token_mode: TokenMode,
    /// `miniprogram_state` of its subscribe sends unless a request names one.
    #[serde(default)]
    pub miniprogram_state: MiniprogramState,
    /// `lang` of its subscribe sends unless a request names one.
    #[serde(default)]
    pub lang: Lang,
    /// The Token of the console's message push (消息推送配置): with it, WeChat's
    /// pushes are received at `/wechat/push/{appid}`; without it, that path
    /// answers 404 for the app.
    #[serde(default)]
    pub push_token: Option<SecretString>,
    /// The console's 43-character EncodingAESKey (compatible and safe mode).
    /// With it, only encrypted pushes are accepted: a plain push is signed
    /// over nothing of its body.
    #[serde(default)]
    pub encoding_aes_key: Option<SecretString>,
    /// The EncodingAESKey before the last rotation, tried when the current
    /// one does not open a push.
    #[serde(default)]
    pub previous_encoding_aes_key: Option<SecretString>,
    /// Which source grants subscribe sends: the results a frontend posts, or
    /// WeChat's popup events. The other one is recorded as the user's
    /// decision only.
    #[serde(default)]
    pub subscribe_grants_from: GrantsFrom,
    /// Web origins (`https://host[:port]`) allowed to call the login and
    /// `/me` routes from a browser. None by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Per-user send caps: at most `limit` sends to one user in any
    /// `window_secs` (of the app, or of one template).
    #[serde(default)]
    pub send_caps: Vec<SendCapSettings>,
    /// A daily window of local time in which the app sends nothing.
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSettings>,
}

/// Which source grants an app's subscribe sends (exactly one does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantsFrom {
    /// `POST /v1/apps/{appid}/subscriptions`: the frontend's word.
    #[default]
    Frontend,
    /// WeChat's `subscribe_msg_popup_event` pushes: what a client cannot forge.
    Wechat,
}

impl GrantsFrom {
    /// `"frontend"` or `"wechat"`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantsFrom::Frontend => "frontend",
            GrantsFrom::Wechat => "wechat",
        }
    }
}

/// The length of a push Token the console accepts: 3 to 32 letters and digits.
const PUSH_TOKEN_CHARS: std::ops::RangeInclusive<usize> = 3..=32;

impl AppSettings {
    /// The app's push configuration for [`crate::push::open`], if a push
    /// token is configured. Fails on a malformed EncodingAESKey (which
    /// [`Settings::validate`] refuses first).
    pub fn push_keys(&self, appid: &str) -> anyhow::Result<Option<crate::push::PushKeys>> {
        let Some(token) = &self.push_token else {
            return Ok(None);
        };
        let key = |value: &Option<SecretString>, name: &str| {
            value
                .as_ref()
                .map(|key| crate::push::AesKey::from_encoding_aes_key(key.expose_secret()))
                .transpose()
                .map_err(|error| anyhow::anyhow!("apps.{appid}.{name}: {error}"))
        };
        let current = key(&self.encoding_aes_key, "encoding_aes_key")?;
        let previous = key(&self.previous_encoding_aes_key, "previous_encoding_aes_key")?;
        Ok(Some(crate::push::PushKeys {
            appid: appid.to_owned(),
            token: token.clone(),
            plain_allowed: current.is_none(),
            current,
            previous,
        }))
    }
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
    /// Send with `"urgent": true`, inside the app's quiet hours.
    Urgent,
    /// Everything.
    Admin,
}

/// One API key.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeySettings {
    /// The key, byte for byte.
    pub key: SecretString,
    /// AppIDs, or `*` for all. A comma-separated string works too (environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub apps: Vec<String>,
    /// `collect`, `send`, `token`, `admin`; a list or a comma-separated string.
    #[serde(deserialize_with = "list_or_csv")]
    pub scopes: Vec<String>,
}

/// The shortest API key accepted, in characters.
pub const MIN_KEY_CHARS: usize = 16;

impl ApiKeySettings {
    /// The key's scopes, parsed.
    pub fn parsed_scopes(&self) -> anyhow::Result<Vec<Scope>> {
        self.scopes
            .iter()
            .map(|scope| {
                serde_json::from_value(serde_json::Value::String(scope.trim().to_owned()))
                    .with_context(|| {
                        format!("unknown scope {scope:?} (collect, send, token, urgent, admin)")
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

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

/// A whole number, 0 or more: a TOML integer, or an environment string of
/// digits. Refuses fractions (`1.5`, `2.0`), exponents (`1e5`), signs, words
/// (`true`, `yes`): the `config` crate would round, parse or count them.
pub fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let value = deserializer.deserialize_any(WholeVisitor)?;
    T::try_from(value).map_err(|_| de::Error::custom(format!("{value} is too large")))
}

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = u64;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a whole number, 0 or more, without a decimal point")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| {
            E::custom(format!(
                "{value} is negative; a whole number, 0 or more, is allowed"
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
        Err(E::custom(format!(
            "{value} is not a whole number; write a whole number without a decimal point"
        )))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<u64, E> {
        let digits = value.trim();
        if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) {
            digits
                .parse()
                .map_err(|_| E::custom(format!("{digits} is too large")))
        } else {
            Err(E::custom(format!(
                "{value:?} is not a whole number; write digits only, like 30"
            )))
        }
    }
}

fn scaled<'de, D: Deserializer<'de>>(
    deserializer: D,
    unit: Duration,
) -> Result<Duration, D::Error> {
    let count: u64 = whole(deserializer)?;
    u32::try_from(count)
        .ok()
        .and_then(|count| unit.checked_mul(count))
        .ok_or_else(|| de::Error::custom(format!("{count} is too large")))
}

/// A [`Duration`] from whole milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    scaled(deserializer, Duration::from_millis(1))
}

/// A [`Duration`] from whole seconds.
pub fn secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    scaled(deserializer, Duration::from_secs(1))
}

/// A [`Duration`] from whole hours.
pub fn hours<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    scaled(deserializer, Duration::from_secs(HOUR))
}

/// A [`Duration`] from whole days.
pub fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    scaled(deserializer, Duration::from_secs(DAY))
}

mod broadcasts;
pub use broadcasts::BroadcastSettings;

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
    pub fn yes() -> bool {
        true
    }
}

/// The field names a struct deserializes, as serde knows them (renames
/// applied): asked of the type itself, so the list cannot drift.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl fmt::Display for Found {
        fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            write!(formatter, "{:?}", self.0)
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }
    struct Probe;
    impl<'de> Deserializer<'de> for Probe {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

/// The valid keys beside an unknown one at `path` (dot-separated).
fn valid_siblings(path: &[&str]) -> &'static [&'static str] {
    match path {
        [_] => fields_of::<Settings>(),
        ["http", _] => fields_of::<HttpSettings>(),
        ["wechat", _] => fields_of::<WeChatSettings>(),
        ["ledger", _] => fields_of::<LedgerSettings>(),
        ["broadcasts", _] => fields_of::<BroadcastSettings>(),
        ["tokens", _] => fields_of::<TokenSettings>(),
        ["apps", _, _] => fields_of::<AppSettings>(),
        ["apps", _, "quiet_hours", _] => fields_of::<QuietHoursSettings>(),
        ["api_keys", _, _] => fields_of::<ApiKeySettings>(),
        ["proxy", _] => fields_of::<ProxySettings>(),
        ["proxy", "apps", _, _] => fields_of::<ProxyAppSettings>(),
        ["metrics", _] => fields_of::<MetricsSettings>(),
        _ => &[],
    }
}

/// Whether `listen` names at least one socket address.
fn resolves(listen: &str) -> bool {
    listen
        .to_socket_addrs()
        .map(|mut addresses| addresses.next().is_some())
        .unwrap_or(false)
}

/// "unknown setting `ledger.max_bacth` (FORMID__LEDGER__MAX_BACTH); did you
/// mean `ledger.max_batch`?"
fn unknown_setting(path: &str, environment: &HashMap<String, String>) -> String {
    let segments: Vec<&str> = path.split('.').collect();
    let (last, parent) = segments.split_last().expect("a path has a segment");
    let nearest = valid_siblings(&segments)
        .iter()
        .map(|candidate| (strsim::jaro_winkler(last, candidate), *candidate))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| {
            let mut full = parent.to_vec();
            full.push(candidate);
            full.join(".")
        });
    let source = match environment.get(path) {
        Some(name) => format!(" (from the environment variable {name})"),
        None => " (in the configuration file)".to_owned(),
    };
    match nearest {
        Some(nearest) => format!("unknown setting `{path}`{source}; did you mean `{nearest}`?"),
        None => format!(
            "unknown setting `{path}`{source}; see formid-gateway.example.toml for every setting"
        ),
    }
}

/// `FORMID__…` variables by the setting path they name.
fn environment_paths(environment: &HashMap<String, String>) -> HashMap<String, String> {
    environment
        .keys()
        .filter_map(|name| {
            let lower = name.to_ascii_lowercase();
            let path = lower.strip_prefix("formid__")?.replace("__", ".");
            Some((path, name.clone()))
        })
        .collect()
}

/// The process's `FORMID__…` variables; one that is not UTF-8 is an error.
fn formid_environment() -> anyhow::Result<HashMap<String, String>> {
    let mut variables = HashMap::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.to_ascii_lowercase().starts_with("formid__") {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{name}: the value is not valid UTF-8"))?;
        variables.insert(name.to_owned(), value);
    }
    Ok(variables)
}

/// Adds the environment to `builder`, builds, and deserializes settings,
/// refusing unknown keys and naming the path of a value of the wrong type.
fn build(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    environment: HashMap<String, String>,
) -> anyhow::Result<Settings> {
    let paths = environment_paths(&environment);
    // No `try_parsing`: it would turn an environment value like
    // `00001234567890123456` into the integer 1234567890123456 before a
    // string setting ever saw it. Numeric settings parse their strings
    // themselves ([`whole`]).
    let config = builder
        .add_source(
            config::Environment::with_prefix("FORMID")
                .prefix_separator("__")
                .separator("__")
                .source(Some(environment.into_iter().collect())),
        )
        .build()
        .context("reading the configuration")?;
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let mut record = |path: serde_ignored::Path| unknown.push(path.to_string());
    let settings = Settings::deserialize(serde_ignored::Deserializer::new(
        serde_path_to_error::Deserializer::new(config, &mut track),
        &mut record,
    ));
    if !unknown.is_empty() {
        let reasons: Vec<String> = unknown
            .iter()
            .map(|path| unknown_setting(path, &paths))
            .collect();
        bail!("{}", reasons.join("; "));
    }
    let settings = settings.map_err(|error| anyhow::anyhow!("{}: {error}", track.path()))?;
    settings.validate()?;
    Ok(settings)
}

/// Fails with "`name`: `value` is out of range; …" unless `min <= value <= max`.
fn in_range(name: &str, value: u128, min: u128, max: u128, unit: &str) -> anyhow::Result<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    bail!("{name}: {value} is out of range; allowed is {min} to {max}{unit}")
}

/// Duration settings against their ranges, as `(name, value, min, max)`, in
/// order: the first out of range is the error.
fn durations_in_range(checks: &[(&str, Duration, Duration, Duration)]) -> anyhow::Result<()> {
    for &(name, value, min, max) in checks {
        duration_in_range(name, value, min, max)?;
    }
    Ok(())
}

/// A duration setting against its range, in the unit of its key.
fn duration_in_range(
    name: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> anyhow::Result<()> {
    let (scale, unit) = if name.ends_with("_ms") {
        (1, " milliseconds")
    } else if name.ends_with("_secs") {
        (1_000, " seconds")
    } else if name.ends_with("_hours") {
        (1_000 * HOUR as u128, " hours")
    } else {
        (1_000 * DAY as u128, " days")
    };
    in_range(
        name,
        value.as_millis() / scale,
        min.as_millis() / scale,
        max.as_millis() / scale,
        unit,
    )
}

/// Why a SQLite URL cannot hold a ledger, if it cannot.
fn sqlite_problem(url: &str) -> Option<&'static str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path == ":memory:"
        || query
            .split('&')
            .any(|pair| pair.eq_ignore_ascii_case("mode=memory"));
    if in_memory {
        Some("an in-memory SQLite database gives every connection its own empty ledger and loses it at exit")
    } else if path.trim().is_empty() {
        Some("a SQLite URL needs a file path")
    } else {
        None
    }
}

impl Settings {
    /// Reads the file (when given or when `formid-gateway.toml` exists), then
    /// the `FORMID__…` environment, and validates the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, formid_environment()?)
    }

    /// [`Settings::load`] with the given variables in place of the process's.
    pub fn load_from(
        file: Option<&Path>,
        environment: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let source = match file {
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name("formid-gateway").required(false),
        };
        build(config::Config::builder().add_source(source), environment)
    }

    /// Settings from TOML text and the given variables (tests and tools).
    pub fn from_toml(text: &str, environment: HashMap<String, String>) -> anyhow::Result<Self> {
        let source = config::File::from_str(text, config::FileFormat::Toml);
        build(config::Config::builder().add_source(source), environment)
    }

    /// Says what is wrong, so that a bad configuration stops the process at
    /// start. Every setting is checked against its allowed range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let resolved = self
            .listen
            .to_socket_addrs()
            .map(|mut addresses| addresses.next().is_some())
            .unwrap_or(false);
        if !resolved {
            bail!(
                "listen: {:?} is not an address like 127.0.0.1:8080 or localhost:8080 (host names must resolve)",
                self.listen
            );
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres:")
            || self.database_url.starts_with("postgresql:"))
        {
            bail!("database_url: must start with sqlite: or postgres:");
        }
        if let Some(problem) = sqlite_problem(&self.database_url) {
            bail!("database_url: {problem}; give a file, like sqlite://data/formid-gateway.db");
        }
        in_range(
            "database_max_connections",
            self.database_max_connections.into(),
            1,
            1_000,
            "",
        )?;
        if let Some(id) = &self.instance_id {
            if !crate::ledger::collect::is_plain_identifier(id, 128) {
                bail!("instance_id: 1 to 128 printable characters without spaces");
            }
        }
        self.validate_http()?;
        self.validate_wechat()?;
        self.validate_ledger()?;
        self.validate_tokens()?;
        self.validate_apps()?;
        access::validate(&self.sessions, &self.keys, &self.limits)?;
        self.validate_proxy()?;
        self.broadcasts.validate()?;
        self.webhooks.validate()?;
        self.stats.validate()?;
        self.validate_keys()
    }

    fn validate_proxy(&self) -> anyhow::Result<()> {
        let proxy = &self.proxy;
        if let Some(listen) = &proxy.listen {
            if !resolves(listen) {
                bail!("proxy.listen: {listen:?} is not an address like 127.0.0.1:8081");
            }
        }
        if let Some(listen) = &self.metrics.listen {
            if !resolves(listen) {
                bail!("metrics.listen: {listen:?} is not an address like 127.0.0.1:9090");
            }
            if listen == &self.listen && !listen.ends_with(":0") {
                bail!("metrics.listen: {listen:?} is the API's address; /metrics needs a listener of its own");
            }
        }
        in_range(
            "proxy.max_body_bytes",
            proxy.max_body_bytes as u128,
            1_024,
            64 * 1024 * 1024,
            " bytes",
        )?;
        in_range(
            "proxy.max_response_bytes",
            proxy.max_response_bytes as u128,
            1_024,
            64 * 1024 * 1024,
            " bytes",
        )?;
        for appid in proxy.apps.keys() {
            if !self.apps.contains_key(appid) {
                bail!("proxy.apps.{appid}: no such app in [apps]");
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> anyhow::Result<()> {
        let http = &self.http;
        let ms = Duration::from_millis;
        duration_in_range(
            "http.head_timeout_ms",
            http.head_timeout,
            ms(100),
            ms(300_000),
        )?;
        duration_in_range(
            "http.body_timeout_ms",
            http.body_timeout,
            ms(100),
            ms(300_000),
        )?;
        duration_in_range(
            "http.keep_alive_secs",
            http.keep_alive,
            Duration::from_secs(1),
            Duration::from_secs(3_600),
        )
    }

    fn validate_wechat(&self) -> anyhow::Result<()> {
        let wechat = &self.wechat;
        let base = reqwest::Url::parse(&wechat.base_url)
            .with_context(|| format!("wechat.base_url: {:?} is not a URL", wechat.base_url))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("wechat.base_url: must be http or https");
        }
        let ms = Duration::from_millis;
        duration_in_range(
            "wechat.connect_timeout_ms",
            wechat.connect_timeout,
            ms(1),
            ms(60_000),
        )?;
        duration_in_range(
            "wechat.request_timeout_ms",
            wechat.request_timeout,
            ms(1),
            ms(300_000),
        )?;
        in_range(
            "wechat.max_concurrent_calls_per_app",
            wechat.max_concurrent_calls_per_app as u128,
            1,
            10_000,
            "",
        )?;
        in_range(
            "wechat.breaker_failure_threshold",
            wechat.breaker_failure_threshold.into(),
            1,
            1_000,
            "",
        )?;
        duration_in_range(
            "wechat.breaker_cooldown_secs",
            wechat.breaker_cooldown,
            Duration::from_secs(1),
            Duration::from_secs(HOUR),
        )
    }

    fn validate_ledger(&self) -> anyhow::Result<()> {
        self.validate_ledger_sends()?;
        self.validate_ledger_intake()?;
        self.validate_ledger_retries()?;
        self.validate_ledger_upkeep()
    }

    /// The margins, lease and attempts of one send.
    fn validate_ledger_sends(&self) -> anyhow::Result<()> {
        let ledger = &self.ledger;
        let s = Duration::from_secs;
        durations_in_range(&[
            (
                "ledger.safety_margin_secs",
                ledger.safety_margin,
                s(0),
                s(DAY),
            ),
            (
                "ledger.fresh_prepay_grace_secs",
                ledger.fresh_prepay_grace,
                s(0),
                s(HOUR),
            ),
            ("ledger.lease_secs", ledger.lease, s(1), s(DAY)),
        ])?;
        if ledger.lease <= self.wechat.request_timeout {
            bail!("ledger.lease_secs must be longer than wechat.request_timeout_ms: a lease may not run out during a call");
        }
        in_range(
            "ledger.max_attempts_per_send",
            ledger.max_attempts_per_send.into(),
            1,
            100,
            "",
        )?;
        in_range("ledger.busy_retries", ledger.busy_retries.into(), 0, 10, "")
    }

    /// The bounds of a batch of collected credentials.
    fn validate_ledger_intake(&self) -> anyhow::Result<()> {
        let ledger = &self.ledger;
        in_range(
            "ledger.max_body_bytes",
            ledger.max_body_bytes as u128,
            1_024,
            64 * 1024 * 1024,
            " bytes",
        )?;
        // The smallest item a batch can carry fixes how many fit in a body.
        let fit = ledger.max_body_bytes / crate::ledger::collect::MIN_ITEM_BYTES;
        in_range(
            "ledger.max_batch",
            ledger.max_batch as u128,
            1,
            fit as u128,
            &format!(
                " (the most credentials of {} bytes each that fit in ledger.max_body_bytes)",
                crate::ledger::collect::MIN_ITEM_BYTES
            ),
        )?;
        duration_in_range(
            "ledger.collected_at_skew_secs",
            ledger.collected_at_skew,
            Duration::from_secs(0),
            Duration::from_secs(HOUR),
        )
    }

    /// How a send that cannot finish now is tried again.
    fn validate_ledger_retries(&self) -> anyhow::Result<()> {
        let ledger = &self.ledger;
        duration_in_range(
            "ledger.not_ready_retry_secs",
            ledger.not_ready_retry,
            Duration::from_secs(1),
            Duration::from_secs(HOUR),
        )?;
        in_range("ledger.probe_limit", ledger.probe_limit.into(), 0, 10, "")
    }

    /// What the ledger remembers, and how often its workers run.
    fn validate_ledger_upkeep(&self) -> anyhow::Result<()> {
        let ledger = &self.ledger;
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        durations_in_range(&[
            (
                "ledger.idempotency_retention_hours",
                ledger.idempotency_retention,
                s(24 * HOUR),
                s(30 * DAY),
            ),
            (
                "ledger.waiting_poll_ms",
                ledger.waiting_poll,
                ms(10),
                ms(3_600_000),
            ),
            (
                "ledger.recovery_interval_secs",
                ledger.recovery_interval,
                s(1),
                s(HOUR),
            ),
            (
                "ledger.sweep_interval_secs",
                ledger.sweep_interval,
                s(1),
                s(DAY),
            ),
            (
                "ledger.credential_retention_days",
                ledger.credential_retention,
                s(0),
                s(3_650 * DAY),
            ),
            (
                "ledger.message_retention_days",
                ledger.message_retention,
                s(0),
                s(3_650 * DAY),
            ),
        ])
    }

    fn validate_tokens(&self) -> anyhow::Result<()> {
        let tokens = &self.tokens;
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // A token lives 7200 s; refreshing earlier than an hour ahead only
        // multiplies fetches. A token is used until its real expiry, so any
        // lead of a second or more works.
        duration_in_range(
            "tokens.refresh_ahead_secs",
            tokens.refresh_ahead,
            s(1),
            s(HOUR),
        )?;
        duration_in_range(
            "tokens.check_interval_secs",
            tokens.check_interval,
            s(1),
            s(HOUR),
        )?;
        duration_in_range("tokens.lease_secs", tokens.lease, s(1), s(600))?;
        duration_in_range("tokens.wait_ms", tokens.wait, ms(100), ms(300_000))?;
        duration_in_range("tokens.cache_ms", tokens.cache, ms(0), ms(60_000))?;
        in_range(
            "tokens.fetch_burst",
            tokens.fetch_burst.into(),
            1,
            100,
            " (each fetch retires the app's previous token; a few are enough)",
        )?;
        duration_in_range(
            "tokens.fetch_refill_secs",
            tokens.fetch_refill,
            s(44),
            s(HOUR),
        )?;
        duration_in_range("tokens.check_reuse_secs", tokens.check_reuse, s(1), s(600))?;
        duration_in_range("tokens.send_retry_secs", tokens.send_retry, s(1), s(600))?;
        in_range(
            "tokens.force_refreshes_per_day",
            tokens.force_refreshes_per_day.into(),
            0,
            WECHAT_FORCE_REFRESHES_PER_DAY.into(),
            " (WeChat allows 20 forced stable_token refreshes a day)",
        )
    }

    fn validate_apps(&self) -> anyhow::Result<()> {
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
            Self::validate_push(appid, app)?;
            access::validate_origins(appid, &app.cors_origins)?;
            user_limits::user_limits(&app.send_caps, app.quiet_hours.as_ref())
                .map_err(|error| anyhow::anyhow!("apps.{appid}.{error}"))?;
        }
        Ok(())
    }

    /// The push settings of one app: a token the console accepts, keys of
    /// 43 characters, and nothing that needs a push without one.
    fn validate_push(appid: &str, app: &AppSettings) -> anyhow::Result<()> {
        if let Some(token) = &app.push_token {
            let token = token.expose_secret();
            if !PUSH_TOKEN_CHARS.contains(&token.chars().count())
                || !token.chars().all(|c| c.is_ascii_alphanumeric())
            {
                bail!(
                    "apps.{appid}.push_token: 3 to 32 letters and digits, as the console's Token"
                );
            }
        }
        for (name, key) in [
            ("encoding_aes_key", &app.encoding_aes_key),
            ("previous_encoding_aes_key", &app.previous_encoding_aes_key),
        ] {
            if let Some(key) = key {
                crate::push::AesKey::from_encoding_aes_key(key.expose_secret())
                    .map_err(|error| anyhow::anyhow!("apps.{appid}.{name}: {error}"))?;
                if app.push_token.is_none() {
                    bail!("apps.{appid}.{name}: set only with apps.{appid}.push_token (the push is not configured)");
                }
            }
        }
        if app.previous_encoding_aes_key.is_some() && app.encoding_aes_key.is_none() {
            bail!("apps.{appid}.previous_encoding_aes_key: needs apps.{appid}.encoding_aes_key (the current key)");
        }
        if app.subscribe_grants_from == GrantsFrom::Wechat && app.push_token.is_none() {
            bail!("apps.{appid}.subscribe_grants_from = \"wechat\" needs the message push: set apps.{appid}.push_token (and encoding_aes_key), or keep \"frontend\"");
        }
        Ok(())
    }

    fn validate_keys(&self) -> anyhow::Result<()> {
        if self.api_keys.is_empty() {
            bail!("api_keys: none configured; every endpoint but /healthz and /readyz needs one");
        }
        let mut names_by_key: HashMap<&str, &str> = HashMap::new();
        for (name, key) in &self.api_keys {
            let secret = key.key.expose_secret();
            // Presented keys are trimmed and must be visible ASCII to travel
            // in a header: any other key could never match.
            if secret.trim() != secret {
                bail!("api_keys.{name}.key: begins or ends with whitespace; a key is {MIN_KEY_CHARS} or more visible ASCII characters");
            }
            if secret.chars().count() < MIN_KEY_CHARS {
                bail!("api_keys.{name}.key: shorter than {MIN_KEY_CHARS} characters");
            }
            if !secret.chars().all(|c| (' '..='~').contains(&c)) {
                bail!("api_keys.{name}.key: only visible ASCII characters (and inner spaces) can travel in an Authorization header");
            }
            if let Some(other) = names_by_key.insert(secret, name) {
                bail!("api_keys.{other} and api_keys.{name} have the same key; each key must be different, or the grants of one would silently win");
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

pub mod user_limits;

pub use user_limits::{QuietHoursSettings, QuietMode, SendCapSettings, UserLimits};

#[cfg(test)]
mod tests;
