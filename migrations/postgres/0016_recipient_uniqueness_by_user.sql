-- A user is a recipient of a broadcast once: the same rule, its index led
-- by the user. Led by `broadcast_id`, that index found a job's rows by
-- `broadcast_id` alone; where the statistics say a job is small (none yet,
-- or many small jobs), PostgreSQL chose it for statements that name a
-- recipient by its whole key and filtered the job's every row for it. No
-- index but the primary key and `broadcast_recipients_open` now starts
-- with `broadcast_id`, and both go on with `seq`.
ALTER TABLE broadcast_recipients DROP CONSTRAINT broadcast_recipients_broadcast_id_openid_key;
ALTER TABLE broadcast_recipients
    ADD CONSTRAINT broadcast_recipients_one_per_user UNIQUE (openid, broadcast_id);
