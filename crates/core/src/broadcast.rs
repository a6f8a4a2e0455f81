//! The rules of a broadcast: one template message sent to many users, each
//! recipient through the ordinary send path. What a caller may do to a job
//! in each state, when a worker may run it, what one recipient's send means
//! for the recipient and for the job (45009 pauses it until the quota day
//! resets, 45011 slows it, an open breaker pauses it), the pacing of a
//! job's batches and the message id each recipient's send carries.
//!
//! Pure: every time is handed in as Unix milliseconds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::failure::SendFailure;
use crate::send::request::{Lang, MiniprogramState, SendRequest};
use crate::states::{BroadcastState, Channel, Delivery, MessageStatus, PauseReason};

/// What every recipient of a broadcast is sent: a send request without its
/// user (and, for per-recipient data, without its data). Stored as JSON on
/// the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastSpec {
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// The data of every recipient that brings none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emphasis_keyword: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, deserialize_with = "crate::nulls::null_as_default")]
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miniprogram_state: Option<MiniprogramState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<Lang>,
}

impl BroadcastSpec {
    /// The send request of one recipient: its own data when it has any, else
    /// the broadcast's. A broadcast never waits for a credential: a
    /// recipient without one is reported as such.
    pub fn request_for(&self, openid: &str, data: Option<Map<String, Value>>) -> SendRequest {
        SendRequest {
            touser: openid.to_owned(),
            template_id: self.template_id.clone(),
            page: self.page.clone(),
            data: data.or_else(|| self.data.clone()),
            emphasis_keyword: self.emphasis_keyword.clone(),
            color: self.color.clone(),
            wait_seconds: None,
            delivery: self.delivery,
            channel: self.channel,
            miniprogram_state: self.miniprogram_state,
            lang: self.lang,
            urgent: false,
            send_at: None,
            // A recipient's message is the broadcast's, not a caller's send.
            reference: None,
            idempotency_key: None,
        }
    }
}

/// The id of the message a recipient's send creates after `sends` earlier
/// ones came back with nothing sent. The same on every instance, so a send
/// is tied to its recipient before it starts: the ledger keeps one message
/// per id, so a second instance that takes the recipient over finds the
/// message instead of creating another.
pub fn message_id(broadcast_id: &str, seq: i64, sends: i64) -> String {
    format!("{broadcast_id}-{seq}-{sends}")
}

/// Whether `id` can name a message: a UUID (a single send's), or a
/// broadcast recipient's `{uuid}-{seq}-{sends}`.
pub fn is_message_id(id: &str) -> bool {
    let is_uuid = |text: &str| {
        text.len() == 36
            && text.char_indices().all(|(at, c)| match at {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    let digits = |text: &str| {
        !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit())
    };
    if id.len() <= 36 {
        return is_uuid(id);
    }
    let Some((head, rest)) = id.split_at_checked(36) else {
        return false;
    };
    match rest.strip_prefix('-').and_then(|rest| rest.split_once('-')) {
        Some((seq, sends)) => is_uuid(head) && digits(seq) && digits(sends),
        None => false,
    }
}

/// What a caller asks of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Cancel,
}

/// A job's state and why it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStanding {
    pub state: BroadcastState,
    pub pause_reason: Option<PauseReason>,
}

/// Why a command does not apply to a job in its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {state} broadcast cannot be {verb}")]
pub struct CommandRefused {
    pub state: BroadcastState,
    pub verb: &'static str,
}

/// What `command` does to a job: its new standing. Pausing a paused job, or
/// resuming a running one, changes nothing (a retried request is harmless);
/// a caller's resume lifts a pause of the quota or the breaker too (the
/// sends then meet the block and pause the job again). A finished or
/// cancelled job takes no command.
pub fn apply_command(job: JobStanding, command: Command) -> Result<JobStanding, CommandRefused> {
    use BroadcastState::*;
    let refused = |verb| CommandRefused {
        state: job.state,
        verb,
    };
    let standing = |state, pause_reason| JobStanding {
        state,
        pause_reason,
    };
    match (job.state, command) {
        (Finished | Cancelled, Command::Pause) => Err(refused("paused")),
        (Finished | Cancelled, Command::Resume) => Err(refused("resumed")),
        (Finished | Cancelled, Command::Cancel) => Err(refused("cancelled")),
        (Scheduled | Running | Paused, Command::Cancel) => Ok(standing(Cancelled, None)),
        (Scheduled, Command::Pause) | (Running, Command::Pause) | (Paused, Command::Pause) => {
            Ok(standing(Paused, Some(PauseReason::Caller)))
        }
        (Scheduled, Command::Resume) => Ok(job),
        (Running, Command::Resume) => Ok(job),
        (Paused, Command::Resume) => Ok(standing(Running, None)),
    }
}

