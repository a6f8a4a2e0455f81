//! Sends the messages that wait for a credential: as soon as one arrives for
//! their user (collection makes them due), after a short delay for a syncing
//! prepay_id, or fails them with `no_credential` when the wait ends.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::ledger::send::Sender;
use crate::storage::Storage;

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

    /// Takes the due waiting messages and carries each on; returns how many.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let now = self.clock.now_ms();
        let due = self
            .storage
            .claim_due_waiting(now, now + self.lease_ms, BATCH)
            .await?;
        let results =
            futures_util::future::join_all(due.iter().map(|message| self.sender.resume(message)))
                .await;
        for (message, result) in due.iter().zip(results) {
            match result {
                Ok(result) => {
                    tracing::info!(message = %message.id, status = result.status, "waiting message")
                }
                // Left pending: recovery takes it up once its lease runs out.
                Err(error) => {
                    tracing::error!(message = %message.id, error = ?error, "resuming a waiting message failed")
                }
            }
        }
        Ok(due.len())
    }
}
