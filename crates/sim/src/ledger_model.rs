//! The ledger in memory: the tables of `migrations/` as `BTreeMap`s, and
//! each method of the storage's groups (`CredentialStore`, `MessageStore`
//! and the others that make up `formid_gateway::storage::Storage`) doing
//! what its SQL in `src/storage/sql.rs` (and the batch scripts of `sqlite.rs` and
//! `postgres.rs`) does, statement by statement: the same `WHERE` clauses,
//! the same fences by `lease_token`, the same claim order
//! (`ORDER BY expires_at, id`).
//!
//! One mutex makes each statement atomic (each transaction, where the SQL
//! runs several in one). Before each method the caller waits a seeded 0–2
//! ms, so that instances interleave between any two ledger steps and a crash
//! can fall between them; a seeded few of the writes fail, before or after
//! they commit, as a database whose connection drops does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::ledger::kinds::NEVER_EXPIRES_MS;
use formid_gateway::ledger::states::{
    AttemptOutcome, Channel, CredentialState, Decision, Delivery, IdempotencyState, MessageStatus,
};
use formid_gateway::ledger::user_limits::{longest_window, CapDecision, SendCap};
use formid_gateway::ledger::webhooks::{finish_event_id, EventType};
use formid_gateway::storage::send_rules::{
    decide_counted, CappedStart, Scheduled, SendRulesStore, TakeScheduled, Taken,
};
use formid_gateway::storage::{
    AppState, AppStore, AttemptRow, BacklogCount, Claim, ClaimRequest, ClaimedCredential,
    CredentialStore, EffectPlan, EndSend, IdempotencyBegin, IdempotencyRecord, IdempotencyRequest,
    IdempotencyStore, KindQuota, Lease, LedgerFacts, MaintenanceStore, MessageOutcome, MessageRow,
    MessageStore, NewAttempt, NewCredential, NewMessage, NewPrompt, NewPushEvent, PromptDecision,
    PromptEffect, PromptRecord, PushItemOutcome, SendTemplates, Settlement, StartSend,
    StoredCredential, StoredMessage, SubscriptionStore, SweepReport, TemplateQuota, TemplateStore,
};
use formid_gateway::storage::{
    DeliveryRecord, LeasedEvent, NewEndpoint, NewEvent, WebhookAttemptRow, WebhookEndpoint,
    WebhookStore,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Counts;

pub mod broadcasts;
mod stats;

/// A row of `credentials`.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub id: i64,
    pub appid: String,
    pub openid: String,
    pub kind: String,
    pub value: String,
    /// The template a subscribe grant or long-term ticket pays for; `None`
    /// for a form_id or prepay_id.
    pub template_id: Option<String>,
    pub uses_left: i64,
    pub unproven_uses: i64,
    pub state: CredentialState,
    pub collected_at: i64,
    pub expires_at: i64,
    pub lease_expires_at: Option<i64>,
    pub lease_message_id: Option<String>,
    pub lease_token: Option<i64>,
    pub retired_errcode: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl CredentialRow {
    fn claimed(&self) -> ClaimedCredential {
        ClaimedCredential {
            id: self.id,
            kind: kind_of(&self.kind).expect("the model stores only known kinds"),
            value: self.value.clone(),
            uses_left: self.uses_left,
            unproven_uses: self.unproven_uses,
            collected_at: self.collected_at,
            expires_at: self.expires_at,
            lease_message_id: self.lease_message_id.clone(),
        }
    }

    fn leased_under(&self, token: i64) -> bool {
        self.state == CredentialState::Leased && self.lease_token == Some(token)
    }
}

/// A row of `messages`.
#[derive(Debug, Clone)]
pub struct MessageRowModel {
    pub id: String,
    pub appid: String,
    pub touser: String,
    pub template_id: String,
    pub payload: String,
    pub status: MessageStatus,
    pub delivery: Delivery,
    pub wait_until: Option<i64>,
    pub lease_until: Option<i64>,
    pub lease_token: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub error_code: Option<String>,
    pub wechat_errcode: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub channel: Channel,
    /// The time a scheduled send asked for.
    pub send_at: Option<i64>,
    /// The caller's reference from the send request.
    pub reference: Option<String>,
    /// The send's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
}

impl MessageRowModel {
    fn stored(&self) -> StoredMessage {
        StoredMessage {
            id: self.id.clone(),
            appid: self.appid.clone(),
            touser: self.touser.clone(),
            template_id: self.template_id.clone(),
            payload: self.payload.clone(),
            status: self.status,
            delivery: self.delivery,
            wait_until: self.wait_until,
            channel: self.channel,
        }
    }

    /// The template whose grants pay for the message (`ledger::values::grant_of`).
    fn grant_of(&self) -> Option<&str> {
        formid_gateway::ledger::values::grant_of(self.channel, &self.template_id)
    }

    /// `FENCE_MESSAGE`'s condition.
    fn held_by(&self, lease: &Lease) -> bool {
        self.lease_token == Some(lease.token) && self.status == MessageStatus::Pending
    }
}

#[derive(Debug, Clone, Default)]
struct AppRow {
    access_token: Option<String>,
    token_expires_at: Option<i64>,
    token_fetched_at: Option<i64>,
    send_blocked_until: Option<i64>,
    refresh_holder: Option<String>,
    refresh_lease_until: Option<i64>,
    force_refresh_day: Option<i64>,
    force_refresh_count: i64,
    force_refreshed_at: Option<i64>,
    token_fetch_tat: Option<i64>,
    token_checked_at: Option<i64>,
}

/// A row of `subscriptions`: the user's latest decision on a template.
#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub decision: Decision,
    pub decided_at: i64,
    pub long_term: bool,
    pub updated_at: i64,
}

/// A row of `subscription_prompts`.
#[derive(Debug, Clone)]
pub struct PromptRow {
    pub request_hash: String,
    pub effects: Vec<PromptEffect>,
    pub created_at: i64,
}

/// A row of `templates` (the columns the SQL reads).
#[derive(Debug, Clone)]
pub struct TemplateRow {
    pub channel: Channel,
    /// `subscription = 'long_term'`.
    pub long_term: bool,
}

#[derive(Debug, Clone)]
struct IdempotencyRow {
    record: IdempotencyRecord,
    expires_at: i64,
}

/// The tables.
#[derive(Debug, Default)]
pub struct Tables {
    pub credentials: BTreeMap<i64, CredentialRow>,
    /// `UNIQUE (appid, value)`.
    by_value: BTreeMap<(String, String), i64>,
    next_credential_id: i64,
    pub messages: BTreeMap<String, MessageRowModel>,
    /// Attempts by message, in insertion order (`ORDER BY id`).
    pub attempts: BTreeMap<String, Vec<AttemptRow>>,
    apps: BTreeMap<String, AppRow>,
    idempotency: BTreeMap<(String, String), IdempotencyRow>,
    /// `subscriptions`, by (appid, openid, template_id).
    pub subscriptions: BTreeMap<(String, String, String), SubscriptionRow>,
    /// `subscription_prompts`, by (appid, openid, request_id).
    pub prompts: BTreeMap<(String, String, String), PromptRow>,
    /// `templates`, by (appid, template_id).
    pub templates: BTreeMap<(String, String), TemplateRow>,
    /// Makes the values of long-term tickets unique (the SQL binds a UUID).
    next_ticket: u64,
    /// `broadcasts`, by id.
    pub broadcasts: BTreeMap<String, broadcasts::BroadcastModelRow>,
    /// `broadcast_recipients`, by (broadcast_id, seq).
    pub recipients: BTreeMap<(String, i64), broadcasts::RecipientModelRow>,
    /// `webhook_outbox`, as one receiver subscribed to every type sees it:
    /// the events of message ends, in the order they were written.
    pub outbox: Vec<OutboxRowModel>,
}

/// An event of the outbox (`sql::INSERT_MESSAGE_EVENT`, the batches' form).
#[derive(Debug, Clone)]
pub struct OutboxRowModel {
    pub event_id: String,
    pub message_id: String,
    pub event_type: Option<EventType>,
    pub delivered: bool,
    /// Copied from the message when the event is written, as the SQL does.
    pub idempotency_key: Option<String>,
    /// Likewise.
    pub reference: Option<String>,
}

