//! The delivery worker: takes due events from the outbox under a lease and
//! sends each to its endpoint, signed, with bounded concurrency per
//! endpoint; records every attempt and what follows it (the core's retry
//! schedule and endpoint rule).
//!
//! It shares nothing with the send path but the database: a send writes its
//! event and is answered; whether an endpoint is slow, down or hostile
//! changes nothing for sends (a call is bounded by its timeouts, the answer
//! by [`MAX_RESPONSE_BYTES`], and the worker's own lease outlasts both).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use reqwest::redirect::Policy;
use tokio::sync::Semaphore;

use formid_core::webhooks::{
    after_failure, endpoint_after, rfc3339_ms, verdict, DeliveryOutcome, EndpointChange, EventBody,
    EventData, EventType, OutboxState, Retry,
};

use super::signing::signature_header;
use super::target::{TargetError, TargetRule};
use super::WebhookSettings;
use crate::clock::{ms, SharedClock};
use crate::storage::{
    new_event_id, new_lease_token, DeliveryRecord, LeasedEvent, NewEvent, Storage, WebhookEndpoint,
};

/// The most of an answer's body that is read; the rest is dropped.
pub const MAX_RESPONSE_BYTES: usize = 4_096;

/// The most of an answer's body that is kept with the attempt.
const KEPT_RESPONSE_CHARS: usize = 256;

/// What one step of the worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Events leased.
    pub leased: usize,
    /// Answered 2xx.
    pub delivered: usize,
    /// Failed this time (to be retried, or given up).
    pub failed: usize,
}

/// The delivery worker; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    settings: WebhookSettings,
    rule: TargetRule,
}

/// One event's call and what came of it.
struct Called {
    outcome: DeliveryOutcome,
    status_code: Option<i64>,
    error: Option<String>,
    response: Option<String>,
}

impl WebhookDelivery {
    /// A worker over the ledger's outbox; `rule` says where it may send.
    pub fn new(
        storage: Arc<dyn Storage>,
        clock: SharedClock,
        settings: WebhookSettings,
        rule: TargetRule,
    ) -> Self {
        Self {
            storage,
            clock,
            settings,
            rule,
        }
    }

