//! The executor: claims credentials, calls WeChat, and applies the steps
//! `decide` returns. Every rule lives in `decide`; what is here is doing.

use std::time::Duration;

use serde_json::{Map, Value};
use std::hash::{Hash, Hasher};
use tokio::sync::OwnedSemaphorePermit;

use super::decide::{self, CallOutcome, MessageEnd, Policy, Spending, Step};
use super::{AttemptSummary, SendResult, Sender};
use crate::ledger::failure::SendFailure;
use crate::ledger::kinds::CredentialKind;
use crate::ledger::states::{AttemptOutcome, Channel, Delivery, MessageStatus};
use crate::storage::{
    Claim, ClaimedCredential, EndSend, Lease, MessageOutcome, NewAttempt, Settlement, StoredMessage,
};
use crate::tokens::TokenError;
use crate::wechat::CallError;

/// A message the send path works on.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    pub channel: Channel,
    pub payload: Map<String, Value>,
    pub delivery: Delivery,
    pub wait_until: Option<i64>,
}

impl Job {
    pub(super) fn from_stored(message: &StoredMessage) -> anyhow::Result<Self> {
        let payload = match serde_json::from_str(&message.payload)? {
            Value::Object(payload) => payload,
            _ => anyhow::bail!("message {} has a payload that is not an object", message.id),
        };
        Ok(Self {
            appid: message.appid.clone(),
            touser: message.touser.clone(),
            template_id: message.template_id.clone(),
            channel: message.channel,
            payload,
            delivery: message.delivery,
            wait_until: message.wait_until,
        })
    }
}

/// Where a run of the send path starts.
pub(super) enum Initial {
    /// Claim the first credential (a message taken up again).
    Claim,
    /// The first claim was made with the message's creation.
    Claimed(Option<ClaimedCredential>),
    /// The app's daily quota is spent until then.
    Blocked(i64),
    /// A credential found leased to the message after a crash.
    Recovered(ClaimedCredential),
}

/// How one claimed credential ended.
enum CredentialEnd {
    /// The message is finished (or handed over).
    Done(SendResult),
    /// Try the user's next credential.
    Next,
}

