-- One value is one credential per app, whatever kind it was posted as: WeChat
-- counts the sends of a value, not of a (kind, value) pair. Until now the same
-- string could be stored as a form_id for one user and as a prepay_id for
-- another, and the ledger counted four sends of one WeChat credential.
--
-- Existing rows that share (appid, value) are kept, not deleted: their
-- attempts still name them. One row of each group keeps the value: a leased
-- one if any (recovery may still have to probe with it), else the oldest.
-- Every other row of the group is renamed to `<value> duplicate <id>` (a
-- space never appears in an accepted value, so no new post can collide with
-- it) and, when it was available, retired, so that the one credential is
-- counted once. Spent, retired and expired rows keep their state.
UPDATE credentials
SET state = CASE WHEN state = 'available' THEN 'retired' ELSE state END,
    value = value || ' duplicate ' || CAST(id AS TEXT)
WHERE id <> (
    SELECT keeper.id FROM credentials AS keeper
    WHERE keeper.appid = credentials.appid AND keeper.value = credentials.value
    ORDER BY CASE WHEN keeper.state = 'leased' THEN 0 ELSE 1 END, keeper.id
    LIMIT 1);

ALTER TABLE credentials DROP CONSTRAINT credentials_appid_kind_value_key;
ALTER TABLE credentials
    ADD CONSTRAINT credentials_one_value_per_app UNIQUE (appid, value);

-- stable_token mode may use force_refresh, which WeChat allows 20 times a
-- day per app, 30 s apart. The budget is counted here, in the ledger every
-- instance shares, so that several instances together stay inside it.
-- force_refresh_day is the China day (UTC+8) as days since the epoch.
ALTER TABLE apps ADD COLUMN force_refresh_day BIGINT;
ALTER TABLE apps ADD COLUMN force_refresh_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN force_refreshed_at BIGINT;
