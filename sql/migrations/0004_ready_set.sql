-- The ready set: a claim walks only deliveries that may go now, never those waiting for a retry or
-- leased to an attempt (on a normal day thousands of endpoints are down, each with a retry
-- waiting, and walking them slowed every claim). See docs/decisions/0006-ready-set.md.
--
-- ready is true for a delivery that is due (pending, released, or a retry whose time came) and
-- false for one that is leased or waiting for its retry. Claiming and scheduling a retry clear it;
-- each claim first sets it again for the rows whose due_at has come (a retry's time, or the
-- expiry of a lease whose engine died), and release gives rows back ready.
--
-- A constant default adds the column without rewriting the table, and emit's inserts (new
-- deliveries, due at once) need not name it. The table is locked from here to the commit, so no
-- engine claims or records while live rows are classified: a row is ready exactly when it is due,
-- which covers pending rows, retries that are due, and leases that have expired; a lease still
-- running and a retry still waiting are not.
ALTER TABLE webhooks.deliveries ADD COLUMN ready boolean NOT NULL DEFAULT true;
UPDATE webhooks.deliveries d SET ready = false WHERE d.due_at > now();

-- The claim's loose index scan and its per-endpoint picks, over ready rows only.
CREATE INDEX deliveries_ready_idx ON webhooks.deliveries (endpoint_id, id) WHERE ready;
-- The waiting set in order of due time: the claim's promotion step and the engine's retry timer.
-- emit's rows are ready, so the app's inserts never pay for this index.
CREATE INDEX deliveries_waiting_idx ON webhooks.deliveries (due_at) WHERE NOT ready;

-- Served by the two indexes above: the claim no longer reads due rows by (endpoint_id, due_at),
-- and nothing reads all live rows in order of due time. Every index here is paid for by each
-- delivery emit writes. deliveries_endpoint_id_idx stays: strict ordering's head lookup and the
-- operators' reads by endpoint need every live row of an endpoint, ready or not.
DROP INDEX webhooks.deliveries_endpoint_due_idx;
DROP INDEX webhooks.deliveries_due_idx;
