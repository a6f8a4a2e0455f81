//! The send path: claim the credential that expires soonest, call WeChat, and
//! settle by its errcode.
//!
//! Each step is its own short write: the claim leases a credential to the
//! message, the call to WeChat happens with no transaction open, and the
//! settlement, the attempt row and (at the end) the message's state commit
//! together. A crash between two steps leaves a leased credential naming its
//! message, or a pending message with nothing leased; recovery
//! (`workers::recovery`) resolves both by the rules in RELIABILITY.md.
//!
//! Whether a notification reached the user is sometimes unknown: a timeout,
//! a reset connection, a 5xx, a body that is not JSON, or our own crash. A
//! credential with exactly one send left can be probed: sending with it again
//! answers 41029 if the first call delivered, or delivers now (0). A prepay_id
//! with more sends left cannot, so its unknown send counts as spent and the
//! message is marked `unknown`, never sent again (unless the caller asked for
//! at-least-once delivery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::failure::SendFailure;
use super::kinds::CredentialKind;
use super::settle::{classify, next_china_midnight_ms, Verdict};
use crate::clock::SharedClock;
use crate::storage::{
    ClaimedCredential, MessageOutcome, NewAttempt, NewMessage, Settlement, Storage, StoredMessage,
};
use crate::tokens::{TokenError, TokenKeeper};
use crate::wechat::breaker::Breakers;
use crate::wechat::{CallError, WeChatClient};

/// What a business service asks to send.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub touser: String,
    pub template_id: String,
    pub page: Option<String>,
    pub data: Option<Map<String, Value>>,
    pub emphasis_keyword: Option<String>,
    pub color: Option<String>,
    /// Seconds to wait for a credential when the user holds none.
    pub wait_seconds: Option<u64>,
    /// Whether an unknown outcome may be retried with another credential at
    /// the risk of a second notification.
    pub at_least_once: bool,
}

impl SendRequest {
    /// The body WeChat will get, without the credential.
    pub fn payload(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("touser".into(), self.touser.clone().into());
        body.insert("template_id".into(), self.template_id.clone().into());
        let optional = [
            ("page", self.page.clone().map(Value::from)),
            ("data", self.data.clone().map(Value::Object)),
            (
                "emphasis_keyword",
                self.emphasis_keyword.clone().map(Value::from),
            ),
            ("color", self.color.clone().map(Value::from)),
        ];
        for (field, value) in optional {
            if let Some(value) = value {
                body.insert(field.into(), value);
            }
        }
        body
    }
}

/// Policy of the send path.
#[derive(Debug, Clone)]
pub struct SendSettings {
    pub safety_margin_ms: i64,
    pub fresh_prepay_grace_ms: i64,
    pub lease_ms: i64,
    pub max_attempts: u32,
    pub busy_retries: u32,
    pub busy_backoff: Duration,
    /// How soon a message whose only credential is a syncing prepay_id tries again.
    pub not_ready_retry_ms: i64,
    /// Probes of one credential whose first outcome was unknown.
    pub probe_limit: u32,
    /// Calls in flight to WeChat per app, per process.
    pub max_concurrent_calls: usize,
}

/// One attempt as the caller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptSummary {
    pub credential_kind: Option<&'static str>,
    pub errcode: Option<i64>,
    pub outcome: &'static str,
}

/// Where one send ended (for now).
#[derive(Debug, Clone)]
pub struct SendResult {
    pub message_id: String,
    /// `sent`, `failed`, `unknown`, or `waiting` for a credential.
    pub status: &'static str,
    pub failure: Option<SendFailure>,
    pub attempts: Vec<AttemptSummary>,
}

/// A message the send path works on.
#[derive(Debug, Clone)]
struct Job {
    id: String,
    appid: String,
    touser: String,
    payload: Map<String, Value>,
    at_least_once: bool,
    wait_until: Option<i64>,
}

impl Job {
    fn from_stored(message: &StoredMessage) -> anyhow::Result<Self> {
        let payload = match serde_json::from_str(&message.payload)? {
            Value::Object(payload) => payload,
            _ => anyhow::bail!("message {} has a payload that is not an object", message.id),
        };
        Ok(Self {
            id: message.id.clone(),
            appid: message.appid.clone(),
            touser: message.touser.clone(),
            payload,
            at_least_once: message.delivery == AT_LEAST_ONCE,
            wait_until: message.wait_until,
        })
    }
}

const AT_LEAST_ONCE: &str = "at_least_once";
const AT_MOST_ONCE: &str = "at_most_once";

