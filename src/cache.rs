//! Per-process copies that run out, and one caller at a time per key.
//!
//! The send path keeps short-lived copies of what it would otherwise read on
//! every send (an app's row with its token, an app's templates). When a copy
//! runs out, every send in flight misses it at once; each reading it again
//! would put a burst of identical reads in the pool's queue, ahead of the
//! sends' own writes. Behind [`SingleFlight`], the first caller reads and the
//! others wait for it and take its copy. The token keeper uses the same
//! [`SingleFlight`] for its fetches and checks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::clock::SharedClock;

/// One holder per key at a time; keys do not wait for each other.
#[derive(Debug, Default)]
pub struct SingleFlight {
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SingleFlight {
    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().expect("single-flight gates");
        // A lookup by `&str` first: the common case allocates nothing.
        match gates.get(key) {
            Some(gate) => gate.clone(),
            None => gates.entry(key.to_owned()).or_default().clone(),
        }
    }

    /// Waits for the key's turn; the turn lasts as long as the guard.
    pub async fn turn(&self, key: &str) -> OwnedMutexGuard<()> {
        self.gate(key).lock_owned().await
    }

    /// The key's turn, if it comes within `wait`.
    pub async fn turn_within(&self, key: &str, wait: Duration) -> Option<OwnedMutexGuard<()>> {
        tokio::time::timeout(wait, self.turn(key)).await.ok()
    }
}

/// One key's copy, and the generation a read must still match to store.
#[derive(Debug)]
struct Entry<V> {
    copy: Option<(i64, V)>,
    generation: u64,
}

impl<V> Default for Entry<V> {
    fn default() -> Self {
        Self {
            copy: None,
            generation: 0,
        }
    }
}

/// Copies by key, each used for `ttl_ms` after it was read (by the
/// service's clock), refilled by one reader per key at a time.
#[derive(Debug)]
pub struct TtlCache<V> {
    ttl_ms: i64,
    clock: SharedClock,
    entries: Mutex<HashMap<String, Entry<V>>>,
    flight: SingleFlight,
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache whose copies last `ttl_ms` (0: never used).
    pub fn new(ttl_ms: i64, clock: SharedClock) -> Self {
        Self {
            ttl_ms,
            clock,
            entries: Mutex::default(),
            flight: SingleFlight::default(),
        }
    }

    /// The key's copy while it is fresh.
    pub fn fresh(&self, key: &str) -> Option<V> {
        self.fresh_or_generation(key).ok()
    }

    /// The fresh copy, or the generation a read that replaces it must match.
    fn fresh_or_generation(&self, key: &str) -> Result<V, u64> {
        let now = self.clock.now_ms();
        let entries = self.entries.lock().expect("cache entries");
        let entry = entries.get(key);
        match entry.and_then(|entry| entry.copy.as_ref()) {
            Some((read_at, value)) if (*read_at..read_at + self.ttl_ms).contains(&now) => {
                Ok(value.clone())
            }
            _ => Err(entry.map_or(0, |entry| entry.generation)),
        }
    }

    /// The key's copy while it is fresh; otherwise `read`, by one caller per
    /// key at a time (the others wait, then take its copy). A read that
    /// started before an [`TtlCache::invalidate`] answers its caller but is
    /// not kept.
    pub async fn get_or_read<E, Fut>(&self, key: &str, read: impl FnOnce() -> Fut) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        if let Ok(value) = self.fresh_or_generation(key) {
            return Ok(value);
        }
        let _turn = self.flight.turn(key).await;
        let generation = match self.fresh_or_generation(key) {
            Ok(value) => return Ok(value),
            Err(generation) => generation,
        };
        let read_at = self.clock.now_ms();
        let value = read().await?;
        let mut entries = self.entries.lock().expect("cache entries");
        let entry = entries.entry(key.to_owned()).or_default();
        if entry.generation == generation {
            entry.copy = Some((read_at, value.clone()));
        }
        Ok(value)
    }

    /// Keeps `value`, read at `read_at`, as the key's copy.
    pub fn put(&self, key: &str, value: V, read_at: i64) {
        let mut entries = self.entries.lock().expect("cache entries");
        entries.entry(key.to_owned()).or_default().copy = Some((read_at, value));
    }

    /// Changes the key's copy in place, if there is one.
    pub fn update(&self, key: &str, change: impl FnOnce(&mut V)) {
        let mut entries = self.entries.lock().expect("cache entries");
        if let Some((_, value)) = entries.get_mut(key).and_then(|entry| entry.copy.as_mut()) {
            change(value);
        }
    }

    /// Drops the key's copy: this process just changed what it copies. A
    /// read in flight does not store what it read.
    pub fn invalidate(&self, key: &str) {
        let mut entries = self.entries.lock().expect("cache entries");
        let entry = entries.entry(key.to_owned()).or_default();
        entry.copy = None;
        entry.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::clock::ManualClock;

    fn cache(ttl_ms: i64) -> (Arc<TtlCache<u32>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::starting_now());
        (Arc::new(TtlCache::new(ttl_ms, clock.clone())), clock)
    }

    /// A copy that ran out, 50 callers at once: one read, every caller
    /// answered with it; another key reads on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_miss_together_share_one_read() {
        let (cache, _) = cache(1_000);
        let reads = Arc::new(AtomicU32::new(0));
        let call = |key: &'static str| {
            let (cache, reads) = (cache.clone(), reads.clone());
            tokio::spawn(async move {
                cache
                    .get_or_read(key, || async {
                        let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(n)
                    })
                    .await
                    .unwrap()
            })
        };
        let answers: Vec<u32> = futures_util::future::join_all((0..50).map(|_| call("wxa")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|answer| *answer == 1), "{answers:?}");
        assert_eq!(call("wxb").await.unwrap(), 2);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_copy_lasts_its_ttl_and_no_longer() {
        let (cache, clock) = cache(1_000);
        let read = |n: u32| move || async move { Ok::<_, ()>(n) };
        assert_eq!(cache.get_or_read("wxa", read(1)).await, Ok(1));
        clock.advance(chrono::Duration::milliseconds(999));
        assert_eq!(cache.get_or_read("wxa", read(2)).await, Ok(1));
        clock.advance(chrono::Duration::milliseconds(1));
        assert_eq!(cache.fresh("wxa"), None);
        assert_eq!(cache.get_or_read("wxa", read(3)).await, Ok(3));
        cache.update("wxa", |value| *value = 4);
        assert_eq!(cache.fresh("wxa"), Some(4));
        let (never, _) = self::cache(0);
        never.put("wxa", 5, 0);
        assert_eq!(never.fresh("wxa"), None, "a ttl of 0 keeps nothing");
    }

    /// What this process changed is never hidden by a read that started
    /// before the change.
    #[tokio::test]
    async fn a_read_that_started_before_an_invalidation_is_not_kept() {
        let (cache, _) = cache(60_000);
        let answered = cache
            .get_or_read("wxa", || async {
                cache.invalidate("wxa");
                Ok::<_, ()>(1)
            })
            .await;
        assert_eq!(answered, Ok(1), "the caller still gets what was read");
        assert_eq!(cache.fresh("wxa"), None);
        assert_eq!(
            cache.get_or_read("wxa", || async { Ok::<_, ()>(2) }).await,
            Ok(2)
        );
        assert_eq!(cache.fresh("wxa"), Some(2));
    }
}
