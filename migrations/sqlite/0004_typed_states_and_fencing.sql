-- Every stored state is one of the names of its enum in src/ledger/states.rs;
-- fencing tokens for leases; uses whose delivery was never proven.
--
-- SQLite cannot add a CHECK constraint to a table, so the four tables are
-- rebuilt (https://www.sqlite.org/lang_altertable.html, "other kinds of
-- table schema changes"), inside the migration's transaction. Foreign keys
-- stay on (the pragma is a no-op in a transaction), so the order matters:
-- dropping messages while attempts references it would cascade into
-- attempts. So attempts is kept aside in a table without a reference, the
-- old attempts and messages are dropped (child first), and attempts is
-- rebuilt, referencing the new messages, from the copy.

CREATE TABLE credentials_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    appid            TEXT    NOT NULL,
    openid           TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    value            TEXT    NOT NULL,
    uses_left        INTEGER NOT NULL CHECK (uses_left >= 0),
    state            TEXT    NOT NULL CHECK (state IN ('available', 'leased', 'exhausted', 'retired', 'expired')),
    collected_at     INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    lease_expires_at INTEGER,
    retired_errcode  INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    lease_message_id TEXT,
    -- The run that holds the lease (see the PostgreSQL migration).
    lease_token      INTEGER,
    -- Uses counted as spent whose delivery was never proven: WeChat may still
    -- hold them, so the credential is never probed again.
    unproven_uses    INTEGER NOT NULL DEFAULT 0 CHECK (unproven_uses >= 0)
);
INSERT INTO credentials_new (id, appid, openid, kind, value, uses_left, state, collected_at,
    expires_at, lease_expires_at, retired_errcode, created_at, updated_at, lease_message_id)
SELECT id, appid, openid, kind, value, uses_left, state, collected_at, expires_at,
    lease_expires_at, retired_errcode, created_at, updated_at, lease_message_id
FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_new RENAME TO credentials;
-- One value is one credential per app, whatever its kind (migration 0003);
-- the rebuild drops the old (appid, kind, value) constraint this index implies.
CREATE UNIQUE INDEX credentials_one_value_per_app ON credentials (appid, value);
CREATE INDEX credentials_claimable
    ON credentials (appid, openid, expires_at, id)
    WHERE state = 'available';
CREATE INDEX credentials_by_expiry ON credentials (expires_at);
CREATE INDEX credentials_leased ON credentials (lease_expires_at) WHERE state = 'leased';
CREATE INDEX credentials_by_lease_message ON credentials (lease_message_id) WHERE state = 'leased';

CREATE TABLE messages_new (
    id              TEXT    PRIMARY KEY,
    appid           TEXT    NOT NULL,
    touser          TEXT    NOT NULL,
    template_id     TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'waiting', 'sent', 'failed', 'unknown')),
    error_code      TEXT,
    wechat_errcode  INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    lease_until     INTEGER,
    wait_until      INTEGER,
    next_attempt_at INTEGER,
    delivery        TEXT    NOT NULL DEFAULT 'at_most_once' CHECK (delivery IN ('at_most_once', 'at_least_once')),
    lease_token     INTEGER
);
INSERT INTO messages_new (id, appid, touser, template_id, payload, status, error_code,
    wechat_errcode, created_at, updated_at, lease_until, wait_until, next_attempt_at, delivery)
SELECT id, appid, touser, template_id, payload, status, error_code, wechat_errcode, created_at,
    updated_at, lease_until, wait_until, next_attempt_at, delivery
FROM messages;
CREATE TABLE attempts_aside AS SELECT id, message_id, credential_id, credential_kind, errcode,
    outcome, detail, at FROM attempts;
DROP TABLE attempts;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_by_app ON messages (appid, created_at);
CREATE INDEX messages_waiting ON messages (next_attempt_at) WHERE status = 'waiting';
CREATE INDEX messages_waiting_by_user ON messages (appid, touser) WHERE status = 'waiting';
CREATE INDEX messages_unfinished ON messages (lease_until) WHERE status = 'pending';

CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    credential_id   INTEGER,
    credential_kind TEXT,
    errcode         INTEGER,
    outcome         TEXT    NOT NULL CHECK (outcome IN ('sent', 'sent_on_probe', 'confirmed_sent', 'not_ready', 'retired', 'token_rejected', 'busy', 'kept', 'not_sent', 'ambiguous', 'recovered', 'probe_inconclusive', 'token_unavailable')),
    detail          TEXT,
    at              INTEGER NOT NULL
);
INSERT INTO attempts SELECT * FROM attempts_aside ORDER BY id;
DROP TABLE attempts_aside;
CREATE INDEX attempts_by_message ON attempts (message_id, id);

CREATE TABLE idempotency_keys_new (
    appid           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status INTEGER,
    response_body   TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (appid, key)
);
INSERT INTO idempotency_keys_new SELECT appid, key, request_hash, message_id, state,
    response_status, response_body, created_at, expires_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_new RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
