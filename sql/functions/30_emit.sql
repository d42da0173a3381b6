-- webhooks.emit: what MisarMail's triggers call, inside the app's own transaction; emit_many: the
-- same for a statement's rows at once (statement-level triggers).
--
-- Cost matters more here than anywhere: most accounts have no endpoint, so the common path is one
-- expression for all the argument checks plus one probe of endpoints_enabled_account_idx, and it
-- writes nothing. Each plpgsql statement has a cost of its own on its first use in a transaction,
-- so that path is kept to three statements (see docs/decisions/0005-emit-common-path.md).
-- With subscribers (an enabled endpoint takes the event: subscribes to the type, and its filter,
-- if any, matches the payload) it writes one row into webhooks.intake, which the engine fans out
-- into the event and its deliveries (35_intake.sql; docs/decisions/0012-emit-cost-by-layer.md),
-- after checking in the app's transaction everything that could refuse the event. It sends a
-- NOTIFY only while a listening engine says it is asleep (engine_state.waiting_until is in the
-- future; docs/decisions/0007-waiting-expiry.md): NOTIFY takes a cluster-wide lock at commit
-- that serialises the app's commits, so a busy engine (which never sleeps) costs the app no
-- NOTIFY, and neither does an engine that is not there (the mark expires unless a live engine
-- refreshes it; see set_engine_waiting_v1 in 40_claim.sql).

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

-- subscribed for a statement's rows at once, for statement-level triggers (emit_many): which of
-- p_account_ids have an enabled endpoint subscribing to any of p_event_types, in one index scan.
-- A trigger keeps only those accounts' rows before it builds their payloads, so that a bulk insert
-- for accounts without endpoints (most of them) builds no payload and costs the app one pass over
-- its rows' account ids. A guard only: emit_many still matches each event to its endpoints (types,
-- filters), so an account subscribing to one of several types passes all its rows to it. Every
-- element is checked as subscribed checks its arguments (the accounts with the first event type),
-- so a mistyped type fails on every statement, not only once an endpoint subscribes; an error
-- names the element ("event_types[2]: event_type: unknown event type 'email.nope'").
CREATE OR REPLACE FUNCTION webhooks.subscribed_accounts(p_account_ids text[], p_event_types text[])
RETURNS text[] LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_at bigint;
BEGIN
    IF p_account_ids IS NULL THEN
        PERFORM webhooks.invalid('account_ids', 'must be an array of account ids, not NULL');
    END IF;
    IF coalesce(cardinality(p_event_types), 0) = 0 THEN
        PERFORM webhooks.invalid('event_types', 'must be an array of at least one event type');
    END IF;
    SELECT min(t.i) INTO v_at FROM unnest(p_event_types) WITH ORDINALITY AS t(event_type, i)
     WHERE NOT webhooks.is_event_type(t.event_type);
    IF v_at IS NOT NULL THEN
        -- With a well-formed account id, so that the type is what check_emit_args names.
        PERFORM webhooks.check_emit_args_at(format('event_types[%s]: ', v_at), 'account',
                                            p_event_types[v_at], '{}', NULL);
    END IF;
    SELECT min(a.i) INTO v_at FROM unnest(p_account_ids) WITH ORDINALITY AS a(account_id, i)
     WHERE NOT webhooks.is_event_source(a.account_id, p_event_types[1]);
    IF v_at IS NOT NULL THEN
        PERFORM webhooks.check_emit_args_at(format('account_ids[%s]: ', v_at), p_account_ids[v_at],
                                            p_event_types[1], '{}', NULL);
    END IF;
    RETURN ARRAY(
        SELECT DISTINCT e.account_id FROM webhooks.endpoints e
         WHERE e.enabled AND e.account_id = ANY (p_account_ids)
           AND EXISTS (SELECT FROM unnest(p_event_types) AS t(event_type)
                        WHERE webhooks.subscribes(e.event_types, t.event_type)));
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
    -- wake-up. The endpoints that get the event are matched at fan-out (35_intake.sql).
    INSERT INTO webhooks.intake (account_id, type, payload)
    VALUES (p_account_id, p_event_type, p_payload)
    RETURNING id,
        (SELECT webhooks.storable(payload, s.max_payload_bytes)
                OR webhooks.reject_stored_payload(payload, s.max_payload_bytes, '')
           FROM webhooks.settings s),
        (SELECT CASE WHEN st.waiting_until > now() THEN pg_notify('webhooks_wakeup', '') END IS NULL
           FROM webhooks.engine_state st)
    INTO v_event_id, v_checked, v_woken;
    RETURN v_event_id;
