//! One read at a time behind a per-process copy that runs out.
//!
//! The send path keeps short-lived copies of what it would otherwise read on
//! every send (an app's token row, an app's templates). When a copy runs
//! out, every send in flight misses it at once; each reading it again put a
//! burst of identical reads in the pool's queue, ahead of the sends' own
//! writes (6–19 a second at 256 sends in flight on PostgreSQL). Behind a
//! gate, the first caller reads and the others wait for it and take its copy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Gates by key (an app): reads of different keys do not wait for each other.
#[derive(Debug, Default)]
pub struct ReadGate {
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ReadGate {
    /// `cached()` while it answers `Ok`; otherwise one caller per key at a
    /// time calls `read` with what `cached` answered instead (for example a
    /// generation the read must still match when it stores), after trying
    /// `cached()` again once its turn comes.
    pub async fn read<T, M, E, Fut>(
        &self,
        key: &str,
        cached: impl Fn() -> Result<T, M>,
        read: impl FnOnce(M) -> Fut,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        if let Ok(value) = cached() {
            return Ok(value);
        }
        let gate = {
            let mut gates = self.gates.lock().expect("read gates");
            match gates.get(key) {
                Some(gate) => gate.clone(),
                None => gates.entry(key.to_owned()).or_default().clone(),
            }
        };
        let _turn = gate.lock().await;
        match cached() {
            Ok(value) => Ok(value),
            Err(missed) => read(missed).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    /// A copy that ran out, 50 callers at once: one read, every caller
    /// answered with it; another key reads on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_miss_together_share_one_read() {
        let gate = Arc::new(ReadGate::default());
        let copy: Arc<Mutex<HashMap<&str, u32>>> = Arc::default();
        let reads = Arc::new(AtomicU32::new(0));
        let call = |key: &'static str| {
            let (gate, copy, reads) = (gate.clone(), copy.clone(), reads.clone());
            tokio::spawn(async move {
                let cached = || copy.lock().unwrap().get(key).copied().ok_or(());
                gate.read(key, cached, |()| async {
                    let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    copy.lock().unwrap().insert(key, n);
                    Ok::<_, ()>(n)
                })
                .await
                .unwrap()
            })
        };
        let answers: Vec<u32> = futures::future::join_all((0..50).map(|_| call("wxa")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|answer| *answer == 1), "{answers:?}");
        assert_eq!(call("wxb").await.unwrap(), 2);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
