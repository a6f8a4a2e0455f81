//! `BroadcastStore` in memory: the broadcasts' statements of `sql.rs`
//! (migration 0013), each transaction one step under the model's lock.

use std::collections::BTreeSet;

use async_trait::async_trait;
use formid_gateway::ledger::broadcast::{pace, pace_after, JobStanding, Pace, PaceInput};
use formid_gateway::ledger::states::{BroadcastState, CredentialState, RecipientState};
use formid_gateway::storage::broadcasts::{
    Audience, BatchRecord, Broadcast, BroadcastStore, LeaseOutcome, LeasedRecipient, NewBroadcast,
    RecipientCount, RecipientLease, RecipientRow, RecipientWrite, StandingChange,
};

use super::{LedgerModel, Tables};

/// A row of `broadcast_recipients`.
#[derive(Debug, Clone)]
pub struct RecipientModelRow {
    pub openid: String,
    pub data: Option<String>,
    pub state: RecipientState,
    pub tries: i64,
    pub sends: i64,
    pub lease_token: Option<i64>,
    pub lease_until: Option<i64>,
    pub message_id: Option<String>,
    pub error_code: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub updated_at: i64,
}

/// A row of `broadcasts` (its pacing with it).
#[derive(Debug, Clone)]
pub struct BroadcastModelRow {
    pub job: Broadcast,
    pub next_lease_at: i64,
}

impl Tables {
    /// `INSERT_HOLDERS`: the users with an available credential of the
    /// template expiring after `valid_after`, or a long-term subscription,
    /// in openid order.
    fn holders(&self, appid: &str, grant_of: Option<&str>, valid_after: i64) -> BTreeSet<String> {
        let mut users: BTreeSet<String> = self
            .credentials
            .values()
            .filter(|c| {
                c.appid == appid
                    && c.state == CredentialState::Available
                    && c.expires_at > valid_after
                    && c.template_id.as_deref() == grant_of
            })
            .map(|c| c.openid.clone())
            .collect();
        if let Some(template) = grant_of {
            users.extend(
                self.subscriptions
                    .iter()
                    .filter(|((a, _, t), s)| a == appid && t == template && s.long_term)
                    .map(|((_, openid, _), _)| openid.clone()),
            );
        }
        users
    }

    fn recipients_of(
        &self,
        id: &str,
    ) -> impl Iterator<Item = (&(String, i64), &RecipientModelRow)> + '_ {
        let id = id.to_owned();
        self.recipients
            .range((id.clone(), i64::MIN)..=(id, i64::MAX))
    }
}

#[async_trait]
impl BroadcastStore for LedgerModel {
    async fn create_broadcast(
        &self,
        job: &NewBroadcast,
        audience: Audience<'_>,
    ) -> anyhow::Result<i64> {
        self.write(|t| {
            if t.broadcasts.contains_key(&job.id) {
                anyhow::bail!("duplicate key value violates unique constraint \"broadcasts_pkey\"");
            }
            let users: Vec<(String, Option<String>)> = match audience {
                Audience::Holders {
                    grant_of,
                    valid_after,
                } => t
                    .holders(&job.appid, grant_of, valid_after)
                    .into_iter()
                    .map(|openid| (openid, None))
                    .collect(),
                Audience::List(list) => list
                    .iter()
                    .map(|r| (r.openid.clone(), r.data.clone()))
                    .collect(),
            };
            let mut seen = BTreeSet::new();
            let mut seq = 0;
            for (openid, data) in users {
                if !seen.insert(openid.clone()) {
                    anyhow::bail!(
                        "duplicate key value violates unique constraint (broadcast_id, openid)"
                    );
                }
                seq += 1;
                t.recipients.insert(
                    (job.id.clone(), seq),
                    RecipientModelRow {
                        openid,
                        data,
                        state: RecipientState::Queued,
                        tries: 0,
                        sends: 0,
                        lease_token: None,
                        lease_until: None,
                        message_id: None,
                        error_code: None,
                        wechat_errcode: None,
                        updated_at: job.now,
                    },
                );
            }
            t.broadcasts.insert(
                job.id.clone(),
                BroadcastModelRow {
                    job: Broadcast {
                        id: job.id.clone(),
                        appid: job.appid.clone(),
                        template_id: job.template_id.clone(),
                        channel: job.channel,
                        spec: job.spec.clone(),
                        standing: JobStanding {
                            state: job.state,
                            pause_reason: None,
                        },
                        paused_until: None,
                        send_at: job.send_at,
                        rate: job.rate,
                        recipients: seq,
                        created_at: job.now,
                        started_at: (job.state == BroadcastState::Running).then_some(job.now),
                        first_send_at: None,
                        finished_at: None,
                        updated_at: job.now,
                    },
                    next_lease_at: job.send_at,
                },
            );
            Ok(seq)
        })
        .await
    }

