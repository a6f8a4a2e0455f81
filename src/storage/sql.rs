//! SQL shared by both backends. sqlx binds `$N` positionally on SQLite too, so
//! one text serves both wherever the dialects agree; the few statements that
//! differ live beside their backend. Public so that the benchmark runs the
//! very same statements.

pub const PING: &str = "SELECT 1";

/// Why one branch per status: each is served by that status's partial
/// index (`messages_waiting`, `messages_unfinished`, `messages_scheduled`),
/// so the count reads only the rows in that status, never the whole table.
pub const MESSAGE_BACKLOG: &str = "\
    SELECT appid, status, COUNT(*) AS count FROM messages WHERE status = 'waiting' GROUP BY appid, status \
    UNION ALL \
    SELECT appid, status, COUNT(*) AS count FROM messages WHERE status = 'pending' GROUP BY appid, status \
    UNION ALL \
    SELECT appid, status, COUNT(*) AS count FROM messages WHERE status = 'scheduled' GROUP BY appid, status";

pub const ENSURE_APP: &str = "INSERT INTO apps (appid) VALUES ($1) ON CONFLICT (appid) DO NOTHING";

/// `ON CONFLICT DO NOTHING` makes a repeated post a no-op; the rows that were
/// not inserted are then looked up to tell a duplicate from a foreign owner
/// or another kind. The conflict target is the value alone: one value is one
/// credential per app, whatever kind it was posted as (migration 0003).
pub const INSERT_CREDENTIALS_HEAD: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, uses_left, state, collected_at, expires_at, created_at, updated_at) ";
pub const INSERT_CREDENTIALS_TAIL: &str =
    " ON CONFLICT (appid, value) DO NOTHING RETURNING kind, value";

pub const CREDENTIAL_OWNER: &str =
    "SELECT openid, kind FROM credentials WHERE appid = $1 AND value = $2";

/// The user's form_ids and prepay_ids (subscribe grants: [`SUBSCRIPTION_QUOTA`]).
pub const QUOTA: &str =
    "SELECT kind, COUNT(*) AS credentials, CAST(SUM(uses_left) AS BIGINT) AS sends, \
    MIN(expires_at) AS next_expiry \
    FROM credentials \
    WHERE appid = $1 AND openid = $2 AND state = 'available' AND expires_at > $3 \
      AND template_id IS NULL \
    GROUP BY kind ORDER BY kind";

/// Per template the user decided on: the one-time grants left, the
/// long-term flag, and the latest decision. Every grant is recorded with a
/// decision, so the decisions list every template with grants.
pub const SUBSCRIPTION_QUOTA: &str = "SELECT s.template_id, s.decision, s.decided_at, \
    s.long_term, (SELECT COUNT(*) FROM credentials c \
        WHERE c.appid = s.appid AND c.openid = s.openid AND c.template_id = s.template_id \
          AND c.kind = 'subscribe' AND c.state = 'available') AS grants \
    FROM subscriptions s WHERE s.appid = $1 AND s.openid = $2 ORDER BY s.template_id";

/// `{lock}` is `FOR UPDATE SKIP LOCKED` on PostgreSQL: a concurrent claim
/// passes over the row another claim is leasing and takes the next one. On
/// SQLite the single writer connection already makes the statement atomic.
/// `$8` is the template a subscribe message needs a grant of, NULL for a
/// template message: matched null-safely, so a grant never pays for a
/// legacy send, a form_id never for a subscribe send, and a grant of one
/// template never for another. Grants never expire, so among them the
/// order is the oldest first.
pub const CLAIM: &str = "UPDATE credentials \
    SET state = 'leased', lease_expires_at = $1, updated_at = $2, lease_message_id = $6, \
        lease_token = $7 \
    WHERE id = (SELECT id FROM credentials \
        WHERE appid = $3 AND openid = $4 AND state = 'available' AND expires_at > $5 \
          AND template_id IS NOT DISTINCT FROM $8 \
        ORDER BY expires_at, id LIMIT 1 {lock}) \
    RETURNING id, kind, value, uses_left, unproven_uses, collected_at, expires_at, \
        lease_message_id";

/// A long-term subscription pays by a ticket: a credential of kind
/// `long_term` made for this send (value `$5`, never expiring: `$6`) and
/// leased to its message like any other, so that a lost answer or a crash
/// is resolved by the same rules. Made only while the user's subscription
/// to the template (`$9`) is on. Why a row per send and not the flag
/// itself leased: concurrent sends under one subscription must not queue
/// behind one lease.
pub const CLAIM_LONG_TERM: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, template_id, uses_left, state, collected_at, expires_at, \
     lease_expires_at, lease_message_id, lease_token, created_at, updated_at) \
    SELECT appid, openid, 'long_term', $5, template_id, 1, 'leased', $2, $6, $1, $7, $8, $2, $2 \
    FROM subscriptions \
    WHERE appid = $3 AND openid = $4 AND template_id = $9 AND long_term = TRUE \
    RETURNING id, kind, value, uses_left, unproven_uses, collected_at, expires_at, \
        lease_message_id";

/// The fence: every write of a run first renews its message's lease, which
/// only works while the message still carries the run's token. Why an
/// UPDATE and not a SELECT: on PostgreSQL it locks the message row until the
/// transaction ends, so a takeover (which writes a new token to the same
/// row) cannot slip in between this check and the writes it guards.
///
/// Statements that find their row by primary key and check its state say
/// `IS NOT DISTINCT FROM` (the same test: the column is never NULL), not `=`.
/// With `=`, PostgreSQL may match a partial index of rows in that state
/// (`messages_unfinished`, `credentials_leased`, `credentials_by_lease_message`)
/// and, when the last ANALYZE saw none, price a scan of the whole index as
/// low as the lookup by key: every such statement then reads every pending
/// message or leased credential (`tests/api/storage.rs` holds the plans).
pub const FENCE_MESSAGE: &str = "UPDATE messages SET lease_until = $3 \
    WHERE id = $1 AND lease_token = $2 AND status IS NOT DISTINCT FROM 'pending'";

/// [`FENCE_MESSAGE`] that leaves the lease's time as it is.
pub const FENCE_MESSAGE_KEEPING: &str = "UPDATE messages SET lease_until = lease_until \
    WHERE id = $1 AND lease_token = $2 AND status IS NOT DISTINCT FROM 'pending'";

/// A run's lease renewed: the message and the credentials it holds.
pub const RENEW_CREDENTIAL_LEASES: &str = "UPDATE credentials SET lease_expires_at = $3 \
    WHERE lease_message_id = $1 AND lease_token = $2 AND state = 'leased'";

/// `$1`–`$13` the message's columns as `bind_message!` binds them (`$12`
/// the caller's reference, `$13` the send's idempotency key), `$14` now.
pub const CREATE_MESSAGE: &str = "INSERT INTO messages \
    (id, appid, touser, template_id, payload, status, delivery, wait_until, lease_until, \
     lease_token, channel, reference, idempotency_key, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)";

