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
