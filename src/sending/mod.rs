//! The send path: check a request against what the app knows of its
//! template, claim the credential that expires soonest, call WeChat, and
//! settle by its errcode.
//!
//! Split along its concerns:
//! - [`request`]: what a business service asks to send;
//! - [`decide`]: the errcode rules as one pure function (no database, no HTTP);
//! - [`run`]: the rules around the calls, as pure functions: where a run
//!   starts, whether a call passes the breaker, what a message with no
//!   credential left does, what becomes of a credential without a token;
//! - `execute`: the short executor that claims, calls, and applies what
//!   `decide` and `run` say;
//! - `guard`: what stands before every call: the per-app call bound and the
//!   circuit breaker (a lease with room for the whole call is the
//!   executor's `ensure_lease_room`);
//! - [`quota`]: the app's quota block after a 45009, its only reader and
//!   writer.
//!
//! Each step is its own short write: the claim leases a credential to the
//! message under the run's fencing token, the call to WeChat happens with no
//! transaction open, and the settlement, the attempt row and (at the end) the
//! message's state commit together — only while the run still holds the
//! message. A crash between two steps leaves a leased credential naming its
//! message, or a pending message with nothing leased; recovery
//! (`workers::recovery`) takes them over under a new token and resolves them
//! by the rules in RELIABILITY.md.

mod execute;
pub mod guard;
pub mod quota;
mod rules;

pub use formid_core::send::{decide, request, run};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use request::{InvalidTemplateData, PreparedSend, SendRequest, SubscribeDefaults};

use crate::clock::SharedClock;
use crate::config::{AppSettings, UserLimits};
use crate::ledger::failure::SendFailure;
use crate::ledger::states::{AttemptOutcome, Channel, MessageStatus};
use crate::ledger::templates::{check_send, SendParts};
use crate::monitoring::ClaimResult;
use crate::storage::{ClaimedCredential, Lease, NewMessage, StartSend, Storage, StoredMessage};
use crate::templates::Catalogue;
use crate::tokens::TokenKeeper;
use crate::wechat::breaker::Breakers;
use crate::wechat::SharedWeChat;
use execute::{OutgoingMessage, Run};
use guard::CallGuard;
pub use quota::QuotaBlock;
use run::Start;

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
    /// The longest one call to WeChat can take: a call starts only on a lease
    /// with at least this much (and a margin) left.
    pub call_budget_ms: i64,
    /// Token refreshes while spending one credential, before the message
    /// waits for a token instead.
    pub token_refreshes: u32,
    /// How soon a message that found no usable token tries again.
    pub token_retry_ms: i64,
    /// How long this process uses its copy of an app's quota block before
    /// reading it again.
    pub quota_cache_ms: i64,
}

/// One attempt as the caller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptSummary {
    pub credential_kind: Option<&'static str>,
    pub errcode: Option<i64>,
    pub outcome: AttemptOutcome,
    /// WeChat's errmsg of a refused call (a 47003's names the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errmsg: Option<String>,
    /// WeChat's id of a delivered subscribe message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
}

/// Where one send ended (for now).
#[derive(Debug, Clone)]
pub struct SendResult {
    pub message_id: String,
    /// `sent`, `failed`, `unknown`, `waiting` for a credential, or `pending`
    /// when the outcome is still being settled (poll the message).
    pub status: MessageStatus,
    pub failure: Option<SendFailure>,
    pub attempts: Vec<AttemptSummary>,
}

impl SendResult {
    /// A message that ran no call: its state, and why when it failed.
    pub fn without_attempts(
        message_id: &str,
        status: MessageStatus,
        failure: Option<SendFailure>,
    ) -> Self {
        Self {
            message_id: message_id.to_owned(),
            status,
            failure,
            attempts: Vec::new(),
        }
    }
}

/// A send request checked against what the app knows of its template,
/// shaped for its channel: ready to be sent.
#[derive(Debug, Clone)]
pub struct CheckedSend {
    prepared: PreparedSend,
    checked: bool,
}

