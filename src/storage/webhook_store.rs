//! [`WebhookStore`](crate::storage::WebhookStore) for both backends, as a
//! macro stamped beside [`impl_storage!`](super::shared::impl_storage) (the
//! same reasons: sqlx's traits are per database), and the one writer every
//! other group calls inside its own transaction: `Self::insert_event`.

/// Implements [`WebhookStore`](crate::storage::WebhookStore) and the event
/// writers for `$storage`, a [`Backend`](super::shared::Backend).
macro_rules! impl_webhook_store {
    ($storage:ty) => {
        const _: () = {
            use ::anyhow::Context as _;

            use formid_core::webhooks::{DisableReason, EndpointChange, EventType};
            use $crate::storage::shared::Backend;
            use $crate::storage::{
                sql, DeliveryRecord, LeasedEvent, NewEndpoint, NewEvent, WebhookAttemptRow,
                WebhookEndpoint, WebhookStore,
            };

            type Tx = sqlx::Transaction<'static, <$storage as Backend>::Db>;

            impl $storage {
                /// The event writer: `event` for every enabled endpoint of
                /// its app that wants its type, in the caller's transaction
                /// (so it commits exactly when the change it reports does).
                pub(crate) async fn insert_event(
                    tx: &mut Tx,
                    event: &NewEvent,
                ) -> anyhow::Result<()> {
                    sqlx::query(sql::INSERT_EVENT)
                        .bind(&event.event_id)
                        .bind(&event.appid)
                        .bind(event.event_type.map(EventType::as_str))
                        .bind(event.openid.as_deref())
                        .bind(event.message_id.as_deref())
                        .bind(event.template_id.as_deref())
                        .bind(event.status.as_deref())
                        .bind(event.wechat_errcode)
                        .bind(event.error_code.as_deref())
                        .bind(event.detail.as_deref())
                        .bind(event.at)
                        .bind(event.bit())
                        .execute(&mut **tx)
                        .await
                        .context("writing an event to the outbox")?;
                    Ok(())
                }

                /// The event writer for an event about a leased message (see
                /// `sql::INSERT_MESSAGE_EVENT`): run before the finish, under
                /// the same fence.
                pub(crate) async fn insert_message_event(
                    tx: &mut Tx,
                    lease: &$crate::storage::Lease,
                    event: &NewEvent,
                ) -> anyhow::Result<()> {
                    sqlx::query(sql::INSERT_MESSAGE_EVENT)
                        .bind(&event.event_id)
                        .bind(&lease.message_id)
                        .bind(event.event_type.map(EventType::as_str))
                        .bind(event.status.as_deref())
                        .bind(event.wechat_errcode)
                        .bind(event.error_code.as_deref())
                        .bind(event.at)
                        .bind(lease.token)
                        .bind(event.bit())
                        .execute(&mut **tx)
                        .await
                        .context("writing a message's event to the outbox")?;
                    Ok(())
                }

                /// The `message.failed` event of a scheduled message that
                /// ended without being sent (`error_code`: cancelled, or
                /// user_send_limit), in the transaction that ends it.
                pub(crate) async fn insert_unsent_end_event(
                    tx: &mut Tx,
                    message_id: &str,
                    error_code: &str,
                    now: i64,
                ) -> anyhow::Result<()> {
                    use $crate::ledger::states::MessageStatus;
                    let event_type = EventType::for_finish(MessageStatus::Failed, false);
                    sqlx::query(sql::INSERT_UNLEASED_MESSAGE_EVENT)
                        .bind(formid_core::webhooks::finish_event_id(message_id))
                        .bind(message_id)
                        .bind(event_type.map(EventType::as_str))
                        .bind(MessageStatus::Failed.as_str())
                        .bind(error_code)
                        .bind(now)
                        .bind(event_type.map_or(0, EventType::bit))
                        .execute(&mut **tx)
                        .await
                        .context("writing an unsent message's event to the outbox")?;
                    Ok(())
                }

                async fn apply_endpoint_change(
                    tx: &mut Tx,
                    record: &DeliveryRecord,
                ) -> anyhow::Result<()> {
                    match record.endpoint {
                        EndpointChange::Failing(None) => {
                            sqlx::query(sql::ENDPOINT_WORKS)
                                .bind(&record.endpoint_id)
                                .bind(record.now)
                                .execute(&mut **tx)
                                .await
                                .context("ending the endpoint's failure streak")?;
                        }
                        EndpointChange::Failing(Some(since)) => {
                            sqlx::query(sql::ENDPOINT_FAILING)
                                .bind(&record.endpoint_id)
                                .bind(since)
                                .bind(record.now)
                                .execute(&mut **tx)
                                .await
                                .context("recording the endpoint's failure streak")?;
                        }
                        EndpointChange::Disable(reason) => {
                            Self::disable_in(
                                tx,
                                &record.appid,
                                &record.endpoint_id,
                                reason,
                                record.now,
                            )
                            .await?;
                            if let Some(event) = &record.disabled_event {
                                Self::insert_event(tx, event).await?;
                            }
                        }
                    }
                    Ok(())
                }

                async fn disable_in(
                    tx: &mut Tx,
                    appid: &str,
                    id: &str,
                    reason: DisableReason,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let disabled = sqlx::query(sql::DISABLE_ENDPOINT)
                        .bind(appid)
                        .bind(id)
                        .bind(reason.as_str())
                        .bind(now)
                        .execute(&mut **tx)
                        .await
                        .context("disabling the endpoint")?
                        .rows_affected()
                        == 1;
                    if disabled {
                        sqlx::query(sql::FAIL_PENDING_OF_ENDPOINT)
                            .bind(id)
                            .bind(now)
                            .execute(&mut **tx)
                            .await
                            .context("failing the endpoint's pending events")?;
                    }
                    Ok(disabled)
                }
            }

            #[async_trait::async_trait]
            impl WebhookStore for $storage {
                async fn create_endpoint(&self, endpoint: &NewEndpoint) -> anyhow::Result<()> {
                    sqlx::query(sql::INSERT_ENDPOINT)
                        .bind(&endpoint.id)
                        .bind(&endpoint.appid)
                        .bind(&endpoint.url)
                        .bind(endpoint.event_mask)
                        .bind(&endpoint.secret)
                        .bind(endpoint.now)
                        .execute(self.writer())
                        .await
                        .context("storing the webhook endpoint")?;
                    Ok(())
                }

                async fn endpoints(&self, appid: &str) -> anyhow::Result<Vec<WebhookEndpoint>> {
                    sqlx::query_as(sql::ENDPOINTS_OF_APP)
                        .bind(appid)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the app's webhook endpoints")
                }

                async fn endpoint(
                    &self,
                    appid: &str,
                    id: &str,
                ) -> anyhow::Result<Option<WebhookEndpoint>> {
                    sqlx::query_as(sql::ENDPOINT)
                        .bind(appid)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading a webhook endpoint")
                }

                async fn disable_endpoint(
                    &self,
                    appid: &str,
                    id: &str,
                    event: &NewEvent,
                ) -> anyhow::Result<bool> {
                    let mut tx = self.begin_write().await?;
                    let disabled =
                        Self::disable_in(&mut tx, appid, id, DisableReason::Admin, event.at)
                            .await?;
                    if disabled {
                        Self::insert_event(&mut tx, event).await?;
                    }
                    tx.commit()
                        .await
                        .context("committing the endpoint's disabling")?;
                    Ok(disabled)
                }

                async fn rotate_secret(
                    &self,
                    appid: &str,
                    id: &str,
                    secret: &str,
                    previous_until: i64,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let rotated = sqlx::query(sql::ROTATE_SECRET)
                        .bind(appid)
                        .bind(id)
                        .bind(secret)
                        .bind(previous_until)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("rotating the endpoint's secret")?;
                    Ok(rotated.rows_affected() == 1)
                }

                async fn enqueue_test_event(
                    &self,
                    appid: &str,
                    id: &str,
                    event_id: &str,
                    now: i64,
                ) -> anyhow::Result<bool> {
                    let queued = sqlx::query(sql::INSERT_TEST_EVENT)
                        .bind(event_id)
                        .bind(id)
                        .bind(now)
                        .bind(appid)
                        .execute(self.writer())
                        .await
                        .context("queueing a test event")?;
                    Ok(queued.rows_affected() == 1)
                }

                async fn record_event(&self, event: &NewEvent) -> anyhow::Result<()> {
                    let mut tx = self.begin_write().await?;
                    Self::insert_event(&mut tx, event).await?;
                    tx.commit().await.context("committing an event")?;
                    Ok(())
                }

                async fn replay_failed(
                    &self,
                    endpoint_id: &str,
                    since: i64,
                    now: i64,
                ) -> anyhow::Result<u64> {
                    let replayed = sqlx::query(sql::REPLAY_FAILED)
                        .bind(endpoint_id)
                        .bind(since)
                        .bind(now)
                        .execute(self.writer())
                        .await
                        .context("replaying failed events")?;
                    Ok(replayed.rows_affected())
                }

                async fn webhook_attempts(
                    &self,
                    endpoint_id: &str,
                    limit: i64,
                ) -> anyhow::Result<Vec<WebhookAttemptRow>> {
                    sqlx::query_as(sql::WEBHOOK_ATTEMPTS)
                        .bind(endpoint_id)
                        .bind(limit)
                        .fetch_all(self.reader())
                        .await
                        .context("reading the endpoint's attempts")
                }

                async fn lease_events(
                    &self,
                    now: i64,
                    lease_until: i64,
                    token: i64,
                    limit: i64,
                ) -> anyhow::Result<Vec<LeasedEvent>> {
                    sqlx::query_as(&sql::with_lock(
                        sql::LEASE_DUE_EVENTS,
                        <Self as Backend>::CLAIM_LOCK,
                    ))
                    .bind(now)
                    .bind(lease_until)
                    .bind(token)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await
                    .context("leasing due events")
                }

                async fn record_delivery(&self, record: &DeliveryRecord) -> anyhow::Result<bool> {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(sql::INSERT_WEBHOOK_ATTEMPT)
                        .bind(&record.endpoint_id)
                        .bind(&record.event_id)
                        .bind(&record.event_type)
                        .bind(record.now)
                        .bind(record.outcome.as_str())
                        .bind(record.status_code)
                        .bind(record.error.as_deref())
                        .bind(record.response.as_deref())
                        .bind(record.duration_ms)
                        .execute(&mut *tx)
                        .await
                        .context("recording the delivery attempt")?;
                    // The attempt is a fact whoever holds the event now; the
                    // event's state and the endpoint's change only under the
                    // lease that sent it.
                    let held = sqlx::query(sql::SETTLE_EVENT)
                        .bind(record.seq)
                        .bind(record.lease_token)
                        .bind(record.now)
                        .bind(record.state.as_str())
                        .bind(record.next_attempt_at)
                        .execute(&mut *tx)
                        .await
                        .context("settling the event")?
                        .rows_affected()
                        == 1;
                    if held {
                        Self::apply_endpoint_change(&mut tx, record).await?;
                    }
                    tx.commit()
                        .await
                        .context("committing the delivery attempt")?;
                    Ok(held)
                }

                async fn sweep_webhooks(&self, cutoff: i64) -> anyhow::Result<u64> {
                    let mut deleted_events = 0;
                    for (statement, counted) in [
                        (sql::DELETE_OLD_WEBHOOK_EVENTS, true),
                        (sql::DELETE_OLD_WEBHOOK_ATTEMPTS, false),
                    ] {
                        loop {
                            let deleted = sqlx::query(statement)
                                .bind(cutoff)
                                .bind(sql::SWEEP_BATCH)
                                .execute(self.writer())
                                .await
                                .context("deleting old webhook rows")?
                                .rows_affected();
                            if counted {
                                deleted_events += deleted;
                            }
                            if deleted < sql::SWEEP_BATCH as u64 {
                                break;
                            }
                        }
                    }
                    Ok(deleted_events)
                }
            }
        };
    };
}

pub(crate) use impl_webhook_store;
