-- A running engine reloads settings when they change (a hint; it also re-reads them periodically).
CREATE OR REPLACE FUNCTION webhooks.settings_changed()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    PERFORM pg_notify('webhooks_settings', '');
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER settings_changed BEFORE UPDATE ON webhooks.settings
    FOR EACH ROW EXECUTE FUNCTION webhooks.settings_changed();

-- A lease too short for the longest request timeout in force is refused where either side changes
-- (webhooks.check_lease): the settings' lease or default timeout here, an endpoint's own timeout
-- below. The engine checks again at start, for a database that was left so by an older version.
CREATE OR REPLACE FUNCTION webhooks.settings_checked()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.check_lease(
        NEW.lease_duration, webhooks.longest_timeout_s(NEW.request_timeout_s),
        CASE WHEN NEW.lease_duration IS DISTINCT FROM OLD.lease_duration THEN 'lease_duration'
             ELSE 'request_timeout_s' END);
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER settings_checked BEFORE UPDATE ON webhooks.settings
    FOR EACH ROW EXECUTE FUNCTION webhooks.settings_checked();

CREATE OR REPLACE FUNCTION webhooks.endpoint_timeout_checked()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhooks.check_lease((SELECT s.lease_duration FROM webhooks.settings s), NEW.timeout_s,
                                 'timeout_s');
    RETURN NEW;
END $$;

-- Only when timeout_s is written: emit and the engine's writes to endpoints never name it.
CREATE OR REPLACE TRIGGER endpoint_timeout_checked
    BEFORE INSERT OR UPDATE OF timeout_s ON webhooks.endpoints
    FOR EACH ROW WHEN (NEW.timeout_s IS NOT NULL)
    EXECUTE FUNCTION webhooks.endpoint_timeout_checked();
