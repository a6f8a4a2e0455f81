//! The `formid-gateway` command: `serve` (the default). The demo and the fake
//! WeChat are binaries of their own (`formid-demo`, `fake-wechat`).

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    formid_gateway::telemetry::init("info,sqlx=warn,actix_server=warn");
    // At most one line a minute about clients that send garbage.
    tokio::spawn(formid_gateway::telemetry::report_connection_errors(
        std::time::Duration::from_secs(60),
    ));
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
