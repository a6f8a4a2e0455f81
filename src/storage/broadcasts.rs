//! The broadcasts' storage group ([`BroadcastStore`], migration 0013): jobs
//! and their recipients, leased to instances in batches under a fencing
//! token, paced by the job's row, their results recorded one batch per
//! transaction. The body is shared by both backends ([`impl_broadcast_store!`]).

use async_trait::async_trait;

use crate::ledger::broadcast::JobStanding;
use crate::ledger::states::{BroadcastState, Channel, PauseReason, RecipientState};

/// A broadcast to record.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    pub id: String,
    pub appid: String,
    pub template_id: String,
    pub channel: Channel,
    /// The send request without its user, as JSON (`BroadcastSpec`).
    pub spec: String,
    /// `scheduled` (a `send_at` ahead) or `running`.
    pub state: BroadcastState,
    pub send_at: i64,
    /// Sends per second.
    pub rate: i64,
    pub now: i64,
}

/// Who a broadcast goes to.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Every user holding, now, what pays for the message: a credential
    /// expiring after `valid_after` of `grant_of` (a subscribe template;
    /// `None`: a form_id or prepay_id), or a long-term subscription to it.
    Holders {
        grant_of: Option<&'a str>,
        valid_after: i64,
    },
    /// These users, in this order, each once.
    List(&'a [NewRecipient]),
}

/// One user of a listed audience.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub openid: String,
    /// The user's own template data, as JSON.
    pub data: Option<String>,
}

/// A broadcast as stored.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub id: String,
    pub appid: String,
    pub template_id: String,
    pub channel: Channel,
    pub spec: String,
    pub standing: JobStanding,
    pub paused_until: Option<i64>,
    pub send_at: i64,
    pub rate: i64,
    pub recipients: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub first_send_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

/// The row as read; its names become enums in [`Broadcast`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BroadcastRow {
    pub id: String,
    pub appid: String,
    pub template_id: String,
    pub channel: String,
    pub spec: String,
    pub state: String,
    pub pause_reason: Option<String>,
    pub paused_until: Option<i64>,
    pub send_at: i64,
    pub rate: i64,
    pub next_lease_at: i64,
    pub recipients: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub first_send_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

impl TryFrom<BroadcastRow> for Broadcast {
    type Error = anyhow::Error;

    fn try_from(row: BroadcastRow) -> anyhow::Result<Self> {
        Ok(Broadcast {
            standing: JobStanding {
                state: row.state.parse()?,
                pause_reason: row
                    .pause_reason
                    .as_deref()
                    .map(str::parse::<PauseReason>)
                    .transpose()?,
            },
            channel: row.channel.parse()?,
            id: row.id,
            appid: row.appid,
            template_id: row.template_id,
            spec: row.spec,
            paused_until: row.paused_until,
            send_at: row.send_at,
            rate: row.rate,
            recipients: row.recipients,
            created_at: row.created_at,
            started_at: row.started_at,
            first_send_at: row.first_send_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        })
    }
}

/// A change of a job's standing, from the one its writer read.
#[derive(Debug, Clone, Copy)]
pub struct StandingChange<'a> {
    pub id: &'a str,
    pub from: JobStanding,
    pub to: JobStanding,
    /// Until when a pause of the quota or the breaker holds.
    pub paused_until: Option<i64>,
    pub now: i64,
}

/// A lease of a batch of a job's recipients.
#[derive(Debug, Clone, Copy)]
pub struct RecipientLease<'a> {
    pub broadcast_id: &'a str,
    /// The fencing token every write of the batch checks.
    pub token: i64,
    pub now: i64,
    pub lease_until: i64,
    /// The most recipients one lease takes.
    pub max_batch: i64,
}

/// A recipient leased to this instance.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeasedRecipient {
    pub seq: i64,
    pub openid: String,
    pub data: Option<String>,
    pub tries: i64,
    /// Messages created for it so far: its send's message id ends in this.
    pub sends: i64,
    /// `leased` when another instance held it and its lease ran out: its
    /// message may exist and is looked up before anything is sent.
    #[sqlx(try_from = "String")]
    pub state: RecipientState,
}

