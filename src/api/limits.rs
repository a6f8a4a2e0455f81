//! Request rate limits (the `governor` crate's GCRA), per instance: per
//! session and per client IP on the login and `/me` routes, per API key on
//! the others. A request over a limit is answered 429 `rate_limited` with
//! `Retry-After`, before anything is read or stored. Each limit is a number
//! a minute with bursts of up to a minute's worth; 0 turns it off. The
//! limiters run on the service's clock.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use governor::clock::Clock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::error::ApiError;
use crate::clock::SharedClock;
use crate::config::LimitSettings;

/// The service's clock as governor reads it: time since the Unix epoch.
#[derive(Clone)]
struct ServiceClock(SharedClock);

impl Clock for ServiceClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now_ms()).unwrap_or(0))
    }
}

type Keyed = RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    ServiceClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// One keyed limit, or none (0 a minute).
struct Limit {
    limiter: Option<Keyed>,
    clock: ServiceClock,
    checks: AtomicU64,
}

impl Limit {
    fn new(per_minute: u32, clock: &SharedClock) -> Self {
        let clock = ServiceClock(clock.clone());
        let limiter = NonZeroU32::new(per_minute).map(|per_minute| {
            RateLimiter::new(
                Quota::per_minute(per_minute),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        });
        Self {
            limiter,
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// `Err(seconds to wait)` when `key` is over the limit.
    fn check(&self, key: &str) -> Result<(), i64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Why the occasional sweep: keys whose state is back to fresh are
        // dropped, so a stream of new IPs or tokens does not grow the map.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4_096 == 4_095 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_owned())
            .map(drop)
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                i64::try_from(wait.as_millis().div_ceil(1_000))
                    .unwrap_or(i64::MAX)
                    .max(1)
            })
    }
}

/// The instance's limiters.
pub struct Limits {
    per_session: Limit,
    per_ip: Limit,
    per_api_key: Limit,
    trust_forwarded_for: bool,
}

impl fmt::Debug for Limits {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Limits").finish_non_exhaustive()
    }
}

/// 429 `rate_limited` with `Retry-After`.
fn limited(what: &str, retry_after: i64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests {what}; try again after Retry-After seconds"),
    )
    .with_retry_after(Some(retry_after))
}

impl Limits {
    /// The limiters of `settings`, on `clock`.
    pub fn new(settings: &LimitSettings, clock: &SharedClock) -> Self {
        Self {
            per_session: Limit::new(settings.per_session_per_minute, clock),
            per_ip: Limit::new(settings.per_ip_per_minute, clock),
            per_api_key: Limit::new(settings.per_api_key_per_minute, clock),
            trust_forwarded_for: settings.trust_forwarded_for,
        }
    }

    /// The client IP's limit (login and `/me` routes).
    pub fn check_ip(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let ip = self.client_ip(request);
        self.per_ip
            .check(&ip)
            .map_err(|wait| limited("from this address", wait))
    }

    /// A session's limit, by its id.
    pub fn check_session(&self, session_id: &str) -> Result<(), ApiError> {
        self.per_session
            .check(session_id)
            .map_err(|wait| limited("with this session", wait))
    }

    /// An API key's limit, by its name.
    pub fn check_api_key(&self, name: &str) -> Result<(), ApiError> {
        self.per_api_key
            .check(name)
            .map_err(|wait| limited("with this API key", wait))
    }

    /// The peer's address, or the first of `X-Forwarded-For` when trusted.
    fn client_ip(&self, request: &HttpRequest) -> String {
        let info = request.connection_info();
        let address = if self.trust_forwarded_for {
            info.realip_remote_addr()
        } else {
            info.peer_addr()
        };
        address.unwrap_or("unknown").to_owned()
    }
}
