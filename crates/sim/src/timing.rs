//! Scheduled sends and quiet hours in the simulation: some sends ask for a
//! later `send_at`, some are urgent, and the app keeps quiet hours that fall
//! inside the run (held until they open, or refused). Every instance runs
//! the [`ScheduledSender`](formid_gateway::workers::ScheduledSender) beside
//! its other workers, through the run's crashes, lost answers and skewed
//! clocks. The invariants, checked from WeChat's side after quiescence:
//! - no message delivered before its `send_at`;
//! - no message that is not urgent delivered inside quiet hours;
//! - no message left scheduled (each reached an end: the ledger-wide
//!   invariants then hold for it like for any other message).
//!
//! Both rules are applied by the instances' clocks, which lie up to the
//! largest skew away from WeChat's: the checks allow that much, no more.

use std::collections::{BTreeMap, BTreeSet};

use formid_gateway::config::{QuietHoursSettings, QuietMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use formid_gateway::ledger::states::MessageStatus;

use crate::invariants::{Snapshot, Violation};
use crate::run::SendPlan;
use crate::{Counts, EPOCH_MS};

const MINUTE_MS: i64 = 60_000;

/// The scheduled sends and quiet hours of a plan.
#[derive(Debug, Clone, Default)]
pub struct TimingPlan {
    /// The time each scheduled send asked for (absolute ms), by message id.
    pub send_at: BTreeMap<String, i64>,
    /// The urgent sends (which ignore quiet hours), by message id.
    pub urgent: BTreeSet<String>,
    /// The app's quiet hours, if it keeps any in this run.
    pub quiet: Option<QuietPlan>,
}

impl TimingPlan {
    /// The latest time a message of the plan may be due (absolute ms).
    pub fn last_due(&self) -> i64 {
        let last_send_at = self.send_at.values().max().copied().unwrap_or(EPOCH_MS);
        let quiet_end = self.quiet.as_ref().map_or(EPOCH_MS, |quiet| quiet.end);
        last_send_at.max(quiet_end)
    }
}

/// Quiet hours placed inside the run.
#[derive(Debug, Clone)]
pub struct QuietPlan {
    /// As the app's configuration says them.
    pub settings: QuietHoursSettings,
    /// The window's occurrence inside the run, absolute ms `[start, end)`.
    pub start: i64,
    pub end: i64,
}

/// Marks some of `sends` scheduled and some urgent, and draws the app's
/// quiet hours (on two seeds in three) over the run of `window_ms`, from a
/// stream of its own.
///
/// The run starts at [`EPOCH_MS`], a whole minute (08:00 UTC); quiet hours
/// are whole minutes of local time, so the window is placed by choosing the
/// minute it starts, one or two minutes long, at or after the run's start.
///
/// Real-time runs (real databases) schedule sends up to 3 s ahead, and
/// their quiet hours are the run's first minute, which the run then waits
/// out.
pub fn draw(seed: u64, sends: &mut [SendPlan], window_ms: i64, real: bool) -> TimingPlan {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7469_6d69_6e67_0001);
    let mut plan = TimingPlan::default();
    // Up to a minute and a half ahead: past the quiet window on some,
    // inside it on others.
    let ahead_ms = if real { 100..=3_000 } else { 500..=90_000 };
    for send in sends.iter_mut() {
        if rng.gen_bool(0.25) {
            let at = EPOCH_MS + send.at_ms + rng.gen_range(ahead_ms.clone());
            send.send_at = Some(at);
            plan.send_at.insert(send.id.clone(), at);
        }
        if rng.gen_bool(0.1) {
            send.urgent = true;
            plan.urgent.insert(send.id.clone());
        }
    }
    if rng.gen_ratio(2, 3) {
        let (first_minute, length) = if real {
            (0, 1)
        } else {
            (
                rng.gen_range(0..=(window_ms / MINUTE_MS).min(2)),
                rng.gen_range(1..=2),
            )
        };
        // Local time = UTC + the offset; EPOCH_MS is 08:00 UTC.
        let offset_minutes: i64 = rng.gen_range(-12 * 60..=14 * 60);
        let local_start = (8 * 60 + offset_minutes + first_minute).rem_euclid(24 * 60);
        let local_end = (local_start + length) % (24 * 60);
        let mode = if rng.gen_ratio(1, 3) {
            QuietMode::Refuse
        } else {
            QuietMode::Wait
        };
        plan.quiet = Some(QuietPlan {
            settings: QuietHoursSettings {
                start: hh_mm(local_start),
                end: hh_mm(local_end),
                utc_offset: offset(offset_minutes),
                mode,
            },
            start: EPOCH_MS + first_minute * MINUTE_MS,
            end: EPOCH_MS + (first_minute + length) * MINUTE_MS,
        });
    }
    plan
}

