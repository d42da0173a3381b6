-- The engine's claim: a short transaction that leases due deliveries, per endpoint, as many as the
-- caller's actor for that endpoint has room for and the endpoint's limits allow across every
-- engine. due_at doubles as the lease expiry: claiming moves it forward by settings.lease_duration;
-- a crashed engine's rows become due again when the lease runs out (at-least-once).
--
-- The ready set (migration 0004, docs/decisions/0006-ready-set.md): a claim reads only rows marked
-- ready, so a delivery waiting for its retry or leased to an attempt costs it nothing. It first
-- promotes the waiting rows whose due_at has come (a retry's time, an expired lease), oldest first
-- and a bounded number per claim, then leases from the ready set and clears ready on what it leased.
-- A claim's work follows the rows it returns, the rows it promotes and the endpoints with ready rows.
--
-- Several engines (migration 0006, docs/decisions/0008-several-engines.md): an endpoint's limits
-- are kept here, not by the engines' actors, so they hold across engines. Per endpoint the claim
-- - takes a transaction-level advisory lock on the endpoint (its bucket), or skips it when another
--   claim holds it: two claims that both counted the same free room would together lease past
--   the limit;
-- - counts the endpoint's rows leased now, by any engine (deliveries_leases_idx, migration 0012:
--   the one index whose predicate the count's conditions imply), and leases at most max_in_flight
--   (1 when strict) minus those. A row an actor holds queued counts as in flight, so an endpoint's
--   leased rows never exceed its limit, wherever they wait;
-- - with a rate limit, gives each row it leases the next start time from the endpoint's schedule
--   (webhooks.endpoint_pacing), one 1/rate apart, and leases only rows whose start falls within a
--   quarter of the lease: the actor waits for that time before sending, with most of its lease
--   left. send_in_s says how long, from the end of the claim; it is relative, so engines whose
--   clocks differ from the server's still keep the schedule.
--
-- Each row also carries what its attempt needs of the endpoint's policy (migration 0008): the
-- custom headers and the request timeout in force (the endpoint's, else the settings').
--
-- p_room_ids/p_rooms: endpoints whose actors have limited room (0 means skip the endpoint);
-- p_default_room: room for any other endpoint; p_max_rows: cap for the whole claim;
-- p_after: the endpoint the previous capped claim stopped at, so a capped claim rotates fairly.
-- Endpoints are found with a loose index scan over deliveries_ready_idx: one probe per endpoint
-- with ready rows, never a query per known endpoint. The walk is lazy and stops with the claim:
-- it runs in id order from p_after to the end, then from the start up to p_after, as two walks
-- appended rather than one sorted, since a sort would need every endpoint with ready rows before
-- the first pick. A claim that fills early (a backlog over thousands of endpoints, where each claim
-- takes the room freed by the last results) probes only the endpoints it reaches.
-- Picks also require due_at <= now(): ready alone would do for rows this body wrote, but an engine
-- of an earlier version (running beside a new one during an upgrade, before these bodies were
-- re-applied) leased rows without clearing ready; its leases are not due, so they are not taken
-- twice, and they leave the ready set the next time these bodies lease them or record a retry.
-- Generic plans (plan_cache_mode): with the default, Postgres planned the final statement afresh on
-- every call (a custom plan), so every claim paid its planning time again. The per-endpoint probes
-- are index probes whatever the parameters.
-- No sequential scans (enable_seqscan): a generic plan is made once per connection, and the hot
-- table swings between empty (freshly vacuumed, its statistics saying no rows) and a burst's
-- thousands of rows. Plans made on the empty table scanned all of it on every claim later, however
-- few rows the claim took. For the same reason the reads by endpoint name the predicate of a partial
-- index ("d.ready", "NOT d.ready", "d.attempts >= 0", "d.lease_token IS NOT NULL" with a due_at
-- comparison), and the updates by id can only use the primary key: no partial index's predicate is
-- in them.
-- No JIT (jit): with sequential scans off, the one-row settings table's only plan is a seq scan
-- costed as disabled (10^10), far above jit_above_cost, so Postgres 15 built with LLVM compiled it
-- on every call, at a cost far above the claim's own. These statements never need JIT.
-- The figures behind these settings: docs/decisions/0001-claim-plans.md.
CREATE OR REPLACE FUNCTION webhooks.claim_v2(
    p_room_ids     uuid[],
    p_rooms        integer[],
    p_default_room integer,
    p_max_rows     integer,
    p_after        uuid DEFAULT NULL)
RETURNS TABLE (
    delivery_id      bigint,
    lease_token      uuid,
    attempt          integer,
    endpoint_id      uuid,
    event_id         bigint,
    event_type       text,
    body             text,
    url              text,
    secrets          text[],
    max_in_flight    integer,
    ordering         text,
    rate_limit_per_s double precision,
    created_at       timestamptz,
    send_in_s        double precision,
    headers          jsonb,
    timeout_s        integer)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_token   uuid := gen_random_uuid();
    v_lease   interval;
    v_timeout integer;
    v_claimed bigint[] := '{}';
    v_slots   timestamptz[] := '{}';
    v_left    integer := p_max_rows;
    v_ep      record;
    v_room    integer;
    v_busy    integer;
    v_step    interval;
    v_slot    timestamptz;
    v_head    record;
    v_ids     bigint[];
    v_sent    timestamptz;
    v_from    uuid;
    v_e       record;
BEGIN
    -- Accepted events first (35_intake.sql), so that this claim sees their deliveries.
    PERFORM webhooks.fan_out_v1(200);
    SELECT s.lease_duration, s.request_timeout_s INTO v_lease, v_timeout FROM webhooks.settings s;

    -- Promotion. SKIP LOCKED: engines claiming at once split the due rows instead of queueing on
    -- each other, and a row that a result is being recorded for is left to that result. Bounded,
    -- so that the first claim after a long outage (every retry due at once) stays a short
    -- transaction; the rest go in the next claims, oldest first.
    SELECT array_agg(w.id) INTO v_ids FROM (
        SELECT d.id FROM webhooks.deliveries d
         WHERE NOT d.ready AND d.due_at <= now()
         ORDER BY d.due_at
         LIMIT 1000
         FOR UPDATE SKIP LOCKED) w;
    IF v_ids IS NOT NULL THEN
        UPDATE webhooks.deliveries d SET ready = true WHERE d.id = ANY (v_ids);
        -- Soft state, as a lease is (below): a lost promotion is done again by the next claim.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;

    -- Where the walk turns: after p_after, or, with none, after the largest uuid (all of it is
    -- then the second walk).
    v_from := coalesce(p_after, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid);
    FOR v_ep IN
        WITH RECURSIVE above(id) AS (
            (SELECT d.endpoint_id FROM webhooks.deliveries d
              WHERE d.ready AND d.endpoint_id > v_from ORDER BY d.endpoint_id LIMIT 1)
            UNION ALL
            SELECT (SELECT d.endpoint_id FROM webhooks.deliveries d
                     WHERE d.endpoint_id > above.id AND d.ready
                     ORDER BY d.endpoint_id LIMIT 1)
              FROM above WHERE above.id IS NOT NULL
        ), below(id) AS (
            (SELECT d.endpoint_id FROM webhooks.deliveries d
              WHERE d.ready AND d.endpoint_id <= v_from ORDER BY d.endpoint_id LIMIT 1)
            UNION ALL
            SELECT (SELECT d.endpoint_id FROM webhooks.deliveries d
                     WHERE d.endpoint_id > below.id AND d.endpoint_id <= v_from AND d.ready
                     ORDER BY d.endpoint_id LIMIT 1)
              FROM below WHERE below.id IS NOT NULL
        )
        SELECT a.id FROM above a WHERE a.id IS NOT NULL
        UNION ALL
        SELECT b.id FROM below b WHERE b.id IS NOT NULL
    LOOP
        EXIT WHEN v_left <= 0;
        v_room := coalesce(p_rooms[array_position(p_room_ids, v_ep.id)], p_default_room);
        CONTINUE WHEN v_room <= 0;
        v_room := least(v_room, v_left);
        -- Looked up here, not joined in the walk: a join could be planned as a hash join that
        -- reads the whole walk before its first row.
        SELECT e.ordering AS ep_ordering, e.enabled, e.max_in_flight AS ep_limit,
               e.rate_limit_per_s AS ep_rate
          INTO v_e FROM webhooks.endpoints e WHERE e.id = v_ep.id;
        CONTINUE WHEN NOT FOUND OR NOT v_e.enabled;
        -- Another engine is claiming for this endpoint right now: its next claim comes soon.
        -- One lock per bucket of endpoints, not per endpoint: a claim may walk thousands of
        -- endpoints, and advisory locks take room in the server's shared lock table (sized by
        -- max_locks_per_transaction), which one lock each could exhaust. 256 buckets bound a
        -- claim's locks; endpoints that share one are claimed by one engine at a time.
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtext('webhooks.claim'),
                                                    hashtext(v_ep.id::text) & 255);
        -- What is in flight across engines. Under the lock, and in a statement of its own (a
        -- snapshot taken after the lock), so a claim that committed just before counts.
        SELECT count(*) INTO v_busy FROM webhooks.deliveries d
         WHERE d.endpoint_id = v_ep.id AND d.lease_token IS NOT NULL AND d.due_at > now();
        v_room := least(v_room,
                        CASE WHEN v_e.ep_ordering = 'strict' THEN 1 ELSE v_e.ep_limit END - v_busy);
        CONTINUE WHEN v_room <= 0;
        v_slot := NULL;
        IF v_e.ep_rate IS NOT NULL THEN
            v_step := make_interval(secs => 1 / v_e.ep_rate);
            SELECT greatest(p.next_slot_at, now()) INTO v_slot FROM webhooks.endpoint_pacing p
             WHERE p.endpoint_id = v_ep.id;
            v_slot := coalesce(v_slot, now());
            -- Only starts within a quarter of the lease: the rest of it covers the request.
            v_room := least(v_room, floor(extract(epoch FROM now() + v_lease / 4 - v_slot)
                                          * v_e.ep_rate)::integer + 1);
            CONTINUE WHEN v_room <= 0;
        END IF;
        IF v_e.ep_ordering = 'strict' THEN
            -- FIFO: only the oldest live delivery may go, and only when it is ready (not leased,
            -- not waiting for its retry). The head is looked up among all live rows, ready or not.
            SELECT d.id, d.ready, d.due_at INTO v_head FROM webhooks.deliveries d
             WHERE d.endpoint_id = v_ep.id AND d.attempts >= 0 ORDER BY d.id LIMIT 1;
            CONTINUE WHEN NOT FOUND OR NOT v_head.ready OR v_head.due_at > now();
            -- Locked by id alone, so that only the primary key can serve it; checked again once
            -- locked, since another engine may have leased it since the lookup above.
            SELECT d.id, d.ready, d.due_at INTO v_head FROM webhooks.deliveries d
             WHERE d.id = v_head.id
             FOR UPDATE SKIP LOCKED;
            v_ids := CASE WHEN FOUND AND v_head.ready AND v_head.due_at <= now()
                          THEN ARRAY[v_head.id] END;
        ELSE
            SELECT array_agg(c.id) INTO v_ids FROM (
                SELECT d.id FROM webhooks.deliveries d
                 WHERE d.endpoint_id = v_ep.id AND d.ready AND d.due_at <= now()
                 ORDER BY d.id
                 LIMIT v_room
                 FOR UPDATE SKIP LOCKED) c;
        END IF;
        CONTINUE WHEN v_ids IS NULL;
        v_claimed := v_claimed || v_ids;
        v_left := v_left - cardinality(v_ids);
        IF v_slot IS NULL THEN
            v_slots := v_slots || array_fill(NULL::timestamptz, ARRAY[cardinality(v_ids)]);
        ELSE
            -- v_ids is in id order (event order), so the slots are too.
            v_slots := v_slots || ARRAY(SELECT v_slot + v_step * (n - 1)
                                          FROM generate_series(1, cardinality(v_ids)) n
                                         ORDER BY n);
            INSERT INTO webhooks.endpoint_pacing AS p (endpoint_id, next_slot_at)
            VALUES (v_ep.id, v_slot + v_step * cardinality(v_ids))
            ON CONFLICT (endpoint_id) DO UPDATE SET next_slot_at = excluded.next_slot_at;
        END IF;
    END LOOP;

    IF cardinality(v_claimed) = 0 THEN
        RETURN;
    END IF;
    -- A lease is soft state, so the claim's commit does not wait for its WAL flush (a disk flush in
    -- every delivery's latency otherwise). If a crash loses it, the rows are due again and a result
    -- under the lost lease is recorded as stale: at-least-once, as after any crash. A later
    -- synchronous commit (recording a result) flushes the WAL before it, this claim included.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- The engine is busy from this commit on, so emit stops sending NOTIFYs. Cleared here rather
    -- than by a set_engine_waiting_v1(false) call of the engine's own, which cost a round trip per
    -- event in a trickle. Written only on a change, so a busy engine does not churn the row.
    UPDATE webhooks.engine_state s SET waiting_until = NULL, updated_at = now()
     WHERE s.waiting_until IS NOT NULL;
    -- The statement below joins the partitioned events table, which is slow to plan. A small
    -- claim (a trickle of events) uses its cached generic plan; a big one (a burst) is planned for
    -- its row count, which a generic plan serves worse per row than a plan for that count.
    PERFORM set_config('plan_cache_mode',
                       CASE WHEN cardinality(v_claimed) > 16 THEN 'force_custom_plan'
                            ELSE 'force_generic_plan' END, true);

    -- The start times go out relative to the claim's end, the latest moment this body can read.
    v_sent := clock_timestamp();
    RETURN QUERY
    WITH leased AS (
        UPDATE webhooks.deliveries d
           SET due_at = now() + v_lease, lease_token = v_token, ready = false
         WHERE d.id = ANY (v_claimed)
        RETURNING d.id, d.attempts, d.endpoint_id, d.event_id, d.event_created_at, d.created_at
    )
    SELECT l.id, v_token, l.attempts + 1, l.endpoint_id, ev.id, ev.type,
           '{"id":' || to_json('evt_' || ev.id)::text
           || ',"type":' || to_json(ev.type)::text
           || ',"created_at":' || to_json(to_char(ev.created_at AT TIME ZONE 'UTC',
                                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
           || ',"account_id":' || to_json(ev.account_id)::text
           || ',"data":' || ev.payload::text
           || CASE WHEN ev.test THEN ',"test":true}' ELSE '}' END,
           e.url, webhooks.signing_secrets(e), e.max_in_flight, e.ordering, e.rate_limit_per_s,
           l.created_at,
           coalesce(greatest(extract(epoch FROM s.slot - v_sent)::double precision, 0), 0),
           e.headers, coalesce(e.timeout_s, v_timeout)
      FROM leased l
      JOIN unnest(v_claimed, v_slots) AS s(id, slot) ON s.id = l.id
      JOIN webhooks.events ev ON ev.id = l.event_id AND ev.created_at = l.event_created_at
      JOIN webhooks.endpoints e ON e.id = l.endpoint_id
     ORDER BY l.endpoint_id, l.id;
END $$;

-- For an engine of the previous version, running beside new ones during an upgrade: the same
-- claim, without the start times. Its rows count against max_in_flight as everyone's do; it
-- spaces a rate-limited endpoint's starts by its own clock from the moment of its claim, so until
-- it stops, that endpoint's rate across engines may run above its limit.
CREATE OR REPLACE FUNCTION webhooks.claim_v1(
    p_room_ids     uuid[],
    p_rooms        integer[],
    p_default_room integer,
    p_max_rows     integer,
    p_after        uuid DEFAULT NULL)
RETURNS TABLE (
    delivery_id      bigint,
    lease_token      uuid,
    attempt          integer,
    endpoint_id      uuid,
    event_id         bigint,
    event_type       text,
    body             text,
    url              text,
    secrets          text[],
    max_in_flight    integer,
    ordering         text,
    rate_limit_per_s double precision,
    created_at       timestamptz)
LANGUAGE sql AS $$
    SELECT c.delivery_id, c.lease_token, c.attempt, c.endpoint_id, c.event_id, c.event_type,
           c.body, c.url, c.secrets, c.max_in_flight, c.ordering, c.rate_limit_per_s, c.created_at
      FROM webhooks.claim_v2(p_room_ids, p_rooms, p_default_room, p_max_rows, p_after) c
$$;

-- Gives back leases of deliveries the engine claimed but never started (shutdown), so they are
-- ready at once instead of after the lease expires. The other engines are told at once (a NOTIFY
-- from this, the engine's own transaction, never from the app's): the rows no longer count against
-- their endpoints' max_in_flight, and an engine waiting on that limit would otherwise find them
-- only at its next poll.
CREATE OR REPLACE FUNCTION webhooks.release_v1(p_delivery_ids bigint[], p_leases uuid[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    WITH released AS (
        UPDATE webhooks.deliveries d
           SET due_at = now(), lease_token = NULL, ready = true
          FROM unnest(p_delivery_ids, p_leases) AS r(id, lease)
         WHERE d.id = r.id AND d.lease_token = r.lease
        RETURNING 1
    )
    SELECT count(*)::integer INTO v_count FROM released;
    IF v_count > 0 THEN
        PERFORM pg_notify('webhooks_wakeup', '');
    END IF;
    RETURN v_count;
END $$;

-- The waiting mark (engine_state.waiting_until): emit sends a NOTIFY only while it is in the
-- future. An engine sets it when it goes to sleep with its listener connected and refreshes it
-- while it stays asleep; a claim that leases rows clears it, and so does an engine that stops
-- listening. The mark lasts engine_waiting_ttl_v1() past its last write, so an engine that dies
-- asleep stops costing the app NOTIFYs within that time, and a restarted engine sweeps at start.
--
-- Several engines share the one row. A busy engine's claim clears the mark while another engine
-- sleeps; the sleeper's refresh then finds no mark and leaves it cleared, so it finds work by its
-- poll until it next goes to sleep and sets the mark again (as before the mark had a lifetime).
-- The mark outlives the last sleeping engine by at most the lifetime.

-- How long a mark lasts past its last write. It bounds how long the app's commits keep paying for
-- NOTIFYs after the engine that asked for them died; the engine refreshes well within it
-- (engine.delivery.dispatcher says how often, and why).
CREATE OR REPLACE FUNCTION webhooks.engine_waiting_ttl_v1()
RETURNS interval LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT interval '20 seconds'
$$;

-- true: the engine goes to sleep and wants a NOTIFY for new work (sets the mark for the lifetime);
-- false: it does not (clears the mark; written only on a change, so a busy engine does not churn
-- the row). An engine of the previous version calls this with true once as it goes to sleep and
-- never refreshes: it gets NOTIFYs for one lifetime, then finds work by its poll.
CREATE OR REPLACE FUNCTION webhooks.set_engine_waiting_v1(p_waiting boolean)
RETURNS void LANGUAGE sql AS $$
    UPDATE webhooks.engine_state s
       SET waiting_until = CASE WHEN p_waiting THEN now() + webhooks.engine_waiting_ttl_v1() END,
           updated_at = now()
     WHERE p_waiting OR s.waiting_until IS NOT NULL
$$;

-- A sleeping engine extends the mark it set. A mark that a claim cleared stays cleared: the
-- engine that claimed is busy, and a wake-up now would be the sleeper's alone.
CREATE OR REPLACE FUNCTION webhooks.refresh_engine_waiting_v1()
RETURNS void LANGUAGE sql AS $$
    UPDATE webhooks.engine_state s
       SET waiting_until = now() + webhooks.engine_waiting_ttl_v1(), updated_at = now()
     WHERE s.waiting_until IS NOT NULL
$$;

-- When the next delivery falls due, for the engine's retry timer: the earliest of the waiting set
-- (a retry's time, a lease's expiry), or, when a ready row exists, that row's due_at, which has
-- normally passed already (any ready row says "due now", so the first one found will do), or,
-- when an accepted event waits in the intake for its fan-out, its created_at (due now as well).
CREATE OR REPLACE FUNCTION webhooks.next_due_at_v1()
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT least((SELECT d.due_at FROM webhooks.deliveries d
                   WHERE NOT d.ready ORDER BY d.due_at LIMIT 1),
                 (SELECT d.due_at FROM webhooks.deliveries d
                   WHERE d.ready ORDER BY d.endpoint_id, d.id LIMIT 1),
                 (SELECT i.created_at FROM webhooks.intake i ORDER BY i.id LIMIT 1))
$$;
