-- Every stored state is one of the names of its enum in src/ledger/states.rs;
-- fencing tokens for leases; uses whose delivery was never proven.

ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN ('pending', 'waiting', 'sent', 'failed', 'unknown'));
ALTER TABLE messages ADD CONSTRAINT messages_delivery_check CHECK (delivery IN ('at_most_once', 'at_least_once'));
ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_check CHECK (outcome IN ('sent', 'sent_on_probe', 'confirmed_sent', 'not_ready', 'retired', 'token_rejected', 'busy', 'kept', 'not_sent', 'ambiguous', 'recovered', 'probe_inconclusive', 'token_unavailable'));
ALTER TABLE credentials ADD CONSTRAINT credentials_state_check CHECK (state IN ('available', 'leased', 'exhausted', 'retired', 'expired'));
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_check CHECK (state IN ('in_flight', 'done'));

-- The run that holds a message's lease, and the credentials it leased, carry
-- one random token. A takeover (recovery) writes a new one, and every write
-- of a run checks its own: a run whose lease was taken can no longer settle,
-- finish or move on, whatever its clock says.
ALTER TABLE messages ADD COLUMN lease_token BIGINT;
ALTER TABLE credentials ADD COLUMN lease_token BIGINT;

-- Uses counted as spent whose delivery was never proven (the answer was
-- lost). WeChat may still hold them, so the credential's true remaining
-- count is unknown and it is never probed again.
ALTER TABLE credentials ADD COLUMN unproven_uses BIGINT NOT NULL DEFAULT 0
    CONSTRAINT credentials_unproven_uses_check CHECK (unproven_uses >= 0);
ALTER TABLE credentials ADD CONSTRAINT credentials_uses_left_check CHECK (uses_left >= 0);
