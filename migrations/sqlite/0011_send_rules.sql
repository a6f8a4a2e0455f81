-- Scheduled sends, and the reads of the per-user send caps.
-- A scheduled message waits for its time in `next_attempt_at` (moved to the
-- opening of quiet hours when it falls inside them); `send_at` keeps the
-- time the request asked for. SQLite cannot change a CHECK in place: the
-- messages table (and attempts, which references it) is rebuilt as 0008
-- rebuilt it, with the same comparisons joined by OR (see 0008 why).

CREATE TABLE messages_new (
    id                    TEXT    PRIMARY KEY,
    appid                 TEXT    NOT NULL,
    touser                TEXT    NOT NULL,
    template_id           TEXT    NOT NULL,
    payload               TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status = 'pending' OR status = 'waiting' OR status = 'sent' OR status = 'failed' OR status = 'unknown' OR status = 'scheduled'),
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
    delivery_reported_at  INTEGER,
    send_at               INTEGER
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

CREATE INDEX messages_scheduled ON messages (next_attempt_at) WHERE status = 'scheduled';

-- A cap's count reads one user's messages in two ranges: those finished
-- within the window (by `updated_at`), and those in flight whatever their age.
CREATE INDEX messages_by_user_recent ON messages (appid, touser, updated_at);
CREATE INDEX messages_in_flight_by_user ON messages (appid, touser)
    WHERE status = 'pending' OR status = 'waiting';
