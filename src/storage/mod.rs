//! The ledger's storage: one contract, a SQLite and a PostgreSQL
//! implementation.
//!
//! The contract comes in groups a part of the service can hold on its own:
//! [`CredentialStore`], [`MessageStore`], [`IdempotencyStore`],
//! [`SubscriptionStore`], [`TemplateStore`], [`AppStore`],
//! [`MaintenanceStore`], and the sessions' and stored keys' [`SessionStore`]
//! and [`KeyStore`] (`sessions.rs`), the send rules' [`SendRulesStore`]
//! (`send_rules.rs`), and the broadcasts' [`BroadcastStore`]
//! (`broadcasts.rs`), and the operators' figures' [`StatsStore`]
//! (`stats.rs`). [`Storage`] is all of them at once, implemented for
//! whatever implements every group.
//!
//! Both run one schema (`migrations/sqlite`, `migrations/postgres`: the same
//! versions but SQLite's 0008, which rebuilds its `CHECK`s without `IN`
//! lists) and the same contract, which the integration suite checks on each.
//! Every time is Unix milliseconds handed in by the caller's clock.

pub mod broadcasts;
mod group_commit;
mod postgres;
#[cfg(test)]
mod schema_checks;
pub mod send_rules;
pub mod sessions;
mod shared;
mod sql;
mod sqlite;
pub mod stats;
mod webhook_store;

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;

pub use postgres::PostgresStorage;
pub use send_rules::SendRulesStore;

/// What the bench and the plan tests read of the storage's insides: the
/// statements as the backends run them, and group commit's own PostgreSQL
/// connections. Not an API: nothing of the service goes through it.
#[doc(hidden)]
pub mod testing {
    pub use super::postgres::{group_commit_pool, END_BATCH, KEYED_PLANNING, START_BATCH};

    /// The statements the bench runs bare and the plan tests explain.
    pub mod sql {
        pub use crate::storage::sql::{
            with_lock, CLAIM, FENCE_MESSAGE, FENCE_MESSAGE_KEEPING, FINISH_MESSAGE,
            INSERT_CREDENTIALS_HEAD, INSERT_CREDENTIALS_TAIL, INSERT_GRANT, RECHECK_RECIPIENT,
            RECORD_DECISION, RECORD_RECIPIENT, RENEW_CREDENTIAL_LEASES, REQUEUE_RECIPIENT,
            SETTLE_PARKED, SETTLE_RELEASED, SETTLE_RETIRED, SETTLE_SPENT, TAKE_RECIPIENTS,
            WAIT_MESSAGE,
        };
    }
}
pub use sessions::{ApiKeyRow, KeyStore, NewApiKey, NewSession, SessionRow, SessionStore};
pub use sqlite::SqliteStorage;

use crate::ledger::kinds::CredentialKind;
use crate::ledger::states::{
    AttemptOutcome, Channel, Decision, Delivery, IdempotencyState, MessageStatus, PushEffect,
    PushEventKind, SubscriptionType,
};
use crate::ledger::templates::CatalogueTemplate;

pub use broadcasts::BroadcastStore;
pub use formid_core::collect::{InsertOutcome, StoredCredential};
pub use formid_core::ledger::{
    ClaimedCredential, Lease, MessageOutcome, NewAttempt, NewCredential, NewMessage,
    PromptDecision, Settlement,
};
pub use formid_core::subscriptions::{EffectPlan, LedgerFacts, PromptEffect, PushAction};
pub use stats::StatsStore;

/// One user and one template of an app: where a decision is recorded.
pub(crate) struct UserTemplate<'a> {
    pub appid: &'a str,
    pub openid: &'a str,
    pub template_id: &'a str,
}
pub use formid_core::templates::{SendTemplates, TemplateForSend};
pub use formid_core::webhooks::NewEvent;
use formid_core::webhooks::{DeliveryOutcome, EndpointChange, EndpointState, OutboxState};
pub use group_commit::{EndSend, StartSend};

/// A fresh event id (`evt_` and a random UUID): the Standard Webhooks
/// `webhook-id` of an event that is not a message's end.
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::new_v4().simple())
}

/// A random fencing token (positive, so it is never confused with a NULL
/// turned into 0 by a careless read).
pub fn new_lease_token() -> i64 {
    rand::random::<i64>() & i64::MAX
}

