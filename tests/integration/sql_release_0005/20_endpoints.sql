-- Endpoint management: the functions MisarMail's app, the CLI and the admin API call.
-- Each validates its input (WH001/WH002), refuses unknown or deleted endpoints (WH004), and changes
-- nothing when it raises.

CREATE OR REPLACE FUNCTION webhooks.lock_endpoint(p_endpoint_id uuid)
RETURNS webhooks.endpoints LANGUAGE plpgsql AS $$
DECLARE
    v_row webhooks.endpoints;
BEGIN
    IF p_endpoint_id IS NULL THEN
        PERFORM webhooks.invalid('endpoint_id', 'must not be null');
    END IF;
    SELECT * INTO v_row FROM webhooks.endpoints e
     WHERE e.id = p_endpoint_id AND e.deleted_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'endpoint_id: no endpoint %', p_endpoint_id
            USING ERRCODE = 'WH004', COLUMN = 'endpoint_id';
    END IF;
    RETURN v_row;
END $$;

-- Ends every live delivery of an endpoint as 'cancelled' with a reason, so that nothing vanishes
-- from the delivery log; enable_endpoint and recover() re-queue them.
CREATE OR REPLACE FUNCTION webhooks.cancel_live_deliveries(p_endpoint_id uuid, p_reason text)
RETURNS integer LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM webhooks.deliveries d
         WHERE d.endpoint_id = p_endpoint_id AND d.attempts >= 0  -- the per-endpoint index's predicate
        RETURNING d.*
    ), logged AS (
        INSERT INTO webhooks.delivery_outcomes
            (delivery_id, event_id, event_created_at, event_type, endpoint_id, status, attempts,
             last_status, last_error, created_at)
        SELECT g.id, g.event_id, g.event_created_at, g.event_type, g.endpoint_id, 'cancelled',
               g.attempts, g.last_status, p_reason, g.created_at
          FROM gone g
        RETURNING 1
    )
    SELECT count(*)::integer FROM logged
$$;