/// Every settlement only touches a row still leased under the settling run's
/// token (`$3`), so a late settle after lease recovery cannot resurrect or
/// double-count a credential (why `IS NOT DISTINCT FROM`: [`FENCE_MESSAGE`]).
/// `$4` is 1 when the send's delivery is unproven (its answer was lost): such
/// a use may still be unused at WeChat, so the credential is never probed
/// afterwards.
pub const SETTLE_SPENT: &str = "UPDATE credentials \
    SET uses_left = uses_left - 1, unproven_uses = unproven_uses + $4, lease_message_id = NULL, \
        state = CASE WHEN uses_left <= 1 THEN 'exhausted' ELSE 'available' END, \
        lease_expires_at = NULL, lease_token = NULL, updated_at = $2 \
    WHERE id = $1 AND state IS NOT DISTINCT FROM 'leased' AND lease_token = $3";
pub const SETTLE_RETIRED: &str = "UPDATE credentials \
    SET state = 'retired', retired_errcode = $4, lease_expires_at = NULL, lease_message_id = NULL, \
        lease_token = NULL, updated_at = $2 \
    WHERE id = $1 AND state IS NOT DISTINCT FROM 'leased' AND lease_token = $3";
/// A long-term ticket was made for one send: released, it is used up
/// rather than put in a pool (the subscription it came from is untouched).
pub const SETTLE_RELEASED: &str = "UPDATE credentials \
    SET state = CASE WHEN kind = 'long_term' THEN 'exhausted' ELSE 'available' END, \
        lease_expires_at = NULL, lease_message_id = NULL, lease_token = NULL, updated_at = $2 \
    WHERE id = $1 AND state IS NOT DISTINCT FROM 'leased' AND lease_token = $3";
/// 43101 on a subscribe send: WeChat holds no grant of the template for
/// the user, or the user turned it off. Run with [`SETTLE_RETIRED`] on the
/// credential `$1`: every other grant of its (app, user, template) still in
/// the pool is retired with errcode `$3`...
pub const REVOKE_TEMPLATE_GRANTS: &str = "UPDATE credentials \
    SET state = 'retired', retired_errcode = $3, updated_at = $2 \
    WHERE state = 'available' AND kind = 'subscribe' \
      AND (appid, openid, template_id) = \
          (SELECT appid, openid, template_id FROM credentials WHERE id = $1)";
/// ...and the long-term subscription is switched off, with WeChat's word
/// recorded as the user's latest decision.
pub const REVOKE_SUBSCRIPTION: &str = "UPDATE subscriptions \
    SET long_term = FALSE, decision = 'revoked', decided_at = $2, updated_at = $2 \
    WHERE (appid, openid, template_id) = \
          (SELECT appid, openid, template_id FROM credentials WHERE id = $1)";
/// Parked: still leased, but by no message, until `$4`. A crash then finds
/// it unowned and simply returns it.
pub const SETTLE_PARKED: &str = "UPDATE credentials \
    SET lease_message_id = NULL, lease_expires_at = $4, updated_at = $2 \
    WHERE id = $1 AND state IS NOT DISTINCT FROM 'leased' AND lease_token = $3";

pub const INSERT_ATTEMPT: &str = "INSERT INTO attempts \
    (message_id, credential_id, credential_kind, errcode, outcome, detail, at, msgid) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Run inside a fenced transaction (after [`FENCE_MESSAGE`]).
pub const FINISH_MESSAGE: &str = "UPDATE messages \
    SET status = $2, error_code = $3, wechat_errcode = $4, updated_at = $5, \
        lease_until = NULL, lease_token = NULL, next_attempt_at = NULL \
    WHERE id = $1 AND lease_token = $6";

/// Whether the user of `messages` holds what can pay for the message,
/// expiring after the given placeholder: for a template message a form_id
/// or prepay_id, for a subscribe message a grant of its template or a
/// long-term subscription to it. A literal, for `concat!`.
macro_rules! usable_credential {
    ($valid_after:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM credentials c \
                WHERE c.appid = messages.appid AND c.openid = messages.touser \
                  AND c.state = 'available' AND c.expires_at > ",
            $valid_after,
            " AND c.template_id IS NOT DISTINCT FROM \
                      (CASE WHEN messages.channel = 'subscribe' THEN messages.template_id END)) \
              OR (messages.channel = 'subscribe' AND EXISTS (SELECT 1 FROM subscriptions s \
                WHERE s.appid = messages.appid AND s.openid = messages.touser \
                  AND s.template_id = messages.template_id AND s.long_term = TRUE)))"
        )
    };
}

/// A message with no credential yet, kept until `wait_until` and due at
/// `$2` — or at once (`$4`) when a usable credential (expiring after `$3`)
/// arrived since the claim that found none. Fenced by the run's token (`$5`).
pub const WAIT_MESSAGE: &str = concat!(
    "UPDATE messages \
    SET status = 'waiting', lease_until = NULL, lease_token = NULL, updated_at = $4, \
        next_attempt_at = CASE WHEN ",
    usable_credential!("$3"),
    " THEN $4 ELSE $2 END \
    WHERE id = $1 AND lease_token = $5 AND status IS NOT DISTINCT FROM 'pending'"
);

/// A message that found no token waits with its credential back in the
/// pool: due again at `$2` whatever credentials arrive meanwhile.
pub const WAIT_FOR_TOKEN: &str = "UPDATE messages \
    SET status = 'waiting', lease_until = NULL, lease_token = NULL, updated_at = $3, \
        next_attempt_at = $2 \
    WHERE id = $1 AND lease_token = $4 AND status IS NOT DISTINCT FROM 'pending'";

/// Run after the wait commits, in a fresh snapshot. Why: on PostgreSQL a
/// credential committed while the wait's statement ran is invisible to it,
/// and the collection's nudge (which also runs after its own commit) may
/// have read the message as still pending. Whichever of the two commits
/// last sees the other's row, so one of them makes the message due. `$1`
/// narrows it to one message, or is NULL for every waiting message: the
/// recovery worker's net for a nudge lost to a crash between a collection's
/// commit and its nudge.
pub const WAKE_IF_CREDENTIAL: &str = concat!(
    "UPDATE messages SET next_attempt_at = $2 \
    WHERE status = 'waiting' AND next_attempt_at > $2 AND ($1 IS NULL OR id = $1) AND ",
    usable_credential!("$3")
);

/// A user's waiting messages that their new grants or subscriptions can pay
/// for, made due now. Run after the grants commit, for the reason given at
/// [`WAKE_IF_CREDENTIAL`].
pub const WAKE_USER: &str = concat!(
    "UPDATE messages SET next_attempt_at = $2 \
    WHERE status = 'waiting' AND next_attempt_at > $2 AND appid = $1 AND touser = $4 AND ",
    usable_credential!("$3")
);

/// Waiting messages whose time has come, taken by one worker each under the
/// taking run's token (`$4`).
pub const CLAIM_DUE_WAITING: &str = "UPDATE messages \
    SET status = 'pending', lease_until = $1, updated_at = $2, lease_token = $4 \
    WHERE id IN (SELECT id FROM messages \
        WHERE status = 'waiting' AND next_attempt_at <= $2 \
        ORDER BY next_attempt_at LIMIT $3 {lock}) \
    RETURNING id, appid, touser, template_id, payload, status, delivery, wait_until, channel";

