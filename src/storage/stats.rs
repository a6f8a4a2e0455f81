//! The ledger's figures for operators ([`StatsStore`], migration 0014): what
//! an app's live credentials and grants allow, whom they reach, the recent
//! messages with their attempts, the failures of the last hours and the
//! token's standing. Reads only, each through an index; the body is shared by
//! both backends ([`impl_stats_store!`]).

use async_trait::async_trait;

use super::{AttemptRow, MessageRow};

/// The live credentials of one kind (and, for one-time grants, one template)
/// of an app, as [`StatsStore::ledger_counts`] reads them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveCount {
    /// `form_id`, `prepay_id` or `subscribe`.
    pub kind: String,
    /// The template a one-time grant pays for; `None` for the other kinds.
    pub template_id: Option<String>,
    /// Available, unexpired credentials.
    pub credentials: i64,
    /// The sends they allow together.
    pub uses: i64,
    /// Distinct users holding one.
    pub users: i64,
    /// Those of them that expire within the window asked for.
    pub expiring: i64,
}

/// Users one subscribe template reaches now: by a one-time grant or a
/// long-term subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TemplateReach {
    pub template_id: String,
    /// Distinct users with a grant or a long-term subscription.
    pub users: i64,
    /// Of them, users with a long-term subscription.
    pub long_term: i64,
}

/// An app's ledger in figures, read at one time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    /// Live credentials and grants by kind and template.
    pub live: Vec<LiveCount>,
    /// Per subscribe template, the users it reaches now.
    pub templates: Vec<TemplateReach>,
    /// Distinct users any credential, grant or long-term subscription reaches.
    pub users_reachable: i64,
}

/// Which recent messages of an app (see [`StatsStore::recent_messages`]).
#[derive(Debug, Clone, Copy)]
pub struct RecentQuery<'a> {
    pub appid: &'a str,
    /// Only this user's messages.
    pub openid: Option<&'a str>,
    /// Only messages created before this `(created_at, id)`: the last of the
    /// previous page.
    pub before: Option<(i64, &'a str)>,
    /// At most this many.
    pub limit: i64,
}

/// Failed messages of one hour and one failure.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FailureCount {
    /// Hours since the start of the window (0 is the oldest).
    pub hour: i64,
    /// WeChat's errcode, when WeChat gave one.
    pub wechat_errcode: Option<i64>,
    /// The gateway's failure code.
    pub error_code: Option<String>,
    pub messages: i64,
}

/// The token's standing, never the token itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenStanding {
    /// Whether a token is stored.
    pub has_token: bool,
    pub token_expires_at: Option<i64>,
    /// When the fetch that produced it started.
    pub token_fetched_at: Option<i64>,
    /// When WeChat last accepted it in a check.
    pub token_checked_at: Option<i64>,
    /// The instance holding the refresh lease, and until when.
    pub refresh_holder: Option<String>,
    pub refresh_lease_until: Option<i64>,
}

/// An attempt with the message it belongs to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct AttemptOf {
    pub(super) message_id: String,
    #[sqlx(flatten)]
    pub(super) attempt: AttemptRow,
}

/// The operators' reads of the ledger.
#[async_trait]
pub trait StatsStore: Send + Sync {
    /// The app's live credentials and grants (available, expiring after
    /// `now`; `expiring` counts those expiring by `soon`), the users each
    /// subscribe template reaches, and the users reachable at all.
    async fn ledger_counts(&self, appid: &str, now: i64, soon: i64)
        -> anyhow::Result<LedgerCounts>;

    /// The app's messages, newest first, each with its attempts in order.
    async fn recent_messages(
        &self,
        query: &RecentQuery<'_>,
    ) -> anyhow::Result<Vec<(MessageRow, Vec<AttemptRow>)>>;

    /// The app's messages that failed since `since`, by hour and failure.
    async fn failures_since(&self, appid: &str, since: i64) -> anyhow::Result<Vec<FailureCount>>;

    /// The app's token standing; the default when the app has no row yet.
    async fn token_standing(&self, appid: &str) -> anyhow::Result<TokenStanding>;
}

