-- Webhooks: an app's endpoints, the transactional outbox of the events they
-- subscribed to, and each delivery attempt.

-- An endpoint of an app. `event_mask` is the set of event types it wants,
-- one bit per type (formid_core::webhooks::EventType::bit). `secret` signs
-- (whsec_…); during a rotation `previous_secret` signs too, until
-- `previous_secret_until`. `failing_since` starts a failure streak; a streak
-- long enough switches the endpoint off.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    appid TEXT NOT NULL,
    url TEXT NOT NULL,
    event_mask BIGINT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until BIGINT,
    state TEXT NOT NULL CHECK (state IN ('enabled', 'disabled')),
    disabled_reason TEXT,
    failing_since BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- Every outbox write looks up the app's enabled endpoints by this.
CREATE INDEX webhook_endpoints_by_app ON webhook_endpoints (appid, state);

-- The outbox: one row per event and endpoint that wants it, written in the
-- transaction of the change it reports (none when no endpoint wants it).
-- `seq` is the order of writing: within one endpoint and one user, an event
-- is sent only once every earlier pending one was delivered or given up.
-- `event_type` carries no CHECK: the event types are a list that grows (a
-- new type is one variant of EventType, no migration); the reader parses it.
CREATE TABLE webhook_outbox (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    appid TEXT NOT NULL,
    event_type TEXT NOT NULL,
    openid TEXT,
    message_id TEXT,
    template_id TEXT,
    status TEXT,
    wechat_errcode BIGINT,
    error_code TEXT,
    detail TEXT,
    occurred_at BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    lease_token BIGINT,
    updated_at BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
-- What the delivery worker takes: due pending rows.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
-- The order check: an earlier pending row of the same endpoint and user.
CREATE INDEX webhook_outbox_order ON webhook_outbox (endpoint_id, openid, seq) WHERE state = 'pending';
-- Replays (failed rows of an endpoint since a time) and the sweep.
CREATE INDEX webhook_outbox_by_state ON webhook_outbox (endpoint_id, state, occurred_at);
CREATE INDEX webhook_outbox_sweep ON webhook_outbox (updated_at) WHERE state <> 'pending';

-- Each call to an endpoint (bounded: the first 256 characters of the answer).
CREATE TABLE webhook_attempts (
    id BIGSERIAL PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'rejected', 'unreachable', 'gone', 'refused')),
    status_code BIGINT,
    error TEXT,
    response TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, at);
