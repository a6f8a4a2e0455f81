//! The send path: claim the credential that expires soonest, call WeChat, and
//! settle by its errcode.
//!
//! Each step is its own short write: the claim leases a row, the call to
//! WeChat happens with no transaction open, and the settlement, the attempt
//! row and (at the end) the message's state commit together. A crash between
//! two steps leaves a leased credential and a pending message, never a
//! half-counted one; lease recovery picks those up.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};

use super::kinds::CredentialKind;
use super::settle::{classify, next_china_midnight_ms, request_error_code, Verdict};
use crate::clock::SharedClock;
use crate::storage::{
    ClaimedCredential, MessageOutcome, NewAttempt, NewMessage, Settlement, Storage,
};
use crate::tokens::{TokenError, TokenKeeper};
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
}

impl SendRequest {
    /// The body WeChat will get, without the credential.
    fn payload(&self) -> Map<String, Value> {
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
}

/// One attempt as the caller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptSummary {
    pub credential_kind: Option<&'static str>,
    pub errcode: Option<i64>,
    pub outcome: &'static str,
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The user holds no valid credential.
    NoCredential,
    /// The only credentials left are prepay_ids whose payment data has not reached WeChat's template backend yet.
    CredentialNotReady,
    /// 45009, now or earlier today: sends resume at `until_ms`.
    QuotaExhausted { until_ms: i64 },
    /// 45011: the per-minute limit.
    RateLimited,
    /// WeChat refused the request itself.
    RequestInvalid { errcode: i64 },
    /// 45103 / 45109.
    ApiRetired { errcode: i64 },
    /// No token could be had.
    TokenUnavailable { errcode: Option<i64> },
    /// A fresh token was refused too.
    TokenRejected { errcode: i64 },
    /// errcode -1 after every retry.
    UpstreamBusy,
    /// WeChat could not be reached; nothing was sent.
    UpstreamUnreachable,
    /// The call may or may not have delivered: the credential counts as spent.
    OutcomeUnknown,
    /// An errcode without a rule.
    Unexpected { errcode: i64 },
    /// Too many dead credentials in a row.
    AttemptLimit,
}

impl SendFailure {
    /// The machine-readable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            SendFailure::NoCredential => "no_credential",
            SendFailure::CredentialNotReady => "credential_not_ready",
            SendFailure::QuotaExhausted { .. } => "daily_quota_exhausted",
            SendFailure::RateLimited => "rate_limited",
            SendFailure::RequestInvalid { errcode } => request_error_code(*errcode),
            SendFailure::ApiRetired { .. } => "api_retired",
            SendFailure::TokenUnavailable { .. } => "token_unavailable",
            SendFailure::TokenRejected { .. } => "token_rejected",
            SendFailure::UpstreamBusy => "upstream_busy",
            SendFailure::UpstreamUnreachable => "upstream_unreachable",
            SendFailure::OutcomeUnknown => "outcome_unknown",
            SendFailure::Unexpected { .. } => "upstream_error",
            SendFailure::AttemptLimit => "attempt_limit_reached",
        }
    }

    /// WeChat's errcode behind the failure, when there is one.
    pub fn wechat_errcode(&self) -> Option<i64> {
        match self {
            SendFailure::QuotaExhausted { .. } => Some(45009),
            SendFailure::RateLimited => Some(45011),
            SendFailure::UpstreamBusy => Some(-1),
            SendFailure::RequestInvalid { errcode }
            | SendFailure::ApiRetired { errcode }
            | SendFailure::TokenRejected { errcode }
            | SendFailure::Unexpected { errcode } => Some(*errcode),
            SendFailure::TokenUnavailable { errcode } => *errcode,
            _ => None,
        }
    }

    /// For people.
    pub fn message(&self) -> String {
        match self {
            SendFailure::NoCredential => "the user holds no valid credential; nothing was sent".into(),
            SendFailure::CredentialNotReady => {
                "the user's only credentials are prepay_ids WeChat has not synced yet; retry in a few seconds".into()
            }
            SendFailure::QuotaExhausted { .. } => {
                "the app's daily template-message quota is spent until midnight China time".into()
            }
            SendFailure::RateLimited => "WeChat's per-minute limit was reached; retry next minute".into(),
            SendFailure::RequestInvalid { errcode } => {
                format!("WeChat rejected the request (errcode {errcode}); the credential was kept")
            }
            SendFailure::ApiRetired { .. } => {
                "WeChat has retired the template-message API (shut down 2020-01-10; use subscribe messages)".into()
            }
            SendFailure::TokenUnavailable { .. } => "no access_token could be obtained from WeChat".into(),
            SendFailure::TokenRejected { .. } => "WeChat rejected a freshly refreshed access_token".into(),
            SendFailure::UpstreamBusy => "WeChat stayed busy (errcode -1); nothing was sent".into(),
            SendFailure::UpstreamUnreachable => "WeChat could not be reached; nothing was sent".into(),
            SendFailure::OutcomeUnknown => {
                "WeChat's answer was lost; the message may have been delivered and the credential counts as spent".into()
            }
            SendFailure::Unexpected { errcode } => format!("WeChat answered errcode {errcode}"),
            SendFailure::AttemptLimit => {
                "too many of the user's credentials were dead; the rest are kept for a later send".into()
            }
        }
    }
}

