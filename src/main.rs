//! The `formid-gateway` command: `serve` (the default), and `keys` (API keys
//! kept in the ledger: create, list, revoke). The demo and the fake WeChat
//! are binaries of their own (`formid-demo`, `fake-wechat`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use formid_gateway::clock::SystemClock;
use formid_gateway::config::Settings;
use formid_gateway::startup::Application;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Keeps WeChat push credentials in a SQL ledger and spends them safely"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the gateway (configuration: formid-gateway.toml and FORMID__* variables).
    Serve {
        /// A configuration file; default ./formid-gateway.toml when present.
        #[arg(long, env = "FORMID_CONFIG")]
        config: Option<PathBuf>,
    },
    /// API keys kept in the ledger (beside the configuration's `[api_keys]`).
    Keys {
        /// A configuration file; default ./formid-gateway.toml when present.
        #[arg(long, env = "FORMID_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Creates a key and prints it once: only its hash is kept.
    Create {
        /// A name of your choosing (letters, digits, - and _).
        #[arg(long)]
        name: String,
        /// AppIDs (comma-separated), or * for every app.
        #[arg(long, value_delimiter = ',', required = true)]
        apps: Vec<String>,
        /// collect, send, token, admin (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Lists the keys: names, apps, scopes, created, last used (never a key).
    List,
    /// Revokes a key by name; every instance refuses it within keys.cache_secs.
    Revoke {
        /// The key's name.
        name: String,
    },
}

/// What the process logs unless `RUST_LOG` says otherwise.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,actix_server=warn";

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// glibc's allocator gives each thread that meets contention an arena of
/// its own (up to 8 per core) and keeps what is freed in each: a broadcast's
/// burst of sends on every worker thread left about 25 MB of freed memory
/// resident. Four arenas kept the send rate and most of the saving
/// (BENCHMARKS.md, "Peak memory"). Set before the runtime starts threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "mallopt is glibc's, reached only by FFI")]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; no thread but this
    // one exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Other allocators keep no per-thread arenas to limit.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn run() -> anyhow::Result<()> {
    match Cli::parse()
        .command
        .unwrap_or(Command::Serve { config: None })
    {
        Command::Serve { config } => {
            // Read first: they say how to log. A configuration that cannot be
            // read stops the process with the reason on stderr.
            let settings = Settings::load(config.as_deref())?;
            formid_gateway::telemetry::init(DEFAULT_LOG_FILTER, settings.log_format);
            // At most one line a minute about clients that send garbage.
            tokio::spawn(formid_gateway::telemetry::report_connection_errors(
                std::time::Duration::from_secs(60),
            ));
            let application = Application::build(settings, Arc::new(SystemClock)).await?;
            tracing::info!(port = application.port(), "formid-gateway listening");
            application.run_until_stopped().await
        }
        Command::Keys { config, command } => keys(config, command).await,
    }
}

/// Runs a `keys` subcommand against the configured ledger.
async fn keys(config: Option<PathBuf>, command: KeysCommand) -> anyhow::Result<()> {
    use formid_gateway::keys::{parse_scope, StoredKeys};
    let settings = Settings::load(config.as_deref())?;
    formid_gateway::telemetry::init(DEFAULT_LOG_FILTER, settings.log_format);
    settings.validate()?;
    let storage = formid_gateway::storage::connect(&settings.database_url, 1).await?;
    let keys = StoredKeys::new(storage, Arc::new(SystemClock), 0);
    match command {
        KeysCommand::Create { name, apps, scopes } => {
            for app in &apps {
                anyhow::ensure!(
                    app == "*" || settings.apps.contains_key(app),
                    "--apps: {app:?} is not a configured app"
                );
            }
            let scopes = scopes
                .iter()
                .map(|scope| {
                    parse_scope(scope).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--scopes: unknown scope {scope:?} (collect, send, token, admin)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let request = formid_gateway::keys::KeyRequest { name, apps, scopes };
            let created = keys.create(&request).await?;
            println!("{}", secrecy::ExposeSecret::expose_secret(&created.key));
            eprintln!(
                "key {:?} created; it is shown only this once",
                created.listing.name
            );
        }
        KeysCommand::List => {
            println!("name\tkey_id\tapps\tscopes\tcreated_at\tlast_used_at\trevoked_at");
            for key in keys.list().await? {
                println!("{}", formid_gateway::keys::listing_line(&key));
            }
        }
        KeysCommand::Revoke { name } => {
            anyhow::ensure!(keys.revoke(&name).await?, "no live key is named {name:?}");
            eprintln!("key {name:?} revoked");
        }
    }
    Ok(())
}
