-- Several engines on one database (issue 14): an endpoint's max_in_flight and rate_limit_per_s
-- hold across all of them together. claim_v2 (sql/functions/40_claim.sql) enforces both inside
-- the claim, so no engine owns an endpoint and nothing is handed over when one dies: its leases
-- simply run out. See docs/decisions/0008-several-engines.md.
--
-- The rows an endpoint has in flight, across engines: leased (a token, not ready) and the lease
-- still running. The claim counts them per endpoint before it leases more. emit's rows carry no
-- token, so the app's inserts never pay for this index; a claim's lease adds the entry, and the
-- result that deletes the row or schedules its retry (token cleared) ends it. The predicate names
-- "NOT ready" as well as the token so that no statement keyed by lease token alone (the record,
-- the release) can be planned as a scan of this index.
CREATE INDEX deliveries_leased_idx ON webhooks.deliveries (endpoint_id, due_at)
    WHERE lease_token IS NOT NULL AND NOT ready;

-- The rate limit's schedule, one row per rate-limited endpoint that has been claimed for: the
-- earliest time the next attempt may start (a theoretical arrival time, as GCRA keeps it). Only
-- claims read and write it, under the endpoint's claim lock, so emit never touches it and the
-- app's commits never wait on it. A row is written the first time a claim leases for the
-- endpoint; a deleted endpoint's row goes with it.
CREATE TABLE webhooks.endpoint_pacing (
    endpoint_id  uuid PRIMARY KEY REFERENCES webhooks.endpoints (id) ON DELETE CASCADE,
    next_slot_at timestamptz NOT NULL
);
