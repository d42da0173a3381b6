"""Issue 15's baselines for emitting with subscribers, as SQL the bench installs beside the app.

- The lean outbox: the least a hand-written transactional outbox costs the app, in the same trigger
  shape as the example trigger (``app.email_event_webhook``): an ``EXISTS`` probe of the account's
  subscribed endpoints (the same index emit probes), one insert into a one-index events table, and
  one row per subscribed endpoint into a two-index deliveries table. No checks, no filters, no
  partitions, no wake-up, and nothing reads the rows. W6 "lean outbox" and S measure it against
  ``webhooks.emit`` with one subscribed endpoint.
- The bulk trigger: a statement-level copy of the example trigger on ``app.email_events``, which
  passes the statement's transition table to ``webhooks.emit_many`` as the example's
  ``app.campaign_sends_webhook`` does, with the same guard (``webhooks.subscribed_accounts``, as
  the row trigger has ``webhooks.subscribed``), so that the same 1,000-row inserts can be measured
  with the row trigger and with it (S, "bulk").
- Two floors for the bulk trigger, statement-level triggers that write the intake straight from
  their transition table, without ``webhooks.emit_many`` (not a way to emit: they skip the
  argument checks, the endpoint matching and idempotency keys):
  - the payloads and the intake rows alone: what any set-based emit writes;
  - the same with the guard and the size and depth checks that emit_many applies to every event it
    stores (``webhooks.stored_payload``). Its share is what emit_many would cost if everything it
    does beyond those checks were free, so "row trigger / this" is the highest bulk ratio an
    emit_many that keeps emit's promises can reach.
"""

from __future__ import annotations

# The statement-level triggers' shared parts: the same payload for every row of ``new_rows`` (as the
# row triggers build it from NEW) and the same guard, so that the floors differ from the bulk
# trigger only in what they leave out.
BULK_PAYLOAD = """jsonb_build_object('email_event_id', n.id, 'recipient', n.recipient,
                                          'campaign_id', n.campaign_id,
                                          'occurred_at', n.occurred_at) || n.details"""
BULK_GUARD = """v_accounts := webhooks.subscribed_accounts(
        ARRAY(SELECT DISTINCT n.account_id FROM new_rows n),
        ARRAY(SELECT DISTINCT 'email.' || n.kind FROM new_rows n));"""
LEAN_OUTBOX = f"""
CREATE TABLE IF NOT EXISTS app.lean_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL,
    type       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS app.lean_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         bigint NOT NULL,
    event_created_at timestamptz NOT NULL,
    event_type       text NOT NULL,
    endpoint_id      uuid NOT NULL,
    due_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lean_deliveries_endpoint_idx ON app.lean_deliveries (endpoint_id, id);

CREATE OR REPLACE FUNCTION app.email_event_lean_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_event_id bigint;
BEGIN
    IF EXISTS (SELECT FROM webhooks.endpoints e
                WHERE e.account_id = NEW.account_id AND e.enabled
                  AND webhooks.subscribes(e.event_types, 'email.' || NEW.kind)) THEN
        INSERT INTO app.lean_events (account_id, type, payload)
        VALUES (NEW.account_id, 'email.' || NEW.kind,
                jsonb_build_object('email_event_id', NEW.id, 'recipient', NEW.recipient,
                                   'campaign_id', NEW.campaign_id, 'occurred_at', NEW.occurred_at)
                    || NEW.details)
        RETURNING id INTO v_event_id;
        INSERT INTO app.lean_deliveries (event_id, event_created_at, event_type, endpoint_id)
        SELECT v_event_id, now(), 'email.' || NEW.kind, e.id FROM webhooks.endpoints e
         WHERE e.account_id = NEW.account_id AND e.enabled
           AND webhooks.subscribes(e.event_types, 'email.' || NEW.kind);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION app.email_events_webhook_bulk() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_accounts text[];
BEGIN
    {BULK_GUARD}
    IF cardinality(v_accounts) > 0 THEN
        PERFORM webhooks.emit_many(ARRAY(
            SELECT ROW(n.account_id, 'email.' || n.kind,
                       {BULK_PAYLOAD},
                       NULL)::webhooks.new_event
              FROM new_rows n WHERE n.account_id = ANY (v_accounts) ORDER BY n.id));
    END IF;
    RETURN NULL;
END $$;

-- The bulk trigger's floors (see the module docstring). The payload is built in a subquery that is
-- not flattened, so that stored_payload gets a column and is inlined.
CREATE OR REPLACE FUNCTION app.email_events_bulk_floor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhooks.intake (id, account_id, type, payload)
    SELECT nextval('webhooks.events_id_seq'), n.account_id, 'email.' || n.kind,
           {BULK_PAYLOAD}
      FROM new_rows n ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION app.email_events_bulk_floor_checked() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_accounts  text[];
    v_max_bytes integer := (SELECT s.max_payload_bytes FROM webhooks.settings s);
BEGIN
    {BULK_GUARD}
    IF cardinality(v_accounts) > 0 THEN
        INSERT INTO webhooks.intake (id, account_id, type, payload)
        SELECT nextval('webhooks.events_id_seq'), p.account_id, p.type,
               webhooks.stored_payload(p.payload, p.id, NULL, v_max_bytes)
          FROM (SELECT n.id, n.account_id, 'email.' || n.kind AS type,
                       {BULK_PAYLOAD} AS payload
                  FROM new_rows n WHERE n.account_id = ANY (v_accounts) ORDER BY n.id OFFSET 0) p;
    END IF;
    RETURN NULL;
END $$;
"""
CLEAR_LEAN = "TRUNCATE app.lean_events, app.lean_deliveries"
LEAN_TRIGGER = "email_event_lean_outbox"
BULK_TRIGGER = "email_events_webhook_bulk"
BULK_FLOOR = "email_events_bulk_floor"
BULK_FLOOR_CHECKED = "email_events_bulk_floor_checked"
STATEMENT_TRIGGERS = (BULK_TRIGGER, BULK_FLOOR, BULK_FLOOR_CHECKED)
CREATE_STATEMENT_TRIGGER = """
CREATE TRIGGER email_event_webhook AFTER INSERT ON app.email_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION app.{function}()"""
