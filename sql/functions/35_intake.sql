-- Whether an endpoint of the event's account receives an accepted event at fan-out: it is enabled,
-- it existed when the event was accepted (p_accepted_at), and it takes the event (type and filter).
-- One place for the rule that fan_out_v1 applies and intake_backlog counts by. A SQL function the
-- planner inlines: the join's `enabled` still selects the partial index endpoints_enabled_account_idx
-- (tests/integration/test_query_plans.py).
CREATE OR REPLACE FUNCTION webhooks.receives(
    p_enabled boolean, p_created_at timestamptz, p_event_types text[], p_filter jsonpath,
    p_accepted_at timestamptz, p_event_type text, p_payload jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_enabled AND p_created_at <= p_accepted_at
       AND webhooks.takes(p_event_types, p_filter, p_event_type, p_payload)
$$;

-- The fan-out: the engine turns accepted events, waiting in webhooks.intake (migration 0011), into
-- the event row and one delivery per endpoint that takes it, as emit did inside the app's
-- transaction before (docs/decisions/0012-emit-cost-by-layer.md). claim_v2 calls it first, so
-- every claim, whichever engine version makes it, sees what was accepted up to its start.
--
-- A delivery is created and due as of its event's acceptance, as if emit had written it.
--
-- One statement deletes the oldest intake rows and writes their events and deliveries: a crash
-- leaves each row either still in the intake or fanned out, never both nor neither. A claim that
-- commits without waiting for its WAL flush may lose its fan-out with its leases; the intake rows
-- are then back, and fanned out again under the same event ids (at-least-once, as after any
-- crash).
--
-- One fan-out at a time, across engines (a transaction advisory lock; the others skip it and
-- claim what is already fanned out): deliveries are then written in the events' id order, which
-- strict ordering follows. Endpoints are matched now, not at emit: one created after the event
-- (its created_at later than the intake row's) gets nothing, and one disabled or deleted since gets
-- nothing, as with a disable that commits just after an emit. Filters are evaluated as emit's
-- probe evaluates them.
CREATE OR REPLACE FUNCTION webhooks.fan_out_v1(p_limit integer)
RETURNS integer LANGUAGE plpgsql
SET enable_seqscan = on
SET plan_cache_mode = auto
SET jit = off AS $$
DECLARE
    v_count integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('webhooks.fan_out')) THEN
        RETURN 0;
    END IF;
    WITH taken AS MATERIALIZED (
        DELETE FROM webhooks.intake i
         WHERE i.id = ANY (ARRAY(SELECT n.id FROM webhooks.intake n ORDER BY n.id LIMIT p_limit))
        RETURNING i.*),
    matched AS MATERIALIZED (
        SELECT t.id, t.type, t.created_at, e.id AS endpoint_id
          FROM taken t
          JOIN webhooks.endpoints e
            ON e.account_id = t.account_id
           AND webhooks.receives(e.enabled, e.created_at, e.event_types, e.filter,
                                 t.created_at, t.type, t.payload)),
    -- Only events that some endpoint still takes are stored, so every stored event has a
    -- delivery (erasure finds an account's events through them, 75_erasure.sql).
    ev AS (
        INSERT INTO webhooks.events (id, account_id, type, payload, idempotency_key, created_at)
        OVERRIDING SYSTEM VALUE
        SELECT t.id, t.account_id, t.type, t.payload, t.idempotency_key, t.created_at
          FROM taken t WHERE t.id IN (SELECT m.id FROM matched m)),
    d AS (
        INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id,
                                         created_at, due_at)
        SELECT m.id, m.created_at, m.type, m.endpoint_id, m.created_at, m.created_at
          FROM matched m ORDER BY m.id, m.endpoint_id)
    SELECT count(*) INTO v_count FROM taken;
    RETURN v_count;
END $$;

-- Accepted events not fanned out yet, for operators (README "Delivery log"): while an engine runs
-- they wait at most one claim; while none runs, they wait here, and their deliveries do not exist
-- yet. deliveries: how many the fan-out would write now (webhooks.receives, as fan_out_v1).
CREATE OR REPLACE VIEW webhooks.intake_backlog AS
SELECT count(*) AS events,
       coalesce(sum((SELECT count(*) FROM webhooks.endpoints e
                      WHERE e.account_id = i.account_id
                        AND webhooks.receives(e.enabled, e.created_at, e.event_types, e.filter,
                                              i.created_at, i.type, i.payload))), 0)::bigint
           AS deliveries,
       min(i.created_at) AS oldest_accepted_at,
       now() - min(i.created_at) AS oldest_age
  FROM webhooks.intake i;

-- One account's accepted events (NULL: every account's) not fanned out yet, for the API and the
-- customer's portal: while no engine runs, an accepted event has no delivery, and this is how the
-- customer sees that it was accepted. Counted from the intake, which is near empty while an engine
-- runs; no index on account_id, which every emit would pay for.
CREATE OR REPLACE FUNCTION webhooks.accepted_events_v1(p_account_id text)
RETURNS TABLE (events bigint, oldest_accepted_at timestamptz) LANGUAGE sql STABLE AS $$
    SELECT count(*), min(i.created_at) FROM webhooks.intake i
     WHERE p_account_id IS NULL OR i.account_id = p_account_id
$$;
