-- The same CHECK constraints as 0004 and 0005 on the tables every send writes,
-- spelled as comparisons joined by OR instead of `IN (…)`: they allow exactly
-- the same names (src/ledger/states.rs checks both spellings against the
-- enums). Why: SQLite evaluates a CHECK with an `IN` list by building a
-- temporary index of the list each time a statement runs. With the send
-- path's statements each run once per send, that was about 9 µs of the
-- single writer's time per send (a quarter of it; BENCHMARKS.md); the
-- comparisons cost nothing measurable. PostgreSQL evaluates `IN` as a
-- comparison with an array and keeps its spelling.
--
-- The tables are rebuilt as 0004 rebuilt them, in the migration's
-- transaction, with foreign keys on: attempts (which references messages)
-- is kept aside, the old attempts and messages are dropped child first, and
-- attempts is rebuilt referencing the new messages.

CREATE TABLE credentials_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    appid            TEXT    NOT NULL,
    openid           TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    value            TEXT    NOT NULL,
    uses_left        INTEGER NOT NULL CHECK (uses_left >= 0),
    state            TEXT    NOT NULL CHECK (state = 'available' OR state = 'leased' OR state = 'exhausted' OR state = 'retired' OR state = 'expired'),
    collected_at     INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    lease_expires_at INTEGER,
    retired_errcode  INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    lease_message_id TEXT,
    lease_token      INTEGER,
    unproven_uses    INTEGER NOT NULL DEFAULT 0 CHECK (unproven_uses >= 0),
    template_id      TEXT
);
INSERT INTO credentials_new (id, appid, openid, kind, value, uses_left, state, collected_at,
    expires_at, lease_expires_at, retired_errcode, created_at, updated_at, lease_message_id,
    lease_token, unproven_uses, template_id)
SELECT id, appid, openid, kind, value, uses_left, state, collected_at, expires_at,
    lease_expires_at, retired_errcode, created_at, updated_at, lease_message_id, lease_token,
    unproven_uses, template_id
FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_new RENAME TO credentials;
CREATE UNIQUE INDEX credentials_one_value_per_app ON credentials (appid, value);
CREATE INDEX credentials_claimable
    ON credentials (appid, openid, expires_at, id)
    WHERE state = 'available';
CREATE INDEX credentials_by_expiry ON credentials (expires_at);
CREATE INDEX credentials_leased ON credentials (lease_expires_at) WHERE state = 'leased';
CREATE INDEX credentials_by_lease_message ON credentials (lease_message_id) WHERE state = 'leased';

CREATE TABLE messages_new (
    id                    TEXT    PRIMARY KEY,
    appid                 TEXT    NOT NULL,
    touser                TEXT    NOT NULL,
    template_id           TEXT    NOT NULL,
    payload               TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status = 'pending' OR status = 'waiting' OR status = 'sent' OR status = 'failed' OR status = 'unknown'),
    error_code            TEXT,
    wechat_errcode        INTEGER,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    lease_until           INTEGER,
    wait_until            INTEGER,
    next_attempt_at       INTEGER,
    delivery              TEXT    NOT NULL DEFAULT 'at_most_once'
        CHECK (delivery = 'at_most_once' OR delivery = 'at_least_once'),
    lease_token           INTEGER,
    channel               TEXT    NOT NULL DEFAULT 'template'
        CONSTRAINT messages_channel_check CHECK (channel = 'template' OR channel = 'subscribe'),
    delivery_error_code   INTEGER,
    delivery_error_status TEXT,
    delivery_reported_at  INTEGER
);
INSERT INTO messages_new (id, appid, touser, template_id, payload, status, error_code,
    wechat_errcode, created_at, updated_at, lease_until, wait_until, next_attempt_at, delivery,
    lease_token, channel, delivery_error_code, delivery_error_status, delivery_reported_at)
SELECT id, appid, touser, template_id, payload, status, error_code, wechat_errcode, created_at,
    updated_at, lease_until, wait_until, next_attempt_at, delivery, lease_token, channel,
    delivery_error_code, delivery_error_status, delivery_reported_at
FROM messages;
CREATE TABLE attempts_aside AS SELECT id, message_id, credential_id, credential_kind, errcode,
    outcome, detail, at, msgid FROM attempts;
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
    outcome         TEXT    NOT NULL
        CHECK (outcome = 'sent' OR outcome = 'sent_on_probe' OR outcome = 'confirmed_sent' OR outcome = 'not_ready'
            OR outcome = 'retired' OR outcome = 'token_rejected' OR outcome = 'busy' OR outcome = 'kept'
            OR outcome = 'not_sent' OR outcome = 'ambiguous' OR outcome = 'recovered' OR outcome = 'probe_inconclusive'
            OR outcome = 'token_unavailable'),
    detail          TEXT,
    at              INTEGER NOT NULL,
    msgid           TEXT
);
INSERT INTO attempts (id, message_id, credential_id, credential_kind, errcode, outcome, detail,
    at, msgid)
SELECT id, message_id, credential_id, credential_kind, errcode, outcome, detail, at, msgid
FROM attempts_aside ORDER BY id;
DROP TABLE attempts_aside;
CREATE INDEX attempts_by_message ON attempts (message_id, id);
CREATE INDEX attempts_by_msgid ON attempts (msgid) WHERE msgid IS NOT NULL;

CREATE TABLE idempotency_keys_new (
    appid           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state = 'in_flight' OR state = 'done'),
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
