//! Direct database work: fresh databases, dead rows for the ledger-growth
//! runs, and the limits (the bare claim and the bare batched insert) run with
//! the gateway's own SQL from `formid_gateway::storage::testing::sql`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use formid_gateway::storage::testing::sql;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Executor, PgPool, Postgres, QueryBuilder, Sqlite, SqlitePool};

use crate::load::{closed_loop, Outcome, Stats};

/// One row of the collection insert, bound as the gateway binds it.
macro_rules! push_row {
    ($row:ident, $appid:expr, $openid:expr, $value:expr, $now:expr) => {
        $row.push_bind($appid.to_owned())
            .push_bind($openid.clone())
            .push_bind("form_id")
            .push_bind($value.clone())
            .push_bind(1_i64)
            .push_bind("available")
            .push_bind($now)
            .push_bind($now + 7 * DAY_MS)
            .push_bind($now)
            .push_bind($now);
    };
}

pub const DAY_MS: i64 = 86_400_000;

/// A random form_id-like value: 32 hex digits.
pub fn random_form_id() -> String {
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Drops and creates a PostgreSQL database; `admin` is a URL to another database.
pub async fn recreate_pg_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .with_context(|| format!("connecting to {admin}"))?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    Ok(())
}

/// A SQLite pool like the gateway's writer: one connection, WAL, synchronous NORMAL.
pub async fn sqlite_writer(path: &str, synchronous_off: bool) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if synchronous_off {
            SqliteSynchronous::Off
        } else {
            SqliteSynchronous::Normal
        })
        .busy_timeout(Duration::from_secs(60))
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

pub async fn migrate_sqlite(pool: &SqlitePool) -> anyhow::Result<()> {
    sqlx::migrate!("../migrations/sqlite").run(pool).await?;
    Ok(())
}

pub async fn pg_pool(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?)
}

pub async fn migrate_pg(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("../migrations/postgres").run(pool).await?;
    Ok(())
}

/// The dead rows' columns from a row number `g` and the seeding time `$4`:
/// a third each exhausted, expired (in the last 6 days) and retired, a
/// quarter of them prepay_ids, spread over users `$2 || (g % $3)`. Expiry
/// grows with `g` so that index inserts stay near two hot spots.
const DEAD_COLUMNS: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, uses_left, state, collected_at, expires_at, retired_errcode, \
     created_at, updated_at) \
    SELECT $1, $2 || (g % $3), CASE WHEN g % 4 = 0 THEN 'prepay_id' ELSE 'form_id' END, \
        'dead' || g, CASE WHEN g % 3 = 0 THEN 0 ELSE 1 END, \
        CASE g % 3 WHEN 0 THEN 'exhausted' WHEN 1 THEN 'expired' ELSE 'retired' END, \
        e - 604800000, e, CASE WHEN g % 3 = 2 THEN 41029 END, e - 604800000, e - 604800000 \
    FROM (SELECT g, CASE WHEN g % 3 = 1 \
            THEN $4 - 518400000 + (g * 518400000 / 10000001) - 1000 \
            ELSE $4 + 3600000 + (g * 518400000 / 10000001) END AS e \
        FROM SERIES) s";

