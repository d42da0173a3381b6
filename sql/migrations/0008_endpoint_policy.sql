-- Per-endpoint delivery policy (custom headers, a payload filter, a retry schedule, a request
-- timeout) and the request timeout as a setting that SQL knows, so that a lease too short for the
-- longest timeout in force is refused where it is set (README, "Per-endpoint policy").
--
-- Every column is NULL or has a constant default, so adding them rewrites no table and emit,
-- claims and records running beside this migration are not blocked for longer than the ALTERs'
-- brief locks. NULL means "the global setting": retry_schedule falls back to
-- settings.retry_schedule, timeout_s to settings.request_timeout_s, filter to "every event".
-- Engines of the previous version read none of these columns and keep working beside this schema;
-- they send no custom headers and use their own WEBHOOKS_REQUEST_TIMEOUT_S until they are replaced.
--
-- filter may already exist (added with emit's evaluation of it); IF NOT EXISTS keeps either order.
ALTER TABLE webhooks.endpoints
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(headers) = 'object'),
    ADD COLUMN retry_schedule interval[]
        CHECK (cardinality(retry_schedule) BETWEEN 0 AND 20
               AND array_position(retry_schedule, NULL) IS NULL),
    ADD COLUMN timeout_s integer CHECK (timeout_s BETWEEN 1 AND 30),
    ADD COLUMN IF NOT EXISTS filter jsonpath;

-- The request timeout of every endpoint that sets none of its own.
ALTER TABLE webhooks.settings
    ADD COLUMN request_timeout_s integer NOT NULL DEFAULT 10
        CHECK (request_timeout_s BETWEEN 1 AND 30);