/// A hold on `message_id` under a fresh fencing token.
pub fn new_lease(message_id: impl Into<String>) -> Lease {
    Lease::new(message_id, new_lease_token())
}

/// A claimed credential as read from `credentials`; its kind is checked
/// when it becomes a [`ClaimedCredential`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRow {
    pub id: i64,
    pub kind: String,
    pub value: String,
    pub uses_left: i64,
    pub unproven_uses: i64,
    pub collected_at: i64,
    pub expires_at: i64,
    pub lease_message_id: Option<String>,
}

impl TryFrom<ClaimedRow> for ClaimedCredential {
    type Error = anyhow::Error;

    fn try_from(row: ClaimedRow) -> anyhow::Result<Self> {
        let kind = CredentialKind::parse(&row.kind)
            .with_context(|| format!("credential {} has an unknown kind {:?}", row.id, row.kind))?;
        Ok(ClaimedCredential {
            id: row.id,
            kind,
            value: row.value,
            uses_left: row.uses_left,
            unproven_uses: row.unproven_uses,
            collected_at: row.collected_at,
            expires_at: row.expires_at,
            lease_message_id: row.lease_message_id,
        })
    }
}

/// What a claim for a message found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The credential now leased to the message.
    Claimed(ClaimedCredential),
    /// The user holds no usable credential.
    NoneLeft,
    /// The message is no longer this run's: nothing was claimed.
    LeaseLost,
}

/// A message as the send path needs it to carry on with it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub id: String,
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    /// The WeChat body without the credential, as JSON text.
    pub payload: String,
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    #[sqlx(try_from = "String")]
    pub delivery: Delivery,
    pub wait_until: Option<i64>,
    #[sqlx(try_from = "String")]
    pub channel: Channel,
}

/// An idempotency key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub message_id: String,
    #[sqlx(try_from = "String")]
    pub state: IdempotencyState,
    pub response_status: Option<i64>,
    pub response_body: Option<String>,
}

/// A claim of a user's credential for a message (see
/// [`CredentialStore::claim_credential`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The app whose ledger is claimed from.
    pub appid: &'a str,
    /// The user whose credential is claimed.
    pub openid: &'a str,
    /// The template whose grants (or long-term subscription) pay for a
    /// subscribe message; `None` claims a form_id or prepay_id.
    pub grant_of: Option<&'a str>,
    /// The run's hold on the message, which the claim fences on.
    pub lease: &'a Lease,
    /// Only credentials expiring after this are usable.
    pub valid_after: i64,
    /// Until when the credential and the message stay leased.
    pub lease_until: i64,
    /// The time written as the credential's `updated_at`.
    pub now: i64,
}

/// A request that takes an idempotency key (see
/// [`IdempotencyStore::begin_idempotent`]).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyRequest<'a> {
    /// The app the key belongs to (keys are per app).
    pub appid: &'a str,
    /// The `Idempotency-Key` the client sent.
    pub key: &'a str,
    /// SHA-256 of the canonical request body, to tell a retry from a reuse.
    pub request_hash: &'a str,
    /// The message the request creates.
    pub message_id: &'a str,
    /// The time of the request: a stored key that expired by then is taken
    /// anew.
    pub now: i64,
    /// When the key may be taken again.
    pub expires_at: i64,
}

/// What [`IdempotencyStore::begin_idempotent`] found.
#[derive(Debug, Clone)]
pub enum IdempotencyBegin {
    /// This request owns the key: go ahead.
    Started,
    /// The key is taken.
    Existing(IdempotencyRecord),
}

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    pub error_code: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    #[sqlx(try_from = "String")]
    pub channel: Channel,
    /// A subscribe send's final delivery as WeChat pushed it
    /// (`subscribe_msg_sent_event`): `ErrorCode`…
    pub delivery_error_code: Option<i64>,
    /// …`ErrorStatus`…
    pub delivery_error_status: Option<String>,
    /// …and when the push arrived.
    pub delivery_reported_at: Option<i64>,
    /// The caller's reference from the send request.
    pub reference: Option<String>,
}

/// A stored attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub credential_id: Option<i64>,
    pub credential_kind: Option<String>,
    pub errcode: Option<i64>,
    #[sqlx(try_from = "String")]
    pub outcome: AttemptOutcome,
    pub detail: Option<String>,
    pub at: i64,
    pub msgid: Option<String>,
}

/// A user's usable credentials of one kind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KindQuota {
    pub kind: String,
    pub credentials: i64,
    pub sends: i64,
    pub next_expiry: Option<i64>,
}