fn hh_mm(minute_of_day: i64) -> String {
    format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
}

fn offset(minutes: i64) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let minutes = minutes.abs();
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Every timing invariant that broke, given each message's deliveries by
/// WeChat's clock and the largest clock skew of an instance.
pub fn check(
    plan: &TimingPlan,
    snapshot: &Snapshot,
    delivered_at: &BTreeMap<String, Vec<i64>>,
    max_skew_ms: i64,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for message in &snapshot.messages {
        if message.status == MessageStatus::Scheduled {
            violations.push(Violation {
                text: format!("{} is still scheduled after quiescence", message.id),
                messages: vec![message.id.clone()],
                credentials: Vec::new(),
            });
        }
    }
    for (id, times) in delivered_at {
        for &at in times {
            if let Some(&send_at) = plan.send_at.get(id) {
                if at < send_at - max_skew_ms {
                    violations.push(early(id, at, send_at));
                }
            }
            let Some(quiet) = &plan.quiet else { continue };
            let inside = at >= quiet.start + max_skew_ms && at < quiet.end - max_skew_ms;
            if inside && !plan.urgent.contains(id) {
                violations.push(Violation {
                    text: format!(
                        "{id} was delivered at {} ms, inside quiet hours [{}, {}) ms",
                        at - EPOCH_MS,
                        quiet.start - EPOCH_MS,
                        quiet.end - EPOCH_MS
                    ),
                    messages: vec![id.clone()],
                    credentials: Vec::new(),
                });
            }
        }
    }
    violations
}

/// What the run's timing did, for the report: scheduled sends answered
/// and delivered, sends held by quiet hours, refused inside them, urgent
/// sends delivered inside them, scheduled messages ended unsent.
pub fn figures(
    plan: &TimingPlan,
    snapshot: &Snapshot,
    told: &BTreeMap<String, MessageStatus>,
    delivered_at: &BTreeMap<String, Vec<i64>>,
) -> Counts {
    let mut counts = Counts::new();
    let mut add = |name: &'static str| *counts.entry(name).or_default() += 1;
    for (id, status) in told {
        let scheduled = plan.send_at.contains_key(id);
        match status {
            MessageStatus::Scheduled if scheduled => add("timing: answered scheduled (send_at)"),
            MessageStatus::Scheduled => add("timing: held by quiet hours"),
            _ => {}
        }
    }
    for message in &snapshot.messages {
        let delivered = delivered_at.get(&message.id);
        if plan.send_at.contains_key(&message.id) && delivered.is_some() {
            add("timing: scheduled sends delivered");
        }
        if message.error_code.as_deref() == Some("user_send_limit") && message.attempts.is_empty() {
            add("timing: ended by a send cap unsent");
        }
        let Some(quiet) = &plan.quiet else { continue };
        let inside = |at: &i64| *at >= quiet.start && *at < quiet.end;
        if plan.urgent.contains(&message.id) && delivered.is_some_and(|t| t.iter().any(inside)) {
            add("timing: urgent sends delivered inside quiet hours");
        }
    }
    if plan
        .quiet
        .as_ref()
        .is_some_and(|q| q.settings.mode == QuietMode::Refuse)
    {
        let refused = told
            .iter()
            .filter(|(id, status)| {
                **status == MessageStatus::Failed && !snapshot.messages.iter().any(|m| &m.id == *id)
            })
            .count();
        *counts
            .entry("timing: refused inside quiet hours")
            .or_default() += refused as u64;
    }
    counts
}

fn early(id: &str, at: i64, send_at: i64) -> Violation {
    Violation {
        text: format!(
            "{id} was delivered at {} ms, before its send_at {} ms",
            at - EPOCH_MS,
            send_at - EPOCH_MS
        ),
        messages: vec![id.to_owned()],
        credentials: Vec::new(),
    }
}