/// A new credential for a user makes their waiting messages due now; the
/// conditions and the list of users follow.
pub const NUDGE_WAITING_HEAD: &str = "UPDATE messages SET next_attempt_at = ";

/// Leased credentials whose holder died: re-leased to the recovering
/// instance under its token (`$4`), which fences the dead holder off.
pub const CLAIM_EXPIRED_LEASES: &str = "UPDATE credentials \
    SET lease_expires_at = $1, updated_at = $2, lease_token = $4 \
    WHERE id IN (SELECT id FROM credentials \
        WHERE state = 'leased' AND lease_expires_at <= $2 \
        ORDER BY lease_expires_at LIMIT $3 {lock}) \
    RETURNING id, kind, value, uses_left, unproven_uses, collected_at, expires_at, \
        lease_message_id";

/// Run right after [`CLAIM_EXPIRED_LEASES`], in its transaction: the pending
/// messages of the credentials it just re-leased under token `$2` are taken
/// under the same token, until `$1`. Why: a message and the credential leased
/// to it must change hands together. When only the credential moved, the run
/// that stalled past its lease (waiting for a token, a slot, a backoff) still
/// passed its message's fence: it renewed, called WeChat, and finished the
/// message while its settlement was fenced off, so the credential went back
/// to the pool with a use WeChat had spent; and a run holding the credential
/// but not the message settled it as spent while the message stayed pending
/// with nothing leased, which let stale-message recovery send it again with
/// the next credential (a duplicate, found by the simulation, seed 827).
/// (The rows just re-leased all carry `lease_expires_at = $1`: that
/// condition lets the subquery use the partial index `credentials_leased`.)
pub const TAKE_MESSAGES_OF_CLAIMED: &str = "UPDATE messages \
    SET lease_until = $1, lease_token = $2 \
    WHERE status = 'pending' AND id IN (SELECT lease_message_id FROM credentials \
        WHERE state = 'leased' AND lease_expires_at = $1 AND lease_token = $2)";

/// Pending messages whose worker died and that hold no credential: nothing
/// of theirs can be in flight, so another worker may carry them on, under
/// its token (`$4`).
pub const CLAIM_STALE_MESSAGES: &str = "UPDATE messages \
    SET lease_until = $1, updated_at = $2, lease_token = $4 \
    WHERE id IN (SELECT m.id FROM messages m \
        WHERE m.status = 'pending' AND m.lease_until <= $2 \
          AND NOT EXISTS (SELECT 1 FROM credentials c \
                          WHERE c.state = 'leased' AND c.lease_message_id = m.id) \
        ORDER BY m.lease_until LIMIT $3 {lock}) \
    RETURNING id, appid, touser, template_id, payload, status, delivery, wait_until, channel";

pub const STORED_MESSAGE: &str = "SELECT id, appid, touser, template_id, payload, status, \
    delivery, wait_until, channel FROM messages WHERE id = $1";

/// Takes a key, or takes over one past its retention. Returns a row only
/// when this request owns the key now.
pub const BEGIN_IDEMPOTENT: &str = "INSERT INTO idempotency_keys \
    (appid, key, request_hash, message_id, state, created_at, expires_at) \
    VALUES ($1, $2, $3, $4, 'in_flight', $5, $6) \
    ON CONFLICT (appid, key) DO UPDATE \
    SET request_hash = excluded.request_hash, message_id = excluded.message_id, \
        state = 'in_flight', response_status = NULL, response_body = NULL, \
        created_at = excluded.created_at, expires_at = excluded.expires_at \
    WHERE idempotency_keys.expires_at <= $5 \
    RETURNING message_id";

pub const IDEMPOTENCY_RECORD: &str = "SELECT request_hash, message_id, state, response_status, \
    response_body FROM idempotency_keys WHERE appid = $1 AND key = $2";

pub const COMPLETE_IDEMPOTENT: &str = "UPDATE idempotency_keys \
    SET state = 'done', response_status = $4, response_body = $5 \
    WHERE appid = $1 AND key = $2 AND message_id = $3";

pub const DELETE_OLD_IDEMPOTENCY_KEYS: &str =
    "DELETE FROM idempotency_keys WHERE (appid, key) IN ( \
    SELECT appid, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)";

pub const MESSAGE: &str = "SELECT id, appid, touser, template_id, status, error_code, \
    wechat_errcode, created_at, updated_at, channel, delivery_error_code, delivery_error_status, \
    delivery_reported_at, reference FROM messages WHERE appid = $1 AND id = $2";

pub const ATTEMPTS: &str = "SELECT credential_id, credential_kind, errcode, outcome, detail, at, \
    msgid FROM attempts WHERE message_id = $1 ORDER BY id";

/// Every template some user of the app decided on (a subscribe template,
/// whether or not the catalogue knows it), by a loose index scan over
/// `subscriptions_by_template`: each step is one probe for the next template
/// id, so the cost is the number of templates, not of users.
pub const DECIDED_TEMPLATES: &str = "WITH RECURSIVE decided (template_id) AS ( \
        SELECT MIN(template_id) FROM subscriptions WHERE appid = $1 \
        UNION ALL \
        SELECT (SELECT MIN(s.template_id) FROM subscriptions s \
                WHERE s.appid = $1 AND s.template_id > decided.template_id) \
        FROM decided WHERE decided.template_id IS NOT NULL) \
    SELECT template_id FROM decided WHERE template_id IS NOT NULL";

/// Records a prompt result once: a row comes back only for the first post
/// of its request_id.
pub const INSERT_PROMPT: &str = "INSERT INTO subscription_prompts \
    (appid, openid, request_id, request_hash, outcome, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (appid, openid, request_id) DO NOTHING RETURNING request_id";

pub const PROMPT: &str = "SELECT request_hash, outcome FROM subscription_prompts \
    WHERE appid = $1 AND openid = $2 AND request_id = $3";

/// Whether the catalogue knows the template as long-term (type 3).
pub const TEMPLATE_IS_LONG_TERM: &str = "SELECT 1 FROM templates \
    WHERE appid = $1 AND template_id = $2 AND subscription = 'long_term'";

/// The user's latest decision on a template. A long-term subscription is
/// switched on by an accept (`$6`) and stays as it was otherwise: a later
/// `reject` in a prompt does not turn off what the user keeps on (only
/// WeChat's 43101 or change event does).
pub const RECORD_DECISION: &str = "INSERT INTO subscriptions \
    (appid, openid, template_id, decision, decided_at, long_term, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $5) \
    ON CONFLICT (appid, openid, template_id) DO UPDATE \
    SET decision = excluded.decision, decided_at = excluded.decided_at, \
        long_term = (subscriptions.long_term OR excluded.long_term), \
        updated_at = excluded.updated_at";

/// One one-time grant: a credential of kind `subscribe` for one template.
pub const INSERT_GRANT: &str = "INSERT INTO credentials \
    (appid, openid, kind, value, template_id, uses_left, state, collected_at, expires_at, \
     created_at, updated_at) \
    VALUES ($1, $2, 'subscribe', $3, $4, 1, 'available', $5, $6, $5, $5)";

