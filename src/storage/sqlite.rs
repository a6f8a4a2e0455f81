//! The embedded ledger: one SQLite file in WAL mode.
//!
//! Why two pools: SQLite allows one writer at a time, so every write goes
//! through a pool of exactly one connection (writes queue in our process
//! instead of spinning on `SQLITE_BUSY`), while reads use their own pool and
//! proceed beside it under WAL. Multi-statement writes open with
//! `BEGIN IMMEDIATE` so that the write lock is taken up front, never upgraded
//! half-way (which is where SQLite deadlocks another process's writer).

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::group_commit::{BatchDone, BatchWriter, EndSend, GroupCommit, StartSend};
use super::shared::{bind_message, impl_storage, Backend};
use super::sql;
use super::webhook_store::impl_webhook_store;
use super::ClaimedRow;
use crate::ledger::kinds::CredentialKind;
use formid_core::webhooks::{finish_event_id, EventType};

/// The SQLite implementation of [`Storage`](super::Storage).
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Starts and ends of sends, batched onto the writer.
    group: GroupCommit,
}

impl SqliteStorage {
    /// Opens (creating if needed) the file the URL names and migrates it.
    pub async fn connect(database_url: &str, max_readers: u32) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(database_url)
            .with_context(|| "parsing the SQLite database URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only a power
            // loss can drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the directory {}", dir.display()))?;
            }
        }
        // Why no test before acquire: a connection to a local file does not
        // go stale, and sqlx's test is one more round trip to the
        // connection's thread before every read and every batch.
        // Why the migrations get a connection of their own, closed after:
        // sqlx keeps every statement a connection ran prepared, and SQLite
        // allocates a prepared statement's small parts from the connection's
        // fixed arena of small blocks (lookaside). On the writer, the
        // migrations' statements filled it for the connection's lifetime, so
        // every statement of every send fell back to malloc: a fifth more
        // instructions per send.
        // (A pool of one rather than a bare connection: sqlx's migrator on a
        // `&mut SqliteConnection` makes the caller's future not `Send`.)
        let migrating = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .context("opening the SQLite connection that migrates")?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&migrating)
            .await
            .context("applying the SQLite migrations")?;
        migrating.close().await;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .context("opening the SQLite writer connection")?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .context("opening the SQLite reader connections")?;
        // One batch runner: there is one writer connection to run it on.
        let group = GroupCommit::spawn(SqliteBatches(writer.clone()), 1);
        Ok(Self {
            writer,
            reader,
            group,
        })
    }
}

async fn begin_immediate(
    writer: &SqlitePool,
) -> anyhow::Result<sqlx::Transaction<'static, Sqlite>> {
    writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .context("beginning a SQLite write transaction")
}

impl Backend for SqliteStorage {
    type Db = Sqlite;

    // A claim needs no row lock on SQLite: the single writer connection
    // already makes it atomic.
    const CLAIM_LOCK: &'static str = "";

    /// SQLite's single writer (`BEGIN IMMEDIATE`) already serialises them.
    const USER_LOCK: Option<&'static str> = None;

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn group(&self) -> &GroupCommit {
        &self.group
    }

    async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Sqlite>> {
        begin_immediate(&self.writer).await
    }
}

