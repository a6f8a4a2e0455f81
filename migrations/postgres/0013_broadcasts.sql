-- Broadcasts: one template message sent to many users, each recipient
-- through the ordinary send path (src/broadcasts/).

-- One row per broadcast. `spec` is the send request without its user, as
-- JSON (formid_core::broadcast::BroadcastSpec). `rate` is the job's send
-- rate now (45011 lowers it, clean batches raise it back to the configured
-- rate); `next_lease_at` paces the job's batches across every instance.
CREATE TABLE broadcasts (
    id            TEXT    PRIMARY KEY,
    appid         TEXT    NOT NULL,
    template_id   TEXT    NOT NULL,
    channel       TEXT    NOT NULL
        CONSTRAINT broadcasts_channel_check CHECK (channel IN ('template', 'subscribe')),
    spec          TEXT    NOT NULL,
    state         TEXT    NOT NULL
        CONSTRAINT broadcasts_state_check CHECK (state IN ('scheduled', 'running', 'paused', 'finished', 'cancelled')),
    pause_reason  TEXT
        CONSTRAINT broadcasts_pause_reason_check CHECK (pause_reason IN ('caller', 'quota', 'breaker', 'quiet_hours')),
    paused_until  BIGINT,
    send_at       BIGINT  NOT NULL,
    rate          BIGINT  NOT NULL CHECK (rate >= 1),
    next_lease_at BIGINT  NOT NULL,
    recipients    BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    started_at    BIGINT,
    first_send_at BIGINT,
    finished_at   BIGINT,
    updated_at    BIGINT  NOT NULL
);
CREATE INDEX broadcasts_by_app ON broadcasts (appid, created_at);
-- What the workers look for: the jobs not yet over (few at any time).
CREATE INDEX broadcasts_open ON broadcasts (send_at) WHERE state IN ('scheduled', 'running', 'paused');

-- One row per recipient, numbered from 1 in the order of the audience. A
-- user is a recipient of a broadcast once (the UNIQUE constraint). A
-- recipient is leased to one instance at a time under a fencing token; its
-- send creates the message `{broadcast_id}-{seq}-{sends}`, so an instance
-- that takes it over finds that message instead of sending again.
CREATE TABLE broadcast_recipients (
    broadcast_id   TEXT   NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    seq            BIGINT NOT NULL,
    openid         TEXT   NOT NULL,
    -- The recipient's own template data, as JSON; NULL takes the broadcast's.
    data           TEXT,
    state          TEXT   NOT NULL
        CONSTRAINT broadcast_recipients_state_check CHECK (state IN ('queued', 'leased', 'sent', 'no_credential', 'capped', 'failed', 'unknown', 'cancelled')),
    -- Sends that came back with nothing sent (busy, unreachable, 45011…).
    tries          BIGINT NOT NULL DEFAULT 0,
    -- Messages created for this recipient so far: the next one's id ends in it.
    sends          BIGINT NOT NULL DEFAULT 0,
    lease_token    BIGINT,
    lease_until    BIGINT,
    message_id     TEXT,
    error_code     TEXT,
    wechat_errcode BIGINT,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (broadcast_id, seq),
    UNIQUE (broadcast_id, openid)
);
-- The lease of a batch reads the recipients not yet done in order.
CREATE INDEX broadcast_recipients_open ON broadcast_recipients (broadcast_id, seq)
    WHERE state IN ('queued', 'leased');
