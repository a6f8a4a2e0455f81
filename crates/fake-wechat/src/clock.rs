//! Time as the fake sees it.
//!
//! The fake is an independent program, so it has its own notion of a clock
//! rather than the gateway's: anything that says "now" in Unix milliseconds.
//! A test that runs the gateway beside the fake hands the fake a closure over
//! the gateway's manual clock, and both then see the same "seven days later":
//!
//! ```
//! use std::sync::atomic::{AtomicI64, Ordering};
//! use std::sync::Arc;
//!
//! let millis = Arc::new(AtomicI64::new(1_700_000_000_000));
//! let shared = millis.clone();
//! let fake = fake_wechat::FakeWeChat::new(move || shared.load(Ordering::SeqCst));
//! millis.fetch_add(7 * 86_400_000, Ordering::SeqCst); // the fake sees this too
//! # drop(fake);
//! ```

/// A source of the current time, in Unix milliseconds.
pub trait Clock: Send + Sync {
    /// The current instant as Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// Any `Fn() -> i64` is a clock: the simplest way to share one between the
/// gateway and the fake in a test.
impl<F> Clock for F
where
    F: Fn() -> i64 + Send + Sync,
{
    fn now_ms(&self) -> i64 {
        self()
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closure_is_a_clock() {
        let clock = || 42_i64;
        assert_eq!(Clock::now_ms(&clock), 42);
    }

    #[test]
    fn the_system_clock_tells_the_wall_time() {
        let before = chrono::Utc::now().timestamp_millis();
        let now = SystemClock.now_ms();
        let after = chrono::Utc::now().timestamp_millis();
        assert!((before..=after).contains(&now));
    }
}
