//! The errcode rules as one pure function: what one answer from WeChat means
//! for the credential, the message and the next step. No database, no HTTP,
//! no clock but the `now` handed in: the executor (`execute.rs`) applies the
//! step, and the table test below is the settle table of docs/api.md ("How a
//! send settles") and RELIABILITY.md's unknown-outcome table, row by row.

use crate::failure::SendFailure;
use crate::kinds::CredentialKind;
use crate::ledger::{ClaimedCredential, Settlement};
use crate::settle::{classify, classify_subscribe, next_china_midnight_ms, Verdict};
use crate::states::{AttemptOutcome, Channel, Delivery};

/// What came back from one call to WeChat, sorted by what it tells about delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// WeChat answered with this errcode.
    Answered(i64),
    /// The request never left (connect error, HTTP 4xx): nothing was delivered.
    NotSent,
    /// The answer was lost (timeout, reset, 5xx, not JSON): delivery unknown.
    Ambiguous,
}

impl CallOutcome {
    /// WeChat's errcode, when it answered.
    pub fn errcode(self) -> Option<i64> {
        match self {
            CallOutcome::Answered(errcode) => Some(errcode),
            CallOutcome::NotSent | CallOutcome::Ambiguous => None,
        }
    }
}

/// The policy `decide` applies.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Probe calls for one credential whose outcome is unknown.
    pub probe_limit: u32,
    /// Retries of one call answered -1.
    pub busy_retries: u32,
    /// A prepay_id younger than this answered 41028 is parked, not retired.
    pub fresh_prepay_grace_ms: i64,
    /// A credential this close to its expiry is not probed.
    pub safety_margin_ms: i64,
    /// Whether an unknown outcome may move on to the next credential.
    pub delivery: Delivery,
    /// How long a parked credential stays out of the pool.
    pub park_ms: i64,
    /// Token refreshes while spending one credential; past them the message
    /// waits for a token.
    pub token_refreshes: u32,
}

/// Where the spending of one credential stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spending {
    /// The credential may already have delivered this message: the next
    /// call is a probe.
    pub probing: bool,
    /// Probe calls made after unknown outcomes.
    pub probes: u32,
    /// Token refreshes so far.
    pub token_refreshes: u32,
    /// Calls answered -1 so far.
    pub busy_retries: u32,
}

/// How the message ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageEnd {
    Sent,
    Failed(SendFailure),
    /// May or may not have been delivered; never sent again.
    Unknown,
}

/// What to do after one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record the attempt (credential kept), wait the `retry`-th backoff, and
    /// call again; `probing` says whether that call is a probe.
    CallAgain {
        outcome: AttemptOutcome,
        retry: u32,
        probing: bool,
    },
    /// Record the attempt (credential kept), refresh the token if it is
    /// still the current one, and call again: WeChat processed nothing.
    RefreshToken { outcome: AttemptOutcome },
    /// Record the attempt (credential kept); the message waits for a token.
    /// The credential goes back to the pool, or, while probing, stays leased
    /// to the message, for recovery to probe again.
    AwaitToken { outcome: AttemptOutcome },
    /// Settle the credential with the attempt, then claim the user's next one.
    NextCredential {
        outcome: AttemptOutcome,
        settlement: Settlement,
    },
    /// Settle the credential with the attempt and end the message.
    End {
        outcome: AttemptOutcome,
        settlement: Settlement,
        end: MessageEnd,
    },
}

impl Step {
    /// The attempt's outcome label.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            Step::CallAgain { outcome, .. }
            | Step::RefreshToken { outcome }
            | Step::AwaitToken { outcome }
            | Step::NextCredential { outcome, .. }
            | Step::End { outcome, .. } => *outcome,
        }
    }
}

