-- Erasure: webhooks.erase_recipient(account, email) removes one recipient's address from what one
-- account's stored data holds (README "Erasure and retention").
--
-- Where the address can be: events' payloads, accepted ones still in the intake included (and
-- their idempotency keys, which apps sometimes build from the recipient), the idempotency_keys
-- table, attempts' response excerpts and error messages (a receiver may echo the body back), and
-- the last_error of live and ended deliveries.
-- A delivery has no body of its own: claim_v1 builds it from the event row at every claim, so a
-- pending delivery of a redacted event sends the redacted payload, freshly signed. A delivery
-- already claimed by an engine when the erasure commits goes out with the body it was claimed
-- with (it is in the engine's memory, at most one lease old): taking its lease back would send it
-- twice.
--
-- The address is replaced where it occurs whole, in any letter case, with '@' or percent-encoded
-- ('%40', as in a tracked link's query string); inside a longer address (malice@example.com,
-- alice@example.community) it is another address and stays. The marker is an address that
-- cannot exist (RFC 2606 reserves .invalid), so a payload still validates where the schema says
-- "an email address", and a receiver that mails it reaches nobody.
--
-- An account's events are found through its endpoints' deliveries, live and ended: each stored
-- event has at least one, and every table on that path has an index by endpoint, whereas an index
-- on events by account would cost every emit. Events kept past the global retention (for a live
-- delivery of another event in the same day partition) may have lost their delivery rows to
-- retention, so those few partitions are also read whole.

CREATE OR REPLACE FUNCTION webhooks.erasure_marker_v1(p_percent_encoded boolean)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_percent_encoded THEN 'redacted%40redacted.invalid'
                ELSE 'redacted@redacted.invalid' END
$$;

-- The two regular expressions (the address with '@', and with '%40') that find p_email whole.
-- Refuses what is not one plain address: an error message never repeats the value, since Postgres
-- writes errors to its log.
CREATE OR REPLACE FUNCTION webhooks.erasure_patterns_v1(p_email text)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_local  text;
    v_domain text;
    -- Not preceded by a character that would make it the tail of a longer local part (but a
    -- JSON escape such as \n before it, as payloads are matched in their JSON text, is a
    -- boundary); not followed by one that would make it the head of a longer domain (a
    -- sentence's final dot is not part of the domain).
    v_before CONSTANT text := '(?:(?<![[:alnum:]._+-])|(?<=\\[nrtbf]))';
    v_after  CONSTANT text := '(?![[:alnum:]_-]|\.[[:alnum:]])';
BEGIN
    IF p_email IS NULL OR p_email = '' THEN
        PERFORM webhooks.invalid('email', 'must not be empty');
    ELSIF length(p_email) > 254 THEN
        PERFORM webhooks.invalid('email', 'must be at most 254 characters');
    ELSIF p_email !~ '^[^@[:space:][:cntrl:]"\\<>(),;:\[\]]+@[^@[:space:][:cntrl:]"\\<>(),;:\[\]]+$' THEN
        PERFORM webhooks.invalid('email',
            'must be one address, local@domain, without spaces, quotes, brackets or a second @');
    END IF;
    -- Every character but letters and digits escaped: in a regular expression a backslash before
    -- any other character stands for that character.
    v_local := regexp_replace(split_part(p_email, '@', 1), '([^[:alnum:]])', '\\\1', 'g');
    v_domain := regexp_replace(split_part(p_email, '@', 2), '([^[:alnum:]])', '\\\1', 'g');
    RETURN ARRAY[v_before || v_local || '@' || v_domain || v_after,
                 v_before || v_local || '%40' || v_domain || v_after];
END $$;

-- Whether p_text holds the address (patterns from erasure_patterns_v1); NULL for NULL text.
CREATE OR REPLACE FUNCTION webhooks.mentions_v1(p_text text, p_patterns text[])
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_text ~* p_patterns[1] OR p_text ~* p_patterns[2]
$$;

-- p_text with every occurrence of the address replaced by the marker of the same form.
CREATE OR REPLACE FUNCTION webhooks.redact_v1(p_text text, p_patterns text[])
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(
               regexp_replace(p_text, p_patterns[1], webhooks.erasure_marker_v1(false), 'gi'),
               p_patterns[2], webhooks.erasure_marker_v1(true), 'gi')
$$;

-- Serialises erasure and per-account retention for one account (both change its events).
CREATE OR REPLACE FUNCTION webhooks.account_lock_key_v1(p_account_id text)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('webhooks.account:' || p_account_id, 0)
$$;

-- Redacts p_email from p_account_id's stored data (see the top of this file), records the erasure
-- (counts, never the address) in webhooks.erasures and returns that row. Other accounts' rows are
-- not read for matches, let alone changed. Idempotency keys that hold the address are deleted
-- rather than rewritten (two keys that differ only in the address would collide): an emit
-- repeating such a key afterwards stores a new event.
-- Returns a table spelt out rather than the erasures row type, so that this file can be applied
-- to a schema without that table (tests rebuild earlier releases from today's function files).
CREATE OR REPLACE FUNCTION webhooks.erase_recipient_v1(p_account_id text, p_email text)
RETURNS TABLE (
    id               bigint,
    account_id       text,
    erased_at        timestamptz,
    events           bigint,
    deliveries       bigint,
    attempts         bigint,
    outcomes         bigint,
    idempotency_keys bigint)
LANGUAGE plpgsql
SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    v_re         text[];
    v_endpoints  uuid[];
    v_cutoff     timestamptz;
    v_changed    bigint[];
    v_events     bigint;
    v_deliveries bigint;
    v_attempts   bigint;
    v_outcomes   bigint;
    v_keys       bigint;
BEGIN
    PERFORM webhooks.check_account_id(p_account_id);
    v_re := webhooks.erasure_patterns_v1(p_email);
    PERFORM pg_advisory_xact_lock(webhooks.account_lock_key_v1(p_account_id));

    SELECT coalesce(array_agg(e.id), '{}') INTO v_endpoints
      FROM webhooks.endpoints e WHERE e.account_id = p_account_id;
    SELECT now() - s.retention INTO v_cutoff FROM webhooks.settings s;

    -- Accepted events not fanned out yet (35_intake.sql). First: a row that a fan-out is taking
    -- makes this wait for it, then is gone, and the statements below see it as an event.
    WITH changed AS (
        UPDATE webhooks.intake i
           SET payload = webhooks.redact_v1(i.payload::text, v_re)::jsonb,
               idempotency_key = webhooks.redact_v1(i.idempotency_key, v_re)
         WHERE i.account_id = p_account_id
           AND (webhooks.mentions_v1(i.payload::text, v_re)
                OR webhooks.mentions_v1(i.idempotency_key, v_re))
        RETURNING i.id
    )
    SELECT coalesce(array_agg(c.id), '{}') INTO v_changed FROM changed c;

    WITH ids AS (
        SELECT d.event_id, d.event_created_at FROM webhooks.deliveries d
         WHERE d.endpoint_id = ANY (v_endpoints) AND d.attempts >= 0
        UNION
        SELECT o.event_id, o.event_created_at FROM webhooks.delivery_outcomes o
         WHERE o.endpoint_id = ANY (v_endpoints)
    ), changed AS (
        UPDATE webhooks.events ev
           SET payload = webhooks.redact_v1(ev.payload::text, v_re)::jsonb,
               idempotency_key = webhooks.redact_v1(ev.idempotency_key, v_re)
          FROM ids
         WHERE ev.id = ids.event_id AND ev.created_at = ids.event_created_at
           AND ev.account_id = p_account_id
           AND (webhooks.mentions_v1(ev.payload::text, v_re)
                OR webhooks.mentions_v1(ev.idempotency_key, v_re))
        RETURNING ev.id
    )
    SELECT v_changed || coalesce(array_agg(c.id), '{}') INTO v_changed FROM changed c;

    -- Events past the global retention, kept for another event's live delivery: read whole (see
    -- the top of this file). Those changed above no longer mention the address.
    WITH changed AS (
        UPDATE webhooks.events ev
           SET payload = webhooks.redact_v1(ev.payload::text, v_re)::jsonb,
               idempotency_key = webhooks.redact_v1(ev.idempotency_key, v_re)
         WHERE ev.created_at < v_cutoff AND ev.account_id = p_account_id
           AND (webhooks.mentions_v1(ev.payload::text, v_re)
                OR webhooks.mentions_v1(ev.idempotency_key, v_re))
        RETURNING ev.id
    )
    SELECT v_changed || coalesce(array_agg(c.id), '{}') INTO v_changed FROM changed c;
    v_events := cardinality(v_changed);

    -- Live deliveries: those of a changed event send the redacted payload at their next claim;
    -- an error text that holds the address is rewritten (rare: a row lock only where it does).
    WITH errors AS (
        UPDATE webhooks.deliveries d SET last_error = webhooks.redact_v1(d.last_error, v_re)
         WHERE d.endpoint_id = ANY (v_endpoints) AND d.attempts >= 0
           AND webhooks.mentions_v1(d.last_error, v_re)
        RETURNING d.id
    )
    SELECT count(*) INTO v_deliveries FROM (
        SELECT e.id FROM errors e
        UNION
        SELECT d.id FROM webhooks.deliveries d
         WHERE d.endpoint_id = ANY (v_endpoints) AND d.attempts >= 0
           AND d.event_id = ANY (v_changed)) live;

    WITH changed AS (
        UPDATE webhooks.attempts a
           SET response_excerpt = webhooks.redact_v1(a.response_excerpt, v_re),
               error_message = webhooks.redact_v1(a.error_message, v_re)
         WHERE a.endpoint_id = ANY (v_endpoints)
           AND (webhooks.mentions_v1(a.response_excerpt, v_re)
                OR webhooks.mentions_v1(a.error_message, v_re))
        RETURNING 1
    )
    SELECT count(*) INTO v_attempts FROM changed;

    WITH changed AS (
        UPDATE webhooks.delivery_outcomes o SET last_error = webhooks.redact_v1(o.last_error, v_re)
         WHERE o.endpoint_id = ANY (v_endpoints) AND webhooks.mentions_v1(o.last_error, v_re)
        RETURNING 1
    )
    SELECT count(*) INTO v_outcomes FROM changed;

    WITH gone AS (
        DELETE FROM webhooks.idempotency_keys k
         WHERE k.account_id = p_account_id AND webhooks.mentions_v1(k.key, v_re)
        RETURNING 1
    )
    SELECT count(*) INTO v_keys FROM gone;

    INSERT INTO webhooks.erasures AS x
           (account_id, events, deliveries, attempts, outcomes, idempotency_keys)
    VALUES (p_account_id, v_events, v_deliveries, v_attempts, v_outcomes, v_keys)
    RETURNING x.id, x.erased_at INTO id, erased_at;
    account_id := p_account_id;
    events := v_events;
    deliveries := v_deliveries;
    attempts := v_attempts;
    outcomes := v_outcomes;
    idempotency_keys := v_keys;
    RETURN NEXT;
END $$;

-- The public call: the number of events changed. erase_recipient_v1 does the work.
CREATE OR REPLACE FUNCTION webhooks.erase_recipient(p_account_id text, p_email text)
RETURNS bigint LANGUAGE sql AS $$
    SELECT e.events FROM webhooks.erase_recipient_v1(p_account_id, p_email) e
$$;