pub const APP_STATE: &str = "SELECT access_token, token_expires_at, token_fetched_at, \
    send_blocked_until, token_fetch_tat, token_checked_at FROM apps WHERE appid = $1";

/// A lease in the database, not in memory: with several instances on one
/// ledger exactly one of them fetches a token at a time. An expired lease (its
/// holder died) can be taken over.
pub const LEASE_TOKEN_REFRESH: &str = "UPDATE apps \
    SET refresh_holder = $2, refresh_lease_until = $4 \
    WHERE appid = $1 AND (refresh_holder IS NULL OR refresh_holder = $2 OR refresh_lease_until <= $3)";

pub const RELEASE_TOKEN_REFRESH: &str = "UPDATE apps \
    SET refresh_holder = NULL, refresh_lease_until = NULL \
    WHERE appid = $1 AND refresh_holder = $2";

/// An older answer never overwrites a newer token: `$4` orders them, the
/// fetch's start, or the replaced token's own `$4` when that is later (the
/// refresh lease orders the fetches whatever the instances' clocks say;
/// src/tokens). Equal times tie in favour of the later write, which under
/// the lease is the later fetch.
pub const STORE_TOKEN: &str = "UPDATE apps \
    SET access_token = $2, token_expires_at = $3, token_fetched_at = $4, token_checked_at = NULL \
    WHERE appid = $1 AND (token_fetched_at IS NULL OR token_fetched_at <= $4)";

/// Takes one fetch from the app's budget: the new arrival time `$3` is
/// written only over the one the caller read (`$2`, NULL for a full budget).
/// Why a compare-and-set: the rule (src/tokens/budget.rs) is computed in
/// Rust, and an instance whose lease ran out mid-fetch may race the next.
pub const TAKE_TOKEN_FETCH: &str = "UPDATE apps SET token_fetch_tat = $3 \
    WHERE appid = $1 AND token_fetch_tat IS NOT DISTINCT FROM $2";

/// WeChat accepted `$2` at `$3`: recorded only while it is still the stored token.
pub const RECORD_TOKEN_CHECK: &str = "UPDATE apps SET token_checked_at = $3 \
    WHERE appid = $1 AND access_token = $2";

/// Takes one forced stable_token refresh from the app's budget: at most
/// `$4` a China day (`$2`), and never within 30 s of the last one (`$3` is
/// now). One statement, so two instances cannot both take the last one.
/// Right-hand sides of SET read the row as it was, on both databases.
pub const TAKE_FORCE_REFRESH: &str = "UPDATE apps \
    SET force_refresh_count = CASE WHEN force_refresh_day = $2 THEN force_refresh_count + 1 ELSE 1 END, \
        force_refresh_day = $2, force_refreshed_at = $3 \
    WHERE appid = $1 \
      AND (force_refreshed_at IS NULL OR force_refreshed_at <= $3 - 30000) \
      AND (force_refresh_day IS NULL OR force_refresh_day <> $2 OR force_refresh_count < $4)";

pub const BLOCK_SENDS: &str = "UPDATE apps SET send_blocked_until = $2 WHERE appid = $1";

/// The block [`BLOCK_SENDS`] is about to replace.
pub const SENDS_BLOCKED_UNTIL: &str = "SELECT send_blocked_until FROM apps WHERE appid = $1";

pub const MARK_EXPIRED: &str = "UPDATE credentials SET state = 'expired', updated_at = $1 \
    WHERE state = 'available' AND expires_at <= $1";

/// Deleted in bounded batches so the single SQLite writer is never held for long.
/// A dead row is kept for the retention after its expiry, or, for kinds that
/// never expire (grants, long-term tickets, stored with the largest i64),
/// after it died (`updated_at`).
pub const DELETE_OLD_CREDENTIALS: &str = "DELETE FROM credentials WHERE id IN ( \
    SELECT id FROM credentials \
    WHERE state IN ('exhausted', 'retired', 'expired') \
      AND (expires_at <= $1 OR (expires_at = 9223372036854775807 AND updated_at <= $1)) \
    LIMIT $2)";

/// Prompt results are kept as long as messages: a frontend retries within
/// minutes, not months.
pub const DELETE_OLD_PROMPTS: &str =
    "DELETE FROM subscription_prompts WHERE (appid, openid, request_id) IN ( \
    SELECT appid, openid, request_id FROM subscription_prompts WHERE created_at <= $1 LIMIT $2)";

/// Attempts go with their message (`ON DELETE CASCADE`).
pub const DELETE_OLD_MESSAGES: &str = "DELETE FROM messages WHERE id IN ( \
    SELECT id FROM messages WHERE updated_at <= $1 AND status <> 'pending' LIMIT $2)";

/// Rows deleted per sweep statement.
pub const SWEEP_BATCH: i64 = 5_000;

/// Fills the `{lock}` slot of a statement.
pub fn with_lock(statement: &str, lock: &str) -> String {
    statement.replace("{lock}", lock)
}

// The template catalogue (migration 0005): an app's templates of both
// channels, as WeChat last listed them.

/// A listing replaces its channel: rows of the channel first go.
pub const DELETE_TEMPLATES_OF_CHANNEL: &str =
    "DELETE FROM templates WHERE appid = $1 AND channel = $2";

/// One template written, whatever was stored under its id.
pub const UPSERT_TEMPLATE: &str = "INSERT INTO templates \
    (appid, template_id, channel, title, content, example, subscription, enum_values, refreshed_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
    ON CONFLICT (appid, template_id) DO UPDATE SET channel = excluded.channel, \
        title = excluded.title, content = excluded.content, example = excluded.example, \
        subscription = excluded.subscription, enum_values = excluded.enum_values, \
        refreshed_at = excluded.refreshed_at";

pub const DELETE_TEMPLATE: &str = "DELETE FROM templates WHERE appid = $1 AND template_id = $2";

pub const TEMPLATES_OF_APP: &str = "SELECT template_id, channel, title, content, example, \
    subscription, enum_values, refreshed_at FROM templates WHERE appid = $1 \
    ORDER BY channel, title, template_id";

pub const TEMPLATE_OF_APP: &str = "SELECT template_id, channel, title, content, example, \
    subscription, enum_values, refreshed_at FROM templates \
    WHERE appid = $1 AND template_id = $2";

// WeChat's message push (migration 0006): each item of a verified push
// applied once, in the transaction that records it.

/// Remembers one item of a push: a row comes back only the first time its
/// (app, key) is seen. Why the row is written in the transaction that
/// applies the item: a retry of the push (WeChat tries 3 times when no
/// `success` comes in 5 s) then either finds the row and changes nothing,
/// or finds nothing because nothing was applied.
pub const INSERT_PUSH_EVENT: &str = "INSERT INTO push_events \
    (appid, dedupe_key, event, openid, template_id, effect, received_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (appid, dedupe_key) DO NOTHING RETURNING dedupe_key";

