-- Subscribe messages: one-time grants in the credential ledger, the user's
-- decisions and long-term subscriptions, prompt results posted once, the
-- app's template catalogue, and WeChat's msgid per attempt.

-- A one-time grant is a credential of kind 'subscribe' that pays for this
-- template only; form_id and prepay_id rows keep NULL, and the claim matches
-- the column null-safely, so neither kind can pay for the other's channel.
ALTER TABLE credentials ADD COLUMN template_id TEXT;

-- The user's latest decision per template, and the standing long-term
-- subscription (template type 3), which is a flag, not a counter.
CREATE TABLE subscriptions (
    appid       TEXT    NOT NULL,
    openid      TEXT    NOT NULL,
    template_id TEXT    NOT NULL,
    decision    TEXT    NOT NULL
        CONSTRAINT subscriptions_decision_check
        CHECK (decision IN ('accept', 'accept_with_audio', 'accept_with_alert', 'reject', 'ban', 'filter', 'revoked')),
    decided_at  BIGINT  NOT NULL,
    long_term   BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (appid, openid, template_id)
);

-- One row per prompt result a frontend posted: its request_id makes the post
-- idempotent, so a retried post never grants twice.
CREATE TABLE subscription_prompts (
    appid        TEXT   NOT NULL,
    openid       TEXT   NOT NULL,
    request_id   TEXT   NOT NULL,
    -- SHA-256 of the canonical result: the same request_id with another result is refused.
    request_hash TEXT   NOT NULL,
    -- What the first post granted and recorded, as JSON, answered again to a retry.
    outcome      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (appid, openid, request_id)
);
CREATE INDEX subscription_prompts_by_age ON subscription_prompts (created_at);

-- The app's templates of both channels, as WeChat last listed them.
CREATE TABLE templates (
    appid        TEXT   NOT NULL,
    template_id  TEXT   NOT NULL,
    channel      TEXT   NOT NULL
        CONSTRAINT templates_channel_check CHECK (channel IN ('template', 'subscribe')),
    title        TEXT   NOT NULL,
    content      TEXT   NOT NULL,
    example      TEXT   NOT NULL,
    subscription TEXT   NOT NULL
        CONSTRAINT templates_subscription_check CHECK (subscription IN ('one_time', 'long_term')),
    -- Subscribe templates: {"keywordCode": ["value", ...]} from keywordEnumValueList.
    enum_values  TEXT,
    refreshed_at BIGINT NOT NULL,
    PRIMARY KEY (appid, template_id)
);

-- WeChat's msgid of a subscribe send: a string, since it exceeds 2^53.
ALTER TABLE attempts ADD COLUMN msgid TEXT;
CREATE INDEX attempts_by_msgid ON attempts (msgid) WHERE msgid IS NOT NULL;

ALTER TABLE messages ADD COLUMN channel TEXT NOT NULL DEFAULT 'template'
    CONSTRAINT messages_channel_check CHECK (channel IN ('template', 'subscribe'));
