//! The `fake-wechat` command line: a standalone fake for demos and the benchmark.

use std::time::Duration;

use anyhow::Context;

use crate::{FakeWeChat, FakeWeChatServer, SystemClock};

/// Arguments of the `fake-wechat` command.
#[derive(clap::Args, Debug, Clone)]
pub struct FakeWeChatArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: String,

    /// An app and its secret, as APPID:SECRET (repeatable).
    #[arg(long = "app", value_name = "APPID:SECRET", value_parser = parse_pair)]
    pub apps: Vec<(String, String)>,

    /// A template registered for an app, as APPID:TEMPLATE_ID (repeatable).
    #[arg(long = "template", value_name = "APPID:TEMPLATE_ID", value_parser = parse_pair)]
    pub templates: Vec<(String, String)>,

    /// Delay before every /cgi-bin/ answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// How long a new prepay_id answers 41028 (payment data syncing), in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub prepay_sync_lag_ms: u64,

    /// `expires_in` of issued access tokens, in seconds.
    #[arg(long, default_value_t = 7200)]
    pub token_expires_in: i64,
}

/// Splits `LEFT:RIGHT` at the first ':' (both sides non-empty).
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((left, right)) if !left.is_empty() && !right.is_empty() => {
            Ok((left.to_owned(), right.to_owned()))
        }
        _ => Err(format!("expected LEFT:RIGHT, got {s:?}")),
    }
}

/// Runs the fake on the wall clock until Ctrl-C.
pub async fn run_cli(args: FakeWeChatArgs) -> anyhow::Result<()> {
    let fake = FakeWeChat::new(SystemClock);
    for (appid, secret) in &args.apps {
        fake.register_app(appid, secret);
    }
    for (appid, template_id) in &args.templates {
        fake.register_template(appid, template_id);
    }
    fake.set_latency(Duration::from_millis(args.latency_ms));
    fake.set_prepay_sync_lag(Duration::from_millis(args.prepay_sync_lag_ms));
    fake.set_token_expires_in(args.token_expires_in);

    let server = FakeWeChatServer::start(fake, &args.listen)
        .await
        .with_context(|| format!("starting fake wechat on {}", args.listen))?;
    tracing::info!(
        base_url = %server.base_url,
        apps = args.apps.len(),
        "fake wechat running; Ctrl-C to stop"
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.stop().await;
    Ok(())
}