/// What an item seen before did, answered to its retry.
pub const PUSH_EVENT_EFFECT: &str =
    "SELECT effect FROM push_events WHERE appid = $1 AND dedupe_key = $2";

/// A change event's `reject` (the user turned the template off): every
/// grant of (app `$1`, user `$2`, template `$3`) still in the pool is
/// retired. Without an errcode: WeChat told it by a push, not by a send's
/// answer. A grant leased to a send in flight is left to that send's answer.
pub const RETIRE_USER_TEMPLATE_GRANTS: &str = "UPDATE credentials \
    SET state = 'retired', updated_at = $4 \
    WHERE appid = $1 AND openid = $2 AND template_id = $3 AND kind = 'subscribe' \
      AND state = 'available'";

/// ...and the long-term subscription is off with `revoked` as the user's
/// latest decision, inserted if the user never decided through the gateway
/// (the decision was then made where the gateway did not see it).
pub const REVOKE_USER_SUBSCRIPTION: &str = "INSERT INTO subscriptions \
    (appid, openid, template_id, decision, decided_at, long_term, updated_at) \
    VALUES ($1, $2, $3, 'revoked', $4, FALSE, $4) \
    ON CONFLICT (appid, openid, template_id) DO UPDATE \
    SET decision = 'revoked', decided_at = excluded.decided_at, long_term = FALSE, \
        updated_at = excluded.updated_at";

/// The message a sent event is about: the one whose attempt carries the
/// `msgid` (`$1`, served by the partial index `attempts_by_msgid`), of this
/// app (`$2`) and user (`$3`). Why the user too: a msgid is WeChat's, and a
/// push whose user differs from the message's is not about it.
pub const MESSAGE_OF_MSGID: &str = "SELECT a.message_id FROM attempts a \
    JOIN messages m ON m.id = a.message_id \
    WHERE a.msgid = $1 AND m.appid = $2 AND m.touser = $3 \
    ORDER BY a.id LIMIT 1";

/// The final delivery WeChat pushed, on the message (`$1`). Its status is
/// left as the send ended it: `sent` means WeChat accepted the send, and
/// the delivery says what became of it. No grant is refunded.
pub const RECORD_DELIVERY: &str = "UPDATE messages \
    SET delivery_error_code = $2, delivery_error_status = $3, delivery_reported_at = $4, \
        updated_at = $4 \
    WHERE id = $1";

/// Applied pushes are kept as long as messages and prompt results: a retry
/// comes within seconds, and a push older than the replay window (5 min) is
/// refused anyway; the rest is a record of what WeChat said.
pub const DELETE_OLD_PUSH_EVENTS: &str = "DELETE FROM push_events WHERE (appid, dedupe_key) IN ( \
    SELECT appid, dedupe_key FROM push_events WHERE received_at <= $1 LIMIT $2)";

/// A login session. `ON CONFLICT DO NOTHING` on `(appid, code_hash)`: two
/// exchanges of one code store one session, and the second learns it stored
/// nothing (migration 0010).
pub const INSERT_SESSION: &str = "INSERT INTO sessions \
    (id, appid, openid, unionid, token_hash, code_hash, token_salt, created_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (appid, code_hash) DO NOTHING";

pub const SESSION_BY_TOKEN: &str = "SELECT id, appid, openid, unionid, token_salt, created_at, \
    expires_at, revoked_at FROM sessions WHERE token_hash = $1";

pub const SESSION_BY_CODE: &str = "SELECT id, appid, openid, unionid, token_salt, created_at, \
    expires_at, revoked_at FROM sessions WHERE appid = $1 AND code_hash = $2";

/// Revokes once: a session already revoked keeps its first time.
pub const REVOKE_SESSION: &str =
    "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

pub const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM sessions WHERE expires_at <= $1";

/// An API key kept as data; a name already taken stores nothing.
pub const INSERT_API_KEY: &str = "INSERT INTO api_keys \
    (key_id, name, key_hash, apps, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT DO NOTHING";

pub const API_KEY_BY_ID: &str = "SELECT key_id, name, key_hash, apps, scopes, created_at, \
    last_used_at, revoked_at FROM api_keys WHERE key_id = $1";

pub const API_KEYS: &str = "SELECT key_id, name, key_hash, apps, scopes, created_at, \
    last_used_at, revoked_at FROM api_keys ORDER BY name";

pub const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL";

/// Last used, never moved back (instances' clocks differ).
pub const TOUCH_API_KEY: &str = "UPDATE api_keys SET last_used_at = $2 \
    WHERE key_id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";
/// The user's messages that may count against a send cap: those finished
/// since `$3` (range of `messages_by_user_recent`) that were, or may have
/// been, delivered, and those in flight (pending or waiting) whatever their
/// age (from `messages_in_flight_by_user`, only the older ones, so no row is
/// read twice). A failed message counts only when one of its calls' answers
/// was lost (an `at_least_once` message that retried and then failed may
/// have been delivered by the lost call); the others were not delivered.
pub const CAP_COUNTED: &str = "SELECT template_id, status, updated_at FROM messages \
    WHERE appid = $1 AND touser = $2 AND updated_at > $3 \
      AND (status = 'sent' OR status = 'unknown' OR status = 'pending' OR status = 'waiting' \
        OR (status = 'failed' AND EXISTS (SELECT 1 FROM attempts a \
              WHERE a.message_id = messages.id \
                AND (a.outcome = 'ambiguous' OR a.outcome = 'recovered')))) \
    UNION ALL \
    SELECT template_id, status, updated_at FROM messages \
    WHERE appid = $1 AND touser = $2 AND updated_at <= $3 \
      AND (status = 'pending' OR status = 'waiting')";

/// A message kept until its time (`$14`, the due time; `$15`, the time
/// asked for), holding nothing; `$16` now. `$1`–`$13` as in
/// [`CREATE_MESSAGE`].
pub const SCHEDULE_MESSAGE: &str = "INSERT INTO messages \
    (id, appid, touser, template_id, payload, status, delivery, wait_until, lease_until, \
     lease_token, channel, reference, idempotency_key, created_at, updated_at, next_attempt_at, \
     send_at) \
    VALUES ($1, $2, $3, $4, $5, 'scheduled', $7, $8, NULL, NULL, $11, $12, $13, $16, $16, $14, \
     $15)";

/// Ends a scheduled message as cancelled, only while it is still
/// scheduled (why `IS NOT DISTINCT FROM`: [`FENCE_MESSAGE`]).
pub const CANCEL_SCHEDULED: &str = "UPDATE messages \
    SET status = 'failed', error_code = 'cancelled', updated_at = $3, next_attempt_at = NULL \
    WHERE id = $2 AND appid = $1 AND status IS NOT DISTINCT FROM 'scheduled'";

/// The scheduled messages whose time has come, oldest first (the partial
/// index `messages_scheduled`). A read: each is then taken on its own.
pub const DUE_SCHEDULED: &str = "SELECT id, appid, touser, template_id, payload, status, \
    delivery, wait_until, channel FROM messages \
    WHERE status = 'scheduled' AND next_attempt_at <= $1 \
    ORDER BY next_attempt_at LIMIT $2";

