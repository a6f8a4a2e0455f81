//! The ledger in figures, for operators: per app, the users reachable now,
//! the live credentials by kind, the one-time grants per template, the users
//! each subscribe template reaches, and what expires within 24 hours.
//!
//! A worker ([`Stats::run_once`], every `stats.refresh_secs`) reads them with
//! a few indexed queries per app (`storage::stats`), keeps the result in
//! memory for the console, and records it as gauges through the `metrics`
//! facade. A scrape or a console page reads the snapshot: neither ever
//! starts a scan of the ledger, except the console's first look at an app
//! the worker has not reached yet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use crate::clock::SharedClock;
use crate::config::{secs, AppSettings};
use crate::ledger::kinds::CredentialKind;
use crate::ledger::states::Channel;
use crate::storage::stats::LedgerCounts;
use crate::storage::Storage;

/// The window "expiring soon" looks ahead.
pub const EXPIRING_WINDOW_MS: i64 = 24 * 3_600_000;

/// The `[stats]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StatsSettings {
    /// How often the worker reads the figures again.
    #[serde(rename = "refresh_secs", deserialize_with = "secs")]
    pub refresh: Duration,
}

impl Default for StatsSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(60),
        }
    }
}

impl StatsSettings {
    /// The settings against their ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(3_600));
        if self.refresh < min || self.refresh > max {
            anyhow::bail!("stats.refresh_secs: out of range; allowed is 1 to 3600");
        }
        Ok(())
    }
}

/// The live credentials of one template-channel kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindStats {
    pub kind: Option<CredentialKind>,
    /// Available, unexpired credentials.
    pub credentials: i64,
    /// Sends they allow together.
    pub sends: i64,
    /// Distinct users holding one.
    pub users: i64,
    /// Of the credentials, those expiring within 24 hours.
    pub expiring_24h: i64,
}

/// One subscribe template's standing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateStats {
    pub template_id: String,
    /// One-time grants left.
    pub grants: i64,
    /// Distinct users with a grant or a long-term subscription.
    pub users_reachable: i64,
    /// Of them, users with a long-term subscription.
    pub long_term_subscribers: i64,
    /// Of the grants, those expiring within 24 hours.
    pub expiring_24h: i64,
}

/// An app's figures at one time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppStats {
    /// When they were read (Unix ms).
    pub refreshed_at: i64,
    /// Distinct users any credential, grant or long-term subscription reaches.
    pub users_reachable: i64,
    /// `form_id` and `prepay_id`, in that order, even when none is held.
    pub credentials: Vec<KindStats>,
    /// Subscribe templates some user can be reached by, by id.
    pub templates: Vec<TemplateStats>,
}

impl AppStats {
    /// The figures from the ledger's counts read at `now`.
    pub fn from_counts(counts: &LedgerCounts, now: i64) -> Self {
        let credentials = CredentialKind::ALL
            .into_iter()
            .filter(|kind| kind.rules().channel == Channel::Template)
            .map(|kind| {
                let mut stats = KindStats {
                    kind: Some(kind),
                    ..KindStats::default()
                };
                for row in counts.live.iter().filter(|row| row.kind == kind.as_str()) {
                    stats.credentials += row.credentials;
                    stats.sends += row.uses;
                    stats.users += row.users;
                    stats.expiring_24h += row.expiring;
                }
                stats
            })
            .collect();
        let mut templates: BTreeMap<&str, TemplateStats> = BTreeMap::new();
        let subscribe = CredentialKind::Subscribe.as_str();
        for row in counts.live.iter().filter(|row| row.kind == subscribe) {
            let Some(template_id) = row.template_id.as_deref() else {
                continue;
            };
            let entry = templates.entry(template_id).or_default();
            entry.grants += row.credentials;
            entry.expiring_24h += row.expiring;
        }
        for reach in &counts.templates {
            let entry = templates.entry(&reach.template_id).or_default();
            entry.users_reachable = reach.users;
            entry.long_term_subscribers = reach.long_term;
        }
        Self {
            refreshed_at: now,
            users_reachable: counts.users_reachable,
            credentials,
            templates: templates
                .into_iter()
                .map(|(template_id, stats)| TemplateStats {
                    template_id: template_id.to_owned(),
                    ..stats
                })
                .collect(),
        }
    }
}

/// The figures of every app, kept fresh by [`Stats::run_once`].
#[derive(Debug, Clone)]
pub struct Stats {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    apps: Arc<BTreeMap<String, AppSettings>>,
    snapshots: Arc<RwLock<BTreeMap<String, Arc<AppStats>>>>,
}

impl Stats {
    pub fn new(
        storage: Arc<dyn Storage>,
        clock: SharedClock,
        apps: Arc<BTreeMap<String, AppSettings>>,
    ) -> Self {
        Self {
            storage,
            clock,
            apps,
            snapshots: Arc::default(),
        }
    }