/// One message on its way through the rules, holding its lease and a call slot.
pub(super) struct Run<'a> {
    sender: &'a Sender,
    job: &'a Job,
    lease: Lease,
    /// Until when this run's lease holds, by this process's clock.
    lease_until: i64,
    attempts: Vec<AttemptSummary>,
    /// Fetched after the first claim: a user without credentials gets their
    /// 409 even while WeChat's token endpoint is down.
    token: Option<String>,
    parked: Vec<i64>,
    /// Whether a call to WeChat was made: from then on a failed write is
    /// retried, and never answered as if nothing was sent.
    called: bool,
    /// The errcode with which WeChat said the user holds no grant of the
    /// template (43101), when it did: the 409 names it.
    revoked_by: Option<i64>,
    _slot: OwnedSemaphorePermit,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        sender: &'a Sender,
        job: &'a Job,
        lease: Lease,
        lease_until: i64,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            sender,
            job,
            lease,
            lease_until,
            attempts: Vec::new(),
            token: None,
            parked: Vec::new(),
            called: false,
            revoked_by: None,
            _slot: slot,
        }
    }

    /// Drives the message, then returns the fresh prepay_ids parked on the
    /// way; a crash leaves them to recovery, which finds them owned by no
    /// message.
    pub(super) async fn process(mut self, initial: Initial) -> anyhow::Result<SendResult> {
        let result = match self.drive(initial).await {
            Ok(result) => Ok(result),
            Err(error) if self.called => {
                // WeChat may have delivered: never answer as if nothing was
                // sent. Recovery settles the message once its lease runs out.
                tracing::error!(error = ?error, "a send's settlement could not be recorded");
                Ok(self.pending())
            }
            Err(error) => Err(error),
        };
        if !self.parked.is_empty() {
            let parked = std::mem::take(&mut self.parked);
            self.sender
                .storage
                .release_credentials(&parked, self.lease.token, self.sender.clock.now_ms())
                .await?;
        }
        result
    }

    fn policy(&self) -> Policy {
        let settings = &self.sender.settings;
        Policy {
            probe_limit: settings.probe_limit,
            busy_retries: settings.busy_retries,
            fresh_prepay_grace_ms: settings.fresh_prepay_grace_ms,
            safety_margin_ms: settings.safety_margin_ms,
            delivery: self.job.delivery,
            park_ms: settings.lease_ms,
            token_refreshes: settings.token_refreshes,
        }
    }

    async fn drive(&mut self, initial: Initial) -> anyhow::Result<SendResult> {
        let sender = self.sender;
        let appid = self.job.appid.as_str();
        let mut next = match initial {
            Initial::Blocked(until_ms) => {
                return self.finish(SendFailure::QuotaExhausted { until_ms }).await
            }
            // A subscribe message the batched start found no grant for may
            // still be paid by a long-term subscription: the claim below
            // looks for both.
            Initial::Claimed(None) if self.job.channel == Channel::Subscribe => None,
            Initial::Claimed(None) => return self.no_credential().await,
            Initial::Claimed(Some(credential)) => Some((credential, false)),
            // A recovered credential is resolved whatever the quota says: it
            // may already be in WeChat's hands.
            Initial::Recovered(credential) => Some((credential, true)),
            Initial::Claim => {
                let blocked_until = sender.tokens.app_state(appid).await?.send_blocked_until;
                if let Some(until_ms) = blocked_until.filter(|until| *until > sender.clock.now_ms())
                {
                    return self.finish(SendFailure::QuotaExhausted { until_ms }).await;
                }
                None
            }
        };
        for _ in 0..sender.settings.max_attempts {
            let (credential, recovered) = match next.take() {
                Some(first) => first,
                None => {
                    let now = sender.clock.now_ms();
                    let lease_until = now + sender.settings.lease_ms;
                    let claim = sender
                        .storage
                        .claim_credential(
                            appid,
                            &self.job.touser,
                            crate::storage::grant_of(self.job.channel, &self.job.template_id),
                            &self.lease,
                            now + sender.settings.safety_margin_ms,
                            lease_until,
                            now,
                        )
                        .await?;
                    match claim {
                        Claim::Claimed(credential) => {
                            self.lease_until = lease_until;
                            (credential, false)
                        }
                        Claim::NoneLeft => return self.no_credential().await,
                        Claim::LeaseLost => return Ok(self.pending()),
                    }
                }
            };
            if self.token.is_none() {
                match sender.tokens.current(appid).await {
                    Ok(current) => self.token = Some(current.token),
                    Err(error) => {
                        tracing::warn!(appid, %error, "no access token for a send");
                        // A recovered credential stays leased: recovery
                        // tries again when its lease runs out.
                        if recovered && error.is_transient() {
                            return Ok(self.pending());
                        }
                        if !recovered {
                            self.release(credential.id).await?;
                        }
                        if error.is_transient() {
                            return self.wait_for_token(Some(&error)).await;
                        }
                        return self.finish(token_failure(&error)).await;
                    }
                }
            }
            match self.spend(&credential, recovered).await {
                Ok(CredentialEnd::Done(result)) => return Ok(result),
                Ok(CredentialEnd::Next) => continue,
                Err(LeaseLostOr::LeaseLost) => return Ok(self.pending()),
                Err(LeaseLostOr::Error(error)) => return Err(error),
            }
        }
        self.finish(SendFailure::AttemptLimit).await
    }

    /// No credential to claim: wait for one, or fail.
    async fn no_credential(&mut self) -> anyhow::Result<SendResult> {
        let sender = self.sender;
        let now = sender.clock.now_ms();
        let waits = self.job.wait_until.is_some_and(|until| until > now);
        if waits {
            let next_attempt_at = if self.parked.is_empty() {
                self.job.wait_until.unwrap_or(now)
            } else {
                now + sender.settings.not_ready_retry_ms
            };
            let held = sender
                .storage
                .wait_message(
                    &self.lease,
                    next_attempt_at,
                    now + sender.settings.safety_margin_ms,
                    now,
                )
                .await?;
            if !held {
                return Ok(self.pending());
            }
            return Ok(self.result(MessageStatus::Waiting, None));
        }
        let failure = match (self.revoked_by, self.parked.is_empty()) {
            (Some(errcode), _) => SendFailure::GrantsRevoked { errcode },
            (None, true) => SendFailure::NoCredential,
            (None, false) => SendFailure::CredentialNotReady,
        };
        self.finish(failure).await
    }

    /// Calls WeChat with one leased credential until it is settled.
    async fn spend(
        &mut self,
        credential: &ClaimedCredential,
        recovered: bool,
    ) -> Result<CredentialEnd, LeaseLostOr> {
        let sender = self.sender;
        let appid = self.job.appid.as_str();
        let policy = self.policy();
        let mut body = self.job.payload.clone();
        // A grant is the ledger's account of WeChat's count, not a field of
        // the call: only a template send names its credential.
        if self.job.channel == Channel::Template {
            body.insert("form_id".into(), credential.value.clone().into());
        }
        let body = Value::Object(body);
        let mut state = Spending {
            probing: recovered,
            ..Spending::default()
        };
        if recovered {
            let now = sender.clock.now_ms();
            if let Some(step) = decide::on_recovered(credential, now, &policy) {
                return self.apply(credential, None, Answer::default(), step).await;
            }
        }
        loop {
            // Probes bypass the breaker: they are how an unknown outcome ends.
            if !state.probing {
                if let Err(retry_after_ms) = sender.guard.admit(appid) {
                    self.release(credential.id).await?;
                    return Ok(CredentialEnd::Done(
                        self.finish(SendFailure::CircuitOpen { retry_after_ms })
                            .await?,
                    ));
                }
            }
            self.ensure_lease_room().await?;
            let token = self.token.clone().unwrap_or_default();
            self.called = true;
            let call = match self.job.channel {
                Channel::Template => sender.wechat.send_template(&token, &body).await,
                Channel::Subscribe => sender.wechat.send_subscribe(&token, &body).await,
            };
            let (answer, said) = match call {
                Ok(reply) => (
                    CallOutcome::Answered(reply.errcode),
                    Answer {
                        // WeChat's errmsg names the field a 47003 is about.
                        detail: Some(reply.errmsg)
                            .filter(|errmsg| reply.errcode != 0 && !errmsg.is_empty()),
                        msgid: reply.msgid,
                    },
                ),
                Err(error) => {
                    let (answer, detail) = match error {
                        CallError::NotSent(detail) => (CallOutcome::NotSent, detail),
                        CallError::Ambiguous(detail) => (CallOutcome::Ambiguous, detail),
                    };
                    tracing::warn!(appid, %detail, "WeChat call failed");
                    (answer, Answer::detail(detail))
                }
            };
            sender.guard.record(appid, answer);
            let step = decide::decide(answer, &state, credential, sender.clock.now_ms(), &policy);
            if matches!(step, Step::RefreshToken { .. } | Step::AwaitToken { .. }) {
                // Whatever becomes of this run, no other send of this process
                // is handed the token again.
                sender.tokens.note_rejected(appid, &token);
            }
            match step {
                Step::CallAgain { retry, .. } => {
                    self.record(credential, answer, said, step.outcome())
                        .await?;
                    tokio::time::sleep(backoff_with_jitter(
                        sender.settings.busy_backoff,
                        retry,
                        &self.lease.message_id,
                    ))
                    .await;
                    state = state.after(&step);
                }
                Step::RefreshToken { outcome } => {
                    self.record(credential, answer, said, outcome).await?;
                    state = state.after(&step);
                    match sender.tokens.refresh(appid, &token).await {
                        Ok(fresh) => self.token = Some(fresh.token),
                        Err(error) => {
                            tracing::warn!(appid, %error, "token refresh after a rejection failed");
                            return self
                                .await_token(credential, state.probing, Some(&error))
                                .await;
                        }
                    }
                }
                Step::AwaitToken { outcome } => {
                    self.record(credential, answer, said, outcome).await?;
                    return self.await_token(credential, state.probing, None).await;
                }
                step => return self.apply(credential, Some(answer), said, step).await,
            }
        }
    }

    /// Applies a step that settles the credential.
    async fn apply(
        &mut self,
        credential: &ClaimedCredential,
        answer: Option<CallOutcome>,
        said: Answer,
        step: Step,
    ) -> Result<CredentialEnd, LeaseLostOr> {
        let errcode = answer.and_then(CallOutcome::errcode);
        match step {
            Step::NextCredential {
                outcome,
                settlement,
            } => {
                if let Settlement::Revoked { errcode } = settlement {
                    self.revoked_by = Some(errcode);
                }
                let attempt = self.attempt(credential, errcode, outcome, said);
                self.persist(&attempt, Some((credential.id, settlement)), None)
                    .await?;
                if matches!(settlement, Settlement::Parked { .. }) {
                    self.parked.push(credential.id);
                }
                Ok(CredentialEnd::Next)
            }
            Step::End {
                outcome,
                settlement,
                end,
            } => {
                let (status, failure) = match end {
                    MessageEnd::Sent => (MessageStatus::Sent, None),
                    MessageEnd::Unknown => {
                        (MessageStatus::Unknown, Some(SendFailure::OutcomeUnknown))
                    }
                    MessageEnd::Failed(failure) => (MessageStatus::Failed, Some(failure)),
                };
                if let Some(SendFailure::QuotaExhausted { until_ms }) = &failure {
                    let sender = self.sender;
                    sender
                        .storage
                        .block_sends(&self.job.appid, *until_ms)
                        .await
                        .map_err(LeaseLostOr::Error)?;
                    sender.tokens.note_blocked(&self.job.appid, *until_ms);
                }
                let message = message_outcome(status, failure.as_ref());
                let attempt = self.attempt(credential, errcode, outcome, said);
                if settlement == Settlement::Spent && status == MessageStatus::Sent {
                    // The common end of a send shares a commit with others.
                    self.persist_end(credential.id, &attempt, &message).await?;
                } else {
                    self.persist(&attempt, Some((credential.id, settlement)), Some(&message))
                        .await?;
                }
                Ok(CredentialEnd::Done(self.result(status, failure)))
            }
            Step::CallAgain { .. } | Step::RefreshToken { .. } | Step::AwaitToken { .. } => {
                unreachable!("the executor's loop applies the steps that call again")
            }
        }
    }

    /// No working token for a credential WeChat has not spent: the message
    /// waits for one (the credential back in the pool, or, while probing,
    /// still leased for recovery to probe again). Only a refusal for the
    /// app's configuration (`error` not transient) ends the message.
    async fn await_token(
        &mut self,
        credential: &ClaimedCredential,
        probing: bool,
        error: Option<&TokenError>,
    ) -> Result<CredentialEnd, LeaseLostOr> {
        let transient = error.is_none_or(TokenError::is_transient);
        match (transient, probing) {
            (true, true) => Ok(CredentialEnd::Done(self.pending())),
            (true, false) => {
                self.release(credential.id).await?;
                Ok(CredentialEnd::Done(self.wait_for_token(error).await?))
            }
            (false, true) => {
                let step = Step::End {
                    outcome: AttemptOutcome::TokenUnavailable,
                    settlement: Settlement::SpentUnproven,
                    end: MessageEnd::Unknown,
                };
                self.apply(credential, None, Answer::default(), step).await
            }
            (false, false) => {
                self.release(credential.id).await?;
                let failure = error.map_or(
                    SendFailure::TokenUnavailable { errcode: None },
                    token_failure,
                );
                Ok(CredentialEnd::Done(self.finish(failure).await?))
            }
        }
    }

    /// Puts the message back to wait for a token, its credential already
    /// back in the pool: due again when the token keeper may have one.
    async fn wait_for_token(&mut self, error: Option<&TokenError>) -> anyhow::Result<SendResult> {
        let sender = self.sender;
        let now = sender.clock.now_ms();
        let next_attempt_at = error
            .and_then(TokenError::retry_at_ms)
            .unwrap_or(now)
            .max(now + sender.settings.token_retry_ms);
        let held = sender
            .storage
            .wait_for_token(&self.lease, next_attempt_at, now)
            .await?;
        if !held {
            return Ok(self.pending());
        }
        tracing::warn!(
            appid = %self.job.appid,
            retry_in_ms = next_attempt_at - now,
            "no working access token: the message waits for one"
        );
        Ok(self.result(MessageStatus::Waiting, None))
    }

    /// Before a call: the lease must hold for the whole call. A lease that
    /// may run out meanwhile is renewed first, and a run whose lease was
    /// taken stops without calling.
    async fn ensure_lease_room(&mut self) -> Result<(), LeaseLostOr> {
        let sender = self.sender;
        let now = sender.clock.now_ms();
        if self.lease_until - now > sender.settings.call_budget_ms {
            return Ok(());
        }
        let lease_until = now + sender.settings.lease_ms;
        if sender
            .storage
            .renew_lease(&self.lease, lease_until)
            .await
            .map_err(LeaseLostOr::Error)?
        {
            self.lease_until = lease_until;
            Ok(())
        } else {
            Err(LeaseLostOr::LeaseLost)
        }
    }

    fn attempt(
        &self,
        credential: &ClaimedCredential,
        errcode: Option<i64>,
        outcome: AttemptOutcome,
        said: Answer,
    ) -> NewAttempt {
        NewAttempt {
            credential_id: Some(credential.id),
            credential_kind: CredentialKind::parse(&credential.kind),
            errcode,
            outcome,
            detail: said.detail,
            msgid: said.msgid,
        }
    }

    /// Records an attempt that keeps the credential leased.
    async fn record(
        &mut self,
        credential: &ClaimedCredential,
        answer: CallOutcome,
        said: Answer,
        outcome: AttemptOutcome,
    ) -> Result<(), LeaseLostOr> {
        let attempt = self.attempt(credential, answer.errcode(), outcome, said);
        self.persist(&attempt, Some((credential.id, Settlement::Kept)), None)
            .await
    }

    /// Writes an attempt with its settlement, retrying a failed write while
    /// the lease lasts: after a call, what WeChat answered must reach the
    /// ledger. `LeaseLost` when another run holds the message now.
    async fn persist(
        &mut self,
        attempt: &NewAttempt,
        settlement: Option<(i64, Settlement)>,
        message: Option<&MessageOutcome>,
    ) -> Result<(), LeaseLostOr> {
        let sender = self.sender;
        let held = self
            .retrying(|| {
                sender.storage.record_attempt(
                    &self.lease,
                    attempt,
                    settlement,
                    message,
                    sender.clock.now_ms(),
                )
            })
            .await?;
        self.note(attempt, held)
    }

    /// The batched end of a delivered message.
    async fn persist_end(
        &mut self,
        credential_id: i64,
        attempt: &NewAttempt,
        message: &MessageOutcome,
    ) -> Result<(), LeaseLostOr> {
        let sender = self.sender;
        let end = EndSend {
            message_id: self.lease.message_id.clone(),
            lease_token: self.lease.token,
            credential_id,
            attempt: attempt.clone(),
            outcome: message.clone(),
            now: sender.clock.now_ms(),
        };
        let held = self.retrying(|| sender.storage.end_send(&end)).await?;
        self.note(attempt, held)
    }

    /// Runs a write until it commits, with backoff, for as long as the lease
    /// leaves room; then gives up with the last error.
    async fn retrying<F, Fut>(&self, mut write: F) -> Result<bool, LeaseLostOr>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let sender = self.sender;
        let mut retry = 0;
        loop {
            match write().await {
                Ok(held) => return Ok(held),
                Err(error) => {
                    let room = self.lease_until - sender.clock.now_ms();
                    if !self.called || room < sender.settings.call_budget_ms / 2 {
                        return Err(LeaseLostOr::Error(error));
                    }
                    retry += 1;
                    tracing::warn!(error = %format!("{error:#}"), retry, "a ledger write failed; retrying");
                    tokio::time::sleep(backoff_with_jitter(
                        sender.settings.busy_backoff,
                        retry,
                        &self.lease.message_id,
                    ))
                    .await;
                }
            }
        }
    }

    /// Adds a recorded attempt to the caller's answer; `LeaseLost` when the
    /// write that recorded it found the message held by another run.
    fn note(&mut self, attempt: &NewAttempt, held: bool) -> Result<(), LeaseLostOr> {
        self.attempts.push(AttemptSummary {
            credential_kind: attempt.credential_kind.map(CredentialKind::as_str),
            errcode: attempt.errcode,
            outcome: attempt.outcome,
            errmsg: attempt.errcode.and(attempt.detail.clone()),
            msgid: attempt.msgid.clone(),
        });
        if held {
            Ok(())
        } else {
            Err(LeaseLostOr::LeaseLost)
        }
    }

    async fn release(&self, credential_id: i64) -> anyhow::Result<()> {
        self.sender
            .storage
            .release_credentials(
                &[credential_id],
                self.lease.token,
                self.sender.clock.now_ms(),
            )
            .await
    }

    /// Fails the message without a further call to WeChat.
    async fn finish(&mut self, failure: SendFailure) -> anyhow::Result<SendResult> {
        let outcome = message_outcome(MessageStatus::Failed, Some(&failure));
        let held = self
            .sender
            .storage
            .finish_message(&self.lease, &outcome, self.sender.clock.now_ms())
            .await?;
        if !held {
            return Ok(self.pending());
        }
        Ok(self.result(MessageStatus::Failed, Some(failure)))
    }

    /// The answer while the outcome is still being settled (by recovery, or
    /// by another run that took the message over).
    fn pending(&self) -> SendResult {
        self.result(MessageStatus::Pending, Some(SendFailure::OutcomePending))
    }

    fn result(&self, status: MessageStatus, failure: Option<SendFailure>) -> SendResult {
        SendResult {
            message_id: self.lease.message_id.clone(),
            status,
            failure,
            attempts: self.attempts.clone(),
        }
    }
}

