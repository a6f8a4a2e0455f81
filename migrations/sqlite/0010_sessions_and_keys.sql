-- Mini-program login sessions (src/sessions/). The session token is never
-- stored: token_hash is its SHA-256. A session is found by that hash, once
-- per request.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    appid TEXT NOT NULL,
    openid TEXT NOT NULL,
    -- Kept for a later cross-app use; never returned to a client.
    unionid TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    -- The SHA-256 of the login code (never the code) and the random salt the
    -- token was derived from with the code: the same code posted again within
    -- its validity gets the same token back, and neither column alone gives
    -- the token.
    code_hash TEXT NOT NULL,
    token_salt TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
-- One session per login code per app: the replay lookup, and the guard
-- against two exchanges of one code storing two sessions.
CREATE UNIQUE INDEX sessions_by_code ON sessions (appid, code_hash);
-- The sweep deletes expired sessions.
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- API keys kept as data (src/keys/): the key is never stored, key_hash is its
-- SHA-256; key_id is the visible part after fgk_ the key is found by.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    -- Comma-separated AppIDs, or *.
    apps TEXT NOT NULL,
    -- Comma-separated scopes (collect, send, token, admin).
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at INTEGER
);
