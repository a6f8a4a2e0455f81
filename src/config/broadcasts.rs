//! The `[broadcasts]` settings: how fast and in what batches a broadcast's
//! recipients are sent to.

use std::time::Duration;

use serde::Deserialize;

use super::{millis, whole};

/// How broadcasts are paced and leased.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BroadcastSettings {
    /// Sends per second of an app's broadcast (the app's jobs run one at a
    /// time). 100 by default: under WeChat's daily limit of subscribe sends
    /// spread over a day (docs/wechat/broadcasts.md).
    #[serde(deserialize_with = "whole")]
    pub rate_per_sec: i64,
    /// The most recipients one instance leases at once.
    #[serde(deserialize_with = "whole")]
    pub batch: i64,
    /// How long a leased batch is an instance's before another may take its
    /// recipients over (their messages are then looked up, never sent again).
    #[serde(rename = "lease_ms", deserialize_with = "millis")]
    pub lease: Duration,
    /// How soon a recipient whose message is still being settled is looked at again.
    #[serde(rename = "recheck_ms", deserialize_with = "millis")]
    pub recheck: Duration,
    /// Sends of one recipient that came back with nothing sent (busy,
    /// unreachable, 45011…) before it is reported failed.
    #[serde(deserialize_with = "whole")]
    pub max_tries: i64,
    /// The largest NDJSON upload of a broadcast's recipients, in bytes.
    #[serde(deserialize_with = "whole")]
    pub max_upload_bytes: usize,
    /// How often the worker looks for work when it found none.
    #[serde(rename = "poll_ms", deserialize_with = "millis")]
    pub poll: Duration,
}

impl Default for BroadcastSettings {
    fn default() -> Self {
        Self {
            rate_per_sec: 100,
            batch: 64,
            lease: Duration::from_secs(60),
            recheck: Duration::from_secs(5),
            max_tries: 5,
            max_upload_bytes: 64 * 1024 * 1024,
            poll: Duration::from_millis(200),
        }
    }
}

impl BroadcastSettings {
    /// Checks every setting against its range.
    pub fn validate(&self) -> anyhow::Result<()> {
        super::in_range(
            "broadcasts.rate_per_sec",
            self.rate_per_sec as u128,
            1,
            10_000,
            "",
        )?;
        super::in_range("broadcasts.batch", self.batch as u128, 1, 1_000, "")?;
        super::in_range("broadcasts.max_tries", self.max_tries as u128, 1, 100, "")?;
        super::in_range(
            "broadcasts.max_upload_bytes",
            self.max_upload_bytes as u128,
            1024,
            1 << 30,
            " bytes",
        )?;
        super::durations_in_range(&[
            (
                "broadcasts.lease_ms",
                self.lease,
                Duration::from_secs(1),
                Duration::from_secs(3_600),
            ),
            (
                "broadcasts.recheck_ms",
                self.recheck,
                Duration::from_millis(10),
                Duration::from_secs(600),
            ),
            (
                "broadcasts.poll_ms",
                self.poll,
                Duration::from_millis(1),
                Duration::from_secs(60),
            ),
        ])
    }
}