    async fn broadcast(&self, appid: &str, id: &str) -> anyhow::Result<Option<Broadcast>> {
        self.read(|t| {
            t.broadcasts
                .get(id)
                .filter(|b| b.job.appid == appid)
                .map(|b| b.job.clone())
        })
        .await
    }

    async fn broadcasts(&self, appid: &str, limit: i64) -> anyhow::Result<Vec<Broadcast>> {
        self.read(|t| {
            let mut jobs: Vec<Broadcast> = t
                .broadcasts
                .values()
                .filter(|b| b.job.appid == appid)
                .map(|b| b.job.clone())
                .collect();
            jobs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            jobs.truncate(limit as usize);
            jobs
        })
        .await
    }

    async fn open_broadcasts(&self, limit: i64) -> anyhow::Result<Vec<Broadcast>> {
        self.read(|t| {
            let mut jobs: Vec<Broadcast> = t
                .broadcasts
                .values()
                .filter(|b| match b.job.standing.state {
                    BroadcastState::Scheduled
                    | BroadcastState::Running
                    | BroadcastState::Paused => true,
                    BroadcastState::Cancelled => b.job.finished_at.is_none(),
                    BroadcastState::Finished => false,
                })
                .map(|b| b.job.clone())
                .collect();
            jobs.sort_by(|a, b| (a.send_at, &a.id).cmp(&(b.send_at, &b.id)));
            jobs.truncate(limit as usize);
            jobs
        })
        .await
    }

    async fn change_standing(&self, change: &StandingChange<'_>) -> anyhow::Result<bool> {
        self.write(|t| {
            let Some(row) = t.broadcasts.get_mut(change.id) else {
                return Ok(false);
            };
            if row.job.standing != change.from {
                return Ok(false);
            }
            row.job.standing = change.to;
            row.job.paused_until = change.paused_until;
            row.job.updated_at = change.now;
            if change.to.state == BroadcastState::Running {
                row.job.started_at = row.job.started_at.or(Some(change.now));
            }
            if change.to.state == BroadcastState::Cancelled {
                let keys: Vec<(String, i64)> =
                    t.recipients_of(change.id).map(|(k, _)| k.clone()).collect();
                for key in keys {
                    let r = t.recipients.get_mut(&key).expect("listed");
                    if r.state == RecipientState::Queued {
                        r.state = RecipientState::Cancelled;
                        r.updated_at = change.now;
                    }
                }
            }
            Ok(true)
        })
        .await
    }