/// A user's standing with one subscribe template.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateQuota {
    pub template_id: String,
    #[sqlx(try_from = "String")]
    pub decision: Decision,
    pub decided_at: i64,
    pub long_term: bool,
    /// One-time grants left.
    pub grants: i64,
}

/// A prompt result to record once.
#[derive(Debug, Clone)]
pub struct NewPrompt {
    pub appid: String,
    pub openid: String,
    pub request_id: String,
    /// SHA-256 of the canonical result.
    pub request_hash: String,
    pub decisions: Vec<PromptDecision>,
    /// What each decision does, in the same order, as the rules planned it
    /// (`formid_core::subscriptions::prompt_plan`).
    pub plans: Vec<EffectPlan<PromptEffect>>,
}

/// What [`SubscriptionStore::record_prompt`] did.
#[derive(Debug, Clone)]
pub enum PromptRecord {
    /// Recorded now, with the effect on each template in order.
    Recorded(Vec<PromptEffect>),
    /// The request_id was posted before: its hash and what it did then.
    Repeated {
        request_hash: String,
        effects: Vec<PromptEffect>,
    },
}

/// One item of a push: its identity and what it asks.
#[derive(Debug, Clone)]
pub struct PushItem {
    /// The same on every retry of the push (see `push::PushEvent::item_keys`).
    pub dedupe_key: String,
    pub template_id: String,
    pub action: PushAction,
    /// What the item does, as the rules planned it
    /// (`formid_core::subscriptions::push_plan`).
    pub plan: EffectPlan<PushEffect>,
}

/// A verified subscribe event of WeChat's message push, to apply once.
#[derive(Debug, Clone)]
pub struct NewPushEvent {
    pub appid: String,
    /// `FromUserName`: the user (never `ToUserName`, the app's `gh_` id).
    pub openid: String,
    pub kind: PushEventKind,
    pub items: Vec<PushItem>,
}

/// What one item of a recorded push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushItemOutcome {
    /// What it did, now or when it was first applied.
    pub effect: PushEffect,
    /// Whether it had been applied before (a retried push): nothing changed now.
    pub replayed: bool,
}

/// The per-app row: token and send block.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct AppState {
    pub access_token: Option<String>,
    pub token_expires_at: Option<i64>,
    pub token_fetched_at: Option<i64>,
    pub send_blocked_until: Option<i64>,
    /// The token-fetch budget's theoretical arrival time (`tokens::budget`).
    pub token_fetch_tat: Option<i64>,
    /// When WeChat last accepted the stored token in a check.
    pub token_checked_at: Option<i64>,
}

/// A template of an app's catalogue as stored (`templates`, migration 0005):
/// what WeChat last listed for it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TemplateRecord {
    /// `template_id` (classic) or `priTmplId` (subscribe).
    pub template_id: String,
    #[sqlx(try_from = "String")]
    pub channel: Channel,
    pub title: String,
    pub content: String,
    pub example: String,
    #[sqlx(try_from = "String")]
    pub subscription: SubscriptionType,
    /// Subscribe templates: `{"keywordCode": ["value", …]}` as JSON text.
    pub enum_values: Option<String>,
    /// When it was read from WeChat.
    pub refreshed_at: i64,
}

impl TemplateRecord {
    /// The template as the send checks read it. Enum values that are not
    /// the stored JSON shape are ignored (the values are then unchecked).
    pub fn to_catalogue(&self) -> CatalogueTemplate {
        let enum_values = self
            .enum_values
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        CatalogueTemplate::new(
            self.template_id.clone(),
            self.channel,
            self.title.clone(),
            self.content.clone(),
            self.example.clone(),
            self.subscription,
            enum_values,
        )
    }
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u64,
    pub deleted_credentials: u64,
    pub deleted_messages: u64,
    pub deleted_idempotency_keys: u64,
    pub deleted_prompts: u64,
    pub deleted_push_events: u64,
}