/// What a lease found.
#[derive(Debug, Clone)]
pub enum LeaseOutcome {
    /// These recipients are this instance's until the lease's end.
    Batch(Vec<LeasedRecipient>),
    /// The job's pacing allows no batch before `until`.
    Wait { until: i64 },
    /// Nothing free now; `open` recipients are still queued or leased.
    NoneFree { open: i64 },
}

/// What becomes of one leased recipient.
#[derive(Debug, Clone)]
pub enum RecipientWrite {
    /// Its final result.
    Final {
        state: RecipientState,
        /// The message its send created (none when nothing was sent).
        message_id: Option<String>,
        error_code: Option<String>,
        wechat_errcode: Option<i64>,
    },
    /// Nothing was sent: queued again, `counts` adding a try.
    Requeue {
        counts: bool,
        error_code: Option<String>,
    },
    /// Its message is still being settled: looked at again after `until`.
    Recheck { until: i64, message_id: String },
}

/// The results of one batch, recorded in one transaction under its token.
#[derive(Debug, Clone)]
pub struct BatchRecord<'a> {
    pub broadcast_id: &'a str,
    pub token: i64,
    pub now: i64,
    pub writes: &'a [(i64, RecipientWrite)],
    /// The job's rate after the batch.
    pub rate: i64,
    /// A pause the batch's answers ask for (45009, the breaker).
    pub pause: Option<(PauseReason, i64)>,
    /// Whether any recipient was sent to (the job's first send time).
    pub sent_any: bool,
}

/// How many of a job's recipients are in one state, with one error.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecipientCount {
    #[sqlx(try_from = "String")]
    pub state: RecipientState,
    pub error_code: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub count: i64,
}

/// One recipient's result, as the results download lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecipientRow {
    pub seq: i64,
    pub openid: String,
    #[sqlx(try_from = "String")]
    pub state: RecipientState,
    pub message_id: Option<String>,
    pub error_code: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub updated_at: i64,
}

/// Broadcasts: jobs, their recipients, leases of batches, results.
#[async_trait]
pub trait BroadcastStore: Send + Sync {
    /// Records a job and its audience in one transaction; returns how many
    /// recipients it has.
    async fn create_broadcast(
        &self,
        job: &NewBroadcast,
        audience: Audience<'_>,
    ) -> anyhow::Result<i64>;

    /// One job of the app.
    async fn broadcast(&self, appid: &str, id: &str) -> anyhow::Result<Option<Broadcast>>;

    /// The app's newest jobs, up to `limit`.
    async fn broadcasts(&self, appid: &str, limit: i64) -> anyhow::Result<Vec<Broadcast>>;

    /// The jobs not over (or cancelled with recipients still leased).
    async fn open_broadcasts(&self, limit: i64) -> anyhow::Result<Vec<Broadcast>>;