    async fn finish_broadcast(
        &self,
        id: &str,
        from: BroadcastState,
        state: BroadcastState,
        now: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| {
            let Some(row) = t.broadcasts.get_mut(id) else {
                return Ok(false);
            };
            if row.job.finished_at.is_some() || row.job.standing.state != from {
                return Ok(false);
            }
            row.job.standing = JobStanding {
                state,
                pause_reason: None,
            };
            row.job.paused_until = None;
            row.job.finished_at = Some(now);
            row.job.updated_at = now;
            Ok(true)
        })
        .await
    }

    async fn lease_recipients(&self, lease: &RecipientLease<'_>) -> anyhow::Result<LeaseOutcome> {
        self.write(|t| {
            let row = t
                .broadcasts
                .get(lease.broadcast_id)
                .ok_or_else(|| anyhow::anyhow!("no such broadcast"))?;
            let input = PaceInput {
                now: lease.now,
                next_lease_at: row.next_lease_at,
                rate: row.job.rate,
                max_batch: lease.max_batch,
            };
            let count = match (row.job.standing.state, pace(input)) {
                (BroadcastState::Running, Pace::Take { count }) => count,
                (BroadcastState::Running, Pace::Wait { until }) => {
                    return Ok(LeaseOutcome::Wait { until })
                }
                (BroadcastState::Cancelled, _) => lease.max_batch,
                _ => return Ok(LeaseOutcome::NoneFree { open: 1 }),
            };
            let free: Vec<(String, i64)> = t
                .recipients_of(lease.broadcast_id)
                .filter(|(_, r)| {
                    r.state == RecipientState::Queued
                        || (r.state == RecipientState::Leased
                            && r.lease_until.is_some_and(|u| u <= lease.now))
                })
                .take(count as usize)
                .map(|(k, _)| k.clone())
                .collect();
            if free.is_empty() {
                let open = t
                    .recipients_of(lease.broadcast_id)
                    .filter(|(_, r)| {
                        matches!(r.state, RecipientState::Queued | RecipientState::Leased)
                    })
                    .count() as i64;
                return Ok(LeaseOutcome::NoneFree { open });
            }
            let mut leased = Vec::with_capacity(free.len());
            for key in &free {
                let r = t.recipients.get_mut(key).expect("listed");
                leased.push(LeasedRecipient {
                    seq: key.1,
                    openid: r.openid.clone(),
                    data: r.data.clone(),
                    tries: r.tries,
                    sends: r.sends,
                    state: r.state,
                });
                r.state = RecipientState::Leased;
                r.lease_token = Some(lease.token);
                r.lease_until = Some(lease.lease_until);
                r.updated_at = lease.now;
            }
            let row = t
                .broadcasts
                .get_mut(lease.broadcast_id)
                .expect("read above");
            row.next_lease_at = pace_after(input, leased.len() as i64);
            Ok(LeaseOutcome::Batch(leased))
        })
        .await
    }

    async fn record_batch(&self, record: &BatchRecord<'_>) -> anyhow::Result<u64> {
        self.write(|t| {
            let mut kept = 0;
            for (seq, write) in record.writes {
                let Some(r) = t
                    .recipients
                    .get_mut(&(record.broadcast_id.to_owned(), *seq))
                else {
                    continue;
                };
                if r.lease_token != Some(record.token) {
                    continue;
                }
                kept += 1;
                r.updated_at = record.now;
                match write {
                    RecipientWrite::Final {
                        state,
                        message_id,
                        error_code,
                        wechat_errcode,
                    } => {
                        r.state = *state;
                        r.message_id = message_id.clone();
                        r.error_code = error_code.clone();
                        r.wechat_errcode = *wechat_errcode;
                        r.lease_token = None;
                        r.lease_until = None;
                    }
                    RecipientWrite::Requeue { counts, error_code } => {
                        r.state = RecipientState::Queued;
                        r.tries += i64::from(*counts);
                        r.sends += 1;
                        r.error_code = error_code.clone();
                        r.lease_token = None;
                        r.lease_until = None;
                        r.message_id = None;
                    }
                    RecipientWrite::Recheck { until, message_id } => {
                        r.lease_until = Some(*until);
                        r.message_id = Some(message_id.clone());
                    }
                }
            }
            if let Some(row) = t.broadcasts.get_mut(record.broadcast_id) {
                row.job.rate = record.rate;
                row.job.updated_at = record.now;
                if record.sent_any {
                    row.job.first_send_at = row.job.first_send_at.or(Some(record.now));
                }
                if let Some((reason, until)) = record.pause {
                    if row.job.standing.state == BroadcastState::Running {
                        row.job.standing = JobStanding {
                            state: BroadcastState::Paused,
                            pause_reason: Some(reason),
                        };
                        row.job.paused_until = Some(until);
                    }
                }
            }
            Ok(kept)
        })
        .await
    }

    async fn recipient_counts(&self, id: &str) -> anyhow::Result<Vec<RecipientCount>> {
        self.read(|t| {
            let mut counts: std::collections::BTreeMap<
                (&'static str, Option<String>, Option<i64>),
                (RecipientState, i64),
            > = Default::default();
            for (_, r) in t.recipients_of(id) {
                let entry = counts
                    .entry((r.state.as_str(), r.error_code.clone(), r.wechat_errcode))
                    .or_insert((r.state, 0));
                entry.1 += 1;
            }
            counts
                .into_iter()
                .map(
                    |((_, error_code, wechat_errcode), (state, count))| RecipientCount {
                        state,
                        error_code,
                        wechat_errcode,
                        count,
                    },
                )
                .collect()
        })
        .await
    }

    async fn recipient_page(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<RecipientRow>> {
        self.read(|t| {
            t.recipients_of(id)
                .filter(|((_, seq), _)| *seq > after_seq)
                .take(limit as usize)
                .map(|((_, seq), r)| RecipientRow {
                    seq: *seq,
                    openid: r.openid.clone(),
                    state: r.state,
                    message_id: r.message_id.clone(),
                    error_code: r.error_code.clone(),
                    wechat_errcode: r.wechat_errcode,
                    updated_at: r.updated_at,
                })
                .collect()
        })
        .await
    }
}