/// The ledger's credentials: collected, counted, leased to a message,
/// taken back from a run whose lease ran out, and given back.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// Stores credentials of one app and answers, per item in order, whether
    /// it was stored or which row already holds its value (judged by
    /// `formid_core::collect::insert_outcome`); then makes the waiting
    /// messages of the users who got one due now.
    async fn insert_credentials(
        &self,
        appid: &str,
        items: &[NewCredential],
        now: i64,
    ) -> anyhow::Result<Vec<StoredCredential>>;

    /// Usable credentials of a user by kind: available and expiring after `valid_after`.
    async fn quota(
        &self,
        appid: &str,
        openid: &str,
        valid_after: i64,
    ) -> anyhow::Result<Vec<KindQuota>>;

    /// Atomically leases the available credential of the user that expires
    /// soonest after `valid_after` to the lease's message, until
    /// `lease_until`, and renews the message's own lease to the same time —
    /// only while the message is still the lease's (its token unchanged).
    /// See [`ClaimRequest`] for the fields.
    async fn claim_credential(&self, claim: &ClaimRequest<'_>) -> anyhow::Result<Claim>;

    /// Returns credentials leased under `token` to the pool untouched.
    async fn release_credentials(&self, ids: &[i64], token: i64, now: i64) -> anyhow::Result<()>;

    /// Takes up to `limit` leased credentials whose lease ran out, re-leasing
    /// them to the caller until `lease_until` under `token` — and, in the same
    /// transaction, their pending messages under the same token, so that the
    /// run that held them is fenced off from both.
    async fn claim_expired_leases(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<ClaimedCredential>>;
}

/// The ledger's messages and their sends: recorded, claimed for, settled
/// under their lease, finished, kept waiting, taken over by the workers, read.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// The common start of a send, batched with concurrent ones (group
    /// commit): records the message and claims its first credential (leased
    /// until the message's own lease) in one transaction.
    async fn start_send(&self, start: &StartSend) -> anyhow::Result<Option<ClaimedCredential>>;

    /// Records a new message without claiming anything.
    async fn create_message(&self, message: &NewMessage, now: i64) -> anyhow::Result<()>;

    /// The common end of a send, batched with concurrent ones (group
    /// commit): the credential spent, the attempt recorded, the message
    /// finished, in one transaction. `false` when the lease was lost: the
    /// attempt is recorded, nothing else changes.
    async fn end_send(&self, end: &EndSend) -> anyhow::Result<bool>;

    /// In one transaction: settles a leased credential, records the attempt
    /// and, when given, the message's final state. The attempt is always
    /// recorded (it is a fact about a call); the rest only while the lease
    /// holds, which the answer tells.
    async fn record_attempt(
        &self,
        lease: &Lease,
        attempt: &NewAttempt,
        settlement: Option<(i64, Settlement)>,
        outcome: Option<&MessageOutcome>,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Records the final state of a message; `false` when the lease was lost.
    async fn finish_message(
        &self,
        lease: &Lease,
        outcome: &MessageOutcome,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Keeps a message without a credential until one arrives: due again at
    /// `next_attempt_at`, or at once when a credential expiring after
    /// `valid_after` arrived meanwhile. `false` when the lease was lost.
    async fn wait_message(
        &self,
        lease: &Lease,
        next_attempt_at: i64,
        valid_after: i64,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Keeps a message that found no usable token until `next_attempt_at`,
    /// its credential already back in the pool. `false` when the lease was lost.
    async fn wait_for_token(
        &self,
        lease: &Lease,
        next_attempt_at: i64,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Makes waiting messages whose user holds a credential expiring after
    /// `valid_after` due now; returns how many.
    async fn wake_waiting_with_credentials(
        &self,
        now: i64,
        valid_after: i64,
    ) -> anyhow::Result<u64>;

    /// Renews a run's lease on its message and the credentials it holds;
    /// `false` when the lease was lost.
    async fn renew_lease(&self, lease: &Lease, lease_until: i64) -> anyhow::Result<bool>;

    /// Takes up to `limit` due waiting messages, leasing them until
    /// `lease_until` under `token`.
    async fn claim_due_waiting(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredMessage>>;

    /// Takes up to `limit` pending messages whose lease ran out and that hold
    /// no credential, under `token`.
    async fn claim_stale_messages(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredMessage>>;

    /// A message for the send path, whatever its app.
    async fn stored_message(&self, id: &str) -> anyhow::Result<Option<StoredMessage>>;

    /// A message of the app with its attempts in order.
    async fn message(
        &self,
        appid: &str,
        id: &str,
    ) -> anyhow::Result<Option<(MessageRow, Vec<AttemptRow>)>>;
}

/// Idempotency keys: one request owns a key, and its answer is replayed
/// to the retries.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes an idempotency key for a request, unless it is already taken.
    async fn begin_idempotent(
        &self,
        request: &IdempotencyRequest<'_>,
    ) -> anyhow::Result<IdempotencyBegin>;

    /// Stores the answer of the request that owns the key.
    async fn complete_idempotent(
        &self,
        appid: &str,
        key: &str,
        message_id: &str,
        status: u16,
        body: &str,
    ) -> anyhow::Result<()>;
}

/// What pays for subscribe messages: the prompt results and pushes that
/// grant and revoke, a user's standing, and the message a pushed delivery
/// reports on.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Records a prompt result once per (app, user, request_id), in one
    /// transaction: each decision as the user's latest, and (when the
    /// prompt grants) one grant per accepted one-time template or the
    /// long-term subscription on for a template the catalogue knows as
    /// long-term. Then the user's waiting messages that can now be paid
    /// for are made due.
    async fn record_prompt(&self, prompt: &NewPrompt, now: i64) -> anyhow::Result<PromptRecord>;

    /// Applies a verified push once, in one transaction: each item not seen
    /// before (by app and dedupe key) is recorded with its effect and
    /// applied; an item seen before changes nothing and answers the effect
    /// it had. When it commits, the push is durable, so `success` may go
    /// out; then the user's waiting messages that new grants can pay for
    /// are made due.
    async fn record_push(
        &self,
        push: &NewPushEvent,
        now: i64,
    ) -> anyhow::Result<Vec<PushItemOutcome>>;

    /// The user's standing with every subscribe template they decided on.
    async fn subscription_quota(
        &self,
        appid: &str,
        openid: &str,
    ) -> anyhow::Result<Vec<TemplateQuota>>;

    /// The message of the app's user whose attempt carries `msgid` (a
    /// delivered subscribe send), if the ledger has recorded it yet.
    async fn message_of_msgid(
        &self,
        appid: &str,
        openid: &str,
        msgid: &str,
    ) -> anyhow::Result<Option<String>>;
}

/// An app's template catalogue as WeChat lists it, and what its sends
/// check against.
#[async_trait]
pub trait TemplateStore: Send + Sync {
    /// What the app's sends need to know of its templates: its catalogue,
    /// and the templates its users decided on (see [`SendTemplates`]).
    async fn send_templates(&self, appid: &str) -> anyhow::Result<SendTemplates>;

    /// Replaces the app's templates of one channel with a WeChat listing, in
    /// one transaction: the channel's rows not in `templates` are deleted,
    /// the others written as given.
    async fn replace_templates_batch(
        &self,
        appid: &str,
        channel: Channel,
        templates: &[TemplateRecord],
    ) -> anyhow::Result<()>;

    /// Writes one template of the app (inserted, or replacing the stored one).
    async fn upsert_template(&self, appid: &str, template: &TemplateRecord) -> anyhow::Result<()>;

    /// Deletes one template of the app; `false` when it was not stored.
    async fn delete_template(&self, appid: &str, template_id: &str) -> anyhow::Result<bool>;

    /// The app's templates of both channels, by channel then title.
    async fn templates(&self, appid: &str) -> anyhow::Result<Vec<TemplateRecord>>;

    /// One template of the app, for the checks before a send.
    async fn template(
        &self,
        appid: &str,
        template_id: &str,
    ) -> anyhow::Result<Option<TemplateRecord>>;
}

/// The per-app row: the access token, its refresh lease, fetch budget and
/// checks, forced refreshes, and the block on the app's sends.
#[async_trait]
pub trait AppStore: Send + Sync {
    /// The per-app row.
    async fn app_state(&self, appid: &str) -> anyhow::Result<AppState>;

    /// Takes (or renews) the app's token-refresh lease for `holder`.
    async fn try_lease_token_refresh(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> anyhow::Result<bool>;

    /// Gives the lease back if `holder` still has it.
    async fn release_token_refresh(&self, appid: &str, holder: &str) -> anyhow::Result<()>;

    /// Stores a token unless a fetch that started later already stored one.
    async fn store_token(
        &self,
        appid: &str,
        token: &str,
        expires_at: i64,
        fetched_at: i64,
    ) -> anyhow::Result<bool>;

    /// Takes one token fetch from the app's budget: writes `next` over the
    /// `seen` arrival time; false when another instance changed it first.
    async fn take_token_fetch(
        &self,
        appid: &str,
        seen: Option<i64>,
        next: i64,
    ) -> anyhow::Result<bool>;

    /// Records that WeChat accepted `token` at `at`, while it is the stored one.
    async fn record_token_check(&self, appid: &str, token: &str, at: i64) -> anyhow::Result<bool>;

    /// Takes one forced stable_token refresh from the app's budget of
    /// `per_day` a China day (`china_day`, days since the epoch in UTC+8),
    /// 30 s apart; false when none is left.
    async fn take_force_refresh(
        &self,
        appid: &str,
        china_day: i64,
        now: i64,
        per_day: u32,
    ) -> anyhow::Result<bool>;

    /// Stops sends of the app until `until` (errcode 45009); a new block
    /// writes its `app.quota_exhausted` event in the same transaction.
    async fn block_sends(&self, appid: &str, until: i64, now: i64) -> anyhow::Result<()>;
}

/// A webhook endpoint as stored. Carries its secrets: never a response's
/// body, and its `Debug` redacts them.
#[derive(Clone, sqlx::FromRow)]
pub struct WebhookEndpoint {
    pub id: String,
    pub appid: String,
    pub url: String,
    /// The event types it wants, one bit each (`EventType::bit`).
    pub event_mask: i64,
    /// `whsec_…`.
    pub secret: String,
    /// The secret before the last rotation, signing too until
    /// `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<i64>,
    #[sqlx(try_from = "String")]
    pub state: EndpointState,
    pub disabled_reason: Option<String>,
    /// When its current streak of failed attempts began.
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("appid", &self.appid)
            .field("url", &self.url)
            .field("event_mask", &self.event_mask)
            .field("secret", &"<redacted>")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl WebhookEndpoint {
    /// The secrets that sign at `now`: the current one, and the previous one
    /// while its rotation overlap lasts.
    pub fn signing_secrets(&self, now: i64) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until) {
            if now < until {
                secrets.push(previous);
            }
        }
        secrets
    }
}

/// An endpoint to create.
#[derive(Clone)]
pub struct NewEndpoint {
    pub id: String,
    pub appid: String,
    pub url: String,
    pub event_mask: i64,
    pub secret: String,
    pub now: i64,
}

/// An event leased for one delivery attempt to one endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeasedEvent {
    pub seq: i64,
    pub event_id: String,
    pub endpoint_id: String,
    pub appid: String,
    pub event_type: String,
    pub openid: Option<String>,
    pub message_id: Option<String>,
    pub template_id: Option<String>,
    pub status: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
    pub occurred_at: i64,
    /// Attempts made before this one.
    pub attempts: i64,
    pub lease_token: i64,
    /// The `Idempotency-Key` of the send of the message it is about.
    pub idempotency_key: Option<String>,
    /// The caller's reference of that message.
    pub reference: Option<String>,
}

/// What one delivery attempt came to, written in one transaction.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub seq: i64,
    pub lease_token: i64,
    pub endpoint_id: String,
    pub appid: String,
    pub event_id: String,
    pub event_type: String,
    pub outcome: DeliveryOutcome,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    /// The start of the answer's body, bounded.
    pub response: Option<String>,
    pub duration_ms: i64,
    /// Where the event goes next: `Delivered`, `Pending` at `next_attempt_at`,
    /// or `Failed`.
    pub state: OutboxState,
    pub next_attempt_at: i64,
    /// What the attempt does to its endpoint (the core's `endpoint_after`).
    pub endpoint: EndpointChange,
    /// The event that says the endpoint was switched off, when it was.
    pub disabled_event: Option<NewEvent>,
    pub now: i64,
}

/// A delivery attempt as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookAttemptRow {
    pub event_id: String,
    pub event_type: String,
    pub at: i64,
    #[sqlx(try_from = "String")]
    pub outcome: DeliveryOutcome,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub duration_ms: i64,
}

/// Webhooks: an app's endpoints, the outbox their events wait in, and the
/// attempts to deliver them. The events themselves are written by the
/// other groups, each in the transaction of the change it reports.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new endpoint, enabled.
    async fn create_endpoint(&self, endpoint: &NewEndpoint) -> anyhow::Result<()>;

    /// The app's endpoints, oldest first.
    async fn endpoints(&self, appid: &str) -> anyhow::Result<Vec<WebhookEndpoint>>;

    /// One endpoint of the app.
    async fn endpoint(&self, appid: &str, id: &str) -> anyhow::Result<Option<WebhookEndpoint>>;

    /// Switches an enabled endpoint off in one transaction: its pending
    /// events fail, and `event` (saying so) goes to the app's other
    /// endpoints that want it. `false` when it was not enabled.
    async fn disable_endpoint(
        &self,
        appid: &str,
        id: &str,
        event: &NewEvent,
    ) -> anyhow::Result<bool>;

    /// Replaces the signing secret; the old one signs too until `previous_until`.
    async fn rotate_secret(
        &self,
        appid: &str,
        id: &str,
        secret: &str,
        previous_until: i64,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Queues a `webhook.test` event for one enabled endpoint; `false` when
    /// there is none.
    async fn enqueue_test_event(
        &self,
        appid: &str,
        id: &str,
        event_id: &str,
        now: i64,
    ) -> anyhow::Result<bool>;

    /// Writes an event that reports no other change of the ledger, in a
    /// transaction of its own.
    async fn record_event(&self, event: &NewEvent) -> anyhow::Result<()>;

    /// Makes the endpoint's failed events since `since` due again; how many.
    async fn replay_failed(&self, endpoint_id: &str, since: i64, now: i64) -> anyhow::Result<u64>;

    /// The endpoint's newest `limit` attempts, newest first.
    async fn webhook_attempts(
        &self,
        endpoint_id: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<WebhookAttemptRow>>;

    /// Leases up to `limit` due events (see `sql::LEASE_DUE_EVENTS`) until
    /// `lease_until` under `token`.
    async fn lease_events(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<LeasedEvent>>;

    /// Records an attempt, and — while the lease holds — the event's next
    /// state and the endpoint's; `false` when the lease was lost.
    async fn record_delivery(&self, record: &DeliveryRecord) -> anyhow::Result<bool>;

    /// Deletes ended events and attempts older than `cutoff`; how many events.
    async fn sweep_webhooks(&self, cutoff: i64) -> anyhow::Result<u64>;
}

/// One app's count of messages in one status ([`MaintenanceStore::message_backlog`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BacklogCount {
    pub appid: String,
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    pub count: i64,
}

/// The ledger's upkeep: the health check, the app rows, the sweep, the
/// backlog's counts.
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Checks that the database answers.
    async fn ping(&self) -> anyhow::Result<()>;

    /// Makes sure the per-app row exists.
    async fn ensure_app(&self, appid: &str) -> anyhow::Result<()>;

    /// How many messages of each app are waiting, pending or scheduled
    /// (apps with none are absent).
    async fn message_backlog(&self) -> anyhow::Result<Vec<BacklogCount>>;

    /// Marks expired credentials and deletes rows older than the retention.
    async fn sweep(
        &self,
        now: i64,
        credential_retention_ms: i64,
        message_retention_ms: i64,
    ) -> anyhow::Result<SweepReport>;
}

/// The ledger's storage contract: every group of it, as one object
/// (`Arc<dyn Storage>`). A part of the service that needs one group can be
/// handed that group alone; anything that implements every group is a
/// `Storage`.
pub trait Storage:
    CredentialStore
    + MessageStore
    + SendRulesStore
    + IdempotencyStore
    + SubscriptionStore
    + TemplateStore
    + AppStore
    + MaintenanceStore
    + SessionStore
    + KeyStore
    + BroadcastStore
    + WebhookStore
    + StatsStore
    + std::fmt::Debug
{
}

impl<T> Storage for T where
    T: CredentialStore
        + MessageStore
        + SendRulesStore
        + IdempotencyStore
        + SubscriptionStore
        + TemplateStore
        + AppStore
        + MaintenanceStore
        + SessionStore
        + KeyStore
        + BroadcastStore
        + WebhookStore
        + StatsStore
        + std::fmt::Debug
        + ?Sized
{
}

/// Connects to the database the URL names and applies its migrations.
pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<Arc<dyn Storage>> {
    if database_url.starts_with("sqlite:") {
        let storage = SqliteStorage::connect(database_url, max_connections)
            .await
            .context("opening the SQLite ledger")?;
        Ok(std::sync::Arc::new(storage))
    } else if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        let storage = PostgresStorage::connect(database_url, max_connections)
            .await
            .context("connecting to the PostgreSQL ledger")?;
        Ok(std::sync::Arc::new(storage))
    } else {
        anyhow::bail!("database_url must start with sqlite: or postgres:")
    }
}
