//! The app's quota block: after a 45009 (the day's sends of the app are
//! spent), WeChat refuses every send of the app until the block ends, so the
//! send path answers at once without calling. The block is stored on the
//! app's row, so every instance sees it; each process keeps a short-lived
//! copy, read again by one send at a time.

use std::sync::Arc;

use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::storage::Storage;

/// The owner of the apps' quota blocks; cheap to clone.
#[derive(Debug, Clone)]
pub struct QuotaBlock {
    storage: Arc<dyn Storage>,
    /// Each app's block as last read (or written) by this process. Safe to
    /// keep for a while because a block this process writes is written to
    /// the copy at once.
    copies: Arc<TtlCache<Option<i64>>>,
    clock: SharedClock,
}

impl QuotaBlock {
    /// The blocks of the ledger, copied in memory for `ttl_ms`.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock, ttl_ms: i64) -> Self {
        Self {
            storage,
            copies: Arc::new(TtlCache::new(ttl_ms, clock.clone())),
            clock,
        }
    }

    /// Until when the app's sends are blocked (clock ms), as last stored;
    /// `None` when it never was. A block of the past is the caller's to
    /// read as over.
    pub async fn blocked_until(&self, appid: &str) -> anyhow::Result<Option<i64>> {
        self.copies
            .get_or_read(appid, || async {
                Ok::<_, anyhow::Error>(self.storage.app_state(appid).await?.send_blocked_until)
            })
            .await
    }

    /// Blocks the app's sends until `until_ms`: in the ledger first, then in
    /// this process's copy.
    pub async fn block(&self, appid: &str, until_ms: i64) -> anyhow::Result<()> {
        self.storage
            .block_sends(appid, until_ms, self.clock.now_ms())
            .await?;
        self.copies.update(appid, |copy| *copy = Some(until_ms));
        Ok(())
    }
}
