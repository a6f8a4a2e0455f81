//! The bodies the webhook routes answer with. A secret appears only in
//! [`CreatedEndpoint`] and [`RotatedEndpoint`], the answers that hand it
//! out; [`Endpoint`] carries none.

use serde::Serialize;

use crate::ledger::webhooks::{rfc3339_ms, DeliveryOutcome, EndpointState, EventType};
use crate::storage::{WebhookAttemptRow, WebhookEndpoint};

/// An endpoint as the API shows it: no secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    #[schema(value_type = Vec<String>)]
    pub event_types: Vec<EventType>,
    #[schema(value_type = String)]
    pub state: EndpointState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// When its current streak of failed attempts began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// Whether a rotated-out secret still signs beside the current one.
    pub rotating: bool,
    pub created_at: String,
}

impl Endpoint {
    /// The public view of a stored endpoint at `now`.
    pub fn of(endpoint: &WebhookEndpoint, now: i64) -> Self {
        Self {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            event_types: EventType::of_mask(endpoint.event_mask),
            state: endpoint.state,
            disabled_reason: endpoint.disabled_reason.clone(),
            failing_since: endpoint.failing_since.map(rfc3339_ms),
            rotating: endpoint.signing_secrets(now).len() > 1,
            created_at: rfc3339_ms(endpoint.created_at),
        }
    }
}

/// `201` to `POST …/webhooks`: the endpoint and its secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_…`: give it to the receiver's Standard Webhooks verifier.
    pub secret: String,
}

/// `200` to `POST …/webhooks/{id}/rotate-secret`: the new secret, shown
/// this once; the old one signs too until `previous_secret_expires_at`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RotatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub secret: String,
    pub previous_secret_expires_at: String,
}

/// `GET …/webhooks`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<Endpoint>,
}

/// `202` to `POST …/webhooks/{id}/test`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestQueued {
    /// The `webhook-id` the test event is sent under.
    pub event_id: String,
}

/// `200` to `POST …/webhooks/{id}/replay`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Failed events made due again.
    pub replayed: u64,
}

/// One delivery attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub event_id: String,
    pub event_type: String,
    pub at: String,
    #[schema(value_type = String)]
    pub outcome: DeliveryOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The start of the answer's body (256 characters at most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub duration_ms: i64,
}

impl From<WebhookAttemptRow> for Attempt {
    fn from(row: WebhookAttemptRow) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            at: rfc3339_ms(row.at),
            outcome: row.outcome,
            status_code: row.status_code,
            error: row.error,
            response: row.response,
            duration_ms: row.duration_ms,
        }
    }
}

/// `GET …/webhooks/{id}/attempts`, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<Attempt>,
}
