//! A sample of the simulation's schedules replayed against the real storage
//! code (`formid_gateway::storage::connect`) on SQLite and on PostgreSQL,
//! with the same invariants.
//!
//! Real databases cannot run under paused tokio time (sqlx's own timeouts
//! would fire as time jumps), so these runs use real time with compressed
//! durations (`Profile::RealTime`: leases of a second or two, latencies of
//! milliseconds). They are not deterministic; the invariants must hold
//! anyway. Each instance opens its own pool, as a process would.
//!
//! PostgreSQL must listen on 127.0.0.1:5432 (or `FORMID_TEST_POSTGRES_URL`
//! names the admin database); each run gets a fresh database, dropped after.

use std::sync::Arc;

use async_trait::async_trait;
use formid_gateway::storage::Storage;
use formid_sim::invariants::{AttemptSnap, CredentialSnap, LedgerView, MessageSnap, Snapshot};
use formid_sim::run::{run_plan, Backend, Plan, Profile, SweepReport};
use sqlx::{Connection, Executor, PgConnection, PgPool, SqlitePool};

/// Seeds replayed per backend, and sends per seed; the last also with
/// scheduled sends, urgent sends and quiet hours (`Plan::with_timing`).
const SEEDS: std::ops::Range<u64> = 1..7;
const SENDS: usize = 30;

type CredentialRow = (i64, String, String, String, i64, i64, String, Option<i64>);
type MessageRow = (String, String, String, String, Option<String>);
type AttemptRow = (String, Option<i64>, Option<i64>, String);

const CREDENTIALS: &str = "SELECT id, openid, kind, value, uses_left, unproven_uses, state, \
    retired_errcode FROM credentials ORDER BY id";
const MESSAGES: &str = "SELECT id, touser, status, delivery, error_code FROM messages ORDER BY id";
const ATTEMPTS: &str =
    "SELECT message_id, credential_id, errcode, outcome FROM attempts ORDER BY id";

/// The ledger's rows read by SQL.
enum SqlView {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

fn snapshot(
    credentials: Vec<CredentialRow>,
    messages: Vec<MessageRow>,
    attempts: Vec<AttemptRow>,
) -> anyhow::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    for (id, openid, kind, value, uses_left, unproven_uses, state, retired_errcode) in credentials {
        snapshot.credentials.push(CredentialSnap {
            id,
            openid,
            kind,
            value,
            uses_left,
            unproven_uses,
            state: state.parse()?,
            retired_errcode,
            // These runs are the legacy workload: no grants or tickets.
            template_id: None,
        });
    }
    for (id, touser, status, delivery, error_code) in messages {
        snapshot.messages.push(MessageSnap {
            id,
            touser,
            status: status.parse()?,
            delivery: delivery.parse()?,
            error_code,
            attempts: Vec::new(),
        });
    }
    for (message_id, credential_id, errcode, outcome) in attempts {
        if let Some(message) = snapshot.messages.iter_mut().find(|m| m.id == message_id) {
            message.attempts.push(AttemptSnap {
                credential_id,
                errcode,
                outcome: outcome.parse()?,
            });
        }
    }
    Ok(snapshot)
}

#[async_trait]
impl LedgerView for SqlView {
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        match self {
            SqlView::Sqlite(pool) => snapshot(
                sqlx::query_as(CREDENTIALS).fetch_all(pool).await?,
                sqlx::query_as(MESSAGES).fetch_all(pool).await?,
                sqlx::query_as(ATTEMPTS).fetch_all(pool).await?,
            ),
            SqlView::Postgres(pool) => snapshot(
                sqlx::query_as(CREDENTIALS).fetch_all(pool).await?,
                sqlx::query_as(MESSAGES).fetch_all(pool).await?,
                sqlx::query_as(ATTEMPTS).fetch_all(pool).await?,
            ),
        }
    }
}

/// A backend whose every instance connects anew to `url`.
async fn backend(url: &str, view: SqlView) -> Backend {
    let url = url.to_owned();
    Backend {
        connect: Arc::new(move || {
            let url = url.clone();
            Box::pin(async move {
                let storage: Arc<dyn Storage> = formid_gateway::storage::connect(&url, 4).await?;
                Ok(storage)
            })
        }),
        view: Arc::new(view),
        model: None,
    }
}

/// The plan of `seed`: the last seed's with timing.
fn plan_of(seed: u64) -> Plan {
    let plan = Plan::new(seed, SENDS, Profile::RealTime);
    if seed + 1 == SEEDS.end {
        plan.with_timing()
    } else {
        plan
    }
}

fn check(name: &str, report: &SweepReport) {
    println!("{name}:\n{}", report.figures());
    for failure in &report.failures {
        println!("=== seed {} FAILED on {name} ===", failure.seed);
        for violation in &failure.violations {
            println!("  {violation}");
        }
        if let Some(story) = &failure.story {
            println!("{story}");
        }
    }
    let failing: Vec<u64> = report.failures.iter().map(|f| f.seed).collect();
    assert!(failing.is_empty(), "{name}: failing seeds {failing:?}");
    assert_eq!(report.seeds, SEEDS.end - SEEDS.start);
    assert!(report.deliveries > 0, "{name}: nothing was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_schedules_holds_on_sqlite() {
    let mut report = SweepReport::default();
    for seed in SEEDS {
        let dir =
            std::env::temp_dir().join(format!("formid_sim_{seed}_{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let url = format!("sqlite://{}/ledger.db", dir.display());
        // The first connection creates and migrates the file.
        let first = formid_gateway::storage::connect(&url, 4)
            .await
            .expect("opening the SQLite ledger");
        let view = SqlView::Sqlite(SqlitePool::connect(&url).await.expect("a reader"));
        let plan = plan_of(seed);
        report.add(run_plan(plan, backend(&url, view).await).await);
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
    }
    check("SQLite", &report);
}

fn postgres_admin_url() -> String {
    std::env::var("FORMID_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_schedules_holds_on_postgres() {
    let admin_url = postgres_admin_url();
    let base = admin_url
        .rsplit_once('/')
        .expect("a database URL")
        .0
        .to_owned();
    let mut report = SweepReport::default();
    for seed in SEEDS {
        let name = format!("formid_sim_{seed}_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL must be reachable at {admin_url}: {error}"));
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("creating a fresh database");
        let url = format!("{base}/{name}");
        let first = formid_gateway::storage::connect(&url, 4)
            .await
            .expect("connecting to the PostgreSQL ledger");
        let view = SqlView::Postgres(PgPool::connect(&url).await.expect("a reader"));
        let plan = plan_of(seed);
        report.add(run_plan(plan, backend(&url, view).await).await);
        drop(first);
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
            .await
            .expect("dropping the database");
    }
    check("PostgreSQL", &report);
}