impl SqliteStorage {
    /// Leases the next `count` free recipients of the lease's job: found in
    /// order, then marked by key (the write lock keeps them free between).
    async fn take_recipients(
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        lease: &super::broadcasts::RecipientLease<'_>,
        count: i64,
    ) -> anyhow::Result<Vec<super::broadcasts::LeasedRecipient>> {
        let free: Vec<super::broadcasts::LeasedRecipient> = sqlx::query_as(sql::FREE_RECIPIENTS)
            .bind(lease.broadcast_id)
            .bind(lease.now)
            .bind(count)
            .fetch_all(&mut **tx)
            .await
            .context("reading a broadcast's free recipients")?;
        if free.is_empty() {
            return Ok(free);
        }
        let mut builder = sqlx::QueryBuilder::<Sqlite>::new(sql::LEASE_RECIPIENTS_HEAD);
        builder.push_bind(lease.token);
        builder.push(", lease_until = ");
        builder.push_bind(lease.lease_until);
        builder.push(", updated_at = ");
        builder.push_bind(lease.now);
        builder.push(" WHERE broadcast_id = ");
        builder.push_bind(lease.broadcast_id.to_owned());
        builder.push(" AND seq IN (");
        let mut list = builder.separated(", ");
        for recipient in &free {
            list.push_bind(recipient.seq);
        }
        builder.push(")");
        builder
            .build()
            .execute(&mut **tx)
            .await
            .context("leasing recipients")?;
        Ok(free)
    }
}

impl_storage!(SqliteStorage);
super::sessions::impl_session_storage!(SqliteStorage);
super::broadcasts::impl_broadcast_store!(SqliteStorage);
super::stats::impl_stats_store!(SqliteStorage);
impl_webhook_store!(SqliteStorage);

/// One statement of a batch script: shared SQL from `sql.rs`, and for each
/// of its placeholders `$k` the script argument it binds (`map[k - 1]`).
struct Renumbered {
    statement: &'static str,
    map: &'static [usize],
}

/// The start of a send: the message (`sql::CREATE_MESSAGE`), then the claim
/// of its first credential (`sql::CLAIM`), leased until the message's own
/// lease under its token. Script arguments: 1–13 the message's columns as
/// [`bind_message!`] binds them, 14 now, 15 `valid_after`, 16 the template
/// whose grants pay for it (NULL on the template channel).
const START: [Renumbered; 2] = [
    Renumbered {
        statement: sql::CREATE_MESSAGE,
        map: &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    },
    Renumbered {
        // lease_until, now, appid, openid, valid_after, message id, token, grant_of.
        statement: sql::CLAIM,
        map: &[9, 14, 2, 3, 15, 1, 10, 16],
    },
];
const START_PARAMS: usize = 16;

/// The message's id when the statement before it changed a row: after
/// `sql::FINISH_MESSAGE`, when the message's lease held. Why not
/// `RETURNING`: SQLite gathers a `RETURNING` statement's rows in a temporary
/// table, opened and closed each time it runs (about 12,000 instructions,
/// a twentieth of a send); `changes()` reads a counter.
const FINISHED_IF_CHANGED: &str = "SELECT $1 WHERE changes() = 1";

/// The end of a send: the credential spent (`sql::SETTLE_SPENT`), the
/// attempt recorded (`sql::INSERT_ATTEMPT`), the message's event written to
/// the outbox under the same fence as the finish, before it clears the token
/// (`sql::INSERT_MESSAGE_EVENT`), the message finished
/// (`sql::FINISH_MESSAGE`), and its id when its lease held
/// ([`FINISHED_IF_CHANGED`]). Script arguments: 1 credential id, 2 now,
/// 3 token, 4 unproven (0), 5 message id, 6 kind, 7 errcode, 8 outcome,
/// 9 detail, 10 status, 11 error code, 12 WeChat errcode, 13 msgid,
/// 14 event id, 15 event type, 16 the type's bit.
const END: [Renumbered; 5] = [
    Renumbered {
        statement: sql::SETTLE_SPENT,
        map: &[1, 2, 3, 4],
    },
    Renumbered {
        statement: sql::INSERT_ATTEMPT,
        map: &[5, 1, 6, 7, 8, 9, 2, 13],
    },
    Renumbered {
        // event id, message id, type, status, errcode, error code, now, token, bit.
        statement: sql::INSERT_MESSAGE_EVENT,
        map: &[14, 5, 15, 10, 12, 11, 2, 3, 16],
    },
    Renumbered {
        statement: sql::FINISH_MESSAGE,
        map: &[5, 10, 11, 12, 2, 3],
    },
    Renumbered {
        statement: FINISHED_IF_CHANGED,
        map: &[5],
    },
];
const END_PARAMS: usize = 16;