/// Applies the ledger rules to messages; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    storage: Arc<dyn Storage>,
    tokens: TokenKeeper,
    wechat: WeChatClient,
    clock: SharedClock,
    settings: SendSettings,
    breakers: Arc<Breakers>,
    call_slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// How one claimed credential ended.
enum CredentialEnd {
    /// The message is finished.
    Done(&'static str, Option<SendFailure>),
    /// Try the user's next credential.
    Next,
}

/// Where a run of the send path starts.
enum Initial {
    /// Claim the first credential (a message taken up again).
    Claim,
    /// The first claim was made with the message's creation.
    Claimed(Option<ClaimedCredential>),
    /// The app's daily quota is spent until then.
    Blocked(i64),
    /// A credential found leased to the message after a crash.
    Recovered(ClaimedCredential),
}

/// How the send path first meets a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Just claimed: nothing was sent with it for this message.
    Fresh,
    /// Found leased to this message after a crash: it may have been sent.
    Recovered,
}

impl Sender {
    pub fn new(
        storage: Arc<dyn Storage>,
        tokens: TokenKeeper,
        wechat: WeChatClient,
        clock: SharedClock,
        settings: SendSettings,
        breakers: Arc<Breakers>,
    ) -> Self {
        Self {
            storage,
            tokens,
            wechat,
            clock,
            settings,
            breakers,
            call_slots: Arc::default(),
        }
    }

    /// Records a new message with the given id and sends it.
    pub async fn send(
        &self,
        appid: &str,
        request: &SendRequest,
        message_id: &str,
    ) -> anyhow::Result<SendResult> {
        let now = self.clock.now_ms();
        let wait_until = request
            .wait_seconds
            .map(|seconds| now + (seconds as i64) * 1000);
        let payload = request.payload();
        let message = NewMessage {
            id: message_id.to_owned(),
            appid: appid.to_owned(),
            touser: request.touser.clone(),
            template_id: request.template_id.clone(),
            payload: serde_json::to_string(&payload)?,
            status: "pending",
            delivery: if request.at_least_once {
                AT_LEAST_ONCE
            } else {
                AT_MOST_ONCE
            },
            wait_until,
            lease_until: now + self.settings.lease_ms,
        };
        // 45009 earlier today: answer at once, without calling WeChat.
        let blocked_until = self.tokens.app_state(appid).await?.send_blocked_until;
        let blocked_until = blocked_until.filter(|until| *until > now);
        let claim = blocked_until
            .is_none()
            .then_some(now + self.settings.safety_margin_ms);
        let first = self.storage.create_message(&message, claim, now).await?;
        let job = Job {
            id: message.id,
            appid: appid.to_owned(),
            touser: request.touser.clone(),
            payload,
            at_least_once: request.at_least_once,
            wait_until,
        };
        match blocked_until {
            Some(until_ms) => self.process(&job, Initial::Blocked(until_ms)).await,
            None => self.process(&job, Initial::Claimed(first)).await,
        }
    }

    /// Carries on with a stored message this process has leased (a waiting
    /// message that came due, or one whose worker died).
    pub async fn resume(&self, message: &StoredMessage) -> anyhow::Result<SendResult> {
        self.process(&Job::from_stored(message)?, Initial::Claim)
            .await
    }

    /// Resolves a credential found leased after its holder died, by the rules
    /// of its message; returns `None` when it belonged to no unfinished message.
    pub async fn recover(
        &self,
        credential: ClaimedCredential,
    ) -> anyhow::Result<Option<SendResult>> {
        let now = self.clock.now_ms();
        let message = match &credential.lease_message_id {
            Some(id) => self.storage.stored_message(id).await?,
            None => None,
        };
        let Some(message) = message.filter(|message| message.status == "pending") else {
            // Parked, or its message already ended (its settlement committed
            // with the message's end): nothing of it can be in flight.
            self.storage
                .release_credentials(&[credential.id], now)
                .await?;
            return Ok(None);
        };
        self.storage
            .lease_message(&message.id, now + self.settings.lease_ms)
            .await?;
        let job = Job::from_stored(&message)?;
        self.process(&job, Initial::Recovered(credential))
            .await
            .map(Some)
    }

    async fn process(&self, job: &Job, initial: Initial) -> anyhow::Result<SendResult> {
        let mut run = Run {
            sender: self,
            job,
            attempts: Vec::new(),
            token: None,
            parked: Vec::new(),
        };
        let result = run.drive(initial).await;
        // Fresh prepay_ids parked during this run go back now; a crash leaves
        // them to recovery, which finds them owned by no message.
        let parked = std::mem::take(&mut run.parked);
        self.storage
            .release_credentials(&parked, self.clock.now_ms())
            .await?;
        result
    }