impl CheckedSend {
    /// The channel the message goes out on.
    pub fn channel(&self) -> Channel {
        self.prepared.channel
    }

    /// Whether the data was checked against a catalogued template (else
    /// only by the rules of the channel, and WeChat judges the data).
    pub fn checked(&self) -> bool {
        self.checked
    }
}

/// Why a send request was refused before anything was claimed.
#[derive(Debug, thiserror::Error)]
pub enum SendRefusal {
    /// The request does not fit its channel or its catalogued template.
    #[error(transparent)]
    Invalid(#[from] InvalidTemplateData),
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] anyhow::Error),
}

/// Where a send ended (for now), and how it went out. A send the user's
/// send rules refused (a full cap, quiet hours that refuse) stored nothing:
/// its `result` is `failed` with that failure and no attempts, and
/// `refused` says so.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// Whether the send rules refused it before anything was stored.
    pub refused: bool,
    /// The message's state and attempts.
    pub result: SendResult,
    /// The channel it went by.
    pub channel: Channel,
    /// Whether its data was checked against a catalogued template.
    pub checked: bool,
}

/// What a [`Sender`] works with.
#[derive(Debug, Clone)]
pub struct SenderParts {
    /// The ledger.
    pub storage: Arc<dyn Storage>,
    /// The apps' access tokens.
    pub tokens: TokenKeeper,
    /// WeChat.
    pub wechat: SharedWeChat,
    /// The service's clock.
    pub clock: SharedClock,
    /// The apps' templates: what a request is checked against, refreshed
    /// after a 40037.
    pub catalogue: Catalogue,
    /// The apps' settings: the defaults of their subscribe sends.
    pub apps: Arc<BTreeMap<String, AppSettings>>,
    /// The circuit breakers of the calls to WeChat.
    pub breakers: Arc<Breakers>,
}

/// Applies the ledger rules to messages; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    storage: Arc<dyn Storage>,
    tokens: TokenKeeper,
    wechat: SharedWeChat,
    clock: SharedClock,
    catalogue: Catalogue,
    apps: Arc<BTreeMap<String, AppSettings>>,
    quota: QuotaBlock,
    settings: SendSettings,
    guard: CallGuard,
    /// Each app's send caps and quiet hours.
    limits: Arc<BTreeMap<String, UserLimits>>,
}

impl Sender {
    /// A send path over `parts`, by `settings`.
    pub fn new(parts: SenderParts, settings: SendSettings) -> Self {
        let guard = CallGuard::new(parts.breakers, settings.max_concurrent_calls);
        let quota = QuotaBlock::new(
            parts.storage.clone(),
            parts.clock.clone(),
            settings.quota_cache_ms,
        );
        let limits = Arc::new(rules::limits_of(&parts.apps));
        Self {
            limits,
            storage: parts.storage,
            tokens: parts.tokens,
            wechat: parts.wechat,
            clock: parts.clock,
            catalogue: parts.catalogue,
            apps: parts.apps,
            quota,
            settings,
            guard,
        }
    }

    /// The per-app call bound and breaker every call of this process to
    /// WeChat on an app's behalf stands behind (the WeChat-compatible
    /// endpoint's forwards share them with the sends).
    pub fn call_guard(&self) -> &CallGuard {
        &self.guard
    }

    /// Calls in flight to WeChat per app that this process allows (what a
    /// caller sending many messages at once runs side by side).
    pub fn max_concurrent_calls(&self) -> usize {
        self.settings.max_concurrent_calls
    }

