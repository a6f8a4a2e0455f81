//! `formid-bench`: the benchmark of formid-gateway (see BENCHMARKS.md).
//!
//! `formid-bench run` drives everything: for each backend and each upstream
//! latency it starts the fake WeChat and the gateway as separate processes
//! (the release binary), seeds credentials over HTTP, and measures with
//! closed-loop clients in this process. The limits (the fake hit directly,
//! the bare claim and the bare batched insert on the same database) are
//! measured in the same run. `formid-bench report FILE` prints the tables.

mod broadcast;
mod db;
mod http;
mod instructions;
mod load;
mod procs;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::db::LimitDb;
use crate::http::{Channel, SendBody};
use crate::load::{closed_loop, Stats};
use crate::procs::{wait_until_up, Proc};

#[derive(Parser)]
#[command(about = "Benchmark of formid-gateway")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the whole benchmark and writes bench/results/.
    Run(Box<RunArgs>),
    /// Prints the tables of a results file as Markdown.
    Report { file: PathBuf },
    /// Counts the instructions a gateway runs per send, under callgrind: a
    /// figure that does not move with the machine's load.
    Instructions(instructions::InstructionsArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The release binary of the gateway.
    #[arg(long, default_value = "target/release/formid-gateway")]
    gateway_bin: PathBuf,
    /// The release binary of the fake WeChat (package fake-wechat).
    #[arg(long, default_value = "target/release/fake-wechat")]
    fake_bin: PathBuf,
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    /// Latencies of the fake WeChat, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,100")]
    latencies: Vec<u64>,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Send channels, measured side by side at every client count and
    /// latency: legacy template messages (prepay_ids) and subscribe messages
    /// (one-time grants). The ledger-growth runs send template messages.
    #[arg(long, value_delimiter = ',', default_value = "template,subscribe")]
    channels: Vec<Channel>,
    /// Stored (dead) credentials of the ledger-growth runs; `--growth` with
    /// no sizes skips them.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "10000,1000000,10000000")]
    growth: Vec<i64>,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    growth_clients: Vec<usize>,
    /// Concurrent clients of the collection runs.
    #[arg(long, default_value_t = 8)]
    collect_clients: usize,
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Any database on the PostgreSQL server; the bench creates its own.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin: String,
    /// The gateway's `database_max_connections` (PG pool / SQLite readers).
    #[arg(long, default_value_t = 32)]
    pool: u32,
    /// Recipients of the broadcast runs (one grant each), per backend and
    /// latency; `--broadcast` with no sizes skips them.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100000")]
    broadcast: Vec<u64>,
    #[arg(long, default_value_t = 18080)]
    gateway_port: u16,
    #[arg(long, default_value_t = 19100)]
    fake_port: u16,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub upstream_latency_ms: u64,
    /// send, fake_direct, collect, bare_claim, bare_insert, growth_send, rss,
    /// broadcast (rate: sends/s; p50_ms: POST to first send; max_ms: peak
    /// RSS in MiB; stored: recipients)
    pub measure: String,
    /// send and fake_direct: `template` or `subscribe` (empty in results
    /// files older than subscribe messages: `template`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    pub clients: usize,
    #[serde(default)]
    pub batch: usize,
    #[serde(default)]
    pub stored: i64,
    pub stats: Stats,
    #[serde(default)]
    pub note: String,
}

impl Record {
    /// The send channel of a send or fake_direct figure (`template` when
    /// the file predates subscribe messages).
    pub fn channel(&self) -> &str {
        if self.channel.is_empty() {
            "template"
        } else {
            &self.channel
        }
    }

    /// The same figure, for `channel`.
    fn on(mut self, channel: Channel) -> Self {
        self.channel = channel.as_str().to_owned();
        self
    }
}

/// A results file: the machine, the settings and every figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub machine: BTreeMap<String, String>,
    pub settings: BTreeMap<String, String>,
    pub records: Vec<Record>,
    pub total_s: f64,
}

pub(crate) const SEND_APP: &str = "wxbenchsend00000001";
const GROWTH_APP: &str = "wxbenchgrowth000001";
const LIMIT_APP: &str = "wxbenchlimit0000001";
pub(crate) const MAX_USERS: usize = 10_000;
/// Users of the growth runs: the dead rows are spread over the same users.
const GROWTH_USERS: i64 = 10_000;

