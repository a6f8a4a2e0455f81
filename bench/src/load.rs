//! Closed-loop load: N clients, each sending its next request as soon as the
//! previous one is answered, for a warm-up and then a measured window.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How one request ended.
pub enum Outcome {
    /// Success, worth this many units (sends, or credentials collected).
    Ok(u64),
    /// A failure, counted under its label.
    Fail(String),
    /// The work ran out (no credential left): every client stops.
    Exhausted,
}

/// What a measured window gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Successful units per second in the measured window.
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests answered in the window (success or not).
    pub requests: u64,
    pub units: u64,
    pub failures: BTreeMap<String, u64>,
    /// The measured window in seconds (shorter than asked if the work ran out).
    pub window_s: f64,
    /// Set when the work ran out before the window ended.
    pub exhausted: bool,
}

/// Runs `clients` closed loops of `op`, which gets a global request number.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let op = Arc::new(op);
    let sequence = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let measure_to = measure_from + duration;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (op, sequence, stop) = (op.clone(), sequence.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut units = 0u64;
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            let mut exhausted_at = None;
            while !stop.load(Ordering::Relaxed) {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                if sent >= measure_to {
                    break;
                }
                let outcome = op(n).await;
                let done = Instant::now();
                if let Outcome::Exhausted = outcome {
                    stop.store(true, Ordering::Relaxed);
                    exhausted_at = Some(done);
                    break;
                }
                if sent < measure_from || done > measure_to {
                    continue;
                }
                latencies_us.push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                match outcome {
                    Outcome::Ok(count) => units += count,
                    Outcome::Fail(label) => *failures.entry(label).or_default() += 1,
                    Outcome::Exhausted => unreachable!(),
                }
            }
            (latencies_us, units, failures, exhausted_at)
        }));
    }
    let mut latencies = Vec::new();
    let mut stats = Stats::default();
    let mut ended = measure_to;
    for task in tasks {
        let (lat, units, failures, exhausted_at) = task.await.expect("a client task panicked");
        latencies.extend(lat);
        stats.units += units;
        for (label, count) in failures {
            *stats.failures.entry(label).or_default() += count;
        }
        if let Some(at) = exhausted_at {
            stats.exhausted = true;
            ended = ended.min(at);
        }
    }
    let window = ended.saturating_duration_since(measure_from).as_secs_f64();
    stats.window_s = window;
    stats.requests = latencies.len() as u64;
    stats.rate = if window > 0.0 {
        stats.units as f64 / window
    } else {
        0.0
    };
    latencies.sort_unstable();
    stats.p50_ms = percentile_ms(&latencies, 0.50);
    stats.p99_ms = percentile_ms(&latencies, 0.99);
    stats.max_ms = latencies.last().map_or(0.0, |us| f64::from(*us) / 1000.0);
    stats
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
