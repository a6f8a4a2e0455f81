-- Leases that name their message, messages that wait or are being worked on,
-- and idempotency keys.

-- Which message holds a leased credential: recovery after a crash resolves
-- the credential by that message's rules. NULL on a leased row means parked
-- (a fresh prepay_id waiting for its payment data), never in flight.
ALTER TABLE credentials ADD COLUMN lease_message_id TEXT;

-- Until when the process working on a pending message owns it.
ALTER TABLE messages ADD COLUMN lease_until BIGINT;
-- A waiting message gives up at wait_until and is next looked at at next_attempt_at.
ALTER TABLE messages ADD COLUMN wait_until BIGINT;
ALTER TABLE messages ADD COLUMN next_attempt_at BIGINT;
-- at_most_once (the default) or at_least_once.
ALTER TABLE messages ADD COLUMN delivery TEXT NOT NULL DEFAULT 'at_most_once';

CREATE INDEX messages_waiting ON messages (next_attempt_at) WHERE status = 'waiting';
CREATE INDEX messages_waiting_by_user ON messages (appid, touser) WHERE status = 'waiting';
CREATE INDEX messages_unfinished ON messages (lease_until) WHERE status = 'pending';
CREATE INDEX credentials_by_lease_message ON credentials (lease_message_id) WHERE state = 'leased';

CREATE TABLE idempotency_keys (
    appid           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    -- SHA-256 of the canonical request body: the same key with another body is refused.
    request_hash    TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    -- in_flight | done
    state           TEXT    NOT NULL,
    response_status BIGINT,
    response_body   TEXT,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    PRIMARY KEY (appid, key)
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
