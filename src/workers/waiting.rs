//! Sends the messages that wait for a credential: as soon as one arrives for
//! their user (collection makes them due), after a short delay for a syncing
//! prepay_id, or fails them with `no_credential` when the wait ends.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::sending::Sender;
use tracing::Instrument;

use crate::storage::{new_lease_token, Storage, StoredMessage};

/// Messages taken per step.
const BATCH: i64 = 32;

/// The waiting-message worker.
#[derive(Debug, Clone)]
pub struct WaitingSender {
    storage: Arc<dyn Storage>,
    sender: Sender,
    clock: SharedClock,
    lease_ms: i64,
}

impl WaitingSender {
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

    /// Takes the due waiting messages and carries each on (each in the
    /// `resume` span of the send path); returns how many.
    #[tracing::instrument(name = "waiting", skip_all, fields(due = tracing::field::Empty))]
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let now = self.clock.now_ms();
        let token = new_lease_token();
        let due = self
            .storage
            .claim_due_waiting(now, now + self.lease_ms, token, BATCH)
            .await?;
        tracing::Span::current().record("due", due.len());
        // Each message is resumed, and its outcome logged, inside its own span.
        futures_util::future::join_all(due.iter().map(|message| {
            let span = resume_span(message);
            async move {
                match self.sender.resume(message, token).await {
                    Ok(result) => tracing::info!(status = %result.status, "waiting message"),
                    // Left pending: recovery takes it up once its lease runs out.
                    Err(error) => {
                        tracing::error!(error = ?error, "resuming a waiting message failed")
                    }
                }
            }
            .instrument(span)
        }))
        .await;
        Ok(due.len())
    }
}

/// The span a message is carried on in: its app and id, never its content.
pub(crate) fn resume_span(message: &StoredMessage) -> tracing::Span {
    tracing::info_span!("resume", appid = %message.appid, message_id = %message.id)
}
