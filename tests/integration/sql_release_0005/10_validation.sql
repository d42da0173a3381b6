-- Input checks shared by the public functions. Each raises SQLSTATE WH001 (invalid field) with the
-- field in COLUMN and a message that names the field and the reason, so callers map errors by code.

CREATE OR REPLACE FUNCTION webhooks.invalid(p_field text, p_reason text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: %', p_field, p_reason USING ERRCODE = 'WH001', COLUMN = p_field;
END $$;

CREATE OR REPLACE FUNCTION webhooks.check_account_id(p_account_id text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_account_id IS NULL OR btrim(p_account_id) = '' THEN
        PERFORM webhooks.invalid('account_id', 'must not be empty');
    ELSIF length(p_account_id) > 200 THEN
        PERFORM webhooks.invalid('account_id', 'must be at most 200 characters');
    END IF;
END $$;

CREATE OR REPLACE FUNCTION webhooks.check_url(p_url text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_scheme text;
    v_port   int;
    v_parts  text[];
BEGIN
    IF p_url IS NULL OR p_url = '' THEN
        PERFORM webhooks.invalid('url', 'must not be empty');
    END IF;
    IF length(p_url) > 2048 THEN
        PERFORM webhooks.invalid('url', 'must be at most 2048 characters');
    END IF;
    -- scheme :// [userinfo@] host [:port] [path/query]; no whitespace or control characters anywhere.
    v_parts := regexp_match(p_url,
        '^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^/?#@\s]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::([0-9]{1,5}))?([/?#][^\s]*)?$');
    IF v_parts IS NULL OR p_url ~ '[[:cntrl:]]' THEN
        PERFORM webhooks.invalid('url', format('%s is not a valid absolute http(s) URL', quote_literal(left(p_url, 200))));
    END IF;
    v_scheme := lower(v_parts[1]);
    IF v_scheme NOT IN ('http', 'https') THEN
        PERFORM webhooks.invalid('url', format('scheme %s is not supported; use https', quote_literal(v_scheme)));
    END IF;
    IF v_scheme = 'http' AND NOT (SELECT allow_http FROM webhooks.settings) THEN
        PERFORM webhooks.invalid('url', 'must use https (http is refused unless webhooks.settings.allow_http is true)');
    END IF;
    IF v_parts[3] IS NOT NULL THEN
        v_port := v_parts[3]::int;
        IF v_port < 1 OR v_port > 65535 THEN
            PERFORM webhooks.invalid('url', format('port %s is out of range 1-65535', v_port));
        END IF;
    END IF;
    RETURN p_url;
END $$;

CREATE OR REPLACE FUNCTION webhooks.check_event_types(p_event_types text[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
BEGIN
    IF p_event_types IS NULL OR cardinality(p_event_types) = 0 THEN
        PERFORM webhooks.invalid('event_types', 'must list at least one event type (or "*")');
    END IF;
    FOREACH v_type IN ARRAY p_event_types LOOP
        IF v_type IS NULL THEN
            PERFORM webhooks.invalid('event_types', 'must not contain null');
        ELSIF v_type = '*' THEN
            CONTINUE;
        ELSIF v_type LIKE '%.*' THEN
            -- Compare the prefix as text: LIKE would take '%' or '_' in the input as patterns.
            IF NOT EXISTS (SELECT 1 FROM webhooks.event_types
                           WHERE split_part(name, '.', 1) || '.*' = v_type) THEN
                PERFORM webhooks.invalid('event_types',
                    format('wildcard %s matches no known event type', quote_literal(left(v_type, 100))));
            END IF;
        ELSIF NOT EXISTS (SELECT 1 FROM webhooks.event_types WHERE name = v_type) THEN
            RAISE EXCEPTION 'event_types: unknown event type %', quote_literal(left(v_type, 100))
                USING ERRCODE = 'WH002', COLUMN = 'event_types',
                      HINT = 'see SELECT name FROM webhooks.event_types';
        END IF;
    END LOOP;
    RETURN ARRAY(SELECT DISTINCT unnest(p_event_types) ORDER BY 1);
END $$;

-- Secrets are 'whsec_' + base64 of 24..64 random bytes; the HMAC key is the decoded bytes.
CREATE OR REPLACE FUNCTION webhooks.check_secret(p_secret text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_key bytea;
BEGIN
    IF p_secret IS NULL OR p_secret !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' THEN
        PERFORM webhooks.invalid('secret', 'must be "whsec_" followed by base64');
    END IF;
    BEGIN
        v_key := decode(substr(p_secret, 7), 'base64');
    EXCEPTION WHEN others THEN
        PERFORM webhooks.invalid('secret', 'is not valid base64 after "whsec_"');
    END;
    IF length(v_key) NOT BETWEEN 24 AND 64 THEN
        PERFORM webhooks.invalid('secret', format('key must be 24 to 64 bytes, got %s', length(v_key)));
    END IF;
    RETURN p_secret;
END $$;

-- gen_random_uuid() draws from pg_strong_random; two of them give 244 random bits without pgcrypto,
-- which the embedded Postgres does not ship.
CREATE OR REPLACE FUNCTION webhooks.new_secret()
RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT 'whsec_' || encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'base64')
$$;

CREATE OR REPLACE FUNCTION webhooks.check_endpoint_options(
    p_max_in_flight integer, p_ordering text, p_rate_limit_per_s double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_max_in_flight IS NOT NULL AND p_max_in_flight NOT BETWEEN 1 AND 256 THEN
        PERFORM webhooks.invalid('max_in_flight', 'must be between 1 and 256');
    END IF;
    IF p_ordering IS NOT NULL AND p_ordering NOT IN ('dispatch', 'strict') THEN
        PERFORM webhooks.invalid('ordering', 'must be "dispatch" or "strict"');
    END IF;
    IF p_rate_limit_per_s IS NOT NULL AND (p_rate_limit_per_s < 0 OR p_rate_limit_per_s = 'NaN'
                                           OR p_rate_limit_per_s = 'Infinity') THEN
        PERFORM webhooks.invalid('rate_limit_per_s', 'must be a positive number (0 means unlimited)');
    END IF;
END $$;

-- The event catalogue as a constant, in a SQL function the planner inlines: emit's common path then
-- pays no query of webhooks.event_types, which was a large part of its cost. False for NULL.
-- tests/integration/test_emit_sql.py holds this list equal to the table.
CREATE OR REPLACE FUNCTION webhooks.is_event_type(p_event_type text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(p_event_type = ANY ('{email.sent,email.opened,email.clicked,email.bounced,
        email.unsubscribed,email.spam_complaint,automation.triggered,contact.created,
        contact.updated}'::text[]), false)
$$;

-- Whether emit's and subscribed's account and event type pass every check (what
-- check_emit_args names when they do not), as one inlined expression for their common path.
CREATE OR REPLACE FUNCTION webhooks.is_event_source(p_account_id text, p_event_type text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_account_id IS NOT NULL AND btrim(p_account_id) <> '' AND length(p_account_id) <= 200
       AND webhooks.is_event_type(p_event_type)
$$;

-- Names what is wrong with emit's arguments. emit and subscribed call it only after their one-line
-- check failed, so the details cost nothing on the common path.
CREATE OR REPLACE FUNCTION webhooks.check_emit_args(
    p_account_id text, p_event_type text, p_payload jsonb, p_idempotency_key text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.check_account_id(p_account_id);
    IF NOT webhooks.is_event_type(p_event_type) THEN
        RAISE EXCEPTION 'event_type: unknown event type %', coalesce(quote_literal(left(p_event_type, 100)), 'NULL')
            USING ERRCODE = 'WH002', COLUMN = 'event_type',
                  HINT = 'see SELECT name FROM webhooks.event_types';
    END IF;
    IF p_payload IS NULL OR jsonb_typeof(p_payload) <> 'object' THEN
        PERFORM webhooks.invalid('payload', format('must be a JSON object, got %s',
                                                   coalesce(jsonb_typeof(p_payload), 'NULL')));
    END IF;
    IF p_idempotency_key IS NOT NULL AND (p_idempotency_key = '' OR length(p_idempotency_key) > 255) THEN
        PERFORM webhooks.invalid('idempotency_key', 'must be 1 to 255 characters');
    END IF;
END $$;
