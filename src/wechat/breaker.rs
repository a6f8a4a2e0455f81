//! Stops hammering a failing WeChat: after repeated failures an app's circuit
//! opens, sends fail fast with 503 and Retry-After, and after a cooldown one
//! call probes whether WeChat is back.
//!
//! Kept per process on purpose: each instance judges the WeChat it can reach,
//! and a breaker needs no coordination to be safe (it only ever withholds calls).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::clock::SharedClock;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until_ms: i64,
    },
    /// One probe is out; everyone else fails fast until it reports.
    HalfOpen,
}

/// The circuits of every app.
#[derive(Debug)]
pub struct Breakers {
    states: Mutex<HashMap<String, State>>,
    clock: SharedClock,
    threshold: u32,
    cooldown_ms: i64,
}

impl Breakers {
    /// Opens after `threshold` failures in a row, for `cooldown_ms`.
    pub fn new(clock: SharedClock, threshold: u32, cooldown: std::time::Duration) -> Self {
        Self {
            states: Mutex::new(HashMap::new()),
            clock,
            threshold: threshold.max(1),
            cooldown_ms: crate::clock::ms(cooldown),
        }
    }

    /// `Ok` when a call may go out; otherwise the milliseconds to wait.
    pub fn admit(&self, appid: &str) -> Result<(), i64> {
        let now = self.clock.now_ms();
        let mut states = self.states.lock().expect("breaker lock");
        let state = states
            .entry(appid.to_owned())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until_ms } if now >= until_ms => {
                // Still counted open: one probe is out.
                *state = State::HalfOpen;
                Ok(())
            }
            State::Open { until_ms } => Err(until_ms - now),
            State::HalfOpen => Err(self.cooldown_ms),
        }
    }

    /// WeChat answered sensibly.
    pub fn success(&self, appid: &str) {
        let mut states = self.states.lock().expect("breaker lock");
        let was = states.insert(appid.to_owned(), State::Closed { failures: 0 });
        if !matches!(was, Some(State::Closed { .. })) {
            crate::monitoring::breaker(appid, false);
        }
    }

    /// WeChat failed (unreachable, 5xx, garbage, busy).
    pub fn failure(&self, appid: &str) {
        let now = self.clock.now_ms();
        let mut states = self.states.lock().expect("breaker lock");
        let state = states
            .entry(appid.to_owned())
            .or_insert(State::Closed { failures: 0 });
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Open { until_ms } => State::Open { until_ms },
            _ => {
                tracing::warn!(
                    appid,
                    cooldown_ms = self.cooldown_ms,
                    "WeChat keeps failing: circuit open"
                );
                crate::monitoring::breaker(appid, true);
                State::Open {
                    until_ms: now + self.cooldown_ms,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn opens_after_repeated_failures_then_probes_once() {
        let clock = Arc::new(ManualClock::starting_now());
        let breakers = Breakers::new(clock.clone(), 3, std::time::Duration::from_secs(10));
        for _ in 0..2 {
            assert!(breakers.admit("wx1").is_ok());
            breakers.failure("wx1");
        }
        assert!(breakers.admit("wx1").is_ok(), "two failures: still closed");
        breakers.failure("wx1");
        assert_eq!(breakers.admit("wx1"), Err(10_000));
        assert!(breakers.admit("wx2").is_ok(), "apps are independent");
        clock.advance(Duration::seconds(10));
        assert!(breakers.admit("wx1").is_ok(), "the probe");
        assert!(breakers.admit("wx1").is_err(), "only one probe at a time");
        breakers.failure("wx1");
        assert!(breakers.admit("wx1").is_err(), "a failed probe reopens");
        clock.advance(Duration::seconds(10));
        assert!(breakers.admit("wx1").is_ok());
        breakers.success("wx1");
        assert!(breakers.admit("wx1").is_ok());
        assert!(breakers.admit("wx1").is_ok(), "closed again");
    }
}
