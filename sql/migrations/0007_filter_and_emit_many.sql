-- A per-endpoint payload filter (issue 17): an endpoint with a filter receives only the events whose
-- payload matches it, with the semantics of `payload @@ filter`. NULL, the default, takes every
-- event of the subscribed types. emit and emit_many evaluate it only for endpoints that subscribe to
-- the event's type, so the app's no-subscriber path reads nothing new.
--
-- NULL default: adding the column rewrites nothing and takes the table's lock only for the catalog
-- change. An engine of the previous version never reads it; emit's previous body ignores it until
-- the function files are re-applied after this migration, as for any function change.
ALTER TABLE webhooks.endpoints ADD COLUMN filter jsonpath;

-- One event for webhooks.emit_many (statement-level triggers emit a set of them at once): the
-- arguments of webhooks.emit as a row, so that Postgres checks each field's type and an array of
-- them keeps each event's position, which emit_many's errors name.
CREATE TYPE webhooks.new_event AS (
    account_id      text,
    event_type      text,
    payload         jsonb,
    idempotency_key text
);
