//! The errcode rules as one pure function: what one answer from WeChat means
//! for the credential, the message and the next step. No database, no HTTP,
//! no clock but the `now` handed in: the executor (`execute.rs`) applies the
//! [`Decision`], and the table test below is the settle table of docs/api.md
//! ("How a send settles") and RELIABILITY.md's unknown-outcome table, row by
//! row, with the rows of the run's rules ([`super::run`]).

use super::run::{without_token, TokenTrouble};
use crate::failure::SendFailure;
use crate::kinds::CredentialKind;
use crate::ledger::{ClaimedCredential, Settlement};
use crate::settle::{classify, classify_subscribe, next_china_midnight_ms, Verdict};
use crate::states::{AttemptOutcome, Channel, Delivery, MessageStatus};

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

/// The policy the send path's rules apply.
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
    /// How soon a waiting message whose only credentials are parked
    /// prepay_ids tries again.
    pub not_ready_retry_ms: i64,
    /// How soon a message that found no usable token tries again.
    pub token_retry_ms: i64,
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

/// What becomes of the message when its run finishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Delivered.
    Sent,
    /// Not delivered, for this reason.
    Failed(SendFailure),
    /// May or may not have been delivered; never sent again.
    Unknown,
}

impl Fate {
    /// The message's stored status.
    pub fn status(&self) -> MessageStatus {
        match self {
            Fate::Sent => MessageStatus::Sent,
            Fate::Failed(_) => MessageStatus::Failed,
            Fate::Unknown => MessageStatus::Unknown,
        }
    }

    /// The failure the caller is answered with (`outcome_unknown` for an
    /// unknown fate).
    pub fn failure(&self) -> Option<SendFailure> {
        match self {
            Fate::Sent => None,
            Fate::Failed(failure) => Some(failure.clone()),
            Fate::Unknown => Some(SendFailure::OutcomeUnknown),
        }
    }
}

/// Call WeChat again with the same credential. The answer is recorded as an
/// attempt labelled `outcome`, with the credential kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The attempt's label.
    pub outcome: AttemptOutcome,
    /// What comes before the next call.
    pub after: RetryAfter,
    /// The spending state the next call is made in.
    pub spending: Spending,
}

/// What comes before a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// The `retry`-th backoff (exponential, with jitter).
    Backoff { retry: u32 },
    /// A fresh token: the refused one is refreshed if it is still the
    /// current one. WeChat processed nothing.
    FreshToken,
}

/// A message finished with the attempt that settles its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The attempt's label.
    pub outcome: AttemptOutcome,
    /// How the credential leaves its lease, in the attempt's write.
    pub settlement: Settlement,
    /// What becomes of the message.
    pub fate: Fate,
    /// The app's daily quota is spent (45009): its sends are blocked until
    /// then, before the message is finished.
    pub blocks_sends_until: Option<i64>,
}

/// How a credential leaves the run, and what becomes of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// An attempt labelled `outcome` settles the credential as `settlement`;
    /// then the user's next credential is claimed.
    NextCredential {
        outcome: AttemptOutcome,
        settlement: Settlement,
    },
    /// An attempt settles the credential and finishes the message.
    Finish(Finish),
    /// Nothing is written: the credential stays leased to its pending
    /// message, which recovery takes up (and probes again) once the lease
    /// runs out. The caller is answered `pending`.
    LeaveForRecovery,
    /// The credential goes back to the pool untouched and the message waits
    /// for a token, due again at [`super::run::token_retry_at`] of
    /// `retry_at_ms` (the token keeper's word on when a fetch may succeed).
    AwaitToken { retry_at_ms: Option<i64> },
    /// The credential goes back to the pool untouched and the message fails
    /// without a call.
    GiveBack(SendFailure),
}

/// What comes after one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Call again with the same credential.
    Retry(Retry),
    /// The credential leaves the run, its attempt recording the answer:
    /// `decide` settles an answer only by [`Settle::NextCredential`] or
    /// [`Settle::Finish`].
    Settle(Settle),
    /// The token was refused past its refreshes: the answer is recorded as
    /// `outcome` with the credential kept, and the credential leaves as
    /// `then` says (see [`without_token`]), writing no attempt of its own.
    TokenRefused {
        outcome: AttemptOutcome,
        then: Settle,
    },
}

