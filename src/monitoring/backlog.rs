//! The gauges of messages that wait: how many of each app's messages are
//! waiting (for a credential or a token), pending (a process holds them) or
//! scheduled, refreshed by a worker while metrics are on.

use std::sync::Arc;

use crate::ledger::states::MessageStatus;
use crate::storage::Storage;

/// The statuses counted.
const COUNTED: [MessageStatus; 3] = [
    MessageStatus::Waiting,
    MessageStatus::Pending,
    MessageStatus::Scheduled,
];

/// The backlog worker.
#[derive(Debug, Clone)]
pub struct Backlog {
    storage: Arc<dyn Storage>,
    apps: Vec<String>,
}

impl Backlog {
    /// Counts the messages of `apps` (every configured app: one with no
    /// such message reads 0, not its last count).
    pub fn new(storage: Arc<dyn Storage>, apps: Vec<String>) -> Self {
        Self { storage, apps }
    }

    /// Reads the counts (one indexed query) and sets the gauges.
    pub async fn run_once(&self) -> anyhow::Result<()> {
        let counts = self.storage.message_backlog().await?;
        for appid in &self.apps {
            for status in COUNTED {
                let count = counts
                    .iter()
                    .find(|row| &row.appid == appid && row.status == status)
                    .map_or(0, |row| row.count);
                super::messages(appid, status, count);
            }
        }
        Ok(())
    }
}
