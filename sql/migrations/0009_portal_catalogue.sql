-- The customer's side (issue 16) and the catalogue as a contract (issue 17 part 2).
--
-- event_types gains a JSON Schema for each event's data, an example that matches it (test events
-- send it), and whether the type is operational: sent to the operator's account about customers'
-- endpoints, never emitted by the app. Three operational types join the catalogue.
-- events gains test: a test event (webhooks.send_test) is marked in the envelope and in the log.
-- settings gains operational_account: where the operational events go; NULL turns them off.
--
-- Every column comes with a constant default or none, so no table is rewritten: events is
-- partitioned and large, and only its catalogue entry changes. The statements lock each table
-- briefly (emit's inserts into events wait for this transaction's commit).

ALTER TABLE webhooks.settings
    ADD COLUMN operational_account text
        CHECK (operational_account IS NULL
               OR (btrim(operational_account) <> '' AND length(operational_account) <= 200));

ALTER TABLE webhooks.events ADD COLUMN test boolean NOT NULL DEFAULT false;

ALTER TABLE webhooks.event_types
    ADD COLUMN schema jsonb,
    ADD COLUMN example jsonb,
    ADD COLUMN operational boolean NOT NULL DEFAULT false;

INSERT INTO webhooks.event_types (name, description, operational) VALUES
    ('endpoint.disabled',  'A customer''s endpoint was disabled by the engine: it answered 410 Gone, or failed for settings.disable_after without a success.', true),
    ('delivery.failed',    'A delivery to a customer''s endpoint failed for good: its retries ran out, or the endpoint answered 410 Gone.', true),
    ('endpoint.recovered', 'A customer''s endpoint that had a delivery fail for good answered 2xx again.', true);

-- The schemas describe what sql/examples/misarmail_app.sql's triggers and 55_operational.sql
-- build; tests/integration/test_event_catalogue.py validates those payloads and every example
-- against them. additionalProperties stays open: an app may add details (email_events.details).
WITH email AS (
    SELECT jsonb_build_object(
        'email_event_id', jsonb_build_object('type', 'integer', 'description', 'The email event''s id in MisarMail.'),
        'recipient',      jsonb_build_object('type', 'string', 'description', 'The recipient''s email address.'),
        'campaign_id',    jsonb_build_object('type', jsonb_build_array('string', 'null'), 'description', 'The campaign the email belongs to, if any.'),
        'occurred_at',    jsonb_build_object('type', 'string', 'format', 'date-time', 'description', 'When it happened.')
    ) AS props
)
UPDATE webhooks.event_types t SET
    schema = jsonb_build_object(
        '$schema', 'https://json-schema.org/draft/2020-12/schema',
        'type', 'object',
        'required', CASE WHEN t.name = 'email.bounced'
                         THEN '["email_event_id","recipient","campaign_id","occurred_at","bounce_type"]'::jsonb
                         ELSE '["email_event_id","recipient","campaign_id","occurred_at"]'::jsonb END,
        'properties', email.props || CASE t.name
            WHEN 'email.bounced' THEN jsonb_build_object('bounce_type', jsonb_build_object(
                'enum', '["hard","soft"]'::jsonb,
                'description', '"hard": the address does not exist; "soft": a temporary refusal.'))
            WHEN 'email.clicked' THEN jsonb_build_object('url', jsonb_build_object(
                'type', 'string', 'description', 'The link that was clicked, when the app adds it.'))
            ELSE '{}'::jsonb END),
    example = jsonb_build_object('email_event_id', 1042, 'recipient', 'reader@example.com',
                                 'campaign_id', 'cmp_winter', 'occurred_at', '2026-11-29T20:52:46.989276+00:00')
              || CASE t.name WHEN 'email.bounced' THEN '{"bounce_type": "hard"}'::jsonb
                             WHEN 'email.clicked' THEN '{"url": "https://example.com/offer"}'::jsonb
                             ELSE '{}'::jsonb END
  FROM email
 WHERE t.name LIKE 'email.%';

UPDATE webhooks.event_types t SET
    schema = '{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
               "required": ["contact_id", "email", "name", "tags"],
               "properties": {
                 "contact_id": {"type": "integer", "description": "The contact''s id in MisarMail."},
                 "email": {"type": "string", "description": "The contact''s email address."},
                 "name": {"type": ["string", "null"], "description": "The contact''s name, if known."},
                 "tags": {"type": "array", "items": {"type": "string"}, "description": "The contact''s tags."}}}',
    example = '{"contact_id": 7, "email": "reader@example.com", "name": "Ada Reader", "tags": ["newsletter"]}'
 WHERE t.name LIKE 'contact.%';

