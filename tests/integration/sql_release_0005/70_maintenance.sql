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
