//! Resolves what a dead process left behind: credentials still leased after
//! their lease ran out, and pending messages nobody works on.
//!
//! A leased credential names its message. If that message has ended (or the
//! credential was only parked), nothing is in flight and the credential goes
//! back. If the message is still pending, the call may or may not have reached
//! WeChat: the send path probes the credential when it can (one send left, not
//! about to expire), and otherwise counts it spent and marks the message
//! `unknown` (see `sending`). A pending message that holds no credential
//! never had anything in flight and is simply carried on.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tracing::Instrument;

use super::waiting::resume_span;

use crate::clock::SharedClock;
use crate::sending::Sender;
use crate::storage::{new_lease_token, Storage};

/// Rows taken per step.
const BATCH: i64 = 32;

/// Credentials and messages resolved at once: after a crash with many sends
/// in flight, their probes run side by side instead of one after another.
const CONCURRENCY: usize = 16;

/// What one recovery step resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Leased credentials whose lease had run out.
    pub credentials: usize,
    /// Pending messages carried on without a credential in hand.
    pub messages: usize,
    /// Waiting messages made due because their user holds a credential.
    pub woken: u64,
}

/// The recovery worker.
#[derive(Debug, Clone)]
pub struct Recovery {
    storage: Arc<dyn Storage>,
    sender: Sender,
    clock: SharedClock,
    lease_ms: i64,
    safety_margin_ms: i64,
}

impl Recovery {
    pub fn new(
        storage: Arc<dyn Storage>,
        sender: Sender,
        clock: SharedClock,
        lease: std::time::Duration,
        safety_margin: std::time::Duration,
    ) -> Self {
        Self {
            storage,
            sender,
            clock,
            lease_ms: crate::clock::ms(lease),
            safety_margin_ms: crate::clock::ms(safety_margin),
        }
    }

    /// One pass; call until it reports nothing to drain a backlog.
    #[tracing::instrument(name = "recovery", skip_all)]
    pub async fn run_once(&self) -> anyhow::Result<RecoveryReport> {
        let now = self.clock.now_ms();
        // One token for the rows of this pass: each differs from the token
        // of the run it fences off, which is all a token must do.
        let token = new_lease_token();
        let credentials = self
            .storage
            .claim_expired_leases(now, now + self.lease_ms, token, BATCH)
            .await?;
        let mut report = RecoveryReport {
            credentials: credentials.len(),
            ..RecoveryReport::default()
        };
        stream::iter(credentials)
            .for_each_concurrent(CONCURRENCY, |credential| {
                // The credential's id, never its value.
                let span = tracing::info_span!(
                    "recover",
                    credential = credential.id,
                    message_id = tracing::field::Empty
                );
                async move {
                    match self.sender.recover(credential, token).await {
                        Ok(Some(result)) => {
                            tracing::info!(status = %result.status, "recovered an in-flight credential")
                        }
                        Ok(None) => tracing::info!("returned an abandoned lease"),
                        Err(error) => {
                            tracing::error!(error = ?error, "recovering a credential failed")
                        }
                    }
                }
                .instrument(span)
            })
            .await;
        let now = self.clock.now_ms();
        let token = new_lease_token();
        let messages = self
            .storage
            .claim_stale_messages(now, now + self.lease_ms, token, BATCH)
            .await?;
        report.messages = messages.len();
        stream::iter(messages)
            .for_each_concurrent(CONCURRENCY, |message| {
                let span = resume_span(&message);
                async move {
                    match self.sender.resume(&message, token).await {
                        Ok(result) => {
                            tracing::info!(status = %result.status, "carried on an abandoned message")
                        }
                        Err(error) => tracing::error!(error = ?error, "carrying on a message failed"),
                    }
                }
                .instrument(span)
            })
            .await;
        // The net under a collection that crashed between its commit and
        // its nudge of the waiting messages.
        let now = self.clock.now_ms();
        report.woken = self
            .storage
            .wake_waiting_with_credentials(now, now + self.safety_margin_ms)
            .await?;
        Ok(report)
    }
}
