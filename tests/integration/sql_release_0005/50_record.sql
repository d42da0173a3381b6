-- Records a batch of attempt results (parallel arrays, one element per attempt) and moves each
-- delivery on: delivered and failed-for-good deliveries leave the hot table for delivery_outcomes;
-- the others get their next due time from settings.retry_schedule, computed here so that SQL and
-- every engine agree on it.
--
-- Fenced by the lease: a result whose delivery is gone or was re-leased (the engine was presumed
-- dead and another claim took it) still gets its attempt row, marked 'stale', but changes nothing.
-- A result already recorded (same delivery and started_at: the connection dropped after the commit
-- and the engine wrote the batch again) is not recorded twice; its first outcome is returned.
-- 410 Gone disables the endpoint at once; a failure after settings.disable_after without any success
-- disables it too. Returns one row per input with what happened.
-- Generic plans (plan_cache_mode), made once per connection, that cannot go stale. The hot table
-- swings between empty (freshly vacuumed, its statistics saying no rows) and a burst's thousands of
-- rows, and plans made on the empty table once read all of it per result, until autovacuum's
-- ANALYZE replaced them (the engine stalled meanwhile). On a table that
-- looks empty every way in costs the same, so the planner must be left only bounded ones:
-- - every statement here that reads webhooks.deliveries reads it alone, by id (d.id = ANY (array)
--   or d.id = value), never joined: a join let the plan scan the whole primary key once and filter;
-- - the per-endpoint indexes are out of its reach (partial, migrations 0003 and 0004): a lookup by
--   id could otherwise scan one of them in full, with id as a non-leading column;
-- - sequential scans are off (enable_seqscan), so the primary key is the only way in left;
-- - nested loops are off (enable_nestloop): the joins left are between the batch's rows in memory,
--   and a nested loop over two "one-row" inputs of a full batch each compares every pair.
-- Planning every call instead (force_custom_plan) was safe too, but costs every call its planning
-- time, which a trickle of events pays in full. No JIT (jit): see claim_v1.
-- The figures behind these settings: docs/decisions/0004-record-plans-that-cannot-go-stale.md.
CREATE OR REPLACE FUNCTION webhooks.record_attempts_v1(
    p_delivery_ids  bigint[],
    p_leases        uuid[],
    p_started_at    timestamptz[],
    p_duration_ms   integer[],
    p_status_codes  integer[],
    p_error_kinds   text[],
    p_error_msgs    text[],
    p_excerpts      text[],
    p_retry_after_s double precision[])
