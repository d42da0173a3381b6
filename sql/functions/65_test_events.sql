-- Test events: the customer (or the operator) sends one event of a type to one endpoint, with the
-- catalogue's example as its data. It is a stored event and a delivery like any other (claimed,
-- signed, retried, logged), sent to that endpoint only whatever it subscribes to, and marked
-- events.test, which the envelope ("test": true) and the delivery log show.
CREATE OR REPLACE FUNCTION webhooks.send_test(p_endpoint_id uuid, p_event_type text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_ep       webhooks.endpoints;
    v_example  jsonb;
    v_event_id bigint;
    v_new      bigint;
BEGIN
    v_ep := webhooks.lock_endpoint(p_endpoint_id);
    SELECT t.example INTO v_example FROM webhooks.event_types t WHERE t.name = p_event_type;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_type: unknown event type %', coalesce(quote_literal(left(p_event_type, 100)), 'NULL')
            USING ERRCODE = 'WH002', COLUMN = 'event_type',
                  HINT = 'see SELECT name FROM webhooks.event_types';
    END IF;
    IF NOT v_ep.enabled THEN
        RAISE EXCEPTION 'endpoint_id: endpoint % is disabled (%); enable it first', p_endpoint_id, v_ep.disabled_reason
            USING ERRCODE = 'WH006', COLUMN = 'endpoint_id';
    END IF;
    INSERT INTO webhooks.events (account_id, type, payload, test)
    VALUES (v_ep.account_id, p_event_type, v_example, true)
    RETURNING id INTO v_event_id;
    INSERT INTO webhooks.deliveries (event_id, event_created_at, event_type, endpoint_id)
    VALUES (v_event_id, now(), p_event_type, p_endpoint_id)
    RETURNING id INTO v_new;
    PERFORM webhooks.wake_engine();
    RETURN v_new;
END $$;