/// A due scheduled message taken by one run under its token (`$3`): the
/// first of concurrent takers changes its state, the others match nothing.
/// Its wait for a credential (`wait_until`) moves by how late it is taken.
pub const TAKE_SCHEDULED: &str = "UPDATE messages \
    SET status = 'pending', lease_until = $2, lease_token = $3, updated_at = $4, \
        wait_until = wait_until + ($4 - next_attempt_at), next_attempt_at = NULL \
    WHERE id = $1 AND status IS NOT DISTINCT FROM 'scheduled' AND next_attempt_at <= $4 \
    RETURNING id, appid, touser, template_id, payload, status, delivery, wait_until, channel";

/// A due scheduled message that a full send cap refuses: it ends failed.
pub const CAP_SCHEDULED: &str = "UPDATE messages \
    SET status = 'failed', error_code = 'user_send_limit', updated_at = $2, \
        next_attempt_at = NULL \
    WHERE id = $1 AND status IS NOT DISTINCT FROM 'scheduled'";

/// A scheduled message moved to `$2` (the end of quiet hours), its wait
/// for a credential moved with it.
pub const RESCHEDULE: &str = "UPDATE messages \
    SET wait_until = wait_until + ($2 - next_attempt_at), next_attempt_at = $2, updated_at = $3 \
    WHERE id = $1 AND status IS NOT DISTINCT FROM 'scheduled'";

/// A message a run holds but must not send yet (quiet hours) becomes
/// scheduled for `$3`, fenced by the run's token (`$2`). The run holds no
/// credential when it does this.
pub const HOLD_MESSAGE: &str = "UPDATE messages \
    SET status = 'scheduled', next_attempt_at = $3, lease_until = NULL, lease_token = NULL, \
        updated_at = $4 \
    WHERE id = $1 AND lease_token = $2 AND status IS NOT DISTINCT FROM 'pending'";
// ---- Broadcasts (migration 0013; src/storage/broadcasts.rs) ----

pub const INSERT_BROADCAST: &str = "INSERT INTO broadcasts \
    (id, appid, template_id, channel, spec, state, send_at, rate, next_lease_at, recipients, \
     created_at, updated_at, started_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, 0, $9, $9, \
        CASE WHEN $6 = 'running' THEN $9 END)";

/// Every user who holds, now, what pays for the broadcast's message: an
/// available credential expiring after `$4` whose template is `$5` (NULL: a
/// form_id or prepay_id), or a long-term subscription to `$5`. One
/// statement, so the audience never passes through the service's memory;
/// numbered in openid order.
pub const INSERT_HOLDERS: &str = "INSERT INTO broadcast_recipients \
    (broadcast_id, seq, openid, state, tries, updated_at) \
    SELECT $1, ROW_NUMBER() OVER (ORDER BY openid), openid, 'queued', 0, $2 FROM ( \
        SELECT openid FROM credentials \
        WHERE appid = $3 AND state = 'available' AND expires_at > $4 \
          AND template_id IS NOT DISTINCT FROM $5 \
        UNION \
        SELECT openid FROM subscriptions \
        WHERE appid = $3 AND template_id = $5 AND long_term = TRUE) holders";

pub const INSERT_RECIPIENTS_HEAD: &str =
    "INSERT INTO broadcast_recipients (broadcast_id, seq, openid, data, state, tries, updated_at) ";

pub const SET_RECIPIENT_COUNT: &str = "UPDATE broadcasts SET recipients = $2 WHERE id = $1";

const BROADCAST_COLUMNS: &str = "id, appid, template_id, channel, spec, state, pause_reason, \
    paused_until, send_at, rate, next_lease_at, recipients, created_at, started_at, \
    first_send_at, finished_at, updated_at";

pub fn broadcast_by_id() -> String {
    format!("SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE appid = $1 AND id = $2")
}