/// What a worker may do with a job at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet (or ever).
    No,
    /// Send to its recipients (a scheduled job whose time came, or a pause
    /// of the quota or the breaker that ran out, is running from now).
    Run,
}

/// Whether a worker may send for a job now: a running job; a scheduled one
/// once `send_at` came; one paused by the quota or the breaker once
/// `paused_until` passed. A caller's pause waits for the caller.
pub fn due(job: JobStanding, send_at: i64, paused_until: Option<i64>, now: i64) -> Due {
    match (job.state, job.pause_reason) {
        (BroadcastState::Running, _) => Due::Run,
        (BroadcastState::Scheduled, _) if send_at <= now => Due::Run,
        (BroadcastState::Paused, Some(PauseReason::Quota | PauseReason::Breaker))
            if paused_until.is_some_and(|until| until <= now) =>
        {
            Due::Run
        }
        _ => Due::No,
    }
}

/// The result a recipient ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Sent,
    /// No credential of the template (`errcode` 43101 when WeChat said so).
    NoCredential {
        errcode: Option<i64>,
    },
    /// Held back by the user's cap or quiet hours; the credential was kept.
    Capped,
    /// Not sent: the send path's code, and WeChat's errcode.
    Failed {
        code: &'static str,
        errcode: Option<i64>,
    },
    /// May or may not have been delivered; never sent again.
    Unknown,
}

/// What holds a whole job back after one recipient's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// 45009: the app's quota is spent until `until_ms` (midnight China time).
    Quota { until_ms: i64 },
    /// 45011: WeChat's per-minute limit; the job slows down.
    Slow,
    /// The app's breaker is open until `until_ms`.
    Breaker { until_ms: i64 },
    /// The app's quiet hours refuse sends until `until_ms`, when they open.
    QuietHours { until_ms: i64 },
}

/// What becomes of a recipient after its send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientStep {
    /// Its result, final.
    Record(RecipientResult),
    /// Nothing was sent and nothing spent: send again later under a new
    /// message id, counting a try unless the job's hold explains it.
    Retry { hold: Option<Hold>, counts: bool },
    /// Its message may still be in flight (pending, or waiting for a
    /// token): the ledger's recovery and workers settle it; the recipient is
    /// looked at again later, and its message read, never sent again.
    Recheck,
}

/// What one recipient's message says for the recipient, after its send or
/// when found by an instance that took the recipient over. `tries` counts
/// the sends that came back with nothing sent; at `max_tries` the next such
/// answer is final.
pub fn recipient_step(
    status: MessageStatus,
    failure: Option<&SendFailure>,
    tries: i64,
    max_tries: i64,
    now: i64,
) -> RecipientStep {
    match status {
        MessageStatus::Sent => return RecipientStep::Record(RecipientResult::Sent),
        MessageStatus::Unknown => return RecipientStep::Record(RecipientResult::Unknown),
        // Scheduled: held for the end of the app's quiet hours, and sent
        // then by the scheduler, never again by the job.
        MessageStatus::Pending | MessageStatus::Waiting | MessageStatus::Scheduled => {
            return RecipientStep::Recheck
        }
        MessageStatus::Failed => {}
    }
    let Some(failure) = failure else {
        return RecipientStep::Record(RecipientResult::Failed {
            code: "failed",
            errcode: None,
        });
    };
    let retry = |hold: Option<Hold>, counts: bool| {
        if counts && tries + 1 >= max_tries {
            RecipientStep::Record(failed(failure))
        } else {
            RecipientStep::Retry { hold, counts }
        }
    };
    match failure {
        SendFailure::NoCredential => {
            RecipientStep::Record(RecipientResult::NoCredential { errcode: None })
        }
        SendFailure::GrantsRevoked { errcode } => {
            RecipientStep::Record(RecipientResult::NoCredential {
                errcode: Some(*errcode),
            })
        }
        SendFailure::QuotaExhausted { until_ms } => retry(
            Some(Hold::Quota {
                until_ms: *until_ms,
            }),
            false,
        ),
        SendFailure::RateLimited => retry(Some(Hold::Slow), true),
        SendFailure::CircuitOpen { retry_after_ms } => retry(
            Some(Hold::Breaker {
                until_ms: now + retry_after_ms,
            }),
            false,
        ),
        SendFailure::UpstreamBusy
        | SendFailure::UpstreamUnreachable
        | SendFailure::CredentialNotReady
        | SendFailure::TokenUnavailable { .. }
        | SendFailure::TokenRejected { .. } => retry(None, true),
        SendFailure::OutcomePending => RecipientStep::Recheck,
        // Refused before anything was claimed: the grant is kept.
        SendFailure::UserSendLimit { .. } => RecipientStep::Record(RecipientResult::Capped),
        SendFailure::QuietHours { opens_at_ms } => retry(
            Some(Hold::QuietHours {
                until_ms: *opens_at_ms,
            }),
            false,
        ),
        SendFailure::OutcomeUnknown => RecipientStep::Record(RecipientResult::Unknown),
        SendFailure::RequestInvalid { .. }
        | SendFailure::ApiRetired { .. }
        | SendFailure::Unexpected { .. }
        | SendFailure::AttemptLimit
        | SendFailure::Cancelled => RecipientStep::Record(failed(failure)),
    }
}