/// Inserts dead rows numbered `from..to` (the gateway is stopped meanwhile).
pub async fn insert_dead_rows(
    database_url: &str,
    appid: &str,
    user_prefix: &str,
    users: i64,
    from: i64,
    to: i64,
) -> anyhow::Result<()> {
    const CHUNK: i64 = 1_000_000;
    let now = now_ms();
    if database_url.starts_with("sqlite:") {
        let path = database_url.trim_start_matches("sqlite://");
        // Seeding only: nothing else writes, and a lost seed is simply redone.
        let pool = sqlite_writer(path, true).await?;
        let statement = DEAD_COLUMNS.replace(
            "SERIES",
            "(WITH RECURSIVE seq(g) AS (SELECT $5 UNION ALL SELECT g + 1 FROM seq WHERE g < $6 - 1) \
             SELECT g FROM seq)",
        );
        let mut start = from;
        while start < to {
            let end = (start + CHUNK).min(to);
            let mut tx = pool.begin().await?;
            sqlx::query(&statement)
                .bind(appid)
                .bind(user_prefix)
                .bind(users)
                .bind(now)
                .bind(start)
                .bind(end)
                .execute(&mut *tx)
                .await
                .context("inserting dead rows into SQLite")?;
            tx.commit().await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await?;
            start = end;
        }
        pool.close().await;
    } else {
        let pool = pg_pool(database_url, 1).await?;
        let statement =
            DEAD_COLUMNS.replace("SERIES", "generate_series($5::bigint, $6::bigint - 1) g");
        let mut start = from;
        while start < to {
            let end = (start + CHUNK).min(to);
            sqlx::query(&statement)
                .bind(appid)
                .bind(user_prefix)
                .bind(users)
                .bind(now)
                .bind(start)
                .bind(end)
                .execute(&pool)
                .await
                .context("inserting dead rows into PostgreSQL")?;
            start = end;
        }
        // What autovacuum would soon do after such growth.
        sqlx::query("ANALYZE credentials").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

/// Live rows for the bare claim: `per_user` prepay_ids with 3 sends for each
/// user `{prefix}{n}`, valid for a day and more.
const LIVE_ROWS: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, uses_left, state, collected_at, expires_at, created_at, updated_at) \
    SELECT $1, $2 || (g / $3), 'prepay_id', 'live' || g, 3, 'available', $4, \
        $4 + 86400000 + (g % $3) * 1000, $4, $4 FROM SERIES";

/// One-time subscribe grants as the gateway stores them (`sql::INSERT_GRANT`:
/// kind `subscribe`, the template set, one use, never expiring), `$6` of
/// them spread over users `$2 || (g % $3)`, oldest first by `g`.
const GRANT_ROWS: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, template_id, uses_left, state, collected_at, expires_at, \
     created_at, updated_at) \
    SELECT $1, $2 || (g % $3), 'subscribe', 'grant:' || $2 || g, $4, 1, 'available', \
        $5 + g / $3, $7, $5, $5 FROM SERIES";

/// The users' decision on the template, as a posted prompt records it
/// (`sql::RECORD_DECISION`): `accept`, not long-term. (`WHERE TRUE`: without
/// it SQLite reads the `ON` of `ON CONFLICT` as a join constraint.)
const DECISION_ROWS: &str = "INSERT INTO subscriptions \
    (appid, openid, template_id, decision, decided_at, long_term, updated_at) \
    SELECT $1, $2 || g, $4, 'accept', $5, FALSE, $5 FROM SERIES \
    WHERE TRUE ON CONFLICT (appid, openid, template_id) DO NOTHING";