    /// Changes a job's standing if it is still `from`; a change to
    /// `cancelled` cancels its queued recipients in the same transaction.
    /// `false` when the job was not in `from`.
    async fn change_standing(&self, change: &StandingChange<'_>) -> anyhow::Result<bool>;

    /// Ends a job whose recipients all have their result: `state` from
    /// `from`, with its finish time.
    async fn finish_broadcast(
        &self,
        id: &str,
        from: BroadcastState,
        state: BroadcastState,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Leases the job's next recipients, as many as its pacing allows (the
    /// domain's `pace`, read and advanced in the same transaction).
    async fn lease_recipients(&self, lease: &RecipientLease<'_>) -> anyhow::Result<LeaseOutcome>;

    /// Records a batch's results (each only under the batch's token) and
    /// the job's rate and pause, in one transaction; returns how many
    /// recipients were still the batch's.
    async fn record_batch(&self, record: &BatchRecord<'_>) -> anyhow::Result<u64>;

    /// The job's recipients counted by state and error.
    async fn recipient_counts(&self, id: &str) -> anyhow::Result<Vec<RecipientCount>>;

    /// Up to `limit` recipients after `after_seq`, in order.
    async fn recipient_page(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<RecipientRow>>;
}

/// Implements [`BroadcastStore`] for `$storage`, a `Backend`.
macro_rules! impl_broadcast_store {
    ($storage:ty) => {
        const _: () = {
            use ::anyhow::Context as _;

            use $crate::ledger::broadcast::{pace, pace_after, Pace, PaceInput};
            use $crate::ledger::states::BroadcastState;
            use $crate::storage::broadcasts::*;
            use $crate::storage::shared::{Backend, INSERT_CHUNK};
            use $crate::storage::sql;

            #[async_trait::async_trait]
            impl BroadcastStore for $storage {
                async fn create_broadcast(
                    &self,
                    job: &NewBroadcast,
                    audience: Audience<'_>,
                ) -> anyhow::Result<i64> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::INSERT_BROADCAST)
                        .bind(&job.id)
                        .bind(&job.appid)
                        .bind(&job.template_id)
                        .bind(job.channel.as_str())
                        .bind(&job.spec)
                        .bind(job.state.as_str())
                        .bind(job.send_at)
                        .bind(job.rate)
                        .bind(job.now)
                        .execute(&mut *tx)
                        .await
                        .context("recording a broadcast")?;
                    let count = match audience {
                        Audience::Holders {
                            grant_of,
                            valid_after,
                        } => sqlx::query(sql::INSERT_HOLDERS)
                            .bind(&job.id)
                            .bind(job.now)
                            .bind(&job.appid)
                            .bind(valid_after)
                            .bind(grant_of)
                            .execute(&mut *tx)
                            .await
                            .context("recording a broadcast's holders")?
                            .rows_affected() as i64,
                        Audience::List(recipients) => {
                            let mut seq = 0i64;
                            for chunk in recipients.chunks(INSERT_CHUNK) {
                                let mut builder = sqlx::QueryBuilder::<<Self as Backend>::Db>::new(
                                    sql::INSERT_RECIPIENTS_HEAD,
                                );
                                builder.push_values(chunk, |mut row, recipient| {
                                    seq += 1;
                                    row.push_bind(job.id.clone())
                                        .push_bind(seq)
                                        .push_bind(recipient.openid.clone())
                                        .push_bind(recipient.data.clone())
                                        .push_bind("queued")
                                        .push_bind(0i64)
                                        .push_bind(job.now);
                                });
                                builder
                                    .build()
                                    .execute(&mut *tx)
                                    .await
                                    .context("recording a broadcast's recipients")?;
                            }
                            seq
                        }
                    };
                    sqlx::query(sql::SET_RECIPIENT_COUNT)
                        .bind(&job.id)
                        .bind(count)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await.context("committing a broadcast")?;
                    Ok(count)
                }

                async fn broadcast(
                    &self,
                    appid: &str,
                    id: &str,
                ) -> anyhow::Result<Option<Broadcast>> {
                    let row: Option<BroadcastRow> = sqlx::query_as(&sql::broadcast_by_id())
                        .bind(appid)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading a broadcast")?;
                    row.map(Broadcast::try_from).transpose()
                }

                async fn broadcasts(
                    &self,
                    appid: &str,
                    limit: i64,
                ) -> anyhow::Result<Vec<Broadcast>> {
                    let rows: Vec<BroadcastRow> = sqlx::query_as(&sql::broadcasts_of_app())
                        .bind(appid)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await
                        .context("listing broadcasts")?;
                    rows.into_iter().map(Broadcast::try_from).collect()
                }

                async fn open_broadcasts(&self, limit: i64) -> anyhow::Result<Vec<Broadcast>> {
                    let rows: Vec<BroadcastRow> = sqlx::query_as(&sql::open_broadcasts())
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the open broadcasts")?;
                    rows.into_iter().map(Broadcast::try_from).collect()
                }

                async fn change_standing(
                    &self,
                    change: &StandingChange<'_>,
                ) -> anyhow::Result<bool> {
                    let mut tx = self.begin_write().await?;
                    let changed = sqlx::query(sql::SET_BROADCAST_STANDING)
                        .bind(change.id)
                        .bind(change.from.state.as_str())
                        .bind(change.from.pause_reason.map(|reason| reason.as_str()))
                        .bind(change.to.state.as_str())
                        .bind(change.to.pause_reason.map(|reason| reason.as_str()))
                        .bind(change.paused_until)
                        .bind(change.now)
                        .execute(&mut *tx)
                        .await
                        .context("changing a broadcast's state")?
                        .rows_affected()
                        == 1;
                    if changed && change.to.state == BroadcastState::Cancelled {
                        sqlx::query(sql::CANCEL_QUEUED_RECIPIENTS)
                            .bind(change.id)
                            .bind(change.now)
                            .execute(&mut *tx)
                            .await
                            .context("cancelling a broadcast's recipients")?;
                    }
                    tx.commit().await?;
                    Ok(changed)
                }

                async fn finish_broadcast(
                    &self,
                    id: &str,
                    from: BroadcastState,
                    state: BroadcastState,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let mut tx = self.begin_write().await?;
                    let done = sqlx::query(sql::FINISH_BROADCAST)
                        .bind(id)
                        .bind(state.as_str())
                        .bind(now)
                        .bind(from.as_str())
                        .execute(&mut *tx)
                        .await
                        .context("finishing a broadcast")?
                        .rows_affected()
                        == 1;
                    if done {
                        let event_type = formid_core::webhooks::EventType::BroadcastFinished;
                        sqlx::query(sql::INSERT_BROADCAST_EVENT)
                            .bind(formid_core::webhooks::broadcast_event_id(id))
                            .bind(id)
                            .bind(event_type.as_str())
                            .bind(now)
                            .bind(event_type.bit())
                            .bind(state.as_str())
                            .execute(&mut *tx)
                            .await
                            .context("writing a broadcast's event to the outbox")?;
                    }
                    tx.commit().await?;
                    Ok(done)
                }

                async fn lease_recipients(
                    &self,
                    lease: &RecipientLease<'_>,
                ) -> anyhow::Result<LeaseOutcome> {
                    let mut tx = self.begin_write().await?;
                    let (input, count) = match Self::take_pace(&mut tx, lease).await? {
                        Ok(taken) => taken,
                        Err(outcome) => return Ok(outcome),
                    };
                    let free = Self::take_recipients(&mut tx, lease, count).await?;
                    if free.is_empty() {
                        let (open,): (i64,) = sqlx::query_as(sql::OPEN_RECIPIENTS)
                            .bind(lease.broadcast_id)
                            .fetch_one(&mut *tx)
                            .await?;
                        sqlx::query(sql::SET_BROADCAST_PACE)
                            .bind(lease.broadcast_id)
                            .bind(input.next_lease_at)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        return Ok(LeaseOutcome::NoneFree { open });
                    }
                    if (free.len() as i64) < count {
                        sqlx::query(sql::SET_BROADCAST_PACE)
                            .bind(lease.broadcast_id)
                            .bind(pace_after(input, free.len() as i64))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit()
                        .await
                        .context("committing a lease of recipients")?;
                    Ok(LeaseOutcome::Batch(free))
                }

                async fn record_batch(&self, record: &BatchRecord<'_>) -> anyhow::Result<u64> {
                    let mut tx = self.begin_write().await?;
                    let mut kept = 0;
                    for (seq, write) in record.writes {
                        let query = match write {
                            RecipientWrite::Final {
                                state,
                                message_id,
                                error_code,
                                wechat_errcode,
                            } => sqlx::query(sql::RECORD_RECIPIENT)
                                .bind(record.broadcast_id)
                                .bind(*seq)
                                .bind(state.as_str())
                                .bind(message_id)
                                .bind(error_code)
                                .bind(*wechat_errcode)
                                .bind(record.now)
                                .bind(record.token),
                            RecipientWrite::Requeue { counts, error_code } => {
                                sqlx::query(sql::REQUEUE_RECIPIENT)
                                    .bind(record.broadcast_id)
                                    .bind(*seq)
                                    .bind(i64::from(*counts))
                                    .bind(error_code)
                                    .bind(record.now)
                                    .bind(record.token)
                            }
                            RecipientWrite::Recheck { until, message_id } => {
                                sqlx::query(sql::RECHECK_RECIPIENT)
                                    .bind(record.broadcast_id)
                                    .bind(*seq)
                                    .bind(*until)
                                    .bind(message_id)
                                    .bind(record.now)
                                    .bind(record.token)
                            }
                        };
                        kept += query
                            .execute(&mut *tx)
                            .await
                            .context("recording a recipient")?
                            .rows_affected();
                    }
                    sqlx::query(sql::BROADCAST_AFTER_BATCH)
                        .bind(record.broadcast_id)
                        .bind(record.rate)
                        .bind(record.now)
                        .bind(record.sent_any)
                        .execute(&mut *tx)
                        .await?;
                    if let Some((reason, until)) = record.pause {
                        sqlx::query(sql::PAUSE_RUNNING_BROADCAST)
                            .bind(record.broadcast_id)
                            .bind(reason.as_str())
                            .bind(until)
                            .bind(record.now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await.context("committing a batch's results")?;
                    Ok(kept)
                }

                async fn recipient_counts(&self, id: &str) -> anyhow::Result<Vec<RecipientCount>> {
                    Ok(sqlx::query_as(sql::RECIPIENT_COUNTS)
                        .bind(id)
                        .fetch_all(self.reader())
                        .await
                        .context("counting a broadcast's recipients")?)
                }

                async fn recipient_page(
                    &self,
                    id: &str,
                    after_seq: i64,
                    limit: i64,
                ) -> anyhow::Result<Vec<RecipientRow>> {
                    Ok(sqlx::query_as(sql::RECIPIENT_PAGE)
                        .bind(id)
                        .bind(after_seq)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await
                        .context("reading a broadcast's results")?)
                }
            }

            impl $storage {
                /// The job's pacing, read and advanced (compare and set) in
                /// the lease's transaction: how many recipients it may take,
                /// or what the lease answers instead.
                async fn take_pace(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    lease: &RecipientLease<'_>,
                ) -> anyhow::Result<Result<(PaceInput, i64), LeaseOutcome>> {
                    let (state, rate, next_lease_at): (String, i64, i64) =
                        sqlx::query_as(sql::BROADCAST_PACE)
                            .bind(lease.broadcast_id)
                            .fetch_one(&mut **tx)
                            .await
                            .context("reading a broadcast's pace")?;
                    let state: BroadcastState = state.parse()?;
                    let input = PaceInput {
                        now: lease.now,
                        next_lease_at,
                        rate,
                        max_batch: lease.max_batch,
                    };
                    // A cancelled job's leased recipients are resolved without pacing:
                    // nothing new is sent for them.
                    let count = match (state, pace(input)) {
                        (BroadcastState::Running, Pace::Take { count }) => count,
                        (BroadcastState::Running, Pace::Wait { until }) => {
                            return Ok(Err(LeaseOutcome::Wait { until }))
                        }
                        (BroadcastState::Cancelled, _) => lease.max_batch,
                        _ => return Ok(Err(LeaseOutcome::NoneFree { open: 1 })),
                    };
                    // Why first: on PostgreSQL the update locks the job's row, so
                    // the instances leasing one job take turns; a lost race waits.
                    let took = sqlx::query(sql::TAKE_BROADCAST_PACE)
                        .bind(lease.broadcast_id)
                        .bind(next_lease_at)
                        .bind(pace_after(input, count))
                        .execute(&mut **tx)
                        .await?
                        .rows_affected()
                        == 1;
                    if !took {
                        return Ok(Err(LeaseOutcome::Wait {
                            until: lease.now + 10,
                        }));
                    }
                    Ok(Ok((input, count)))
                }
            }
        };
    };
}

pub(crate) use impl_broadcast_store;
