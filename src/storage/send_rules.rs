//! The storage of the send rules: a send admitted under the user's caps in
//! the transaction that records it, and scheduled messages.

use async_trait::async_trait;

use crate::ledger::states::MessageStatus;
use crate::ledger::user_limits::{cap_decision, CapDecision, CountedSend, SendCap};

use super::{Lease, NewMessage, StoredMessage};

/// A send to be recorded only if the user's caps have room (see
/// [`SendRulesStore::create_capped_message`]).
#[derive(Debug, Clone, Copy)]
pub struct CappedStart<'a> {
    /// The message, pending under its run's lease.
    pub message: &'a NewMessage,
    /// The app's caps (at least one applies to the message's template).
    pub caps: &'a [SendCap],
    /// The time of the count and of the row.
    pub now: i64,
}

/// A message kept until its time (see [`SendRulesStore::schedule_message`]).
#[derive(Debug, Clone, Copy)]
pub struct Scheduled<'a> {
    /// The message (its status, lease and token are not used).
    pub message: &'a NewMessage,
    /// When it becomes due.
    pub due_at: i64,
    /// The time the request asked for, when it named one.
    pub send_at: Option<i64>,
    /// The time of the row.
    pub now: i64,
}

/// A due scheduled message to be taken (see [`SendRulesStore::take_scheduled`]).
#[derive(Debug, Clone, Copy)]
pub struct TakeScheduled<'a> {
    pub id: &'a str,
    /// The app's caps; empty takes without counting.
    pub caps: &'a [SendCap],
    /// The lease the taking run holds it under.
    pub lease_until: i64,
    pub token: i64,
    pub now: i64,
}

/// What came of taking a scheduled message.
#[derive(Debug, Clone)]
pub enum Taken {
    /// Pending under the run's token: send it.
    Taken(StoredMessage),
    /// A cap was full: the message ended failed with `user_send_limit`.
    Capped { retry_at_ms: i64 },
    /// Another run took it, it was cancelled, or it is not due.
    Gone,
}

/// The storage of the per-user send caps and of scheduled messages.
#[async_trait]
pub trait SendRulesStore: Send + Sync {
    /// In one write transaction, with the user's messages serialised (on
    /// SQLite by its single writer, on PostgreSQL by a transaction-scoped
    /// advisory lock on the (app, user)): counts the user's messages that
    /// count against `caps`, decides by `cap_decision`, and records the
    /// message only when it is allowed. So two instances can never both
    /// count below the cap and both send.
    async fn create_capped_message(&self, start: &CappedStart<'_>) -> anyhow::Result<CapDecision>;

    /// Records a scheduled message, due at `due_at`; nothing is claimed.
    async fn schedule_message(&self, scheduled: &Scheduled<'_>) -> anyhow::Result<()>;

    /// Cancels a scheduled message of the app (it ends failed with
    /// `cancelled`); `false` when it is not scheduled (any more).
    async fn cancel_scheduled(&self, appid: &str, id: &str, now: i64) -> anyhow::Result<bool>;

    /// Up to `limit` scheduled messages due at `now`, oldest first.
    async fn due_scheduled(&self, now: i64, limit: i64) -> anyhow::Result<Vec<StoredMessage>>;

    /// Takes a due scheduled message: under the caps (counted and decided
    /// in the transaction that takes it, as in `create_capped_message`).
    async fn take_scheduled(&self, take: &TakeScheduled<'_>) -> anyhow::Result<Taken>;

    /// Moves a scheduled message to `due_at`; `false` when it is not
    /// scheduled any more.
    async fn reschedule(&self, id: &str, due_at: i64, now: i64) -> anyhow::Result<bool>;

    /// A pending message whose run holds no credential becomes scheduled
    /// for `due_at`; `false` when the lease was lost.
    async fn hold_message(&self, lease: &Lease, due_at: i64, now: i64) -> anyhow::Result<bool>;
}

/// The caps' decision over the rows `sql::CAP_COUNTED` read.
pub fn decide_counted(
    caps: &[SendCap],
    template_id: &str,
    rows: &[(String, String, i64)],
    now: i64,
) -> CapDecision {
    let counted: Vec<CountedSend<'_>> = rows
        .iter()
        .map(|(template, status, updated_at)| CountedSend {
            template_id: template,
            finished_at: match status.parse::<MessageStatus>() {
                Ok(MessageStatus::Pending | MessageStatus::Waiting) => None,
                _ => Some(*updated_at),
            },
        })
        .collect();
    cap_decision(caps, template_id, &counted, now)
}

/// The key of a user's advisory lock on PostgreSQL.
pub fn user_lock_key(appid: &str, touser: &str) -> String {
    format!("{appid}\n{touser}")
}
