//! `formid-demo` (`cargo run -p formid-demo`): the gateway on its embedded
//! default (SQLite) with the fake WeChat beside it. It runs the subscribe
//! flow end to end against the fake and prints each step (the flow that works
//! on WeChat today), then prints the curl lines of the legacy formId round
//! trip, and serves until stopped. The fake pushes subscribe events to the
//! gateway as WeChat does (safe mode): they record the user's decisions and
//! each delivery's final result, shown on the message.
//!
//! A binary of its own, so that the production `formid-gateway` binary never
//! links the fake.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use tracing_subscriber::EnvFilter;

mod session_flow;
mod subscribe_flow;
mod webhook_receiver;

use fake_wechat::{FakeWeChat, FakeWeChatServer, PushFormat, PushMode, PushTarget};
use formid_gateway::clock::SystemClock;
use formid_gateway::config::Settings;
use formid_gateway::startup::Application;

/// Runs the gateway on SQLite with a fake WeChat and prints a round trip to try.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct DemoArgs {
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of the fake WeChat.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub fake_listen: String,
    /// Address of the gateway's `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics_listen: String,
    /// The SQLite ledger.
    #[arg(long, default_value = "sqlite://data/demo.db")]
    pub database_url: String,
}

const APPID: &str = "wxdemo0000000001";
const TEMPLATE_ID: &str = "order-shipped-demo-template";
const OPENID: &str = "o-demo-user-0001";

/// The log filter once the walkthrough is printed and the demo serves.
const SERVING_FILTER: &str = "info,sqlx=warn,actix_server=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The walkthrough goes to stdout and the log to stderr, which a terminal
    // interleaves. So while the demo narrates, only warnings and errors are
    // logged; once it has printed its last step, the serving filter applies.
    // A `RUST_LOG` is taken as given throughout.
    let from_env = EnvFilter::try_from_default_env().ok();
    let quiet_while_narrating = from_env.is_none();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(from_env.unwrap_or_else(|| EnvFilter::new("warn")))
        .with_filter_reloading();
    let filter = builder.reload_handle();
    builder.init();
    let narrated = move || {
        if quiet_while_narrating {
            if let Err(error) = filter.reload(EnvFilter::new(SERVING_FILTER)) {
                eprintln!("the demo's log filter could not be set: {error}");
            }
        }
    };
    run(DemoArgs::parse(), narrated).await
}

/// Runs the demo until Ctrl-C or SIGTERM; `narrated` is called once the
/// walkthrough is printed.
async fn run(args: DemoArgs, narrated: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let secret = random_hex(16);
    let api_key = format!("demo-{}", random_hex(16));
    let fake = FakeWeChat::new(fake_wechat::SystemClock);
    fake.register_app(APPID, &secret);
    fake.register_template(APPID, TEMPLATE_ID);
    // WeChat's message push to the gateway in safe mode. Grants come from
    // the frontend's posts (the default); the pushes record decisions and
    // deliveries.
    let push_token = random_hex(8);
    let encoding_aes_key = random_hex(22)[..43].to_owned();
    let fake_server = FakeWeChatServer::start(fake.clone(), &args.fake_listen)
        .await
        .context("starting the fake WeChat")?;
    let settings = demo_settings(
        &args,
        &fake_server.base_url,
        &secret,
        &api_key,
        &push_token,
        &encoding_aes_key,
    )?;
    let application = Application::build(settings, Arc::new(SystemClock)).await?;
    let gateway = served_at(&args.listen, application.port());
    push_to(&fake, &gateway, &push_token, &encoding_aes_key)?;
    let metrics = served_at(
        &args.metrics_listen,
        application.metrics_port().unwrap_or_default(),
    ) + "/metrics";
    println!(
        "{}",
        banner(&gateway, &fake_server.base_url, &api_key, &metrics)
    );
    // The server answers once `run_until_stopped` is polled (its listener is
    // already bound), so the flow runs beside it.
    let flow = subscribe_flow::Flow {
        gateway: gateway.clone(),
        fake: fake_server.base_url.clone(),
        key: api_key.clone(),
        appid: APPID.to_owned(),
        // A user of this run: the ledger in ./data outlives the fake, whose
        // users and templates are new on every run.
        openid: format!("o-demo-sub-{}", random_hex(4)),
        request_id: format!("prompt-{}", random_hex(8)),
    };
    let sessions = session_flow::SessionFlow {
        gateway: gateway.clone(),
        fake: fake_server.base_url.clone(),
        key: api_key.clone(),
        appid: APPID.to_owned(),
        openid: format!("o-demo-me-{}", random_hex(4)),
        legacy_template: TEMPLATE_ID.to_owned(),
    };
    let legacy = legacy_instructions(&gateway, &fake_server.base_url, &api_key);
    let receiver = webhook_receiver::Receiver::start()?;
    let (hook_gateway, hook_key) = (gateway.clone(), api_key.clone());
    tokio::spawn(async move {
        let secret = receiver.register(&hook_gateway, &hook_key, APPID).await;
        match flow.run().await {
            Ok(steps) => println!("{steps}"),
            Err(error) => println!("\nThe subscribe flow stopped: {error:#}"),
        }
        match sessions.run().await {
            Ok(steps) => println!("{steps}"),
            Err(error) => println!("\nThe mini-program flow stopped: {error:#}"),
        }
        report_events(receiver, secret, &hook_gateway, &hook_key).await;
        println!("{legacy}");
        narrated();
    });
    let served = application.run_until_stopped().await;
    fake_server.stop().await;
    served
}