/// Whether an unknown outcome on this credential can be resolved by calling
/// again with it: only when WeChat is known to hold exactly one use of it —
/// one use left in the ledger and no earlier use of it ended unproven (an
/// unproven use may still be unused at WeChat) — and it is not about to
/// expire (an expired credential answers 41028 either way).
///
/// A subscribe grant is never probed. WeChat counts grants per (user,
/// template), and the ledger's count is not WeChat's: a prompt result the
/// frontend has not posted yet (or never will) is a grant WeChat holds and
/// the ledger does not, so even on the user's only grant in the ledger a
/// second call may deliver the message again; and a user
/// who turned the template off makes 43101 mean "revoked", not "the first
/// call used it". Found by the simulation (formid-sim, seed 2 with
/// `--sends-per-seed 60 --subscribe-percent 50`: a grant posted 26 s late,
/// the probe delivered an at_most_once message twice). A long-term
/// subscription is never probed either: it is not consumed, so a second
/// call would deliver again.
pub fn can_probe(credential: &ClaimedCredential, now: i64, policy: &Policy) -> bool {
    let one_use_at_wechat = !matches!(
        credential.kind,
        CredentialKind::LongTerm | CredentialKind::Subscribe
    );
    one_use_at_wechat
        && credential.uses_left == 1
        && credential.unproven_uses == 0
        && credential.expires_at > now + policy.safety_margin_ms
}

/// The first step for a credential found leased to a pending message after
/// its holder died: `None` to probe it, or the step that ends it unproven.
pub fn on_recovered(credential: &ClaimedCredential, now: i64, policy: &Policy) -> Option<Step> {
    if can_probe(credential, now, policy) {
        None
    } else {
        Some(unresolved(
            AttemptOutcome::Recovered,
            Settlement::SpentUnproven,
            policy,
        ))
    }
}

/// The outcome stays unknown: the credential is settled as given (a use
/// counted but unproven, or retired), and the message ends `unknown`, or
/// moves on to the next credential when the caller chose at-least-once.
fn unresolved(outcome: AttemptOutcome, settlement: Settlement, policy: &Policy) -> Step {
    match policy.delivery {
        Delivery::AtLeastOnce => Step::NextCredential {
            outcome,
            settlement,
        },
        Delivery::AtMostOnce => Step::End {
            outcome,
            settlement,
            end: MessageEnd::Unknown,
        },
    }
}