fn fake_app(clients: usize) -> String {
    format!("wxbenchfake{clients:08}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run(*args).await,
        Cmd::Instructions(args) => instructions::run(args).await,
        Cmd::Report { file } => {
            let results: Results = serde_json::from_slice(&std::fs::read(&file)?)?;
            print!("{}", report::markdown(&results));
            Ok(())
        }
    }
}

struct Bench {
    args: RunArgs,
    http: reqwest::Client,
    results: Results,
    file: PathBuf,
    tmp: PathBuf,
    warmup: Duration,
    duration: Duration,
    /// The gateway database of the current latency (subscribe grants are
    /// seeded into it).
    database_url: String,
    /// The subscribe template of SEND_APP at the current fake, when
    /// subscribe sends are measured.
    subscribe_template: Option<String>,
}

impl Bench {
    fn save(&self) -> anyhow::Result<()> {
        std::fs::write(&self.file, serde_json::to_vec_pretty(&self.results)?)?;
        Ok(())
    }

    fn record(&mut self, record: Record) -> anyhow::Result<()> {
        let s = &record.stats;
        let failures: u64 = s.failures.values().sum();
        println!(
            "  {:<8} {:>3}ms {:<12} {:<9} c={:<3} batch={:<3} stored={:<9} rate={:>9.1}/s p50={:>8.2}ms p99={:>8.2}ms n={} fail={}{}{}",
            record.backend,
            record.upstream_latency_ms,
            record.measure,
            record.channel,
            record.clients,
            record.batch,
            record.stored,
            s.rate,
            s.p50_ms,
            s.p99_ms,
            s.requests,
            failures,
            if s.exhausted { " (work ran out)" } else { "" },
            if record.note.is_empty() { String::new() } else { format!(" [{}]", record.note) },
        );
        if failures > 0 {
            println!("    failures: {:?}", s.failures);
        }
        self.results.records.push(record);
        self.save()
    }

    fn window(&self) -> f64 {
        (self.warmup + self.duration).as_secs_f64()
    }

    fn fake_command(&self, latency: u64) -> Command {
        let mut apps = vec![SEND_APP.to_owned(), GROWTH_APP.to_owned()];
        apps.extend(self.args.clients.iter().map(|c| fake_app(*c)));
        fake_command(&self.args.fake_bin, self.args.fake_port, latency, &apps)
    }

    fn gateway_config(&self, database_url: &str) -> anyhow::Result<PathBuf> {
        let path = self.tmp.join("gateway.toml");
        let text = gateway_config_text(
            self.args.gateway_port,
            database_url,
            self.args.pool,
            self.args.fake_port,
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    async fn start_gateway(&self, database_url: &str, label: &str) -> anyhow::Result<Proc> {
        let config = self.gateway_config(database_url)?;
        let mut command = Command::new(&self.args.gateway_bin);
        command.arg("serve").arg("--config").arg(&config);
        let mut gateway = Proc::spawn(
            "gateway",
            command,
            &self.tmp.join(format!("gateway-{label}.log")),
        )?;
        let url = format!("http://127.0.0.1:{}/readyz", self.args.gateway_port);
        wait_until_up(&self.http, &url, &mut gateway).await?;
        Ok(gateway)
    }

    fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.gateway_port)
    }

