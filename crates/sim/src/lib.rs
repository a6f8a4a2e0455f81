//! A deterministic simulation of formid-gateway's send path, token keeper
//! and workers, which checks RELIABILITY.md's promise from WeChat's side.
//!
//! Several gateway instances — each a real [`Sender`](formid_gateway::sending::Sender),
//! [`TokenKeeper`](formid_gateway::tokens::TokenKeeper), [`Recovery`](formid_gateway::workers::Recovery)
//! and [`WaitingSender`](formid_gateway::workers::WaitingSender) — share one ledger and one
//! WeChat. WeChat is an in-process model ([`wechat_model`]) that knows each
//! credential's true issue time and uses, and that loses, delays and refuses
//! calls at seeded moments; the ledger is either an in-memory model of the
//! SQL ([`ledger_model`]) or the real SQLite/PostgreSQL storage. A seeded
//! scheduler ([`run`]) interleaves sends, crashes, late credentials and clock
//! skew on a tokio runtime whose time only moves when every task sleeps, so a
//! run is a function of its seed. After the run quiesces, [`invariants`]
//! checks the promise from WeChat's side: who was notified, how often, with
//! which credential.

pub mod broadcast;
pub mod invariants;
pub mod ledger_model;
pub mod run;
pub mod timing;
pub mod wechat_model;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use formid_gateway::clock::Clock;

/// The simulated wall clock every run starts at (Unix ms, in 2027): far
/// from any real date, so that nothing can lean on the machine's clock.
pub const EPOCH_MS: i64 = 1_800_000_000_000;

/// Where simulated time starts: an epoch in Unix ms and the tokio instant it
/// corresponds to. Under paused tokio time the instant only moves when every
/// task sleeps, so time read from it is part of the seed's run.
#[derive(Debug, Clone, Copy)]
pub struct TimeBase {
    pub epoch_ms: i64,
    pub start: tokio::time::Instant,
}

impl TimeBase {
    /// Time starts now (the tokio instant) at [`EPOCH_MS`].
    pub fn now() -> Self {
        Self {
            epoch_ms: EPOCH_MS,
            start: tokio::time::Instant::now(),
        }
    }

    /// The true time, in Unix ms: WeChat's clock.
    pub fn now_ms(&self) -> i64 {
        self.epoch_ms + i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The tokio instant of a true time.
    pub fn instant_at(&self, at_ms: i64) -> tokio::time::Instant {
        let offset = u64::try_from(at_ms - self.epoch_ms).unwrap_or(0);
        self.start + std::time::Duration::from_millis(offset)
    }
}

/// One instance's clock: the true time plus the instance's skew.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub base: TimeBase,
    pub skew_ms: i64,
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.now_ms()).expect("a simulated instant in range")
    }

    fn now_ms(&self) -> i64 {
        self.base.now_ms() + self.skew_ms
    }
}

/// One line of a run's trace.
#[derive(Debug, Clone)]
pub struct Event {
    /// True time (WeChat's clock), ms since the run started.
    pub at_ms: i64,
    /// Who did it: `gw1.0` (instance slot 1, first generation), `wechat`, `driver`.
    pub actor: String,
    pub what: String,
}

/// The events of one run, in the order they happened.
#[derive(Debug)]
pub struct Trace {
    base: TimeBase,
    events: Mutex<Vec<Event>>,
}

impl Trace {
    pub fn new(base: TimeBase) -> Self {
        Self {
            base,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Records an event at the current true time.
    pub fn record(&self, actor: &str, what: String) {
        let at_ms = self.base.now_ms() - self.base.epoch_ms;
        self.events.lock().expect("trace lock").push(Event {
            at_ms,
            actor: actor.to_owned(),
            what,
        });
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("trace lock").clone()
    }

    /// A hash of every event (time, actor, text): two runs of one seed must
    /// give the same. `DefaultHasher::new()` has fixed keys, so the hash is
    /// stable within one build.
    pub fn hash(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        for event in self.events.lock().expect("trace lock").iter() {
            (event.at_ms, &event.actor, &event.what).hash(&mut hasher);
        }
        hasher.finish()
    }

    /// The trace as text, one event a line.
    pub fn render(&self, filter: impl Fn(&Event) -> bool) -> String {
        let mut text = String::new();
        for event in self.events.lock().expect("trace lock").iter() {
            if filter(event) {
                text.push_str(&format!(
                    "{:>10.3}s  {:<8} {}\n",
                    event.at_ms as f64 / 1000.0,
                    event.actor,
                    event.what
                ));
            }
        }
        text
    }
}

/// Counters by name, ordered for printing.
pub type Counts = BTreeMap<&'static str, u64>;

/// Adds `other` into `into`.
pub fn add_counts(into: &mut Counts, other: &Counts) {
    for (name, count) in other {
        *into.entry(name).or_default() += count;
    }
}