CREATE OR REPLACE FUNCTION webhooks.create_endpoint(
    p_account_id       text,
    p_url              text,
    p_event_types      text[],
    p_description      text DEFAULT '',
    p_secret           text DEFAULT NULL,
    p_max_in_flight    integer DEFAULT 8,
    p_ordering         text DEFAULT 'dispatch',
    p_rate_limit_per_s double precision DEFAULT NULL,
    OUT id uuid,
    OUT secret text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_types text[];
BEGIN
    PERFORM webhooks.check_account_id(p_account_id);
    PERFORM webhooks.check_url(p_url);
    v_types := webhooks.check_event_types(p_event_types);
    IF p_secret IS NOT NULL THEN
        PERFORM webhooks.check_secret(p_secret);
    END IF;
    PERFORM webhooks.check_endpoint_options(coalesce(p_max_in_flight, 8), coalesce(p_ordering, 'dispatch'),
                                            p_rate_limit_per_s);
    IF length(coalesce(p_description, '')) > 1000 THEN
        PERFORM webhooks.invalid('description', 'must be at most 1000 characters');
    END IF;
    INSERT INTO webhooks.endpoints AS e
        (account_id, url, description, event_types, secret, max_in_flight, ordering, rate_limit_per_s)
    VALUES (p_account_id, p_url, coalesce(p_description, ''), v_types,
            coalesce(p_secret, webhooks.new_secret()), coalesce(p_max_in_flight, 8),
            coalesce(p_ordering, 'dispatch'), nullif(p_rate_limit_per_s, 0))
    RETURNING e.id, e.secret INTO id, secret;
END $$;

-- NULL arguments leave a field unchanged; p_rate_limit_per_s = 0 removes the rate limit.
CREATE OR REPLACE FUNCTION webhooks.update_endpoint(
    p_endpoint_id      uuid,
    p_url              text DEFAULT NULL,
    p_event_types      text[] DEFAULT NULL,
    p_description      text DEFAULT NULL,
    p_max_in_flight    integer DEFAULT NULL,
    p_ordering         text DEFAULT NULL,
    p_rate_limit_per_s double precision DEFAULT NULL)
RETURNS webhooks.endpoints LANGUAGE plpgsql AS $$
DECLARE
    v_row   webhooks.endpoints;
    v_types text[];
BEGIN
    v_row := webhooks.lock_endpoint(p_endpoint_id);
    IF p_url IS NOT NULL THEN
        PERFORM webhooks.check_url(p_url);
    END IF;
    IF p_event_types IS NOT NULL THEN
        v_types := webhooks.check_event_types(p_event_types);
    END IF;
    PERFORM webhooks.check_endpoint_options(p_max_in_flight, p_ordering, p_rate_limit_per_s);
    IF length(coalesce(p_description, '')) > 1000 THEN
        PERFORM webhooks.invalid('description', 'must be at most 1000 characters');
    END IF;
    UPDATE webhooks.endpoints e SET
        url              = coalesce(p_url, e.url),
        event_types      = coalesce(v_types, e.event_types),
        description      = coalesce(p_description, e.description),
        max_in_flight    = coalesce(p_max_in_flight, e.max_in_flight),
        ordering         = coalesce(p_ordering, e.ordering),
        rate_limit_per_s = CASE WHEN p_rate_limit_per_s IS NULL THEN e.rate_limit_per_s
                                ELSE nullif(p_rate_limit_per_s, 0) END,
        updated_at       = now()
     WHERE e.id = p_endpoint_id
    RETURNING e.* INTO v_row;
    RETURN v_row;
END $$;

-- Disabling cancels the endpoint's live deliveries (recorded as 'cancelled' with the reason).
CREATE OR REPLACE FUNCTION webhooks.disable_endpoint(
    p_endpoint_id uuid, p_reason text DEFAULT 'disabled by operator')
RETURNS webhooks.endpoints LANGUAGE plpgsql AS $$
DECLARE
    v_row webhooks.endpoints;
BEGIN
    v_row := webhooks.lock_endpoint(p_endpoint_id);
    IF v_row.enabled THEN
        UPDATE webhooks.endpoints e
           SET enabled = false, disabled_at = now(),
               disabled_reason = coalesce(nullif(p_reason, ''), 'disabled by operator'),
               updated_at = now()
         WHERE e.id = p_endpoint_id
        RETURNING e.* INTO v_row;
        PERFORM webhooks.cancel_live_deliveries(p_endpoint_id, 'endpoint disabled: ' || v_row.disabled_reason);
    END IF;
    RETURN v_row;
END $$;

-- Enabling re-queues what the disable cancelled, and the delivery that caused it (a 410 or the
-- last failure before the 5-day rule), so an operator's pause loses nothing.
CREATE OR REPLACE FUNCTION webhooks.enable_endpoint(p_endpoint_id uuid)
RETURNS webhooks.endpoints LANGUAGE plpgsql AS $$
DECLARE
    v_row   webhooks.endpoints;
    v_since timestamptz;
BEGIN
    v_row := webhooks.lock_endpoint(p_endpoint_id);
    IF NOT v_row.enabled THEN
        v_since := v_row.disabled_at;
        UPDATE webhooks.endpoints e
           SET enabled = true, disabled_at = NULL, disabled_reason = NULL, failing_since = NULL,
               updated_at = now()
         WHERE e.id = p_endpoint_id
        RETURNING e.* INTO v_row;
        PERFORM webhooks.requeue_ended(p_endpoint_id, v_since, ARRAY['cancelled', 'failed']);
    END IF;
    RETURN v_row;
END $$;

-- Soft delete: the row stays so the delivery log keeps its URL, but every function treats it as
-- unknown from now on.
CREATE OR REPLACE FUNCTION webhooks.delete_endpoint(p_endpoint_id uuid)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.lock_endpoint(p_endpoint_id);
    UPDATE webhooks.endpoints e
       SET enabled = false, deleted_at = now(), updated_at = now(),
           disabled_at = coalesce(e.disabled_at, now()),
           disabled_reason = coalesce(e.disabled_reason, 'deleted')
     WHERE e.id = p_endpoint_id;
    PERFORM webhooks.cancel_live_deliveries(p_endpoint_id, 'endpoint deleted');
END $$;

-- The old secret stays valid (deliveries carry one signature per valid secret) for p_grace.
CREATE OR REPLACE FUNCTION webhooks.rotate_secret(
    p_endpoint_id uuid, p_grace interval DEFAULT '24 hours', p_new_secret text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_row    webhooks.endpoints;
    v_secret text;
BEGIN
    v_row := webhooks.lock_endpoint(p_endpoint_id);
    IF p_grace IS NULL OR p_grace < '0' OR p_grace > '30 days' THEN
        PERFORM webhooks.invalid('grace', 'must be between 0 and 30 days');
    END IF;
    IF p_new_secret IS NOT NULL THEN
        PERFORM webhooks.check_secret(p_new_secret);
        IF p_new_secret = v_row.secret THEN
            PERFORM webhooks.invalid('secret', 'must differ from the current secret');
        END IF;
    END IF;
    v_secret := coalesce(p_new_secret, webhooks.new_secret());
    UPDATE webhooks.endpoints e
       SET previous_secret = CASE WHEN p_grace > '0' THEN e.secret END,
           previous_secret_expires_at = CASE WHEN p_grace > '0' THEN now() + p_grace END,
           secret = v_secret,
           updated_at = now()
     WHERE e.id = p_endpoint_id;
    RETURN v_secret;
END $$;

-- The secrets a delivery is signed with right now: the current one, then the previous one while its
-- grace period lasts.
CREATE OR REPLACE FUNCTION webhooks.signing_secrets(p_endpoint webhooks.endpoints)
RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_endpoint.previous_secret IS NOT NULL
                     AND p_endpoint.previous_secret_expires_at > now()
                THEN ARRAY[p_endpoint.secret, p_endpoint.previous_secret]
                ELSE ARRAY[p_endpoint.secret] END
$$;
