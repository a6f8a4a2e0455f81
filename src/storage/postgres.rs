//! The shared ledger: PostgreSQL, for several gateway instances on one database.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent sends for one user each
//! lock a different credential instead of queueing on the same row, and a
//! transaction never stays open across the call to WeChat: the lease column,
//! not a row lock, is what marks a credential in flight.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool, Postgres};

use super::group_commit::{BatchDone, BatchWriter, EndSend, GroupCommit, StartSend};
use super::shared::{impl_storage, Backend};
use super::sql;
use super::webhook_store::impl_webhook_store;
use super::ClaimedRow;
use crate::ledger::kinds::CredentialKind;
use formid_core::webhooks::{finish_event_id, EventType};

/// The PostgreSQL implementation of [`Storage`](super::Storage).
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    /// Both names for one pool: the shared body reads and writes through
    /// `reader` and `writer`; PostgreSQL needs no split.
    writer: PgPool,
    reader: PgPool,
    /// Starts and ends of sends, batched.
    group: GroupCommit,
}

impl PostgresStorage {
    /// Connects and migrates. Several instances may start at once: sqlx takes
    /// an advisory lock around the migrations.
    pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options =
            PgConnectOptions::from_str(database_url).context("reading the PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("applying the PostgreSQL migrations")?;
        let batches = group_commit_pool(options)
            .await
            .context("connecting group commit to PostgreSQL")?;
        let group = GroupCommit::spawn(PostgresBatches(batches), BATCH_RUNNERS);
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
            group,
        })
    }
}

impl Backend for PostgresStorage {
    type Db = Postgres;

    // SKIP LOCKED: a concurrent claim passes over the row another claim is
    // leasing and takes the next one, instead of waiting and then finding it
    // gone.
    const CLAIM_LOCK: &'static str = "FOR UPDATE SKIP LOCKED";

    /// Why an advisory lock: the cap's count reads rows that a concurrent
    /// send is about to insert, which no row lock can cover. Held until
    /// the transaction ends, so the next count sees this one's message.
    /// Keys that collide only serialise two users' capped sends.
    const USER_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))");

    fn writer(&self) -> &PgPool {
        &self.writer
    }

    fn reader(&self) -> &PgPool {
        &self.reader
    }

    fn group(&self) -> &GroupCommit {
        &self.group
    }

    async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Postgres>> {
        self.writer
            .begin()
            .await
            .context("beginning a PostgreSQL transaction")
    }
}

/// Set in the lease's transaction before [`sql::TAKE_RECIPIENTS`]: its
/// mark is planned as a probe per row taken. Only nested loops over index
/// and row lookups are left, whatever the statistics say.
pub const KEYED_PLANNING: &str = "SET LOCAL enable_seqscan = off; \
    SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

impl PostgresStorage {
    /// Locks and leases the next `count` free recipients of the lease's job,
    /// in one statement ([`sql::TAKE_RECIPIENTS`]).
    async fn take_recipients(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        lease: &super::broadcasts::RecipientLease<'_>,
        count: i64,
    ) -> anyhow::Result<Vec<super::broadcasts::LeasedRecipient>> {
        (&mut **tx).execute(KEYED_PLANNING).await?;
        sqlx::query_as(sql::TAKE_RECIPIENTS)
            .bind(lease.broadcast_id)
            .bind(lease.now)
            .bind(count)
            .bind(lease.token)
            .bind(lease.lease_until)
            .fetch_all(&mut **tx)
            .await
            .context("leasing a broadcast's free recipients")
    }
}

impl_storage!(PostgresStorage);
super::sessions::impl_session_storage!(PostgresStorage);
super::broadcasts::impl_broadcast_store!(PostgresStorage);
super::stats::impl_stats_store!(PostgresStorage);
impl_webhook_store!(PostgresStorage);

/// Batches run at once: while one commits, the next collects the writes
/// that arrive meanwhile. Each holds one connection while it runs.
const BATCH_RUNNERS: usize = 2;

/// How group commit's own connections plan the batch statements: once per
/// connection, with the plan every lookup by key wants, whatever the
/// statistics say when it is made.
///
/// By default PostgreSQL plans both statements again at every execution
/// (`unnest` of a bound array is estimated at 10 rows, so the generic plan
/// never looks cheaper than a custom one), and planning took as long as
/// running them: 0.3 ms of each statement's 0.6–0.8 ms. A generic plan made
/// on a fresh database's empty tables, though, joins by hashing a
/// sequential scan of `messages` (2.3 ms per end batch once the table has
/// grown, until autovacuum's next ANALYZE). Every row these statements touch
/// is found by key or by the claim's index, so sequential scans, hash joins
/// and merge joins are turned off on these connections only: the plan is
/// index lookups in nested loops on any statistics.
///
/// Set with `SET` once a connection is made, not as startup options, which
/// connection poolers such as PgBouncer refuse by default.
const BATCH_PLANNING: &str = "SET plan_cache_mode = force_generic_plan; \
    SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// Group commit's own connections to the ledger, planning as