/// Where a write fails, when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing committed.
    Before,
    /// Committed, but the answer was lost.
    After,
}

#[derive(Debug)]
struct Inner {
    tables: Tables,
    rng: StdRng,
    /// Per-mille of writes that fail, before or after commit; 0 at quiescence.
    write_failures: u32,
    counts: Counts,
}

/// The in-memory ledger.
#[derive(Debug)]
pub struct LedgerModel {
    inner: Mutex<Inner>,
    auth: Mutex<AuthTables>,
}

impl LedgerModel {
    /// An empty ledger whose waits and write failures come from `seed`;
    /// `write_failures` per-mille of writes fail.
    pub fn new(seed: u64, write_failures: u32) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tables: Tables {
                    next_credential_id: 1,
                    ..Tables::default()
                },
                rng: StdRng::seed_from_u64(seed ^ 0x4c45_4447_4552),
                write_failures,
                counts: Counts::new(),
            }),
            auth: Mutex::default(),
        }
    }

    /// Stops (or changes) injected write failures.
    pub fn set_write_failures(&self, per_mille: u32) {
        self.lock().write_failures = per_mille;
    }

    /// Write failures injected, by kind.
    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    /// Puts a template in the app's catalogue (`templates`), as the catalogue
    /// refresh would: a fixture of the run, not a statement of `Storage`.
    pub fn add_template(&self, appid: &str, template_id: &str, channel: Channel, long_term: bool) {
        self.lock().tables.templates.insert(
            (appid.to_owned(), template_id.to_owned()),
            TemplateRow { channel, long_term },
        );
    }

    /// Reads the tables.
    pub fn with_tables<T>(&self, read: impl FnOnce(&Tables) -> T) -> T {
        read(&self.lock().tables)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("ledger model lock")
    }

    /// The wait before a statement reaches the database: 0–2 ms, so that
    /// other tasks may run (and a crash may strike) between any two steps.
    async fn arrive(&self) {
        let wait = self.lock().rng.gen_range(0..=2u64);
        if wait == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// A write: waits, draws whether it fails, and runs `apply` atomically
    /// unless it fails before committing.
    async fn write<T>(
        &self,
        apply: impl FnOnce(&mut Tables) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.arrive().await;
        let mut inner = self.lock();
        let failure =
            if inner.write_failures > 0 && inner.rng.gen_range(0..1000) < inner.write_failures {
                if inner.rng.gen_bool(0.5) {
                    *inner
                        .counts
                        .entry("ledger: write failed before commit")
                        .or_default() += 1;
                    Some(Failure::Before)
                } else {
                    *inner
                        .counts
                        .entry("ledger: write committed, answer lost")
                        .or_default() += 1;
                    Some(Failure::After)
                }
            } else {
                None
            };
        if failure == Some(Failure::Before) {
            bail!("simulated database failure before commit");
        }
        let result = apply(&mut inner.tables)?;
        if failure == Some(Failure::After) {
            bail!("simulated database failure after commit");
        }
        Ok(result)
    }

    /// A read: waits, then reads atomically; reads never fail.
    async fn read<T>(&self, read: impl FnOnce(&Tables) -> T) -> anyhow::Result<T> {
        self.arrive().await;
        Ok(read(&self.lock().tables))
    }
}

impl Tables {
    /// `FENCE_MESSAGE` (`lease_until` given) or `FENCE_MESSAGE_KEEPING`.
    fn fence(&mut self, lease: &Lease, lease_until: Option<i64>) -> bool {
        match self.messages.get_mut(&lease.message_id) {
            Some(message) if message.held_by(lease) => {
                if let Some(until) = lease_until {
                    message.lease_until = Some(until);
                }
                true
            }
            _ => false,
        }
    }

    /// `CLAIM` (without its fence): the user's available credential expiring
    /// soonest after `valid_after`, by `(expires_at, id)`.
    fn claim(&mut self, claim: &ClaimRequest<'_>) -> Option<ClaimedCredential> {
        let ClaimRequest {
            appid,
            openid,
            grant_of,
            lease,
            valid_after,
            lease_until,
            now,
        } = *claim;
        let id = self
            .credentials
            .values()
            .filter(|c| {
                c.appid == appid
                    && c.openid == openid
                    && c.state == CredentialState::Available
                    && c.expires_at > valid_after
                    // `template_id IS NOT DISTINCT FROM $8`
                    && c.template_id.as_deref() == grant_of
            })
            .min_by_key(|c| (c.expires_at, c.id))?
            .id;
        let row = self.credentials.get_mut(&id).expect("the row just found");
        row.state = CredentialState::Leased;
        row.lease_expires_at = Some(lease_until);
        row.updated_at = now;
        row.lease_message_id = Some(lease.message_id.clone());
        row.lease_token = Some(lease.token);
        Some(row.claimed())
    }

    /// `CLAIM_LONG_TERM`: a ticket (a leased `long_term` credential made for
    /// this send) while the user's subscription to the template is on.
    fn claim_long_term(
        &mut self,
        appid: &str,
        openid: &str,
        template_id: &str,
        lease: &Lease,
        lease_until: i64,
        now: i64,
    ) -> Option<ClaimedCredential> {
        let on = self
            .subscriptions
            .get(&(appid.to_owned(), openid.to_owned(), template_id.to_owned()))
            .is_some_and(|s| s.long_term);
        if !on {
            return None;
        }
        self.next_ticket += 1;
        let value = format!("long_term:{}:{}", lease.message_id, self.next_ticket);
        let id = self.next_credential_id;
        self.next_credential_id += 1;
        self.by_value.insert((appid.to_owned(), value.clone()), id);
        let row = CredentialRow {
            id,
            appid: appid.to_owned(),
            openid: openid.to_owned(),
            kind: CredentialKind::LongTerm.as_str().to_owned(),
            value,
            template_id: Some(template_id.to_owned()),
            uses_left: 1,
            unproven_uses: 0,
            state: CredentialState::Leased,
            collected_at: now,
            expires_at: NEVER_EXPIRES_MS,
            lease_expires_at: Some(lease_until),
            lease_message_id: Some(lease.message_id.clone()),
            lease_token: Some(lease.token),
            retired_errcode: None,
            created_at: now,
            updated_at: now,
        };
        let claimed = row.claimed();
        self.credentials.insert(id, row);
        Some(claimed)
    }

    /// `REVOKE_TEMPLATE_GRANTS` and `REVOKE_SUBSCRIPTION` for the
    /// credential `credential_id` (no lease fence: they run in the fenced
    /// transaction of the settlement).
    fn revoke(&mut self, credential_id: i64, errcode: i64, now: i64) {
        let Some(key) = self.credentials.get(&credential_id).and_then(|c| {
            c.template_id
                .as_ref()
                .map(|t| (c.appid.clone(), c.openid.clone(), t.clone()))
        }) else {
            // The subquery finds no row (or a NULL template_id): nothing matches.
            return;
        };
        for c in self.credentials.values_mut() {
            if c.state == CredentialState::Available
                && c.kind == CredentialKind::Subscribe.as_str()
                && c.appid == key.0
                && c.openid == key.1
                && c.template_id.as_deref() == Some(key.2.as_str())
            {
                c.state = CredentialState::Retired;
                c.retired_errcode = Some(errcode);
                c.updated_at = now;
            }
        }
        if let Some(s) = self.subscriptions.get_mut(&key) {
            s.long_term = false;
            s.decision = Decision::Revoked;
            s.decided_at = now;
            s.updated_at = now;
        }
    }

    /// `CREATE_MESSAGE`; the primary key refuses a second row with one id.
    fn create_message(&mut self, message: &NewMessage, now: i64) -> anyhow::Result<()> {
        if self.messages.contains_key(&message.id) {
            bail!("duplicate key value violates unique constraint \"messages_pkey\"");
        }
        self.messages.insert(
            message.id.clone(),
            MessageRowModel {
                id: message.id.clone(),
                appid: message.appid.clone(),
                touser: message.touser.clone(),
                template_id: message.template_id.clone(),
                payload: message.payload.clone(),
                status: message.status,
                delivery: message.delivery,
                wait_until: message.wait_until,
                lease_until: Some(message.lease_until),
                lease_token: Some(message.lease_token),
                next_attempt_at: None,
                error_code: None,
                wechat_errcode: None,
                created_at: now,
                updated_at: now,
                channel: message.channel,
                send_at: None,
                reference: message.reference.clone(),
                idempotency_key: message.idempotency_key.clone(),
            },
        );
        Ok(())
    }

