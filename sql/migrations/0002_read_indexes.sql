-- Indexes for the paged reads of the CLI and the admin API (functions/85_reads.sql).
-- Pages are keyset-ordered by (created_at, id), so each list reads about one page of index entries
-- however long the history is. The hot table webhooks.deliveries gets none on purpose: it holds
-- live rows only, and every index there is paid for by webhooks.emit in the app's transactions.

-- endpoints list without an account filter (with one, endpoints_account_idx serves).
CREATE INDEX endpoints_created_idx ON webhooks.endpoints (created_at, id) WHERE deleted_at IS NULL;

-- The delivery log, newest first: all of it, per endpoint, and what did not succeed (failed or
-- cancelled: rare among the delivered, and what operators look for).
CREATE INDEX delivery_outcomes_created_idx ON webhooks.delivery_outcomes (created_at, delivery_id);
CREATE INDEX delivery_outcomes_endpoint_created_idx
    ON webhooks.delivery_outcomes (endpoint_id, created_at, delivery_id);
CREATE INDEX delivery_outcomes_unsuccessful_idx
    ON webhooks.delivery_outcomes (created_at, delivery_id) WHERE status <> 'delivered';