/// What one answer means: what comes next, and whether the circuit breaker
/// counts it as WeChat's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What comes next.
    pub next: Next,
    /// WeChat failed the call: unreachable, its answer lost, or -1 (busy).
    /// Every other answer is a success for the breaker.
    pub wechat_failed: bool,
}

/// Whether an unknown outcome can be resolved by calling
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
/// its holder died: `None` to probe it, or the settle that ends it unproven.
pub fn on_recovered(credential: &ClaimedCredential, now: i64, policy: &Policy) -> Option<Settle> {
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
pub(super) fn unresolved(
    outcome: AttemptOutcome,
    settlement: Settlement,
    policy: &Policy,
) -> Settle {
    match policy.delivery {
        Delivery::AtLeastOnce => Settle::NextCredential {
            outcome,
            settlement,
        },
        Delivery::AtMostOnce => finish(outcome, settlement, Fate::Unknown),
    }
}

/// A finish that blocks nothing.
fn finish(outcome: AttemptOutcome, settlement: Settlement, fate: Fate) -> Settle {
    Settle::Finish(Finish {
        outcome,
        settlement,
        fate,
        blocks_sends_until: None,
    })
}

/// What one answer means. Pure: the same inputs give the same decision.
pub fn decide(
    answer: CallOutcome,
    state: &Spending,
    credential: &ClaimedCredential,
    now: i64,
    policy: &Policy,
) -> Decision {
    match answer {
        CallOutcome::Answered(errcode) => {
            let verdict = match credential.kind.rules().channel {
                Channel::Template => classify(errcode),
                Channel::Subscribe => classify_subscribe(errcode),
            };
            Decision {
                next: answered(errcode, verdict, state, credential, now, policy),
                wechat_failed: verdict == Verdict::SystemBusy,
            }
        }
        CallOutcome::NotSent | CallOutcome::Ambiguous => Decision {
            next: unanswered(answer, state, credential, now, policy),
            wechat_failed: true,
        },
    }
}

/// No answer: nothing left, or the answer was lost.
fn unanswered(
    answer: CallOutcome,
    state: &Spending,
    credential: &ClaimedCredential,
    now: i64,
    policy: &Policy,
) -> Next {
    let outcome = if answer == CallOutcome::NotSent {
        // Nothing left on a first call: nothing was delivered.
        if !state.probing {
            return Next::Settle(finish(
                AttemptOutcome::NotSent,
                Settlement::Released,
                Fate::Failed(SendFailure::UpstreamUnreachable),
            ));
        }
        AttemptOutcome::NotSent
    } else {
        AttemptOutcome::Ambiguous
    };
    // A probe that never left leaves the question as it was; an ambiguous
    // first call becomes one.
    if state.probes < policy.probe_limit && can_probe(credential, now, policy) {
        let probes = state.probes + 1;
        return Next::Retry(Retry {
            outcome,
            after: RetryAfter::Backoff { retry: probes },
            spending: Spending {
                probing: true,
                probes,
                ..*state
            },
        });
    }
    Next::Settle(unresolved(outcome, Settlement::SpentUnproven, policy))
}

/// WeChat answered `errcode`, which the credential's channel reads as `verdict`.
fn answered(
    errcode: i64,
    verdict: Verdict,
    state: &Spending,
    credential: &ClaimedCredential,
    now: i64,
    policy: &Policy,
) -> Next {
    let settle = match verdict {
        Verdict::Sent if state.probing => {
            finish(AttemptOutcome::SentOnProbe, Settlement::Spent, Fate::Sent)
        }
        Verdict::Sent => finish(AttemptOutcome::Sent, Settlement::Spent, Fate::Sent),
        // The probe's answer: the earlier call used the credential's last send.
        Verdict::CredentialDead if state.probing && errcode == 41029 => {
            finish(AttemptOutcome::ConfirmedSent, Settlement::Spent, Fate::Sent)
        }
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
        Verdict::GrantRevoked => Settle::NextCredential {
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
        Verdict::CredentialDead => dead(errcode, credential, now, policy),
        Verdict::TokenRejected | Verdict::SystemBusy => {
            if let Some(next) = call_again(verdict, state, policy) {
                return next;
            }
            given_up(verdict, errcode, state, now, policy)
        }
        _ => given_up(verdict, errcode, state, now, policy),
    };
    Next::Settle(settle)
}

/// A dead credential on a first call: retired, or parked while a fresh
/// prepay_id's payment data reaches WeChat. Either way the next one is tried.
fn dead(errcode: i64, credential: &ClaimedCredential, now: i64, policy: &Policy) -> Settle {
    let syncing = errcode == 41028
        && credential.kind.rules().syncs_late
        && now - credential.collected_at < policy.fresh_prepay_grace_ms;
    if syncing {
        Settle::NextCredential {
            outcome: AttemptOutcome::NotReady,
            settlement: Settlement::Parked {
                until: now + policy.park_ms,
            },
        }
    } else {
        Settle::NextCredential {
            outcome: AttemptOutcome::Retired,
            settlement: Settlement::Retired { errcode },
        }
    }
}

/// A refused token and -1 call again, while their retries last. Token
/// rejections never end a message: WeChat processed nothing, and a token
/// will come (a probe refused for its token proves nothing about the
/// earlier call either).
fn call_again(verdict: Verdict, state: &Spending, policy: &Policy) -> Option<Next> {
    match verdict {
        Verdict::TokenRejected if state.token_refreshes < policy.token_refreshes => {
            Some(Next::Retry(Retry {
                outcome: AttemptOutcome::TokenRejected,
                after: RetryAfter::FreshToken,
                spending: Spending {
                    token_refreshes: state.token_refreshes + 1,
                    ..*state
                },
            }))
        }
        Verdict::TokenRejected => Some(Next::TokenRefused {
            outcome: AttemptOutcome::TokenRejected,
            then: without_token(TokenTrouble::Transient { retry_at_ms: None }, state.probing),
        }),
        // -1: the same call again, probe or not.
        Verdict::SystemBusy if state.busy_retries < policy.busy_retries => {
            let retry = state.busy_retries + 1;
            Some(Next::Retry(Retry {
                outcome: AttemptOutcome::Busy,
                after: RetryAfter::Backoff { retry },
                spending: Spending {
                    busy_retries: retry,
                    ..*state
                },
            }))
        }
        _ => None,
    }
}

/// An answer that neither delivered nor can be called again. A probe
/// refused for the quota, the request or anything else proves nothing about
/// the earlier call; a first call gives its credential back untouched and
/// fails the message with what WeChat said.
fn given_up(verdict: Verdict, errcode: i64, state: &Spending, now: i64, policy: &Policy) -> Settle {
    if state.probing {
        return unresolved(
            AttemptOutcome::ProbeInconclusive,
            Settlement::SpentUnproven,
            policy,
        );
    }
    let mut blocks_sends_until = None;
    let failure = match verdict {
        Verdict::RequestInvalid => SendFailure::RequestInvalid { errcode },
        Verdict::TokenRejected => SendFailure::TokenRejected { errcode },
        Verdict::SystemBusy => SendFailure::UpstreamBusy,
        Verdict::RateLimited => SendFailure::RateLimited,
        Verdict::ApiRetired => SendFailure::ApiRetired { errcode },
        Verdict::DailyQuotaExhausted => {
            let until_ms = next_china_midnight_ms(now);
            blocks_sends_until = Some(until_ms);
            SendFailure::QuotaExhausted { until_ms }
        }
        _ => SendFailure::Unexpected { errcode },
    };
    Settle::Finish(Finish {
        outcome: AttemptOutcome::Kept,
        settlement: Settlement::Released,
        fate: Fate::Failed(failure),
        blocks_sends_until,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::send::run::{
        admission, none_left, open, quota_block, token_retry_at, NoneLeft, Opening, Seen, Start,
    };

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
            not_ready_retry_ms: 5_000,
            token_retry_ms: 30_000,
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

    /// A subscribe credential (`subscribe` or `long_term`): it never expires.
    fn subscription(kind: &str) -> ClaimedCredential {
        ClaimedCredential {
            expires_at: crate::kinds::NEVER_EXPIRES_MS,
            ..credential(kind, 1, 0, DAY)
        }
    }

    fn fresh() -> Spending {
        Spending::default()
    }

    /// Probing after `probes` probe calls.
    fn probing(probes: u32) -> Spending {
        Spending {
            probing: true,
            probes,
            ..fresh()
        }
    }

    /// `state` after `n` calls answered -1.
    fn busy(n: u32, state: Spending) -> Spending {
        Spending {
            busy_retries: n,
            ..state
        }
    }

    /// `state` after `n` token refreshes.
    fn refreshed(n: u32, state: Spending) -> Spending {
        Spending {
            token_refreshes: n,
            ..state
        }
    }

    /// What `decide` makes of a row's answer.
    fn d(
        answer: CallOutcome,
        state: Spending,
        credential: &ClaimedCredential,
        policy: Policy,
    ) -> Next {
        decide(answer, &state, credential, NOW, &policy).next
    }

    /// Whether the breaker counts a first call's answer as WeChat's failure.
    fn breaker(answer: CallOutcome, credential: &ClaimedCredential) -> bool {
        decide(
            answer,
            &fresh(),
            credential,
            NOW,
            &policy(Delivery::AtMostOnce),
        )
        .wechat_failed
    }

    /// Whether a call in `state` asks the breaker.
    fn asks_breaker(state: Spending) -> bool {
        let asked = Cell::new(false);
        admission(&state, || {
            asked.set(true);
            Ok(())
        });
        asked.get()
    }

    /// What a run has seen after writing these settlements.
    fn seen(settled: &[(i64, Settlement)]) -> Seen {
        let mut seen = Seen::default();
        for (credential_id, settlement) in settled {
            seen.note(*credential_id, *settlement);
        }
        seen
    }

    fn finished(outcome: AttemptOutcome, settlement: Settlement, fate: Fate) -> Settle {
        finish(outcome, settlement, fate)
    }

    fn sent(outcome: AttemptOutcome) -> Settle {
        finish(outcome, Settlement::Spent, Fate::Sent)
    }

    fn unknown(outcome: AttemptOutcome, settlement: Settlement) -> Settle {
        finish(outcome, settlement, Fate::Unknown)
    }

    fn next(outcome: AttemptOutcome, settlement: Settlement) -> Settle {
        Settle::NextCredential {
            outcome,
            settlement,
        }
    }

    /// The credential back untouched, the message failed.
    fn failed(failure: SendFailure) -> Settle {
        finish(
            AttemptOutcome::Kept,
            Settlement::Released,
            Fate::Failed(failure),
        )
    }

    /// 45009: failed, and the app's sends blocked until `until_ms`.
    fn quota(until_ms: i64) -> Settle {
        Settle::Finish(Finish {
            outcome: AttemptOutcome::Kept,
            settlement: Settlement::Released,
            fate: Fate::Failed(SendFailure::QuotaExhausted { until_ms }),
            blocks_sends_until: Some(until_ms),
        })
    }

    fn backoff(outcome: AttemptOutcome, retry: u32, spending: Spending) -> Next {
        Next::Retry(Retry {
            outcome,
            after: RetryAfter::Backoff { retry },
            spending,
        })
    }

    fn refresh(spending: Spending) -> Next {
        Next::Retry(Retry {
            outcome: AttemptOutcome::TokenRejected,
            after: RetryAfter::FreshToken,
            spending,
        })
    }

    fn refused(then: Settle) -> Next {
        Next::TokenRefused {
            outcome: AttemptOutcome::TokenRejected,
            then,
        }
    }

    /// A row expecting a settle holds when the next step is that settle.
    impl PartialEq<Settle> for Next {
        fn eq(&self, settle: &Settle) -> bool {
            matches!(self, Next::Settle(own) if own == settle)
        }
    }

    /// Checks every row, `name: actual => expected;`, and fails once,
    /// listing every row whose actual value is not the expected one.
    macro_rules! table {
        ($($name:literal: $actual:expr => $expected:expr;)*) => {{
            let mut wrong: Vec<String> = Vec::new();
            let mut rows = 0;
            $(
                rows += 1;
                let (actual, expected) = ($actual, $expected);
                if actual != expected {
                    wrong.push(format!("{}\n     got {:?}\n    want {:?}", $name, actual, expected));
                }
            )*
            assert!(wrong.is_empty(), "{} of {} rows wrong:\n{}", wrong.len(), rows, wrong.join("\n"));
        }};
    }

    /// The settle table of docs/api.md ("How a send settles") and
    /// RELIABILITY.md's unknown-outcome table, then the rules of a run
    /// around its calls (`run.rs`): one row a line.
    #[test]
    fn every_row_of_the_settle_and_unknown_outcome_tables() {
        use AttemptOutcome as O;
        use CallOutcome::*;
        use SendFailure as F;
        use Settlement as S;
        let form_id = credential("form_id", 1, 0, DAY);
        let prepay_3 = credential("prepay_id", 3, 0, DAY);
        let prepay_2 = credential("prepay_id", 2, 0, DAY);
        let prepay_1 = credential("prepay_id", 1, 0, DAY);
        let prepay_1_after_unproven = credential("prepay_id", 1, 1, DAY);
        let fresh_prepay = credential("prepay_id", 3, 0, 5_000);
        let expiring = credential("form_id", 1, 0, 7 * DAY - 30_000);
        let fresh_form_id = credential("form_id", 1, 0, 5_000);
        let grant = subscription("subscribe");
        let ticket = subscription("long_term");
        let most = policy(Delivery::AtMostOnce);
        let least = policy(Delivery::AtLeastOnce);
        let midnight = next_china_midnight_ms(NOW);
        let transient = TokenTrouble::Transient {
            retry_at_ms: Some(NOW + 90_000),
        };
        let refusal = TokenTrouble::Refused {
            errcode: Some(40013),
        };
        let ahead = Some(NOW + DAY);
        table! {
            // errcode 0: sent.
            "0 sends": d(Answered(0), fresh(), &form_id, most) => sent(O::Sent);
            "0 on a prepay_id": d(Answered(0), fresh(), &prepay_3, most) => sent(O::Sent);
            // Dead credentials: retired, the next one is tried.
            "41028 retires": d(Answered(41028), fresh(), &form_id, most) => next(O::Retired, S::Retired { errcode: 41028 });
            "41029 retires": d(Answered(41029), fresh(), &form_id, most) => next(O::Retired, S::Retired { errcode: 41029 });
            "41031 retires": d(Answered(41031), fresh(), &prepay_3, most) => next(O::Retired, S::Retired { errcode: 41031 });
            "41035 retires": d(Answered(41035), fresh(), &form_id, most) => next(O::Retired, S::Retired { errcode: 41035 });
            "a fresh prepay_id answered 41028 is parked": d(Answered(41028), fresh(), &fresh_prepay, most) => next(O::NotReady, S::Parked { until: NOW + 120_000 });
            "a fresh form_id answered 41028 is retired": d(Answered(41028), fresh(), &fresh_form_id, most) => next(O::Retired, S::Retired { errcode: 41028 });
            // The request is wrong: back untouched, 422.
            "40037": d(Answered(40037), fresh(), &form_id, most) => failed(F::RequestInvalid { errcode: 40037 });
            "41030": d(Answered(41030), fresh(), &form_id, most) => failed(F::RequestInvalid { errcode: 41030 });
            "47003": d(Answered(47003), fresh(), &form_id, most) => failed(F::RequestInvalid { errcode: 47003 });
            "40003": d(Answered(40003), fresh(), &form_id, most) => failed(F::RequestInvalid { errcode: 40003 });
            // Token refused: refresh, then wait for a token, never fail.
            "40001 refreshes": d(Answered(40001), fresh(), &form_id, most) => refresh(refreshed(1, fresh()));
            "42001 refreshes": d(Answered(42001), fresh(), &form_id, most) => refresh(refreshed(1, fresh()));
            "40001 after the refreshes waits for a token": d(Answered(40001), refreshed(2, fresh()), &form_id, most) => refused(Settle::AwaitToken { retry_at_ms: None });
            // Quotas and retired APIs: back untouched; 45009 blocks the app's sends.
            "45009 blocks the app until midnight": d(Answered(45009), fresh(), &form_id, most) => quota(midnight);
            "45011": d(Answered(45011), fresh(), &form_id, most) => failed(F::RateLimited);
            "45103": d(Answered(45103), fresh(), &form_id, most) => failed(F::ApiRetired { errcode: 45103 });
            "45109": d(Answered(45109), fresh(), &form_id, most) => failed(F::ApiRetired { errcode: 45109 });
            "an errcode without a rule": d(Answered(12345), fresh(), &form_id, most) => failed(F::Unexpected { errcode: 12345 });
            // -1: retried with backoff, then 503.
            "-1 retries": d(Answered(-1), fresh(), &form_id, most) => backoff(O::Busy, 1, busy(1, fresh()));
            "-1 retries again": d(Answered(-1), busy(1, fresh()), &form_id, most) => backoff(O::Busy, 2, busy(2, fresh()));
            "-1 after the retries": d(Answered(-1), busy(2, fresh()), &form_id, most) => failed(F::UpstreamBusy);
            "-1 on a probe retries the probe": d(Answered(-1), probing(1), &form_id, most) => backoff(O::Busy, 1, busy(1, probing(1)));
            // Nothing left: nothing delivered.
            "not sent": d(NotSent, fresh(), &form_id, most) => finished(O::NotSent, S::Released, Fate::Failed(F::UpstreamUnreachable));
            // Unknown outcomes: probe when WeChat holds exactly one use.
            "a lost answer on a form_id is probed": d(Ambiguous, fresh(), &form_id, most) => backoff(O::Ambiguous, 1, probing(1));
            "a lost answer on a prepay_id's last proven send is probed": d(Ambiguous, fresh(), &prepay_1, most) => backoff(O::Ambiguous, 1, probing(1));
            "a lost answer on a prepay_id with sends left is unknown": d(Ambiguous, fresh(), &prepay_3, most) => unknown(O::Ambiguous, S::SpentUnproven);
            "a lost answer after an unproven use is unknown": d(Ambiguous, fresh(), &prepay_1_after_unproven, most) => unknown(O::Ambiguous, S::SpentUnproven);
            "a lost answer inside the safety margin is unknown": d(Ambiguous, fresh(), &expiring, most) => unknown(O::Ambiguous, S::SpentUnproven);
            "at least once moves on": d(Ambiguous, fresh(), &prepay_3, least) => next(O::Ambiguous, S::SpentUnproven);
            "a lost probe probes again": d(Ambiguous, probing(1), &form_id, most) => backoff(O::Ambiguous, 2, probing(2));
            "probes run out": d(Ambiguous, probing(2), &form_id, most) => unknown(O::Ambiguous, S::SpentUnproven);
            "a probe that never left probes again": d(NotSent, probing(1), &form_id, most) => backoff(O::NotSent, 2, probing(2));
            // What a probe's answer proves.
            "a probe answered 0 delivers now": d(Answered(0), probing(1), &form_id, most) => sent(O::SentOnProbe);
            "a probe answered 41029 confirms": d(Answered(41029), probing(1), &form_id, most) => sent(O::ConfirmedSent);
            "a probe answered 41028 proves nothing": d(Answered(41028), probing(1), &form_id, most) => unknown(O::ProbeInconclusive, S::Retired { errcode: 41028 });
            "a probe answered 41031 proves nothing": d(Answered(41031), probing(1), &form_id, most) => unknown(O::ProbeInconclusive, S::Retired { errcode: 41031 });
            "a probe answered 45009 proves nothing (and blocks nothing)": d(Answered(45009), probing(1), &form_id, most) => unknown(O::ProbeInconclusive, S::SpentUnproven);
            "a probe answered 40037 proves nothing": d(Answered(40037), probing(1), &form_id, most) => unknown(O::ProbeInconclusive, S::SpentUnproven);
            "a probe refused its token refreshes": d(Answered(40001), probing(1), &form_id, most) => refresh(refreshed(1, probing(1)));
            "a probe refused its fresh tokens stays leased for recovery": d(Answered(40001), refreshed(2, probing(1)), &form_id, most) => refused(Settle::LeaveForRecovery);
            "a probe busy after the retries proves nothing": d(Answered(-1), busy(2, probing(1)), &form_id, most) => unknown(O::ProbeInconclusive, S::SpentUnproven);
            "at least once: an inconclusive probe moves on": d(Answered(41028), probing(1), &form_id, least) => next(O::ProbeInconclusive, S::Retired { errcode: 41028 });
            // Subscribe grants (docs/wechat/subscribe-messages.md, "One-time
            // grants"): 43101 retires the template's grants and looks for
            // another; a grant is never probed.
            "subscribe 0 spends the grant": d(Answered(0), fresh(), &grant, most) => sent(O::Sent);
            "subscribe 43101 revokes the template's grants": d(Answered(43101), fresh(), &grant, most) => next(O::Retired, S::Revoked { errcode: 43101 });
            "subscribe 43101 on a long-term ticket switches it off": d(Answered(43101), fresh(), &ticket, most) => next(O::Retired, S::Revoked { errcode: 43101 });
            "subscribe 47003 gives the grant back": d(Answered(47003), fresh(), &grant, most) => failed(F::RequestInvalid { errcode: 47003 });
            "subscribe 45168 (blacklisted words) gives the grant back": d(Answered(45168), fresh(), &grant, most) => failed(F::RequestInvalid { errcode: 45168 });
            "a form_id code on a subscribe send has no rule": d(Answered(41028), fresh(), &grant, most) => failed(F::Unexpected { errcode: 41028 });
            "subscribe lost answer on the user's only grant in the ledger: unknown (WeChat may hold more)": d(Ambiguous, fresh(), &grant, most) => unknown(O::Ambiguous, S::SpentUnproven);
            "subscribe lost answer on a long-term ticket: unknown": d(Ambiguous, fresh(), &ticket, most) => unknown(O::Ambiguous, S::SpentUnproven);
            "a 43101 to a probe of a grant proves nothing (the user may have revoked)": d(Answered(43101), probing(1), &grant, most) => unknown(O::ProbeInconclusive, S::SpentUnproven);
            // The breaker counts what `decide` read: unreachable, lost and busy are WeChat's failures.
            "breaker: not sent fails": breaker(NotSent, &form_id) => true;
            "breaker: a lost answer fails": breaker(Ambiguous, &form_id) => true;
            "breaker: -1 fails": breaker(Answered(-1), &form_id) => true;
            "breaker: -1 on a subscribe send fails": breaker(Answered(-1), &grant) => true;
            "breaker: 0 succeeds": breaker(Answered(0), &form_id) => false;
            "breaker: a dead credential succeeds": breaker(Answered(41028), &form_id) => false;
            "breaker: a refused token succeeds": breaker(Answered(40001), &form_id) => false;
            "breaker: 45009 succeeds": breaker(Answered(45009), &form_id) => false;
            "breaker: 43101 succeeds": breaker(Answered(43101), &grant) => false;
            // A recovered credential is probed only when WeChat holds one use.
            "recovered form_id is probed": on_recovered(&form_id, NOW, &most) => None;
            "recovered prepay_id on its last send is probed": on_recovered(&prepay_1, NOW, &most) => None;
            "recovered prepay_id with sends left is unknown": on_recovered(&prepay_2, NOW, &most) => Some(unknown(O::Recovered, S::SpentUnproven));
            "recovered after an unproven use is unknown": on_recovered(&prepay_1_after_unproven, NOW, &most) => Some(unknown(O::Recovered, S::SpentUnproven));
            "recovered grant is unknown (WeChat may hold more)": on_recovered(&grant, NOW, &most) => Some(unknown(O::Recovered, S::SpentUnproven));
            "recovered long-term ticket is unknown": on_recovered(&ticket, NOW, &most) => Some(unknown(O::Recovered, S::SpentUnproven));
            "recovered, at least once: the next credential": on_recovered(&prepay_2, NOW, &least) => Some(next(O::Recovered, S::SpentUnproven));
            // Where a run starts.
            "a message taken up again claims": open(Start::ClaimFirst, Channel::Template) => Opening::Claim;
            "a template start without a credential has none left": open(Start::AlreadyClaimed(None), Channel::Template) => Opening::NoneLeft;
            "a subscribe start without a grant claims (a long-term subscription may pay)": open(Start::AlreadyClaimed(None), Channel::Subscribe) => Opening::Claim;
            "the start's credential is spent": open(Start::AlreadyClaimed(Some(form_id.clone())), Channel::Template) => Opening::Spend { credential: form_id.clone(), recovered: false };
            "a blocked app fails at once": open(Start::QuotaBlocked { until_ms: midnight }, Channel::Template) => Opening::Fail(F::QuotaExhausted { until_ms: midnight });
            "a recovered credential is spent as recovered": open(Start::Recovered(prepay_1.clone()), Channel::Template) => Opening::Spend { credential: prepay_1.clone(), recovered: true };
            "a quota block ahead holds": quota_block(Some(midnight), NOW) => Some(midnight);
            "a quota block past holds no more": quota_block(Some(NOW), NOW) => None;
            "no quota block": quota_block(None, NOW) => None;
            // Probes pass the breaker.
            "a first call asks the breaker": asks_breaker(fresh()) => true;
            "a busy retry asks the breaker": asks_breaker(busy(1, fresh())) => true;
            "a probe does not ask the breaker": asks_breaker(probing(1)) => false;
            "a refused first call gives the credential back": admission(&fresh(), || Err(7_000)) => Some(Settle::GiveBack(F::CircuitOpen { retry_after_ms: 7_000 }));
            "an admitted call goes out": admission(&fresh(), || Ok(())) => None;
            "an open circuit does not hold a probe back": admission(&probing(1), || Err(7_000)) => None;
            // No token to be had.
            "transient, probing: left leased for recovery (pending)": without_token(transient, true) => Settle::LeaveForRecovery;
            "transient: the credential back, the message waits": without_token(transient, false) => Settle::AwaitToken { retry_at_ms: Some(NOW + 90_000) };
            "refused, probing (a recovered credential too): unproven, unknown": without_token(refusal, true) => unknown(O::TokenUnavailable, S::SpentUnproven);
            "refused: the credential back, token_unavailable with the errcode": without_token(refusal, false) => Settle::GiveBack(F::TokenUnavailable { errcode: Some(40013) });
            "an unknown app: token_unavailable without errcode": without_token(TokenTrouble::Refused { errcode: None }, false) => Settle::GiveBack(F::TokenUnavailable { errcode: None });
            "a token wait lasts token_retry_ms at least": token_retry_at(None, NOW, &most) => NOW + 30_000;
            "a token wait ends when the keeper said": token_retry_at(Some(NOW + 90_000), NOW, &most) => NOW + 90_000;
            "a token wait is never shorter than token_retry_ms": token_retry_at(Some(NOW + 1), NOW, &most) => NOW + 30_000;
            // No credential left.
            "none seen: no_credential": none_left(&Seen::default(), None, NOW, &most) => NoneLeft::Fail(F::NoCredential);
            "43101 seen: no_credential with the errcode": none_left(&seen(&[(1, S::Revoked { errcode: 43101 })]), None, NOW, &most) => NoneLeft::Fail(F::GrantsRevoked { errcode: 43101 });
            "43101 seen beside a parked prepay_id: still the revocation": none_left(&seen(&[(1, S::Parked { until: NOW }), (2, S::Revoked { errcode: 43101 })]), None, NOW, &most) => NoneLeft::Fail(F::GrantsRevoked { errcode: 43101 });
            "parked prepay_ids: credential_not_ready": none_left(&seen(&[(1, S::Parked { until: NOW })]), None, NOW, &most) => NoneLeft::Fail(F::CredentialNotReady);
            "a wait ahead: waiting until wait_until": none_left(&Seen::default(), ahead, NOW, &most) => NoneLeft::Wait { next_attempt_at: NOW + DAY };
            "a wait ahead with parked prepay_ids: back soon": none_left(&seen(&[(1, S::Parked { until: NOW })]), ahead, NOW, &most) => NoneLeft::Wait { next_attempt_at: NOW + 5_000 };
            "a wait ahead after 43101: waiting": none_left(&seen(&[(1, S::Revoked { errcode: 43101 })]), ahead, NOW, &most) => NoneLeft::Wait { next_attempt_at: NOW + DAY };
            "a wait that ran out: no_credential": none_left(&Seen::default(), Some(NOW), NOW, &most) => NoneLeft::Fail(F::NoCredential);
            "a run sees revocations and parked ids only": seen(&[(1, S::Retired { errcode: 41028 }), (2, S::Parked { until: NOW }), (3, S::Revoked { errcode: 43101 }), (4, S::Spent)]) => Seen { revoked_by: Some(43101), parked: vec![2] };
            // How a fate reads.
            "sent: no failure": (Fate::Sent.status(), Fate::Sent.failure()) => (MessageStatus::Sent, None);
            "unknown: outcome_unknown": (Fate::Unknown.status(), Fate::Unknown.failure()) => (MessageStatus::Unknown, Some(F::OutcomeUnknown));
            "failed: its failure": (Fate::Failed(F::RateLimited).status(), Fate::Failed(F::RateLimited).failure()) => (MessageStatus::Failed, Some(F::RateLimited));
        }
    }
}