/// `copies` copies of a write's statements as one `;`-separated script: each
/// placeholder `$k` of a statement becomes its script argument `map[k - 1]`,
/// moved up by `copy * params` so that each copy binds its own arguments.
fn numbered_script(statements: &[Renumbered], params: usize, copies: usize) -> String {
    let mut script = String::new();
    for copy in 0..copies {
        for Renumbered { statement, map } in statements {
            if !script.is_empty() {
                script.push_str("; ");
            }
            // SQLite's claim needs no row lock: the single writer makes it atomic.
            let statement = sql::with_lock(statement, "");
            let mut text = statement.as_str();
            while let Some(at) = text.find('$') {
                script.push_str(&text[..=at]);
                text = &text[at + 1..];
                let digits = text
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(text.len());
                let number: usize = text[..digits].parse().expect("a numbered placeholder");
                script.push_str(&(map[number - 1] + copy * params).to_string());
                text = &text[digits..];
            }
            script.push_str(text);
        }
    }
    script
}

/// The longest run [`power_of_two_runs`] makes.
const MAX_RUN: usize = 32;

/// Splits `items` into runs whose lengths are powers of two up to
/// [`MAX_RUN`], longest first: SQLite prepares one script per length, so the
/// writer's statement cache holds six scripts per write instead of one per
/// batch size.
fn power_of_two_runs<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let length = 1usize << items.len().min(MAX_RUN).ilog2();
        let (run, rest) = items.split_at(length);
        items = rest;
        Some(run)
    })
}

/// The script for a run of `copies` writes (a power of two up to
/// [`MAX_RUN`]), built the first time it is needed: every batch reuses the
/// same few texts, which are also the writer's statement-cache keys.
fn run_script(
    cache: &'static OnceLock<Vec<String>>,
    statements: &[Renumbered],
    params: usize,
    copies: usize,
) -> &'static str {
    let scripts = cache.get_or_init(|| {
        (0..=MAX_RUN.ilog2())
            .map(|log| numbered_script(statements, params, 1 << log))
            .collect()
    });
    &scripts[copies.ilog2() as usize]
}

static END_SCRIPTS: OnceLock<Vec<String>> = OnceLock::new();
static START_SCRIPTS: OnceLock<Vec<String>> = OnceLock::new();

/// Runs a batch on the single writer: one `BEGIN IMMEDIATE … COMMIT` and one
/// script per run of writes (see `power_of_two_runs`), where each write on
/// its own took three handoffs to the writer's thread. The statements run in
/// order, so two starts for one user would each see the other's claim.
#[derive(Debug)]
struct SqliteBatches(SqlitePool);

