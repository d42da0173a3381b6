-- Operational events (DESIGN §9): MisarMail hears when a customer's endpoint is in trouble, so it
-- can tell the account's owner. record_attempts_v1 (50_record.sql) calls these only while
-- settings.operational_account is set; they emit to that account through webhooks.emit, so the
-- events are stored, delivered, signed, retried and logged like the app's own.
--
-- They never feed back: trouble with an endpoint of the operational account itself emits nothing,
-- or a failing operational endpoint would feed its own queue with reports of its failures.

-- Emits one operational event about endpoint p_endpoint_id: data names the endpoint, its account
-- and URL, plus p_data. Nothing when the endpoint belongs to the operational account.
CREATE OR REPLACE FUNCTION webhooks.emit_operational_v1(
    p_operational_account text, p_event_type text, p_endpoint_id uuid, p_data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_ep webhooks.endpoints;
BEGIN
    SELECT * INTO v_ep FROM webhooks.endpoints e WHERE e.id = p_endpoint_id;
    IF NOT FOUND OR v_ep.account_id = p_operational_account THEN
        RETURN;
    END IF;
    PERFORM webhooks.emit(p_operational_account, p_event_type,
        jsonb_build_object('endpoint_id', v_ep.id, 'account_id', v_ep.account_id, 'url', v_ep.url)
        || p_data);
END $$;

-- After a failed attempt was recorded: delivery.failed when the delivery ended without success
-- (retries ran out, or 410), endpoint.disabled when the endpoint was enabled before this attempt
-- (p_was_enabled) and is disabled now (410, or settings.disable_after without a success).
CREATE OR REPLACE FUNCTION webhooks.operational_after_failure_v1(
    p_operational_account text, p_delivery webhooks.deliveries, p_outcome text, p_attempts integer,
    p_status integer, p_error text, p_was_enabled boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_ep webhooks.endpoints;
BEGIN
    IF p_outcome = 'failed' THEN
        PERFORM webhooks.emit_operational_v1(p_operational_account, 'delivery.failed',
            p_delivery.endpoint_id,
            jsonb_build_object('delivery_id', p_delivery.id, 'event_id', 'evt_' || p_delivery.event_id,
                               'event_type', p_delivery.event_type, 'attempts', p_attempts,
                               'last_status_code', p_status, 'last_error', p_error,
                               'failed_at', now()));
    END IF;
    IF p_was_enabled THEN
        SELECT * INTO v_ep FROM webhooks.endpoints e WHERE e.id = p_delivery.endpoint_id;
        IF NOT v_ep.enabled THEN
            PERFORM webhooks.emit_operational_v1(p_operational_account, 'endpoint.disabled', v_ep.id,
                jsonb_build_object('reason', v_ep.disabled_reason, 'disabled_at', v_ep.disabled_at));
        END IF;
    END IF;
END $$;

-- Before record_attempts_v1 clears failing_since of the endpoints that answered 2xx: each of them
-- that had a delivery fail for good since it began failing (the failure MisarMail heard about as
-- delivery.failed) is reported as endpoint.recovered. A retry that succeeds is no news.
CREATE OR REPLACE FUNCTION webhooks.operational_recovered_v1(
    p_operational_account text, p_endpoint_ids uuid[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_ep record;
BEGIN
    FOR v_ep IN
        SELECT e.id, e.failing_since FROM webhooks.endpoints e
         WHERE e.id = ANY (p_endpoint_ids) AND e.failing_since IS NOT NULL
           AND e.account_id <> p_operational_account
           AND EXISTS (SELECT 1 FROM webhooks.delivery_outcomes o
                        WHERE o.endpoint_id = e.id AND o.ended_at >= e.failing_since
                          AND o.status = 'failed')
         ORDER BY e.id
    LOOP
        PERFORM webhooks.emit_operational_v1(p_operational_account, 'endpoint.recovered', v_ep.id,
            jsonb_build_object('failing_since', v_ep.failing_since, 'recovered_at', now()));
    END LOOP;
END $$;