    /// Reads every app's figures again, keeps them and records the gauges.
    #[tracing::instrument(name = "stats", skip_all)]
    pub async fn run_once(&self) -> anyhow::Result<()> {
        for appid in self.apps.keys() {
            self.refresh(appid).await?;
        }
        Ok(())
    }

    /// The app's latest figures, if the worker has read them.
    pub fn snapshot(&self, appid: &str) -> Option<Arc<AppStats>> {
        self.snapshots
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(appid)
            .cloned()
    }

    /// The app's latest figures, read now when the worker has not yet.
    pub async fn snapshot_or_refresh(&self, appid: &str) -> anyhow::Result<Arc<AppStats>> {
        match self.snapshot(appid) {
            Some(stats) => Ok(stats),
            None => self.refresh(appid).await,
        }
    }

    /// Reads one app's figures, keeps them and records its gauges.
    async fn refresh(&self, appid: &str) -> anyhow::Result<Arc<AppStats>> {
        let now = self.clock.now_ms();
        let counts = self
            .storage
            .ledger_counts(appid, now, now + EXPIRING_WINDOW_MS)
            .await?;
        let stats = Arc::new(AppStats::from_counts(&counts, now));
        let previous = self
            .snapshots
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(appid.to_owned(), stats.clone());
        record_gauges(appid, &stats, previous.as_deref());
        Ok(stats)
    }
}

/// Sets the app's gauges; a template reachable before and not now is set to
/// 0, so its series does not keep its last value.
fn record_gauges(appid: &str, stats: &AppStats, previous: Option<&AppStats>) {
    let app = appid.to_owned();
    metrics::gauge!("formid_users_reachable", "app" => app.clone())
        .set(stats.users_reachable as f64);
    for kind in &stats.credentials {
        let name = kind.kind.map_or("unknown", CredentialKind::as_str);
        metrics::gauge!("formid_credentials_available", "app" => app.clone(), "kind" => name)
            .set(kind.credentials as f64);
    }
    let current: BTreeSet<&str> = stats
        .templates
        .iter()
        .map(|template| template.template_id.as_str())
        .collect();
    for template in &stats.templates {
        let id = template.template_id.clone();
        metrics::gauge!("formid_grants_available", "app" => app.clone(), "template" => id.clone())
            .set(template.grants as f64);
        metrics::gauge!("formid_users_reachable_by_template", "app" => app.clone(), "template" => id)
            .set(template.users_reachable as f64);
    }
    let gone = previous
        .into_iter()
        .flat_map(|previous| &previous.templates)
        .filter(|template| !current.contains(template.template_id.as_str()));
    for template in gone {
        let id = template.template_id.clone();
        metrics::gauge!("formid_grants_available", "app" => app.clone(), "template" => id.clone())
            .set(0.0);
        metrics::gauge!("formid_users_reachable_by_template", "app" => app.clone(), "template" => id)
            .set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::stats::{LiveCount, TemplateReach};

    fn live(kind: &str, template: Option<&str>, credentials: i64, expiring: i64) -> LiveCount {
        LiveCount {
            kind: kind.to_owned(),
            template_id: template.map(str::to_owned),
            credentials,
            uses: credentials * 2,
            users: credentials,
            expiring,
        }
    }

    #[test]
    fn counts_become_figures_by_kind_and_template() {
        let counts = LedgerCounts {
            live: vec![
                live("form_id", None, 3, 1),
                live("subscribe", Some("t1"), 2, 0),
            ],
            templates: vec![
                TemplateReach {
                    template_id: "t1".into(),
                    users: 2,
                    long_term: 0,
                },
                TemplateReach {
                    template_id: "t2".into(),
                    users: 5,
                    long_term: 5,
                },
            ],
            users_reachable: 9,
        };
        let stats = AppStats::from_counts(&counts, 42);
        assert_eq!(stats.refreshed_at, 42);
        assert_eq!(stats.users_reachable, 9);
        assert_eq!(stats.credentials.len(), 2, "form_id and prepay_id");
        assert_eq!(stats.credentials[0].kind, Some(CredentialKind::FormId));
        assert_eq!(
            (stats.credentials[0].credentials, stats.credentials[0].sends),
            (3, 6)
        );
        assert_eq!(stats.credentials[0].expiring_24h, 1);
        assert_eq!(stats.credentials[1].credentials, 0);
        assert_eq!(stats.templates.len(), 2);
        assert_eq!(
            (
                stats.templates[0].grants,
                stats.templates[0].users_reachable
            ),
            (2, 2)
        );
        assert_eq!(
            (
                stats.templates[1].grants,
                stats.templates[1].long_term_subscribers
            ),
            (0, 5)
        );
    }
}
