//! Sends the scheduled messages whose time has come: each is taken by one
//! run (under the app's send caps, counted in the transaction that takes
//! it), moved to the end of quiet hours when it falls inside them, and sent
//! by the send path like a message taken up again. No credential is held
//! while a message is scheduled: the claim happens when it is sent.

use std::sync::Arc;

use tracing::Instrument;

use crate::clock::SharedClock;
use crate::sending::Sender;
use crate::storage::send_rules::{TakeScheduled, Taken};
use crate::storage::{new_lease_token, Storage, StoredMessage};

/// Messages read per step.
const BATCH: i64 = 32;

/// What one step of the scheduler did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledReport {
    /// Taken and sent (whatever the send's outcome).
    pub sent: usize,
    /// Moved to the end of quiet hours.
    pub moved: usize,
    /// Ended `user_send_limit` by a full cap.
    pub capped: usize,
}

/// The scheduled-message worker.
#[derive(Debug, Clone)]
pub struct ScheduledSender {
    storage: Arc<dyn Storage>,
    sender: Sender,
    clock: SharedClock,
    lease_ms: i64,
}

impl ScheduledSender {
    pub fn new(
        storage: Arc<dyn Storage>,
        sender: Sender,
        clock: SharedClock,
        lease: std::time::Duration,
    ) -> Self {
        Self {
            storage,
            sender,
            clock,
            lease_ms: crate::clock::ms(lease),
        }
    }

    /// Takes the due scheduled messages and sends each (in the `resume`
    /// span of the send path).
    #[tracing::instrument(name = "scheduled", skip_all, fields(due = tracing::field::Empty))]
    pub async fn run_once(&self) -> anyhow::Result<ScheduledReport> {
        let now = self.clock.now_ms();
        let due = self.storage.due_scheduled(now, BATCH).await?;
        tracing::Span::current().record("due", due.len());
        let token = new_lease_token();
        let mut report = ScheduledReport::default();
        let mut taken = Vec::new();
        for message in due {
            if let Some(opens) = self.sender.quiet_until(&message.appid) {
                if self.storage.reschedule(&message.id, opens, now).await? {
                    report.moved += 1;
                }
                continue;
            }
            let take = TakeScheduled {
                id: &message.id,
                caps: self.sender.caps_of(&message.appid),
                lease_until: now + self.lease_ms,
                token,
                now,
            };
            match self.storage.take_scheduled(&take).await? {
                Taken::Taken(message) => taken.push(message),
                Taken::Capped { .. } => report.capped += 1,
                Taken::Gone => {}
            }
        }
        report.sent = taken.len();
        futures_util::future::join_all(taken.iter().map(|message| self.send(message, token))).await;
        Ok(report)
    }

    async fn send(&self, message: &StoredMessage, token: i64) {
        let span = super::waiting::resume_span(message);
        async {
            match self.sender.resume(message, token).await {
                Ok(result) => tracing::info!(status = %result.status, "scheduled message"),
                // Left pending: recovery takes it up once its lease runs out.
                Err(error) => tracing::error!(error = ?error, "sending a scheduled message failed"),
            }
        }
        .instrument(span)
        .await
    }
}