/// [`BATCH_PLANNING`] says.
pub async fn group_commit_pool(ledger: PgConnectOptions) -> sqlx::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(BATCH_RUNNERS as u32)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|connection, _| {
            Box::pin(async move { connection.execute(BATCH_PLANNING).await.map(drop) })
        })
        .connect_with(ledger)
        .await
}

/// The starts of a batch as one statement: the messages inserted, then for
/// each the soonest-expiring available credential of its user leased to it.
/// The batch arrives as parallel arrays (`unnest` turns them into rows), so
/// the statement is the same whatever the batch size and is prepared once.
/// Its claims see one snapshot, which is why a batch never holds two starts
/// for one user; `SKIP LOCKED` keeps concurrent batches off each other's rows.
pub const START_BATCH: &str = "WITH batch AS ( \
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
            $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], \
            $12::int8[], $13::text[], $14::text[], $15::text[], $16::text[]) \
        AS b(id, appid, touser, template_id, payload, status, delivery, wait_until, lease_until, \
             lease_token, at, valid_after, channel, grant_of, reference, idempotency_key)), \
    message AS ( \
        INSERT INTO messages (id, appid, touser, template_id, payload, status, delivery, \
            wait_until, lease_until, lease_token, channel, reference, idempotency_key, \
            created_at, updated_at) \
        SELECT id, appid, touser, template_id, payload, status, delivery, wait_until, \
            lease_until, lease_token, channel, reference, idempotency_key, at, at FROM batch), \
    pick AS ( \
        SELECT b.id AS message_id, b.lease_until, b.lease_token, b.at, c.id FROM batch b \
        CROSS JOIN LATERAL (SELECT id FROM credentials \
            WHERE appid = b.appid AND openid = b.touser AND state = 'available' \
              AND expires_at > b.valid_after \
              AND template_id IS NOT DISTINCT FROM b.grant_of \
            ORDER BY expires_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) c) \
    UPDATE credentials \
    SET state = 'leased', lease_expires_at = pick.lease_until, updated_at = pick.at, \
        lease_message_id = pick.message_id, lease_token = pick.lease_token \
    FROM pick WHERE credentials.id = pick.id \
    RETURNING credentials.id, kind, value, uses_left, unproven_uses, collected_at, expires_at, \
        lease_message_id";

/// The ends of a batch as one statement: the credentials spent (only rows
/// still leased under the run's token, as for every settlement, and found by
/// key as [`sql::FENCE_MESSAGE`](super::sql::FENCE_MESSAGE) says), the
/// attempts recorded, the messages finished (likewise fenced), and each
/// finished message's event written to the outbox for the app's endpoints
/// that want it (`sql::INSERT_MESSAGE_EVENT`'s batch form). Why the event
/// reads `finished`, the finish's `RETURNING`, rather than `messages`: a
/// read of `messages` sees the statement's snapshot, where a recovery that
/// committed a new token meanwhile is not yet visible, while the `UPDATE`
/// checks the row as it is; an event must commit exactly with its finish.
/// The result names the messages whose lease held.
pub const END_BATCH: &str = "WITH batch AS ( \
        SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[], \
            $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], \
            $12::text[], $13::text[], $14::text[], $15::int8[]) \
        AS b(credential_id, message_id, credential_kind, errcode, outcome, detail, status, \
             error_code, wechat_errcode, at, lease_token, msgid, event_id, event_type, \
             event_bit)), \
    spent AS ( \
        UPDATE credentials \
        SET uses_left = uses_left - 1, lease_message_id = NULL, lease_token = NULL, \
            state = CASE WHEN uses_left <= 1 THEN 'exhausted' ELSE 'available' END, \
            lease_expires_at = NULL, updated_at = batch.at \
        FROM batch WHERE credentials.id = batch.credential_id \
          AND credentials.state IS NOT DISTINCT FROM 'leased' \
          AND credentials.lease_token = batch.lease_token), \
    attempt AS ( \
        INSERT INTO attempts (message_id, credential_id, credential_kind, errcode, outcome, \
            detail, at, msgid) \
        SELECT message_id, credential_id, credential_kind, errcode, outcome, detail, at, msgid \
        FROM batch), \
    finished AS ( \
        UPDATE messages \
        SET status = batch.status, error_code = batch.error_code, \
            wechat_errcode = batch.wechat_errcode, updated_at = batch.at, lease_until = NULL, \
            lease_token = NULL, next_attempt_at = NULL \
        FROM batch \
        WHERE messages.id = batch.message_id AND messages.lease_token = batch.lease_token \
        RETURNING messages.id, messages.appid, messages.touser, messages.template_id, \
            messages.idempotency_key, messages.reference), \
    event AS ( \
        INSERT INTO webhook_outbox (event_id, endpoint_id, appid, event_type, openid, \
            message_id, template_id, status, wechat_errcode, error_code, detail, occurred_at, \
            state, attempts, next_attempt_at, updated_at, idempotency_key, reference) \
        SELECT batch.event_id, e.id, f.appid, batch.event_type, f.touser, f.id, \
            f.template_id, batch.status, batch.wechat_errcode, batch.error_code, NULL, \
            batch.at, 'pending', 0, batch.at, batch.at, f.idempotency_key, f.reference \
        FROM finished f JOIN batch ON batch.message_id = f.id \
        JOIN webhook_endpoints e ON e.appid = f.appid AND e.state = 'enabled' \
            AND (e.event_mask & batch.event_bit) <> 0) \
    SELECT id FROM finished";

