//! SQL shared by both backends. sqlx binds `$N` positionally on SQLite too, so
//! one text serves both wherever the dialects agree; the few statements that
//! differ live beside their backend.

pub const PING: &str = "SELECT 1";

pub const ENSURE_APP: &str = "INSERT INTO apps (appid) VALUES ($1) ON CONFLICT (appid) DO NOTHING";

/// `ON CONFLICT DO NOTHING` makes a repeated post a no-op; the rows that were
/// not inserted are then looked up to tell a duplicate from a foreign owner.
pub const INSERT_CREDENTIALS_HEAD: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, uses_left, state, collected_at, expires_at, created_at, updated_at) ";
pub const INSERT_CREDENTIALS_TAIL: &str =
    " ON CONFLICT (appid, kind, value) DO NOTHING RETURNING kind, value";

pub const CREDENTIAL_OWNER: &str =
    "SELECT openid FROM credentials WHERE appid = $1 AND kind = $2 AND value = $3";

pub const QUOTA: &str =
    "SELECT kind, COUNT(*) AS credentials, CAST(SUM(uses_left) AS BIGINT) AS sends, \
    MIN(expires_at) AS next_expiry \
    FROM credentials \
    WHERE appid = $1 AND openid = $2 AND state = 'available' AND expires_at > $3 \
    GROUP BY kind ORDER BY kind";

/// The candidate of a claim: soonest expiry first, ties broken by age so the
/// order is total. Served by the partial index `credentials_claimable`.
pub const CLAIM_CANDIDATE: &str = "SELECT id FROM credentials \
    WHERE appid = $3 AND openid = $4 AND state = 'available' AND expires_at > $5 \
    ORDER BY expires_at, id LIMIT 1";

pub const CLAIM_UPDATE_HEAD: &str = "UPDATE credentials \
    SET state = 'leased', lease_expires_at = $1, updated_at = $2 WHERE id = (";
pub const CLAIM_UPDATE_TAIL: &str =
    ") RETURNING id, kind, value, uses_left, collected_at, expires_at";

pub const CREATE_MESSAGE: &str = "INSERT INTO messages \
    (id, appid, touser, template_id, payload, status, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $7)";

/// Every settlement only touches a row still leased, so a late settle after
/// lease recovery cannot resurrect or double-count a credential.
pub const SETTLE_SPENT: &str = "UPDATE credentials \
    SET uses_left = uses_left - 1, \
        state = CASE WHEN uses_left <= 1 THEN 'exhausted' ELSE 'available' END, \
        lease_expires_at = NULL, updated_at = $2 \
    WHERE id = $1 AND state = 'leased'";
pub const SETTLE_RETIRED: &str = "UPDATE credentials \
    SET state = 'retired', retired_errcode = $3, lease_expires_at = NULL, updated_at = $2 \
    WHERE id = $1 AND state = 'leased'";
pub const SETTLE_RELEASED: &str = "UPDATE credentials \
    SET state = 'available', lease_expires_at = NULL, updated_at = $2 \
    WHERE id = $1 AND state = 'leased'";

pub const INSERT_ATTEMPT: &str = "INSERT INTO attempts \
    (message_id, credential_id, credential_kind, errcode, outcome, detail, at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub const FINISH_MESSAGE: &str = "UPDATE messages \
    SET status = $2, error_code = $3, wechat_errcode = $4, updated_at = $5 WHERE id = $1";

pub const MESSAGE: &str = "SELECT id, appid, touser, template_id, status, error_code, \
    wechat_errcode, created_at, updated_at FROM messages WHERE appid = $1 AND id = $2";

pub const ATTEMPTS: &str = "SELECT credential_id, credential_kind, errcode, outcome, detail, at \
    FROM attempts WHERE message_id = $1 ORDER BY id";

pub const APP_STATE: &str = "SELECT access_token, token_expires_at, token_fetched_at, \
    send_blocked_until FROM apps WHERE appid = $1";

/// A lease in the database, not in memory: with several instances on one
/// ledger exactly one of them fetches a token at a time. An expired lease (its
/// holder died) can be taken over.
pub const LEASE_TOKEN_REFRESH: &str = "UPDATE apps \
    SET refresh_holder = $2, refresh_lease_until = $4 \
    WHERE appid = $1 AND (refresh_holder IS NULL OR refresh_holder = $2 OR refresh_lease_until <= $3)";

pub const RELEASE_TOKEN_REFRESH: &str = "UPDATE apps \
    SET refresh_holder = NULL, refresh_lease_until = NULL \
    WHERE appid = $1 AND refresh_holder = $2";

/// An older answer never overwrites a newer token: the fetch start time orders
/// them. Equal times tie in favour of the later write, which under the lease
/// is the later fetch.
pub const STORE_TOKEN: &str = "UPDATE apps \
    SET access_token = $2, token_expires_at = $3, token_fetched_at = $4 \
    WHERE appid = $1 AND (token_fetched_at IS NULL OR token_fetched_at <= $4)";

pub const BLOCK_SENDS: &str = "UPDATE apps SET send_blocked_until = $2 WHERE appid = $1";

pub const MARK_EXPIRED: &str = "UPDATE credentials SET state = 'expired', updated_at = $1 \
    WHERE state = 'available' AND expires_at <= $1";

/// Deleted in bounded batches so the single SQLite writer is never held for long.
pub const DELETE_OLD_CREDENTIALS: &str = "DELETE FROM credentials WHERE id IN ( \
    SELECT id FROM credentials \
    WHERE state IN ('exhausted', 'retired', 'expired') AND expires_at <= $1 LIMIT $2)";

/// Attempts go with their message (`ON DELETE CASCADE`).
pub const DELETE_OLD_MESSAGES: &str = "DELETE FROM messages WHERE id IN ( \
    SELECT id FROM messages WHERE updated_at <= $1 AND status <> 'pending' LIMIT $2)";

/// Rows deleted per sweep statement.
pub const SWEEP_BATCH: i64 = 5_000;
