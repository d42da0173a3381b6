-- How MisarMail's app emits webhook events: triggers on its own tables call webhooks.emit() (row
-- triggers) or webhooks.emit_many() (statement-level triggers, for bulk writes) in the same
-- transaction as the change. A rolled-back change sends nothing; a committed one is delivered
-- (or visibly fails).
-- `misar-webhooks demo` runs this file against its embedded Postgres; the README shows it too.

CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE app.email_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  text NOT NULL,
    kind        text NOT NULL,  -- sent | opened | clicked | bounced | unsubscribed | spam_complaint
    recipient   text NOT NULL,
    campaign_id text,
    details     jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT now()
);

-- email_events is MisarMail's hottest table and most accounts have no endpoint: the guard makes such
-- a row cost the app one index probe, without building a payload that nobody would receive.
-- No idempotency key: a row trigger fires once per inserted row, and an identity id is never
-- inserted twice, so a key could never match; it would only cost a lookup and a row per event.
CREATE FUNCTION app.email_event_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks.subscribed(NEW.account_id, 'email.' || NEW.kind) THEN
        PERFORM webhooks.emit(
            NEW.account_id,
            'email.' || NEW.kind,
            jsonb_build_object('email_event_id', NEW.id, 'recipient', NEW.recipient,
                               'campaign_id', NEW.campaign_id, 'occurred_at', NEW.occurred_at)
                || NEW.details);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER email_event_webhook AFTER INSERT ON app.email_events
    FOR EACH ROW EXECUTE FUNCTION app.email_event_webhook();

CREATE TABLE app.contacts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL,
    email      text NOT NULL,
    name       text,
    tags       text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Without the guard: emit alone is correct too, and costs an account without endpoints the payload
-- plus one probe.
CREATE FUNCTION app.contact_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.emit(
        NEW.account_id,
        CASE TG_OP WHEN 'INSERT' THEN 'contact.created' ELSE 'contact.updated' END,
        jsonb_build_object('contact_id', NEW.id, 'email', NEW.email, 'name', NEW.name,
                           'tags', to_jsonb(NEW.tags)));
    RETURN NULL;
END $$;

CREATE TRIGGER contact_webhook AFTER INSERT OR UPDATE ON app.contacts
    FOR EACH ROW EXECUTE FUNCTION app.contact_webhook();

-- A campaign's sends: the sending job inserts them a thousand rows per statement. A statement-level
-- trigger sees all of a statement's rows at once in its transition table and emits them with one
-- call of webhooks.emit_many: one pass over the endpoints per statement instead of one emit per
-- row. The guard, webhooks.subscribed_accounts (optional, as webhooks.subscribed is for a row
-- trigger), keeps only the rows of accounts with an endpoint for email.sent, so that a campaign of
-- an account without endpoints (most of them) builds no payload and writes nothing.
-- A bad event fails the statement with an error naming the field and the event's position among
-- the rows passed, which ORDER BY puts in the order the rows were inserted.
CREATE TABLE app.campaign_sends (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  text NOT NULL,
    campaign_id text NOT NULL,
    recipient   text NOT NULL,
    message_id  text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION app.campaign_sends_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_accounts text[];
BEGIN
    v_accounts := webhooks.subscribed_accounts(ARRAY(SELECT DISTINCT s.account_id FROM sent s),
                                               '{email.sent}');
    IF cardinality(v_accounts) > 0 THEN
        PERFORM webhooks.emit_many(ARRAY(
            SELECT ROW(s.account_id, 'email.sent',
                       jsonb_build_object('campaign_send_id', s.id, 'recipient', s.recipient,
                                          'campaign_id', s.campaign_id, 'message_id', s.message_id,
                                          'occurred_at', s.sent_at),
                       NULL)::webhooks.new_event
              FROM sent s WHERE s.account_id = ANY (v_accounts) ORDER BY s.id));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER campaign_sends_webhook AFTER INSERT ON app.campaign_sends
    REFERENCING NEW TABLE AS sent
    FOR EACH STATEMENT EXECUTE FUNCTION app.campaign_sends_webhook();
