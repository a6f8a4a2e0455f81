//! `StatsStore` in memory: the operators' reads of `src/storage/stats.rs`
//! over the model's tables, each one read under the model's lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use formid_gateway::ledger::states::{CredentialState, MessageStatus};
use formid_gateway::storage::stats::{
    FailureCount, LedgerCounts, LiveCount, RecentQuery, StatsStore, TemplateReach, TokenStanding,
};
use formid_gateway::storage::{AttemptRow, MessageRow};

use super::{CredentialRow, LedgerModel, MessageRowModel, Tables};

/// `state = 'available' AND expires_at > now` of the app.
fn live<'a>(t: &'a Tables, appid: &'a str, now: i64) -> impl Iterator<Item = &'a CredentialRow> {
    t.credentials.values().filter(move |c| {
        c.appid == appid && c.state == CredentialState::Available && c.expires_at > now
    })
}

/// `(template_id, openid)` of the app's long-term subscribers.
fn long_term<'a>(t: &'a Tables, appid: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    t.subscriptions
        .iter()
        .filter(move |((app, _, _), row)| app == appid && row.long_term)
        .map(|((_, openid, template), _)| (template.as_str(), openid.as_str()))
}

/// A group of `LIVE_COUNTS` (kind, template) with its distinct users.
type LiveGroups<'a> = BTreeMap<(String, Option<String>), (LiveCount, BTreeSet<&'a str>)>;

/// `LIVE_COUNTS`, `TEMPLATE_REACH` and `USERS_REACHABLE`.
fn counts(t: &Tables, appid: &str, now: i64, soon: i64) -> LedgerCounts {
    let mut groups = LiveGroups::new();
    for c in live(t, appid, now) {
        let (count, users) = groups
            .entry((c.kind.clone(), c.template_id.clone()))
            .or_insert_with(|| {
                let count = LiveCount {
                    kind: c.kind.clone(),
                    template_id: c.template_id.clone(),
                    credentials: 0,
                    uses: 0,
                    users: 0,
                    expiring: 0,
                };
                (count, BTreeSet::new())
            });
        count.credentials += 1;
        count.uses += c.uses_left;
        count.expiring += i64::from(c.expires_at <= soon);
        users.insert(&c.openid);
    }
    let live_counts = groups
        .into_values()
        .map(|(count, users)| LiveCount {
            users: users.len() as i64,
            ..count
        })
        .collect();
    let mut reach: BTreeMap<&str, (BTreeSet<&str>, i64)> = BTreeMap::new();
    let grants = live(t, appid, now).filter(|c| c.kind == "subscribe");
    for c in grants {
        if let Some(template) = c.template_id.as_deref() {
            reach.entry(template).or_default().0.insert(&c.openid);
        }
    }
    for (template, openid) in long_term(t, appid) {
        let entry = reach.entry(template).or_default();
        entry.0.insert(openid);
        entry.1 += 1;
    }
    let users: BTreeSet<&str> = live(t, appid, now)
        .map(|c| c.openid.as_str())
        .chain(long_term(t, appid).map(|(_, openid)| openid))
        .collect();
    LedgerCounts {
        live: live_counts,
        templates: reach
            .into_iter()
            .map(|(template, (users, long_term))| TemplateReach {
                template_id: template.to_owned(),
                users: users.len() as i64,
                long_term,
            })
            .collect(),
        users_reachable: users.len() as i64,
    }
}

/// A message of the model as the storage returns it.
pub(super) fn message_row(m: &MessageRowModel) -> MessageRow {
    MessageRow {
        id: m.id.clone(),
        appid: m.appid.clone(),
        touser: m.touser.clone(),
        template_id: m.template_id.clone(),
        status: m.status,
        error_code: m.error_code.clone(),
        wechat_errcode: m.wechat_errcode,
        created_at: m.created_at,
        updated_at: m.updated_at,
        channel: m.channel,
        // The model has no push receiver, which alone records a delivery.
        delivery_error_code: None,
        delivery_error_status: None,
        delivery_reported_at: None,
        reference: m.reference.clone(),
    }
}

#[async_trait]
impl StatsStore for LedgerModel {
    async fn ledger_counts(
        &self,
        appid: &str,
        now: i64,
        soon: i64,
    ) -> anyhow::Result<LedgerCounts> {
        self.read(|t| counts(t, appid, now, soon)).await
    }

    async fn recent_messages(
        &self,
        query: &RecentQuery<'_>,
    ) -> anyhow::Result<Vec<(MessageRow, Vec<AttemptRow>)>> {
        self.read(|t| {
            let mut rows: Vec<&MessageRowModel> = t
                .messages
                .values()
                .filter(|m| m.appid == query.appid)
                .filter(|m| query.openid.is_none_or(|openid| m.touser == openid))
                .filter(|m| {
                    query.before.is_none_or(|(at, id)| {
                        m.created_at < at || (m.created_at == at && m.id.as_str() < id)
                    })
                })
                .collect();
            rows.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            rows.into_iter()
                .take(usize::try_from(query.limit).unwrap_or(0))
                .map(|m| {
                    let attempts = t.attempts.get(&m.id).cloned().unwrap_or_default();
                    (message_row(m), attempts)
                })
                .collect()
        })
        .await
    }

    async fn failures_since(&self, appid: &str, since: i64) -> anyhow::Result<Vec<FailureCount>> {
        self.read(|t| {
            let mut groups: HashMap<(i64, Option<i64>, Option<String>), i64> = HashMap::new();
            let failed = t.messages.values().filter(|m| {
                m.appid == appid && m.status == MessageStatus::Failed && m.updated_at >= since
            });
            for m in failed {
                let key = (
                    (m.updated_at - since) / 3_600_000,
                    m.wechat_errcode,
                    m.error_code.clone(),
                );
                *groups.entry(key).or_default() += 1;
            }
            let mut rows: Vec<FailureCount> = groups
                .into_iter()
                .map(
                    |((hour, wechat_errcode, error_code), messages)| FailureCount {
                        hour,
                        wechat_errcode,
                        error_code,
                        messages,
                    },
                )
                .collect();
            rows.sort_by(|a, b| {
                (a.hour, a.wechat_errcode, &a.error_code).cmp(&(
                    b.hour,
                    b.wechat_errcode,
                    &b.error_code,
                ))
            });
            rows
        })
        .await
    }

    async fn token_standing(&self, appid: &str) -> anyhow::Result<TokenStanding> {
        self.read(|t| {
            t.apps
                .get(appid)
                .map(|app| TokenStanding {
                    has_token: app.access_token.is_some(),
                    token_expires_at: app.token_expires_at,
                    token_fetched_at: app.token_fetched_at,
                    token_checked_at: app.token_checked_at,
                    refresh_holder: app.refresh_holder.clone(),
                    refresh_lease_until: app.refresh_lease_until,
                })
                .unwrap_or_default()
        })
        .await
    }
}
