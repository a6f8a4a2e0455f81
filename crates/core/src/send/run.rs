//! The rules of a run around its calls to WeChat: where it starts, whether a
//! call passes the circuit breaker, what a message with no credential left
//! does, and what becomes of a credential and its message when no token can
//! be had. Pure, like [`super::decide`]; its table test has their rows too.

use super::decide::{Fate, Finish, Policy, Settle, Spending};
use crate::failure::SendFailure;
use crate::ledger::{ClaimedCredential, Settlement};
use crate::states::{AttemptOutcome, Channel};

/// Where a run of the send path starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Claim the first credential (a message taken up again).
    ClaimFirst,
    /// The first claim was made with the message's creation: this is what
    /// it found.
    AlreadyClaimed(Option<ClaimedCredential>),
    /// The app's daily quota is spent until `until_ms`.
    QuotaBlocked { until_ms: i64 },
    /// A credential found leased to the message after a crash.
    Recovered(ClaimedCredential),
}

/// A run's first move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Spend this credential. A recovered one may already be in WeChat's
    /// hands: it is probed, or ended unproven ([`super::decide::on_recovered`]),
    /// whatever the quota says.
    Spend {
        credential: ClaimedCredential,
        recovered: bool,
    },
    /// Claim the user's credential that expires soonest.
    Claim,
    /// Nothing to claim: see [`none_left`].
    NoneLeft,
    /// Fail the message without claiming or calling.
    Fail(SendFailure),
}

/// The first move of a run. A subscribe message the batched start found no
/// grant for may still be paid by a long-term subscription: it claims,
/// and the claim looks for both.
pub fn open(start: Start, channel: Channel) -> Opening {
    match start {
        Start::ClaimFirst => Opening::Claim,
        Start::AlreadyClaimed(None) => match channel {
            Channel::Subscribe => Opening::Claim,
            Channel::Template => Opening::NoneLeft,
        },
        Start::AlreadyClaimed(Some(credential)) => Opening::Spend {
            credential,
            recovered: false,
        },
        Start::QuotaBlocked { until_ms } => Opening::Fail(SendFailure::QuotaExhausted { until_ms }),
        Start::Recovered(credential) => Opening::Spend {
            credential,
            recovered: true,
        },
    }
}

/// The app's quota block, if it still holds at `now`.
pub fn quota_block(blocked_until: Option<i64>, now: i64) -> Option<i64> {
    blocked_until.filter(|until| *until > now)
}

/// Whether a call may go out: a probe passes the breaker without asking it
/// (`admit` is not called), since probes are how an unknown outcome ends;
/// any other call asks, and a refusal gives the credential back and fails
/// the message `upstream_circuit_open`.
pub fn admission(state: &Spending, admit: impl FnOnce() -> Result<(), i64>) -> Option<Settle> {
    if state.probing {
        return None;
    }
    admit()
        .err()
        .map(|retry_after_ms| Settle::GiveBack(SendFailure::CircuitOpen { retry_after_ms }))
}

/// Why no token could be had, as far as the send's rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTrouble {
    /// Waiting can cure it (WeChat's token endpoint unreachable or busy, the
    /// fetch budget spent, another instance's fetch slow); `retry_at_ms` when
    /// the token keeper knows when a fetch may succeed.
    Transient { retry_at_ms: Option<i64> },
    /// Waiting does not cure it: WeChat refused for the app's configuration
    /// (`errcode`), or the app is unknown.
    Refused { errcode: Option<i64> },
}

/// What becomes of a leased credential and its message when no token can be
/// had. While `probing` the credential may already be in WeChat's hands: a
/// transient trouble leaves it leased for recovery to probe later, and a
/// refusal ends it unproven with the message `unknown`. Otherwise WeChat
/// holds nothing of this message: the credential goes back, and the message
/// waits for a token, or fails `token_unavailable` on a refusal.
pub fn without_token(trouble: TokenTrouble, probing: bool) -> Settle {
    match (trouble, probing) {
        (TokenTrouble::Transient { .. }, true) => Settle::LeaveForRecovery,
        (TokenTrouble::Transient { retry_at_ms }, false) => Settle::AwaitToken { retry_at_ms },
        (TokenTrouble::Refused { .. }, true) => Settle::Finish(Finish {
            outcome: AttemptOutcome::TokenUnavailable,
            settlement: Settlement::SpentUnproven,
            fate: Fate::Unknown,
            blocks_sends_until: None,
        }),
        (TokenTrouble::Refused { errcode }, false) => {
            Settle::GiveBack(SendFailure::TokenUnavailable { errcode })
        }
    }
}

/// When a message waiting for a token is due again: when the token keeper
/// said a fetch may succeed, and never sooner than `token_retry_ms`.
pub fn token_retry_at(retry_at_ms: Option<i64>, now: i64, policy: &Policy) -> i64 {
    retry_at_ms.unwrap_or(now).max(now + policy.token_retry_ms)
}

/// What a run saw of the user's credentials on its way, which decides what
/// it reports when none is left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The errcode with which WeChat said the user holds no grant of the
    /// template (43101), when it did.
    pub revoked_by: Option<i64>,
    /// The fresh prepay_ids parked on the way; the run gives them back when
    /// it ends.
    pub parked: Vec<i64>,
}

impl Seen {
    /// Notes a settlement the run wrote for credential `credential_id`.
    pub fn note(&mut self, credential_id: i64, settlement: Settlement) {
        match settlement {
            Settlement::Revoked { errcode } => self.revoked_by = Some(errcode),
            Settlement::Parked { .. } => self.parked.push(credential_id),
            _ => {}
        }
    }
}

/// What a message with no credential left to claim does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoneLeft {
    /// It waits (status `waiting`), due again at `next_attempt_at` or as soon
    /// as a credential for its user arrives.
    Wait { next_attempt_at: i64 },
    /// It fails.
    Fail(SendFailure),
}

/// No credential to claim. A message that may still wait (its `wait_until`
/// is ahead) waits: until `wait_until`, or, when the run parked fresh
/// prepay_ids, only `not_ready_retry_ms`. Otherwise it fails: 43101 seen
/// names the revocation, parked prepay_ids say the credentials are not
/// ready yet, and else there is none.
pub fn none_left(seen: &Seen, wait_until: Option<i64>, now: i64, policy: &Policy) -> NoneLeft {
    if let Some(until) = wait_until.filter(|until| *until > now) {
        let next_attempt_at = if seen.parked.is_empty() {
            until
        } else {
            now + policy.not_ready_retry_ms
        };
        return NoneLeft::Wait { next_attempt_at };
    }
    NoneLeft::Fail(match (seen.revoked_by, seen.parked.is_empty()) {
        (Some(errcode), _) => SendFailure::GrantsRevoked { errcode },
        (None, true) => SendFailure::NoCredential,
        (None, false) => SendFailure::CredentialNotReady,
    })
}