/// The end of one send.
#[derive(Debug, Clone)]
pub struct SendResult {
    pub message_id: String,
    pub status: &'static str,
    pub failure: Option<SendFailure>,
    pub attempts: Vec<AttemptSummary>,
}

/// Applies the ledger rules to one message at a time; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    storage: Arc<dyn Storage>,
    tokens: TokenKeeper,
    wechat: WeChatClient,
    clock: SharedClock,
    settings: SendSettings,
}

/// How one claimed credential ended.
enum CredentialEnd {
    /// The message is finished.
    Done(&'static str, Option<SendFailure>),
    /// Try the user's next credential.
    Next,
}

impl Sender {
    pub fn new(
        storage: Arc<dyn Storage>,
        tokens: TokenKeeper,
        wechat: WeChatClient,
        clock: SharedClock,
        settings: SendSettings,
    ) -> Self {
        Self {
            storage,
            tokens,
            wechat,
            clock,
            settings,
        }
    }

    /// Sends one message to `appid`'s user, recording it and every attempt.
    pub async fn send(&self, appid: &str, request: &SendRequest) -> anyhow::Result<SendResult> {
        let message = NewMessage {
            id: uuid::Uuid::new_v4().to_string(),
            appid: appid.to_owned(),
            touser: request.touser.clone(),
            template_id: request.template_id.clone(),
            payload: Value::Object(request.payload()).to_string(),
            status: "pending",
        };
        let mut run = Run {
            sender: self,
            appid,
            message_id: message.id.clone(),
            attempts: Vec::new(),
        };
        self.storage
            .create_message(&message, self.clock.now_ms())
            .await?;

        // 45009 earlier today: answer at once, without calling WeChat.
        let blocked_until = self.storage.app_state(appid).await?.send_blocked_until;
        if let Some(until_ms) = blocked_until.filter(|until| *until > self.clock.now_ms()) {
            return run.finish(SendFailure::QuotaExhausted { until_ms }).await;
        }
        // Fetched after the first claim: a user without credentials gets
        // their 409 even while WeChat's token endpoint is down.
        let mut token: Option<String> = None;
        let payload = request.payload();
        // Fresh prepay_ids answered 41028 stay leased until the message ends so
        // that this send does not pick them again, then go back untouched.
        let mut not_ready = Vec::new();
        let result = async {
            for _ in 0..self.settings.max_attempts {
                let now = self.clock.now_ms();
                let claimed = self
                    .storage
                    .claim_credential(
                        appid,
                        &request.touser,
                        now + self.settings.safety_margin_ms,
                        now + self.settings.lease_ms,
                        now,
                    )
                    .await?;
                let Some(credential) = claimed else {
                    let failure = if not_ready.is_empty() {
                        SendFailure::NoCredential
                    } else {
                        SendFailure::CredentialNotReady
                    };
                    return run.finish(failure).await;
                };
                let token = match &mut token {
                    Some(token) => token,
                    None => match self.tokens.current(appid).await {
                        Ok(current) => token.insert(current.token),
                        Err(error) => {
                            tracing::warn!(appid, %error, "no access token for a send");
                            self.storage
                                .release_credentials(&[credential.id], self.clock.now_ms())
                                .await?;
                            return run.finish(token_failure(&error)).await;
                        }
                    },
                };
                match run
                    .spend(&credential, &payload, token, &mut not_ready)
                    .await?
                {
                    CredentialEnd::Done(status, failure) => {
                        return Ok(run.result(status, failure));
                    }
                    CredentialEnd::Next => continue,
                }
            }
            run.finish(SendFailure::AttemptLimit).await
        }
        .await;
        self.storage
            .release_credentials(&not_ready, self.clock.now_ms())
            .await?;
        result
    }
}

/// One message on its way: collects the attempts for the answer.
struct Run<'a> {
    sender: &'a Sender,
    appid: &'a str,
    message_id: String,
    attempts: Vec<AttemptSummary>,
}

