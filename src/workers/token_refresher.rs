//! Refreshes each app's access_token ahead of its expiry, so sends never wait
//! for a fetch.

use crate::tokens::TokenKeeper;

/// The token worker.
#[derive(Debug, Clone)]
pub struct TokenRefresher {
    keeper: TokenKeeper,
}

impl TokenRefresher {
    pub fn new(keeper: TokenKeeper) -> Self {
        Self { keeper }
    }

    /// Refreshes every token that is missing or inside the refresh-ahead
    /// window; returns how many were refreshed.
    #[tracing::instrument(name = "token_refresher", skip_all)]
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        self.keeper.refresh_due().await
    }
}
