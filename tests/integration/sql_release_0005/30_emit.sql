-- webhooks.emit: what MisarMail's triggers call, inside the app's own transaction.
--
-- Cost matters more here than anywhere: most accounts have no endpoint, so the common path is one
-- expression for all the argument checks plus one probe of endpoints_enabled_account_idx, and it
-- writes nothing. Each plpgsql statement has a cost of its own on its first use in a transaction,
-- so that path is kept to three statements (see docs/decisions/0005-emit-common-path.md).
-- With subscribers it writes the event and one delivery per endpoint, and sends a NOTIFY only while
-- a listening engine says it is asleep (engine_state.waiting_until is in the future): NOTIFY takes
-- a cluster-wide lock at commit that serialises the app's commits, so a busy engine (which never
-- sleeps) costs the app no NOTIFY, and neither does an engine that is not there (the mark expires
-- unless a live engine refreshes it; see set_engine_waiting_v1 in 40_claim.sql).

-- Whether an endpoint's subscription list takes an event type ('*', 'email.*' or the exact name).
-- A SQL function the planner inlines, so it costs nothing over writing the expression out.
CREATE OR REPLACE FUNCTION webhooks.subscribes(p_event_types text[], p_event_type text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_event_type = ANY (p_event_types)
        OR '*' = ANY (p_event_types)
        OR split_part(p_event_type, '.', 1) || '.*' = ANY (p_event_types)
$$;

-- True when some enabled endpoint of the account takes the event type. App triggers whose payload is
-- costly to build call this first: an account without endpoints then costs one index probe and no
-- payload. It checks its arguments as emit does, so a mistyped event type fails on every call, not
-- only once an endpoint subscribes.
CREATE OR REPLACE FUNCTION webhooks.subscribed(p_account_id text, p_event_type text)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT webhooks.is_event_source(p_account_id, p_event_type) THEN
        PERFORM webhooks.check_emit_args(p_account_id, p_event_type, '{}', NULL);
    END IF;
    RETURN EXISTS (SELECT FROM webhooks.endpoints e
                    WHERE e.account_id = p_account_id AND e.enabled
                      AND webhooks.subscribes(e.event_types, p_event_type));
END $$;

CREATE OR REPLACE FUNCTION webhooks.emit(
    p_account_id      text,
    p_event_type      text,
    p_payload         jsonb,
    p_idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_endpoints uuid[];
    v_event_id  bigint;
    v_limit     integer;
    v_size      integer;
BEGIN
    -- One expression for every check (NULL key: the last term is NULL, which is not true); the
    -- function that names what is wrong runs only when it fails.
    IF NOT webhooks.is_event_source(p_account_id, p_event_type)
       OR jsonb_typeof(p_payload) IS DISTINCT FROM 'object'
       OR length(p_idempotency_key) NOT BETWEEN 1 AND 255 THEN
        PERFORM webhooks.check_emit_args(p_account_id, p_event_type, p_payload, p_idempotency_key);
    END IF;

    PERFORM FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id AND e.enabled
       AND webhooks.subscribes(e.event_types, p_event_type)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    SELECT array_agg(e.id ORDER BY e.id) INTO v_endpoints
      FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id
       AND e.enabled
       AND webhooks.subscribes(e.event_types, p_event_type);
    IF v_endpoints IS NULL THEN  -- the endpoint went away since the probe (a concurrent commit)
        RETURN NULL;
    END IF;

    -- Size and depth are checked only for events that are stored: the common no-subscriber path
    -- must cost no more than the probe above.
    SELECT s.max_payload_bytes INTO v_limit FROM webhooks.settings s;
    v_size := octet_length(p_payload::text);
    IF v_size > v_limit THEN
        RAISE EXCEPTION 'payload: % bytes is over the limit of % bytes', v_size, v_limit
            USING ERRCODE = 'WH003', COLUMN = 'payload';
    END IF;
    -- Receivers parse what we send, and common JSON parsers give up at 64 levels or fewer (.NET's
    -- default; Ruby stops at 100): an item below level 32 of the payload would fail there.
    IF jsonb_path_exists(p_payload, 'strict $.**{33}') THEN
        PERFORM webhooks.invalid('payload', 'must not nest deeper than 32 levels');
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT k.event_id INTO v_event_id FROM webhooks.idempotency_keys k
         WHERE k.account_id = p_account_id AND k.key = p_idempotency_key;
        IF FOUND THEN
            RETURN v_event_id;
        END IF;
    END IF;

    INSERT INTO webhooks.events (account_id, type, payload, idempotency_key)
    VALUES (p_account_id, p_event_type, p_payload, p_idempotency_key)
    RETURNING id INTO v_event_id;

    IF p_idempotency_key IS NOT NULL THEN
        -- A concurrent transaction with the same key makes this insert wait for it to end; if it
        -- committed, nothing is inserted and the winner's event is returned (this event is
        -- deleted). ON CONFLICT rather than an EXCEPTION block: each EXCEPTION block is a
        -- subtransaction, and an app transaction emitting hundreds of events would overflow the
        -- backend's subtransaction cache, which slows every snapshot on the server.
        INSERT INTO webhooks.idempotency_keys (account_id, key, event_id)
        VALUES (p_account_id, p_idempotency_key, v_event_id)
        ON CONFLICT (account_id, key) DO NOTHING;
        IF NOT FOUND THEN
            DELETE FROM webhooks.events ev WHERE ev.id = v_event_id AND ev.created_at = now();
            SELECT k.event_id INTO v_event_id FROM webhooks.idempotency_keys k
             WHERE k.account_id = p_account_id AND k.key = p_idempotency_key;
            RETURN v_event_id;
        END IF;
    END IF;

    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
    SELECT v_event_id, now(), p_event_type, ep FROM unnest(v_endpoints) AS ep;

    -- now() is the transaction's start: a long app transaction may still see a mark that expired
    -- during it, which costs one NOTIFY, never a lost wake-up.
    IF (SELECT st.waiting_until > now() FROM webhooks.engine_state st) THEN
        PERFORM pg_notify('webhooks_wakeup', '');
    END IF;
    RETURN v_event_id;
END $$;
