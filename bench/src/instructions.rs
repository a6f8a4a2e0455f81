//! `formid-bench instructions`: the instructions a gateway runs per send,
//! counted by callgrind.
//!
//! Why beside the rates: on a shared machine a send rate moves by 10–40 %
//! between runs of the same binary, more than most changes to the send path
//! cost. An instruction count does not depend on what else the machine is
//! doing: the same binary, backend and concurrency give the same count
//! within a few percent, so two gateways (`--gateway-bin`) can be compared
//! on any machine, at any time. It counts the gateway's own process only
//! (with SQLite, which runs inside it); PostgreSQL's server and the kernel
//! are not in it, and neither are cache misses or lock waits.
//!
//! The gateway runs under `valgrind --tool=callgrind` with counting off;
//! credentials are seeded, counting is turned on, `--warmup-sends` sends run
//! (caches, prepared statements, the token), the counters are zeroed,
//! `--sends` sends run from `--clients` concurrent clients, and the counters
//! are dumped. Every send must succeed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::http::{self, SendBody};
use crate::load::Outcome;
use crate::procs::{wait_until_up, Proc};
use crate::{db, fake_command, gateway_config_text, MAX_USERS, SEND_APP};

#[derive(clap::Args, Clone)]
pub struct InstructionsArgs {
    /// The release binary of the gateway.
    #[arg(long, default_value = "target/release/formid-gateway")]
    gateway_bin: PathBuf,
    /// The release binary of the fake WeChat (package fake-wechat).
    #[arg(long, default_value = "target/release/fake-wechat")]
    fake_bin: PathBuf,
    /// `sqlite` or `postgres`.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Sends counted.
    #[arg(long, default_value_t = 1_500)]
    sends: u64,
    /// Sends run, and counted, before the counters are zeroed.
    #[arg(long, default_value_t = 300)]
    warmup_sends: u64,
    /// Concurrent clients (group commit batches what they send at once).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Any database on the PostgreSQL server; the bench creates its own.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_admin: String,
    #[arg(long, default_value_t = 18_090)]
    gateway_port: u16,
    #[arg(long, default_value_t = 19_110)]
    fake_port: u16,
}

