//! The shared ledger: PostgreSQL, for several gateway instances on one database.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent sends for one user each
//! lock a different credential instead of queueing on the same row, and a
//! transaction never stays open across the call to WeChat: the lease column,
//! not a row lock, is what marks a credential in flight.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use super::shared::{impl_storage, INSERT_CHUNK};
use super::sql;
use super::*;

/// The PostgreSQL implementation of [`Storage`].
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    /// Both names for one pool: the shared body reads and writes through
    /// `reader` and `writer`; PostgreSQL needs no split.
    writer: PgPool,
    reader: PgPool,
}

impl PostgresStorage {
    /// Connects and migrates. Several instances may start at once: sqlx takes
    /// an advisory lock around the migrations.
    pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(5))
            .connect(database_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .context("applying the PostgreSQL migrations")?;
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
        })
    }

    async fn begin_write(&self) -> anyhow::Result<sqlx::Transaction<'static, Postgres>> {
        self.writer
            .begin()
            .await
            .context("beginning a PostgreSQL transaction")
    }
}

// SKIP LOCKED: a concurrent claim passes over the row another claim is
// leasing and takes the next one, instead of waiting and then finding it gone.
impl_storage!(
    PostgresStorage,
    sqlx::Postgres,
    "FOR UPDATE SKIP LOCKED",
    sql::chain_with_ctes,
    false
);