/// What one answer means. Pure: the same inputs give the same step.
pub fn decide(
    answer: CallOutcome,
    state: &Spending,
    credential: &ClaimedCredential,
    now: i64,
    policy: &Policy,
) -> Step {
    let errcode = match answer {
        // Nothing left on a first call: nothing was delivered.
        CallOutcome::NotSent if !state.probing => {
            return Step::End {
                outcome: AttemptOutcome::NotSent,
                settlement: Settlement::Released,
                end: MessageEnd::Failed(SendFailure::UpstreamUnreachable),
            }
        }
        CallOutcome::NotSent | CallOutcome::Ambiguous => {
            let outcome = if answer == CallOutcome::NotSent {
                AttemptOutcome::NotSent
            } else {
                AttemptOutcome::Ambiguous
            };
            // A probe that never left leaves the question as it was; an
            // ambiguous first call becomes one.
            if state.probes < policy.probe_limit && can_probe(credential, now, policy) {
                return Step::CallAgain {
                    outcome,
                    retry: state.probes + 1,
                    probing: true,
                };
            }
            return unresolved(outcome, Settlement::SpentUnproven, policy);
        }
        CallOutcome::Answered(errcode) => errcode,
    };
    let verdict = match credential.kind.rules().channel {
        Channel::Template => classify(errcode),
        Channel::Subscribe => classify_subscribe(errcode),
    };
    match verdict {
        Verdict::Sent => Step::End {
            outcome: if state.probing {
                AttemptOutcome::SentOnProbe
            } else {
                AttemptOutcome::Sent
            },
            settlement: Settlement::Spent,
            end: MessageEnd::Sent,
        },
        // The probe's answer: the earlier call used the credential's last send.
        Verdict::CredentialDead if state.probing && errcode == 41029 => Step::End {
            outcome: AttemptOutcome::ConfirmedSent,
            settlement: Settlement::Spent,
            end: MessageEnd::Sent,
        },
        // Grants are never probed (see `can_probe`): were one, 43101 would
        // not prove the earlier call delivered (the user may have turned the
        // template off meanwhile).
        Verdict::GrantRevoked if state.probing => unresolved(
            AttemptOutcome::ProbeInconclusive,
            Settlement::SpentUnproven,
            policy,
        ),
        // WeChat holds no grant of the template for the user: the ledger's
        // others are retired with this one, and the next claim finds none
        // (or one that arrived since).
        Verdict::GrantRevoked => Step::NextCredential {
            outcome: AttemptOutcome::Retired,
            settlement: Settlement::Revoked { errcode },
        },
        // A probe answered "expired" or "blocked" proves nothing: the
        // ledger's expiry is an estimate, so the credential may have died
        // after the earlier call delivered.
        Verdict::CredentialDead if state.probing => unresolved(
            AttemptOutcome::ProbeInconclusive,
            Settlement::Retired { errcode },
            policy,
        ),
        Verdict::CredentialDead => {
            let syncing = errcode == 41028
                && credential.kind.rules().syncs_late
                && now - credential.collected_at < policy.fresh_prepay_grace_ms;
            if syncing {
                Step::NextCredential {
                    outcome: AttemptOutcome::NotReady,
                    settlement: Settlement::Parked {
                        until: now + policy.park_ms,
                    },
                }
            } else {
                Step::NextCredential {
                    outcome: AttemptOutcome::Retired,
                    settlement: Settlement::Retired { errcode },
                }
            }
        }
        Verdict::TokenRejected if state.token_refreshes < policy.token_refreshes => {
            Step::RefreshToken {
                outcome: AttemptOutcome::TokenRejected,
            }
        }
        // Token rejections never end a message: WeChat processed nothing, and
        // a token will come (a probe refused for its token proves nothing
        // about the earlier call either).
        Verdict::TokenRejected => Step::AwaitToken {
            outcome: AttemptOutcome::TokenRejected,
        },
        Verdict::SystemBusy if state.busy_retries < policy.busy_retries => Step::CallAgain {
            outcome: AttemptOutcome::Busy,
            retry: state.busy_retries + 1,
            probing: state.probing,
        },
        // A probe refused for its token, the quota, the request or anything
        // else proves nothing about the earlier call.
        _ if state.probing => unresolved(
            AttemptOutcome::ProbeInconclusive,
            Settlement::SpentUnproven,
            policy,
        ),
        verdict => {
            let failure = match verdict {
                Verdict::RequestInvalid => SendFailure::RequestInvalid { errcode },
                Verdict::TokenRejected => SendFailure::TokenRejected { errcode },
                Verdict::SystemBusy => SendFailure::UpstreamBusy,
                Verdict::RateLimited => SendFailure::RateLimited,
                Verdict::ApiRetired => SendFailure::ApiRetired { errcode },
                Verdict::DailyQuotaExhausted => SendFailure::QuotaExhausted {
                    until_ms: next_china_midnight_ms(now),
                },
                _ => SendFailure::Unexpected { errcode },
            };
            Step::End {
                outcome: AttemptOutcome::Kept,
                settlement: Settlement::Released,
                end: MessageEnd::Failed(failure),
            }
        }
    }
}

