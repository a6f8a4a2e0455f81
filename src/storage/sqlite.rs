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
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::shared::{impl_storage, INSERT_CHUNK};
use super::sql;
use super::*;

/// The SQLite implementation of [`Storage`].
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    writer: SqlitePool,
    reader: SqlitePool,
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
        Ok(Self { writer, reader })
    }

    async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .context("beginning a SQLite write transaction")
    }
}

// A claim needs no row lock on SQLite: the single writer connection
// already makes it atomic.
impl_storage!(SqliteStorage, sqlx::Sqlite, "", sql::chain_as_script, true);
