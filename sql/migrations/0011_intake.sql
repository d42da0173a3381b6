-- The intake (docs/decisions/0012-emit-cost-by-layer.md): emit, emit_keyed and emit_many write an
-- accepted event as one row here, inside the app's transaction, and the engine's claim fans it
-- out into the event and its deliveries (webhooks.fan_out_v1, sql/functions/35_intake.sql). One
-- row into a table with one index is what the app's commit pays, instead of the event, its
-- partition routing, and one delivery per endpoint with the deliveries' indexes.
--
-- The id is the event's id, drawn from the events' sequence when the row is written, so emit
-- returns it as before and the fan-out keeps it. created_at is the app's transaction time: the
-- event's created_at, and the moment before which an endpoint must exist to receive the event.
--
-- A new, empty table: nothing existing is locked or rewritten, and deliveries already in flight
-- are not touched. The function bodies that write and read it are replaced after this migration,
-- in the same run; a claim of the previous engine version calls the new claim_v2, which fans out.
CREATE TABLE webhooks.intake (
    id              bigint PRIMARY KEY DEFAULT nextval('webhooks.events_id_seq'),
    account_id      text NOT NULL,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- A queue: every row is deleted soon after it is written. Vacuumed after a fixed number of dead
-- rows rather than a share of a table that is usually near empty.
ALTER TABLE webhooks.intake SET (autovacuum_vacuum_scale_factor = 0,
                                 autovacuum_vacuum_threshold = 1000);
