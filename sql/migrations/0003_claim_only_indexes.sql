-- The hot table's per-endpoint indexes become the claim's alone: partial on attempts >= 0, which
-- every row satisfies (the CHECK below), so that the planner uses them only for statements that say
-- so. Those are the claim's and the other per-endpoint reads (functions/*.sql).
--
-- Why: both indexes hold id, so a lookup by id (record_attempts_v1, the claim's lease update) could
-- also be planned as a full scan of one of them with id as a non-leading column. While the table's
-- statistics say it is empty (vacuumed at rest), that plan costs the same as the primary key probe
-- and can win the tie; generic plans then keep it for the connection's life, and as the table grows
-- every lookup by id reads the whole index (bench W4: 100-270 ms per record call instead of 3 ms).
-- With these indexes out of the planner's reach there, the primary key is the only index a lookup by
-- id can use, whatever the statistics say, and the engine's functions can keep their cheap cached
-- plans. Recreating them locks the table for as long as building two indexes over its live rows
-- takes: short, since the table holds only undelivered rows.
ALTER TABLE webhooks.deliveries
    ADD CONSTRAINT deliveries_attempts_check CHECK (attempts >= 0);

DROP INDEX webhooks.deliveries_endpoint_due_idx;
CREATE INDEX deliveries_endpoint_due_idx ON webhooks.deliveries (endpoint_id, due_at, id)
    WHERE attempts >= 0;

DROP INDEX webhooks.deliveries_endpoint_id_idx;
CREATE INDEX deliveries_endpoint_id_idx ON webhooks.deliveries (endpoint_id, id)
    WHERE attempts >= 0;
