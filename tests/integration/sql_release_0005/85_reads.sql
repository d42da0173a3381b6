-- Reads for the CLI and the admin API: endpoints, the delivery log and attempts, paged by keyset.
--
-- Optional filters are NULL when unused. plan_cache_mode = force_custom_plan makes plpgsql plan each
-- call with the actual values, so an unused filter folds away and the used ones can pick their
-- index; a generic plan would have to serve every combination at once.
-- Unknown ids raise WH004/WH005 like the management functions. Secrets leave the database only when
-- p_reveal_secret is true; otherwise a prefix that tells secrets apart ('whsec_abcd…').

CREATE OR REPLACE FUNCTION webhooks.mask_secret(p_secret text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_secret IS NOT NULL THEN left(p_secret, 10) || '…' END
$$;

CREATE OR REPLACE FUNCTION webhooks.endpoint_view(p_endpoint webhooks.endpoints, p_reveal_secret boolean)
RETURNS TABLE (id uuid, account_id text, url text, description text, event_types text[], secret text,
               previous_secret text, previous_secret_expires_at timestamptz, enabled boolean,
               disabled_at timestamptz, disabled_reason text, max_in_flight integer, ordering text,
               rate_limit_per_s double precision, last_success_at timestamptz,
               failing_since timestamptz, created_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT (p_endpoint).id, (p_endpoint).account_id, (p_endpoint).url, (p_endpoint).description,
           (p_endpoint).event_types,
           CASE WHEN p_reveal_secret THEN (p_endpoint).secret
                ELSE webhooks.mask_secret((p_endpoint).secret) END,
           CASE WHEN (p_endpoint).previous_secret_expires_at > now() THEN
                CASE WHEN p_reveal_secret THEN (p_endpoint).previous_secret
                     ELSE webhooks.mask_secret((p_endpoint).previous_secret) END END,
           CASE WHEN (p_endpoint).previous_secret_expires_at > now()
                THEN (p_endpoint).previous_secret_expires_at END,
           (p_endpoint).enabled, (p_endpoint).disabled_at, (p_endpoint).disabled_reason,
           (p_endpoint).max_in_flight, (p_endpoint).ordering, (p_endpoint).rate_limit_per_s,
           (p_endpoint).last_success_at, (p_endpoint).failing_since, (p_endpoint).created_at,
           (p_endpoint).updated_at
$$;

CREATE OR REPLACE FUNCTION webhooks.get_endpoint_v1(p_endpoint_id uuid, p_reveal_secret boolean DEFAULT false)
RETURNS TABLE (id uuid, account_id text, url text, description text, event_types text[], secret text,
               previous_secret text, previous_secret_expires_at timestamptz, enabled boolean,
               disabled_at timestamptz, disabled_reason text, max_in_flight integer, ordering text,
               rate_limit_per_s double precision, last_success_at timestamptz,
               failing_since timestamptz, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT v.* FROM webhooks.endpoints e
                 CROSS JOIN LATERAL webhooks.endpoint_view(e, coalesce(p_reveal_secret, false)) v
                  WHERE e.id = p_endpoint_id AND e.deleted_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'endpoint_id: no endpoint %', p_endpoint_id
            USING ERRCODE = 'WH004', COLUMN = 'endpoint_id';
    END IF;
END $$;

-- Oldest first; the page after (p_after_created, p_after_id) when they are given.
CREATE OR REPLACE FUNCTION webhooks.list_endpoints_v1(
    p_account_id text, p_enabled boolean, p_after_created timestamptz, p_after_id uuid, p_limit integer)
RETURNS TABLE (id uuid, account_id text, url text, description text, event_types text[], secret text,
               previous_secret text, previous_secret_expires_at timestamptz, enabled boolean,
               disabled_at timestamptz, disabled_reason text, max_in_flight integer, ordering text,
               rate_limit_per_s double precision, last_success_at timestamptz,
               failing_since timestamptz, created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    RETURN QUERY
    SELECT v.*
      FROM webhooks.endpoints e
     CROSS JOIN LATERAL webhooks.endpoint_view(e, false) v
     WHERE e.deleted_at IS NULL
       AND (p_account_id IS NULL OR e.account_id = p_account_id)
       AND (p_enabled IS NULL OR e.enabled = p_enabled)
       AND (p_after_id IS NULL OR (e.created_at, e.id) > (p_after_created, p_after_id))
     ORDER BY e.created_at, e.id
     LIMIT p_limit;
END $$;

-- The rows of webhooks.delivery_log (80_views.sql; the status rule must stay the same), newest first,
-- before (p_before_created, p_before_id) when given. Each half of the log is cut to one page by its
-- own index before the halves are merged. p_since also bounds ended_at (an outcome ends after it was
-- created), which skips whole partitions of delivery_outcomes.
CREATE OR REPLACE FUNCTION webhooks.list_deliveries_v1(
    p_status text, p_endpoint_id uuid, p_event_type text, p_since timestamptz, p_account_id text,
    p_before_created timestamptz, p_before_id bigint, p_limit integer)
RETURNS TABLE (delivery_id bigint, event_id bigint, event_type text, endpoint_id uuid, account_id text,
               endpoint_url text, status text, attempts integer, last_status_code integer,
               last_error text, created_at timestamptz, last_attempt_at timestamptz,
               next_attempt_at timestamptz, ended_at timestamptz)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    RETURN QUERY
    SELECT x.* FROM (
        (SELECT l.* FROM (
            SELECT d.id, d.event_id, d.event_type, d.endpoint_id, e.account_id, e.url,
                   CASE WHEN d.lease_token IS NOT NULL AND d.due_at > now() THEN 'in_flight'
                        WHEN d.attempts = 0 THEN 'pending'
                        ELSE 'retrying' END AS status,
                   d.attempts, d.last_status, d.last_error, d.created_at, d.last_attempt_at,
                   CASE WHEN d.lease_token IS NULL OR d.due_at <= now() THEN d.due_at END,
                   NULL::timestamptz
              FROM webhooks.deliveries d
              JOIN webhooks.endpoints e ON e.id = d.endpoint_id
             WHERE (p_status IS NULL OR p_status IN ('pending', 'in_flight', 'retrying'))
               AND (p_endpoint_id IS NULL OR d.endpoint_id = p_endpoint_id)
               AND d.attempts >= 0  -- the per-endpoint index's predicate (migration 0003)
               AND (p_event_type IS NULL OR d.event_type = p_event_type)
               AND (p_since IS NULL OR d.created_at >= p_since)
               AND (p_account_id IS NULL OR e.account_id = p_account_id)
               AND (p_before_id IS NULL OR (d.created_at, d.id) < (p_before_created, p_before_id))
            ) l
          WHERE p_status IS NULL OR l.status = p_status
          ORDER BY l.created_at DESC, l.id DESC
          LIMIT p_limit)
        UNION ALL
        (SELECT o.delivery_id, o.event_id, o.event_type, o.endpoint_id, e.account_id, e.url, o.status,
                o.attempts, o.last_status, o.last_error, o.created_at,
                CASE WHEN o.attempts > 0 THEN o.ended_at END, NULL::timestamptz, o.ended_at
           FROM webhooks.delivery_outcomes o
           JOIN webhooks.endpoints e ON e.id = o.endpoint_id
          WHERE (p_status IS NULL OR o.status = p_status)
            AND (p_endpoint_id IS NULL OR o.endpoint_id = p_endpoint_id)
            AND (p_event_type IS NULL OR o.event_type = p_event_type)
            AND (p_since IS NULL OR (o.created_at >= p_since AND o.ended_at >= p_since))
            AND (p_account_id IS NULL OR e.account_id = p_account_id)
            AND (p_before_id IS NULL OR (o.created_at, o.delivery_id) < (p_before_created, p_before_id))
          ORDER BY o.created_at DESC, o.delivery_id DESC
          LIMIT p_limit)
    ) x
    ORDER BY x.created_at DESC, x.id DESC
    LIMIT p_limit;
END $$;

-- One delivery as webhooks.delivery_log shows it, plus its event's payload (NULL once the event has
-- passed retention).
CREATE OR REPLACE FUNCTION webhooks.get_delivery_v1(p_delivery_id bigint)
RETURNS TABLE (delivery_id bigint, event_id bigint, event_type text, endpoint_id uuid, account_id text,
               endpoint_url text, status text, attempts integer, last_status_code integer,
               last_error text, created_at timestamptz, last_attempt_at timestamptz,
               next_attempt_at timestamptz, ended_at timestamptz, payload jsonb)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT l.*, ev.payload
      FROM webhooks.delivery_log l
      LEFT JOIN LATERAL (
          SELECT coalesce(
                     (SELECT d.event_created_at FROM webhooks.deliveries d WHERE d.id = l.delivery_id),
                     (SELECT o.event_created_at FROM webhooks.delivery_outcomes o
                       WHERE o.delivery_id = l.delivery_id LIMIT 1)) AS created_at
      ) ec ON true
      LEFT JOIN webhooks.events ev ON ev.id = l.event_id AND ev.created_at = ec.created_at
     WHERE l.delivery_id = p_delivery_id
     ORDER BY l.ended_at DESC NULLS FIRST
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'delivery_id: no delivery %', p_delivery_id
            USING ERRCODE = 'WH005', COLUMN = 'delivery_id';
    END IF;
END $$;

-- Every attempt of one delivery, in order (attempts_delivery_idx).
CREATE OR REPLACE FUNCTION webhooks.delivery_attempts_v1(p_delivery_id bigint)
RETURNS TABLE (id bigint, delivery_id bigint, endpoint_id uuid, attempt integer, started_at timestamptz,
               duration_ms integer, status_code integer, error_kind text, error_message text,
               response_excerpt text, outcome text, next_attempt_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT a.id, a.delivery_id, a.endpoint_id, a.attempt, a.started_at, a.duration_ms, a.status_code,
           a.error_kind, a.error_message, a.response_excerpt, a.outcome, a.next_attempt_at
      FROM webhooks.attempts a
     WHERE a.delivery_id = p_delivery_id
     ORDER BY a.started_at, a.id
$$;

-- Attempts with an id in (p_after_id, p_up_to], oldest first, with their delivery's event type and
-- endpoint URL: what `deliveries tail` polls. p_up_to (NULL: no bound) lets a poller that filters
-- move past attempts that did not match instead of reading them again. Ids are taken at insert, so with several writers an attempt can
-- commit after one with a higher id; a single engine writes its batches one after another.
CREATE OR REPLACE FUNCTION webhooks.attempts_after_v1(
    p_after_id bigint, p_up_to bigint, p_endpoint_id uuid, p_event_type text, p_account_id text,
    p_limit integer)
RETURNS TABLE (id bigint, delivery_id bigint, endpoint_id uuid, attempt integer, started_at timestamptz,
               duration_ms integer, status_code integer, error_kind text, error_message text,
               response_excerpt text, outcome text, next_attempt_at timestamptz, event_type text,
               endpoint_url text, account_id text)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    RETURN QUERY
    SELECT a.id, a.delivery_id, a.endpoint_id, a.attempt, a.started_at, a.duration_ms, a.status_code,
           a.error_kind, a.error_message, a.response_excerpt, a.outcome, a.next_attempt_at,
           t.event_type, e.url, e.account_id
      FROM webhooks.attempts a
      JOIN webhooks.endpoints e ON e.id = a.endpoint_id
      CROSS JOIN LATERAL (
          SELECT coalesce(
                     (SELECT d.event_type FROM webhooks.deliveries d WHERE d.id = a.delivery_id),
                     (SELECT o.event_type FROM webhooks.delivery_outcomes o
                       WHERE o.delivery_id = a.delivery_id LIMIT 1)) AS event_type
      ) t
     WHERE a.id > p_after_id
       AND (p_up_to IS NULL OR a.id <= p_up_to)
       AND (p_endpoint_id IS NULL OR a.endpoint_id = p_endpoint_id)
       AND (p_account_id IS NULL OR e.account_id = p_account_id)
       AND (p_event_type IS NULL OR t.event_type = p_event_type)
     ORDER BY a.id
     LIMIT p_limit;
END $$;

CREATE OR REPLACE FUNCTION webhooks.last_attempt_id_v1()
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(max(a.id), 0) FROM webhooks.attempts a
$$;