    /// A semaphore bounding this process's concurrent calls for the app.
    fn call_slot(&self, appid: &str) -> Arc<Semaphore> {
        let mut slots = self.call_slots.lock().expect("call slots lock");
        slots
            .entry(appid.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.max_concurrent_calls.max(1))))
            .clone()
    }
}

/// One message on its way through the rules.
struct Run<'a> {
    sender: &'a Sender,
    job: &'a Job,
    attempts: Vec<AttemptSummary>,
    /// Fetched after the first claim: a user without credentials gets their
    /// 409 even while WeChat's token endpoint is down.
    token: Option<String>,
    parked: Vec<i64>,
}

impl Run<'_> {
    async fn drive(&mut self, initial: Initial) -> anyhow::Result<SendResult> {
        let sender = self.sender;
        let appid = self.job.appid.as_str();
        let mut next = match initial {
            Initial::Blocked(until_ms) => {
                return self.finish(SendFailure::QuotaExhausted { until_ms }).await
            }
            Initial::Claimed(None) => return self.no_credential().await,
            Initial::Claimed(Some(credential)) => Some((credential, Start::Fresh)),
            // A recovered credential is resolved whatever the quota says: it
            // may already be in WeChat's hands.
            Initial::Recovered(credential) => Some((credential, Start::Recovered)),
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
            let (credential, start) = match next.take() {
                Some(recovered) => recovered,
                None => {
                    let now = sender.clock.now_ms();
                    let claimed = sender
                        .storage
                        .claim_credential(
                            appid,
                            &self.job.touser,
                            &self.job.id,
                            now + sender.settings.safety_margin_ms,
                            now + sender.settings.lease_ms,
                            now,
                        )
                        .await?;
                    match claimed {
                        Some(credential) => (credential, Start::Fresh),
                        None => return self.no_credential().await,
                    }
                }
            };
            if self.token.is_none() {
                match sender.tokens.current(appid).await {
                    Ok(current) => self.token = Some(current.token),
                    Err(error) => {
                        tracing::warn!(appid, %error, "no access token for a send");
                        if start == Start::Fresh {
                            self.release(credential.id).await?;
                        }
                        // A recovered credential stays leased: recovery
                        // tries again when its lease runs out.
                        return self.finish(token_failure(&error)).await;
                    }
                }
            }
            match self.spend(&credential, start).await? {
                CredentialEnd::Done(status, failure) => return Ok(self.result(status, failure)),
                CredentialEnd::Next => continue,
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
            sender
                .storage
                .wait_message(&self.job.id, next_attempt_at, now)
                .await?;
            return Ok(self.result("waiting", None));
        }
        let failure = if self.parked.is_empty() {
            SendFailure::NoCredential
        } else {
            SendFailure::CredentialNotReady
        };
        self.finish(failure).await
    }

    /// Calls WeChat with one leased credential until it is settled.
    async fn spend(
        &mut self,
        credential: &ClaimedCredential,
        start: Start,
    ) -> anyhow::Result<CredentialEnd> {
        let sender = self.sender;
        let settings = &sender.settings;
        let appid = self.job.appid.as_str();
        let kind = CredentialKind::parse(&credential.kind);
        let mut body = self.job.payload.clone();
        body.insert("form_id".into(), credential.value.clone().into());
        let body = Value::Object(body);
        let reference = (credential.id, kind);
        // Probing: the credential may already have delivered this message.
        let mut probing = start == Start::Recovered;
        if probing && !self.can_probe(credential) {
            return self.unresolved(reference, "recovered").await;
        }
        let mut probes = 0;
        let mut token_retried = false;
        let mut busy_retries = 0;
        loop {
            // Probes bypass the breaker: they are how an unknown outcome ends.
            if !probing {
                if let Err(retry_after_ms) = sender.breakers.admit(appid) {
                    self.release(credential.id).await?;
                    return self
                        .done("failed", SendFailure::CircuitOpen { retry_after_ms })
                        .await;
                }
            }
            let token = self.token.clone().unwrap_or_default();
            let reply = {
                let slot = sender.call_slot(appid);
                let _permit = slot.acquire().await.expect("call slots are never closed");
                sender.wechat.send_template(&token, &body).await
            };
            let errcode = match reply {
                Ok(reply) => reply.errcode,
                Err(error) => {
                    sender.breakers.failure(appid);
                    let (outcome, detail) = match &error {
                        CallError::NotSent(detail) => ("not_sent", detail.clone()),
                        CallError::Ambiguous(detail) => ("ambiguous", detail.clone()),
                    };
                    tracing::warn!(appid, message = %self.job.id, %detail, "WeChat call failed");
                    match (error, probing) {
                        // Nothing left: if this was the first call, nothing was sent.
                        (CallError::NotSent(_), false) => {
                            self.record(
                                reference,
                                None,
                                outcome,
                                Some(detail),
                                Settlement::Released,
                                None,
                            )
                            .await?;
                            return self.done("failed", SendFailure::UpstreamUnreachable).await;
                        }
                        _ if probes < settings.probe_limit && self.can_probe(credential) => {
                            probes += 1;
                            probing = true;
                            self.record(
                                reference,
                                None,
                                outcome,
                                Some(detail),
                                Settlement::Kept,
                                None,
                            )
                            .await?;
                            tokio::time::sleep(backoff_with_jitter(settings.busy_backoff, probes))
                                .await;
                            continue;
                        }
                        _ => return self.unresolved(reference, outcome).await,
                    }
                }
            };
            let code = Some(errcode);
            let verdict = classify(errcode);
            if verdict == Verdict::SystemBusy {
                sender.breakers.failure(appid);
            } else {
                sender.breakers.success(appid);
            }
            match verdict {
                Verdict::Sent => {
                    let outcome = if probing { "sent_on_probe" } else { "sent" };
                    return self
                        .record_final(reference, code, outcome, Settlement::Spent, "sent", None)
                        .await;
                }
                // The probe's answer: the first call had delivered.
                Verdict::CredentialDead if probing && errcode == 41029 => {
                    return self
                        .record_final(
                            reference,
                            code,
                            "confirmed_sent",
                            Settlement::Spent,
                            "sent",
                            None,
                        )
                        .await;
                }
                Verdict::CredentialDead => {
                    let now = sender.clock.now_ms();
                    let syncing = errcode == 41028
                        && kind.is_some_and(|kind| kind.rules().syncs_late)
                        && now - credential.collected_at < settings.fresh_prepay_grace_ms;
                    if syncing {
                        let until = now + settings.lease_ms;
                        self.record(
                            reference,
                            code,
                            "not_ready",
                            None,
                            Settlement::Parked { until },
                            None,
                        )
                        .await?;
                        self.parked.push(credential.id);
                    } else {
                        let settlement = Settlement::Retired { errcode };
                        self.record(reference, code, "retired", None, settlement, None)
                            .await?;
                    }
                    return Ok(CredentialEnd::Next);
                }
                Verdict::TokenRejected if !token_retried => {
                    token_retried = true;
                    self.record(
                        reference,
                        code,
                        "token_rejected",
                        None,
                        Settlement::Kept,
                        None,
                    )
                    .await?;
                    match sender.tokens.refresh(appid, &token).await {
                        Ok(fresh) => self.token = Some(fresh.token),
                        Err(error) => {
                            tracing::warn!(appid, %error, "token refresh after a rejection failed");
                            if probing {
                                return self.unresolved(reference, "token_unavailable").await;
                            }
                            self.release(credential.id).await?;
                            return self.done("failed", token_failure(&error)).await;
                        }
                    }
                }
                Verdict::SystemBusy if busy_retries < settings.busy_retries => {
                    busy_retries += 1;
                    self.record(reference, code, "busy", None, Settlement::Kept, None)
                        .await?;
                    tokio::time::sleep(backoff_with_jitter(settings.busy_backoff, busy_retries))
                        .await;
                }
                // A probe refused for its token, quota or the like proves
                // nothing about the first call.
                Verdict::TokenRejected
                | Verdict::SystemBusy
                | Verdict::DailyQuotaExhausted
                | Verdict::RateLimited
                | Verdict::ApiRetired
                | Verdict::Unexpected
                    if probing =>
                {
                    return self.unresolved(reference, "probe_inconclusive").await;
                }
                verdict => {
                    let failure = match verdict {
                        Verdict::RequestInvalid => SendFailure::RequestInvalid { errcode },
                        Verdict::TokenRejected => SendFailure::TokenRejected { errcode },
                        Verdict::SystemBusy => SendFailure::UpstreamBusy,
                        Verdict::RateLimited => SendFailure::RateLimited,
                        Verdict::ApiRetired => SendFailure::ApiRetired { errcode },
                        Verdict::DailyQuotaExhausted => {
                            let until_ms = next_china_midnight_ms(sender.clock.now_ms());
                            sender.storage.block_sends(appid, until_ms).await?;
                            sender.tokens.note_blocked(appid, until_ms);
                            SendFailure::QuotaExhausted { until_ms }
                        }
                        _ => SendFailure::Unexpected { errcode },
                    };
                    let message = failed_outcome("failed", &failure);
                    self.record(
                        reference,
                        code,
                        "kept",
                        None,
                        Settlement::Released,
                        Some(&message),
                    )
                    .await?;
                    return Ok(CredentialEnd::Done("failed", Some(failure)));
                }
            }
        }
    }

    /// A probe is conclusive only for the last send of a credential that is
    /// not about to expire (an expired one answers 41028 either way).
    fn can_probe(&self, credential: &ClaimedCredential) -> bool {
        let now = self.sender.clock.now_ms();
        credential.uses_left == 1
            && credential.expires_at > now + self.sender.settings.safety_margin_ms
    }

    /// The outcome stays unknown: the credential counts as spent, and the
    /// message is `unknown`, or tries its next credential when the caller
    /// accepted at-least-once delivery.
    async fn unresolved(
        &mut self,
        reference: (i64, Option<CredentialKind>),
        outcome: &'static str,
    ) -> anyhow::Result<CredentialEnd> {
        if self.job.at_least_once {
            self.record(reference, None, outcome, None, Settlement::Spent, None)
                .await?;
            return Ok(CredentialEnd::Next);
        }
        self.record_final(
            reference,
            None,
            outcome,
            Settlement::Spent,
            "unknown",
            Some(SendFailure::OutcomeUnknown),
        )
        .await
    }

    async fn release(&self, credential_id: i64) -> anyhow::Result<()> {
        self.sender
            .storage
            .release_credentials(&[credential_id], self.sender.clock.now_ms())
            .await
    }

    /// Ends the message after its last attempt was recorded.
    async fn done(
        &mut self,
        status: &'static str,
        failure: SendFailure,
    ) -> anyhow::Result<CredentialEnd> {
        self.mark(status, &failure).await?;
        Ok(CredentialEnd::Done(status, Some(failure)))
    }

    /// Fails the message without a further call to WeChat.
    async fn finish(&mut self, failure: SendFailure) -> anyhow::Result<SendResult> {
        self.mark("failed", &failure).await?;
        Ok(self.result("failed", Some(failure)))
    }

    async fn mark(&self, status: &'static str, failure: &SendFailure) -> anyhow::Result<()> {
        self.sender
            .storage
            .finish_message(
                &self.job.id,
                &failed_outcome(status, failure),
                self.sender.clock.now_ms(),
            )
            .await
    }

    /// Records the attempt that ends the message, in the same transaction as
    /// its settlement: a crash can never leave a delivered message pending
    /// with its credential already settled.
    async fn record_final(
        &mut self,
        reference: (i64, Option<CredentialKind>),
        errcode: Option<i64>,
        outcome: &'static str,
        settlement: Settlement,
        status: &'static str,
        failure: Option<SendFailure>,
    ) -> anyhow::Result<CredentialEnd> {
        let message = match &failure {
            Some(failure) => failed_outcome(status, failure),
            None => MessageOutcome {
                status,
                error_code: None,
                wechat_errcode: None,
            },
        };
        self.record(
            reference,
            errcode,
            outcome,
            None,
            settlement,
            Some(&message),
        )
        .await?;
        Ok(CredentialEnd::Done(status, failure))
    }

    /// Records an attempt, settling its credential in the same transaction.
    async fn record(
        &mut self,
        (credential_id, kind): (i64, Option<CredentialKind>),
        errcode: Option<i64>,
        outcome: &'static str,
        detail: Option<String>,
        settlement: Settlement,
        message: Option<&MessageOutcome>,
    ) -> anyhow::Result<()> {
        let attempt = NewAttempt {
            credential_id: Some(credential_id),
            credential_kind: kind,
            errcode,
            outcome,
            detail,
        };
        self.sender
            .storage
            .record_attempt(
                &self.job.id,
                &attempt,
                Some((credential_id, settlement)),
                message,
                self.sender.clock.now_ms(),
            )
            .await?;
        self.attempts.push(AttemptSummary {
            credential_kind: kind.map(CredentialKind::as_str),
            errcode,
            outcome,
        });
        Ok(())
    }

    fn result(&self, status: &'static str, failure: Option<SendFailure>) -> SendResult {
        SendResult {
            message_id: self.job.id.clone(),
            status,
            failure,
            attempts: self.attempts.clone(),
        }
    }
}

fn failed_outcome(status: &'static str, failure: &SendFailure) -> MessageOutcome {
    MessageOutcome {
        status,
        error_code: Some(failure.code()),
        wechat_errcode: failure.wechat_errcode(),
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

/// Exponential backoff with full jitter, so that instances retrying the same
/// busy WeChat do not retry in step.
fn backoff_with_jitter(base: Duration, retry: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << retry.min(6));
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
}