    /// `INSERT_ATTEMPT` (its message must exist: a foreign key).
    fn insert_attempt(
        &mut self,
        message_id: &str,
        attempt: &NewAttempt,
        now: i64,
    ) -> anyhow::Result<()> {
        if !self.messages.contains_key(message_id) {
            bail!("insert or update on table \"attempts\" violates foreign key constraint");
        }
        self.attempts
            .entry(message_id.to_owned())
            .or_default()
            .push(AttemptRow {
                credential_id: attempt.credential_id,
                credential_kind: attempt.credential_kind.map(|k| k.as_str().to_owned()),
                errcode: attempt.errcode,
                outcome: attempt.outcome,
                detail: attempt.detail.clone(),
                at: now,
                msgid: attempt.msgid.clone(),
            });
        Ok(())
    }

    /// The `SETTLE_*` statements: only a row leased under `token` changes.
    fn settle(
        &mut self,
        credential_id: i64,
        token: i64,
        settlement: Settlement,
        now: i64,
    ) -> anyhow::Result<()> {
        let Some(row) = self.credentials.get_mut(&credential_id) else {
            return Ok(());
        };
        if !row.leased_under(token) {
            return Ok(());
        }
        match settlement {
            Settlement::Spent | Settlement::SpentUnproven => {
                // SET right-hand sides read the row as it was.
                let before = row.uses_left;
                if before < 1 {
                    bail!("new row for relation \"credentials\" violates check constraint \"credentials_uses_left_check\"");
                }
                row.uses_left = before - 1;
                if settlement == Settlement::SpentUnproven {
                    row.unproven_uses += 1;
                }
                row.lease_message_id = None;
                row.state = if before <= 1 {
                    CredentialState::Exhausted
                } else {
                    CredentialState::Available
                };
                row.lease_expires_at = None;
                row.lease_token = None;
            }
            Settlement::Retired { errcode } | Settlement::Revoked { errcode } => {
                row.state = CredentialState::Retired;
                row.retired_errcode = Some(errcode);
                row.lease_expires_at = None;
                row.lease_message_id = None;
                row.lease_token = None;
            }
            Settlement::Released => {
                // A long-term ticket was made for one send: used up, not pooled.
                row.state = if row.kind == CredentialKind::LongTerm.as_str() {
                    CredentialState::Exhausted
                } else {
                    CredentialState::Available
                };
                row.lease_expires_at = None;
                row.lease_message_id = None;
                row.lease_token = None;
            }
            Settlement::Parked { until } => {
                row.lease_message_id = None;
                row.lease_expires_at = Some(until);
            }
            Settlement::Kept => return Ok(()),
        }
        row.updated_at = now;
        Ok(())
    }

    /// `FINISH_MESSAGE`: `WHERE id = $1 AND lease_token = $6`.
    /// `FINISH_MESSAGE`, with the event the SQL writes under the same fence
    /// just before it.
    fn finish(&mut self, lease: &Lease, outcome: &MessageOutcome, now: i64) -> bool {
        let finished = self.finish_row(lease, outcome, now);
        if let Some(message) = self.messages.get(&lease.message_id).filter(|_| finished) {
            self.outbox.push(OutboxRowModel {
                event_id: finish_event_id(&lease.message_id),
                message_id: lease.message_id.clone(),
                event_type: EventType::for_finish(outcome.status, outcome.recovered),
                delivered: false,
                idempotency_key: message.idempotency_key.clone(),
                reference: message.reference.clone(),
            });
        }
        finished
    }

    /// `CANCEL_SCHEDULED` / `CAP_SCHEDULED` and the event the SQL writes
    /// in the same transaction (`INSERT_UNLEASED_MESSAGE_EVENT`).
    fn end_unsent(&mut self, id: &str, error_code: &str, now: i64) {
        if let Some(message) = self.messages.get_mut(id) {
            message.status = MessageStatus::Failed;
            message.error_code = Some(error_code.to_owned());
            message.updated_at = now;
            message.next_attempt_at = None;
            let (idempotency_key, reference) =
                (message.idempotency_key.clone(), message.reference.clone());
            self.outbox.push(OutboxRowModel {
                event_id: finish_event_id(id),
                message_id: id.to_owned(),
                event_type: EventType::for_finish(MessageStatus::Failed, false),
                delivered: false,
                idempotency_key,
                reference,
            });
        }
    }

    fn finish_row(&mut self, lease: &Lease, outcome: &MessageOutcome, now: i64) -> bool {
        match self.messages.get_mut(&lease.message_id) {
            Some(message) if message.lease_token == Some(lease.token) => {
                message.status = outcome.status;
                message.error_code = outcome.error_code.map(str::to_owned);
                message.wechat_errcode = outcome.wechat_errcode;
                message.updated_at = now;
                message.lease_until = None;
                message.lease_token = None;
                message.next_attempt_at = None;
                true
            }
            _ => false,
        }
    }

    /// `usable_credential!`: whether the message's user holds what can pay
    /// for it, expiring after `valid_after` — a form_id or prepay_id for a
    /// template message, a grant of its template or a long-term
    /// subscription to it for a subscribe message.
    fn usable_credential(&self, m: &MessageRowModel, valid_after: i64) -> bool {
        let grant_of = m.grant_of();
        self.credentials.values().any(|c| {
            c.appid == m.appid
                && c.openid == m.touser
                && c.state == CredentialState::Available
                && c.expires_at > valid_after
                && c.template_id.as_deref() == grant_of
        }) || (m.channel == Channel::Subscribe
            && self
                .subscriptions
                .get(&(m.appid.clone(), m.touser.clone(), m.template_id.clone()))
                .is_some_and(|s| s.long_term))
    }