/// A failure as a recipient's final result.
fn failed(failure: &SendFailure) -> RecipientResult {
    let errcode = match failure {
        SendFailure::GrantsRevoked { errcode }
        | SendFailure::RequestInvalid { errcode }
        | SendFailure::ApiRetired { errcode }
        | SendFailure::TokenRejected { errcode }
        | SendFailure::Unexpected { errcode } => Some(*errcode),
        SendFailure::TokenUnavailable { errcode } => *errcode,
        SendFailure::QuotaExhausted { .. } => Some(45009),
        SendFailure::RateLimited => Some(45011),
        _ => None,
    };
    RecipientResult::Failed {
        code: failure.code(),
        errcode,
    }
}

/// What the answers of one batch do to its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobEffect {
    /// Pause the job until then, for this reason.
    pub pause: Option<(PauseReason, i64)>,
    /// The job's new rate (sends per second), when it changes.
    pub rate: Option<i64>,
}

/// The job's effect of a batch's holds: the quota's pause wins over quiet
/// hours', and both over the breaker's (they last longer); any 45011 halves the rate (to 1 a second at
/// least); a batch without a 45011 raises a slowed rate by a tenth (1 at
/// least), back up to the configured one.
pub fn job_effect(holds: &[Hold], rate: i64, configured: i64) -> JobEffect {
    let quota = holds.iter().find_map(|hold| match hold {
        Hold::Quota { until_ms } => Some((PauseReason::Quota, *until_ms)),
        _ => None,
    });
    let breaker = holds.iter().find_map(|hold| match hold {
        Hold::Breaker { until_ms } => Some((PauseReason::Breaker, *until_ms)),
        _ => None,
    });
    let quiet = holds.iter().find_map(|hold| match hold {
        Hold::QuietHours { until_ms } => Some((PauseReason::QuietHours, *until_ms)),
        _ => None,
    });
    let slowed = holds.contains(&Hold::Slow);
    let next = if slowed {
        (rate / 2).max(1)
    } else if rate < configured {
        (rate + (rate / 10).max(1)).min(configured)
    } else {
        rate
    };
    JobEffect {
        pause: quota.or(quiet).or(breaker),
        rate: (next != rate).then_some(next),
    }
}

/// The pacing of a job: batches are leased no faster than its rate, across
/// every instance (the next lease time is stored on the job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceInput {
    pub now: i64,
    /// When the job's next batch may be leased.
    pub next_lease_at: i64,
    /// Sends per second (1 at least).
    pub rate: i64,
    /// The most recipients one lease takes.
    pub max_batch: i64,
}

/// What the pacing allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Nothing before `until`.
    Wait { until: i64 },
    /// Lease up to `count` recipients; the next lease time is pushed out by
    /// the recipients actually leased ([`pace_after`]).
    Take { count: i64 },
}

/// Whether a batch may be leased now, and how big: at most a second's worth
/// of the rate, and at most `max_batch`.
pub fn pace(input: PaceInput) -> Pace {
    if input.next_lease_at > input.now {
        return Pace::Wait {
            until: input.next_lease_at,
        };
    }
    Pace::Take {
        count: input.rate.max(1).min(input.max_batch.max(1)),
    }
}

/// When the batch after one of `leased` recipients may be leased: `leased`
/// sends at `rate` a second after now (or after the previous slot, when
/// the job is behind by less than a second: a late worker catches up, but
/// never by more than a second's worth).
pub fn pace_after(input: PaceInput, leased: i64) -> i64 {
    input.next_lease_at.max(input.now - 1000) + leased * 1000 / input.rate.max(1)
}

/// A job's send rate and estimated end, from what is done so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Recipients done per second since the job started.
    pub rate: f64,
    /// When the rest should be done, at that rate.
    pub estimated_end: Option<i64>,
}

/// The rate so far and the estimated end of a job started at `started_at`
/// (none before it started or before anything is done).
pub fn progress(done: i64, remaining: i64, started_at: Option<i64>, now: i64) -> Progress {
    let Some(started_at) = started_at else {
        return Progress {
            rate: 0.0,
            estimated_end: None,
        };
    };
    let elapsed_ms = (now - started_at).max(1);
    let rate = done as f64 * 1000.0 / elapsed_ms as f64;
    let estimated_end = if remaining == 0 {
        Some(now)
    } else if done > 0 {
        Some(now + (remaining as f64 * 1000.0 / rate) as i64)
    } else {
        None
    };
    Progress {
        rate,
        estimated_end,
    }
}

#[cfg(test)]
mod tests;
