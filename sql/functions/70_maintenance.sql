-- Partition upkeep, run by the engine every few minutes and by `migrate`: creates daily partitions
-- ahead, and drops those past settings.retention, except what a live delivery still needs (its event
-- payload, its earlier attempts).

CREATE OR REPLACE FUNCTION webhooks.partition_bound(p_day date)
RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT (p_day::timestamp AT TIME ZONE 'UTC')
$$;

CREATE OR REPLACE FUNCTION webhooks.maintain_v1(p_days_ahead integer DEFAULT 7)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_today     date := (now() AT TIME ZONE 'UTC')::date;
    v_cutoff    timestamptz;
    v_created   text[] := '{}';
    v_dropped   text[] := '{}';
    v_parent    text;
    v_column    text;
    v_name      text;
    v_day       date;
    v_keep_from timestamptz;
    v_part      record;
BEGIN
    SELECT now() - s.retention INTO v_cutoff FROM webhooks.settings s;
    -- Serialise concurrent maintainers (two engines, or migrate beside a running engine).
    PERFORM pg_advisory_xact_lock(hashtext('webhooks.maintain'));

    FOR v_parent, v_column IN VALUES ('events', 'created_at'), ('attempts', 'started_at'),
                                     ('delivery_outcomes', 'ended_at') LOOP
        FOR v_day IN SELECT v_today + g FROM generate_series(-1, p_days_ahead) AS g LOOP
            v_name := format('%s_p%s', v_parent, to_char(v_day, 'YYYYMMDD'));
            CONTINUE WHEN to_regclass(format('webhooks.%I', v_name)) IS NOT NULL;
            -- Rows that landed in the default partition for this day would make the new partition
            -- fail; leave that day to the default partition.
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM webhooks.%I WHERE %I >= $1 AND %I < $2)',
                           v_parent || '_default', v_column, v_column)
               INTO STRICT v_part USING webhooks.partition_bound(v_day), webhooks.partition_bound(v_day + 1);
            CONTINUE WHEN v_part.exists;
            EXECUTE format('CREATE TABLE webhooks.%I PARTITION OF webhooks.%I FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_parent, webhooks.partition_bound(v_day), webhooks.partition_bound(v_day + 1));
            v_created := v_created || v_name;
        END LOOP;

        v_keep_from := CASE v_parent
            WHEN 'events'   THEN (SELECT min(d.event_created_at) FROM webhooks.deliveries d)
            WHEN 'attempts' THEN (SELECT min(d.created_at) FROM webhooks.deliveries d)
            ELSE NULL END;
        v_keep_from := least(v_cutoff, coalesce(v_keep_from, v_cutoff));
        FOR v_part IN
            SELECT c.relname FROM pg_inherits i
              JOIN pg_class c ON c.oid = i.inhrelid
              JOIN pg_class p ON p.oid = i.inhparent
              JOIN pg_namespace n ON n.oid = p.relnamespace
             WHERE n.nspname = 'webhooks' AND p.relname = v_parent
               AND c.relname ~ ('^' || v_parent || '_p[0-9]{8}$')
        LOOP
            v_day := to_date(right(v_part.relname, 8), 'YYYYMMDD');
            IF webhooks.partition_bound(v_day + 1) <= v_keep_from THEN
                EXECUTE format('DROP TABLE webhooks.%I', v_part.relname);
                v_dropped := v_dropped || v_part.relname::text;
            END IF;
        END LOOP;
        EXECUTE format('DELETE FROM webhooks.%I WHERE %I < $1', v_parent || '_default', v_column)
          USING v_keep_from;
    END LOOP;

    DELETE FROM webhooks.idempotency_keys k WHERE k.created_at < v_cutoff;
    RETURN jsonb_build_object('created', to_jsonb(v_created), 'dropped', to_jsonb(v_dropped));
END $$;

-- Per-account retention (table account_retention): an account may keep its delivery history for
-- less than settings.retention, never more. NULL removes the account's own setting.
CREATE OR REPLACE FUNCTION webhooks.set_account_retention(p_account_id text, p_retention interval)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_global interval;
BEGIN
    PERFORM webhooks.check_account_id(p_account_id);
    IF p_retention IS NULL THEN
        DELETE FROM webhooks.account_retention r WHERE r.account_id = p_account_id;
        RETURN;
    END IF;
    SELECT s.retention INTO v_global FROM webhooks.settings s;
    IF p_retention <= interval '0' THEN
        PERFORM webhooks.invalid('retention', format('must be positive, got %s', p_retention));
    ELSIF p_retention >= v_global THEN
        PERFORM webhooks.invalid('retention', format(
            '%s is not shorter than the global retention %s (webhooks.settings.retention)',
            p_retention, v_global));
    END IF;
    INSERT INTO webhooks.account_retention AS r (account_id, retention)
    VALUES (p_account_id, p_retention)
    ON CONFLICT (account_id) DO UPDATE SET retention = excluded.retention, updated_at = now();
END $$;

-- One bounded batch of per-account retention: for each account with a retention of its own (the
-- shorter of it and the global one applies), deletes up to p_batch of its ended deliveries created
-- before its cutoff, with their attempts and their events (unless a live delivery still needs the
-- event), and its idempotency keys older than the cutoff. Returns the rows deleted; the engine
-- calls it again, each call its own short transaction, until it returns 0.
--
-- Day partitions hold every account's rows, so this deletes rows where the global retention drops
-- partitions. The account's rows are found through its endpoints' ended deliveries, by the
-- (endpoint_id, created_at) index of delivery_outcomes; every stored event has a delivery. An
-- account being erased at the moment is skipped until the next call (webhooks.erase_recipient
-- holds its lock).
CREATE OR REPLACE FUNCTION webhooks.purge_account_retention_v1(p_batch integer DEFAULT 500)
RETURNS bigint LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    v_global  interval;
    v_account record;
    v_cutoff  timestamptz;
    v_deleted bigint := 0;
    v_n       bigint;
BEGIN
    SELECT s.retention INTO v_global FROM webhooks.settings s;
    FOR v_account IN SELECT r.account_id, least(r.retention, v_global) AS retention
                       FROM webhooks.account_retention r ORDER BY r.account_id LOOP
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(webhooks.account_lock_key_v1(v_account.account_id));
        v_cutoff := now() - v_account.retention;
        WITH batch AS (
            SELECT o.delivery_id, o.ended_at, o.event_id, o.event_created_at
              FROM webhooks.endpoints e
             CROSS JOIN LATERAL (
                SELECT o.delivery_id, o.ended_at, o.event_id, o.event_created_at
                  FROM webhooks.delivery_outcomes o
                 WHERE o.endpoint_id = e.id AND o.created_at < v_cutoff
                 ORDER BY o.created_at, o.delivery_id
                 LIMIT p_batch) o
             WHERE e.account_id = v_account.account_id
             LIMIT p_batch
        ), outcomes AS (
            DELETE FROM webhooks.delivery_outcomes o USING batch b
             WHERE o.delivery_id = b.delivery_id AND o.ended_at = b.ended_at
            RETURNING 1
        ), attempts AS (
            DELETE FROM webhooks.attempts a USING batch b
             WHERE a.delivery_id = b.delivery_id
            RETURNING 1
        ), events AS (
            DELETE FROM webhooks.events ev
             USING (SELECT DISTINCT b.event_id, b.event_created_at FROM batch b) b
             WHERE ev.id = b.event_id AND ev.created_at = b.event_created_at
               AND ev.account_id = v_account.account_id
               AND NOT EXISTS (SELECT FROM webhooks.deliveries d
                                WHERE d.event_id = ev.id AND d.event_created_at = ev.created_at)
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM outcomes) + (SELECT count(*) FROM attempts)
               + (SELECT count(*) FROM events) INTO v_n;
        v_deleted := v_deleted + v_n;

        WITH gone AS (
            DELETE FROM webhooks.idempotency_keys k
             WHERE (k.account_id, k.key) IN (
                SELECT k2.account_id, k2.key FROM webhooks.idempotency_keys k2
                 WHERE k2.account_id = v_account.account_id AND k2.created_at < v_cutoff
                 LIMIT p_batch)
            RETURNING 1
        )
        SELECT count(*) INTO v_n FROM gone;
        v_deleted := v_deleted + v_n;
    END LOOP;
    RETURN v_deleted;
END $$;