/// What a call said besides its errcode: the failure's detail or WeChat's
/// errmsg, and the msgid of a delivered subscribe message.
#[derive(Debug, Default)]
struct Answer {
    detail: Option<String>,
    msgid: Option<String>,
}

impl Answer {
    fn detail(detail: String) -> Self {
        Self {
            detail: Some(detail),
            msgid: None,
        }
    }
}

/// Either the lease was lost, or a write failed for good.
enum LeaseLostOr {
    LeaseLost,
    Error(anyhow::Error),
}

impl From<anyhow::Error> for LeaseLostOr {
    fn from(error: anyhow::Error) -> Self {
        LeaseLostOr::Error(error)
    }
}

fn message_outcome(status: MessageStatus, failure: Option<&SendFailure>) -> MessageOutcome {
    MessageOutcome {
        status,
        error_code: failure.map(SendFailure::code),
        wechat_errcode: failure.and_then(SendFailure::wechat_errcode),
    }
}

fn token_failure(error: &TokenError) -> SendFailure {
    match error {
        TokenError::Refused { errcode, .. } => SendFailure::TokenUnavailable {
            errcode: Some(*errcode),
        },
        _ => SendFailure::TokenUnavailable { errcode: None },
    }
}

/// Exponential backoff with jitter, so that messages retrying the same busy
/// WeChat do not retry in step. The jitter is a hash of the message and the
/// retry rather than a random draw, so that a simulated run is the same
/// every time its seed is.
fn backoff_with_jitter(base: Duration, retry: u32, message_id: &str) -> Duration {
    let ceiling = base.saturating_mul(1 << retry.min(6));
    let millis = ceiling.as_millis().max(1) as u64;
    let mut hasher = std::hash::DefaultHasher::new();
    (message_id, retry).hash(&mut hasher);
    let half = millis / 2;
    Duration::from_millis(half + hasher.finish() % (millis - half + 1))
}