END $$;

-- emit with an idempotency key, after emit's checks and probe. A repeated key for the same account
-- returns the first event and writes nothing. The key is taken here, in the app's transaction,
-- with the event id it maps to; the event goes through the intake as emit's do, so that keyed
-- and other events keep their order into the deliveries.
CREATE OR REPLACE FUNCTION webhooks.emit_keyed(
    p_account_id text, p_event_type text, p_payload jsonb, p_idempotency_key text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
    v_woken    boolean;
BEGIN
    -- Checked before the key is looked up: a repeat is refused as its first call would be, since
    -- a payload this event could not have been stored with is an error in the app's transaction,
    -- not the earlier event's id.
    PERFORM webhooks.storable(p_payload, s.max_payload_bytes)
            OR webhooks.reject_stored_payload(p_payload, s.max_payload_bytes, '')
       FROM webhooks.settings s;

    -- A concurrent transaction with the same key makes this insert wait for it to end; if it
    -- committed, nothing is inserted and the winner's event is returned, as for any repeat.
    -- ON CONFLICT rather than an EXCEPTION block: each EXCEPTION block is a subtransaction, and an
    -- app transaction emitting hundreds of events would overflow the backend's subtransaction
    -- cache, which slows every snapshot on the server.
    INSERT INTO webhooks.idempotency_keys (account_id, key, event_id)
    VALUES (p_account_id, p_idempotency_key, nextval('webhooks.events_id_seq'))
    ON CONFLICT (account_id, key) DO NOTHING
    RETURNING event_id INTO v_event_id;
    IF NOT FOUND THEN
        SELECT k.event_id INTO v_event_id FROM webhooks.idempotency_keys k
         WHERE k.account_id = p_account_id AND k.key = p_idempotency_key;
        RETURN v_event_id;
    END IF;

    INSERT INTO webhooks.intake (id, account_id, type, payload, idempotency_key)
    VALUES (v_event_id, p_account_id, p_event_type, p_payload, p_idempotency_key)
    RETURNING (SELECT CASE WHEN st.waiting_until > now() THEN pg_notify('webhooks_wakeup', '') END IS NULL
                 FROM webhooks.engine_state st)
    INTO v_woken;
    RETURN v_event_id;
END $$;

-- Where emit_many's event at a position went wrong, for its errors: "events[3]" and the event's
-- idempotency key when it has one.
CREATE OR REPLACE FUNCTION webhooks.event_position(p_position bigint, p_idempotency_key text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT format('events[%s]', p_position)
        || CASE WHEN p_idempotency_key IS NOT NULL
                THEN format(' (idempotency_key %s)', quote_literal(left(p_idempotency_key, 100))) ELSE '' END
        || ': '
$$;

-- check_emit_args for one element of an array argument: the same error, its message prefixed with
-- p_where (which element: "events[3]: "), so that a statement-level trigger's failure names the row.
-- The EXCEPTION block (a subtransaction) is entered only on this path, which fails the statement
-- anyway.
CREATE OR REPLACE FUNCTION webhooks.check_emit_args_at(
    p_where text, p_account_id text, p_event_type text, p_payload jsonb, p_idempotency_key text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_state   text;
    v_message text;
    v_column  text;
    v_hint    text;
BEGIN
    PERFORM webhooks.check_emit_args(p_account_id, p_event_type, p_payload, p_idempotency_key);
EXCEPTION WHEN SQLSTATE 'WH001' OR SQLSTATE 'WH002' THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_column = COLUMN_NAME, v_hint = PG_EXCEPTION_HINT;
    RAISE EXCEPTION USING
        MESSAGE = p_where || v_message,
        ERRCODE = v_state, COLUMN = v_column, HINT = coalesce(v_hint, '');
END $$;

-- check_emit_args for emit_many's event at p_position, named by its position and key.
CREATE OR REPLACE FUNCTION webhooks.check_event_at(p_position bigint, p_event webhooks.new_event)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.check_emit_args_at(
        webhooks.event_position(p_position, p_event.idempotency_key), p_event.account_id,
        p_event.event_type, p_event.payload, p_event.idempotency_key);
END $$;

-- The payload of emit_many's event at p_position, if it may be stored; otherwise the error that
-- names the event (reject_stored_payload). Inlined by the planner; the CASE evaluates the error's
-- text only for a payload that fails, and the function is volatile so that the planner evaluates
-- it after sorting the events: the first event that fails, in the events' order, is the one named.
CREATE OR REPLACE FUNCTION webhooks.stored_payload(
    p_payload jsonb, p_position bigint, p_idempotency_key text, p_limit integer)
RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN webhooks.storable(p_payload, p_limit) THEN p_payload
                WHEN webhooks.reject_stored_payload(
                         p_payload, p_limit, webhooks.event_position(p_position, p_idempotency_key))
                THEN NULL END
$$;

-- emit for a set of events at once, for statement-level triggers with a transition table
-- (REFERENCING NEW TABLE AS ...): one call per statement instead of one per row. The same rules
-- as emit, event by event: each event's arguments are checked (an error names the event's
-- subscript in the array, which is its position in one built by ARRAY(...), its key if it has one,
-- and the field), it is stored only if an enabled endpoint of its account takes it, size and depth
-- are checked for stored events, and a repeated idempotency key (from before, or earlier in the
-- array) stores nothing. Returns how many events it stored. The array must have one dimension.
--
-- The endpoints of all the accounts in the array are read in one index scan, and every statement
-- below works on the whole set, so the cost per event is a share of a few statements instead of
-- emit's statements per event. Stored events go into the intake, as emit's do. An array of
-- webhooks.new_event rather than a query: a function cannot see its caller's transition table,
-- and rows keep their order and their types (jsonb would serialise every payload once more inside
-- the array and lose both).
--
-- The statements read the events by subscript (p_events[i] over generate_subscripts), not with
-- unnest in FROM: a function scan stores every row it returns, whole payloads included, before
-- the statement reads them, and a sort copies them again; by subscript, only the subscripts are
-- stored and sorted, and each payload is read in place in the array.
CREATE OR REPLACE FUNCTION webhooks.emit_many(p_events webhooks.new_event[])
RETURNS integer LANGUAGE plpgsql
-- One generic plan per statement, cached, never one made for each call with the array as a
-- constant: such a plan copies the whole array (a thousand payloads) into every statement it
-- plans, which cost more than the checks themselves. Without an estimate of the array's size, the
-- write still hashes the accounts' endpoints and reads each event once, and joins nothing else
-- (tests/integration/test_query_plans.py holds the plans as the function runs them).
-- docs/decisions/0012-emit-cost-by-layer.md has the figures.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_args     record;
    v_stored   integer;
BEGIN
    IF p_events IS NULL THEN
        PERFORM webhooks.invalid('events', 'must be an array of webhooks.new_event, not NULL');
    ELSIF array_ndims(p_events) > 1 THEN
        PERFORM webhooks.invalid('events', format(
            'must be a one-dimensional array, got %s dimensions', array_ndims(p_events)));
    END IF;

    -- Every event's arguments, as emit checks them (one expression for all; the first event that
    -- fails is named), whether any event has a key, and the accounts, in one pass; and the size
    -- limit, as a value: an argument that is a subquery would keep stored_payload from being
    -- inlined.
    SELECT min(u.i) FILTER (WHERE NOT u.ok) AS bad_at,
           coalesce(bool_or(u.idempotency_key IS NOT NULL), false) AS keyed,
           array_agg(DISTINCT u.account_id) AS accounts,
           (SELECT s.max_payload_bytes FROM webhooks.settings s) AS max_bytes
      INTO v_args
      FROM (SELECT g.i, (p_events[g.i]).account_id, (p_events[g.i]).idempotency_key,
                   webhooks.is_event_source((p_events[g.i]).account_id, (p_events[g.i]).event_type)
                   AND jsonb_typeof((p_events[g.i]).payload) IS NOT DISTINCT FROM 'object'
                   AND coalesce(length((p_events[g.i]).idempotency_key) BETWEEN 1 AND 255, true)
                       AS ok
              FROM generate_subscripts(p_events, 1) AS g(i)) u;
    IF v_args.bad_at IS NOT NULL THEN
        PERFORM webhooks.check_event_at(v_args.bad_at, p_events[v_args.bad_at]);
    END IF;

    -- The events some endpoint takes (the accounts' enabled endpoints in one index scan, matched
    -- in memory) are written in one statement. Size and depth are checked only for stored
    -- events, as emit checks them: the first event (in the events' order) that fails raises, which
    -- rolls the write back with the app's statement. Accounts without endpoints write nothing.
    IF NOT v_args.keyed THEN
        -- Without keys (a statement-level trigger's usual array), the events go straight into
        -- the intake, their ids drawn in the events' order.
        WITH eps AS MATERIALIZED (
            SELECT e.account_id, e.event_types, e.filter FROM webhooks.endpoints e
             WHERE e.enabled AND e.account_id = ANY (v_args.accounts))
        INSERT INTO webhooks.intake (id, account_id, type, payload)
        SELECT nextval('webhooks.events_id_seq'), (p_events[g.i]).account_id,
               (p_events[g.i]).event_type,
               webhooks.stored_payload((p_events[g.i]).payload, g.i, NULL, v_args.max_bytes)
          FROM generate_subscripts(p_events, 1) AS g(i)
         WHERE EXISTS (SELECT FROM eps WHERE eps.account_id = (p_events[g.i]).account_id
                         AND webhooks.takes(eps.event_types, eps.filter, (p_events[g.i]).event_type,
                                            (p_events[g.i]).payload))
         ORDER BY g.i;
        GET DIAGNOSTICS v_stored = ROW_COUNT;
    ELSE
        -- With keys, ids are drawn first, in the events' order, so that keys and intake rows can
        -- refer to them. Keys go in before the events: ON CONFLICT skips an event whose key was
        -- used before or earlier in this array, and makes an insert of a key that a concurrent
        -- transaction holds wait for it (if that one commits, this event is skipped), all without
        -- a subtransaction (see emit_keyed). Size and depth are checked before the keys, so for
        -- repeats too, as emit_keyed checks them.
        WITH eps AS MATERIALIZED (
            SELECT e.account_id, e.event_types, e.filter FROM webhooks.endpoints e
             WHERE e.enabled
               AND e.account_id = ANY (v_args.accounts)),
        taken AS MATERIALIZED (
            SELECT t.*, nextval('webhooks.events_id_seq') AS id FROM (
                SELECT g.i, (p_events[g.i]).account_id, (p_events[g.i]).event_type,
                       (p_events[g.i]).idempotency_key,
                       webhooks.stored_payload((p_events[g.i]).payload, g.i,
                                               (p_events[g.i]).idempotency_key, v_args.max_bytes)
                           AS payload
                  FROM generate_subscripts(p_events, 1) AS g(i)
                 WHERE EXISTS (SELECT FROM eps WHERE eps.account_id = (p_events[g.i]).account_id
                                 AND webhooks.takes(eps.event_types, eps.filter,
                                                    (p_events[g.i]).event_type,
                                                    (p_events[g.i]).payload))
                 ORDER BY g.i) t),
        keys AS (
            INSERT INTO webhooks.idempotency_keys (account_id, key, event_id)
            SELECT t.account_id, t.idempotency_key, t.id FROM taken t
             WHERE t.idempotency_key IS NOT NULL ORDER BY t.i
            ON CONFLICT (account_id, key) DO NOTHING
            RETURNING event_id),
        kept AS (
            SELECT t.* FROM taken t
             WHERE t.idempotency_key IS NULL OR t.id IN (SELECT k.event_id FROM keys k)),
        ev AS (
            INSERT INTO webhooks.intake (id, account_id, type, payload, idempotency_key)
            SELECT k.id, k.account_id, k.event_type, k.payload, k.idempotency_key FROM kept k
             ORDER BY k.i)
        SELECT count(*) INTO v_stored FROM kept;
    END IF;

    -- As emit: a NOTIFY only while a listening engine says it is asleep.
    IF v_stored > 0 AND (SELECT st.waiting_until > now() FROM webhooks.engine_state st) THEN
        PERFORM pg_notify('webhooks_wakeup', '');
    END IF;
    RETURN v_stored;
END $$;
