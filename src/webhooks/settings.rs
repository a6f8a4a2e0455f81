//! The `[webhooks]` settings.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{days, hours, millis, whole};

/// How events are delivered to the apps' endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// How often the delivery worker looks for due events.
    #[serde(rename = "poll_ms", deserialize_with = "millis")]
    pub poll: Duration,
    /// Events one step of the worker leases at most.
    #[serde(deserialize_with = "whole")]
    pub batch: u32,
    /// Calls in flight to one endpoint at once, per process.
    #[serde(deserialize_with = "whole")]
    pub max_in_flight_per_endpoint: u32,
    /// Connecting to an endpoint gives up after this.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    /// A whole call (connect, send, the answer's head and bounded body)
    /// gives up after this; the event's lease outlasts it.
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    /// An endpoint that fails every attempt this long is switched off.
    #[serde(rename = "disable_after_days", deserialize_with = "days")]
    pub disable_after: Duration,
    /// After a rotation the old secret signs too, this long.
    #[serde(rename = "rotation_overlap_hours", deserialize_with = "hours")]
    pub rotation_overlap: Duration,
    /// Delivered and failed events (and attempts) are deleted after this;
    /// failed ones can be replayed until then.
    #[serde(rename = "retention_hours", deserialize_with = "hours")]
    pub retention: Duration,
    /// Endpoints may name loopback, private and link-local addresses. Off in
    /// production (see `refused_address`); tests turn it on for their
    /// receivers on 127.0.0.1.
    #[serde(deserialize_with = "flag")]
    pub allow_private_targets: bool,
    /// Most endpoints an app may have.
    #[serde(deserialize_with = "whole")]
    pub max_endpoints_per_app: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(1_000),
            batch: 64,
            max_in_flight_per_endpoint: 4,
            connect_timeout: Duration::from_millis(2_000),
            request_timeout: Duration::from_millis(10_000),
            disable_after: Duration::from_secs(5 * 86_400),
            rotation_overlap: Duration::from_secs(24 * 3_600),
            retention: Duration::from_secs(72 * 3_600),
            allow_private_targets: false,
            max_endpoints_per_app: 10,
        }
    }
}

impl WebhookSettings {
    /// The settings against their ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ms = Duration::from_millis;
        let hour = Duration::from_secs(3_600);
        let checks = [
            ("webhooks.poll_ms", self.poll, ms(10), ms(60_000)),
            (
                "webhooks.connect_timeout_ms",
                self.connect_timeout,
                ms(100),
                ms(30_000),
            ),
            (
                "webhooks.request_timeout_ms",
                self.request_timeout,
                ms(100),
                ms(60_000),
            ),
            (
                "webhooks.disable_after_days",
                self.disable_after,
                24 * hour,
                30 * 24 * hour,
            ),
            (
                "webhooks.rotation_overlap_hours",
                self.rotation_overlap,
                hour,
                7 * 24 * hour,
            ),
            (
                "webhooks.retention_hours",
                self.retention,
                24 * hour,
                90 * 24 * hour,
            ),
        ];
        for (name, value, min, max) in checks {
            if value < min || value > max {
                anyhow::bail!("{name}: out of range; allowed is {min:?} to {max:?}");
            }
        }
        for (name, value, max) in [
            ("webhooks.batch", self.batch, 1_000),
            (
                "webhooks.max_in_flight_per_endpoint",
                self.max_in_flight_per_endpoint,
                64,
            ),
            (
                "webhooks.max_endpoints_per_app",
                self.max_endpoints_per_app,
                100,
            ),
        ] {
            if value == 0 || value > max {
                anyhow::bail!("{name}: {value} is out of range; allowed is 1 to {max}");
            }
        }
        Ok(())
    }

    /// How long a worker holds a leased event: longer than a whole call.
    pub fn lease(&self) -> Duration {
        self.connect_timeout + self.request_timeout + Duration::from_secs(5)
    }
}

/// A boolean from the file (`true`) or the environment (the text `true` or
/// `false`, nothing else).
fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Flag::deserialize(deserializer)? {
        Flag::Bool(value) => Ok(value),
        Flag::Text(text) => match text.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not true or false"
            ))),
        },
    }
}
