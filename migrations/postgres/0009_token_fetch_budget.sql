-- The app's budget of token fetches, shared by every instance on the ledger:
-- the theoretical arrival time of a generic cell rate algorithm
-- (src/tokens/budget.rs), NULL while the budget is full.
ALTER TABLE apps ADD COLUMN token_fetch_tat BIGINT;
-- When WeChat last accepted the stored token in a check
-- (cgi-bin/get_api_domain_ip): a caller who reports that token stale is
-- answered from this instead of a second check. Cleared with each new token.
ALTER TABLE apps ADD COLUMN token_checked_at BIGINT;
