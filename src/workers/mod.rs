//! Background work. Each worker has a `run_once` step that tests drive
//! directly; [`run_every`] is the loop production runs it in, until the one
//! shutdown signal the API shares fires.

mod recovery;
mod scheduled;
mod sweeper;
mod token_refresher;
mod waiting;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use recovery::{Recovery, RecoveryReport};
pub use scheduled::{ScheduledReport, ScheduledSender};
pub use sweeper::Sweeper;
pub use token_refresher::TokenRefresher;
pub use waiting::WaitingSender;

/// Runs `step` every `interval` until `shutdown` is cancelled. A failing step
/// is logged and tried again next time: a worker never dies of one error.
pub async fn run_every<F, Fut>(
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        if let Err(error) = step().await {
            tracing::error!(worker = name, error = ?error, "background step failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    tracing::info!(worker = name, "stopped");
}