/// Live credentials by kind and template, from `credentials_live_by_kind`
/// alone (an index-only scan of the app's live rows: every column read is in
/// the index, and `state` is its predicate). `SUM` is cast because
/// PostgreSQL sums BIGINTs as NUMERIC.
pub const LIVE_COUNTS: &str = "SELECT kind, template_id, COUNT(*) AS credentials, \
        CAST(COALESCE(SUM(uses_left), 0) AS BIGINT) AS uses, \
        COUNT(DISTINCT openid) AS users, \
        CAST(COALESCE(SUM(CASE WHEN expires_at <= $3 THEN 1 ELSE 0 END), 0) AS BIGINT) \
            AS expiring \
    FROM credentials \
    WHERE appid = $1 AND state = 'available' AND expires_at > $2 \
    GROUP BY kind, template_id";

/// Users per subscribe template: holders of a live grant (from
/// `credentials_live_by_kind`, whose prefix `(appid, kind)` picks the
/// grants) and long-term subscribers (`subscriptions_long_term`), each user
/// once per template.
pub const TEMPLATE_REACH: &str = "SELECT template_id, COUNT(DISTINCT openid) AS users, \
        CAST(COALESCE(SUM(long_term), 0) AS BIGINT) AS long_term \
    FROM ( \
        SELECT template_id, openid, 0 AS long_term FROM credentials \
        WHERE appid = $1 AND kind = 'subscribe' AND state = 'available' AND expires_at > $2 \
        UNION ALL \
        SELECT template_id, openid, 1 AS long_term FROM subscriptions \
        WHERE appid = $1 AND long_term = TRUE \
    ) AS reach \
    WHERE template_id IS NOT NULL \
    GROUP BY template_id";

/// Distinct users reachable now: the users of the live credentials (from
/// `credentials_claimable`, whose key starts `(appid, openid)`, read alone)
/// and the long-term subscribers, each once. Why `+expires_at`: it keeps
/// SQLite from walking `credentials_by_expiry`, every app's unexpired rows
/// with a table lookup each (ten times slower on a ledger of a million
/// live rows); PostgreSQL reads it as the same comparison.
pub const USERS_REACHABLE: &str = "SELECT COUNT(*) FROM ( \
        SELECT openid FROM credentials \
        WHERE appid = $1 AND state = 'available' AND +expires_at > $2 \
        UNION \
        SELECT openid FROM subscriptions WHERE appid = $1 AND long_term = TRUE \
    ) AS reachable";

pub(super) const MESSAGE_COLUMNS: &str =
    "SELECT id, appid, touser, template_id, status, error_code, \
    wechat_errcode, created_at, updated_at, channel, delivery_error_code, \
    delivery_error_status, delivery_reported_at, reference FROM messages WHERE appid = ";

/// Failed messages by hour of the window and failure, through
/// `messages_failed_by_app` (failed rows only). Integer division on both
/// backends.
pub(super) const FAILURES_SINCE: &str =
    "SELECT (updated_at - $2) / 3600000 AS hour, wechat_errcode, \
        error_code, COUNT(*) AS messages \
    FROM messages \
    WHERE appid = $1 AND status = 'failed' AND updated_at >= $2 \
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

/// The app row's token columns, the token itself only tested for presence.
pub(super) const TOKEN_STANDING: &str =
    "SELECT access_token IS NOT NULL AS has_token, token_expires_at, \
    token_fetched_at, token_checked_at, refresh_holder, refresh_lease_until \
    FROM apps WHERE appid = $1";