impl Spending {
    /// The state after `step` was applied (for the steps that call again).
    pub fn after(self, step: &Step) -> Spending {
        match step {
            // -1: the same call again, probe or not.
            Step::CallAgain {
                outcome: AttemptOutcome::Busy,
                retry,
                probing,
            } => Spending {
                probing: *probing,
                busy_retries: *retry,
                ..self
            },
            // An unknown outcome: the next call is a probe.
            Step::CallAgain { retry, .. } => Spending {
                probing: true,
                probes: *retry,
                ..self
            },
            Step::RefreshToken { .. } => Spending {
                token_refreshes: self.token_refreshes + 1,
                ..self
            },
            _ => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn policy(delivery: Delivery) -> Policy {
        Policy {
            probe_limit: 2,
            busy_retries: 2,
            fresh_prepay_grace_ms: 30_000,
            safety_margin_ms: 60_000,
            token_refreshes: 2,
            delivery,
            park_ms: 120_000,
        }
    }

    /// A credential of `kind` with `uses_left` (and `unproven` unproven uses),
    /// collected `age_ms` ago, valid for 7 days from collection.
    fn credential(kind: &str, uses_left: i64, unproven: i64, age_ms: i64) -> ClaimedCredential {
        ClaimedCredential {
            id: 1,
            kind: CredentialKind::parse(kind).expect("a kind's stored name"),
            value: "v".into(),
            uses_left,
            unproven_uses: unproven,
            collected_at: NOW - age_ms,
            expires_at: NOW - age_ms + 7 * DAY,
            lease_message_id: Some("m".into()),
        }
    }

    fn fresh() -> Spending {
        Spending::default()
    }

    fn probing() -> Spending {
        Spending {
            probing: true,
            probes: 1,
            ..Spending::default()
        }
    }

    fn end(outcome: AttemptOutcome, settlement: Settlement, end: MessageEnd) -> Step {
        Step::End {
            outcome,
            settlement,
            end,
        }
    }

    fn next(outcome: AttemptOutcome, settlement: Settlement) -> Step {
        Step::NextCredential {
            outcome,
            settlement,
        }
    }

    fn failed(failure: SendFailure) -> Step {
        end(
            AttemptOutcome::Kept,
            Settlement::Released,
            MessageEnd::Failed(failure),
        )
    }

    /// The settle table of docs/api.md ("How a send settles") and
    /// RELIABILITY.md's unknown-outcome table.
    #[test]
    fn every_row_of_the_settle_and_unknown_outcome_tables() {
        use AttemptOutcome as O;
        use CallOutcome::*;
        use Settlement as S;
        let form_id = credential("form_id", 1, 0, DAY);
        let prepay_3 = credential("prepay_id", 3, 0, DAY);
        let prepay_1 = credential("prepay_id", 1, 0, DAY);
        let prepay_1_after_unproven = credential("prepay_id", 1, 1, DAY);
        let fresh_prepay = credential("prepay_id", 3, 0, 5_000);
        let expiring = credential("form_id", 1, 0, 7 * DAY - 30_000);
        let fresh_form_id = credential("form_id", 1, 0, 5_000);
        let most = policy(Delivery::AtMostOnce);
        let least = policy(Delivery::AtLeastOnce);
        let busy_spent = Spending {
            busy_retries: 2,
            ..fresh()
        };
        let token_retried = Spending {
            token_refreshes: 2,
            ..fresh()
        };
        let probes_spent = Spending {
            probing: true,
            probes: 2,
            ..fresh()
        };
        let grant = ClaimedCredential {
            expires_at: crate::kinds::NEVER_EXPIRES_MS,
            ..credential("subscribe", 1, 0, DAY)
        };
        let ticket = ClaimedCredential {
            expires_at: crate::kinds::NEVER_EXPIRES_MS,
            ..credential("long_term", 1, 0, DAY)
        };
        let rows: Vec<(
            &str,
            CallOutcome,
            Spending,
            &ClaimedCredential,
            Policy,
            Step,
        )> = vec![
            // errcode 0: sent.
            (
                "0 sends",
                Answered(0),
                fresh(),
                &form_id,
                most,
                end(O::Sent, S::Spent, MessageEnd::Sent),
            ),
            (
                "0 on a prepay_id",
                Answered(0),
                fresh(),
                &prepay_3,
                most,
                end(O::Sent, S::Spent, MessageEnd::Sent),
            ),
            // Dead credentials: retired, the next one is tried.
            (
                "41028 retires",
                Answered(41028),
                fresh(),
                &form_id,
                most,
                next(O::Retired, S::Retired { errcode: 41028 }),
            ),
            (
                "41029 retires",
                Answered(41029),
                fresh(),
                &form_id,
                most,
                next(O::Retired, S::Retired { errcode: 41029 }),
            ),
            (
                "41031 retires",
                Answered(41031),
                fresh(),
                &prepay_3,
                most,
                next(O::Retired, S::Retired { errcode: 41031 }),
            ),
            (
                "41035 retires",
                Answered(41035),
                fresh(),
                &form_id,
                most,
                next(O::Retired, S::Retired { errcode: 41035 }),
            ),
            (
                "a fresh prepay_id answered 41028 is parked",
                Answered(41028),
                fresh(),
                &fresh_prepay,
                most,
                next(
                    O::NotReady,
                    S::Parked {
                        until: NOW + 120_000,
                    },
                ),
            ),
            (
                "a fresh form_id answered 41028 is retired",
                Answered(41028),
                fresh(),
                &fresh_form_id,
                most,
                next(O::Retired, S::Retired { errcode: 41028 }),
            ),
            // The request is wrong: back untouched, 422.
            (
                "40037",
                Answered(40037),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::RequestInvalid { errcode: 40037 }),
            ),
            (
                "41030",
                Answered(41030),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::RequestInvalid { errcode: 41030 }),
            ),
            (
                "47003",
                Answered(47003),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::RequestInvalid { errcode: 47003 }),
            ),
            (
                "40003",
                Answered(40003),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::RequestInvalid { errcode: 40003 }),
            ),
            // Token refused: refresh, then wait for a token, never fail.
            (
                "40001 refreshes",
                Answered(40001),
                fresh(),
                &form_id,
                most,
                Step::RefreshToken {
                    outcome: O::TokenRejected,
                },
            ),
            (
                "42001 refreshes",
                Answered(42001),
                fresh(),
                &form_id,
                most,
                Step::RefreshToken {
                    outcome: O::TokenRejected,
                },
            ),
            (
                "40001 after the refreshes waits for a token",
                Answered(40001),
                token_retried,
                &form_id,
                most,
                Step::AwaitToken {
                    outcome: O::TokenRejected,
                },
            ),
            // Quotas and retired APIs: back untouched.
            (
                "45009",
                Answered(45009),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::QuotaExhausted {
                    until_ms: next_china_midnight_ms(NOW),
                }),
            ),
            (
                "45011",
                Answered(45011),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::RateLimited),
            ),
            (
                "45103",
                Answered(45103),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::ApiRetired { errcode: 45103 }),
            ),
            (
                "45109",
                Answered(45109),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::ApiRetired { errcode: 45109 }),
            ),
            (
                "an errcode without a rule",
                Answered(12345),
                fresh(),
                &form_id,
                most,
                failed(SendFailure::Unexpected { errcode: 12345 }),
            ),
            // -1: retried with backoff, then 503.
            (
                "-1 retries",
                Answered(-1),
                fresh(),
                &form_id,
                most,
                Step::CallAgain {
                    outcome: O::Busy,
                    retry: 1,
                    probing: false,
                },
            ),
            (
                "-1 after the retries",
                Answered(-1),
                busy_spent,
                &form_id,
                most,
                failed(SendFailure::UpstreamBusy),
            ),
            (
                "-1 on a probe retries the probe",
                Answered(-1),
                probing(),
                &form_id,
                most,
                Step::CallAgain {
                    outcome: O::Busy,
                    retry: 1,
                    probing: true,
                },
            ),
            // Nothing left: nothing delivered.
            (
                "not sent",
                NotSent,
                fresh(),
                &form_id,
                most,
                end(
                    O::NotSent,
                    S::Released,
                    MessageEnd::Failed(SendFailure::UpstreamUnreachable),
                ),
            ),
            // Unknown outcomes: probe when WeChat holds exactly one use.
            (
                "a lost answer on a form_id is probed",
                Ambiguous,
                fresh(),
                &form_id,
                most,
                Step::CallAgain {
                    outcome: O::Ambiguous,
                    retry: 1,
                    probing: true,
                },
            ),
            (
                "a lost answer on a prepay_id's last proven send is probed",
                Ambiguous,
                fresh(),
                &prepay_1,
                most,
                Step::CallAgain {
                    outcome: O::Ambiguous,
                    retry: 1,
                    probing: true,
                },
            ),
            (
                "a lost answer on a prepay_id with sends left is unknown",
                Ambiguous,
                fresh(),
                &prepay_3,
                most,
                end(O::Ambiguous, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "a lost answer after an unproven use is unknown",
                Ambiguous,
                fresh(),
                &prepay_1_after_unproven,
                most,
                end(O::Ambiguous, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "a lost answer inside the safety margin is unknown",
                Ambiguous,
                fresh(),
                &expiring,
                most,
                end(O::Ambiguous, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "at least once moves on",
                Ambiguous,
                fresh(),
                &prepay_3,
                least,
                next(O::Ambiguous, S::SpentUnproven),
            ),
            (
                "probes run out",
                Ambiguous,
                probes_spent,
                &form_id,
                most,
                end(O::Ambiguous, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "a probe that never left probes again",
                NotSent,
                probing(),
                &form_id,
                most,
                Step::CallAgain {
                    outcome: O::NotSent,
                    retry: 2,
                    probing: true,
                },
            ),
            // What a probe's answer proves.
            (
                "a probe answered 0 delivers now",
                Answered(0),
                probing(),
                &form_id,
                most,
                end(O::SentOnProbe, S::Spent, MessageEnd::Sent),
            ),
            (
                "a probe answered 41029 confirms",
                Answered(41029),
                probing(),
                &form_id,
                most,
                end(O::ConfirmedSent, S::Spent, MessageEnd::Sent),
            ),
            (
                "a probe answered 41028 proves nothing",
                Answered(41028),
                probing(),
                &form_id,
                most,
                end(
                    O::ProbeInconclusive,
                    S::Retired { errcode: 41028 },
                    MessageEnd::Unknown,
                ),
            ),
            (
                "a probe answered 41031 proves nothing",
                Answered(41031),
                probing(),
                &form_id,
                most,
                end(
                    O::ProbeInconclusive,
                    S::Retired { errcode: 41031 },
                    MessageEnd::Unknown,
                ),
            ),
            (
                "a probe answered 45009 proves nothing",
                Answered(45009),
                probing(),
                &form_id,
                most,
                end(O::ProbeInconclusive, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "a probe answered 40037 proves nothing",
                Answered(40037),
                probing(),
                &form_id,
                most,
                end(O::ProbeInconclusive, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "a probe refused its token refreshes",
                Answered(40001),
                probing(),
                &form_id,
                most,
                Step::RefreshToken {
                    outcome: O::TokenRejected,
                },
            ),
            (
                "a probe refused its fresh tokens waits for a token",
                Answered(40001),
                Spending {
                    token_refreshes: 2,
                    ..probing()
                },
                &form_id,
                most,
                Step::AwaitToken {
                    outcome: O::TokenRejected,
                },
            ),
            (
                "a probe busy after the retries proves nothing",
                Answered(-1),
                Spending {
                    busy_retries: 2,
                    ..probing()
                },
                &form_id,
                most,
                end(O::ProbeInconclusive, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "at least once: an inconclusive probe moves on",
                Answered(41028),
                probing(),
                &form_id,
                least,
                next(O::ProbeInconclusive, S::Retired { errcode: 41028 }),
            ),
            // Subscribe grants (docs/wechat/subscribe-messages.md, "One-time
            // grants"): 43101 retires the template's grants and looks for
            // another; a probe on the user's only grant reads 43101 as the
            // first call's delivery.
            (
                "subscribe 0 spends the grant",
                Answered(0),
                fresh(),
                &grant,
                most,
                end(O::Sent, S::Spent, MessageEnd::Sent),
            ),
            (
                "subscribe 43101 revokes the template's grants",
                Answered(43101),
                fresh(),
                &grant,
                most,
                next(O::Retired, S::Revoked { errcode: 43101 }),
            ),
            (
                "subscribe 43101 on a long-term ticket switches it off",
                Answered(43101),
                fresh(),
                &ticket,
                most,
                next(O::Retired, S::Revoked { errcode: 43101 }),
            ),
            (
                "subscribe 47003 gives the grant back",
                Answered(47003),
                fresh(),
                &grant,
                most,
                failed(SendFailure::RequestInvalid { errcode: 47003 }),
            ),
            (
                "subscribe 45168 (blacklisted words) gives the grant back",
                Answered(45168),
                fresh(),
                &grant,
                most,
                failed(SendFailure::RequestInvalid { errcode: 45168 }),
            ),
            (
                "a form_id code on a subscribe send has no rule",
                Answered(41028),
                fresh(),
                &grant,
                most,
                failed(SendFailure::Unexpected { errcode: 41028 }),
            ),
            (
                "subscribe lost answer on the user's only grant in the ledger: unknown (WeChat may hold more)",
                Ambiguous,
                fresh(),
                &grant,
                most,
                end(O::Ambiguous, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "subscribe lost answer on a long-term ticket: unknown",
                Ambiguous,
                fresh(),
                &ticket,
                most,
                end(O::Ambiguous, S::SpentUnproven, MessageEnd::Unknown),
            ),
            (
                "a 43101 to a probe of a grant proves nothing (the user may have revoked)",
                Answered(43101),
                probing(),
                &grant,
                most,
                end(O::ProbeInconclusive, S::SpentUnproven, MessageEnd::Unknown),
            ),
        ];
        for (name, answer, state, credential, policy, expected) in rows {
            assert_eq!(
                decide(answer, &state, credential, NOW, &policy),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn a_recovered_credential_is_probed_only_when_wechat_holds_one_use() {
        let most = policy(Delivery::AtMostOnce);
        assert_eq!(
            on_recovered(&credential("form_id", 1, 0, DAY), NOW, &most),
            None
        );
        assert_eq!(
            on_recovered(&credential("prepay_id", 1, 0, DAY), NOW, &most),
            None
        );
        let unknown = Some(end(
            AttemptOutcome::Recovered,
            Settlement::SpentUnproven,
            MessageEnd::Unknown,
        ));
        assert_eq!(
            on_recovered(&credential("prepay_id", 2, 0, DAY), NOW, &most),
            unknown
        );
        assert_eq!(
            on_recovered(&credential("prepay_id", 1, 1, DAY), NOW, &most),
            unknown
        );
        // Not even the user's only grant in the ledger: WeChat may hold more.
        let grant = credential("subscribe", 1, 0, DAY);
        assert_eq!(on_recovered(&grant, NOW, &most), unknown);
        assert_eq!(
            on_recovered(&credential("long_term", 1, 0, DAY), NOW, &most),
            unknown
        );
    }

    #[test]
    fn the_state_after_a_step() {
        let probe = Step::CallAgain {
            outcome: AttemptOutcome::Ambiguous,
            retry: 1,
            probing: true,
        };
        assert_eq!(
            fresh().after(&probe),
            Spending {
                probing: true,
                probes: 1,
                ..fresh()
            }
        );
        let busy = Step::CallAgain {
            outcome: AttemptOutcome::Busy,
            retry: 1,
            probing: false,
        };
        assert_eq!(
            fresh().after(&busy),
            Spending {
                busy_retries: 1,
                ..fresh()
            }
        );
        let busy_probe = Step::CallAgain {
            outcome: AttemptOutcome::Busy,
            retry: 1,
            probing: true,
        };
        assert_eq!(
            probing().after(&busy_probe),
            Spending {
                busy_retries: 1,
                ..probing()
            }
        );
        let refresh = Step::RefreshToken {
            outcome: AttemptOutcome::TokenRejected,
        };
        assert_eq!(fresh().after(&refresh).token_refreshes, 1);
    }
}