/// The address a listener on `listen` serves at, `port` being the one it
/// bound (`listen` may ask for port 0).
fn served_at(listen: &str, port: u16) -> String {
    format!("http://{}", listen.replace(":0", &format!(":{port}")))
}

/// Prints the events the demo's receiver got, verified, and stops it.
async fn report_events(
    receiver: webhook_receiver::Receiver,
    registered: anyhow::Result<(String, String)>,
    gateway: &str,
    key: &str,
) {
    match registered {
        Ok((id, secret)) => {
            // The delivery worker polls every 100 ms.
            tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
            println!("{}", receiver.report(&secret));
            receiver.unregister(gateway, key, APPID, &id).await;
        }
        Err(error) => println!("\nThe webhook receiver could not be registered: {error:#}"),
    }
    receiver.stop().await;
}

/// The gateway's settings for the demo: SQLite, the fake WeChat, one app
/// with its push keys, one admin key, and a webhook receiver on loopback.
fn demo_settings(
    args: &DemoArgs,
    fake: &str,
    secret: &str,
    api_key: &str,
    push_token: &str,
    encoding_aes_key: &str,
) -> anyhow::Result<Settings> {
    serde_json::from_value(json!({
        "listen": args.listen,
        "database_url": args.database_url,
        "wechat": {"base_url": fake},
        "apps": {APPID: {
            "secret": secret,
            "push_token": push_token,
            "encoding_aes_key": encoding_aes_key,
        }},
        "api_keys": {"demo": {"key": api_key, "apps": ["*"], "scopes": ["admin"]}},
        // The demo's own receiver listens on loopback.
        "webhooks": {"allow_private_targets": true, "poll_ms": 100},
        "metrics": {"listen": args.metrics_listen},
    }))
    .context("building the demo settings")
}

/// Points the fake's message push at the gateway, in safe mode.
fn push_to(
    fake: &FakeWeChat,
    gateway: &str,
    push_token: &str,
    encoding_aes_key: &str,
) -> anyhow::Result<()> {
    fake.set_push_target(
        APPID,
        PushTarget::new(
            format!("{gateway}/wechat/push/{APPID}"),
            push_token.to_owned(),
            encoding_aes_key.to_owned(),
            PushMode::Safe,
            PushFormat::Json,
        ),
    )
    .map_err(|error| anyhow::anyhow!("setting the fake's push target: {error}"))
}

/// The addresses and the key (the round-trip test reads these lines).
fn banner(gateway: &str, fake: &str, key: &str, metrics: &str) -> String {
    format!(
        r#"
formid-gateway demo: the gateway on SQLite, WeChat faked beside it.
  gateway     {gateway}
  metrics     {metrics}
  fake WeChat {fake}
  API key     {key}   (admin scope, every app)
  app         {APPID}"#
    )
}

/// The legacy formId round trip, as curl lines to run by hand.
fn legacy_instructions(gateway: &str, fake: &str, key: &str) -> String {
    let auth = format!("-H 'Authorization: Bearer {key}'");
    let app = format!("{gateway}/v1/apps/{APPID}");
    format!(
        r#"
== The legacy formId flow (template messages; real WeChat now answers their send with 45103), to run by hand ==

# 1. A user submits a <form report-submit> in the mini-program; WeChat (the fake) gives the frontend a formId:
FORM_ID=$(curl -s -X POST {fake}/fake/apps/{APPID}/users/{OPENID}/form_id | sed -E 's/.*"form_id":"([^"]+)".*/\1/'); echo $FORM_ID

# 2. The frontend posts it to the gateway:
curl -s -X POST {app}/credentials {auth} -H 'Content-Type: application/json' \
  -d '{{"openid":"{OPENID}","kind":"form_id","value":"'$FORM_ID'"}}'; echo

# 3. What the user can receive now:
curl -s {app}/users/{OPENID}/quota {auth}; echo

# 4. A business service notifies the user; the gateway spends the formId:
curl -s -X POST {app}/messages {auth} -H 'Content-Type: application/json' \
  -d '{{"touser":"{OPENID}","template_id":"{TEMPLATE_ID}","page":"pages/order/detail?id=1024","data":{{"keyword1":{{"value":"Order 1024"}},"keyword2":{{"value":"Shipped"}}}}}}'; echo

# 5. Again: the formId is spent, so the answer is 409 no_credential:
curl -s -X POST {app}/messages {auth} -H 'Content-Type: application/json' \
  -d '{{"touser":"{OPENID}","template_id":"{TEMPLATE_ID}"}}'; echo

# The token other servers of the app use:
curl -s {app}/access_token {auth}; echo

Ctrl-C stops the demo.
"#
    )
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}