/// Implements [`StatsStore`] for `$storage`, a `Backend`.
macro_rules! impl_stats_store {
    ($storage:ty) => {
        const _: () = {
            use ::anyhow::Context as _;

            use $crate::storage::shared::Backend;
            use $crate::storage::stats::*;
            use $crate::storage::{AttemptRow, MessageRow};

            #[async_trait::async_trait]
            impl StatsStore for $storage {
                async fn ledger_counts(
                    &self,
                    appid: &str,
                    now: i64,
                    soon: i64,
                ) -> anyhow::Result<LedgerCounts> {
                    let live = sqlx::query_as::<_, LiveCount>(LIVE_COUNTS)
                        .bind(appid)
                        .bind(now)
                        .bind(soon)
                        .fetch_all(self.reader())
                        .await
                        .context("counting live credentials")?;
                    let templates = sqlx::query_as::<_, TemplateReach>(TEMPLATE_REACH)
                        .bind(appid)
                        .bind(now)
                        .fetch_all(self.reader())
                        .await
                        .context("counting users per template")?;
                    let users_reachable: i64 = sqlx::query_scalar(USERS_REACHABLE)
                        .bind(appid)
                        .bind(now)
                        .fetch_one(self.reader())
                        .await
                        .context("counting users reachable")?;
                    Ok(LedgerCounts {
                        live,
                        templates,
                        users_reachable,
                    })
                }

                async fn recent_messages(
                    &self,
                    query: &RecentQuery<'_>,
                ) -> anyhow::Result<Vec<(MessageRow, Vec<AttemptRow>)>> {
                    let mut builder =
                        sqlx::QueryBuilder::<<Self as Backend>::Db>::new(MESSAGE_COLUMNS);
                    builder.push_bind(query.appid);
                    if let Some(openid) = query.openid {
                        builder.push(" AND touser = ").push_bind(openid);
                    }
                    if let Some((created_at, id)) = query.before {
                        // Keyset paging on (created_at, id): stable while
                        // new messages arrive.
                        builder
                            .push(" AND (created_at < ")
                            .push_bind(created_at)
                            .push(" OR (created_at = ")
                            .push_bind(created_at)
                            .push(" AND id < ")
                            .push_bind(id)
                            .push("))");
                    }
                    builder
                        .push(" ORDER BY created_at DESC, id DESC LIMIT ")
                        .push_bind(query.limit);
                    let messages: Vec<MessageRow> = builder
                        .build_query_as()
                        .fetch_all(self.reader())
                        .await
                        .context("reading recent messages")?;
                    let mut attempts = attempts_of(self, &messages).await?;
                    Ok(messages
                        .into_iter()
                        .map(|message| {
                            let own = attempts.remove(&message.id).unwrap_or_default();
                            (message, own)
                        })
                        .collect())
                }

                async fn failures_since(
                    &self,
                    appid: &str,
                    since: i64,
                ) -> anyhow::Result<Vec<FailureCount>> {
                    sqlx::query_as(FAILURES_SINCE)
                        .bind(appid)
                        .bind(since)
                        .fetch_all(self.reader())
                        .await
                        .context("counting failed messages")
                }

                async fn token_standing(&self, appid: &str) -> anyhow::Result<TokenStanding> {
                    let row = sqlx::query_as(TOKEN_STANDING)
                        .bind(appid)
                        .fetch_optional(self.reader())
                        .await
                        .context("reading the token's standing")?;
                    Ok(row.unwrap_or_default())
                }
            }

            /// The attempts of `messages`, in order, by message: one
            /// statement over `attempts_by_message`.
            async fn attempts_of(
                storage: &$storage,
                messages: &[MessageRow],
            ) -> anyhow::Result<::std::collections::HashMap<String, Vec<AttemptRow>>> {
                let mut by_message = ::std::collections::HashMap::new();
                if messages.is_empty() {
                    return Ok(by_message);
                }
                let mut builder = sqlx::QueryBuilder::<<$storage as Backend>::Db>::new(
                    "SELECT message_id, credential_id, credential_kind, errcode, outcome, \
                     detail, at, msgid FROM attempts WHERE message_id IN (",
                );
                let mut ids = builder.separated(", ");
                for message in messages {
                    ids.push_bind(message.id.clone());
                }
                builder.push(") ORDER BY message_id, id");
                let rows: Vec<AttemptOf> = builder
                    .build_query_as()
                    .fetch_all(storage.reader())
                    .await
                    .context("reading the messages' attempts")?;
                for row in rows {
                    by_message
                        .entry(row.message_id)
                        .or_insert_with(Vec::new)
                        .push(row.attempt);
                }
                Ok(by_message)
            }
        };
    };
}

pub(crate) use impl_stats_store;
