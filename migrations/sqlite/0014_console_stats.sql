-- What the stats worker and the operator console read, by index, without a
-- scan of the whole ledger.

-- The live credentials of an app by kind and template: the stats worker
-- counts them (credentials, uses, users, those expiring soon) from this index
-- alone, one pass over the app's live rows, never touching the table. Rows
-- leave it as they are claimed, spent or expired, as with
-- credentials_claimable.
CREATE INDEX credentials_live_by_kind
    ON credentials (appid, kind, template_id, openid, expires_at, uses_left)
    WHERE state = 'available';

-- Long-term subscribers of each template: few rows, changed only by prompts
-- and pushes.
CREATE INDEX subscriptions_long_term
    ON subscriptions (appid, template_id, openid)
    WHERE long_term = TRUE;

-- The console's failures of the last 24 hours: only failed messages enter
-- it, so the send path's successful writes never touch it.
CREATE INDEX messages_failed_by_app
    ON messages (appid, updated_at)
    WHERE status = 'failed';
