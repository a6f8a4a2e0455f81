-- What a caller passed with a send, kept on its message and on every event
-- about it: the Idempotency-Key header's value and the body's `reference`
-- (the caller's own id of the message). Both NULL when not given, and on a
-- broadcast recipient's message. The outbox copies them from the message
-- when an event is written, so a retried or replayed event sends the same
-- bytes whatever happens to the message row afterwards.
ALTER TABLE messages ADD COLUMN reference TEXT;
ALTER TABLE messages ADD COLUMN idempotency_key TEXT;
ALTER TABLE webhook_outbox ADD COLUMN reference TEXT;
ALTER TABLE webhook_outbox ADD COLUMN idempotency_key TEXT;
