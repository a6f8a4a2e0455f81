-- Broadcasts: one template message sent to many users, each recipient
-- through the ordinary send path (src/broadcasts/). The CHECKs are spelled
-- as comparisons joined by OR, as 0008 spells those of the tables every send
-- writes (see there why).

-- One row per broadcast. `spec` is the send request without its user, as
-- JSON (formid_core::broadcast::BroadcastSpec). `rate` is the job's send
-- rate now (45011 lowers it, clean batches raise it back to the configured
-- rate); `next_lease_at` paces the job's batches across every instance.
CREATE TABLE broadcasts (
    id            TEXT    PRIMARY KEY,
    appid         TEXT    NOT NULL,
    template_id   TEXT    NOT NULL,
    channel       TEXT    NOT NULL
        CONSTRAINT broadcasts_channel_check CHECK (channel = 'template' OR channel = 'subscribe'),
    spec          TEXT    NOT NULL,
    state         TEXT    NOT NULL
        CONSTRAINT broadcasts_state_check CHECK (state = 'scheduled' OR state = 'running' OR state = 'paused' OR state = 'finished' OR state = 'cancelled'),
    pause_reason  TEXT
        CONSTRAINT broadcasts_pause_reason_check CHECK (pause_reason = 'caller' OR pause_reason = 'quota' OR pause_reason = 'breaker' OR pause_reason = 'quiet_hours'),
    paused_until  INTEGER,
    send_at       INTEGER  NOT NULL,
    rate          INTEGER  NOT NULL CHECK (rate >= 1),
    next_lease_at INTEGER  NOT NULL,
    recipients    INTEGER  NOT NULL,
    created_at    INTEGER  NOT NULL,
    started_at    INTEGER,
    first_send_at INTEGER,
    finished_at   INTEGER,
    updated_at    INTEGER  NOT NULL
);
CREATE INDEX broadcasts_by_app ON broadcasts (appid, created_at);
-- What the workers look for: the jobs not yet over (few at any time).
CREATE INDEX broadcasts_open ON broadcasts (send_at) WHERE state = 'scheduled' OR state = 'running' OR state = 'paused';

-- One row per recipient, numbered from 1 in the order of the audience. A
-- user is a recipient of a broadcast once (the UNIQUE constraint). A
-- recipient is leased to one instance at a time under a fencing token; its
-- send creates the message `{broadcast_id}-{seq}-{sends}`, so an instance
-- that takes it over finds that message instead of sending again.
CREATE TABLE broadcast_recipients (
    broadcast_id   TEXT   NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    openid         TEXT   NOT NULL,
    -- The recipient's own template data, as JSON; NULL takes the broadcast's.
    data           TEXT,
    state          TEXT   NOT NULL
        CONSTRAINT broadcast_recipients_state_check CHECK (state = 'queued' OR state = 'leased' OR state = 'sent' OR state = 'no_credential' OR state = 'capped' OR state = 'failed' OR state = 'unknown' OR state = 'cancelled'),
    -- Sends that came back with nothing sent (busy, unreachable, 45011…).
    tries          INTEGER NOT NULL DEFAULT 0,
    -- Messages created for this recipient so far: the next one's id ends in it.
    sends          INTEGER NOT NULL DEFAULT 0,
    lease_token    INTEGER,
    lease_until    INTEGER,
    message_id     TEXT,
    error_code     TEXT,
    wechat_errcode INTEGER,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (broadcast_id, seq),
    UNIQUE (broadcast_id, openid)
);
-- The lease of a batch reads the recipients not yet done in order.
CREATE INDEX broadcast_recipients_open ON broadcast_recipients (broadcast_id, seq)
    WHERE state = 'queued' OR state = 'leased';