    /// Checks a request before anything is claimed: against its template
    /// when the app's catalogue knows it (the catalogue's copy, see
    /// [`Catalogue::for_send`]), else by the rules of the channel alone. The
    /// channel is the one the request names, else the one the catalogue or
    /// the users' decisions give the template, else the template channel; a
    /// subscribe send takes the app's defaults for what it does not name.
    pub async fn check(
        &self,
        appid: &str,
        request: SendRequest,
    ) -> Result<CheckedSend, SendRefusal> {
        let known = self.catalogue.for_send(appid, &request.template_id).await?;
        let channel = request.channel(known.channel);
        if let Some(template) = &known.template {
            check_send(
                template,
                &SendParts {
                    channel,
                    data: request.data.as_ref(),
                    page: request.page.as_deref(),
                    emphasis_keyword: request.emphasis_keyword.as_deref(),
                    color: request.color.as_deref(),
                },
            )?;
        }
        let defaults = self
            .apps
            .get(appid)
            .map(|app| SubscribeDefaults {
                miniprogram_state: app.miniprogram_state,
                lang: app.lang,
            })
            .unwrap_or_default();
        Ok(CheckedSend {
            prepared: request.prepare(channel, defaults)?,
            checked: known.template.is_some(),
        })
    }

    /// Records a new message with the given id and sends it. An answer of
    /// 40037 (WeChat does not know the template) means the app's catalogue
    /// is stale: it is read again in the background.
    pub async fn send(
        &self,
        appid: &str,
        send: CheckedSend,
        message_id: &str,
    ) -> anyhow::Result<SendOutcome> {
        let (channel, checked) = (send.channel(), send.checked);
        let (result, refused) = match self.admit(appid, &send.prepared, message_id).await? {
            rules::Admission::Decided { result, refused } => (result, refused),
            rules::Admission::Now => self.start(appid, send.prepared, message_id).await?,
        };
        if result
            .attempts
            .iter()
            .any(|attempt| attempt.errcode == Some(40037))
        {
            self.catalogue.refresh_in_background(appid);
        }
        counted(appid, channel, &result);
        Ok(SendOutcome {
            refused,
            result,
            channel,
            checked,
        })
    }

    /// Records a new message with the given id and runs it; or, when a
    /// send cap of the app is full, records nothing and answers
    /// `user_send_limit` (`true`: refused).
    #[tracing::instrument(name = "send", skip_all, fields(appid = %appid, message_id = %message_id))]
    async fn start(
        &self,
        appid: &str,
        request: PreparedSend,
        message_id: &str,
    ) -> anyhow::Result<(SendResult, bool)> {
        // Why the slot comes first: a wait for a call slot must not eat into
        // a lease, so nothing is claimed until this send may call.
        let permit = self.guard.slot(appid).await;
        let now = self.clock.now_ms();
        let wait_until = request
            .wait_seconds
            .map(|seconds| now + (seconds as i64) * 1000);
        let lease = crate::storage::new_lease(message_id);
        let message = NewMessage {
            id: message_id.to_owned(),
            appid: appid.to_owned(),
            touser: request.touser.clone(),
            template_id: request.template_id.clone(),
            payload: serde_json::to_string(&request.payload)?,
            status: MessageStatus::Pending,
            delivery: request.delivery,
            wait_until,
            lease_until: now + self.settings.lease_ms,
            lease_token: lease.token,
            channel: request.channel,
            reference: request.reference.clone(),
            idempotency_key: request.idempotency_key.clone(),
        };
        let outgoing = OutgoingMessage {
            appid: appid.to_owned(),
            touser: request.touser,
            template_id: request.template_id,
            channel: request.channel,
            payload: request.payload,
            delivery: request.delivery,
            wait_until,
        };
        // 45009 earlier today: answer at once, without calling WeChat.
        let blocked_until = self.quota.blocked_until(appid).await?;
        let capped = self.caps_for(appid, &message.template_id);
        let blocked = run::quota_block(blocked_until, now);
        let start = match blocked {
            // A capped app: the count and the message's row in one write
            // transaction (see `SendRulesStore::create_capped_message`),
            // then the first claim as for a message taken up again.
            _ if !capped.is_empty() => {
                if let Some(refusal) = self.create_capped(&message, capped, now).await? {
                    return Ok((refusal, true));
                }
                match blocked {
                    Some(until_ms) => Start::QuotaBlocked { until_ms },
                    None => Start::ClaimFirst,
                }
            }
            Some(until_ms) => {
                self.storage.create_message(&message, now).await?;
                Start::QuotaBlocked { until_ms }
            }
            None => {
                let claimed = self
                    .storage
                    .start_send(&StartSend {
                        message,
                        valid_after: now + self.settings.safety_margin_ms,
                        now,
                    })
                    .await?;
                crate::monitoring::claim(appid, ClaimResult::found(claimed.is_some()));
                Start::AlreadyClaimed(claimed)
            }
        };
        let lease_until = now + self.settings.lease_ms;
        Run::new(self, &outgoing, lease, lease_until, permit)
            .process(start)
            .await
            .map(|result| (result, false))
    }