/// Seeds `per_user` one-time grants of `template_id` for each of `users`
/// users `{prefix}{n}` straight into the gateway's ledger, with the gateway
/// running (it is idle meanwhile; SQLite waits on its writer lock). The
/// same rows a posted `requestSubscribeMessage` result makes.
pub async fn seed_grants(
    database_url: &str,
    appid: &str,
    template_id: &str,
    prefix: &str,
    users: i64,
    per_user: i64,
) -> anyhow::Result<()> {
    let total = users * per_user;
    let now = now_ms();
    let never = formid_gateway::ledger::kinds::NEVER_EXPIRES_MS;
    macro_rules! seed {
        ($pool:expr, $series_grants:expr, $series_users:expr) => {{
            let mut tx = $pool.begin().await?;
            sqlx::query(&GRANT_ROWS.replace("SERIES", $series_grants))
                .bind(appid)
                .bind(prefix)
                .bind(users)
                .bind(template_id)
                .bind(now)
                .bind(total)
                .bind(never)
                .execute(&mut *tx)
                .await
                .context("seeding grants")?;
            sqlx::query(&DECISION_ROWS.replace("SERIES", $series_users))
                .bind(appid)
                .bind(prefix)
                .bind(users)
                .bind(template_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .context("seeding decisions")?;
            tx.commit().await?;
        }};
    }
    if database_url.starts_with("sqlite:") {
        let path = database_url.trim_start_matches("sqlite://");
        let pool = sqlite_writer(path, false).await?;
        seed!(
            pool,
            "(WITH RECURSIVE seq(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM seq WHERE g < $6 - 1) \
             SELECT g FROM seq)",
            "(WITH RECURSIVE seq(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM seq WHERE g < $3 - 1) \
             SELECT g FROM seq)"
        );
        pool.close().await;
    } else {
        let pool = pg_pool(database_url, 1).await?;
        seed!(
            pool,
            "generate_series(0, $6::bigint - 1) g",
            "generate_series(0, $3::bigint - 1) g"
        );
        pool.close().await;
    }
    Ok(())
}

pub enum LimitDb {
    Sqlite(SqlitePool),
    Postgres { pool: PgPool, url: String },
}

impl LimitDb {
    /// A fresh, migrated database for the limits.
    pub async fn create(backend: &str, dir: &str, pg_admin: &str) -> anyhow::Result<Self> {
        if backend == "sqlite" {
            let path = format!("{dir}/limit.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
            let pool = sqlite_writer(&path, false).await?;
            migrate_sqlite(&pool).await?;
            Ok(Self::Sqlite(pool))
        } else {
            let name = "formid_bench_limit";
            recreate_pg_database(pg_admin, name).await?;
            let url = pg_url(pg_admin, name);
            let pool = pg_pool(&url, 32).await?;
            migrate_pg(&pool).await?;
            Ok(Self::Postgres { pool, url })
        }
    }

    pub async fn seed_live(
        &self,
        appid: &str,
        prefix: &str,
        users: i64,
        per_user: i64,
    ) -> anyhow::Result<()> {
        let total = users * per_user;
        let now = now_ms();
        match self {
            LimitDb::Sqlite(pool) => {
                let statement = LIVE_ROWS.replace(
                    "SERIES",
                    "(WITH RECURSIVE seq(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM seq WHERE g < $5 - 1) \
                     SELECT g FROM seq)",
                );
                let mut tx = pool.begin().await?;
                sqlx::query(&statement)
                    .bind(appid)
                    .bind(prefix)
                    .bind(per_user)
                    .bind(now)
                    .bind(total)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            LimitDb::Postgres { pool, .. } => {
                let statement = LIVE_ROWS.replace("SERIES", "generate_series(0, $5::bigint - 1) g");
                sqlx::query(&statement)
                    .bind(appid)
                    .bind(prefix)
                    .bind(per_user)
                    .bind(now)
                    .bind(total)
                    .execute(pool)
                    .await?;
                sqlx::query("VACUUM ANALYZE credentials")
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// SQLite: the claim statement in a loop on the one writer connection.
    pub async fn bare_claim_sqlite(
        &self,
        appid: &str,
        prefix: &str,
        users: i64,
        warmup: Duration,
        duration: Duration,
    ) -> anyhow::Result<Stats> {
        let LimitDb::Sqlite(pool) = self else {
            bail!("not SQLite")
        };
        let statement: Arc<str> = sql::with_lock(sql::CLAIM, "").into();
        let (pool, appid, prefix) = (
            pool.clone(),
            Arc::<str>::from(appid),
            Arc::<str>::from(prefix),
        );
        Ok(closed_loop(1, warmup, duration, move |_| {
            let (pool, statement, appid, prefix) = (
                pool.clone(),
                statement.clone(),
                appid.clone(),
                prefix.clone(),
            );
            async move {
                let now = now_ms();
                let user = format!("{prefix}{}", rand::thread_rng().gen_range(0..users));
                let claimed = sqlx::query(&statement)
                    .bind(now + 120_000)
                    .bind(now)
                    .bind(&*appid)
                    .bind(user)
                    .bind(now + 60_000)
                    .bind("bench-claim")
                    .bind(7_i64)
                    // The template a subscribe grant pays for; NULL: a legacy credential.
                    .bind(None::<String>)
                    .fetch_optional(&pool)
                    .await;
                match claimed {
                    Ok(Some(_)) => Outcome::Ok(1),
                    Ok(None) => Outcome::Fail("no row".into()),
                    Err(error) => Outcome::Fail(error.to_string()),
                }
            }
        })
        .await)
    }

    /// PostgreSQL: the claim statement under pgbench, users at random.
    pub fn bare_claim_pgbench(
        &self,
        dir: &str,
        appid: &str,
        prefix: &str,
        users: i64,
        clients: usize,
        duration: Duration,
    ) -> anyhow::Result<Stats> {
        let LimitDb::Postgres { url, .. } = self else {
            bail!("not PostgreSQL")
        };
        let claim = sql::with_lock(sql::CLAIM, "FOR UPDATE SKIP LOCKED")
            .replace("$1", ":lease")
            .replace("$2", ":now")
            .replace("$3", &format!("'{appid}'"))
            .replace("$4", &format!("('{prefix}' || :u)"))
            .replace("$5", ":valid")
            .replace("$6", "'bench-claim'")
            .replace("$7", "7")
            .replace("$8", "NULL");
        let script = format!("\\set u random(0, {})\n{claim};\n", users - 1);
        let path = format!("{dir}/claim.sql");
        std::fs::write(&path, script)?;
        let now = now_ms();
        let output = std::process::Command::new("pgbench")
            .args(["-n", "-f", &path, "-j", "2"])
            .args([
                "-c",
                &clients.to_string(),
                "-T",
                &duration.as_secs().to_string(),
            ])
            .args(["-D", &format!("now={now}")])
            .args(["-D", &format!("lease={}", now + 120_000)])
            .args(["-D", &format!("valid={}", now + 60_000)])
            .arg(url)
            .output()
            .context("running pgbench")?;
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        if !output.status.success() {
            bail!(
                "pgbench failed: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let field = |key: &str| -> Option<f64> {
            text.lines()
                .find(|line| line.starts_with(key))
                .and_then(|line| line.split('=').nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse().ok())
        };
        let tps = field("tps").context("no tps in pgbench's output")?;
        let latency = field("latency average").unwrap_or(0.0);
        let failed = field("number of failed transactions").unwrap_or(0.0);
        let mut stats = Stats {
            rate: tps,
            p50_ms: latency,
            window_s: duration.as_secs_f64(),
            ..Stats::default()
        };
        if failed > 0.0 {
            stats.failures.insert("failed".into(), failed as u64);
        }
        Ok(stats)
    }

    /// The collection's insert (`INSERT_CREDENTIALS_HEAD/TAIL`, `batch` rows)
    /// in its own transaction, on `clients` connections. The values are
    /// random, like the form_ids the collection runs post (and like real
    /// ones): sequential values would append to the end of the unique index
    /// and dirty far fewer pages per commit than the gateway's inserts do.
    pub async fn bare_insert(
        &self,
        appid: &str,
        batch: usize,
        clients: usize,
        warmup: Duration,
        duration: Duration,
    ) -> anyhow::Result<Stats> {
        let appid: Arc<str> = appid.into();
        let counter = Arc::new(AtomicU64::new(0));
        let now = now_ms();
        let values = move |counter: &AtomicU64| -> Vec<(String, String)> {
            let base = counter.fetch_add(batch as u64, Ordering::Relaxed);
            (0..batch as u64)
                .map(|i| (format!("bulk{}", (base + i) % 5_000), random_form_id()))
                .collect()
        };
        // The same loop on either pool; only the transaction's first
        // statement differs (the gateway's SQLite writer takes its lock up front).
        macro_rules! insert_loop {
            ($pool:expr, $db:ty, $begin:expr) => {{
                let pool = $pool.clone();
                closed_loop(clients, warmup, duration, move |_| {
                    let (pool, appid, items) = (pool.clone(), appid.clone(), values(&counter));
                    async move {
                        let result = async {
                            let mut tx = pool.begin_with($begin).await?;
                            let mut builder =
                                QueryBuilder::<$db>::new(sql::INSERT_CREDENTIALS_HEAD);
                            builder.push_values(&items, |mut row, (openid, value)| {
                                push_row!(row, &*appid, openid, value, now);
                            });
                            builder.push(sql::INSERT_CREDENTIALS_TAIL);
                            let rows: Vec<(String, String)> =
                                builder.build_query_as().fetch_all(&mut *tx).await?;
                            tx.commit().await?;
                            anyhow::Ok(rows.len() as u64)
                        }
                        .await;
                        match result {
                            Ok(rows) => Outcome::Ok(rows),
                            Err(error) => Outcome::Fail(error.to_string()),
                        }
                    }
                })
                .await
            }};
        }
        Ok(match self {
            LimitDb::Sqlite(pool) => insert_loop!(pool, Sqlite, "BEGIN IMMEDIATE"),
            LimitDb::Postgres { pool, .. } => insert_loop!(pool, Postgres, "BEGIN"),
        })
    }

    pub async fn close(self) {
        match self {
            LimitDb::Sqlite(pool) => pool.close().await,
            LimitDb::Postgres { pool, .. } => pool.close().await,
        }
    }
}

/// The URL of database `name` on the server of `admin`.
pub fn pg_url(admin: &str, name: &str) -> String {
    match admin.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{name}", &admin[..slash]),
        _ => format!("{admin}/{name}"),
    }
}