/// Runs a batch as at most two statements: each is atomic on its own, and
/// when both are needed they share a transaction.
#[derive(Debug)]
struct PostgresBatches(PgPool);

/// One field of every row of a batch, as the array bound for its column.
fn column<'a, T, U>(rows: &'a [T], field: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(field).collect()
}

impl PostgresBatches {
    fn ends(
        ends: &[EndSend],
    ) -> sqlx::query::QueryScalar<'_, Postgres, String, sqlx::postgres::PgArguments> {
        sqlx::query_scalar(END_BATCH)
            .bind(column(ends, |end| end.credential_id))
            .bind(column(ends, |end| end.message_id.as_str()))
            .bind(column(ends, |end| {
                end.attempt.credential_kind.map(CredentialKind::as_str)
            }))
            .bind(column(ends, |end| end.attempt.errcode))
            .bind(column(ends, |end| end.attempt.outcome.as_str()))
            .bind(column(ends, |end| end.attempt.detail.as_deref()))
            .bind(column(ends, |end| end.outcome.status.as_str()))
            .bind(column(ends, |end| end.outcome.error_code))
            .bind(column(ends, |end| end.outcome.wechat_errcode))
            .bind(column(ends, |end| end.now))
            .bind(column(ends, |end| end.lease_token))
            .bind(column(ends, |end| end.attempt.msgid.as_deref()))
            .bind(column(ends, |end| finish_event_id(&end.message_id)))
            .bind(column(ends, |end| {
                end.outcome
                    .event(&end.message_id, end.now)
                    .event_type
                    .map(EventType::as_str)
            }))
            .bind(column(ends, |end| {
                end.outcome.event(&end.message_id, end.now).bit()
            }))
    }

    fn starts(
        starts: &[StartSend],
    ) -> sqlx::query::QueryAs<'_, Postgres, ClaimedRow, sqlx::postgres::PgArguments> {
        sqlx::query_as(START_BATCH)
            .bind(column(starts, |start| start.message.id.as_str()))
            .bind(column(starts, |start| start.message.appid.as_str()))
            .bind(column(starts, |start| start.message.touser.as_str()))
            .bind(column(starts, |start| start.message.template_id.as_str()))
            .bind(column(starts, |start| start.message.payload.as_str()))
            .bind(column(starts, |start| start.message.status.as_str()))
            .bind(column(starts, |start| start.message.delivery.as_str()))
            .bind(column(starts, |start| start.message.wait_until))
            .bind(column(starts, |start| start.message.lease_until))
            .bind(column(starts, |start| start.message.lease_token))
            .bind(column(starts, |start| start.now))
            .bind(column(starts, |start| start.valid_after))
            .bind(column(starts, |start| start.message.channel.as_str()))
            .bind(column(starts, |start| start.message.grant_of()))
            .bind(column(starts, |start| start.message.reference.as_deref()))
            .bind(column(starts, |start| {
                start.message.idempotency_key.as_deref()
            }))
    }
}

#[async_trait::async_trait]
impl BatchWriter for PostgresBatches {
    async fn write_batch(
        &self,
        ends: &[EndSend],
        starts: &[StartSend],
    ) -> anyhow::Result<BatchDone> {
        const ENDS: &str = "settling the attempts that end messages";
        const STARTS: &str = "recording messages and claiming their first credentials";
        if starts.is_empty() {
            let ended = Self::ends(ends).fetch_all(&self.0).await.context(ENDS)?;
            return Ok(BatchDone {
                ended,
                ..BatchDone::default()
            });
        }
        if ends.is_empty() {
            let claimed = Self::starts(starts)
                .fetch_all(&self.0)
                .await
                .context(STARTS)?;
            return Ok(BatchDone {
                claimed,
                ..BatchDone::default()
            });
        }
        let mut tx = self
            .0
            .begin()
            .await
            .context("beginning a PostgreSQL transaction")?;
        let ended = Self::ends(ends).fetch_all(&mut *tx).await.context(ENDS)?;
        let claimed = Self::starts(starts)
            .fetch_all(&mut *tx)
            .await
            .context(STARTS)?;
        tx.commit().await.context("committing a batch of writes")?;
        Ok(BatchDone { claimed, ended })
    }
}