    fn fake_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.fake_port)
    }

    fn rss(
        &mut self,
        backend: &str,
        latency: u64,
        gateway: &Proc,
        note: &str,
    ) -> anyhow::Result<()> {
        let kib = gateway.peak_rss_kib()?;
        let stats = Stats {
            rate: kib as f64 / 1024.0,
            ..Stats::default()
        };
        self.record(Record {
            backend: backend.into(),
            upstream_latency_ms: latency,
            measure: "rss".into(),
            channel: String::new(),
            clients: 0,
            batch: 0,
            stored: 0,
            stats,
            note: note.into(),
        })
    }

    /// Gateway sends of `channel` at `clients`, with credentials for
    /// `budget` sends seeded first; retried with more when the work runs out
    /// early.
    async fn gateway_sends(
        &self,
        appid: &str,
        prefix: &str,
        channel: Channel,
        clients: usize,
        mut budget: u64,
    ) -> anyhow::Result<Stats> {
        let send = Arc::new(match channel {
            Channel::Template => SendBody::Template,
            Channel::Subscribe => SendBody::Subscribe {
                template_id: self
                    .subscribe_template
                    .clone()
                    .context("no subscribe template at this fake")?,
            },
        });
        let mut attempt = 0;
        loop {
            let seeding = Instant::now();
            let prefix = format!("{prefix}a{attempt}u");
            let users = match &*send {
                SendBody::Template => http::seed_users(
                    &self.http,
                    &self.fake_url(),
                    &self.gateway_url(),
                    appid,
                    &prefix,
                    budget,
                    MAX_USERS,
                )
                .await
                .context("seeding credentials")?,
                SendBody::Subscribe { template_id } => {
                    self.seed_grants(appid, template_id, &prefix, budget)
                        .await?
                }
            };
            println!(
                "    seeded {} sends over {} users in {:.1}s",
                budget,
                users.len(),
                seeding.elapsed().as_secs_f64()
            );
            let users = Arc::new(users);
            let url = Arc::new(format!("{}/v1/apps/{appid}/messages", self.gateway_url()));
            let (http, send) = (self.http.clone(), send.clone());
            let stats = closed_loop(clients, self.warmup, self.duration, move |n| {
                http::gateway_send(http.clone(), url.clone(), users.clone(), send.clone(), n)
            })
            .await;
            if stats.exhausted && stats.window_s < self.duration.as_secs_f64() * 0.5 && attempt < 2
            {
                attempt += 1;
                budget *= 3;
                println!("    credentials ran out early; again with {budget}");
                continue;
            }
            return Ok(stats);
        }
    }

    /// One-time grants of `template_id` for `sends` sends, spread over at
    /// most MAX_USERS users `{prefix}{n}`: accepted at the fake (its HTTP
    /// control, one call per grant, as users answering prompts) and written
    /// into the gateway's ledger as a posted prompt result writes them.
    /// Returns the users.
    async fn seed_grants(
        &self,
        appid: &str,
        template_id: &str,
        prefix: &str,
        sends: u64,
    ) -> anyhow::Result<Vec<String>> {
        let users_n = MAX_USERS.min(sends as usize).max(1);
        let per_user = (sends as usize).div_ceil(users_n);
        let users: Vec<String> = (0..users_n).map(|n| format!("{prefix}{n}")).collect();
        http::grant_at_fake(
            &self.http,
            &self.fake_url(),
            appid,
            template_id,
            &users,
            per_user,
        )
        .await
        .context("granting at the fake")?;
        db::seed_grants(
            &self.database_url,
            appid,
            template_id,
            prefix,
            users_n as i64,
            per_user as i64,
        )
        .await?;
        Ok(users)
    }

    async fn fake_direct(
        &self,
        channel: Channel,
        clients: usize,
        budget: u64,
    ) -> anyhow::Result<Stats> {
        match channel {
            Channel::Template => self.fake_direct_template(clients, budget).await,
            Channel::Subscribe => self.fake_direct_subscribe(clients, budget).await,
        }
    }

    /// Subscribe sends straight to the fake, one grant per send.
    async fn fake_direct_subscribe(
        &self,
        clients: usize,
        mut budget: u64,
    ) -> anyhow::Result<Stats> {
        let appid = fake_app(clients);
        let token = http::fake_token(&self.http, &self.fake_url(), &appid).await?;
        let template_id = http::add_template_at_fake(&self.http, &self.fake_url(), &token).await?;
        let url = Arc::new(format!(
            "{}/cgi-bin/message/subscribe/send?access_token={token}",
            self.fake_url()
        ));
        let send = Arc::new(SendBody::Subscribe {
            template_id: template_id.clone(),
        });
        let mut attempt = 0;
        loop {
            let users_n = MAX_USERS.min(budget as usize).max(1);
            let per_user = (budget as usize).div_ceil(users_n);
            let users: Vec<String> = (0..users_n).map(|n| format!("f{attempt}s{n}")).collect();
            http::grant_at_fake(
                &self.http,
                &self.fake_url(),
                &appid,
                &template_id,
                &users,
                per_user,
            )
            .await?;
            // Consecutive sends go to different users, as the gateway runs do.
            let pool: Vec<String> = (0..per_user).flat_map(|_| users.iter().cloned()).collect();
            let pool = Arc::new(pool);
            let (http, url, send) = (self.http.clone(), url.clone(), send.clone());
            let stats = closed_loop(clients, self.warmup, self.duration, move |n| {
                http::fake_subscribe_send(http.clone(), url.clone(), pool.clone(), send.clone(), n)
            })
            .await;
            if stats.exhausted && stats.window_s < self.duration.as_secs_f64() * 0.5 && attempt < 2
            {
                attempt += 1;
                budget *= 3;
                continue;
            }
            return Ok(stats);
        }
    }

    /// Template sends straight to the fake, with prepay_ids minted for it.
    async fn fake_direct_template(&self, clients: usize, mut budget: u64) -> anyhow::Result<Stats> {
        let appid = fake_app(clients);
        let token = http::fake_token(&self.http, &self.fake_url(), &appid).await?;
        let url = Arc::new(format!(
            "{}/cgi-bin/message/wxopen/template/send?access_token={token}",
            self.fake_url()
        ));
        let mut attempt = 0;
        loop {
            let prepay_ids = budget.div_ceil(3) as usize;
            let users_n = MAX_USERS.min(prepay_ids);
            let users: Vec<String> = (0..users_n).map(|n| format!("f{attempt}u{n}")).collect();
            let mut pool = http::mint_prepay_ids(
                &self.http,
                &self.fake_url(),
                &appid,
                &users,
                prepay_ids.div_ceil(users_n),
            )
            .await?;
            // Spread consecutive sends over users, as the gateway runs do.
            pool.sort_by_key(|(user, _)| user.clone());
            let mut spread = Vec::with_capacity(pool.len());
            let per_user = pool.len() / users_n;
            for k in 0..per_user {
                for u in 0..users_n {
                    spread.push(pool[u * per_user + k].clone());
                }
            }
            let pool = Arc::new(spread);
            let (http, url) = (self.http.clone(), url.clone());
            let stats = closed_loop(clients, self.warmup, self.duration, move |n| {
                http::fake_send(http.clone(), url.clone(), pool.clone(), n)
            })
            .await;
            if stats.exhausted && stats.window_s < self.duration.as_secs_f64() * 0.5 && attempt < 2
            {
                attempt += 1;
                budget *= 3;
                continue;
            }
            return Ok(stats);
        }
    }

    /// Credentials for a send run: from the last comparable rate, bounded by
    /// what the upstream latency allows.
    fn budget(&self, latency: u64, clients: usize, previous_rate: f64) -> u64 {
        let window = self.window();
        let by_rate = (previous_rate * 1.5 * window) as u64;
        let budget = by_rate.max(30_000);
        if latency > 0 {
            let ceiling = (clients as f64 * 1000.0 / latency as f64 * window * 1.2) as u64 + 1_000;
            budget.min(ceiling)
        } else {
            budget.min(900_000)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let stamp = chrono_like_stamp();
    std::fs::create_dir_all(&args.out_dir)?;
    let tmp = args.out_dir.join("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let tmp = std::fs::canonicalize(&tmp)?;
    let file = args.out_dir.join(format!("results-{stamp}.json"));
    let mut settings = BTreeMap::new();
    settings.insert("warmup_s".into(), args.warmup_s.to_string());
    settings.insert("duration_s".into(), args.duration_s.to_string());
    settings.insert("database_max_connections".into(), args.pool.to_string());
    settings.insert("collect_clients".into(), args.collect_clients.to_string());
    settings.insert("max_concurrent_calls_per_app".into(), "512".into());
    settings.insert(
        "channels".into(),
        args.channels
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let mut bench = Bench {
        warmup: Duration::from_secs(args.warmup_s),
        duration: Duration::from_secs(args.duration_s),
        http: http::client(),
        results: Results {
            started: stamp.clone(),
            machine: machine(&args.pg_admin),
            settings,
            records: Vec::new(),
            total_s: 0.0,
        },
        file: file.clone(),
        tmp: tmp.clone(),
        args: args.clone(),
        database_url: String::new(),
        subscribe_template: None,
    };
    println!("results: {}", file.display());
    for (key, value) in &bench.results.machine {
        println!("  {key}: {value}");
    }
    for backend in &args.backends {
        run_backend(&mut bench, backend).await?;
    }
    bench.results.total_s = started.elapsed().as_secs_f64();
    bench.save()?;
    let markdown = report::markdown(&bench.results);
    std::fs::write(args.out_dir.join(format!("results-{stamp}.md")), &markdown)?;
    std::fs::copy(&file, args.out_dir.join("latest.json"))?;
    std::fs::write(args.out_dir.join("latest.md"), &markdown)?;
    println!("\n{markdown}");
    println!("total: {:.0} s", bench.results.total_s);
    Ok(())
}

/// Every measurement of one backend: the database's limits, then per
/// upstream latency the gateway's runs against a fresh database and fake.
async fn run_backend(bench: &mut Bench, backend: &str) -> anyhow::Result<()> {
    let mut channels = bench.args.channels.clone();
    channels.sort_unstable();
    channels.dedup();
    measure_database_limits(bench, backend).await?;
    // The legacy send rate per (latency, clients): what the growth runs
    // size their credentials by.
    let mut previous: BTreeMap<(u64, usize), f64> = BTreeMap::new();
    for latency in bench.args.latencies.clone() {
        run_latency(bench, backend, latency, &channels, &mut previous).await?;
    }
    Ok(())
}

/// A figure of `backend` on no particular channel, with no batch and no
/// stored credentials (the measures that have them set them).
fn figure(backend: &str, measure: &str, latency: u64, clients: usize, stats: Stats) -> Record {
    Record {
        backend: backend.into(),
        upstream_latency_ms: latency,
        measure: measure.into(),
        channel: String::new(),
        clients,
        batch: 0,
        stored: 0,
        stats,
        note: String::new(),
    }
}

/// The limits of the database, alone on the machine: the bare claim and the
/// bare batched insert.
async fn measure_database_limits(bench: &mut Bench, backend: &str) -> anyhow::Result<()> {
    let args = bench.args.clone();
    let tmp = bench.tmp.to_string_lossy().to_string();
    let (warmup, duration) = (bench.warmup, bench.duration);
    println!("== {backend}: limits of the database");
    let limit = LimitDb::create(backend, &tmp, &args.pg_admin).await?;
    limit.seed_live(LIMIT_APP, "lu", 10_000, 100).await?;
    if backend == "sqlite" {
        let stats = limit
            .bare_claim_sqlite(LIMIT_APP, "lu", 10_000, warmup, duration)
            .await?;
        bench.record(figure(backend, "bare_claim", 0, 1, stats))?;
    } else {
        let mut levels: Vec<usize> = args
            .clients
            .iter()
            .map(|c| (*c).min(args.pool as usize))
            .collect();
        levels.dedup();
        for clients in levels {
            let stats =
                limit.bare_claim_pgbench(&tmp, LIMIT_APP, "lu", 10_000, clients, duration)?;
            bench.record(figure(backend, "bare_claim", 0, clients, stats))?;
        }
    }
    // SQLite has one writer: more clients would only queue.
    let insert_clients = if backend == "sqlite" {
        1
    } else {
        args.collect_clients
    };
    for batch in [1, 500] {
        let stats = limit
            .bare_insert(LIMIT_APP, batch, insert_clients, warmup, duration)
            .await?;
        bench.record(Record {
            batch,
            ..figure(backend, "bare_insert", 0, insert_clients, stats)
        })?;
    }
    limit.close().await;
    Ok(())
}

/// The runs at one upstream latency, on a fresh gateway database with its
/// own fake WeChat and gateway.
async fn run_latency(
    bench: &mut Bench,
    backend: &str,
    latency: u64,
    channels: &[Channel],
    previous: &mut BTreeMap<(u64, usize), f64>,
) -> anyhow::Result<()> {
    println!("== {backend}: fake WeChat latency {latency} ms");
    let database_url = fresh_gateway_database(bench, backend, latency).await?;
    let mut fake = Proc::spawn(
        "fake",
        bench.fake_command(latency),
        &bench.tmp.join(format!("fake-{backend}-{latency}.log")),
    )?;
    wait_until_up(
        &bench.http,
        &format!("{}/cgi-bin/token", bench.fake_url()),
        &mut fake,
    )
    .await?;
    let label = format!("{backend}-{latency}");
    let mut gateway = bench.start_gateway(&database_url, &label).await?;
    bench.database_url = database_url.clone();
    bench.subscribe_template = subscribe_template(bench, channels).await?;
    if latency == 0 {
        measure_collection(bench, backend).await?;
    }
    measure_gateway_sends(bench, backend, latency, channels, previous).await?;
    bench.rss(backend, latency, &gateway, "after collect and send runs")?;
    measure_fake_direct(bench, backend, latency, channels).await?;
    gateway = broadcast::measure_broadcasts(bench, backend, latency, &label, gateway).await?;
    if latency == 0 {
        gateway = measure_growth(bench, backend, &label, gateway, previous).await?;
    }
    gateway.stop();
    fake.stop();
    Ok(())
}

/// An empty gateway database for the runs at `latency`: a new SQLite file,
/// or a recreated PostgreSQL database.
async fn fresh_gateway_database(
    bench: &Bench,
    backend: &str,
    latency: u64,
) -> anyhow::Result<String> {
    if backend == "sqlite" {
        let path = format!("{}/gateway-{latency}.db", bench.tmp.to_string_lossy());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        Ok(format!("sqlite://{path}"))
    } else {
        let name = format!("formid_bench_{latency}");
        db::recreate_pg_database(&bench.args.pg_admin, &name).await?;
        Ok(db::pg_url(&bench.args.pg_admin, &name))
    }
}

/// A subscribe template of SEND_APP added through the gateway, when
/// subscribe sends are measured.
async fn subscribe_template(bench: &Bench, channels: &[Channel]) -> anyhow::Result<Option<String>> {
    if !channels.contains(&Channel::Subscribe) {
        return Ok(None);
    }
    let id = http::add_template_via_gateway(&bench.http, &bench.gateway_url(), SEND_APP).await?;
    println!("    subscribe template {id} added through the gateway");
    Ok(Some(id))
}

/// Collection through the gateway, one credential and 500 per request.
async fn measure_collection(bench: &mut Bench, backend: &str) -> anyhow::Result<()> {
    let collect_clients = bench.args.collect_clients;
    for batch in [1usize, 500] {
        let url = Arc::new(format!(
            "{}/v1/apps/{SEND_APP}/credentials",
            bench.gateway_url()
        ));
        let prefix = Arc::new(format!("c{batch}u"));
        let http = bench.http.clone();
        let stats = closed_loop(collect_clients, bench.warmup, bench.duration, move |n| {
            http::collect(http.clone(), url.clone(), prefix.clone(), batch, n)
        })
        .await;
        bench.record(Record {
            batch,
            ..figure(backend, "collect", 0, collect_clients, stats)
        })?;
    }
    Ok(())
}

/// Gateway sends, the channels side by side at each client count; each run
/// sized by the last rate of its channel.
async fn measure_gateway_sends(
    bench: &mut Bench,
    backend: &str,
    latency: u64,
    channels: &[Channel],
    previous: &mut BTreeMap<(u64, usize), f64>,
) -> anyhow::Result<()> {
    let mut last_rate: BTreeMap<Channel, f64> = BTreeMap::new();
    for clients in bench.args.clients.clone() {
        for &channel in channels {
            let rate = last_rate.get(&channel).copied().unwrap_or(0.0);
            let budget = bench.budget(latency, clients, rate);
            let prefix = match channel {
                Channel::Template => format!("s{clients}"),
                Channel::Subscribe => format!("b{clients}"),
            };
            let stats = bench
                .gateway_sends(SEND_APP, &prefix, channel, clients, budget)
                .await?;
            last_rate.insert(channel, stats.rate);
            if channel == Channel::Template {
                previous.insert((latency, clients), stats.rate);
            }
            bench.record(figure(backend, "send", latency, clients, stats).on(channel))?;
        }
    }
    Ok(())
}

/// The same sends straight to the fake: what the gateway's runs are
/// compared with.
async fn measure_fake_direct(
    bench: &mut Bench,
    backend: &str,
    latency: u64,
    channels: &[Channel],
) -> anyhow::Result<()> {
    let mut last_rate: BTreeMap<Channel, f64> = BTreeMap::new();
    for clients in bench.args.clients.clone() {
        for &channel in channels {
            let rate = last_rate.get(&channel).copied().unwrap_or(0.0);
            let budget = bench.budget(latency, clients, rate);
            let stats = bench.fake_direct(channel, clients, budget).await?;
            last_rate.insert(channel, stats.rate);
            bench.record(figure(backend, "fake_direct", latency, clients, stats).on(channel))?;
        }
    }
    Ok(())
}

/// Sends (WeChat latency 0) as the ledger grows to each size of dead
/// credentials; the gateway is restarted around each seed, and the one
/// running at the end is returned.
async fn measure_growth(
    bench: &mut Bench,
    backend: &str,
    label: &str,
    mut gateway: Proc,
    previous: &BTreeMap<(u64, usize), f64>,
) -> anyhow::Result<Proc> {
    let database_url = bench.database_url.clone();
    let mut stored = 0;
    for size in bench.args.growth.clone() {
        // Dead rows go in with the gateway stopped, as a seed, not a measurement.
        gateway.stop();
        let seeding = Instant::now();
        db::insert_dead_rows(&database_url, GROWTH_APP, "g", GROWTH_USERS, stored, size).await?;
        println!(
            "    stored {size} dead credentials (+{} in {:.1}s)",
            size - stored,
            seeding.elapsed().as_secs_f64()
        );
        stored = size;
        gateway = bench
            .start_gateway(&database_url, &format!("{label}-{size}"))
            .await?;
        for clients in bench.args.growth_clients.clone() {
            let rate = previous.get(&(0, clients)).copied().unwrap_or(0.0);
            let budget = bench.budget(0, clients, rate);
            let stats = bench
                .gateway_sends(
                    GROWTH_APP,
                    &format!("g{size}c{clients}"),
                    Channel::Template,
                    clients,
                    budget,
                )
                .await?;
            bench.record(Record {
                stored: size,
                ..figure(backend, "growth_send", 0, clients, stats)
            })?;
        }
        bench.rss(
            backend,
            0,
            &gateway,
            &format!("growth gateway, {size} stored"),
        )?;
    }
    Ok(gateway)
}

/// The fake WeChat at `port`, answering after `latency` ms, knowing `apps`
/// (each with the bench's secret and template).
pub(crate) fn fake_command(fake_bin: &Path, port: u16, latency: u64, apps: &[String]) -> Command {
    let mut command = Command::new(fake_bin);
    command.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--latency-ms",
        &latency.to_string(),
    ]);
    for app in apps {
        command
            .arg("--app")
            .arg(format!("{app}:{}", http::SECRET))
            .arg("--template")
            .arg(format!("{app}:{}", http::TEMPLATE));
    }
    command
}

/// The gateway's configuration for a bench run.
pub(crate) fn gateway_config_text(
    gateway_port: u16,
    database_url: &str,
    pool: u32,
    fake_port: u16,
) -> String {
    format!(
        r#"listen = "127.0.0.1:{gateway_port}"
database_url = "{database_url}"
database_max_connections = {pool}

[wechat]
base_url = "http://127.0.0.1:{fake_port}"
max_concurrent_calls_per_app = 512

[broadcasts]
# As fast as the gateway goes: the runs measure it, not the pacing.
rate_per_sec = 10000
batch = 1000

[ledger]
# The sweeper runs at start; not again during the measurements.
sweep_interval_secs = 3600

[apps.{SEND_APP}]
secret = "{secret}"

[apps.{GROWTH_APP}]
secret = "{secret}"

[api_keys.bench]
key = "{key}"
apps = ["*"]
scopes = ["collect", "send", "admin"]
"#,
        secret = http::SECRET,
        key = http::API_KEY,
    )
}

/// UTC time as YYYYMMDD-HHMMSS, without a date crate.
fn chrono_like_stamp() -> String {
    let output = Command::new("date").args(["-u", "+%Y%m%d-%H%M%S"]).output();
    output
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| db::now_ms().to_string())
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine(pg_admin: &str) -> BTreeMap<String, String> {
    let mut machine = BTreeMap::new();
    machine.insert("nproc".into(), command_line("nproc", &[]));
    let cpu = command_line("lscpu", &[]);
    let model = cpu
        .lines()
        .find_map(|line| line.strip_prefix("Model name:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    machine.insert("cpu".into(), model);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    machine.insert("memory".into(), memory);
    machine.insert("kernel".into(), command_line("uname", &["-sr"]));
    machine.insert(
        "postgres".into(),
        command_line("psql", &[pg_admin, "-Atc", "SHOW server_version"]),
    );
    machine.insert(
        "sqlite".into(),
        "bundled with sqlx (libsqlite3-sys)".to_owned(),
    );
    machine.insert("rustc".into(), command_line("rustc", &["--version"]));
    machine.insert(
        "date".into(),
        command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    );
    machine
}