UPDATE webhooks.event_types t SET
    schema = '{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
               "required": ["automation_id", "contact_id", "email", "triggered_at"],
               "properties": {
                 "automation_id": {"type": "string", "description": "The automation that ran."},
                 "contact_id": {"type": "integer", "description": "The contact it ran for."},
                 "email": {"type": "string", "description": "The contact''s email address."},
                 "triggered_at": {"type": "string", "format": "date-time", "description": "When it was triggered."}}}',
    example = '{"automation_id": "aut_welcome", "contact_id": 7, "email": "reader@example.com",
                "triggered_at": "2026-11-29T20:52:46.989276+00:00"}'
 WHERE t.name = 'automation.triggered';

-- The operational events name the customer's endpoint and account (data.account_id: the account
-- whose owner MisarMail tells; the envelope's account_id is the operational account).
WITH ep AS (
    SELECT '{"endpoint_id": {"type": "string", "format": "uuid", "description": "The customer''s endpoint."},
             "account_id": {"type": "string", "description": "The account the endpoint belongs to."},
             "url": {"type": "string", "description": "The endpoint''s URL."}}'::jsonb AS props,
           '{"endpoint_id": "0b6f2a52-3c1e-4a8e-9a57-1f0d3c2b9e11", "account_id": "acct_42",
             "url": "https://example.com/hooks"}'::jsonb AS example
)
UPDATE webhooks.event_types t SET
    schema = jsonb_build_object(
        '$schema', 'https://json-schema.org/draft/2020-12/schema',
        'type', 'object',
        'required', '["endpoint_id","account_id","url"]'::jsonb || CASE t.name
            WHEN 'endpoint.disabled' THEN '["reason","disabled_at"]'::jsonb
            WHEN 'endpoint.recovered' THEN '["failing_since","recovered_at"]'::jsonb
            ELSE '["delivery_id","event_id","event_type","attempts","last_status_code","last_error","failed_at"]'::jsonb END,
        'properties', ep.props || CASE t.name
            WHEN 'endpoint.disabled' THEN
                '{"reason": {"type": "string", "description": "Why the engine disabled it."},
                  "disabled_at": {"type": "string", "format": "date-time"}}'::jsonb
            WHEN 'endpoint.recovered' THEN
                '{"failing_since": {"type": "string", "format": "date-time", "description": "Its first failure since its last success."},
                  "recovered_at": {"type": "string", "format": "date-time"}}'::jsonb
            ELSE
                '{"delivery_id": {"type": "integer", "description": "The delivery that failed (webhooks.delivery_log)."},
                  "event_id": {"type": "string", "description": "The failed event''s id, as its envelope''s id."},
                  "event_type": {"type": "string"},
                  "attempts": {"type": "integer", "minimum": 1},
                  "last_status_code": {"type": "integer", "description": "0 when no response arrived."},
                  "last_error": {"type": ["string", "null"]},
                  "failed_at": {"type": "string", "format": "date-time"}}'::jsonb END),
    example = ep.example || CASE t.name
        WHEN 'endpoint.disabled' THEN
            '{"reason": "endpoint answered 410 Gone", "disabled_at": "2026-11-29T20:52:46.989276+00:00"}'::jsonb
        WHEN 'endpoint.recovered' THEN
            '{"failing_since": "2026-11-29T18:02:11.104522+00:00", "recovered_at": "2026-11-29T20:52:46.989276+00:00"}'::jsonb
        ELSE
            '{"delivery_id": 8812, "event_id": "evt_1042", "event_type": "email.bounced", "attempts": 6,
              "last_status_code": 500, "last_error": null, "failed_at": "2026-11-29T20:52:46.989276+00:00"}'::jsonb END
  FROM ep
 WHERE t.operational;

UPDATE webhooks.event_types SET description = CASE name
    WHEN 'email.sent'           THEN 'An email was handed to the receiving mail server.'
    WHEN 'email.opened'         THEN 'A recipient opened an email.'
    WHEN 'email.clicked'        THEN 'A recipient clicked a tracked link.'
    WHEN 'email.bounced'        THEN 'An email bounced; data.bounce_type is "hard" (the address does not exist) or "soft" (a temporary refusal).'
    WHEN 'email.unsubscribed'   THEN 'A recipient unsubscribed.'
    WHEN 'email.spam_complaint' THEN 'A recipient reported an email as spam.'
    WHEN 'automation.triggered' THEN 'An automation was triggered for a contact.'
    WHEN 'contact.created'      THEN 'A contact was created.'
    WHEN 'contact.updated'      THEN 'A contact was updated.'
    ELSE description END;

ALTER TABLE webhooks.event_types
    ALTER COLUMN schema SET NOT NULL,
    ALTER COLUMN example SET NOT NULL,
    ADD CONSTRAINT event_types_schema_object CHECK (jsonb_typeof(schema) = 'object'),
    ADD CONSTRAINT event_types_example_object CHECK (jsonb_typeof(example) = 'object');
