//! Resolves what a dead process left behind: credentials still leased after
//! their lease ran out, and pending messages nobody works on.
//!
//! A leased credential names its message. If that message has ended (or the
//! credential was only parked), nothing is in flight and the credential goes
//! back. If the message is still pending, the call may or may not have reached
//! WeChat: the send path probes the credential when it can (one send left, not
//! about to expire), and otherwise counts it spent and marks the message
//! `unknown` (see `ledger::send`). A pending message that holds no credential
//! never had anything in flight and is simply carried on.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::ledger::send::Sender;
use crate::storage::Storage;

/// Rows taken per step.
const BATCH: i64 = 32;

/// What one recovery step resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Leased credentials whose lease had run out.
    pub credentials: usize,
    /// Pending messages carried on without a credential in hand.
    pub messages: usize,
}

/// The recovery worker.
#[derive(Debug, Clone)]
pub struct Recovery {
    storage: Arc<dyn Storage>,
    sender: Sender,
    clock: SharedClock,
    lease_ms: i64,
}

impl Recovery {
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

    /// One pass; call until it reports nothing to drain a backlog.
    pub async fn run_once(&self) -> anyhow::Result<RecoveryReport> {
        let now = self.clock.now_ms();
        let credentials = self
            .storage
            .claim_expired_leases(now, now + self.lease_ms, BATCH)
            .await?;
        let mut report = RecoveryReport {
            credentials: credentials.len(),
            ..RecoveryReport::default()
        };
        for credential in credentials {
            let id = credential.id;
            match self.sender.recover(credential).await {
                Ok(Some(result)) => {
                    tracing::info!(credential = id, message = %result.message_id, status = result.status, "recovered an in-flight credential")
                }
                Ok(None) => tracing::info!(credential = id, "returned an abandoned lease"),
                Err(error) => {
                    tracing::error!(credential = id, error = ?error, "recovering a credential failed")
                }
            }
        }
        let now = self.clock.now_ms();
        let messages = self
            .storage
            .claim_stale_messages(now, now + self.lease_ms, BATCH)
            .await?;
        report.messages = messages.len();
        for message in messages {
            match self.sender.resume(&message).await {
                Ok(result) => {
                    tracing::info!(message = %message.id, status = result.status, "carried on an abandoned message")
                }
                Err(error) => {
                    tracing::error!(message = %message.id, error = ?error, "carrying on a message failed")
                }
            }
        }
        Ok(report)
    }
}
