//! Events out: an app's webhook endpoints, and the delivery of the events
//! the ledger writes to its outbox (see `formid_core::webhooks` for the
//! rules, `storage::WebhookStore` for the tables).
//!
//! What this feature adds to the service: the endpoints' administration
//! ([`Webhooks`], served by `src/api/webhooks.rs`), the signing
//! ([`signing`]), the SSRF rule ([`target`]) and the delivery worker
//! ([`WebhookDelivery`]).

pub mod delivery;
mod settings;
pub mod signing;
pub mod target;

use std::sync::Arc;

use formid_core::webhooks::{EndpointState, EventType, NewEvent};

pub use delivery::{DeliveryReport, WebhookDelivery};
pub use settings::WebhookSettings;
pub use target::{TargetError, TargetRule};

use crate::clock::{ms, SharedClock};
use crate::storage::{new_event_id, NewEndpoint, Storage, WebhookAttemptRow, WebhookEndpoint};

/// Why an administration request is refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the endpoint URL is refused: {0}")]
    Url(#[from] TargetError),
    #[error("unknown event type {0:?}; known are: {1}")]
    UnknownEventType(String, String),
    #[error("the app has {0} enabled endpoints, the most allowed")]
    TooMany(u32),
    #[error("no such endpoint")]
    NotFound,
    #[error("the endpoint is disabled")]
    Disabled,
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// A new endpoint and the secret it signs with, shown this once.
pub struct Created {
    pub endpoint: WebhookEndpoint,
}

/// The endpoints' administration; cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    settings: WebhookSettings,
    rule: TargetRule,
}

impl Webhooks {
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

    /// The event types a request names (all when it names none).
    pub fn event_types(names: Option<&[String]>) -> Result<Vec<EventType>, WebhookError> {
        let Some(names) = names.filter(|names| !names.is_empty()) else {
            return Ok(EventType::ALL.to_vec());
        };
        names
            .iter()
            .map(|name| {
                name.parse().map_err(|_| {
                    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                    WebhookError::UnknownEventType(name.clone(), known.join(", "))
                })
            })
            .collect()
    }

    /// Creates an enabled endpoint with a fresh secret.
    #[tracing::instrument(skip(self, url))]
    pub async fn create(
        &self,
        appid: &str,
        url: &str,
        types: &[EventType],
    ) -> Result<Created, WebhookError> {
        self.rule.check_url(url)?;
        let enabled = self
            .storage
            .endpoints(appid)
            .await?
            .iter()
            .filter(|endpoint| endpoint.state == EndpointState::Enabled)
            .count();
        if enabled >= self.settings.max_endpoints_per_app as usize {
            return Err(WebhookError::TooMany(self.settings.max_endpoints_per_app));
        }
        let endpoint = NewEndpoint {
            id: format!("ep_{}", uuid::Uuid::new_v4().simple()),
            appid: appid.to_owned(),
            url: url.to_owned(),
            event_mask: EventType::mask(types),
            secret: signing::generate_secret(),
            now: self.clock.now_ms(),
        };
        self.storage.create_endpoint(&endpoint).await?;
        let endpoint = self
            .storage
            .endpoint(appid, &endpoint.id)
            .await?
            .ok_or(WebhookError::NotFound)?;
        Ok(Created { endpoint })
    }

    /// The app's endpoints.
    pub async fn list(&self, appid: &str) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        Ok(self.storage.endpoints(appid).await?)
    }

    /// One endpoint of the app.
    pub async fn get(&self, appid: &str, id: &str) -> Result<WebhookEndpoint, WebhookError> {
        self.storage
            .endpoint(appid, id)
            .await?
            .ok_or(WebhookError::NotFound)
    }

    /// Switches an endpoint off (its pending events fail; a replay sends
    /// them again only to an enabled endpoint). Idempotent.
    #[tracing::instrument(skip(self))]
    pub async fn disable(&self, appid: &str, id: &str) -> Result<WebhookEndpoint, WebhookError> {
        self.get(appid, id).await?;
        let event = NewEvent {
            status: Some("admin".into()),
            detail: Some(id.to_owned()),
            ..NewEvent::new(
                new_event_id(),
                appid,
                EventType::EndpointDisabled,
                self.clock.now_ms(),
            )
        };
        self.storage.disable_endpoint(appid, id, &event).await?;
        self.get(appid, id).await
    }

    /// A new secret; the old one signs too for `rotation_overlap`.
    #[tracing::instrument(skip(self))]
    pub async fn rotate(&self, appid: &str, id: &str) -> Result<WebhookEndpoint, WebhookError> {
        let now = self.clock.now_ms();
        let secret = signing::generate_secret();
        let until = now + ms(self.settings.rotation_overlap);
        if !self
            .storage
            .rotate_secret(appid, id, &secret, until, now)
            .await?
        {
            return Err(WebhookError::NotFound);
        }
        self.get(appid, id).await
    }

    /// Queues a `webhook.test` event for the endpoint; its id.
    #[tracing::instrument(skip(self))]
    pub async fn test(&self, appid: &str, id: &str) -> Result<String, WebhookError> {
        let endpoint = self.get(appid, id).await?;
        let event_id = new_event_id();
        if !self
            .storage
            .enqueue_test_event(appid, &endpoint.id, &event_id, self.clock.now_ms())
            .await?
        {
            return Err(WebhookError::Disabled);
        }
        Ok(event_id)
    }

    /// Makes the endpoint's failed events since `since` due again.
    #[tracing::instrument(skip(self))]
    pub async fn replay(&self, appid: &str, id: &str, since: i64) -> Result<u64, WebhookError> {
        let endpoint = self.get(appid, id).await?;
        if endpoint.state != EndpointState::Enabled {
            return Err(WebhookError::Disabled);
        }
        Ok(self
            .storage
            .replay_failed(id, since, self.clock.now_ms())
            .await?)
    }

    /// The endpoint's newest attempts.
    pub async fn attempts(
        &self,
        appid: &str,
        id: &str,
        limit: i64,
    ) -> Result<Vec<WebhookAttemptRow>, WebhookError> {
        self.get(appid, id).await?;
        Ok(self.storage.webhook_attempts(id, limit).await?)
    }
}
