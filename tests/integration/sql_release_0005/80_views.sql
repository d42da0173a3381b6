-- What operators query (README "Delivery log"). One row per delivery, live or ended.
CREATE OR REPLACE VIEW webhooks.delivery_log AS
SELECT d.id                AS delivery_id,
       d.event_id,
       d.event_type,
       d.endpoint_id,
       e.account_id,
       e.url               AS endpoint_url,
       CASE WHEN d.lease_token IS NOT NULL AND d.due_at > now() THEN 'in_flight'
            WHEN d.attempts = 0 THEN 'pending'
            ELSE 'retrying' END AS status,
       d.attempts,
       d.last_status       AS last_status_code,
       d.last_error,
       d.created_at,
       d.last_attempt_at,
       CASE WHEN d.lease_token IS NULL OR d.due_at <= now() THEN d.due_at END AS next_attempt_at,
       NULL::timestamptz   AS ended_at
  FROM webhooks.deliveries d
  JOIN webhooks.endpoints e ON e.id = d.endpoint_id
 WHERE d.attempts >= 0  -- true of every row; lets a filter on endpoint_id use its index (0003)
UNION ALL
SELECT o.delivery_id,
       o.event_id,
       o.event_type,
       o.endpoint_id,
       e.account_id,
       e.url,
       o.status,
       o.attempts,
       o.last_status,
       o.last_error,
       o.created_at,
       CASE WHEN o.attempts > 0 THEN o.ended_at END,
       NULL::timestamptz,
       o.ended_at
  FROM webhooks.delivery_outcomes o
  JOIN webhooks.endpoints e ON e.id = o.endpoint_id;

-- Deliveries that ended without success: gave up after all retries, 410, or cancelled by a disable.
CREATE OR REPLACE VIEW webhooks.failed_deliveries AS
SELECT * FROM webhooks.delivery_log WHERE status IN ('failed', 'cancelled');
