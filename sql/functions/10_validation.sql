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
        contact.updated,endpoint.disabled,delivery.failed,endpoint.recovered}'::text[]), false)
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

-- Per-endpoint policy (migration 0008) -------------------------------------------------------------

-- The header names the engine sets on every attempt (engine/delivery/request.py builds them), and
-- those whose framing aiohttp owns: a custom header may take none of them, case-insensitively.
-- tests/integration/test_catalogue.py holds these lists equal to request.py's.
CREATE OR REPLACE FUNCTION webhooks.reserved_header_names()
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{content-type,content-length,host,user-agent,transfer-encoding,connection}'::text[]
$$;

CREATE OR REPLACE FUNCTION webhooks.reserved_header_prefixes()
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{webhook-,x-misarmail-}'::text[]
$$;

CREATE OR REPLACE FUNCTION webhooks.is_reserved_header(p_name text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower(p_name) = ANY (webhooks.reserved_header_names())
        OR EXISTS (SELECT 1 FROM unnest(webhooks.reserved_header_prefixes()) p
                    WHERE starts_with(lower(p_name), p))
$$;

-- Custom headers: a JSON object of name -> string value. Names are HTTP tokens (RFC 9110 tchar),
-- values visible ASCII with inner spaces or tabs (no CR, LF, NUL or other control character, no
-- leading or trailing whitespace, which HTTP would strip). At most 10, and 4096 bytes of names and
-- values in all. Error messages name the header but never quote a value: values are secrets.
CREATE OR REPLACE FUNCTION webhooks.check_headers(p_headers jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_name  text;
    v_value jsonb;
    v_size  integer := 0;
    v_seen  text[] := '{}';
BEGIN
    IF p_headers IS NULL OR jsonb_typeof(p_headers) <> 'object' THEN
        PERFORM webhooks.invalid('headers', format('must be a JSON object of name -> value, got %s',
                                                   coalesce(jsonb_typeof(p_headers), 'NULL')));
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(p_headers)) > 10 THEN
        PERFORM webhooks.invalid('headers', 'at most 10 headers are allowed');
    END IF;
    FOR v_name, v_value IN SELECT key, value FROM jsonb_each(p_headers) LOOP
        IF v_name !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' THEN
            PERFORM webhooks.invalid('headers', format('%s is not a valid HTTP header name',
                                                       quote_literal(left(v_name, 100))));
        END IF;
        IF webhooks.is_reserved_header(v_name) THEN
            PERFORM webhooks.invalid('headers', format(
                '%s is set by the engine and cannot be overridden (reserved: %s, %s*)',
                quote_literal(v_name), array_to_string(webhooks.reserved_header_names(), ', '),
                array_to_string(webhooks.reserved_header_prefixes(), '*, ')));
        END IF;
        IF lower(v_name) = ANY (v_seen) THEN
            PERFORM webhooks.invalid('headers', format('%s is given twice (names are case-insensitive)',
                                                       quote_literal(v_name)));
        END IF;
        v_seen := v_seen || lower(v_name);
        IF jsonb_typeof(v_value) <> 'string' THEN
            PERFORM webhooks.invalid('headers', format('the value of %s must be a string, not %s',
                                                       quote_literal(v_name), jsonb_typeof(v_value)));
        END IF;
        IF (v_value #>> '{}') !~ '^([!-~]([ \t]*[!-~])*)?$' THEN
            PERFORM webhooks.invalid('headers', format(
                'the value of %s must be visible ASCII characters with inner spaces or tabs only'
                ' (no CR, LF, NUL or other control characters, no leading or trailing whitespace)',
                quote_literal(v_name)));
        END IF;
        v_size := v_size + octet_length(v_name) + octet_length(v_value #>> '{}');
    END LOOP;
    IF v_size > 4096 THEN
        PERFORM webhooks.invalid('headers', format(
            'names and values are %s bytes in all, over the limit of 4096 bytes', v_size));
    END IF;
    RETURN p_headers;
END $$;

-- A filter's text as jsonpath, with a WH001 naming the field instead of Postgres's syntax error, for
-- callers that send text (the admin API and the CLI).
CREATE OR REPLACE FUNCTION webhooks.parse_filter(p_filter text)
RETURNS jsonpath LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN p_filter::jsonpath;
EXCEPTION WHEN syntax_error OR invalid_text_representation OR invalid_regular_expression THEN
    RAISE EXCEPTION 'filter: %s is not a valid JSON path (%)', quote_literal(left(p_filter, 200)), SQLERRM
        USING ERRCODE = 'WH001', COLUMN = 'filter';
END $$;

-- A payload filter must be a predicate (true or false for a payload, like $.bounce_type == "hard"):
-- emit delivers where payload @@ filter is true, and a path that yields no boolean would match no
-- event at all. Probed on an empty payload: a predicate gives true, false or unknown (JSON null);
-- a plain path gives nothing or a non-boolean value.
CREATE OR REPLACE FUNCTION webhooks.check_filter(p_filter jsonpath)
RETURNS jsonpath LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_probe jsonb;
BEGIN
    IF length(p_filter::text) > 2000 THEN
        PERFORM webhooks.invalid('filter', 'must be at most 2000 characters');
    END IF;
    v_probe := jsonb_path_query_first('{}'::jsonb, p_filter, silent => true);
    IF v_probe IS NULL OR jsonb_typeof(v_probe) NOT IN ('boolean', 'null') THEN
        PERFORM webhooks.invalid('filter', format(
            '%s is not a predicate; write a condition such as $.bounce_type == "hard"',
            quote_literal(left(p_filter::text, 200))));
    END IF;
    RETURN p_filter;
END $$;

-- A retry schedule, the endpoints' or the settings': the same rule as settings.retry_schedule's
-- CHECK, with a message naming what is wrong.
CREATE OR REPLACE FUNCTION webhooks.check_retry_schedule(p_schedule interval[])
RETURNS interval[] LANGUAGE plpgsql AS $$
BEGIN
    IF p_schedule IS NULL OR cardinality(p_schedule) > 20 THEN
        PERFORM webhooks.invalid('retry_schedule', 'must have 0 to 20 delays');
    END IF;
    IF array_position(p_schedule, NULL) IS NOT NULL THEN
        PERFORM webhooks.invalid('retry_schedule', 'must not contain null');
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_schedule) x WHERE x < '0') THEN
        PERFORM webhooks.invalid('retry_schedule', 'delays must not be negative');
    END IF;
    RETURN p_schedule;
END $$;

CREATE OR REPLACE FUNCTION webhooks.check_timeout_s(p_timeout_s integer)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF p_timeout_s IS NOT NULL AND p_timeout_s NOT BETWEEN 1 AND 30 THEN
        PERFORM webhooks.invalid('timeout_s', 'must be between 1 and 30 seconds');
    END IF;
    RETURN p_timeout_s;
END $$;

-- Lease and request timeout ------------------------------------------------------------------------

-- An attempt starts only while its lease outlives the request timeout by this margin
-- (engine/delivery/actor.py's LEASE_MARGIN_S; tests/integration/test_catalogue.py holds them equal).
CREATE OR REPLACE FUNCTION webhooks.lease_margin_s()
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 5
$$;

-- The longest request timeout in force: the settings' default and every live endpoint's own.
CREATE OR REPLACE FUNCTION webhooks.longest_timeout_s(p_default_s integer)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT greatest(p_default_s, (SELECT max(e.timeout_s) FROM webhooks.endpoints e
                                   WHERE e.deleted_at IS NULL AND e.timeout_s IS NOT NULL))
$$;

-- A lease shorter than the longest timeout plus the margin lets no attempt start: the engine would
-- claim, skip and let the lease expire forever. Raised as WH001 on the field being changed, naming
-- both values.
CREATE OR REPLACE FUNCTION webhooks.check_lease(p_lease interval, p_timeout_s integer, p_field text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_lease <= make_interval(secs => p_timeout_s + webhooks.lease_margin_s()) THEN
        PERFORM webhooks.invalid(p_field, format(
            'lease_duration (%s) must exceed the longest request timeout in force (%s s) plus a'
            ' margin of %s s; raise webhooks.settings.lease_duration above %s or lower the timeout',
            p_lease, p_timeout_s, webhooks.lease_margin_s(),
            make_interval(secs => p_timeout_s + webhooks.lease_margin_s())));
    END IF;
END $$;
