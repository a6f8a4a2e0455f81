//! The demo's own webhook receiver: registered with the gateway before the
//! flow runs, it collects the events the flow causes, checks each signature
//! (Standard Webhooks: HMAC-SHA256 of `id.timestamp.body` under the secret
//! the gateway showed once) and prints them.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;
use serde_json::{json, Value};

use formid_gateway::webhooks::signing::sign;

/// One event as it arrived.
#[derive(Debug, Clone)]
struct Arrived {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

type Inbox = Arc<Mutex<Vec<Arrived>>>;

/// A receiver listening on loopback.
pub struct Receiver {
    pub url: String,
    inbox: Inbox,
    server: actix_web::dev::ServerHandle,
}

async fn receive(request: HttpRequest, body: web::Bytes, inbox: web::Data<Inbox>) -> HttpResponse {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    inbox.lock().expect("the inbox").push(Arrived {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    HttpResponse::NoContent().finish()
}

impl Receiver {
    /// Starts listening on a free loopback port.
    pub fn start() -> anyhow::Result<Self> {
        let inbox: Inbox = Arc::default();
        let data = web::Data::new(inbox.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .context("binding the demo's webhook receiver")?;
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            url: format!("http://127.0.0.1:{port}/events"),
            inbox,
            server: handle,
        })
    }

    /// Registers the receiver as an endpoint of `appid` for every event
    /// type; its id and the secret the gateway shows once.
    pub async fn register(
        &self,
        gateway: &str,
        key: &str,
        appid: &str,
    ) -> anyhow::Result<(String, String)> {
        let answer: Value = reqwest::Client::new()
            .post(format!("{gateway}/v1/apps/{appid}/webhooks"))
            .bearer_auth(key)
            .json(&json!({"url": self.url}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("the gateway's answer has no {name}"))
        };
        Ok((field("id")?, field("secret")?))
    }

    /// Switches the endpoint off (the ledger in ./data outlives this run's
    /// receiver).
    pub async fn unregister(&self, gateway: &str, key: &str, appid: &str, id: &str) {
        let _ = reqwest::Client::new()
            .post(format!("{gateway}/v1/apps/{appid}/webhooks/{id}/disable"))
            .bearer_auth(key)
            .send()
            .await;
    }

    /// The events received so far, each with its signature checked.
    pub fn report(&self, secret: &str) -> String {
        let mut out = String::from(
            "\n== Webhooks: the events of the flow, as the demo's own receiver got them ==\n",
        );
        let _ = writeln!(
            out,
            "# Registered with: curl -s -X POST …/webhooks -d '{{\"url\":\"{}\"}}' → the secret whsec_… (shown once)",
            self.url
        );
        for event in self.inbox.lock().expect("the inbox").iter() {
            let verified = event.timestamp.parse::<i64>().is_ok_and(|timestamp| {
                let expected = sign(secret, &event.id, timestamp, &event.body);
                event.signature.split(' ').any(|part| part == expected)
            });
            let body: Value = serde_json::from_str(&event.body).unwrap_or(Value::Null);
            let _ = writeln!(
                out,
                "  {} {} ({}): {}",
                body["type"].as_str().unwrap_or("?"),
                event.id,
                if verified {
                    "signature verified"
                } else {
                    "SIGNATURE WRONG"
                },
                body["data"]
            );
        }
        out
    }

    /// Stops listening.
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}