#[async_trait::async_trait]
impl BatchWriter for SqliteBatches {
    async fn write_batch(
        &self,
        ends: &[EndSend],
        starts: &[StartSend],
    ) -> anyhow::Result<BatchDone> {
        let mut tx = begin_immediate(&self.0).await?;
        let mut done = BatchDone::default();
        for run in power_of_two_runs(ends) {
            let script = run_script(&END_SCRIPTS, &END, END_PARAMS, run.len());
            let mut query = sqlx::query_scalar::<_, String>(script);
            for end in run {
                let event_type = EventType::for_finish(end.outcome.status, end.outcome.recovered);
                query = query
                    .bind(end.credential_id)
                    .bind(end.now)
                    .bind(end.lease_token)
                    .bind(0_i64)
                    .bind(&end.message_id)
                    .bind(end.attempt.credential_kind.map(CredentialKind::as_str))
                    .bind(end.attempt.errcode)
                    .bind(end.attempt.outcome.as_str())
                    .bind(end.attempt.detail.as_deref())
                    .bind(end.outcome.status.as_str())
                    .bind(end.outcome.error_code)
                    .bind(end.outcome.wechat_errcode)
                    .bind(end.attempt.msgid.as_deref())
                    .bind(finish_event_id(&end.message_id))
                    .bind(event_type.map(EventType::as_str))
                    .bind(event_type.map_or(0, EventType::bit));
            }
            done.ended.extend(
                query
                    .fetch_all(&mut *tx)
                    .await
                    .context("settling the attempts that end messages")?,
            );
        }
        for run in power_of_two_runs(starts) {
            let script = run_script(&START_SCRIPTS, &START, START_PARAMS, run.len());
            let mut query = sqlx::query_as::<_, ClaimedRow>(script);
            for start in run {
                query = bind_message!(query, &start.message)
                    .bind(start.now)
                    .bind(start.valid_after)
                    .bind(start.message.grant_of());
            }
            done.claimed.extend(
                query
                    .fetch_all(&mut *tx)
                    .await
                    .context("recording messages and claiming their first credentials")?,
            );
        }
        tx.commit().await.context("committing a batch of writes")?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_copy_of_a_script_binds_its_own_arguments() {
        const TWO: [Renumbered; 2] = [
            Renumbered {
                statement: "INSERT $1, $2",
                map: &[1, 2],
            },
            Renumbered {
                statement: "UPDATE $2 WHERE $1",
                map: &[2, 10],
            },
        ];
        assert_eq!(
            numbered_script(&TWO, 10, 2),
            "INSERT $1, $2; UPDATE $10 WHERE $2; INSERT $11, $12; UPDATE $20 WHERE $12"
        );
        let script = numbered_script(&END, END_PARAMS, 32);
        assert!(script.contains("$512") && !script.contains("$513"));
        assert_eq!(run_script(&END_SCRIPTS, &END, END_PARAMS, 32), script);
        assert_eq!(
            run_script(&START_SCRIPTS, &START, START_PARAMS, 4),
            numbered_script(&START, START_PARAMS, 4)
        );
    }

    /// Every placeholder of a shared statement has a script argument, and
    /// every script argument is used.
    #[test]
    fn the_batch_scripts_bind_every_argument_of_the_shared_statements() {
        for (statements, params) in [(&START[..], START_PARAMS), (&END[..], END_PARAMS)] {
            let mut used = vec![false; params];
            for Renumbered { statement, map } in statements {
                let highest = (1..=20)
                    .filter(|k| statement.contains(&format!("${k}")))
                    .max()
                    .unwrap();
                assert_eq!(map.len(), highest, "{statement}");
                for argument in *map {
                    used[argument - 1] = true;
                }
            }
            assert!(used.iter().all(|used| *used));
        }
    }

    /// The statements one-off work prepared (the migrations) must not stay
    /// on the writer: they would hold its small-block arena for the
    /// connection's lifetime, and every send's statements would then
    /// allocate with malloc. `formid-bench instructions` measures what that
    /// costs; this holds the mechanism.
    #[tokio::test]
    async fn the_writer_starts_with_no_statement_of_the_migrations() {
        use sqlx::Connection;
        let dir = std::env::temp_dir().join(format!("formid-writer-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/ledger.db", dir.display());
        let storage = SqliteStorage::connect(&url, 1).await.unwrap();
        let writer = storage.writer.acquire().await.unwrap();
        assert_eq!(writer.cached_statements_size(), 0);
        drop(writer);
        storage.writer.close().await;
        storage.reader.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn runs_are_powers_of_two_longest_first() {
        let items: Vec<u32> = (0..77).collect();
        let lengths: Vec<usize> = power_of_two_runs(&items).map(<[u32]>::len).collect();
        assert_eq!(lengths, [32, 32, 8, 4, 1]);
        let joined: Vec<u32> = power_of_two_runs(&items).flatten().copied().collect();
        assert_eq!(joined, items);
        assert_eq!(power_of_two_runs::<u32>(&[]).count(), 0);
    }
}
