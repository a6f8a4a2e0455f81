//! The embedded ledger: one SQLite file in WAL mode.
//!
//! Why two pools: SQLite allows one writer at a time, so every write goes
//! through a pool of exactly one connection (writes queue in our process
//! instead of spinning on `SQLITE_BUSY`), while reads use their own pool and
//! proceed beside it under WAL. Multi-statement writes open with
//! `BEGIN IMMEDIATE` so that the write lock is taken up front, never upgraded
//! half-way (which is where SQLite deadlocks another process's writer).

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::group_commit::{
    power_of_two_runs, BatchWriter, EndWrite, GroupCommit, StartWrite, MAX_RUN,
};
use super::shared::{bind_message, impl_storage, INSERT_CHUNK};
use super::sql;
use super::*;

/// The SQLite implementation of [`Storage`].
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .context("opening the SQLite writer connection")?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .context("applying the SQLite migrations")?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
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

    async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Sqlite>> {
        begin_immediate(&self.writer).await
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

// A claim needs no row lock on SQLite: the single writer connection
// already makes it atomic.
impl_storage!(SqliteStorage, sqlx::Sqlite, "");

/// The start of a send: the message, then the claim of its first credential,
/// leased until the message's own lease (`$9`). Numbered to share one
/// argument list (sqlx binds `$N` by number in every statement of a script).
pub const START: [&str; 2] = [
    "INSERT INTO messages \
        (id, appid, touser, template_id, payload, status, delivery, wait_until, lease_until, \
         created_at, updated_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    "UPDATE credentials \
        SET state = 'leased', lease_expires_at = $9, updated_at = $10, lease_message_id = $1 \
        WHERE id = (SELECT id FROM credentials \
            WHERE appid = $2 AND openid = $3 AND state = 'available' AND expires_at > $11 \
            ORDER BY expires_at, id LIMIT 1) \
        RETURNING id, kind, value, uses_left, collected_at, expires_at, lease_message_id",
];
const START_PARAMS: usize = 11;

/// The end of a send: the credential spent, the attempt recorded, the
/// message finished.
pub const END: [&str; 3] = [
    "UPDATE credentials \
        SET uses_left = uses_left - 1, lease_message_id = NULL, \
            state = CASE WHEN uses_left <= 1 THEN 'exhausted' ELSE 'available' END, \
            lease_expires_at = NULL, updated_at = $2 \
        WHERE id = $1 AND state = 'leased'",
    "INSERT INTO attempts (message_id, credential_id, credential_kind, errcode, outcome, detail, at) \
        VALUES ($3, $1, $4, $5, $6, $7, $2)",
    "UPDATE messages \
        SET status = $8, error_code = $9, wechat_errcode = $10, updated_at = $2, \
            lease_until = NULL, next_attempt_at = NULL WHERE id = $3",
];
const END_PARAMS: usize = 10;

/// `copies` copies of a write's statements as one `;`-separated script, the
/// placeholders of copy `k` moved up by `k * params` so that each copy binds
/// its own arguments.
pub fn numbered_script(statements: &[&str], params: usize, copies: usize) -> String {
    let mut script = String::new();
    for copy in 0..copies {
        for statement in statements {
            if !script.is_empty() {
                script.push_str("; ");
            }
            let mut rest = *statement;
            while let Some(at) = rest.find('$') {
                script.push_str(&rest[..=at]);
                rest = &rest[at + 1..];
                let digits = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                let number: usize = rest[..digits].parse().expect("a numbered placeholder");
                script.push_str(&(number + copy * params).to_string());
                rest = &rest[digits..];
            }
            script.push_str(rest);
        }
    }
    script
}

/// The script for a run of `copies` writes (a power of two up to
/// [`MAX_RUN`]), built the first time it is needed: every batch reuses the
/// same few texts, which are also the writer's statement-cache keys.
fn run_script(
    cache: &'static OnceLock<Vec<String>>,
    statements: &[&str],
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
        ends: &[EndWrite],
        starts: &[StartWrite],
    ) -> anyhow::Result<Vec<ClaimedCredential>> {
        let mut tx = begin_immediate(&self.0).await?;
        for run in power_of_two_runs(ends) {
            let script = run_script(&END_SCRIPTS, &END, END_PARAMS, run.len());
            let mut query = sqlx::query(script);
            for end in run {
                query = query
                    .bind(end.credential_id)
                    .bind(end.now)
                    .bind(&end.message_id)
                    .bind(end.attempt.credential_kind.map(CredentialKind::as_str))
                    .bind(end.attempt.errcode)
                    .bind(end.attempt.outcome)
                    .bind(end.attempt.detail.as_deref())
                    .bind(end.outcome.status)
                    .bind(end.outcome.error_code)
                    .bind(end.outcome.wechat_errcode);
            }
            query
                .execute(&mut *tx)
                .await
                .context("settling the attempts that end messages")?;
        }
        let mut claimed = Vec::new();
        for run in power_of_two_runs(starts) {
            let script = run_script(&START_SCRIPTS, &START, START_PARAMS, run.len());
            let mut query = sqlx::query_as::<_, ClaimedCredential>(script);
            for start in run {
                query = bind_message!(query, &start.message)
                    .bind(start.now)
                    .bind(start.valid_after);
            }
            claimed.extend(
                query
                    .fetch_all(&mut *tx)
                    .await
                    .context("recording messages and claiming their first credentials")?,
            );
        }
        tx.commit().await.context("committing a batch of writes")?;
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_copy_of_a_script_binds_its_own_arguments() {
        assert_eq!(
            numbered_script(&["INSERT $1, $2", "UPDATE $2 WHERE $10"], 10, 2),
            "INSERT $1, $2; UPDATE $2 WHERE $10; INSERT $11, $12; UPDATE $12 WHERE $20"
        );
        assert_eq!(numbered_script(&START, START_PARAMS, 1), START.join("; "));
        let script = numbered_script(&END, END_PARAMS, 32);
        assert!(script.contains("$320") && !script.contains("$321"));
        assert_eq!(run_script(&END_SCRIPTS, &END, END_PARAMS, 32), script);
        assert_eq!(
            run_script(&START_SCRIPTS, &START, START_PARAMS, 4),
            numbered_script(&START, START_PARAMS, 4)
        );
    }
}
