-- The credential ledger, messages with their attempts, and per-app state.
-- Times are Unix milliseconds bound from the service's clock, never SQLite's own time.

CREATE TABLE credentials (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    appid            TEXT    NOT NULL,
    openid           TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    value            TEXT    NOT NULL,
    uses_left        INTEGER NOT NULL,
    -- available | leased | exhausted | retired | expired
    state            TEXT    NOT NULL,
    collected_at     INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    lease_expires_at INTEGER,
    retired_errcode  INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- Posting the same value twice is not a second credential.
    UNIQUE (appid, kind, value)
);

-- The claim reads only live rows: a partial index keeps its cost flat however
-- many spent and expired rows the table holds.
CREATE INDEX credentials_claimable
    ON credentials (appid, openid, expires_at, id)
    WHERE state = 'available';

-- The sweeper and lease recovery walk rows by expiry and lease.
CREATE INDEX credentials_by_expiry ON credentials (expires_at);
CREATE INDEX credentials_leased ON credentials (lease_expires_at) WHERE state = 'leased';

CREATE TABLE messages (
    id             TEXT    PRIMARY KEY,
    appid          TEXT    NOT NULL,
    touser         TEXT    NOT NULL,
    template_id    TEXT    NOT NULL,
    -- The request as WeChat will see it, without the credential.
    payload        TEXT    NOT NULL,
    -- pending | sent | failed | unknown
    status         TEXT    NOT NULL,
    error_code     TEXT,
    wechat_errcode INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX messages_by_app ON messages (appid, created_at);

CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    credential_id   INTEGER,
    credential_kind TEXT,
    errcode         INTEGER,
    outcome         TEXT    NOT NULL,
    detail          TEXT,
    at              INTEGER NOT NULL
);
CREATE INDEX attempts_by_message ON attempts (message_id, id);

CREATE TABLE apps (
    appid               TEXT    PRIMARY KEY,
    -- TEXT, not VARCHAR(512): WeChat says to reserve at least 512 characters and may grow it.
    access_token        TEXT,
    token_expires_at    INTEGER,
    -- When the fetch that produced the stored token started: an older answer never overwrites a newer one.
    token_fetched_at    INTEGER,
    refresh_holder      TEXT,
    refresh_lease_until INTEGER,
    -- Set on errcode 45009 until the quota resets.
    send_blocked_until  INTEGER
);
