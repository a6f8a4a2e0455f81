//! The `formid-gateway` command: `serve` (the default). The demo and the fake
//! WeChat are binaries of their own (`formid-demo`, `fake-wechat`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,actix_server=warn")),
        )
        .init();
    match Cli::parse()
        .command
        .unwrap_or(Command::Serve { config: None })
    {
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())?;
            let application = Application::build(settings, Arc::new(SystemClock)).await?;
            tracing::info!(port = application.port(), "formid-gateway listening");
            application.run_until_stopped().await
        }
    }
}
