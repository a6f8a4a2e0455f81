//! What stands before every call to WeChat: the per-app bound on calls in
//! flight, and the circuit breaker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::wechat::breaker::Breakers;

/// The per-app call bound and breaker of one process; cheap to clone.
#[derive(Debug, Clone)]
pub struct CallGuard {
    breakers: Arc<Breakers>,
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    max_concurrent_calls: usize,
}

impl CallGuard {
    pub(super) fn new(breakers: Arc<Breakers>, max_concurrent_calls: usize) -> Self {
        Self {
            breakers,
            slots: Arc::default(),
            max_concurrent_calls: max_concurrent_calls.max(1),
        }
    }

    /// A place among the app's calls in flight, held by one run until it
    /// ends. Taken before the run claims anything, so that waiting for it
    /// never eats into a lease.
    pub async fn slot(&self, appid: &str) -> OwnedSemaphorePermit {
        let semaphore = {
            let mut slots = self.slots.lock().expect("call slots lock");
            slots
                .entry(appid.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_concurrent_calls)))
                .clone()
        };
        semaphore
            .acquire_owned()
            .await
            .expect("call slots are never closed")
    }

    /// Whether a call may go out now; otherwise how long the circuit stays open.
    pub fn admit(&self, appid: &str) -> Result<(), i64> {
        self.breakers.admit(appid)
    }

    /// Counts a call for the app's circuit, as `decide` read its answer
    /// (`Decision::wechat_failed`): unreachable, lost and busy answers are
    /// failures, every other answer a success.
    pub fn record(&self, appid: &str, wechat_failed: bool) {
        if wechat_failed {
            self.breakers.failure(appid);
        } else {
            self.breakers.success(appid);
        }
    }
}
