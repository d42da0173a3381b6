-- The index the claim counts an endpoint's running leases by (sql/functions/40_claim.sql), in place
-- of deliveries_leased_idx. That index's predicate (a token, not ready) shared "not ready" with
-- deliveries_waiting_idx, so the count could be planned on either. The claim's plans are generic
-- and made once per connection, and one made while the hot table's statistics said it was empty
-- (as the engine's idle vacuum leaves them, the events waiting in the intake) costed both partial
-- indexes as empty and could take the waiting set: then every endpoint's count read every running
-- lease and every scheduled retry, of all endpoints, until the statistics changed.
--
-- This predicate is implied by the count's conditions (a token, and due_at compared with now(),
-- which holds only for a due_at that is not NULL) and by no other statement's: the result and the
-- release find their rows by id and token, without due_at. No other partial index's predicate is
-- implied by the count's, so this is the one index it can be planned on. A row that has a token
-- and a running lease is in it whether or not it is ready: an engine of an earlier version leased
-- rows without clearing ready, and those are running too.
--
-- Built inside the migration's transaction: writes to the deliveries wait for the build, which
-- reads the hot table once (small while an engine keeps up; the upgrade tests run it with
-- deliveries in flight). Claims of an engine of the previous version run the new claim body, which
-- the function files replace in the same run.
CREATE INDEX deliveries_leases_idx ON webhooks.deliveries (endpoint_id, due_at)
    WHERE lease_token IS NOT NULL AND due_at IS NOT NULL;
DROP INDEX webhooks.deliveries_leased_idx;
