-- webhooks.emit: what MisarMail's triggers call, inside the app's own transaction.
--
-- Cost matters more here than anywhere: most accounts have no endpoint, so the common path is one
-- expression for all the argument checks plus one probe of endpoints_enabled_account_idx, and it
-- writes nothing. Each plpgsql statement has a cost of its own on its first use in a transaction,
-- so that path is kept to three statements (see docs/decisions/0005-emit-common-path.md).
-- With subscribers it writes the event and one delivery per endpoint whose filter takes the payload
-- in one statement, and sends a NOTIFY only while
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

-- Whether an endpoint takes an event: it subscribes to the type and its filter (NULL: none) matches
-- the payload. The filter is evaluated only for a subscribing endpoint (CASE fixes the order, which
-- the planner would otherwise choose by cost), and with `@@`, which reports a filter that errors on
-- this payload as NULL instead of raising: such a filter does not match, and the app's transaction
-- never fails for it. Inlined by the planner, like subscribes.
CREATE OR REPLACE FUNCTION webhooks.takes(
    p_event_types text[], p_filter jsonpath, p_event_type text, p_payload jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN webhooks.subscribes(p_event_types, p_event_type)
                THEN p_filter IS NULL OR coalesce(p_payload @@ p_filter, false)
                ELSE false END
$$;

-- Names what is wrong with a payload about to be stored (too deep or too large), for emit and
-- emit_many (p_where: which of emit_many's events, '' for emit). They call it only when the one
-- expression that checks both has failed, so it costs nothing on their common path.
CREATE OR REPLACE FUNCTION webhooks.reject_stored_payload(p_payload jsonb, p_limit integer, p_where text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_size integer := octet_length(p_payload::text);
BEGIN
    IF webhooks.too_deep(p_payload) THEN
        RAISE EXCEPTION '%payload: must not nest deeper than 32 levels', p_where
            USING ERRCODE = 'WH001', COLUMN = 'payload';
    END IF;
    RAISE EXCEPTION '%payload: % bytes is over the limit of % bytes', p_where, v_size, p_limit
        USING ERRCODE = 'WH003', COLUMN = 'payload';
END $$;

-- Whether a payload nests deeper than 32 levels (has an item at level 33). Receivers parse what we
-- send, and common JSON parsers give up at 64 levels or fewer (.NET's default; Ruby stops at 100):
-- an item below level 32 of the payload would fail there.
CREATE OR REPLACE FUNCTION webhooks.too_deep(p_payload jsonb)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_path_exists(p_payload, 'strict $.**{33}')
$$;

-- Whether a payload may be stored: not too deep, and at most p_limit bytes as JSON text.
CREATE OR REPLACE FUNCTION webhooks.storable(p_payload jsonb, p_limit integer)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT webhooks.too_deep(p_payload) AND octet_length(p_payload::text) <= p_limit
$$;

-- Each plpgsql statement and each expression costs something of its own on its first use in a
-- transaction, and an app transaction usually emits one event, so the path with subscribers is kept
-- to few of them: the checks of the stored payload, the limit they read and the NOTIFY ride on the
-- event's insert, in its RETURNING (docs/decisions/0010-emit-near-a-lean-outbox.md). The payload is
-- checked just after the row is written: the error rolls the insert back with the app's statement,
-- so the event is still rejected in the app's own transaction.
CREATE OR REPLACE FUNCTION webhooks.emit(
    p_account_id      text,
    p_event_type      text,
    p_payload         jsonb,
    p_idempotency_key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
    v_checked  boolean;
    v_woken    boolean;
BEGIN
    -- One expression for every check (NULL key: the last term is NULL, which is not true); the
    -- function that names what is wrong runs only when it fails.
    IF NOT webhooks.is_event_source(p_account_id, p_event_type)
       OR jsonb_typeof(p_payload) IS DISTINCT FROM 'object'
       OR length(p_idempotency_key) NOT BETWEEN 1 AND 255 THEN
        PERFORM webhooks.check_emit_args(p_account_id, p_event_type, p_payload, p_idempotency_key);
    END IF;

    -- Whether any endpoint takes the event. For an account without endpoints (the common path) this
    -- reads the index and nothing else: a filter is evaluated only for an endpoint that subscribes
    -- to the type.
    PERFORM FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id AND e.enabled
       AND webhooks.takes(e.event_types, e.filter, p_event_type, p_payload)
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        RETURN webhooks.emit_keyed(p_account_id, p_event_type, p_payload, p_idempotency_key);
    END IF;

    -- Size and depth are checked only for events that are stored: the common no-subscriber path
    -- must cost no more than the probe above. The NOTIFY goes only while a listening engine says it
    -- is asleep (its mark is in the future); now() is the transaction's start, so a long app
    -- transaction may still see a mark that expired during it, which costs one NOTIFY, never a lost
    -- wake-up.
    INSERT INTO webhooks.events (account_id, type, payload)
    VALUES (p_account_id, p_event_type, p_payload)
    RETURNING id,
        (SELECT webhooks.storable(payload, s.max_payload_bytes)
                OR webhooks.reject_stored_payload(payload, s.max_payload_bytes, '')
           FROM webhooks.settings s),
        (SELECT CASE WHEN st.waiting_until > now() THEN pg_notify('webhooks_wakeup', '') END IS NULL
           FROM webhooks.engine_state st)
    INTO v_event_id, v_checked, v_woken;

    -- An endpoint disabled since the probe by a concurrent commit gets no delivery; if it was the
    -- only one, the event stays without deliveries, as one whose endpoint was disabled just after.
    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
    SELECT v_event_id, now(), p_event_type, e.id FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id AND e.enabled
       AND webhooks.takes(e.event_types, e.filter, p_event_type, p_payload);
    RETURN v_event_id;
END $$;

-- emit with an idempotency key, after emit's checks and probe. A repeated key for the same account
-- returns the first event and writes nothing.
CREATE OR REPLACE FUNCTION webhooks.emit_keyed(
    p_account_id text, p_event_type text, p_payload jsonb, p_idempotency_key text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
    v_checked  boolean;
    v_woken    boolean;
BEGIN
    SELECT k.event_id INTO v_event_id FROM webhooks.idempotency_keys k
     WHERE k.account_id = p_account_id AND k.key = p_idempotency_key;
    IF FOUND THEN
        RETURN v_event_id;
    END IF;

    INSERT INTO webhooks.events (account_id, type, payload, idempotency_key)
    VALUES (p_account_id, p_event_type, p_payload, p_idempotency_key)
    RETURNING id,
        (SELECT webhooks.storable(payload, s.max_payload_bytes)
                OR webhooks.reject_stored_payload(payload, s.max_payload_bytes, '')
           FROM webhooks.settings s),
        (SELECT CASE WHEN st.waiting_until > now() THEN pg_notify('webhooks_wakeup', '') END IS NULL
           FROM webhooks.engine_state st)
    INTO v_event_id, v_checked, v_woken;

    -- A concurrent transaction with the same key makes this insert wait for it to end; if it
    -- committed, nothing is inserted and the winner's event is returned (this event is deleted).
    -- ON CONFLICT rather than an EXCEPTION block: each EXCEPTION block is a subtransaction, and an
    -- app transaction emitting hundreds of events would overflow the backend's subtransaction
    -- cache, which slows every snapshot on the server.
    INSERT INTO webhooks.idempotency_keys (account_id, key, event_id)
    VALUES (p_account_id, p_idempotency_key, v_event_id)
    ON CONFLICT (account_id, key) DO NOTHING;
    IF NOT FOUND THEN
        DELETE FROM webhooks.events ev WHERE ev.id = v_event_id AND ev.created_at = now();
        SELECT k.event_id INTO v_event_id FROM webhooks.idempotency_keys k
         WHERE k.account_id = p_account_id AND k.key = p_idempotency_key;
        RETURN v_event_id;
    END IF;

    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
    SELECT v_event_id, now(), p_event_type, e.id FROM webhooks.endpoints e
     WHERE e.account_id = p_account_id AND e.enabled
       AND webhooks.takes(e.event_types, e.filter, p_event_type, p_payload);
    RETURN v_event_id;
END $$;