    /// One step: leases the due events, sends them (at most
    /// `max_in_flight_per_endpoint` at once to one endpoint), records each
    /// attempt.
    #[tracing::instrument(name = "webhook_delivery", skip_all)]
    pub async fn run_once(&self) -> anyhow::Result<DeliveryReport> {
        let now = self.clock.now_ms();
        let token = new_lease_token();
        let events = self
            .storage
            .lease_events(
                now,
                now + ms(self.settings.lease()),
                token,
                i64::from(self.settings.batch),
            )
            .await?;
        let mut report = DeliveryReport {
            leased: events.len(),
            ..DeliveryReport::default()
        };
        let mut endpoints: HashMap<String, Option<WebhookEndpoint>> = HashMap::new();
        let mut slots: HashMap<String, Arc<Semaphore>> = HashMap::new();
        for event in &events {
            if !endpoints.contains_key(&event.endpoint_id) {
                let endpoint = self
                    .storage
                    .endpoint(&event.appid, &event.endpoint_id)
                    .await?;
                endpoints.insert(event.endpoint_id.clone(), endpoint);
            }
        }
        let per_endpoint = self.settings.max_in_flight_per_endpoint as usize;
        let calls = events.iter().map(|event| {
            let endpoint = endpoints.get(&event.endpoint_id).cloned().flatten();
            let slot = slots
                .entry(event.endpoint_id.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(per_endpoint)))
                .clone();
            async move {
                let _permit = slot.acquire_owned().await;
                self.deliver(event, endpoint.as_ref()).await
            }
        });
        for delivered in join_all(calls).await {
            match delivered? {
                true => report.delivered += 1,
                false => report.failed += 1,
            }
        }
        Ok(report)
    }

    /// Sends one event and records the attempt; whether it was delivered.
    #[tracing::instrument(skip_all, fields(event_id = %event.event_id, endpoint_id = %event.endpoint_id))]
    async fn deliver(
        &self,
        event: &LeasedEvent,
        endpoint: Option<&WebhookEndpoint>,
    ) -> anyhow::Result<bool> {
        let started = Instant::now();
        let called = match endpoint {
            Some(endpoint) => self.call(event, endpoint).await,
            None => Called {
                outcome: DeliveryOutcome::Refused,
                status_code: None,
                error: Some("the endpoint is gone".into()),
                response: None,
            },
        };
        let now = self.clock.now_ms();
        let record = self.record(event, endpoint, called, now, started);
        let delivered = record.outcome == DeliveryOutcome::Delivered;
        crate::monitoring::webhook_delivery(&event.appid, record.outcome.as_str());
        if !self.storage.record_delivery(&record).await? {
            tracing::warn!("the event's lease was taken over while it was sent");
        }
        Ok(delivered)
    }

    /// The attempt's record: what follows it for the event and the endpoint.
    fn record(
        &self,
        event: &LeasedEvent,
        endpoint: Option<&WebhookEndpoint>,
        called: Called,
        now: i64,
        started: Instant,
    ) -> DeliveryRecord {
        let attempts = u32::try_from(event.attempts + 1).unwrap_or(u32::MAX);
        let (state, next_attempt_at) = match called.outcome {
            DeliveryOutcome::Delivered => (OutboxState::Delivered, now),
            DeliveryOutcome::Gone => (OutboxState::Failed, now),
            _ if endpoint.is_none() => (OutboxState::Failed, now),
            _ => match after_failure(attempts, now, rand::random::<f64>()) {
                Retry::At(at) => (OutboxState::Pending, at),
                Retry::GiveUp => (OutboxState::Failed, now),
            },
        };
        let change = match endpoint {
            Some(endpoint) => endpoint_after(
                called.outcome,
                endpoint.failing_since,
                now,
                ms(self.settings.disable_after),
            ),
            None => EndpointChange::Failing(None),
        };
        let disabled_event = match change {
            EndpointChange::Disable(reason) => Some(NewEvent {
                status: Some(reason.as_str().to_owned()),
                detail: Some(event.endpoint_id.clone()),
                ..NewEvent::new(
                    new_event_id(),
                    &event.appid,
                    EventType::EndpointDisabled,
                    now,
                )
            }),
            EndpointChange::Failing(_) => None,
        };
        if let EndpointChange::Disable(reason) = change {
            tracing::warn!(reason = reason.as_str(), "webhook endpoint disabled");
        }
        DeliveryRecord {
            seq: event.seq,
            lease_token: event.lease_token,
            endpoint_id: event.endpoint_id.clone(),
            appid: event.appid.clone(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            outcome: called.outcome,
            status_code: called.status_code,
            error: called.error,
            response: called.response,
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            state,
            next_attempt_at,
            endpoint: change,
            disabled_event,
            now,
        }
    }

    /// The call itself: the URL checked and resolved (the SSRF rule), the
    /// body signed, the answer read bounded.
    async fn call(&self, event: &LeasedEvent, endpoint: &WebhookEndpoint) -> Called {
        let refused = |error: TargetError| Called {
            outcome: DeliveryOutcome::Refused,
            status_code: None,
            error: Some(error.to_string()),
            response: None,
        };
        let url = match self.rule.check_url(&endpoint.url) {
            Ok(url) => url,
            Err(error) => return refused(error),
        };
        let address = match self.rule.resolve(&url).await {
            Ok(address) => address,
            Err(error) => return refused(error),
        };
        let body = event_body(event);
        let now = self.clock.now_ms();
        let timestamp = now.div_euclid(1_000);
        let secrets = endpoint.signing_secrets(now);
        let signature = signature_header(&secrets, &event.event_id, timestamp, &body);
        let client = match self.client(url.host_str().unwrap_or_default(), address) {
            Ok(client) => client,
            Err(error) => return unreachable(&error),
        };
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let response = read_bounded(response).await;
                Called {
                    outcome: verdict(Some(status)),
                    status_code: Some(i64::from(status)),
                    error: None,
                    response,
                }
            }
            Err(error) => unreachable(&error),
        }
    }

    /// A client that connects to `address` only (the checked one) for
    /// `host`, follows no redirect and gives up after the timeouts.
    fn client(
        &self,
        host: &str,
        address: std::net::SocketAddr,
    ) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .redirect(Policy::none())
            .connect_timeout(self.settings.connect_timeout)
            .timeout(self.settings.request_timeout)
            .resolve(host, address)
            .pool_max_idle_per_host(0)
            .build()
    }

    /// Deletes ended events and attempts past the retention.
    pub async fn sweep_once(&self) -> anyhow::Result<u64> {
        let cutoff = self.clock.now_ms() - ms(self.settings.retention);
        self.storage.sweep_webhooks(cutoff).await
    }
}

/// No answer: what the error says, without the URL (it may carry a token
/// of the receiver's).
fn unreachable(error: &reqwest::Error) -> Called {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "the call failed"
    };
    Called {
        outcome: DeliveryOutcome::Unreachable,
        status_code: None,
        error: Some(kind.into()),
        response: None,
    }
}

/// The start of an answer's body: at most [`MAX_RESPONSE_BYTES`] read, the
/// first [`KEPT_RESPONSE_CHARS`] characters kept.
async fn read_bounded(mut response: reqwest::Response) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(MAX_RESPONSE_BYTES);
    let text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .take(KEPT_RESPONSE_CHARS)
        .collect();
    (!text.is_empty()).then_some(text)
}

/// The body of a stored event: built from its row, so every retry sends the
/// same bytes.
pub fn event_body(event: &LeasedEvent) -> String {
    let event_type = event.event_type.parse().unwrap_or(EventType::WebhookTest);
    EventBody {
        event_type,
        timestamp: rfc3339_ms(event.occurred_at),
        data: EventData {
            appid: &event.appid,
            openid: event.openid.as_deref(),
            message_id: event.message_id.as_deref(),
            template_id: event.template_id.as_deref(),
            status: event.status.as_deref(),
            wechat_errcode: event.wechat_errcode,
            error_code: event.error_code.as_deref(),
            detail: event.detail.as_deref(),
            idempotency_key: event.idempotency_key.as_deref(),
            reference: event.reference.as_deref(),
        },
    }
    .to_json()
}
