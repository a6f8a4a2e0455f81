//! The `fake-wechat` command: the fake WeChat server alone, on the wall clock,
//! for demos and the benchmark.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use fake_wechat::FakeWeChatArgs;

/// Runs a fake WeChat server (token, stable_token and template send).
#[derive(Parser, Debug)]
#[command(
    version,
    about = "A fake WeChat server for tests, demos and the benchmark"
)]
struct Cli {
    #[command(flatten)]
    args: FakeWeChatArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,actix_server=warn")),
        )
        .init();
    fake_wechat::run_cli(Cli::parse().args).await
}
