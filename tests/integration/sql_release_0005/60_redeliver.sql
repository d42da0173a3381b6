-- Manual re-sending. Both create new deliveries of stored events; they are then claimed, signed,
-- retried and logged like any other.

CREATE OR REPLACE FUNCTION webhooks.wake_engine()
RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('webhooks_wakeup', '')
$$;

-- Re-queues, for one endpoint, the events whose deliveries ended with one of p_statuses at or after
-- p_since, unless the event was delivered to that endpoint since, is already live again, or has
-- passed retention. Returns how many deliveries it created.
CREATE OR REPLACE FUNCTION webhooks.requeue_ended(p_endpoint_id uuid, p_since timestamptz, p_statuses text[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    WITH candidates AS (
        SELECT DISTINCT ON (o.event_id) o.event_id, o.event_created_at, o.event_type
          FROM webhooks.delivery_outcomes o
         WHERE o.endpoint_id = p_endpoint_id AND o.ended_at >= p_since AND o.status = ANY (p_statuses)
         ORDER BY o.event_id
    ), inserted AS (
        INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
        SELECT c.event_id, c.event_created_at, c.event_type, p_endpoint_id
          FROM candidates c
         WHERE EXISTS (SELECT 1 FROM webhooks.events ev
                        WHERE ev.id = c.event_id AND ev.created_at = c.event_created_at)
           AND NOT EXISTS (SELECT 1 FROM webhooks.deliveries d
                            WHERE d.endpoint_id = p_endpoint_id AND d.event_id = c.event_id
                              AND d.attempts >= 0)  -- the per-endpoint index's predicate
           AND NOT EXISTS (SELECT 1 FROM webhooks.delivery_outcomes o2
                            WHERE o2.endpoint_id = p_endpoint_id AND o2.event_id = c.event_id
                              AND o2.status = 'delivered')
         ORDER BY c.event_id
        RETURNING 1
    )
    SELECT count(*)::integer INTO v_count FROM inserted;
    IF v_count > 0 THEN
        PERFORM webhooks.wake_engine();
    END IF;
    RETURN v_count;
END $$;

-- Svix's "recover": re-send everything that failed (or was cancelled by a disable) since a time.
CREATE OR REPLACE FUNCTION webhooks.recover(p_endpoint_id uuid, p_since timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_ep webhooks.endpoints;
BEGIN
    v_ep := webhooks.lock_endpoint(p_endpoint_id);
    IF p_since IS NULL THEN
        PERFORM webhooks.invalid('since', 'must not be null');
    END IF;
    IF p_since > now() THEN
        PERFORM webhooks.invalid('since', 'must not be in the future');
    END IF;
    IF NOT v_ep.enabled THEN
        RAISE EXCEPTION 'endpoint_id: endpoint % is disabled (%); enable it first', p_endpoint_id, v_ep.disabled_reason
            USING ERRCODE = 'WH006', COLUMN = 'endpoint_id';
    END IF;
    RETURN webhooks.requeue_ended(p_endpoint_id, p_since, ARRAY['failed', 'cancelled']);
END $$;

-- Sends a delivery's event again to the same endpoint as a new delivery, whatever the old one's state.
CREATE OR REPLACE FUNCTION webhooks.redeliver(p_delivery_id bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_event_id   bigint;
    v_created_at timestamptz;
    v_type       text;
    v_endpoint   uuid;
    v_ep         webhooks.endpoints;
    v_new        bigint;
BEGIN
    IF p_delivery_id IS NULL THEN
        PERFORM webhooks.invalid('delivery_id', 'must not be null');
    END IF;
    SELECT d.event_id, d.event_created_at, d.event_type, d.endpoint_id
      INTO v_event_id, v_created_at, v_type, v_endpoint
      FROM webhooks.deliveries d WHERE d.id = p_delivery_id;
    IF NOT FOUND THEN
        SELECT o.event_id, o.event_created_at, o.event_type, o.endpoint_id
          INTO v_event_id, v_created_at, v_type, v_endpoint
          FROM webhooks.delivery_outcomes o WHERE o.delivery_id = p_delivery_id
         ORDER BY o.ended_at DESC LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'delivery_id: no delivery %', p_delivery_id
            USING ERRCODE = 'WH005', COLUMN = 'delivery_id';
    END IF;
    v_ep := webhooks.lock_endpoint(v_endpoint);
    IF NOT v_ep.enabled THEN
        RAISE EXCEPTION 'delivery_id: endpoint % of delivery % is disabled (%); enable it first',
                        v_endpoint, p_delivery_id, v_ep.disabled_reason
            USING ERRCODE = 'WH006', COLUMN = 'delivery_id';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhooks.events ev WHERE ev.id = v_event_id AND ev.created_at = v_created_at) THEN
        RAISE EXCEPTION 'delivery_id: event evt_% of delivery % has passed retention', v_event_id, p_delivery_id
            USING ERRCODE = 'WH007', COLUMN = 'delivery_id';
    END IF;
    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
    VALUES (v_event_id, v_created_at, v_type, v_endpoint)
    RETURNING id INTO v_new;
    PERFORM webhooks.wake_engine();
    RETURN v_new;
END $$;
