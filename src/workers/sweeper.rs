//! Retires expired credentials and deletes rows past their retention.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::storage::{Storage, SweepReport};

/// The sweep worker.
#[derive(Debug, Clone)]
pub struct Sweeper {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    credential_retention_ms: i64,
    message_retention_ms: i64,
}

impl Sweeper {
    pub fn new(
        storage: Arc<dyn Storage>,
        clock: SharedClock,
        credential_retention: std::time::Duration,
        message_retention: std::time::Duration,
    ) -> Self {
        Self {
            storage,
            clock,
            credential_retention_ms: crate::clock::ms(credential_retention),
            message_retention_ms: crate::clock::ms(message_retention),
        }
    }

    /// One sweep at the clock's current time.
    #[tracing::instrument(name = "sweeper", skip_all)]
    pub async fn run_once(&self) -> anyhow::Result<SweepReport> {
        let report = self
            .storage
            .sweep(
                self.clock.now_ms(),
                self.credential_retention_ms,
                self.message_retention_ms,
            )
            .await?;
        if report != SweepReport::default() {
            tracing::info!(
                expired = report.expired,
                deleted_credentials = report.deleted_credentials,
                deleted_messages = report.deleted_messages,
                "swept the ledger"
            );
        }
        // Expired sessions authenticate no one (formid_core::sessions):
        // deleting them keeps the table to the live ones.
        let sessions = self
            .storage
            .delete_expired_sessions(self.clock.now_ms())
            .await?;
        if sessions > 0 {
            tracing::info!(deleted_sessions = sessions, "swept expired sessions");
        }
        Ok(report)
    }
}