impl Run<'_> {
    /// Calls WeChat with one claimed credential until it is settled.
    async fn spend(
        &mut self,
        credential: &ClaimedCredential,
        payload: &Map<String, Value>,
        token: &mut String,
        not_ready: &mut Vec<i64>,
    ) -> anyhow::Result<CredentialEnd> {
        let settings = &self.sender.settings;
        let kind = CredentialKind::parse(&credential.kind);
        let mut body = payload.clone();
        body.insert("form_id".into(), credential.value.clone().into());
        let body = Value::Object(body);
        let mut token_retried = false;
        let mut busy_retries = 0;
        loop {
            let reply = self.sender.wechat.send_template(token, &body).await;
            let credential_ref = (credential.id, kind);
            let errcode = match reply {
                Ok(reply) => reply.errcode,
                Err(CallError::NotSent(detail)) => {
                    tracing::warn!(appid = self.appid, %detail, "WeChat unreachable");
                    self.record(
                        credential_ref,
                        None,
                        "not_sent",
                        Some(detail),
                        Settlement::Released,
                        None,
                    )
                    .await?;
                    return self.done("failed", SendFailure::UpstreamUnreachable).await;
                }
                Err(CallError::Ambiguous(detail)) => {
                    // Whether WeChat delivered is unknown. Counting the
                    // credential as spent can waste one send but never sends
                    // a notification twice.
                    tracing::warn!(appid = self.appid, %detail, "WeChat's answer was lost");
                    self.record(
                        credential_ref,
                        None,
                        "ambiguous",
                        Some(detail),
                        Settlement::Spent,
                        None,
                    )
                    .await?;
                    return self.done("unknown", SendFailure::OutcomeUnknown).await;
                }
            };
            let code = Some(errcode);
            match classify(errcode) {
                Verdict::Sent => {
                    let outcome = MessageOutcome {
                        status: "sent",
                        error_code: None,
                        wechat_errcode: None,
                    };
                    self.record(
                        credential_ref,
                        code,
                        "sent",
                        None,
                        Settlement::Spent,
                        Some(&outcome),
                    )
                    .await?;
                    return Ok(CredentialEnd::Done("sent", None));
                }
                Verdict::CredentialDead => {
                    let now = self.sender.clock.now_ms();
                    let syncing = errcode == 41028
                        && kind.is_some_and(|kind| kind.rules().syncs_late)
                        && now - credential.collected_at < settings.fresh_prepay_grace_ms;
                    if syncing {
                        self.record(
                            credential_ref,
                            code,
                            "not_ready",
                            None,
                            Settlement::Kept,
                            None,
                        )
                        .await?;
                        not_ready.push(credential.id);
                    } else {
                        let settlement = Settlement::Retired { errcode };
                        self.record(credential_ref, code, "retired", None, settlement, None)
                            .await?;
                    }
                    return Ok(CredentialEnd::Next);
                }
                Verdict::TokenRejected if !token_retried => {
                    token_retried = true;
                    self.record(
                        credential_ref,
                        code,
                        "token_rejected",
                        None,
                        Settlement::Kept,
                        None,
                    )
                    .await?;
                    match self.sender.tokens.refresh(self.appid, token).await {
                        Ok(fresh) => *token = fresh.token,
                        Err(error) => {
                            tracing::warn!(appid = self.appid, %error, "token refresh after a rejection failed");
                            self.release(credential.id).await?;
                            return self.done("failed", token_failure(&error)).await;
                        }
                    }
                }
                Verdict::SystemBusy if busy_retries < settings.busy_retries => {
                    busy_retries += 1;
                    self.record(credential_ref, code, "busy", None, Settlement::Kept, None)
                        .await?;
                    tokio::time::sleep(backoff_with_jitter(settings.busy_backoff, busy_retries))
                        .await;
                }
                verdict => {
                    let failure = match verdict {
                        Verdict::RequestInvalid => SendFailure::RequestInvalid { errcode },
                        Verdict::TokenRejected => SendFailure::TokenRejected { errcode },
                        Verdict::SystemBusy => SendFailure::UpstreamBusy,
                        Verdict::RateLimited => SendFailure::RateLimited,
                        Verdict::ApiRetired => SendFailure::ApiRetired { errcode },
                        Verdict::DailyQuotaExhausted => {
                            let until_ms = next_china_midnight_ms(self.sender.clock.now_ms());
                            self.sender
                                .storage
                                .block_sends(self.appid, until_ms)
                                .await?;
                            SendFailure::QuotaExhausted { until_ms }
                        }
                        _ => SendFailure::Unexpected { errcode },
                    };
                    self.record(
                        credential_ref,
                        code,
                        "kept",
                        None,
                        Settlement::Released,
                        None,
                    )
                    .await?;
                    return self.done("failed", failure).await;
                }
            }
        }
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
        let outcome = MessageOutcome {
            status,
            error_code: Some(failure.code()),
            wechat_errcode: failure.wechat_errcode(),
        };
        self.sender
            .storage
            .finish_message(&self.message_id, &outcome, self.sender.clock.now_ms())
            .await
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
                &self.message_id,
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
            message_id: self.message_id.clone(),
            status,
            failure,
            attempts: self.attempts.clone(),
        }
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