RETURNS TABLE (delivery_id bigint, outcome text, attempt integer, next_attempt_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_nestloop = off
SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_set        webhooks.settings;
    v_d          webhooks.deliveries;
    v_ep         webhooks.endpoints;
    v_n          integer;
    v_status     integer;
    v_delay      interval;
    v_next       timestamptz;
    v_outcome    text;
    v_error      text;
    v_successes  uuid[];
    v_ok         integer[];
    v_ok_ids     bigint[];
    v_ok_leases  uuid[];
    v_prev       record;
    v_delivered  integer[];
BEGIN
    SELECT * INTO v_set FROM webhooks.settings;
    -- Lock order: endpoints before deliveries, as disable_endpoint and delete_endpoint do, so an
    -- operator's disable running beside a results batch waits instead of deadlocking.
    PERFORM 1 FROM webhooks.endpoints e
     WHERE e.id = ANY (ARRAY(SELECT d.endpoint_id FROM webhooks.deliveries d
                              WHERE d.id = ANY (p_delivery_ids)))
     ORDER BY e.id FOR KEY SHARE;
    -- The results that are a 2xx under their delivery's current lease (once per delivery): their
    -- positions in the input (v_ok), ids and leases, and the endpoints that answered 2xx anywhere in
    -- this batch (a failure recorded before or after such a success in the same batch must not
    -- disable them for lack of success). The batch's rows are read by id into memory first and
    -- joined with the input there: a join against the table itself let a plan scan all of it.
    WITH cur AS MATERIALIZED (
        SELECT d.id, d.lease_token, d.endpoint_id FROM webhooks.deliveries d
         WHERE d.id = ANY (p_delivery_ids)
    ), ok AS (
        SELECT min(r.i)::integer AS i, r.id, r.lease, c.endpoint_id
          FROM unnest(p_delivery_ids, p_leases, p_status_codes) WITH ORDINALITY AS r(id, lease, status, i)
          JOIN cur c ON c.id = r.id AND c.lease_token = r.lease
         WHERE r.status BETWEEN 200 AND 299
         GROUP BY r.id, r.lease, c.endpoint_id
    )
    SELECT coalesce(array_agg(ok.i), '{}'), coalesce(array_agg(ok.id), '{}'),
           coalesce(array_agg(DISTINCT ok.lease), '{}'), coalesce(array_agg(DISTINCT ok.endpoint_id), '{}')
      INTO v_ok, v_ok_ids, v_ok_leases, v_successes
      FROM ok;
    -- The common case, a 2xx under a current lease, as one statement for the whole batch: row by row
    -- it cost four statements per result. v_delivered[i] is the attempt number of result i
    -- when this statement recorded it, NULL otherwise; the loop below does the rest, in input order.
    -- The lease is checked again (a claim may have re-leased a row since): a new lease's token is
    -- new, so it is none of this batch's.
    WITH gone AS (
        DELETE FROM webhooks.deliveries d
         WHERE d.id = ANY (v_ok_ids) AND d.lease_token = ANY (v_ok_leases)
        RETURNING d.id, d.event_id, d.event_created_at, d.event_type, d.endpoint_id, d.attempts,
                  d.created_at
    ), done AS (
        SELECT g.*, k.i, p_started_at[k.i] AS started_at, p_duration_ms[k.i] AS duration_ms,
               p_status_codes[k.i] AS status, p_error_kinds[k.i] AS error_kind,
               p_error_msgs[k.i] AS error_msg, p_excerpts[k.i] AS excerpt
          FROM gone g JOIN unnest(v_ok, v_ok_ids) AS k(i, id) ON k.id = g.id
    ), attempts_written AS (
        INSERT INTO webhooks.attempts
            (delivery_id, endpoint_id, event_id, attempt, started_at, duration_ms, status_code,
             error_kind, error_message, response_excerpt, outcome)
        SELECT g.id, g.endpoint_id, g.event_id, g.attempts + 1, g.started_at, g.duration_ms, g.status,
               g.error_kind, g.error_msg, g.excerpt, 'delivered'
          FROM done g
    ), outcomes_written AS (
        INSERT INTO webhooks.delivery_outcomes
            (delivery_id, event_id, event_created_at, event_type, endpoint_id, status, attempts,
             last_status, last_error, created_at)
        SELECT g.id, g.event_id, g.event_created_at, g.event_type, g.endpoint_id, 'delivered',
               g.attempts + 1, g.status, NULL, g.created_at
          FROM done g
    )
    SELECT array_agg(g.attempts + 1 ORDER BY n.i) INTO v_delivered
      FROM generate_series(1, coalesce(cardinality(p_delivery_ids), 0)) AS n(i)
      LEFT JOIN done g ON g.i = n.i;

    FOR i IN 1 .. coalesce(cardinality(p_delivery_ids), 0) LOOP
        IF v_delivered[i] IS NOT NULL THEN
            delivery_id := p_delivery_ids[i]; outcome := 'delivered'; attempt := v_delivered[i];
            next_attempt_at := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_status := coalesce(p_status_codes[i], 0);
        v_error := CASE WHEN p_error_kinds[i] IS NULL THEN NULL
                        ELSE p_error_kinds[i] || coalesce(': ' || p_error_msgs[i], '') END;
        SELECT * INTO v_d FROM webhooks.deliveries d WHERE d.id = p_delivery_ids[i] FOR UPDATE;
        IF NOT FOUND OR v_d.lease_token IS DISTINCT FROM p_leases[i] THEN
            SELECT a.outcome, a.attempt, a.next_attempt_at INTO v_prev FROM webhooks.attempts a
             WHERE a.delivery_id = p_delivery_ids[i] AND a.started_at = p_started_at[i]
             LIMIT 1;
            IF FOUND THEN
                delivery_id := p_delivery_ids[i]; outcome := v_prev.outcome;
                attempt := v_prev.attempt; next_attempt_at := v_prev.next_attempt_at;
                RETURN NEXT;
                CONTINUE;
            END IF;
            INSERT INTO webhooks.attempts
                (delivery_id, endpoint_id, event_id, attempt, started_at, duration_ms, status_code,
                 error_kind, error_message, response_excerpt, outcome)
            SELECT p_delivery_ids[i], coalesce(v_d.endpoint_id, o.endpoint_id), coalesce(v_d.event_id, o.event_id),
                   coalesce(v_d.attempts, o.attempts) + 1, p_started_at[i], p_duration_ms[i], v_status,
                   p_error_kinds[i], p_error_msgs[i], p_excerpts[i], 'stale'
              FROM (SELECT 1) one
              LEFT JOIN LATERAL (SELECT * FROM webhooks.delivery_outcomes x
                                  WHERE x.delivery_id = p_delivery_ids[i]
                                  ORDER BY x.ended_at DESC LIMIT 1) o ON true
             WHERE v_d.id IS NOT NULL OR o.delivery_id IS NOT NULL;
            delivery_id := p_delivery_ids[i]; outcome := 'stale'; attempt := NULL; next_attempt_at := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;

        -- A failure: a 2xx under the current lease was recorded by the set-based statement above.
        v_n := v_d.attempts + 1;
        v_next := NULL;
        IF v_status = 410 OR v_n > cardinality(v_set.retry_schedule) THEN
            v_outcome := 'failed';
        ELSE
            v_outcome := 'retry';
            v_delay := v_set.retry_schedule[v_n] * (1 + v_set.retry_jitter * (2 * random() - 1));
            IF v_status IN (429, 503) AND p_retry_after_s[i] IS NOT NULL THEN
                v_delay := least(greatest(make_interval(secs => p_retry_after_s[i]), v_delay), 2 * v_delay);
            END IF;
            v_next := now() + v_delay;
        END IF;

        INSERT INTO webhooks.attempts
            (delivery_id, endpoint_id, event_id, attempt, started_at, duration_ms, status_code,
             error_kind, error_message, response_excerpt, outcome, next_attempt_at)
        VALUES (v_d.id, v_d.endpoint_id, v_d.event_id, v_n, p_started_at[i], p_duration_ms[i], v_status,
                p_error_kinds[i], p_error_msgs[i], p_excerpts[i], v_outcome, v_next);

        IF v_outcome = 'retry' THEN
            -- Into the waiting set: the claim promotes it back when v_next comes.
            UPDATE webhooks.deliveries d
               SET attempts = v_n, due_at = v_next, lease_token = NULL, ready = false,
                   last_status = v_status, last_error = v_error, last_attempt_at = p_started_at[i]
             WHERE d.id = v_d.id;
        ELSE
            DELETE FROM webhooks.deliveries d WHERE d.id = v_d.id;
            INSERT INTO webhooks.delivery_outcomes
                (delivery_id, event_id, event_created_at, event_type, endpoint_id, status, attempts,
                 last_status, last_error, created_at)
            VALUES (v_d.id, v_d.event_id, v_d.event_created_at, v_d.event_type, v_d.endpoint_id,
                    v_outcome, v_n, v_status,
                    CASE WHEN v_status = 410 THEN 'endpoint answered 410 Gone'
                         ELSE coalesce(v_error, 'HTTP ' || v_status)
                              || format(' (gave up after %s attempts)', v_n) END,
                    v_d.created_at);
        END IF;

        UPDATE webhooks.endpoints e SET failing_since = now()
         WHERE e.id = v_d.endpoint_id AND e.failing_since IS NULL;
        SELECT * INTO v_ep FROM webhooks.endpoints e WHERE e.id = v_d.endpoint_id;
        IF v_ep.enabled AND v_status = 410 THEN
            PERFORM webhooks.disable_endpoint(v_d.endpoint_id, 'endpoint answered 410 Gone');
        ELSIF v_ep.enabled AND v_ep.failing_since < now() - v_set.disable_after
              AND (v_ep.last_success_at IS NULL OR v_ep.last_success_at < now() - v_set.disable_after)
              AND NOT v_d.endpoint_id = ANY (v_successes) THEN
            PERFORM webhooks.disable_endpoint(v_d.endpoint_id,
                format('no successful delivery for %s', v_set.disable_after));
        END IF;

        delivery_id := v_d.id; outcome := v_outcome; attempt := v_n; next_attempt_at := v_next;
        RETURN NEXT;
    END LOOP;

    -- One write per endpoint per batch, and only when something changes or the stamp is old, so a
    -- busy endpoint does not churn its row.
    UPDATE webhooks.endpoints e SET last_success_at = now(), failing_since = NULL
     WHERE e.id = ANY (v_successes)
       AND (e.failing_since IS NOT NULL OR e.last_success_at IS NULL
            OR e.last_success_at < now() - interval '10 seconds');
END $$;