    /// `WAKE_USER`: the user's waiting messages that can now be paid for, due now.
    fn wake_user(&mut self, appid: &str, openid: &str, now: i64, valid_after: i64) -> u64 {
        let due: Vec<String> = self
            .messages
            .values()
            .filter(|m| {
                m.status == MessageStatus::Waiting
                    && m.next_attempt_at.is_some_and(|at| at > now)
                    && m.appid == appid
                    && m.touser == openid
                    && self.usable_credential(m, valid_after)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &due {
            if let Some(message) = self.messages.get_mut(id) {
                message.next_attempt_at = Some(now);
            }
        }
        due.len() as u64
    }

    /// `WAKE_IF_CREDENTIAL`, for one message or (`None`) every one.
    fn wake_if_credential(&mut self, only: Option<&str>, now: i64, valid_after: i64) -> u64 {
        let due: Vec<String> = self
            .messages
            .values()
            .filter(|m| {
                m.status == MessageStatus::Waiting
                    && m.next_attempt_at.is_some_and(|at| at > now)
                    && only.is_none_or(|id| m.id == id)
                    && self.usable_credential(m, valid_after)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &due {
            if let Some(message) = self.messages.get_mut(id) {
                message.next_attempt_at = Some(now);
            }
        }
        due.len() as u64
    }

    /// `CLAIM_DUE_WAITING`, `CLAIM_STALE_MESSAGES`: the chosen messages
    /// leased under `token`, in the statement's order.
    fn take_messages(
        &mut self,
        ids: Vec<String>,
        to_pending: bool,
        now: i64,
        lease_until: i64,
        token: i64,
    ) -> Vec<StoredMessage> {
        ids.iter()
            .filter_map(|id| {
                let message = self.messages.get_mut(id)?;
                if to_pending {
                    message.status = MessageStatus::Pending;
                }
                message.lease_until = Some(lease_until);
                message.updated_at = now;
                message.lease_token = Some(token);
                Some(message.stored())
            })
            .collect()
    }
}

/// The first `limit` of `rows` ordered by `key`.
fn first<T, K: Ord>(mut rows: Vec<(K, T)>, limit: i64) -> Vec<T> {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .map(|(_, row)| row)
        .collect()
}

/// The row `INSERT_CREDENTIALS_HEAD` writes for one posted credential.
fn posted_row(id: i64, appid: &str, item: &NewCredential, now: i64) -> CredentialRow {
    CredentialRow {
        id,
        appid: appid.to_owned(),
        openid: item.openid.clone(),
        kind: item.kind.as_str().to_owned(),
        value: item.value.clone(),
        template_id: None,
        uses_left: item.uses,
        unproven_uses: 0,
        state: CredentialState::Available,
        collected_at: item.collected_at,
        expires_at: item.expires_at,
        lease_expires_at: None,
        lease_message_id: None,
        lease_token: None,
        retired_errcode: None,
        created_at: now,
        updated_at: now,
    }
}

#[async_trait]
impl CredentialStore for LedgerModel {
    async fn insert_credentials(
        &self,
        appid: &str,
        items: &[NewCredential],
        now: i64,
    ) -> anyhow::Result<Vec<StoredCredential>> {
        let outcomes = self
            .write(|t| {
                let mut outcomes = Vec::with_capacity(items.len());
                for item in items {
                    let key = (appid.to_owned(), item.value.clone());
                    let outcome = match t.by_value.get(&key) {
                        Some(id) => {
                            // A row the insert found in conflict still
                            // takes an id from the sequence, on both
                            // databases.
                            t.next_credential_id += 1;
                            let owner = &t.credentials[id];
                            StoredCredential::Existing {
                                owner: owner.openid.clone(),
                                kind: owner.kind.clone(),
                            }
                        }
                        None => {
                            let id = t.next_credential_id;
                            t.next_credential_id += 1;
                            t.by_value.insert(key, id);
                            t.credentials.insert(id, posted_row(id, appid, item, now));
                            StoredCredential::Inserted
                        }
                    };
                    outcomes.push(outcome);
                }
                Ok(outcomes)
            })
            .await?;
        // The nudge runs after the commit, as a statement of its own.
        let credited: BTreeSet<&str> = items
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == StoredCredential::Inserted)
            .map(|(item, _)| item.openid.as_str())
            .collect();
        if !credited.is_empty() {
            self.write(|t| {
                for message in t.messages.values_mut() {
                    if message.status == MessageStatus::Waiting
                        && message.channel == Channel::Template
                        && message.next_attempt_at.is_some_and(|at| at > now)
                        && message.appid == appid
                        && credited.contains(message.touser.as_str())
                    {
                        message.next_attempt_at = Some(now);
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(outcomes)
    }

    async fn quota(
        &self,
        appid: &str,
        openid: &str,
        valid_after: i64,
    ) -> anyhow::Result<Vec<KindQuota>> {
        self.read(|t| {
            let mut by_kind: BTreeMap<String, KindQuota> = BTreeMap::new();
            for c in t.credentials.values().filter(|c| {
                c.appid == appid
                    && c.openid == openid
                    && c.state == CredentialState::Available
                    && c.expires_at > valid_after
                    && c.template_id.is_none()
            }) {
                let quota = by_kind.entry(c.kind.clone()).or_insert_with(|| KindQuota {
                    kind: c.kind.clone(),
                    credentials: 0,
                    sends: 0,
                    next_expiry: None,
                });
                quota.credentials += 1;
                quota.sends += c.uses_left;
                quota.next_expiry = Some(
                    quota
                        .next_expiry
                        .map_or(c.expires_at, |e| e.min(c.expires_at)),
                );
            }
            by_kind.into_values().collect()
        })
        .await
    }

    async fn claim_credential(&self, claim: &ClaimRequest<'_>) -> anyhow::Result<Claim> {
        let ClaimRequest {
            appid,
            openid,
            grant_of,
            lease,
            lease_until,
            now,
            ..
        } = *claim;
        self.write(|t| {
            if !t.fence(lease, Some(lease_until)) {
                return Ok(Claim::LeaseLost);
            }
            let claimed = t.claim(claim);
            // `CLAIM_LONG_TERM`, in the same transaction, only when no grant was claimed.
            let claimed = match (claimed, grant_of) {
                (None, Some(template_id)) => {
                    t.claim_long_term(appid, openid, template_id, lease, lease_until, now)
                }
                (claimed, _) => claimed,
            };
            Ok(claimed.map_or(Claim::NoneLeft, Claim::Claimed))
        })
        .await
    }

    async fn release_credentials(&self, ids: &[i64], token: i64, now: i64) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|t| {
            for id in ids {
                t.settle(*id, token, Settlement::Released, now)?;
            }
            Ok(())
        })
        .await
    }

    async fn claim_expired_leases(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<ClaimedCredential>> {
        self.write(|t| {
            let expired = t
                .credentials
                .values()
                .filter(|c| {
                    c.state == CredentialState::Leased
                        && c.lease_expires_at.is_some_and(|at| at <= now)
                })
                .map(|c| ((c.lease_expires_at, c.id), c.id))
                .collect();
            let claimed: Vec<ClaimedCredential> = first(expired, limit)
                .into_iter()
                .filter_map(|id| {
                    let row = t.credentials.get_mut(&id)?;
                    row.lease_expires_at = Some(lease_until);
                    row.updated_at = now;
                    row.lease_token = Some(token);
                    Some(row.claimed())
                })
                .collect();
            // `TAKE_MESSAGES_OF_CLAIMED`, in the same transaction.
            let messages: BTreeSet<String> = t
                .credentials
                .values()
                .filter(|c| c.leased_under(token))
                .filter_map(|c| c.lease_message_id.clone())
                .collect();
            for id in messages {
                if let Some(m) = t.messages.get_mut(&id) {
                    if m.status == MessageStatus::Pending {
                        m.lease_until = Some(lease_until);
                        m.lease_token = Some(token);
                    }
                }
            }
            Ok(claimed)
        })
        .await
    }
}

impl Tables {
    /// `CAP_COUNTED` and the caps' decision (the user's lock is the model's
    /// one writer, as SQLite's).
    fn count_caps(
        &self,
        caps: &[SendCap],
        appid: &str,
        touser: &str,
        template_id: &str,
        now: i64,
    ) -> CapDecision {
        let Some(window) = longest_window(caps, template_id) else {
            return CapDecision::Allow;
        };
        let rows: Vec<(String, String, i64)> = self
            .messages
            .values()
            .filter(|m| m.appid == appid && m.touser == touser)
            .filter(|m| match m.status {
                MessageStatus::Pending | MessageStatus::Waiting => true,
                MessageStatus::Sent | MessageStatus::Unknown => m.updated_at > now - window,
                MessageStatus::Failed => {
                    m.updated_at > now - window
                        && self.attempts.get(&m.id).is_some_and(|attempts| {
                            attempts.iter().any(|a| {
                                matches!(
                                    a.outcome,
                                    AttemptOutcome::Ambiguous | AttemptOutcome::Recovered
                                )
                            })
                        })
                }
                _ => false,
            })
            .map(|m| (m.template_id.clone(), m.status.to_string(), m.updated_at))
            .collect();
        decide_counted(caps, template_id, &rows, now)
    }
}

#[async_trait]
impl SendRulesStore for LedgerModel {
    async fn create_capped_message(&self, start: &CappedStart<'_>) -> anyhow::Result<CapDecision> {
        self.write(|t| {
            let m = start.message;
            let decision = t.count_caps(start.caps, &m.appid, &m.touser, &m.template_id, start.now);
            if decision == CapDecision::Allow {
                t.create_message(m, start.now)?;
            }
            Ok(decision)
        })
        .await
    }

    async fn schedule_message(&self, scheduled: &Scheduled<'_>) -> anyhow::Result<()> {
        self.write(|t| {
            t.create_message(scheduled.message, scheduled.now)?;
            let row = t
                .messages
                .get_mut(&scheduled.message.id)
                .expect("just inserted");
            row.status = MessageStatus::Scheduled;
            row.lease_until = None;
            row.lease_token = None;
            row.next_attempt_at = Some(scheduled.due_at);
            row.send_at = scheduled.send_at;
            Ok(())
        })
        .await
    }

    async fn cancel_scheduled(&self, appid: &str, id: &str, now: i64) -> anyhow::Result<bool> {
        self.write(|t| {
            Ok(match t.messages.get_mut(id) {
                Some(m) if m.appid == appid && m.status == MessageStatus::Scheduled => {
                    t.end_unsent(id, "cancelled", now);
                    true
                }
                _ => false,
            })
        })
        .await
    }

    async fn due_scheduled(&self, now: i64, limit: i64) -> anyhow::Result<Vec<StoredMessage>> {
        self.read(|t| {
            let mut due: Vec<&MessageRowModel> = t
                .messages
                .values()
                .filter(|m| {
                    m.status == MessageStatus::Scheduled
                        && m.next_attempt_at.is_some_and(|at| at <= now)
                })
                .collect();
            due.sort_by_key(|m| m.next_attempt_at);
            due.into_iter()
                .take(limit as usize)
                .map(MessageRowModel::stored)
                .collect()
        })
        .await
    }

    async fn take_scheduled(&self, take: &TakeScheduled<'_>) -> anyhow::Result<Taken> {
        self.write(|t| {
            let Some(m) = t.messages.get(take.id) else {
                return Ok(Taken::Gone);
            };
            let due = m.status == MessageStatus::Scheduled
                && m.next_attempt_at.is_some_and(|at| at <= take.now);
            let decision = t.count_caps(take.caps, &m.appid, &m.touser, &m.template_id, take.now);
            let m = t.messages.get_mut(take.id).expect("read above");
            if let CapDecision::Capped { retry_at_ms, .. } = decision {
                if m.status != MessageStatus::Scheduled {
                    return Ok(Taken::Gone);
                }
                t.end_unsent(take.id, "user_send_limit", take.now);
                return Ok(Taken::Capped { retry_at_ms });
            }
            if !due {
                return Ok(Taken::Gone);
            }
            let late = take.now - m.next_attempt_at.unwrap_or(take.now);
            m.status = MessageStatus::Pending;
            m.lease_until = Some(take.lease_until);
            m.lease_token = Some(take.token);
            m.updated_at = take.now;
            m.wait_until = m.wait_until.map(|at| at + late);
            m.next_attempt_at = None;
            Ok(Taken::Taken(m.stored()))
        })
        .await
    }

    async fn reschedule(&self, id: &str, due_at: i64, now: i64) -> anyhow::Result<bool> {
        self.write(|t| {
            Ok(match t.messages.get_mut(id) {
                Some(m) if m.status == MessageStatus::Scheduled => {
                    let moved = due_at - m.next_attempt_at.unwrap_or(due_at);
                    m.wait_until = m.wait_until.map(|at| at + moved);
                    m.next_attempt_at = Some(due_at);
                    m.updated_at = now;
                    true
                }
                _ => false,
            })
        })
        .await
    }

    async fn hold_message(&self, lease: &Lease, due_at: i64, now: i64) -> anyhow::Result<bool> {
        self.write(|t| {
            Ok(match t.messages.get_mut(&lease.message_id) {
                Some(m) if m.held_by(lease) => {
                    m.status = MessageStatus::Scheduled;
                    m.next_attempt_at = Some(due_at);
                    m.lease_until = None;
                    m.lease_token = None;
                    m.updated_at = now;
                    true
                }
                _ => false,
            })
        })
        .await
    }
}

#[async_trait]
impl MessageStore for LedgerModel {
    async fn start_send(&self, start: &StartSend) -> anyhow::Result<Option<ClaimedCredential>> {
        self.write(|t| {
            let message = &start.message;
            t.create_message(message, start.now)?;
            let lease = Lease {
                message_id: message.id.clone(),
                token: message.lease_token,
            };
            Ok(t.claim(&ClaimRequest {
                appid: &message.appid,
                openid: &message.touser,
                grant_of: message.grant_of(),
                lease: &lease,
                valid_after: start.valid_after,
                lease_until: message.lease_until,
                now: start.now,
            }))
        })
        .await
    }

    async fn create_message(&self, message: &NewMessage, now: i64) -> anyhow::Result<()> {
        self.write(|t| t.create_message(message, now)).await
    }

    async fn end_send(&self, end: &EndSend) -> anyhow::Result<bool> {
        // The batch script: the settlement (fenced by the credential's
        // token), the attempt, the message finished (fenced by its token).
        self.write(|t| {
            t.settle(
                end.credential_id,
                end.lease_token,
                Settlement::Spent,
                end.now,
            )?;
            t.insert_attempt(&end.message_id, &end.attempt, end.now)?;
            let lease = Lease {
                message_id: end.message_id.clone(),
                token: end.lease_token,
            };
            Ok(t.finish(&lease, &end.outcome, end.now))
        })
        .await
    }

    async fn record_attempt(
        &self,
        lease: &Lease,
        attempt: &NewAttempt,
        settlement: Option<(i64, Settlement)>,
        outcome: Option<&MessageOutcome>,
        now: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| {
            t.insert_attempt(&lease.message_id, attempt, now)?;
            let held = t.fence(lease, None);
            if held {
                if let Some((credential_id, settlement)) = settlement {
                    t.settle(credential_id, lease.token, settlement, now)?;
                    if let Settlement::Revoked { errcode } = settlement {
                        t.revoke(credential_id, errcode, now);
                    }
                }
                if let Some(outcome) = outcome {
                    t.finish(lease, outcome, now);
                }
            }
            Ok(held)
        })
        .await
    }

    async fn finish_message(
        &self,
        lease: &Lease,
        outcome: &MessageOutcome,
        now: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| Ok(t.finish(lease, outcome, now))).await
    }

    async fn wait_message(
        &self,
        lease: &Lease,
        next_attempt_at: i64,
        valid_after: i64,
        now: i64,
    ) -> anyhow::Result<bool> {
        let waiting = self
            .write(|t| {
                let holds = match t.messages.get(&lease.message_id) {
                    Some(m) => t.usable_credential(m, valid_after),
                    None => false,
                };
                match t.messages.get_mut(&lease.message_id) {
                    Some(m) if m.held_by(lease) => {
                        m.status = MessageStatus::Waiting;
                        m.lease_until = None;
                        m.lease_token = None;
                        m.updated_at = now;
                        m.next_attempt_at = Some(if holds { now } else { next_attempt_at });
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            })
            .await?;
        if !waiting {
            return Ok(false);
        }
        self.write(|t| {
            t.wake_if_credential(Some(&lease.message_id), now, valid_after);
            Ok(())
        })
        .await?;
        Ok(true)
    }

    async fn wait_for_token(
        &self,
        lease: &Lease,
        next_attempt_at: i64,
        now: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| match t.messages.get_mut(&lease.message_id) {
            Some(m) if m.held_by(lease) => {
                m.status = MessageStatus::Waiting;
                m.lease_until = None;
                m.lease_token = None;
                m.updated_at = now;
                m.next_attempt_at = Some(next_attempt_at);
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn wake_waiting_with_credentials(
        &self,
        now: i64,
        valid_after: i64,
    ) -> anyhow::Result<u64> {
        self.write(|t| Ok(t.wake_if_credential(None, now, valid_after)))
            .await
    }

    async fn renew_lease(&self, lease: &Lease, lease_until: i64) -> anyhow::Result<bool> {
        self.write(|t| {
            if !t.fence(lease, Some(lease_until)) {
                return Ok(false);
            }
            for c in t.credentials.values_mut() {
                if c.lease_message_id.as_deref() == Some(lease.message_id.as_str())
                    && c.leased_under(lease.token)
                {
                    c.lease_expires_at = Some(lease_until);
                }
            }
            Ok(true)
        })
        .await
    }

    async fn claim_due_waiting(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredMessage>> {
        self.write(|t| {
            let due = t
                .messages
                .values()
                .filter(|m| {
                    m.status == MessageStatus::Waiting
                        && m.next_attempt_at.is_some_and(|at| at <= now)
                })
                .map(|m| ((m.next_attempt_at, m.id.clone()), m.id.clone()))
                .collect();
            Ok(t.take_messages(first(due, limit), true, now, lease_until, token))
        })
        .await
    }

    async fn claim_stale_messages(
        &self,
        now: i64,
        lease_until: i64,
        token: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredMessage>> {
        self.write(|t| {
            let holding: BTreeSet<&str> = t
                .credentials
                .values()
                .filter(|c| c.state == CredentialState::Leased)
                .filter_map(|c| c.lease_message_id.as_deref())
                .collect();
            let stale = t
                .messages
                .values()
                .filter(|m| {
                    m.status == MessageStatus::Pending
                        && m.lease_until.is_some_and(|at| at <= now)
                        && !holding.contains(m.id.as_str())
                })
                .map(|m| ((m.lease_until, m.id.clone()), m.id.clone()))
                .collect();
            let chosen = first(stale, limit);
            Ok(t.take_messages(chosen, false, now, lease_until, token))
        })
        .await
    }

    async fn stored_message(&self, id: &str) -> anyhow::Result<Option<StoredMessage>> {
        self.read(|t| t.messages.get(id).map(MessageRowModel::stored))
            .await
    }

    async fn message(
        &self,
        appid: &str,
        id: &str,
    ) -> anyhow::Result<Option<(MessageRow, Vec<AttemptRow>)>> {
        self.read(|t| {
            let m = t.messages.get(id).filter(|m| m.appid == appid)?;
            let row = stats::message_row(m);
            Some((row, t.attempts.get(id).cloned().unwrap_or_default()))
        })
        .await
    }
}

#[async_trait]
impl IdempotencyStore for LedgerModel {
    async fn begin_idempotent(
        &self,
        request: &IdempotencyRequest<'_>,
    ) -> anyhow::Result<IdempotencyBegin> {
        let IdempotencyRequest {
            appid,
            key,
            request_hash,
            message_id,
            now,
            expires_at,
        } = *request;
        self.write(|t| {
            let slot = (appid.to_owned(), key.to_owned());
            match t.idempotency.get(&slot) {
                Some(existing) if existing.expires_at > now => {
                    Ok(IdempotencyBegin::Existing(existing.record.clone()))
                }
                _ => {
                    t.idempotency.insert(
                        slot,
                        IdempotencyRow {
                            record: IdempotencyRecord {
                                request_hash: request_hash.to_owned(),
                                message_id: message_id.to_owned(),
                                state: IdempotencyState::InFlight,
                                response_status: None,
                                response_body: None,
                            },
                            expires_at,
                        },
                    );
                    Ok(IdempotencyBegin::Started)
                }
            }
        })
        .await
    }

    async fn complete_idempotent(
        &self,
        appid: &str,
        key: &str,
        message_id: &str,
        status: u16,
        body: &str,
    ) -> anyhow::Result<()> {
        self.write(|t| {
            if let Some(row) = t.idempotency.get_mut(&(appid.to_owned(), key.to_owned())) {
                if row.record.message_id == message_id {
                    row.record.state = IdempotencyState::Done;
                    row.record.response_status = Some(i64::from(status));
                    row.record.response_body = Some(body.to_owned());
                }
            }
            Ok(())
        })
        .await
    }
}

impl Tables {
    /// What each of the prompt's decisions does, by `TEMPLATE_IS_LONG_TERM`.
    fn prompt_effects(&self, prompt: &NewPrompt) -> Vec<PromptEffect> {
        let mut effects = Vec::with_capacity(prompt.decisions.len());
        for (decision, plan) in prompt.decisions.iter().zip(&prompt.plans) {
            // `TEMPLATE_IS_LONG_TERM`
            let long_term = matches!(plan, EffectPlan::ByTemplateType { .. })
                && self
                    .templates
                    .get(&(prompt.appid.clone(), decision.template_id.clone()))
                    .is_some_and(|row| row.long_term);
            effects.push(plan.resolve(LedgerFacts {
                long_term,
                message_found: false,
            }));
        }
        effects
    }

    /// `RECORD_DECISION`: an upsert whose long_term only turns on.
    fn record_decision(
        &mut self,
        prompt: &NewPrompt,
        decision: &PromptDecision,
        effect: PromptEffect,
        now: i64,
    ) {
        let on = effect == PromptEffect::LongTermOn;
        self.subscriptions
            .entry((
                prompt.appid.clone(),
                prompt.openid.clone(),
                decision.template_id.clone(),
            ))
            .and_modify(|row| {
                row.decision = decision.decision;
                row.decided_at = now;
                row.long_term = row.long_term || on;
                row.updated_at = now;
            })
            .or_insert(SubscriptionRow {
                decision: decision.decision,
                decided_at: now,
                long_term: on,
                updated_at: now,
            });
    }

    /// `INSERT_GRANT`. The SQL binds `grant:{uuid}`; the model names the
    /// prompt instead (as unique), so that the invariants can tell which
    /// accept a grant came from.
    fn insert_grant(&mut self, prompt: &NewPrompt, decision: &PromptDecision, now: i64) {
        let appid = &prompt.appid;
        let openid = &prompt.openid;
        let value = format!(
            "grant:{openid}:{}:{}",
            prompt.request_id, decision.template_id
        );
        let id = self.next_credential_id;
        self.next_credential_id += 1;
        self.by_value.insert((appid.clone(), value.clone()), id);
        self.credentials.insert(
            id,
            CredentialRow {
                id,
                appid: appid.clone(),
                openid: openid.clone(),
                kind: CredentialKind::Subscribe.as_str().to_owned(),
                value,
                template_id: Some(decision.template_id.clone()),
                uses_left: 1,
                unproven_uses: 0,
                state: CredentialState::Available,
                collected_at: now,
                expires_at: NEVER_EXPIRES_MS,
                lease_expires_at: None,
                lease_message_id: None,
                lease_token: None,
                retired_errcode: None,
                created_at: now,
                updated_at: now,
            },
        );
    }
}

#[async_trait]
impl SubscriptionStore for LedgerModel {
    async fn record_prompt(&self, prompt: &NewPrompt, now: i64) -> anyhow::Result<PromptRecord> {
        let record = self
            .write(|t| {
                let effects = t.prompt_effects(prompt);
                // `INSERT_PROMPT ... ON CONFLICT DO NOTHING`, then `PROMPT`.
                let key = (
                    prompt.appid.clone(),
                    prompt.openid.clone(),
                    prompt.request_id.clone(),
                );
                if let Some(earlier) = t.prompts.get(&key) {
                    return Ok(PromptRecord::Repeated {
                        request_hash: earlier.request_hash.clone(),
                        effects: earlier.effects.clone(),
                    });
                }
                t.prompts.insert(
                    key,
                    PromptRow {
                        request_hash: prompt.request_hash.clone(),
                        effects: effects.clone(),
                        created_at: now,
                    },
                );
                for (decision, effect) in prompt.decisions.iter().zip(&effects) {
                    t.record_decision(prompt, decision, *effect, now);
                    if *effect == PromptEffect::Granted {
                        t.insert_grant(prompt, decision, now);
                    }
                }
                Ok(PromptRecord::Recorded(effects))
            })
            .await?;
        if let PromptRecord::Recorded(effects) = &record {
            if effects.iter().any(|e| *e != PromptEffect::Recorded) {
                // `WAKE_USER`, after the commit, as a statement of its own.
                self.write(|t| Ok(t.wake_user(&prompt.appid, &prompt.openid, now, now)))
                    .await?;
            }
        }
        Ok(record)
    }

    async fn record_push(
        &self,
        _event: &NewPushEvent,
        _now: i64,
    ) -> anyhow::Result<Vec<PushItemOutcome>> {
        bail!("the simulation does not model WeChat's message push")
    }

    async fn subscription_quota(
        &self,
        appid: &str,
        openid: &str,
    ) -> anyhow::Result<Vec<TemplateQuota>> {
        self.read(|t| {
            t.subscriptions
                .iter()
                .filter(|((a, o, _), _)| a == appid && o == openid)
                .map(|((_, _, template_id), row)| TemplateQuota {
                    template_id: template_id.clone(),
                    decision: row.decision,
                    decided_at: row.decided_at,
                    long_term: row.long_term,
                    grants: t
                        .credentials
                        .values()
                        .filter(|c| {
                            c.appid == appid
                                && c.openid == openid
                                && c.template_id.as_deref() == Some(template_id.as_str())
                                && c.kind == CredentialKind::Subscribe.as_str()
                                && c.state == CredentialState::Available
                        })
                        .count() as i64,
                })
                .collect()
        })
        .await
    }

    /// The push receiver is not modelled: the simulation's WeChat does not
    /// push, so nothing calls this.
    async fn message_of_msgid(
        &self,
        appid: &str,
        openid: &str,
        msgid: &str,
    ) -> anyhow::Result<Option<String>> {
        // `MESSAGE_OF_MSGID`
        self.read(|t| {
            t.attempts.iter().find_map(|(message_id, attempts)| {
                let message = t.messages.get(message_id)?;
                let ours = message.appid == appid && message.touser == openid;
                (ours && attempts.iter().any(|a| a.msgid.as_deref() == Some(msgid)))
                    .then(|| message_id.clone())
            })
        })
        .await
    }
}

#[async_trait]
impl TemplateStore for LedgerModel {
    async fn send_templates(&self, appid: &str) -> anyhow::Result<SendTemplates> {
        // `DECIDED_TEMPLATES`. The model's catalogue keeps only channels (no
        // content to check a send against): its subscribe templates are
        // listed with the ones users decided on, which the send path takes
        // the same way (channel subscribe, nothing to check against).
        self.read(|t| {
            let catalogue = t
                .templates
                .iter()
                .filter(|((app, _), row)| app == appid && row.channel == Channel::Subscribe)
                .map(|((_, template_id), _)| template_id.clone());
            let decided = t
                .subscriptions
                .keys()
                .filter(|(app, _, _)| app == appid)
                .map(|(_, _, template_id)| template_id.clone());
            SendTemplates::new(Vec::new(), catalogue.chain(decided).collect::<Vec<_>>())
        })
        .await
    }

    // The simulation runs the send path, which does not read the template
    // catalogue (yet): none is modelled, and every call says so.
    async fn replace_templates_batch(
        &self,
        _appid: &str,
        _channel: formid_gateway::ledger::states::Channel,
        _templates: &[formid_gateway::storage::TemplateRecord],
    ) -> anyhow::Result<()> {
        bail!("the simulation does not model the template catalogue")
    }

    async fn upsert_template(
        &self,
        _appid: &str,
        _template: &formid_gateway::storage::TemplateRecord,
    ) -> anyhow::Result<()> {
        bail!("the simulation does not model the template catalogue")
    }

    async fn delete_template(&self, _appid: &str, _template_id: &str) -> anyhow::Result<bool> {
        bail!("the simulation does not model the template catalogue")
    }

    async fn templates(
        &self,
        _appid: &str,
    ) -> anyhow::Result<Vec<formid_gateway::storage::TemplateRecord>> {
        Ok(Vec::new())
    }

    async fn template(
        &self,
        _appid: &str,
        _template_id: &str,
    ) -> anyhow::Result<Option<formid_gateway::storage::TemplateRecord>> {
        Ok(None)
    }
}

#[async_trait]
impl AppStore for LedgerModel {
    async fn app_state(&self, appid: &str) -> anyhow::Result<AppState> {
        self.read(|t| {
            t.apps
                .get(appid)
                .map(|a| AppState {
                    access_token: a.access_token.clone(),
                    token_expires_at: a.token_expires_at,
                    token_fetched_at: a.token_fetched_at,
                    send_blocked_until: a.send_blocked_until,
                    token_fetch_tat: a.token_fetch_tat,
                    token_checked_at: a.token_checked_at,
                })
                .unwrap_or_default()
        })
        .await
    }

    async fn try_lease_token_refresh(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| match t.apps.get_mut(appid) {
            Some(app)
                if app.refresh_holder.is_none()
                    || app.refresh_holder.as_deref() == Some(holder)
                    || app.refresh_lease_until.is_some_and(|at| at <= now) =>
            {
                app.refresh_holder = Some(holder.to_owned());
                app.refresh_lease_until = Some(until);
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn release_token_refresh(&self, appid: &str, holder: &str) -> anyhow::Result<()> {
        self.write(|t| {
            if let Some(app) = t.apps.get_mut(appid) {
                if app.refresh_holder.as_deref() == Some(holder) {
                    app.refresh_holder = None;
                    app.refresh_lease_until = None;
                }
            }
            Ok(())
        })
        .await
    }

    async fn store_token(
        &self,
        appid: &str,
        token: &str,
        expires_at: i64,
        fetched_at: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| match t.apps.get_mut(appid) {
            Some(app) if app.token_fetched_at.is_none_or(|at| at <= fetched_at) => {
                app.access_token = Some(token.to_owned());
                app.token_expires_at = Some(expires_at);
                app.token_fetched_at = Some(fetched_at);
                app.token_checked_at = None;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn take_token_fetch(
        &self,
        appid: &str,
        seen: Option<i64>,
        next: i64,
    ) -> anyhow::Result<bool> {
        self.write(|t| match t.apps.get_mut(appid) {
            Some(app) if app.token_fetch_tat == seen => {
                app.token_fetch_tat = Some(next);
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn record_token_check(&self, appid: &str, token: &str, at: i64) -> anyhow::Result<bool> {
        self.write(|t| match t.apps.get_mut(appid) {
            Some(app) if app.access_token.as_deref() == Some(token) => {
                app.token_checked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn take_force_refresh(
        &self,
        appid: &str,
        china_day: i64,
        now: i64,
        per_day: u32,
    ) -> anyhow::Result<bool> {
        self.write(|t| match t.apps.get_mut(appid) {
            Some(app)
                if app.force_refreshed_at.is_none_or(|at| at <= now - 30_000)
                    && (app.force_refresh_day.is_none()
                        || app.force_refresh_day != Some(china_day)
                        || app.force_refresh_count < i64::from(per_day)) =>
            {
                app.force_refresh_count = if app.force_refresh_day == Some(china_day) {
                    app.force_refresh_count + 1
                } else {
                    1
                };
                app.force_refresh_day = Some(china_day);
                app.force_refreshed_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn block_sends(&self, appid: &str, until: i64, _now: i64) -> anyhow::Result<()> {
        self.write(|t| {
            if let Some(app) = t.apps.get_mut(appid) {
                app.send_blocked_until = Some(until);
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl MaintenanceStore for LedgerModel {
    async fn ping(&self) -> anyhow::Result<()> {
        self.read(|_| ()).await
    }

    async fn ensure_app(&self, appid: &str) -> anyhow::Result<()> {
        self.write(|t| {
            t.apps.entry(appid.to_owned()).or_default();
            Ok(())
        })
        .await
    }

    /// `MESSAGE_BACKLOG`: per status (waiting, pending, scheduled, in that
    /// order), the count of each app's messages in it.
    async fn message_backlog(&self) -> anyhow::Result<Vec<BacklogCount>> {
        self.read(|t| {
            let mut counts = Vec::new();
            for status in [
                MessageStatus::Waiting,
                MessageStatus::Pending,
                MessageStatus::Scheduled,
            ] {
                let mut by_app: BTreeMap<&str, i64> = BTreeMap::new();
                for message in t.messages.values().filter(|m| m.status == status) {
                    *by_app.entry(message.appid.as_str()).or_default() += 1;
                }
                counts.extend(by_app.into_iter().map(|(appid, count)| BacklogCount {
                    appid: appid.to_owned(),
                    status,
                    count,
                }));
            }
            counts
        })
        .await
    }

    async fn sweep(
        &self,
        now: i64,
        credential_retention_ms: i64,
        message_retention_ms: i64,
    ) -> anyhow::Result<SweepReport> {
        self.write(|t| {
            let mut report = SweepReport::default();
            for c in t.credentials.values_mut() {
                if c.state == CredentialState::Available && c.expires_at <= now {
                    c.state = CredentialState::Expired;
                    c.updated_at = now;
                    report.expired += 1;
                }
            }
            let cutoff = now - credential_retention_ms;
            let old: Vec<i64> = t
                .credentials
                .values()
                .filter(|c| {
                    matches!(
                        c.state,
                        CredentialState::Exhausted
                            | CredentialState::Retired
                            | CredentialState::Expired
                    ) && (c.expires_at <= cutoff
                        || (c.expires_at == NEVER_EXPIRES_MS && c.updated_at <= cutoff))
                })
                .map(|c| c.id)
                .collect();
            for id in old {
                if let Some(row) = t.credentials.remove(&id) {
                    t.by_value.remove(&(row.appid, row.value));
                    report.deleted_credentials += 1;
                }
            }
            let cutoff = now - message_retention_ms;
            let old: Vec<String> = t
                .messages
                .values()
                .filter(|m| m.updated_at <= cutoff && m.status != MessageStatus::Pending)
                .map(|m| m.id.clone())
                .collect();
            for id in old {
                t.messages.remove(&id);
                t.attempts.remove(&id);
                report.deleted_messages += 1;
            }
            let before = t.idempotency.len();
            t.idempotency.retain(|_, row| row.expires_at > now);
            report.deleted_idempotency_keys = (before - t.idempotency.len()) as u64;
            let before = t.prompts.len();
            t.prompts.retain(|_, row| row.created_at > cutoff);
            report.deleted_prompts = (before - t.prompts.len()) as u64;
            Ok(report)
        })
        .await
    }
}

/// Kinds by their stored name (`credentials.kind`).
pub fn kind_of(name: &str) -> Option<CredentialKind> {
    CredentialKind::parse(name)
}

/// Whether an attempt outcome proves a delivery.
pub fn proves_delivery(outcome: AttemptOutcome) -> bool {
    matches!(
        outcome,
        AttemptOutcome::Sent | AttemptOutcome::SentOnProbe | AttemptOutcome::ConfirmedSent
    )
}

/// Sessions and stored keys are not part of the ledger's promises the
/// simulation checks; the model keeps them in plain maps beside its tables so
/// that it is a whole `Storage`.
#[derive(Debug, Default)]
pub struct AuthTables {
    sessions: Vec<(formid_gateway::storage::NewSession, Option<i64>)>,
    keys: Vec<formid_gateway::storage::ApiKeyRow>,
}

impl LedgerModel {
    fn auth(&self) -> std::sync::MutexGuard<'_, AuthTables> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn session_row(
    (session, revoked_at): &(formid_gateway::storage::NewSession, Option<i64>),
) -> formid_gateway::storage::SessionRow {
    formid_gateway::storage::SessionRow {
        id: session.id.clone(),
        appid: session.appid.clone(),
        openid: session.openid.clone(),
        unionid: session.unionid.clone(),
        token_salt: session.token_salt.clone(),
        created_at: session.created_at,
        expires_at: session.expires_at,
        revoked_at: *revoked_at,
    }
}

#[async_trait]
impl formid_gateway::storage::SessionStore for LedgerModel {
    async fn insert_session(
        &self,
        session: &formid_gateway::storage::NewSession,
    ) -> anyhow::Result<bool> {
        let mut tables = self.auth();
        let taken = tables.sessions.iter().any(|(stored, _)| {
            stored.appid == session.appid && stored.code_hash == session.code_hash
        });
        if !taken {
            tables.sessions.push((session.clone(), None));
        }
        Ok(!taken)
    }

    async fn session_by_token(
        &self,
        token_hash: &str,
    ) -> anyhow::Result<Option<formid_gateway::storage::SessionRow>> {
        let tables = self.auth();
        Ok(tables
            .sessions
            .iter()
            .find(|(stored, _)| stored.token_hash == token_hash)
            .map(session_row))
    }

    async fn session_by_code(
        &self,
        appid: &str,
        code_hash: &str,
    ) -> anyhow::Result<Option<formid_gateway::storage::SessionRow>> {
        let tables = self.auth();
        Ok(tables
            .sessions
            .iter()
            .find(|(stored, _)| stored.appid == appid && stored.code_hash == code_hash)
            .map(session_row))
    }

    async fn revoke_session(&self, id: &str, now: i64) -> anyhow::Result<bool> {
        let mut tables = self.auth();
        Ok(tables
            .sessions
            .iter_mut()
            .find(|(stored, revoked)| stored.id == id && revoked.is_none())
            .map(|(_, revoked)| *revoked = Some(now))
            .is_some())
    }

    async fn delete_expired_sessions(&self, now: i64) -> anyhow::Result<u64> {
        let mut tables = self.auth();
        let before = tables.sessions.len();
        tables
            .sessions
            .retain(|(stored, _)| stored.expires_at > now);
        Ok((before - tables.sessions.len()) as u64)
    }
}

#[async_trait]
impl formid_gateway::storage::KeyStore for LedgerModel {
    async fn insert_api_key(
        &self,
        key: &formid_gateway::storage::NewApiKey,
    ) -> anyhow::Result<bool> {
        let mut tables = self.auth();
        if tables.keys.iter().any(|stored| stored.name == key.name) {
            return Ok(false);
        }
        tables.keys.push(formid_gateway::storage::ApiKeyRow {
            key_id: key.key_id.clone(),
            name: key.name.clone(),
            key_hash: key.key_hash.clone(),
            apps: key.apps.clone(),
            scopes: key.scopes.clone(),
            created_at: key.created_at,
            last_used_at: None,
            revoked_at: None,
        });
        Ok(true)
    }

    async fn api_key(
        &self,
        key_id: &str,
    ) -> anyhow::Result<Option<formid_gateway::storage::ApiKeyRow>> {
        let tables = self.auth();
        Ok(tables.keys.iter().find(|key| key.key_id == key_id).cloned())
    }

    async fn api_keys(&self) -> anyhow::Result<Vec<formid_gateway::storage::ApiKeyRow>> {
        let tables = self.auth();
        Ok(tables.keys.clone())
    }

    async fn revoke_api_key(&self, name: &str, now: i64) -> anyhow::Result<bool> {
        let mut tables = self.auth();
        Ok(tables
            .keys
            .iter_mut()
            .find(|key| key.name == name && key.revoked_at.is_none())
            .map(|key| key.revoked_at = Some(now))
            .is_some())
    }

    async fn touch_api_key(&self, key_id: &str, now: i64) -> anyhow::Result<()> {
        let mut tables = self.auth();
        if let Some(key) = tables.keys.iter_mut().find(|key| key.key_id == key_id) {
            key.last_used_at = Some(now);
        }
        Ok(())
    }
}

/// The outbox as the model keeps it: events of message ends for one
/// receiver subscribed to everything (the real tables hold endpoints; the
/// model holds what reaches that receiver). The endpoint administration is
/// the HTTP suite's (tests/api/webhooks.rs).
#[async_trait]
impl WebhookStore for LedgerModel {
    async fn create_endpoint(&self, _endpoint: &NewEndpoint) -> anyhow::Result<()> {
        Ok(())
    }

    async fn endpoints(&self, _appid: &str) -> anyhow::Result<Vec<WebhookEndpoint>> {
        Ok(Vec::new())
    }

    async fn endpoint(&self, _appid: &str, _id: &str) -> anyhow::Result<Option<WebhookEndpoint>> {
        Ok(None)
    }

    async fn disable_endpoint(&self, _: &str, _: &str, _: &NewEvent) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn rotate_secret(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: i64,
        _: i64,
    ) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn enqueue_test_event(&self, _: &str, _: &str, _: &str, _: i64) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn record_event(&self, _event: &NewEvent) -> anyhow::Result<()> {
        Ok(())
    }

    async fn replay_failed(&self, _: &str, _: i64, _: i64) -> anyhow::Result<u64> {
        Ok(0)
    }

    async fn webhook_attempts(&self, _: &str, _: i64) -> anyhow::Result<Vec<WebhookAttemptRow>> {
        Ok(Vec::new())
    }

    async fn lease_events(
        &self,
        _: i64,
        _: i64,
        _: i64,
        _: i64,
    ) -> anyhow::Result<Vec<LeasedEvent>> {
        Ok(Vec::new())
    }

    async fn record_delivery(&self, _record: &DeliveryRecord) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn sweep_webhooks(&self, _cutoff: i64) -> anyhow::Result<u64> {
        Ok(0)
    }
}

impl LedgerModel {
    /// The receiver comes up: every event of the outbox not yet delivered
    /// is delivered (at least once: a delivered one may come again).
    pub fn deliver_outbox(&self) -> usize {
        let mut inner = self.lock();
        let mut delivered = 0;
        for event in inner.tables.outbox.iter_mut().filter(|e| !e.delivered) {
            event.delivered = true;
            delivered += 1;
        }
        delivered
    }
}
