-- Scheduled sends, and the reads of the per-user send caps.
-- A scheduled message waits for its time in `next_attempt_at` (moved to the
-- opening of quiet hours when it falls inside them); `send_at` keeps the
-- time the request asked for.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN ('pending', 'waiting', 'sent', 'failed', 'unknown', 'scheduled'));
ALTER TABLE messages ADD COLUMN send_at BIGINT;

-- The scheduler takes due messages in time order from this index alone.
CREATE INDEX messages_scheduled ON messages (next_attempt_at) WHERE status = 'scheduled';

-- A cap's count reads one user's messages in two ranges: those finished
-- within the window (by `updated_at`), and those in flight whatever their age.
CREATE INDEX messages_by_user_recent ON messages (appid, touser, updated_at);
CREATE INDEX messages_in_flight_by_user ON messages (appid, touser)
    WHERE status = 'pending' OR status = 'waiting';
