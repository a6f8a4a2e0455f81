-- WeChat's message push (issue 12): every subscribe event item applied once,
-- and the final delivery of a subscribe send on its message.

-- One row per applied item of a push, written in the transaction that
-- applies it: WeChat retries an unanswered push (3 tries), and a retry finds
-- its row and changes nothing. The key is the event's identity (FromUserName,
-- CreateTime, Event, TemplateId, and MsgID for a sent event), per app. Swept
-- with the prompt results after the message retention.
CREATE TABLE push_events (
    appid       TEXT   NOT NULL,
    dedupe_key  TEXT   NOT NULL,
    event       TEXT   NOT NULL
        CONSTRAINT push_events_event_check CHECK (event IN ('popup', 'change', 'sent')),
    openid      TEXT   NOT NULL,
    template_id TEXT   NOT NULL,
    -- What the item did, so an operator can tell a grant from a decision only.
    effect      TEXT   NOT NULL
        CONSTRAINT push_events_effect_check CHECK (effect IN ('granted', 'long_term_on', 'recorded', 'revoked', 'delivery_recorded', 'no_message', 'ignored')),
    received_at BIGINT NOT NULL,
    PRIMARY KEY (appid, dedupe_key)
);
CREATE INDEX push_events_by_age ON push_events (received_at);

-- subscribe_msg_sent_event: how WeChat finally delivered the message
-- (ErrorCode, ErrorStatus as sent), and when the gateway learnt it.
ALTER TABLE messages ADD COLUMN delivery_error_code BIGINT;
ALTER TABLE messages ADD COLUMN delivery_error_status TEXT;
ALTER TABLE messages ADD COLUMN delivery_reported_at BIGINT;
