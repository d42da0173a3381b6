-- Named statements the engine runs (engine/db/store.py wraps each in a typed coroutine).
-- Each is one call of a function in sql/functions/, so the logic stays in SQL and is tested there.

-- name: claim
SELECT * FROM webhooks.claim_v2($1::uuid[], $2::integer[], $3::integer, $4::integer, $5::uuid);

-- name: record_attempts
SELECT * FROM webhooks.record_attempts_v1($1::bigint[], $2::uuid[], $3::timestamptz[], $4::integer[],
    $5::integer[], $6::text[], $7::text[], $8::text[], $9::double precision[]);

-- name: release
SELECT webhooks.release_v1($1::bigint[], $2::uuid[]);

-- name: set_engine_waiting
SELECT webhooks.set_engine_waiting_v1($1::boolean);

-- name: refresh_engine_waiting
SELECT webhooks.refresh_engine_waiting_v1();

-- name: next_due_at
SELECT webhooks.next_due_at_v1();

-- name: queue_depths
-- One pass over the hot table (live deliveries only) and the intake for the metrics gauges; see
-- QueueDepths.
SELECT count(*) FILTER (WHERE due_at <= now()) AS due,
       count(*) FILTER (WHERE due_at > now() AND lease_token IS NOT NULL) AS in_flight,
       count(*) FILTER (WHERE due_at > now() AND lease_token IS NULL) AS retry_waiting,
       (SELECT count(*) FROM webhooks.intake) AS accepted,
       pg_notification_queue_usage() AS notification_queue_usage
  FROM webhooks.deliveries;

-- name: hot_table_dead_rows
-- The statistics system's count, which lags (idle sessions report late), for
-- engine/delivery/idle_vacuum.py; see docs/decisions/0003-idle-vacuum.md.
SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'webhooks.deliveries'::regclass;

-- name: vacuum_hot_table
-- Not a function: VACUUM cannot run inside one. INDEX_CLEANUP ON because the index entries are
-- what it is for (Postgres may otherwise skip the indexes when few heap pages have dead rows);
-- SKIP_LOCKED so it never queues behind autovacuum doing the same work.
VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) webhooks.deliveries;

-- name: settings
SELECT allow_http, allow_private_networks, retry_schedule, max_payload_bytes, retention, lease_duration,
       request_timeout_s, webhooks.longest_timeout_s(request_timeout_s) AS longest_timeout_s
  FROM webhooks.settings;

-- name: maintain
SELECT webhooks.maintain_v1();

-- name: purge_account_retention
SELECT webhooks.purge_account_retention_v1($1::integer);

-- name: emit
SELECT webhooks.emit($1::text, $2::text, $3::jsonb, $4::text);

-- name: create_endpoint
SELECT id, secret FROM webhooks.create_endpoint($1::text, $2::text, $3::text[], $4::text, $5::text,
    $6::integer, $7::text, $8::double precision, $9::jsonb, webhooks.parse_filter($10::text),
    $11::interval[], $12::integer);

-- name: update_endpoint
SELECT id FROM webhooks.update_endpoint($1::uuid, $2::text, $3::text[], $4::text, $5::integer, $6::text,
    $7::double precision, $8::jsonb, webhooks.parse_filter($9::text), $10::interval[], $11::integer,
    $12::text[]);

-- name: disable_endpoint
SELECT id FROM webhooks.disable_endpoint($1::uuid, $2::text);

-- name: enable_endpoint
SELECT id FROM webhooks.enable_endpoint($1::uuid);

-- name: delete_endpoint
SELECT webhooks.delete_endpoint($1::uuid);

-- name: rotate_secret
SELECT webhooks.rotate_secret($1::uuid, $2::interval, $3::text);

-- name: redeliver
SELECT webhooks.redeliver($1::bigint);

-- name: recover
SELECT webhooks.recover($1::uuid, $2::timestamptz);

-- name: send_test
SELECT webhooks.send_test($1::uuid, $2::text);

-- name: accepted_events
SELECT * FROM webhooks.accepted_events_v1($1::text);

-- name: list_event_types
SELECT * FROM webhooks.list_event_types_v1($1::text);

-- name: get_endpoint
SELECT * FROM webhooks.get_endpoint_v1($1::uuid, $2::boolean);

-- name: list_endpoints
SELECT * FROM webhooks.list_endpoints_v1($1::text, $2::boolean, $3::timestamptz, $4::uuid, $5::integer);

-- name: get_delivery
SELECT * FROM webhooks.get_delivery_v2($1::bigint);

-- name: delivery_attempts
SELECT * FROM webhooks.delivery_attempts_v1($1::bigint);

-- name: list_deliveries
SELECT * FROM webhooks.list_deliveries_v2($1::text, $2::uuid, $3::text, $4::timestamptz, $5::text,
    $6::timestamptz, $7::bigint, $8::integer);

-- name: attempts_after
SELECT * FROM webhooks.attempts_after_v1($1::bigint, $2::bigint, $3::uuid, $4::text, $5::text,
    $6::integer);

-- name: last_attempt_id
SELECT webhooks.last_attempt_id_v1();

-- name: erase_recipient
SELECT * FROM webhooks.erase_recipient_v1($1::text, $2::text);

-- name: set_account_retention
SELECT webhooks.set_account_retention($1::text, $2::interval);
