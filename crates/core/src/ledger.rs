//! The values the send path and the storage exchange: what enters the
//! ledger, what a claim hands out, and how a leased credential leaves its
//! lease. Storage records them; it decides nothing about them.

use crate::kinds::CredentialKind;
use crate::states::{AttemptOutcome, Channel, Decision, Delivery, MessageStatus};

/// A credential about to enter the ledger, already validated.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub openid: String,
    pub kind: CredentialKind,
    pub value: String,
    pub uses: i64,
    pub collected_at: i64,
    pub expires_at: i64,
}

/// A credential leased to one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedCredential {
    pub id: i64,
    pub kind: CredentialKind,
    pub value: String,
    pub uses_left: i64,
    /// Uses counted as spent whose delivery was never proven.
    pub unproven_uses: i64,
    pub collected_at: i64,
    pub expires_at: i64,
    /// The message the lease serves; `None` for a parked credential.
    pub lease_message_id: Option<String>,
}

/// A run's hold on a message: the message and the fencing token the run
/// wrote when it took it. Every write of the run names it, and does nothing
/// once another run has taken the message (recovery writes a new token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub message_id: String,
    pub token: i64,
}

impl Lease {
    /// A hold on a message under `token` (a fresh random one for a new run).
    pub fn new(message_id: impl Into<String>, token: i64) -> Self {
        Self {
            message_id: message_id.into(),
            token,
        }
    }
}

/// How a leased credential leaves its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// WeChat accepted a send: one use fewer, exhausted at zero.
    Spent,
    /// The send's answer was lost: one use fewer, and the use is recorded as
    /// unproven (WeChat may still hold it).
    SpentUnproven,
    /// WeChat said the credential is dead.
    Retired { errcode: i64 },
    /// 43101 on a subscribe send: WeChat holds no grant of the template for
    /// the user. The grant is retired with every other one of its template
    /// in the pool, and the user's long-term subscription to it is off.
    Revoked { errcode: i64 },
    /// Not used after all: back to the pool untouched.
    Released,
    /// Stays leased (for example while its token is refreshed).
    Kept,
    /// Stays leased until the given time, but by no message: a fresh prepay_id
    /// whose payment data has not reached WeChat yet.
    Parked { until: i64 },
}

/// One call to WeChat (or the decision not to make one) for a message.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub credential_id: Option<i64>,
    pub credential_kind: Option<CredentialKind>,
    pub errcode: Option<i64>,
    pub outcome: AttemptOutcome,
    pub detail: Option<String>,
    /// WeChat's id of a delivered subscribe message (a string: it exceeds 2^53).
    pub msgid: Option<String>,
}

/// The final state of a message.
#[derive(Debug, Clone)]
pub struct MessageOutcome {
    pub status: MessageStatus,
    pub error_code: Option<&'static str>,
    pub wechat_errcode: Option<i64>,
    /// Whether recovery finishes it (the run that began it died or lost
    /// its lease): its event is then `message.settled`, not `message.sent`
    /// or `message.failed` (`webhooks::EventType::for_finish`).
    pub recovered: bool,
}

/// A message as first recorded.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    pub payload: String,
    pub status: MessageStatus,
    pub delivery: Delivery,
    pub wait_until: Option<i64>,
    pub lease_until: i64,
    /// The token of the run that creates it.
    pub lease_token: i64,
    pub channel: Channel,
    /// The caller's reference from the send request, if any.
    pub reference: Option<String>,
    /// The send's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
}

impl NewMessage {
    /// The template whose grants pay for the message: its own on the
    /// subscribe channel, none on the template channel.
    pub fn grant_of(&self) -> Option<&str> {
        grant_of(self.channel, &self.template_id)
    }
}

/// The template whose grants pay for a message of `channel`.
pub fn grant_of(channel: Channel, template_id: &str) -> Option<&str> {
    match channel {
        Channel::Subscribe => Some(template_id),
        Channel::Template => None,
    }
}

/// One template's answer in a prompt result, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptDecision {
    pub template_id: String,
    pub decision: Decision,
}
