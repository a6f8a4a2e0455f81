//! The body of the storage's groups shared by both backends, as a macro.
//!
//! The SQLite and PostgreSQL implementations differ only in how they connect,
//! how a write transaction begins (`BEGIN IMMEDIATE` on SQLite) and whether a
//! claim adds `FOR UPDATE SKIP LOCKED`; every statement and every binding is
//! the same. What a backend provides is the [`Backend`] trait: its pools, its
//! group commit, how it begins a write, its claims' row lock.
//!
//! Why a macro over [`Backend`] rather than one generic
//! `impl<B: Backend> CredentialStore for B`: sqlx's executor, encode, decode
//! and `FromRow` traits are per database, so a generic body needs a bound for
//! every bound value type and every row type on `B::Db` and on its
//! connection (`for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c,
//! Database = B::Db>`, `i64: Encode<'q, B::Db> + Type<B::Db>`, … for each of
//! some forty statements), and sqlx's `Any` driver would blur the dialects.
//! So the one body is written once here and stamped out for each backend
//! type ([`impl_storage!`]); the expansion reaches the backend only through
//! [`Backend`] and names everything else by full path, so it depends on
//! nothing its invoking file imports. The batched start and end of a send
//! are the one part written per backend (`BatchWriter` in `sqlite.rs` and
//! `postgres.rs`).

use std::future::Future;

use super::group_commit::GroupCommit;

/// What a backend gives the shared body of the storage ([`impl_storage!`]).
pub(crate) trait Backend {
    /// The sqlx database the backend runs on.
    type Db: sqlx::Database;

    /// What fills the `{lock}` slot of claim statements (`sql::with_lock`).
    const CLAIM_LOCK: &'static str;

    /// The statement that serialises one user's capped sends inside a write
    /// transaction (its key bound as `$1`), when the backend's writes are
    /// not serialised already.
    const USER_LOCK: Option<&'static str>;

    /// The pool writes go through.
    fn writer(&self) -> &sqlx::Pool<Self::Db>;

    /// The pool reads go through.
    fn reader(&self) -> &sqlx::Pool<Self::Db>;

    /// Runs the common start and end of a send, in batches the backend writes.
    fn group(&self) -> &GroupCommit;

    /// Begins a transaction that writes.
    fn begin_write(
        &self,
    ) -> impl Future<Output = anyhow::Result<sqlx::Transaction<'static, Self::Db>>> + Send;
}

