//! The executor: claims credentials, calls WeChat, and applies what the
//! send path's rules decide (`decide` for each answer, `run` around the
//! calls). Every rule lives there; what is here is doing.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::decide::{self, CallOutcome, Finish, Next, Policy, RetryAfter, Settle, Spending};
use super::run::{self, NoneLeft, Opening, Seen, Start, TokenTrouble};
use super::{AttemptSummary, SendResult, Sender};
use crate::ledger::failure::SendFailure;
use crate::ledger::kinds::CredentialKind;
use crate::ledger::states::{AttemptOutcome, Channel, Delivery, MessageStatus};
use crate::monitoring::ClaimResult;
use crate::storage::{
    Claim, ClaimedCredential, EndSend, Lease, MessageOutcome, NewAttempt, Settlement, StoredMessage,
};
use crate::tokens::TokenError;
use crate::wechat::CallError;

/// A message the send path works on: what to send, to whom, and how.
#[derive(Debug, Clone)]
pub(super) struct OutgoingMessage {
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    pub channel: Channel,
    pub payload: Map<String, Value>,
    pub delivery: Delivery,
    pub wait_until: Option<i64>,
}

impl OutgoingMessage {
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

/// What comes after one credential left the run.
enum AfterCredential {
    /// The message is finished (or handed over): the run's answer.
    Finished(SendResult),
    /// Claim the user's next credential.
    ClaimNext,
}

/// One message on its way through the rules, holding its lease and a call slot.
pub(super) struct Run<'a> {
    sender: &'a Sender,
    message: &'a OutgoingMessage,
    lease: Lease,
    /// Until when this run's lease holds, by this process's clock.
    lease_until: i64,
    attempts: Vec<AttemptSummary>,
    /// Fetched after the first claim: a user without credentials gets their
    /// 409 even while WeChat's token endpoint is down.
    token: Option<String>,
    /// What the run saw of the user's credentials: the 43101 that revoked
    /// them, the prepay_ids it parked.
    seen: Seen,
    /// Whether a call to WeChat was made: from then on a failed write is
    /// retried, and never answered as if nothing was sent.
    called: bool,
    /// Whether this run is recovery's, on a message whose run died: its
    /// end reports `message.settled`.
    recovered: bool,
    _slot: OwnedSemaphorePermit,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        sender: &'a Sender,
        message: &'a OutgoingMessage,
        lease: Lease,
        lease_until: i64,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            sender,
            message,
            lease,
            lease_until,
            attempts: Vec::new(),
            token: None,
            seen: Seen::default(),
            called: false,
            recovered: false,
            _slot: slot,
        }
    }

    /// Drives the message, then returns the fresh prepay_ids parked on the
    /// way; a crash leaves them to recovery, which finds them owned by no
    /// message.
    pub(super) async fn process(mut self, start: Start) -> anyhow::Result<SendResult> {
        self.recovered = matches!(start, Start::Recovered(_));
        let result = match self.drive(start).await {
            Ok(result) => Ok(result),
            Err(error) if self.called => {
                // WeChat may have delivered: never answer as if nothing was
                // sent. Recovery settles the message once its lease runs out.
                tracing::error!(error = ?error, "a send's settlement could not be recorded");
                Ok(self.pending())
            }
            Err(error) => Err(error),
        };
        if !self.seen.parked.is_empty() {
            let parked = std::mem::take(&mut self.seen.parked);
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
            delivery: self.message.delivery,
            park_ms: settings.lease_ms,
            token_refreshes: settings.token_refreshes,
            not_ready_retry_ms: settings.not_ready_retry_ms,
            token_retry_ms: settings.token_retry_ms,
        }
    }

    /// Spends the user's credentials one after another until one of them
    /// finishes the message.
    async fn drive(&mut self, start: Start) -> anyhow::Result<SendResult> {
        let mut first = match run::open(start, self.message.channel) {
            Opening::Fail(failure) => return self.fail(failure).await,
            Opening::NoneLeft => return self.none_left().await,
            Opening::Claim => None,
            Opening::Spend {
                credential,
                recovered,
            } => Some((credential, recovered)),
        };
        for _ in 0..self.sender.settings.max_attempts {
            let (credential, recovered) = match first.take() {
                Some(first) => first,
                None => match self.claim().await? {
                    Claim::Claimed(credential) => (credential, false),
                    Claim::NoneLeft => return self.none_left().await,
                    Claim::LeaseLost => return Ok(self.pending()),
                },
            };
            match self.spend(&credential, recovered).await {
                Ok(AfterCredential::Finished(result)) => return Ok(result),
                Ok(AfterCredential::ClaimNext) => continue,
                Err(LeaseLostOr::LeaseLost) => return Ok(self.pending()),
                Err(LeaseLostOr::Error(error)) => return Err(error),
            }
        }
        self.fail(SendFailure::AttemptLimit).await
    }

    /// Leases the user's credential that expires soonest to the message,
    /// renewing the message's lease with it.
    async fn claim(&mut self) -> anyhow::Result<Claim> {
        let sender = self.sender;
        let now = sender.clock.now_ms();
        let lease_until = now + sender.settings.lease_ms;
        let claim = sender
            .storage
            .claim_credential(&crate::storage::ClaimRequest {
                appid: &self.message.appid,
                openid: &self.message.touser,
                grant_of: crate::ledger::values::grant_of(
                    self.message.channel,
                    &self.message.template_id,
                ),
                lease: &self.lease,
                valid_after: now + sender.settings.safety_margin_ms,
                lease_until,
                now,
            })
            .await?;
        let counted = match claim {
            Claim::Claimed(_) => {
                self.lease_until = lease_until;
                ClaimResult::Claimed
            }
            Claim::NoneLeft => ClaimResult::NoneLeft,
            Claim::LeaseLost => ClaimResult::LeaseLost,
        };
        crate::monitoring::claim(&self.message.appid, counted);
        Ok(claim)
    }

    /// No credential to claim: wait for one, or fail.
    async fn none_left(&mut self) -> anyhow::Result<SendResult> {
        let sender = self.sender;
        let now = sender.clock.now_ms();
        match run::none_left(&self.seen, self.message.wait_until, now, &self.policy()) {
            NoneLeft::Fail(failure) => self.fail(failure).await,
            NoneLeft::Wait { next_attempt_at } => {
                let valid_after = now + sender.settings.safety_margin_ms;
                let held = sender
                    .storage
                    .wait_message(&self.lease, next_attempt_at, valid_after, now)
                    .await?;
                if !held {
                    return Ok(self.pending());
                }
                Ok(self.result(MessageStatus::Waiting, None))
            }
        }
    }

    /// Calls WeChat with one leased credential until it leaves the run.
    async fn spend(
        &mut self,
        credential: &ClaimedCredential,
        recovered: bool,
    ) -> Result<AfterCredential, LeaseLostOr> {
        let message = self.message;
        let appid = message.appid.as_str();
        let policy = self.policy();
        let mut state = Spending {
            probing: recovered,
            ..Spending::default()
        };
        if let Err(trouble) = self.ensure_token().await {
            let settle = run::without_token(trouble, state.probing);
            return self.settle(credential, Said::default(), settle).await;
        }
        if recovered {
            let now = self.sender.clock.now_ms();
            if let Some(settle) = decide::on_recovered(credential, now, &policy) {
                return self.settle(credential, Said::default(), settle).await;
            }
        }
        let body = self.body(credential);
        loop {
            if let Some(settle) = run::admission(&state, || self.sender.guard.admit(appid)) {
                return self.settle(credential, Said::default(), settle).await;
            }
            self.ensure_lease_room().await?;
            let (answer, said) = self.call(&body).await;
            let now = self.sender.clock.now_ms();
            let decision = decide::decide(answer, &state, credential, now, &policy);
            self.sender.guard.record(appid, decision.wechat_failed);
            if refuses_the_token(&decision.next) {
                // Whatever becomes of this run, no other send of this process
                // is handed the token again.
                let refused = self.token.as_deref().unwrap_or_default();
                self.sender.tokens.note_rejected(appid, refused);
            }
            let retry = match decision.next {
                Next::Retry(retry) => retry,
                Next::Settle(settle) => return self.settle(credential, said, settle).await,
                Next::TokenRefused { outcome, then } => {
                    self.record_kept(credential, said, outcome).await?;
                    return self.settle(credential, Said::default(), then).await;
                }
            };
            self.record_kept(credential, said, retry.outcome).await?;
            state = retry.spending;
            if let Err(trouble) = self.before_retry(retry.after).await {
                let settle = run::without_token(trouble, state.probing);
                return self.settle(credential, Said::default(), settle).await;
            }
        }
    }

    /// The body of every call with this credential. A grant is the ledger's
    /// account of WeChat's count, not a field of the call: only a template
    /// send names its credential.
    fn body(&self, credential: &ClaimedCredential) -> Value {
        let mut body = self.message.payload.clone();
        if self.message.channel == Channel::Template {
            body.insert("form_id".into(), credential.value.clone().into());
        }
        Value::Object(body)
    }

    /// The app's token, fetched once per run.
    async fn ensure_token(&mut self) -> Result<(), TokenTrouble> {
        if self.token.is_some() {
            return Ok(());
        }
        let appid = self.message.appid.as_str();
        match self.sender.tokens.current(appid).await {
            Ok(current) => {
                self.token = Some(current.token);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(appid, %error, "no access token for a send");
                Err(token_trouble(&error))
            }
        }
    }

    /// One call to WeChat: what came back, and what it said besides.
    async fn call(&mut self, body: &Value) -> (CallOutcome, Said) {
        let sender = self.sender;
        let token = self.token.as_deref().unwrap_or_default();
        self.called = true;
        let call = match self.message.channel {
            Channel::Template => sender.wechat.send_template(token, body).await,
            Channel::Subscribe => sender.wechat.send_subscribe(token, body).await,
        };
        match call {
            Ok(reply) => (
                CallOutcome::Answered(reply.errcode),
                Said {
                    errcode: Some(reply.errcode),
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
                let appid = self.message.appid.as_str();
                tracing::warn!(appid, %detail, "WeChat call failed");
                let said = Said {
                    detail: Some(detail),
                    ..Said::default()
                };
                (answer, said)
            }
        }
    }

    /// What comes before a retry: a backoff, or a fresh token (the trouble
    /// when none can be had).
    async fn before_retry(&mut self, after: RetryAfter) -> Result<(), TokenTrouble> {
        let sender = self.sender;
        match after {
            RetryAfter::Backoff { retry } => {
                let message_id = &self.lease.message_id;
                let backoff = backoff_with_jitter(sender.settings.busy_backoff, retry, message_id);
                tokio::time::sleep(backoff).await;
                Ok(())
            }
            RetryAfter::FreshToken => {
                let appid = self.message.appid.as_str();
                let refused = self.token.clone().unwrap_or_default();
                match sender.tokens.refresh(appid, &refused).await {
                    Ok(fresh) => {
                        self.token = Some(fresh.token);
                        Ok(())
                    }
                    Err(error) => {
                        tracing::warn!(appid, %error, "token refresh after a rejection failed");
                        Err(token_trouble(&error))
                    }
                }
            }
        }
    }

    /// Lets the credential go as `settle` says; `said` is what the call that
    /// led here said (nothing, when no call did).
    async fn settle(
        &mut self,
        credential: &ClaimedCredential,
        said: Said,
        settle: Settle,
    ) -> Result<AfterCredential, LeaseLostOr> {
        let finished = match settle {
            Settle::NextCredential {
                outcome,
                settlement,
            } => {
                let attempt = self.attempt(credential, said, outcome);
                self.persist(&attempt, Some((credential.id, settlement)), None)
                    .await?;
                self.seen.note(credential.id, settlement);
                return Ok(AfterCredential::ClaimNext);
            }
            Settle::Finish(finish) => self.finish(credential, said, finish).await?,
            Settle::LeaveForRecovery => self.pending(),
            Settle::AwaitToken { retry_at_ms } => {
                self.release(credential.id).await?;
                self.wait_for_token(retry_at_ms).await?
            }
            Settle::GiveBack(failure) => {
                self.release(credential.id).await?;
                self.fail(failure).await?
            }
        };
        Ok(AfterCredential::Finished(finished))
    }

    /// Finishes the message with the attempt that settles its credential,
    /// blocking the app's sends first when its quota is spent.
    async fn finish(
        &mut self,
        credential: &ClaimedCredential,
        said: Said,
        finish: Finish,
    ) -> Result<SendResult, LeaseLostOr> {
        let sender = self.sender;
        let appid = self.message.appid.as_str();
        if let Some(until_ms) = finish.blocks_sends_until {
            sender.quota.block(appid, until_ms).await?;
        }
        let (status, failure) = (finish.fate.status(), finish.fate.failure());
        let message = message_outcome(status, failure.as_ref(), self.recovered);
        let attempt = self.attempt(credential, said, finish.outcome);
        if finish.settlement == Settlement::Spent && status == MessageStatus::Sent {
            // The common end of a send shares a commit with others.
            self.persist_end(credential.id, &attempt, &message).await?;
        } else {
            let settlement = Some((credential.id, finish.settlement));
            self.persist(&attempt, settlement, Some(&message)).await?;
        }
        Ok(self.result(status, failure))
    }

    /// Puts the message back to wait for a token, its credential already
    /// back in the pool: due again when the token keeper may have one.
    async fn wait_for_token(&mut self, retry_at_ms: Option<i64>) -> anyhow::Result<SendResult> {
        let sender = self.sender;
        let now = sender.clock.now_ms();
        let next_attempt_at = run::token_retry_at(retry_at_ms, now, &self.policy());
        let held = sender
            .storage
            .wait_for_token(&self.lease, next_attempt_at, now)
            .await?;
        if !held {
            return Ok(self.pending());
        }
        tracing::warn!(
            appid = %self.message.appid,
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

    /// The attempt of a call with `credential` (or of the decision not to
    /// make one), labelled `outcome`.
    fn attempt(
        &self,
        credential: &ClaimedCredential,
        said: Said,
        outcome: AttemptOutcome,
    ) -> NewAttempt {
        NewAttempt {
            credential_id: Some(credential.id),
            credential_kind: Some(credential.kind),
            errcode: said.errcode,
            outcome,
            detail: said.detail,
            msgid: said.msgid,
        }
    }

    /// Records an attempt that keeps the credential leased.
    async fn record_kept(
        &mut self,
        credential: &ClaimedCredential,
        said: Said,
        outcome: AttemptOutcome,
    ) -> Result<(), LeaseLostOr> {
        let attempt = self.attempt(credential, said, outcome);
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
        crate::monitoring::send_attempt(
            &self.message.appid,
            self.message.channel,
            attempt.outcome,
            attempt.errcode,
        );
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
    async fn fail(&mut self, failure: SendFailure) -> anyhow::Result<SendResult> {
        let outcome = message_outcome(MessageStatus::Failed, Some(&failure), self.recovered);
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

/// What a call said, for its attempt: WeChat's errcode, the failure's
/// detail or WeChat's errmsg, and the msgid of a delivered subscribe message.
/// Empty when no call was made.
#[derive(Debug, Default)]
struct Said {
    errcode: Option<i64>,
    detail: Option<String>,
    msgid: Option<String>,
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

fn message_outcome(
    status: MessageStatus,
    failure: Option<&SendFailure>,
    recovered: bool,
) -> MessageOutcome {
    MessageOutcome {
        status,
        error_code: failure.map(SendFailure::code),
        wechat_errcode: failure.and_then(SendFailure::wechat_errcode),
        recovered,
    }
}

/// What the send's rules need to know of a token error.
fn token_trouble(error: &TokenError) -> TokenTrouble {
    if error.is_transient() {
        return TokenTrouble::Transient {
            retry_at_ms: error.retry_at_ms(),
        };
    }
    TokenTrouble::Refused {
        errcode: match error {
            TokenError::Refused { errcode, .. } => Some(*errcode),
            _ => None,
        },
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

/// Whether WeChat refused the call's token: the run refreshes it, or waits
/// for another.
fn refuses_the_token(next: &Next) -> bool {
    matches!(
        next,
        Next::TokenRefused { .. }
            | Next::Retry(decide::Retry {
                after: RetryAfter::FreshToken,
                ..
            })
    )
}