    /// Carries on with a stored message this process has taken under
    /// `token` (a waiting message that came due, or one whose worker died).
    /// The caller (a worker) runs it inside a `resume{appid, message_id}` span.
    pub async fn resume(&self, message: &StoredMessage, token: i64) -> anyhow::Result<SendResult> {
        let lease = Lease {
            message_id: message.id.clone(),
            token,
        };
        if let Some(held) = self.hold_in_quiet_hours(message, &lease).await? {
            return Ok(held);
        }
        let permit = self.guard.slot(&message.appid).await;
        let outgoing = OutgoingMessage::from_stored(message)?;
        // The lease may have aged while the slot was awaited: the first
        // claim renews it.
        let lease_until = self.clock.now_ms();
        let blocked_until = self.quota.blocked_until(&message.appid).await?;
        let start = match run::quota_block(blocked_until, self.clock.now_ms()) {
            Some(until_ms) => Start::QuotaBlocked { until_ms },
            None => Start::ClaimFirst,
        };
        let result = Run::new(self, &outgoing, lease, lease_until, permit)
            .process(start)
            .await?;
        counted(&message.appid, message.channel, &result);
        Ok(result)
    }

    /// Resolves a credential found leased after its holder died (re-leased
    /// under `token`), by the rules of its message; returns `None` when it
    /// belonged to no unfinished message.
    /// The caller (recovery) runs it inside a `recover{credential, message_id}`
    /// span; the message id is recorded once known.
    pub async fn recover(
        &self,
        credential: ClaimedCredential,
        token: i64,
    ) -> anyhow::Result<Option<SendResult>> {
        let now = self.clock.now_ms();
        let message = match &credential.lease_message_id {
            Some(id) => self.storage.stored_message(id).await?,
            None => None,
        };
        let Some(message) = message.filter(|message| message.status == MessageStatus::Pending)
        else {
            // Parked, or its message already ended (its settlement committed
            // with the message's end): nothing of it can be in flight.
            self.storage
                .release_credentials(&[credential.id], token, now)
                .await?;
            return Ok(None);
        };
        tracing::Span::current().record("message_id", message.id.as_str());
        let permit = self.guard.slot(&message.appid).await;
        let lease = Lease {
            message_id: message.id.clone(),
            token,
        };
        let lease_until = self.clock.now_ms() + self.settings.lease_ms;
        // The message was taken with its credential, under `token`, which
        // fences off every later write of the run that died (or stalled).
        // The wait for a slot may have eaten that lease: renew both, or find
        // that another recovery took them meanwhile.
        if !self.storage.renew_lease(&lease, lease_until).await? {
            self.storage
                .release_credentials(&[credential.id], token, now)
                .await?;
            return Ok(None);
        }
        let outgoing = OutgoingMessage::from_stored(&message)?;
        let result = Run::new(self, &outgoing, lease, lease_until, permit)
            .process(Start::Recovered(credential))
            .await?;
        counted(&message.appid, message.channel, &result);
        Ok(Some(result))
    }
}

/// A run of a send, counted by where it left its message.
fn counted(appid: &str, channel: Channel, result: &SendResult) {
    let errcode = result.attempts.last().and_then(|attempt| attempt.errcode);
    crate::monitoring::send_ran(appid, channel, result.status, errcode);
}