/// Implements every group of [`Storage`](crate::storage::Storage) for
/// `$storage`, a [`Backend`].
macro_rules! impl_storage {
    ($storage:ty) => {
        // Everything the body names, named here by full path: the expansion
        // depends on nothing the invoking file imports.
        const _: () = {
            use ::std::collections::HashSet;

            use ::anyhow::Context as _;

            use $crate::ledger::kinds::CredentialKind;
            use $crate::ledger::states::{Channel, CredentialState, Decision, PushEffect};
            use $crate::storage::shared::{bind_message, Backend, INSERT_CHUNK};
            use formid_core::webhooks::EventType;
            use $crate::storage::{
                sql, AppState, AppStore, AttemptRow, Claim,
                ClaimRequest, ClaimedCredential, ClaimedRow, CredentialStore, EndSend,
                IdempotencyBegin, IdempotencyRequest, IdempotencyStore, KindQuota,
                Lease, MaintenanceStore, MessageOutcome, MessageRow, MessageStore, NewAttempt, NewEvent,
                NewCredential, NewMessage, NewPrompt, NewPushEvent, PromptEffect, PromptRecord,
                EffectPlan, LedgerFacts, PushAction, PushItem, PushItemOutcome, SendTemplates, Settlement, StartSend,
                StoredCredential, StoredMessage, SubscriptionStore, SweepReport, TemplateQuota, TemplateRecord,
                TemplateStore, UserTemplate,
            };

            #[async_trait::async_trait]
            impl CredentialStore for $storage {
                async fn insert_credentials(
                    &self,
                    appid: &str,
                    items: &[NewCredential],
                    now: i64,
                ) -> anyhow::Result<Vec<StoredCredential>> {
                    let mut tx = self.begin_write().await?;
                    let mut inserted = HashSet::new();
                    for chunk in items.chunks(INSERT_CHUNK) {
                        let mut builder = sqlx::QueryBuilder::<<Self as Backend>::Db>::new(sql::INSERT_CREDENTIALS_HEAD);
                        Self::push_credential_values(&mut builder, appid, chunk, now);
                        builder.push(sql::INSERT_CREDENTIALS_TAIL);
                        let rows: Vec<(String, String)> = builder
                            .build_query_as()
                            .fetch_all(&mut *tx)
                            .await
                            .context("inserting credentials")?;
                        inserted.extend(rows);
                    }
                    let mut outcomes = Vec::with_capacity(items.len());
                    for item in items {
                        let key = (item.kind.as_str().to_owned(), item.value.clone());
                        let outcome = if inserted.remove(&key) {
                            StoredCredential::Inserted
                        } else {
                            let (owner, kind): (String, String) = sqlx::query_as(sql::CREDENTIAL_OWNER)
                                .bind(appid)
                                .bind(&item.value)
                                .fetch_one(&mut *tx)
                                .await
                                .context("looking up the owner of a known credential")?;
                            StoredCredential::Existing { owner, kind }
                        };
                        outcomes.push(outcome);
                    }
                    tx.commit().await.context("committing credentials")?;
                    // Messages waiting for these users are due now: one statement,
                    // served by the partial index on waiting messages (nothing to
                    // scan when none wait). Why after the commit, in a snapshot of
                    // its own: see `sql::WAKE_IF_CREDENTIAL` (a wait that commits
                    // meanwhile either sees these rows or is seen by this).
                    let mut credited: Vec<&str> = items
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, outcome)| **outcome == StoredCredential::Inserted)
                        .map(|(item, _)| item.openid.as_str())
                        .collect();
                    credited.sort_unstable();
                    credited.dedup();
                    for users in credited.chunks(INSERT_CHUNK) {
                        let mut builder = sqlx::QueryBuilder::<<Self as Backend>::Db>::new(sql::NUDGE_WAITING_HEAD);
                        builder.push_bind(now);
                        // Form_ids and prepay_ids pay for template messages only.
                        builder.push(
                            " WHERE status = 'waiting' AND channel = 'template' AND next_attempt_at > ",
                        );
                        builder.push_bind(now);
                        builder.push(" AND appid = ");
                        builder.push_bind(appid);
                        builder.push(" AND touser IN (");
                        let mut list = builder.separated(", ");
                        for user in users {
                            list.push_bind(*user);
                        }
                        builder.push(")");
                        builder
                            .build()
                            .execute(self.writer())
                            .await
                            .context("waking waiting messages")?;
                    }
                    Ok(outcomes)
                }

                async fn quota(
                    &self,
                    appid: &str,
                    openid: &str,
                    valid_after: i64,
                ) -> anyhow::Result<Vec<KindQuota>> {
                    sqlx::query_as(sql::QUOTA)
                        .bind(appid)
                        .bind(openid)
                        .bind(valid_after)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the user's quota")
                }

                async fn claim_credential(&self, claim: &ClaimRequest<'_>) -> anyhow::Result<Claim> {
                    let ClaimRequest { appid, openid, grant_of, lease, valid_after, lease_until, now } = *claim;
                    let mut tx = self.begin_write().await?;
                    if !Self::fence(&mut tx, lease, lease_until).await? {
                        return Ok(Claim::LeaseLost);
                    }
                    let claimed: Option<ClaimedRow> = sqlx::query_as(&sql::with_lock(sql::CLAIM, <Self as Backend>::CLAIM_LOCK))
                        .bind(lease_until)
                        .bind(now)
                        .bind(appid)
                        .bind(openid)
                        .bind(valid_after)
                        .bind(&lease.message_id)
                        .bind(lease.token)
                        .bind(grant_of)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("claiming a credential")?;
                    let claimed = match (claimed, grant_of) {
                        (None, Some(template_id)) => sqlx::query_as(sql::CLAIM_LONG_TERM)
                            .bind(lease_until)
                            .bind(now)
                            .bind(appid)
                            .bind(openid)
                            .bind(format!("long_term:{}", uuid::Uuid::new_v4()))
                            .bind($crate::ledger::kinds::NEVER_EXPIRES_MS)
                            .bind(&lease.message_id)
                            .bind(lease.token)
                            .bind(template_id)
                            .fetch_optional(&mut *tx)
                            .await
                            .context("taking a ticket of a long-term subscription")?,
                        (claimed, _) => claimed,
                    };
                    tx.commit().await.context("committing the claim")?;
                    Ok(match claimed {
                        Some(row) => Claim::Claimed(row.try_into()?),
                        None => Claim::NoneLeft,
                    })
                }

                async fn release_credentials(&self, ids: &[i64], token: i64, now: i64) -> anyhow::Result<()> {
                    if ids.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await?;
                    for id in ids {
                        sqlx::query(sql::SETTLE_RELEASED)
                            .bind(id)
                            .bind(now)
                            .bind(token)
                            .execute(&mut *tx)
                            .await
                            .context("releasing a credential")?;
                    }
                    tx.commit().await.context("committing the release")?;
                    Ok(())
                }

                async fn claim_expired_leases(
                    &self,
                    now: i64,
                    lease_until: i64,
                    token: i64,
                    limit: i64,
                ) -> anyhow::Result<Vec<ClaimedCredential>> {
                    // One transaction: the credentials and their pending messages
                    // change hands together (see `sql::TAKE_MESSAGES_OF_CLAIMED`).
                    let mut tx = self.begin_write().await?;
                    let claimed: Vec<ClaimedRow> =
                        sqlx::query_as(&sql::with_lock(sql::CLAIM_EXPIRED_LEASES, <Self as Backend>::CLAIM_LOCK))
                            .bind(lease_until)
                            .bind(now)
                            .bind(limit)
                            .bind(token)
                            .fetch_all(&mut *tx)
                            .await
                            .context("taking credentials with expired leases")?;
                    if !claimed.is_empty() {
                        sqlx::query(sql::TAKE_MESSAGES_OF_CLAIMED)
                            .bind(lease_until)
                            .bind(token)
                            .execute(&mut *tx)
                            .await
                            .context("taking the messages of credentials with expired leases")?;
                    }
                    tx.commit()
                        .await
                        .context("committing the takeover of expired leases")?;
                    claimed.into_iter().map(ClaimedCredential::try_from).collect()
                }
            }

            #[async_trait::async_trait]
            impl MessageStore for $storage {
                async fn start_send(&self, start: &StartSend) -> anyhow::Result<Option<ClaimedCredential>> {
                    self.group().start(start.clone()).await
                }

                async fn create_message(&self, message: &NewMessage, now: i64) -> anyhow::Result<()> {
                    bind_message!(sqlx::query(sql::CREATE_MESSAGE), message)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("recording the message")?;
                    Ok(())
                }

                async fn end_send(&self, end: &EndSend) -> anyhow::Result<bool> {
                    self.group().end(end.clone()).await
                }

                async fn record_attempt(
                    &self,
                    lease: &Lease,
                    attempt: &NewAttempt,
                    settlement: Option<(i64, Settlement)>,
                    outcome: Option<&MessageOutcome>,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let mut tx = self.begin_write().await?;
                    Self::attempt_query(&lease.message_id, attempt, now)
                        .execute(&mut *tx)
                        .await
                        .context("recording the attempt")?;
                    // The fence keeps the message's lease as it is: a settlement
                    // that goes on renews nothing, one that ends clears it.
                    let held = Self::fence_keeping(&mut tx, lease).await?;
                    if held {
                        if let Some((credential_id, settlement)) = settlement {
                            if let Some(query) = Self::settle_query(credential_id, lease.token, settlement, now) {
                                query
                                    .execute(&mut *tx)
                                    .await
                                    .context("settling the credential")?;
                            }
                            if let Settlement::Revoked { errcode } = settlement {
                                let event = NewEvent {
                                    event_id: $crate::storage::new_event_id(),
                                    event_type: Some(EventType::SubscriptionRevoked),
                                    status: Some(Decision::Revoked.as_str().to_owned()),
                                    wechat_errcode: Some(errcode),
                                    at: now,
                                    ..NewEvent::default()
                                };
                                Self::insert_message_event(&mut tx, lease, &event).await?;
                                for statement in [sql::REVOKE_TEMPLATE_GRANTS, sql::REVOKE_SUBSCRIPTION] {
                                    sqlx::query(statement)
                                        .bind(credential_id)
                                        .bind(now)
                                        .bind(errcode)
                                        .execute(&mut *tx)
                                        .await
                                        .context("revoking the user's grants of a template")?;
                                }
                            }
                        }
                        if let Some(outcome) = outcome {
                            // Before the finish, which clears the token both fence on.
                            Self::insert_message_event(&mut tx, lease, &outcome.event(&lease.message_id, now)).await?;
                            Self::finish_query(lease, outcome, now)
                                .execute(&mut *tx)
                                .await
                                .context("finishing the message")?;
                        }
                    }
                    tx.commit().await.context("committing the attempt")?;
                    Ok(held)
                }

                async fn finish_message(
                    &self,
                    lease: &Lease,
                    outcome: &MessageOutcome,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    // One transaction: the event commits with the finish or not
                    // at all. The fence first: on PostgreSQL it locks the row,
                    // so no takeover slips in between the event and the finish.
                    let mut tx = self.begin_write().await?;
                    if !Self::fence_keeping(&mut tx, lease).await? {
                        return Ok(false);
                    }
                    Self::insert_message_event(&mut tx, lease, &outcome.event(&lease.message_id, now)).await?;
                    let finished = Self::finish_query(lease, outcome, now)
                        .execute(&mut *tx)
                        .await
                        .context("finishing the message")?;
                    tx.commit().await.context("committing the finish")?;
                    Ok(finished.rows_affected() == 1)
                }

                async fn wait_message(
                    &self,
                    lease: &Lease,
                    next_attempt_at: i64,
                    valid_after: i64,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let waiting = sqlx::query(sql::WAIT_MESSAGE)
                        .bind(&lease.message_id)
                        .bind(next_attempt_at)
                        .bind(valid_after)
                        .bind(now)
                        .bind(lease.token)
                        .execute(self.writer())
                        .await
                        .context("keeping the message waiting")?;
                    if waiting.rows_affected() == 0 {
                        return Ok(false);
                    }
                    sqlx::query(sql::WAKE_IF_CREDENTIAL)
                        .bind(Some(lease.message_id.as_str()))
                        .bind(now)
                        .bind(valid_after)
                        .execute(self.writer())
                        .await
                        .context("looking again for a credential for a waiting message")?;
                    Ok(true)
                }

                async fn wait_for_token(
                    &self,
                    lease: &Lease,
                    next_attempt_at: i64,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let waiting = sqlx::query(sql::WAIT_FOR_TOKEN)
                        .bind(&lease.message_id)
                        .bind(next_attempt_at)
                        .bind(now)
                        .bind(lease.token)
                        .execute(self.writer())
                        .await
                        .context("keeping the message waiting for a token")?;
                    Ok(waiting.rows_affected() == 1)
                }

                async fn wake_waiting_with_credentials(&self, now: i64, valid_after: i64) -> anyhow::Result<u64> {
                    let woken = sqlx::query(sql::WAKE_IF_CREDENTIAL)
                        .bind(None::<&str>)
                        .bind(now)
                        .bind(valid_after)
                        .execute(self.writer())
                        .await
                        .context("waking waiting messages whose user holds a credential")?;
                    Ok(woken.rows_affected())
                }

                async fn renew_lease(&self, lease: &Lease, lease_until: i64) -> anyhow::Result<bool> {
                    let mut tx = self.begin_write().await?;
                    if !Self::fence(&mut tx, lease, lease_until).await? {
                        return Ok(false);
                    }
                    sqlx::query(sql::RENEW_CREDENTIAL_LEASES)
                        .bind(&lease.message_id)
                        .bind(lease.token)
                        .bind(lease_until)
                        .execute(&mut *tx)
                        .await
                        .context("renewing the credential leases")?;
                    tx.commit().await.context("committing the renewal")?;
                    Ok(true)
                }

                async fn claim_due_waiting(
                    &self,
                    now: i64,
                    lease_until: i64,
                    token: i64,
                    limit: i64,
                ) -> anyhow::Result<Vec<StoredMessage>> {
                    self.take_rows(sql::CLAIM_DUE_WAITING, now, lease_until, token, limit)
                        .await
                        .context("taking due waiting messages")
                }

                async fn claim_stale_messages(
                    &self,
                    now: i64,
                    lease_until: i64,
                    token: i64,
                    limit: i64,
                ) -> anyhow::Result<Vec<StoredMessage>> {
                    self.take_rows(sql::CLAIM_STALE_MESSAGES, now, lease_until, token, limit)
                        .await
                        .context("taking unfinished messages")
                }

                async fn stored_message(&self, id: &str) -> anyhow::Result<Option<StoredMessage>> {
                    sqlx::query_as(sql::STORED_MESSAGE)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading a stored message")
                }

                async fn message(
                    &self,
                    appid: &str,
                    id: &str,
                ) -> anyhow::Result<Option<(MessageRow, Vec<AttemptRow>)>> {
                    let Some(message) = sqlx::query_as::<_, MessageRow>(sql::MESSAGE)
                        .bind(appid)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading the message")?
                    else {
                        return Ok(None);
                    };
                    let attempts = sqlx::query_as(sql::ATTEMPTS)
                        .bind(id)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the message's attempts")?;
                    Ok(Some((message, attempts)))
                }
            }

            #[async_trait::async_trait]
            impl IdempotencyStore for $storage {
                async fn begin_idempotent(
                    &self,
                    request: &IdempotencyRequest<'_>,
                ) -> anyhow::Result<IdempotencyBegin> {
                    let IdempotencyRequest { appid, key, request_hash, message_id, now, expires_at } = *request;
                    let mut tx = self.begin_write().await?;
                    let taken: Option<String> = sqlx::query_scalar(sql::BEGIN_IDEMPOTENT)
                        .bind(appid)
                        .bind(key)
                        .bind(request_hash)
                        .bind(message_id)
                        .bind(now)
                        .bind(expires_at)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("taking the idempotency key")?;
                    let begin = match taken {
                        Some(_) => IdempotencyBegin::Started,
                        None => IdempotencyBegin::Existing(
                            sqlx::query_as(sql::IDEMPOTENCY_RECORD)
                                .bind(appid)
                                .bind(key)
                                .fetch_one(&mut *tx)
                                .await
                                .context("reading the idempotency key")?,
                        ),
                    };
                    tx.commit()
                        .await
                        .context("committing the idempotency key")?;
                    Ok(begin)
                }

                async fn complete_idempotent(
                    &self,
                    appid: &str,
                    key: &str,
                    message_id: &str,
                    status: u16,
                    body: &str,
                ) -> anyhow::Result<()> {
                    sqlx::query(sql::COMPLETE_IDEMPOTENT)
                        .bind(appid)
                        .bind(key)
                        .bind(message_id)
                        .bind(i64::from(status))
                        .bind(body)
                        .execute(self.writer())
                        .await
                        .context("storing the idempotent answer")?;
                    Ok(())
                }
            }

            #[async_trait::async_trait]
            impl SubscriptionStore for $storage {
                async fn record_prompt(&self, prompt: &NewPrompt, now: i64) -> anyhow::Result<PromptRecord> {
                    let mut tx = self.begin_write().await?;
                    let mut effects = Vec::with_capacity(prompt.decisions.len());
                    for (decision, plan) in prompt.decisions.iter().zip(&prompt.plans) {
                        let long_term = matches!(plan, EffectPlan::ByTemplateType { .. })
                            && sqlx::query(sql::TEMPLATE_IS_LONG_TERM)
                                .bind(&prompt.appid)
                                .bind(&decision.template_id)
                                .fetch_optional(&mut *tx)
                                .await
                                .context("reading the template's type")?
                                .is_some();
                        effects.push(plan.resolve(LedgerFacts { long_term, message_found: false }));
                    }
                    let inserted = sqlx::query(sql::INSERT_PROMPT)
                        .bind(&prompt.appid)
                        .bind(&prompt.openid)
                        .bind(&prompt.request_id)
                        .bind(&prompt.request_hash)
                        .bind(serde_json::to_string(&effects)?)
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("recording the prompt")?;
                    if inserted.is_none() {
                        let (request_hash, stored): (String, String) = sqlx::query_as(sql::PROMPT)
                            .bind(&prompt.appid)
                            .bind(&prompt.openid)
                            .bind(&prompt.request_id)
                            .fetch_one(&mut *tx)
                            .await
                            .context("reading the earlier prompt")?;
                        return Ok(PromptRecord::Repeated {
                            request_hash,
                            effects: serde_json::from_str(&stored)?,
                        });
                    }
                    for (decision, effect) in prompt.decisions.iter().zip(&effects) {
                        let granted = match effect {
                            PromptEffect::Granted => Some(false),
                            PromptEffect::LongTermOn => Some(true),
                            PromptEffect::Recorded => None,
                        };
                        let user = UserTemplate {
                            appid: &prompt.appid,
                            openid: &prompt.openid,
                            template_id: &decision.template_id,
                        };
                        Self::apply_decision(&mut tx, &user, decision.decision, granted, now).await?;
                        if let Some(event_type) = EventType::for_prompt(*effect) {
                            let event = NewEvent {
                                openid: Some(prompt.openid.clone()),
                                template_id: Some(decision.template_id.clone()),
                                status: Some(decision.decision.as_str().to_owned()),
                                ..NewEvent::new($crate::storage::new_event_id(), &prompt.appid, event_type, now)
                            };
                            Self::insert_event(&mut tx, &event).await?;
                        }
                    }
                    tx.commit().await.context("committing the prompt")?;
                    if effects.iter().any(|effect| *effect != PromptEffect::Recorded) {
                        // After the commit, for the reason `sql::WAKE_IF_CREDENTIAL` gives.
                        sqlx::query(sql::WAKE_USER)
                            .bind(&prompt.appid)
                            .bind(now)
                            .bind(now)
                            .bind(&prompt.openid)
                            .execute(self.writer())
                            .await
                            .context("waking the user's waiting messages")?;
                    }
                    Ok(PromptRecord::Recorded(effects))
                }

                async fn record_push(
                    &self,
                    push: &NewPushEvent,
                    now: i64,
                ) -> anyhow::Result<Vec<PushItemOutcome>> {
                    let mut tx = self.begin_write().await?;
                    let mut outcomes = Vec::with_capacity(push.items.len());
                    for item in &push.items {
                        // What the item will do, read in the transaction that
                        // does it.
                        let (facts, delivery_of) = Self::push_item_facts(&mut tx, push, item).await?;
                        let effect = item.plan.resolve(facts);
                        if let Some(stored) = Self::insert_push_event(&mut tx, push, item, effect, now).await? {
                            outcomes.push(PushItemOutcome { effect: stored, replayed: true });
                            continue;
                        }
                        Self::apply_push_item(&mut tx, push, item, effect, delivery_of.as_deref(), now).await?;
                        Self::insert_push_item_event(&mut tx, push, item, effect, delivery_of, now).await?;
                        outcomes.push(PushItemOutcome { effect, replayed: false });
                    }
                    tx.commit().await.context("committing the push")?;
                    if outcomes.iter().any(|outcome| !outcome.replayed && outcome.effect.grants()) {
                        // After the commit, for the reason `sql::WAKE_IF_CREDENTIAL` gives.
                        sqlx::query(sql::WAKE_USER)
                            .bind(&push.appid)
                            .bind(now)
                            .bind(now)
                            .bind(&push.openid)
                            .execute(self.writer())
                            .await
                            .context("waking the user's waiting messages")?;
                    }
                    Ok(outcomes)
                }

                async fn subscription_quota(
                    &self,
                    appid: &str,
                    openid: &str,
                ) -> anyhow::Result<Vec<TemplateQuota>> {
                    sqlx::query_as(sql::SUBSCRIPTION_QUOTA)
                        .bind(appid)
                        .bind(openid)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the user's subscriptions")
                }

                async fn message_of_msgid(
                    &self,
                    appid: &str,
                    openid: &str,
                    msgid: &str,
                ) -> anyhow::Result<Option<String>> {
                    sqlx::query_scalar(sql::MESSAGE_OF_MSGID)
                        .bind(msgid)
                        .bind(appid)
                        .bind(openid)
                        .fetch_optional(self.reader())
                        .await
                        .context("finding the message of a msgid")
                }
            }

            #[async_trait::async_trait]
            impl TemplateStore for $storage {
                async fn send_templates(&self, appid: &str) -> anyhow::Result<SendTemplates> {
                    let catalogue = TemplateStore::templates(self, appid).await?;
                    let decided = sqlx::query_scalar(sql::DECIDED_TEMPLATES)
                        .bind(appid)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the templates users decided on")?;
                    Ok(SendTemplates::new(
                        catalogue.iter().map(TemplateRecord::to_catalogue),
                        decided,
                    ))
                }

                async fn replace_templates_batch(
                    &self,
                    appid: &str,
                    channel: Channel,
                    templates: &[TemplateRecord],
                ) -> anyhow::Result<()> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::DELETE_TEMPLATES_OF_CHANNEL)
                        .bind(appid)
                        .bind(channel.as_str())
                        .execute(&mut *tx)
                        .await
                        .context("clearing the app's templates of a channel")?;
                    for template in templates {
                        Self::upsert_template_query(appid, template)
                            .execute(&mut *tx)
                            .await
                            .context("storing a listed template")?;
                    }
                    tx.commit().await.context("committing the template listing")?;
                    Ok(())
                }

                async fn upsert_template(&self, appid: &str, template: &TemplateRecord) -> anyhow::Result<()> {
                    Self::upsert_template_query(appid, template)
                        .execute(self.writer())
                        .await
                        .context("storing a template")?;
                    Ok(())
                }

                async fn delete_template(&self, appid: &str, template_id: &str) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::DELETE_TEMPLATE)
                        .bind(appid)
                        .bind(template_id)
                        .execute(self.writer())
                        .await
                        .context("deleting a template")?;
                    Ok(done.rows_affected() > 0)
                }

                async fn templates(&self, appid: &str) -> anyhow::Result<Vec<TemplateRecord>> {
                    sqlx::query_as(sql::TEMPLATES_OF_APP)
                        .bind(appid)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the app's templates")
                }

                async fn template(&self, appid: &str, template_id: &str) -> anyhow::Result<Option<TemplateRecord>> {
                    sqlx::query_as(sql::TEMPLATE_OF_APP)
                        .bind(appid)
                        .bind(template_id)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading a template")
                }
            }

            #[async_trait::async_trait]
            impl AppStore for $storage {
                async fn app_state(&self, appid: &str) -> anyhow::Result<AppState> {
                    let state = sqlx::query_as(sql::APP_STATE)
                        .bind(appid)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading the app row")?;
                    Ok(state.unwrap_or_default())
                }

                async fn try_lease_token_refresh(
                    &self,
                    appid: &str,
                    holder: &str,
                    now: i64,
                    until: i64,
                ) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::LEASE_TOKEN_REFRESH)
                        .bind(appid)
                        .bind(holder)
                        .bind(now)
                        .bind(until)
                        .execute(self.writer())
                        .await
                        .context("taking the token-refresh lease")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_token_refresh(&self, appid: &str, holder: &str) -> anyhow::Result<()> {
                    sqlx::query(sql::RELEASE_TOKEN_REFRESH)
                        .bind(appid)
                        .bind(holder)
                        .execute(self.writer())
                        .await
                        .context("releasing the token-refresh lease")?;
                    Ok(())
                }

                async fn store_token(
                    &self,
                    appid: &str,
                    token: &str,
                    expires_at: i64,
                    fetched_at: i64,
                ) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::STORE_TOKEN)
                        .bind(appid)
                        .bind(token)
                        .bind(expires_at)
                        .bind(fetched_at)
                        .execute(self.writer())
                        .await
                        .context("storing the access token")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn take_token_fetch(
                    &self,
                    appid: &str,
                    seen: Option<i64>,
                    next: i64,
                ) -> anyhow::Result<bool> {
                    let taken = sqlx::query(sql::TAKE_TOKEN_FETCH)
                        .bind(appid)
                        .bind(seen)
                        .bind(next)
                        .execute(self.writer())
                        .await
                        .context("taking a token fetch from the budget")?;
                    Ok(taken.rows_affected() == 1)
                }

                async fn record_token_check(
                    &self,
                    appid: &str,
                    token: &str,
                    at: i64,
                ) -> anyhow::Result<bool> {
                    let recorded = sqlx::query(sql::RECORD_TOKEN_CHECK)
                        .bind(appid)
                        .bind(token)
                        .bind(at)
                        .execute(self.writer())
                        .await
                        .context("recording a token check")?;
                    Ok(recorded.rows_affected() == 1)
                }

                async fn take_force_refresh(
                    &self,
                    appid: &str,
                    china_day: i64,
                    now: i64,
                    per_day: u32,
                ) -> anyhow::Result<bool> {
                    let taken = sqlx::query(sql::TAKE_FORCE_REFRESH)
                        .bind(appid)
                        .bind(china_day)
                        .bind(now)
                        .bind(i64::from(per_day))
                        .execute(self.writer())
                        .await
                        .context("taking a forced token refresh")?;
                    Ok(taken.rows_affected() == 1)
                }

                async fn block_sends(&self, appid: &str, until: i64, now: i64) -> anyhow::Result<()> {
                    let mut tx = self.begin_write().await?;
                    let blocked: Option<Option<i64>> = sqlx::query_scalar(sql::SENDS_BLOCKED_UNTIL)
                        .bind(appid)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("reading the app's block")?;
                    sqlx::query(sql::BLOCK_SENDS)
                        .bind(appid)
                        .bind(until)
                        .execute(&mut *tx)
                        .await
                        .context("blocking the app's sends")?;
                    // One event per block: the sends that meet the same 45009
                    // at once write the same block.
                    if blocked.flatten() != Some(until) {
                        let event = NewEvent {
                            wechat_errcode: Some(45009),
                            detail: Some(formid_core::webhooks::rfc3339_ms(until)),
                            ..NewEvent::new($crate::storage::new_event_id(), appid, EventType::AppQuotaExhausted, now)
                        };
                        Self::insert_event(&mut tx, &event).await?;
                    }
                    tx.commit().await.context("committing the block")?;
                    Ok(())
                }
            }

            #[async_trait::async_trait]
            impl MaintenanceStore for $storage {
                async fn ping(&self) -> anyhow::Result<()> {
                    sqlx::query(sql::PING)
                        .execute(self.reader())
                        .await
                        .context("pinging the database")?;
                    Ok(())
                }

                async fn ensure_app(&self, appid: &str) -> anyhow::Result<()> {
                    sqlx::query(sql::ENSURE_APP)
                        .bind(appid)
                        .execute(self.writer())
                        .await
                        .context("inserting the app row")?;
                    Ok(())
                }

                async fn message_backlog(&self) -> anyhow::Result<Vec<crate::storage::BacklogCount>> {
                    sqlx::query_as(sql::MESSAGE_BACKLOG)
                        .fetch_all(self.reader())
                        .await
                        .context("counting waiting, pending and scheduled messages")
                }

                async fn sweep(
                    &self,
                    now: i64,
                    credential_retention_ms: i64,
                    message_retention_ms: i64,
                ) -> anyhow::Result<SweepReport> {
                    let mut report = SweepReport {
                        expired: sqlx::query(sql::MARK_EXPIRED)
                            .bind(now)
                            .execute(self.writer())
                            .await
                            .context("marking expired credentials")?
                            .rows_affected(),
                        ..SweepReport::default()
                    };
                    for (statement, cutoff, counter) in [
                        (
                            sql::DELETE_OLD_CREDENTIALS,
                            now - credential_retention_ms,
                            &mut report.deleted_credentials,
                        ),
                        (
                            sql::DELETE_OLD_MESSAGES,
                            now - message_retention_ms,
                            &mut report.deleted_messages,
                        ),
                        (
                            sql::DELETE_OLD_IDEMPOTENCY_KEYS,
                            now,
                            &mut report.deleted_idempotency_keys,
                        ),
                        (
                            sql::DELETE_OLD_PROMPTS,
                            now - message_retention_ms,
                            &mut report.deleted_prompts,
                        ),
                        (
                            sql::DELETE_OLD_PUSH_EVENTS,
                            now - message_retention_ms,
                            &mut report.deleted_push_events,
                        ),
                    ] {
                        loop {
                            let deleted = sqlx::query(statement)
                                .bind(cutoff)
                                .bind(sql::SWEEP_BATCH)
                                .execute(self.writer())
                                .await
                                .context("deleting old rows")?
                                .rows_affected();
                            *counter += deleted;
                            if deleted < sql::SWEEP_BATCH as u64 {
                                break;
                            }
                        }
                    }
                    Ok(report)
                }
            }

            impl $storage {
                /// Runs one of the statements that take up to `$3` rows for a
                /// worker, leasing them until `$1` under token `$4` (`now` is `$2`).
                async fn take_rows<T>(
                    &self,
                    statement: &str,
                    now: i64,
                    lease_until: i64,
                    token: i64,
                    limit: i64,
                ) -> Result<Vec<T>, sqlx::Error>
                where
                    T: for<'r> sqlx::FromRow<'r, <<Self as Backend>::Db as sqlx::Database>::Row> + Send + Unpin,
                {
                    sqlx::query_as(&sql::with_lock(statement, <Self as Backend>::CLAIM_LOCK))
                        .bind(lease_until)
                        .bind(now)
                        .bind(limit)
                        .bind(token)
                        .fetch_all(self.writer())
                        .await
                }

                /// [`sql::UPSERT_TEMPLATE`] bound to one template.
                fn upsert_template_query<'q>(appid: &'q str, template: &'q TemplateRecord) -> sqlx::query::Query<'q, <Self as Backend>::Db, <<Self as Backend>::Db as sqlx::Database>::Arguments<'q>> {
                    sqlx::query(sql::UPSERT_TEMPLATE)
                        .bind(appid)
                        .bind(&template.template_id)
                        .bind(template.channel.as_str())
                        .bind(&template.title)
                        .bind(&template.content)
                        .bind(&template.example)
                        .bind(template.subscription.as_str())
                        .bind(&template.enum_values)
                        .bind(template.refreshed_at)
                }

                /// Records a user's decision on a template and what it granted
                /// (`granted`: `Some(long_term)`), in the transaction of the
                /// prompt or push that carried it.
                async fn apply_decision(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    user: &UserTemplate<'_>,
                    decision: Decision,
                    granted: Option<bool>,
                    now: i64,
                ) -> anyhow::Result<()> {
                    sqlx::query(sql::RECORD_DECISION)
                        .bind(user.appid)
                        .bind(user.openid)
                        .bind(user.template_id)
                        .bind(decision.as_str())
                        .bind(now)
                        .bind(granted == Some(true))
                        .execute(&mut **tx)
                        .await
                        .context("recording the user's decision")?;
                    if granted == Some(false) {
                        sqlx::query(sql::INSERT_GRANT)
                            .bind(user.appid)
                            .bind(user.openid)
                            .bind(format!("grant:{}", uuid::Uuid::new_v4()))
                            .bind(user.template_id)
                            .bind(now)
                            .bind($crate::ledger::kinds::NEVER_EXPIRES_MS)
                            .execute(&mut **tx)
                            .await
                            .context("recording a grant")?;
                    }
                    Ok(())
                }

                /// What a push item's effect depends on, read in the push's
                /// transaction: whether its template is long-term (for an
                /// accept that grants), and the message of its msgid (for a
                /// delivery), which is also returned.
                async fn push_item_facts(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    push: &NewPushEvent,
                    item: &PushItem,
                ) -> anyhow::Result<(LedgerFacts, Option<String>)> {
                    let mut delivery_of = None;
                    let mut facts = LedgerFacts::default();
                    match (&item.plan, &item.action) {
                        (EffectPlan::ByTemplateType { .. }, _) => {
                            facts.long_term = sqlx::query(sql::TEMPLATE_IS_LONG_TERM)
                                .bind(&push.appid)
                                .bind(&item.template_id)
                                .fetch_optional(&mut **tx)
                                .await
                                .context("reading the template's type")?
                                .is_some();
                        }
                        (EffectPlan::ByMessage { .. }, PushAction::Delivery { msgid, .. }) => {
                            delivery_of = sqlx::query_scalar::<_, String>(sql::MESSAGE_OF_MSGID)
                                .bind(msgid)
                                .bind(&push.appid)
                                .bind(&push.openid)
                                .fetch_optional(&mut **tx)
                                .await
                                .context("finding the message of a msgid")?;
                            facts.message_found = delivery_of.is_some();
                        }
                        _ => {}
                    }
                    Ok((facts, delivery_of))
                }

                /// Records the push item's event under its dedupe key: `None`
                /// when it is the first, the effect stored then when the event
                /// was seen before.
                async fn insert_push_event(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    push: &NewPushEvent,
                    item: &PushItem,
                    effect: PushEffect,
                    now: i64,
                ) -> anyhow::Result<Option<PushEffect>> {
                    let first = sqlx::query(sql::INSERT_PUSH_EVENT)
                        .bind(&push.appid)
                        .bind(&item.dedupe_key)
                        .bind(push.kind.as_str())
                        .bind(&push.openid)
                        .bind(&item.template_id)
                        .bind(effect.as_str())
                        .bind(now)
                        .fetch_optional(&mut **tx)
                        .await
                        .context("recording a push event")?
                        .is_some();
                    if first {
                        return Ok(None);
                    }
                    let stored: String = sqlx::query_scalar(sql::PUSH_EVENT_EFFECT)
                        .bind(&push.appid)
                        .bind(&item.dedupe_key)
                        .fetch_one(&mut **tx)
                        .await
                        .context("reading a push event seen before")?;
                    Ok(Some(stored.parse()?))
                }

                /// Does what a first-seen push item says: records the decision
                /// (and its grant), revokes the user's grants of the template,
                /// or records the final delivery of `delivery_of`.
                async fn apply_push_item(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    push: &NewPushEvent,
                    item: &PushItem,
                    effect: PushEffect,
                    delivery_of: Option<&str>,
                    now: i64,
                ) -> anyhow::Result<()> {
                    match &item.action {
                        PushAction::Decide { decision, .. } => {
                            let granted = match effect {
                                PushEffect::Granted => Some(false),
                                PushEffect::LongTermOn => Some(true),
                                _ => None,
                            };
                            let user = UserTemplate {
                                appid: &push.appid,
                                openid: &push.openid,
                                template_id: &item.template_id,
                            };
                            Self::apply_decision(tx, &user, *decision, granted, now).await?;
                        }
                        PushAction::Revoke => {
                            for statement in [sql::RETIRE_USER_TEMPLATE_GRANTS, sql::REVOKE_USER_SUBSCRIPTION] {
                                sqlx::query(statement)
                                    .bind(&push.appid)
                                    .bind(&push.openid)
                                    .bind(&item.template_id)
                                    .bind(now)
                                    .execute(&mut **tx)
                                    .await
                                    .context("revoking the user's grants of a template")?;
                            }
                        }
                        PushAction::Delivery { error_code, error_status, .. } => {
                            if let Some(message_id) = delivery_of {
                                sqlx::query(sql::RECORD_DELIVERY)
                                    .bind(message_id)
                                    .bind(*error_code)
                                    .bind(error_status)
                                    .bind(now)
                                    .execute(&mut **tx)
                                    .await
                                    .context("recording the final delivery")?;
                            }
                        }
                        PushAction::Ignore => {}
                    }
                    Ok(())
                }

                /// The event a first-applied push item reports, if any, in
                /// the push's transaction.
                async fn insert_push_item_event(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    push: &NewPushEvent,
                    item: &PushItem,
                    effect: PushEffect,
                    delivery_of: Option<String>,
                    now: i64,
                ) -> anyhow::Result<()> {
                    let Some(event_type) = EventType::for_push(&item.action, effect) else {
                        return Ok(());
                    };
                    let mut event = NewEvent {
                        openid: Some(push.openid.clone()),
                        template_id: Some(item.template_id.clone()),
                        message_id: delivery_of,
                        status: Some(effect.as_str().to_owned()),
                        ..NewEvent::new($crate::storage::new_event_id(), &push.appid, event_type, now)
                    };
                    if let PushAction::Delivery { error_code, error_status, .. } = &item.action {
                        event.wechat_errcode = Some(*error_code);
                        event.status = Some(error_status.clone());
                    }
                    Self::insert_event(tx, &event).await
                }

                /// The fence of a run's write: renews the message's lease to
                /// `lease_until` if the message is still the lease's; `false`
                /// otherwise (the transaction then commits nothing).
                async fn fence(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    lease: &Lease,
                    lease_until: i64,
                ) -> anyhow::Result<bool> {
                    let fenced = sqlx::query(sql::FENCE_MESSAGE)
                        .bind(&lease.message_id)
                        .bind(lease.token)
                        .bind(lease_until)
                        .execute(&mut **tx)
                        .await
                        .context("checking the message's lease")?;
                    Ok(fenced.rows_affected() == 1)
                }

                /// [`fence`](Self::fence) that leaves the lease's time as it is.
                async fn fence_keeping(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    lease: &Lease,
                ) -> anyhow::Result<bool> {
                    let fenced = sqlx::query(sql::FENCE_MESSAGE_KEEPING)
                        .bind(&lease.message_id)
                        .bind(lease.token)
                        .execute(&mut **tx)
                        .await
                        .context("checking the message's lease")?;
                    Ok(fenced.rows_affected() == 1)
                }

                fn push_credential_values<'a>(
                    builder: &mut sqlx::QueryBuilder<'a, <Self as Backend>::Db>,
                    appid: &'a str,
                    items: &'a [NewCredential],
                    now: i64,
                ) {
                    builder.push_values(items, |mut row, item| {
                        row.push_bind(appid)
                            .push_bind(&item.openid)
                            .push_bind(item.kind.as_str())
                            .push_bind(&item.value)
                            .push_bind(item.uses)
                            .push_bind(CredentialState::Available.as_str())
                            .push_bind(item.collected_at)
                            .push_bind(item.expires_at)
                            .push_bind(now)
                            .push_bind(now);
                    });
                }

                fn settle_query(
                    credential_id: i64,
                    token: i64,
                    settlement: Settlement,
                    now: i64,
                ) -> Option<sqlx::query::Query<'static, <Self as Backend>::Db, <<Self as Backend>::Db as sqlx::Database>::Arguments<'static>>> {
                    let (statement, fourth) = match settlement {
                        Settlement::Spent => (sql::SETTLE_SPENT, 0),
                        Settlement::SpentUnproven => (sql::SETTLE_SPENT, 1),
                        Settlement::Retired { errcode } | Settlement::Revoked { errcode } => {
                            (sql::SETTLE_RETIRED, errcode)
                        }
                        Settlement::Parked { until } => (sql::SETTLE_PARKED, until),
                        Settlement::Released => {
                            return Some(sqlx::query(sql::SETTLE_RELEASED).bind(credential_id).bind(now).bind(token))
                        }
                        Settlement::Kept => return None,
                    };
                    Some(sqlx::query(statement).bind(credential_id).bind(now).bind(token).bind(fourth))
                }

                fn attempt_query<'q>(message_id: &'q str, attempt: &'q NewAttempt, now: i64) -> sqlx::query::Query<'q, <Self as Backend>::Db, <<Self as Backend>::Db as sqlx::Database>::Arguments<'q>> {
                    sqlx::query(sql::INSERT_ATTEMPT)
                        .bind(message_id)
                        .bind(attempt.credential_id)
                        .bind(attempt.credential_kind.map(CredentialKind::as_str))
                        .bind(attempt.errcode)
                        .bind(attempt.outcome.as_str())
                        .bind(attempt.detail.as_deref())
                        .bind(now)
                        .bind(attempt.msgid.as_deref())
                }

                fn finish_query<'q>(lease: &'q Lease, outcome: &'q MessageOutcome, now: i64) -> sqlx::query::Query<'q, <Self as Backend>::Db, <<Self as Backend>::Db as sqlx::Database>::Arguments<'q>> {
                    sqlx::query(sql::FINISH_MESSAGE)
                        .bind(&lease.message_id)
                        .bind(outcome.status.as_str())
                        .bind(outcome.error_code)
                        .bind(outcome.wechat_errcode)
                        .bind(now)
                        .bind(lease.token)
                }
            }
            #[async_trait::async_trait]
            impl $crate::storage::send_rules::SendRulesStore for $storage {
                async fn create_capped_message(
                    &self,
                    start: &$crate::storage::send_rules::CappedStart<'_>,
                ) -> anyhow::Result<$crate::ledger::user_limits::CapDecision> {
                    let message = start.message;
                    let mut tx = self.begin_write().await?;
                    let decision = Self::count_caps(&mut tx, start.caps, &message.appid, &message.touser, &message.template_id, start.now).await?;
                    if decision == $crate::ledger::user_limits::CapDecision::Allow {
                        bind_message!(sqlx::query(sql::CREATE_MESSAGE), message)
                            .bind(start.now)
                            .execute(&mut *tx)
                            .await
                            .context("recording the capped message")?;
                    }
                    // Committed either way: on PostgreSQL the commit releases the
                    // user's lock, after the message is visible to the next count.
                    tx.commit().await.context("committing the capped message")?;
                    Ok(decision)
                }

                async fn schedule_message(&self, scheduled: &$crate::storage::send_rules::Scheduled<'_>) -> anyhow::Result<()> {
                    bind_message!(sqlx::query(sql::SCHEDULE_MESSAGE), scheduled.message)
                        .bind(scheduled.due_at)
                        .bind(scheduled.send_at)
                        .bind(scheduled.now)
                        .execute(self.writer())
                        .await
                        .context("recording a scheduled message")?;
                    Ok(())
                }

                async fn cancel_scheduled(&self, appid: &str, id: &str, now: i64) -> anyhow::Result<bool> {
                    // One transaction: the end and its event commit together.
                    let mut tx = self.begin_write().await?;
                    let done = sqlx::query(sql::CANCEL_SCHEDULED)
                        .bind(appid)
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .context("cancelling a scheduled message")?;
                    let cancelled = done.rows_affected() == 1;
                    if cancelled {
                        Self::insert_unsent_end_event(&mut tx, id, "cancelled", now).await?;
                    }
                    tx.commit().await.context("committing a cancelled message")?;
                    Ok(cancelled)
                }

                async fn due_scheduled(&self, now: i64, limit: i64) -> anyhow::Result<Vec<StoredMessage>> {
                    sqlx::query_as(sql::DUE_SCHEDULED)
                        .bind(now)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await
                        .context("reading due scheduled messages")
                }

                async fn take_scheduled(
                    &self,
                    take: &$crate::storage::send_rules::TakeScheduled<'_>,
                ) -> anyhow::Result<$crate::storage::send_rules::Taken> {
                    use $crate::storage::send_rules::Taken;
                    use $crate::ledger::user_limits::CapDecision;
                    let mut tx = self.begin_write().await?;
                    if !take.caps.is_empty() {
                        let Some(message): Option<StoredMessage> = sqlx::query_as(sql::STORED_MESSAGE)
                            .bind(take.id)
                            .fetch_optional(&mut *tx)
                            .await
                            .context("reading a scheduled message")?
                        else {
                            return Ok(Taken::Gone);
                        };
                        let decision = Self::count_caps(&mut tx, take.caps, &message.appid, &message.touser, &message.template_id, take.now).await?;
                        if let CapDecision::Capped { retry_at_ms, .. } = decision {
                            let done = sqlx::query(sql::CAP_SCHEDULED)
                                .bind(take.id)
                                .bind(take.now)
                                .execute(&mut *tx)
                                .await
                                .context("ending a capped scheduled message")?;
                            if done.rows_affected() == 1 {
                                Self::insert_unsent_end_event(&mut tx, take.id, "user_send_limit", take.now).await?;
                            }
                            tx.commit().await.context("committing a capped scheduled message")?;
                            return Ok(if done.rows_affected() == 1 { Taken::Capped { retry_at_ms } } else { Taken::Gone });
                        }
                    }
                    let taken: Option<StoredMessage> = sqlx::query_as(sql::TAKE_SCHEDULED)
                        .bind(take.id)
                        .bind(take.lease_until)
                        .bind(take.token)
                        .bind(take.now)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("taking a scheduled message")?;
                    tx.commit().await.context("committing a taken scheduled message")?;
                    Ok(taken.map_or(Taken::Gone, Taken::Taken))
                }

                async fn reschedule(&self, id: &str, due_at: i64, now: i64) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::RESCHEDULE)
                        .bind(id)
                        .bind(due_at)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("rescheduling a message")?;
                    Ok(done.rows_affected() == 1)
                }

                async fn hold_message(&self, lease: &Lease, due_at: i64, now: i64) -> anyhow::Result<bool> {
                    let done = sqlx::query(sql::HOLD_MESSAGE)
                        .bind(&lease.message_id)
                        .bind(lease.token)
                        .bind(due_at)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("holding a message until quiet hours end")?;
                    Ok(done.rows_affected() == 1)
                }
            }

            impl $storage {
                /// Inside a write transaction: takes the user's lock (on
                /// PostgreSQL; SQLite's writer is already alone), reads what
                /// counts against the caps and decides.
                async fn count_caps(
                    tx: &mut sqlx::Transaction<'static, <Self as Backend>::Db>,
                    caps: &[$crate::ledger::user_limits::SendCap],
                    appid: &str,
                    touser: &str,
                    template_id: &str,
                    now: i64,
                ) -> anyhow::Result<$crate::ledger::user_limits::CapDecision> {
                    let Some(window) = $crate::ledger::user_limits::longest_window(caps, template_id) else {
                        return Ok($crate::ledger::user_limits::CapDecision::Allow);
                    };
                    if let Some(lock) = <Self as Backend>::USER_LOCK {
                        sqlx::query(lock)
                            .bind($crate::storage::send_rules::user_lock_key(appid, touser))
                            .execute(&mut **tx)
                            .await
                            .context("locking the user's sends")?;
                    }
                    let rows: Vec<(String, String, i64)> = sqlx::query_as(sql::CAP_COUNTED)
                        .bind(appid)
                        .bind(touser)
                        .bind(now - window)
                        .fetch_all(&mut **tx)
                        .await
                        .context("counting the user's sends")?;
                    Ok($crate::storage::send_rules::decide_counted(caps, template_id, &rows, now))
                }
            }
        };
    };
}

pub(crate) use impl_storage;

/// Binds a [`NewMessage`](crate::storage::NewMessage)'s columns as `$1`–`$13`
/// of the message inserts (`sql::CREATE_MESSAGE`, `sql::SCHEDULE_MESSAGE`,
/// SQLite's `START`).
macro_rules! bind_message {
    ($query:expr, $message:expr) => {{
        let message = $message;
        $query
            .bind(&message.id)
            .bind(&message.appid)
            .bind(&message.touser)
            .bind(&message.template_id)
            .bind(&message.payload)
            .bind(message.status.as_str())
            .bind(message.delivery.as_str())
            .bind(message.wait_until)
            .bind(message.lease_until)
            .bind(message.lease_token)
            .bind(message.channel.as_str())
            .bind(message.reference.as_deref())
            .bind(message.idempotency_key.as_deref())
    }};
}

pub(crate) use bind_message;

/// Rows per multi-row INSERT, well inside both databases' bind limits.
pub(crate) const INSERT_CHUNK: usize = 500;