/// Runs the count and prints it.
pub async fn run(args: InstructionsArgs) -> anyhow::Result<()> {
    for tool in ["valgrind", "callgrind_control"] {
        which(tool)?;
    }
    let tmp = std::env::temp_dir().join(format!("formid-instructions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let database_url = gateway_database(&args, &tmp).await?;
    let http = http::client();
    let fake_url = format!("http://127.0.0.1:{}", args.fake_port);
    let gateway_url = format!("http://127.0.0.1:{}", args.gateway_port);

    let mut fake = Proc::spawn(
        "fake",
        fake_command(&args.fake_bin, args.fake_port, 0, &[SEND_APP.to_owned()]),
        &tmp.join("fake.log"),
    )?;
    wait_until_up(&http, &format!("{fake_url}/cgi-bin/token"), &mut fake).await?;
    let counts = tmp.join("callgrind.out");
    let mut gateway = spawn_counted_gateway(&args, &tmp, &database_url, &counts)?;
    wait_until_up(&http, &format!("{gateway_url}/readyz"), &mut gateway).await?;

    let users = http::seed_users(
        &http,
        &fake_url,
        &gateway_url,
        SEND_APP,
        "icount",
        args.sends + args.warmup_sends,
        MAX_USERS,
    )
    .await
    .context("seeding credentials")?;
    let users = Arc::new(users);
    let url = Arc::new(format!("{gateway_url}/v1/apps/{SEND_APP}/messages"));
    let sends =
        |first: u64, count: u64| count_sends(&http, &url, &users, args.clients, first, count);

    let pid = gateway.pid().to_string();
    callgrind_control(&["--instr=on", &pid])?;
    sends(0, args.warmup_sends).await?;
    callgrind_control(&["--zero", &pid])?;
    sends(args.warmup_sends, args.sends).await?;
    callgrind_control(&["--dump", &pid])?;
    let (counted, dump) = dumped_instructions(&counts)?;
    gateway.stop();
    fake.stop();
    print_count(&args, counted, &dump);
    Ok(())
}

/// The gateway's database: a file in `tmp`, or a recreated PostgreSQL
/// database.
async fn gateway_database(args: &InstructionsArgs, tmp: &Path) -> anyhow::Result<String> {
    Ok(match args.backend.as_str() {
        "sqlite" => format!("sqlite://{}/gateway.db", tmp.display()),
        "postgres" => {
            let name = "formid_bench_instructions";
            db::recreate_pg_database(&args.pg_admin, name).await?;
            db::pg_url(&args.pg_admin, name)
        }
        other => bail!("unknown backend {other}: sqlite or postgres"),
    })
}

/// The gateway under callgrind, counting nothing until told to; its dumps
/// go to `counts`.
fn spawn_counted_gateway(
    args: &InstructionsArgs,
    tmp: &Path,
    database_url: &str,
    counts: &Path,
) -> anyhow::Result<Proc> {
    let config = tmp.join("gateway.toml");
    std::fs::write(
        &config,
        gateway_config_text(args.gateway_port, database_url, 32, args.fake_port),
    )?;
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg(format!("--callgrind-out-file={}", counts.display()))
        .arg(&args.gateway_bin)
        .arg("serve")
        .arg("--config")
        .arg(&config);
    Proc::spawn("gateway", command, &tmp.join("gateway.log"))
}

fn print_count(args: &InstructionsArgs, counted: u64, dump: &Path) {
    println!(
        "{}: {:.0} instructions per send ({} sends from {} clients, {} backend, after {} warm-up sends)",
        args.gateway_bin.display(),
        counted as f64 / args.sends as f64,
        args.sends,
        args.clients,
        args.backend,
        args.warmup_sends,
    );
    println!(
        "  the counts, for callgrind_annotate --inclusive=yes: {}",
        dump.display()
    );
}

/// Sends `count` template messages, numbered from `first`, from `clients`
/// concurrent clients; fails unless every one succeeded.
async fn count_sends(
    http: &reqwest::Client,
    url: &Arc<String>,
    users: &Arc<Vec<String>>,
    clients: usize,
    first: u64,
    count: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(first));
    let body = Arc::new(SendBody::Template);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients.max(1) {
        let (http, url, users, body, next) = (
            http.clone(),
            url.clone(),
            users.clone(),
            body.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= first + count {
                    return anyhow::Ok(());
                }
                match http::gateway_send(http.clone(), url.clone(), users.clone(), body.clone(), n)
                    .await
                {
                    Outcome::Ok(_) => {}
                    Outcome::Exhausted => bail!("send {n}: no credential left"),
                    Outcome::Fail(why) => bail!("send {n} failed: {why}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn which(tool: &str) -> anyhow::Result<()> {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        bail!("{tool} is not on the PATH (Debian's package valgrind)");
    }
    Ok(())
}

fn callgrind_control(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("callgrind_control").args(args).output()?;
    if !output.status.success() {
        bail!(
            "callgrind_control {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The instructions in the last dump callgrind wrote (`<file>.<n>`, the
/// highest `n`): its `summary:` line, and the dump.
fn dumped_instructions(counts: &Path) -> anyhow::Result<(u64, PathBuf)> {
    let dir = counts.parent().context("the counts file has a directory")?;
    let prefix = format!(
        "{}.",
        counts
            .file_name()
            .context("the counts file has a name")?
            .to_string_lossy()
    );
    let last = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, dir.join(name)))
        })
        .max()
        .map(|(_, path)| path)
        .context("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(&last)?;
    let counted = text
        .lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .context("the dump has no summary line")?
        .trim()
        .parse()
        .context("reading the dump's summary")?;
    Ok((counted, last))
}