pub fn broadcasts_of_app() -> String {
    format!(
        "SELECT {BROADCAST_COLUMNS} FROM broadcasts WHERE appid = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    )
}

/// The jobs a worker may have something to do for: not over, or cancelled
/// with recipients still leased (their sends are resolved before the job
/// ends). Served by the partial index `broadcasts_open` and the few
/// cancelled jobs not yet finished.
pub fn open_broadcasts() -> String {
    format!(
        "SELECT {BROADCAST_COLUMNS} FROM broadcasts \
         WHERE (state = 'scheduled' OR state = 'running' OR state = 'paused' \
            OR (state = 'cancelled' AND finished_at IS NULL)) \
         ORDER BY send_at, id LIMIT $1"
    )
}

/// A job's standing changes only from the one its writer read (compare and
/// set): a caller's command and a worker's start or pause never overwrite
/// each other unseen.
pub const SET_BROADCAST_STANDING: &str = "UPDATE broadcasts \
    SET state = $4, pause_reason = $5, paused_until = $6, updated_at = $7, \
        started_at = CASE WHEN $4 = 'running' THEN COALESCE(started_at, $7) ELSE started_at END \
    WHERE id = $1 AND state = $2 AND pause_reason IS NOT DISTINCT FROM $3";

/// Run with a cancel, in its transaction: the recipients not yet taken are
/// cancelled; the leased ones finish (or are resolved) first.
pub const CANCEL_QUEUED_RECIPIENTS: &str = "UPDATE broadcast_recipients \
    SET state = 'cancelled', updated_at = $2 \
    WHERE broadcast_id = $1 AND state = 'queued'";

pub const FINISH_BROADCAST: &str = "UPDATE broadcasts \
    SET state = $2, finished_at = $3, updated_at = $3, pause_reason = NULL, paused_until = NULL \
    WHERE id = $1 AND finished_at IS NULL AND state = $4";

pub const BROADCAST_PACE: &str = "SELECT state, rate, next_lease_at FROM broadcasts WHERE id = $1";

/// The pacing's compare and set: on PostgreSQL it also locks the job's row
/// until the lease commits, so the instances leasing one job take turns.
pub const TAKE_BROADCAST_PACE: &str = "UPDATE broadcasts SET next_lease_at = $3 \
    WHERE id = $1 AND next_lease_at = $2";

pub const SET_BROADCAST_PACE: &str = "UPDATE broadcasts SET next_lease_at = $2 WHERE id = $1";

/// SQLite: the next recipients to send to, in order: not taken yet, or
/// taken by an instance whose lease ran out (their message is looked up
/// before anything is sent). PostgreSQL finds them in [`TAKE_RECIPIENTS`].
pub const FREE_RECIPIENTS: &str =
    "SELECT seq, openid, data, tries, sends, state FROM broadcast_recipients \
    WHERE broadcast_id = $1 AND (state = 'queued' OR (state = 'leased' AND lease_until <= $2)) \
    ORDER BY seq LIMIT $3";

/// SQLite: the recipients [`FREE_RECIPIENTS`] found, marked leased by
/// key (`seq IN` the list follows; SQLite looks each up by the primary key).
pub const LEASE_RECIPIENTS_HEAD: &str = "UPDATE broadcast_recipients \
    SET state = 'leased', lease_token = ";

/// PostgreSQL: the next free recipients (as [`FREE_RECIPIENTS`]) locked and
/// leased in one statement, each marked by its row's address (`ctid`),
/// which the lock keeps in place; `state` is what each was before. Why not
/// a second statement by key, `seq IN ($5, …)`: its generic plan can find
/// the job's rows by `broadcast_id` alone and filter them (statistics of
/// many small jobs make any job look small), reading every recipient of a
/// million-recipient job on every lease. Planned under
/// `postgres::KEYED_PLANNING`, the mark is a probe per row on any
/// statistics.
pub const TAKE_RECIPIENTS: &str = "WITH free AS ( \
        SELECT ctid AS place, state AS was FROM broadcast_recipients \
        WHERE broadcast_id = $1 AND (state = 'queued' OR (state = 'leased' AND lease_until <= $2)) \
        ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED), \
    taken AS ( \
        UPDATE broadcast_recipients r \
        SET state = 'leased', lease_token = $4, lease_until = $5, updated_at = $2 \
        FROM free WHERE r.ctid = free.place \
        RETURNING r.seq, r.openid, r.data, r.tries, r.sends, free.was AS state) \
    SELECT seq, openid, data, tries, sends, state FROM taken ORDER BY seq";

pub const OPEN_RECIPIENTS: &str = "SELECT COUNT(*) FROM broadcast_recipients \
    WHERE broadcast_id = $1 AND (state = 'queued' OR state = 'leased')";

/// A recipient's final result, under the lease that took it.
pub const RECORD_RECIPIENT: &str = "UPDATE broadcast_recipients \
    SET state = $3, message_id = $4, error_code = $5, wechat_errcode = $6, updated_at = $7, \
        lease_token = NULL, lease_until = NULL \
    WHERE broadcast_id = $1 AND seq = $2 AND lease_token = $8";

/// Nothing was sent: back in the queue for another send, under a new
/// message id (`sends` + 1); `$3` adds a try when the answer counts as one.
pub const REQUEUE_RECIPIENT: &str = "UPDATE broadcast_recipients \
    SET state = 'queued', tries = tries + $3, sends = sends + 1, error_code = $4, \
        updated_at = $5, \
        lease_token = NULL, lease_until = NULL, message_id = NULL \
    WHERE broadcast_id = $1 AND seq = $2 AND lease_token = $6";

/// Its message is still being settled: looked at again after `$3`.
pub const RECHECK_RECIPIENT: &str = "UPDATE broadcast_recipients \
    SET lease_until = $3, message_id = $4, updated_at = $5 \
    WHERE broadcast_id = $1 AND seq = $2 AND lease_token = $6";

pub const BROADCAST_AFTER_BATCH: &str = "UPDATE broadcasts \
    SET rate = $2, updated_at = $3, first_send_at = CASE WHEN $4 THEN COALESCE(first_send_at, $3) \
        ELSE first_send_at END \
    WHERE id = $1";

/// A pause the sends asked for (45009, the breaker), only of a running job.
pub const PAUSE_RUNNING_BROADCAST: &str = "UPDATE broadcasts \
    SET state = 'paused', pause_reason = $2, paused_until = $3, updated_at = $4 \
    WHERE id = $1 AND state = 'running'";

pub const RECIPIENT_COUNTS: &str = "SELECT state, error_code, wechat_errcode, COUNT(*) AS count \
    FROM broadcast_recipients WHERE broadcast_id = $1 \
    GROUP BY state, error_code, wechat_errcode";

/// One page of a job's results, after `$2` in order.
pub const RECIPIENT_PAGE: &str = "SELECT seq, openid, state, message_id, error_code, \
    wechat_errcode, updated_at FROM broadcast_recipients \
    WHERE broadcast_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
// Webhooks (migration 0012): endpoints, the outbox, the attempts.

/// The outbox columns every event insert writes, in this order. The last
/// two, the caller's idempotency key and reference, are copied from the
/// message the event is about (NULL for an event about none).
macro_rules! outbox_columns {
    () => {
        "INSERT INTO webhook_outbox (event_id, endpoint_id, appid, event_type, openid, \
            message_id, template_id, status, wechat_errcode, error_code, detail, occurred_at, \
            state, attempts, next_attempt_at, updated_at, idempotency_key, reference) "
    };
}

/// An event, one row per enabled endpoint of the app whose mask has the
/// event's bit (`$12`); nothing when none does. Run in the transaction of
/// the change it reports. `$1` event id, `$2` appid, `$3` type, `$4` openid,
/// `$5` message, `$6` template, `$7` status, `$8` WeChat errcode, `$9` error
/// code, `$10` detail, `$11` now. A message named by `$5` (a push's
/// delivery of it) lends its idempotency key and reference: a `LEFT JOIN` by
/// key, so an event about no message (or one already swept) still goes out,
/// and no statement is added.
pub const INSERT_EVENT: &str = concat!(
    outbox_columns!(),
    "SELECT $1, e.id, e.appid, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0, $11, $11, \
        m.idempotency_key, m.reference \
    FROM webhook_endpoints e LEFT JOIN messages m ON m.id = $5 \
    WHERE e.appid = $2 AND e.state = 'enabled' AND (e.event_mask & $12) <> 0"
);

/// An event about a message, written only while the run's lease holds:
/// run before [`FINISH_MESSAGE`] (which clears the token) with the same
/// fence, so the event commits exactly when the finish does. The user and
/// template (and the caller's key and reference) are the message's. `$1`
/// event id, `$2` message, `$3` type, `$4` status, `$5` WeChat errcode, `$6` error code, `$7` now, `$8` token, `$9`
/// the type's bit. Why `CROSS JOIN`: SQLite then finds the message by key
/// first and probes the app's endpoints by index; with no endpoint that is
/// the whole cost a send pays.
pub const INSERT_MESSAGE_EVENT: &str = concat!(
    outbox_columns!(),
    "SELECT $1, e.id, m.appid, $3, m.touser, m.id, m.template_id, $4, $5, $6, NULL, $7, \
        'pending', 0, $7, $7, m.idempotency_key, m.reference \
    FROM messages m CROSS JOIN webhook_endpoints e \
    WHERE m.id = $2 AND m.lease_token = $8 AND e.appid = m.appid AND e.state = 'enabled' \
      AND (e.event_mask & $9) <> 0"
);

/// An event about a message that ends without a run's lease (a scheduled
/// message cancelled, or ended by a full send cap), in the transaction that
/// ends it. The user, template, key and reference are the message's. `$1` event id, `$2`
/// message, `$3` type, `$4` status, `$5` error code, `$6` now, `$7` the
/// type's bit.
pub const INSERT_UNLEASED_MESSAGE_EVENT: &str = concat!(
    outbox_columns!(),
    "SELECT $1, e.id, m.appid, $3, m.touser, m.id, m.template_id, $4, NULL, $5, NULL, $6, \
        'pending', 0, $6, $6, m.idempotency_key, m.reference \
    FROM messages m CROSS JOIN webhook_endpoints e \
    WHERE m.id = $2 AND e.appid = m.appid AND e.state = 'enabled' \
      AND (e.event_mask & $7) <> 0"
);

/// A broadcast's `broadcast.finished` event, in the transaction that
/// finishes it: one row per enabled endpoint of its app that wants the type
/// (`$5`, the bit). The template is the broadcast's, `detail` its id. `$1`
/// event id, `$2` broadcast, `$3` type, `$4` now, `$6` status.
pub const INSERT_BROADCAST_EVENT: &str = concat!(
    outbox_columns!(),
    "SELECT $1, e.id, b.appid, $3, NULL, NULL, b.template_id, $6, NULL, NULL, b.id, $4, \
        'pending', 0, $4, $4, NULL, NULL \
    FROM broadcasts b CROSS JOIN webhook_endpoints e \
    WHERE b.id = $2 AND e.appid = b.appid AND e.state = 'enabled' \
      AND (e.event_mask & $5) <> 0"
);

/// A test event for one endpoint (`POST …/webhooks/{id}/test`).
pub const INSERT_TEST_EVENT: &str = concat!(
    outbox_columns!(),
    "SELECT $1, id, appid, 'webhook.test', NULL, NULL, NULL, NULL, NULL, NULL, NULL, $3, \
        'pending', 0, $3, $3, NULL, NULL \
    FROM webhook_endpoints WHERE id = $2 AND appid = $4 AND state = 'enabled'"
);

pub const INSERT_ENDPOINT: &str = "INSERT INTO webhook_endpoints \
    (id, appid, url, event_mask, secret, state, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, 'enabled', $6, $6)";

/// The columns of a [`WebhookEndpoint`](super::WebhookEndpoint).
macro_rules! endpoint_columns {
    () => {
        "SELECT id, appid, url, event_mask, secret, previous_secret, previous_secret_until, \
            state, disabled_reason, failing_since, created_at, updated_at FROM webhook_endpoints "
    };
}

pub const ENDPOINTS_OF_APP: &str = concat!(
    endpoint_columns!(),
    "WHERE appid = $1 ORDER BY created_at, id"
);

pub const ENDPOINT: &str = concat!(endpoint_columns!(), "WHERE appid = $1 AND id = $2");

/// Switches an enabled endpoint off; `$3` the reason, `$4` now.
pub const DISABLE_ENDPOINT: &str = "UPDATE webhook_endpoints \
    SET state = 'disabled', disabled_reason = $3, updated_at = $4 \
    WHERE appid = $1 AND id = $2 AND state = 'enabled'";

/// ...and its pending events fail (a replay can send them again).
pub const FAIL_PENDING_OF_ENDPOINT: &str = "UPDATE webhook_outbox \
    SET state = 'failed', lease_until = NULL, lease_token = NULL, updated_at = $2 \
    WHERE endpoint_id = $1 AND state = 'pending'";

/// A new signing secret; the old one keeps signing until `$4`.
pub const ROTATE_SECRET: &str = "UPDATE webhook_endpoints \
    SET previous_secret = secret, previous_secret_until = $4, secret = $3, updated_at = $5 \
    WHERE appid = $1 AND id = $2";

/// A failed attempt: the streak starts now unless one is running.
pub const ENDPOINT_FAILING: &str = "UPDATE webhook_endpoints \
    SET failing_since = COALESCE(failing_since, $2), updated_at = $3 WHERE id = $1";

/// A delivered attempt ends the streak.
pub const ENDPOINT_WORKS: &str = "UPDATE webhook_endpoints \
    SET failing_since = NULL, updated_at = $2 WHERE id = $1 AND failing_since IS NOT NULL";

/// The failed events of an endpoint since `$2` are due again at `$3`, with
/// their schedule restarted.
pub const REPLAY_FAILED: &str = "UPDATE webhook_outbox \
    SET state = 'pending', attempts = 0, next_attempt_at = $3, updated_at = $3 \
    WHERE endpoint_id = $1 AND state = 'failed' AND occurred_at >= $2";

/// Leases up to `$4` due events until `$2` under token `$3` (`$1` now). An
/// event is due only once every earlier pending event of its endpoint and
/// user is gone (delivered or given up): per endpoint and user, events go
/// out in the order they were written, one at a time. Events without a
/// user (the app's) are not ordered. `{lock}`: `FOR UPDATE SKIP LOCKED` on
/// PostgreSQL, so two instances never lease one row.
pub const LEASE_DUE_EVENTS: &str = "UPDATE webhook_outbox \
    SET lease_until = $2, lease_token = $3 \
    WHERE seq IN (SELECT o.seq FROM webhook_outbox o \
        WHERE o.state = 'pending' AND o.next_attempt_at <= $1 \
          AND (o.lease_until IS NULL OR o.lease_until <= $1) \
          AND NOT EXISTS (SELECT 1 FROM webhook_outbox p \
              WHERE p.state = 'pending' AND p.endpoint_id = o.endpoint_id \
                AND p.openid = o.openid AND p.seq < o.seq) \
        ORDER BY o.seq LIMIT $4 {lock}) \
    RETURNING seq, event_id, endpoint_id, appid, event_type, openid, message_id, template_id, \
        status, wechat_errcode, error_code, detail, occurred_at, attempts, lease_token, \
        idempotency_key, reference";

/// An attempt's end for its event, only under the lease that sent it:
/// `$4` the state, `$5` when next (pending), `$3` now.
pub const SETTLE_EVENT: &str = "UPDATE webhook_outbox \
    SET state = $4, attempts = attempts + 1, next_attempt_at = $5, lease_until = NULL, \
        lease_token = NULL, updated_at = $3 \
    WHERE seq = $1 AND lease_token = $2";

pub const INSERT_WEBHOOK_ATTEMPT: &str = "INSERT INTO webhook_attempts \
    (endpoint_id, event_id, event_type, at, outcome, status_code, error, response, duration_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// The newest attempts of an endpoint first.
pub const WEBHOOK_ATTEMPTS: &str = "SELECT event_id, event_type, at, outcome, status_code, \
    error, response, duration_ms FROM webhook_attempts \
    WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2";

/// Events that ended (delivered, or given up) before `$1`, `$2` at a time.
pub const DELETE_OLD_WEBHOOK_EVENTS: &str = "DELETE FROM webhook_outbox WHERE seq IN ( \
    SELECT seq FROM webhook_outbox WHERE state <> 'pending' AND updated_at <= $1 LIMIT $2)";

pub const DELETE_OLD_WEBHOOK_ATTEMPTS: &str = "DELETE FROM webhook_attempts WHERE id IN ( \
    SELECT id FROM webhook_attempts WHERE at <= $1 LIMIT $2)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_knows_the_never_expiring_mark() {
        let mark = crate::ledger::kinds::NEVER_EXPIRES_MS.to_string();
        assert!(DELETE_OLD_CREDENTIALS.contains(&format!("expires_at = {mark}")));
    }

    #[test]
    fn the_lock_slot_is_filled() {
        assert!(
            with_lock(CLAIM, "FOR UPDATE SKIP LOCKED").contains("LIMIT 1 FOR UPDATE SKIP LOCKED)")
        );
        assert!(!with_lock(CLAIM, "").contains("{lock}"));
    }
}
