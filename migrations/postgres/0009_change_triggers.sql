-- Changes announce themselves from triggers, as SQLite's triggers write `registry_changes`: a
-- write announces what it touched whoever makes it (mqgate, the CLI, a hand-written statement),
-- in the same transaction, so the notification is delivered with the commit and never for a
-- change that rolled back. The payloads are the ones the listener parses (`src/registry/pg.rs`):
--   d:<tenant>:<client id>   one device (the device, its credentials, rules and limit)
--   t:<tenant>               every device of the tenant (tenant-wide rules and limit)
--   c:<tenant>               the tenant's certificate authorities, CRLs or device certificates
-- A child row that goes with its removed device announces nothing of its own: the device's row
-- announced the removal (the device is gone by the time the cascade reaches the child).
-- Lockouts (`l:…`) are not registry rows and are still announced by the writer.

-- A device row itself.
CREATE FUNCTION mqgate_announce_device() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d devices;
BEGIN
    IF TG_OP = 'DELETE' THEN d := OLD; ELSE d := NEW; END IF;
    PERFORM pg_notify('mqgate_registry', 'd:' || d.tenant_id || ':' || d.client_id);
    RETURN NULL;
END $$;
CREATE TRIGGER devices_announce AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION mqgate_announce_device();

-- A row that belongs to a device (`device_id`) or, without one, to the whole tenant.
CREATE FUNCTION mqgate_announce_scope(p_tenant BIGINT, p_device BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c TEXT;
BEGIN
    IF p_device IS NULL THEN
        PERFORM pg_notify('mqgate_registry', 't:' || p_tenant);
        RETURN;
    END IF;
    SELECT d.client_id INTO c FROM devices d WHERE d.tenant_id = p_tenant AND d.id = p_device;
    IF c IS NOT NULL THEN
        PERFORM pg_notify('mqgate_registry', 'd:' || p_tenant || ':' || c);
    END IF;
END $$;

CREATE FUNCTION mqgate_announce_device_child() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM mqgate_announce_scope(OLD.tenant_id, OLD.device_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM mqgate_announce_scope(NEW.tenant_id, NEW.device_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER credentials_announce AFTER INSERT OR UPDATE OR DELETE ON credentials
    FOR EACH ROW EXECUTE FUNCTION mqgate_announce_device_child();
CREATE TRIGGER acl_rules_announce AFTER INSERT OR UPDATE OR DELETE ON acl_rules
    FOR EACH ROW EXECUTE FUNCTION mqgate_announce_device_child();
CREATE TRIGGER rate_limits_announce AFTER INSERT OR UPDATE OR DELETE ON rate_limits
    FOR EACH ROW EXECUTE FUNCTION mqgate_announce_device_child();

-- Certificate authorities and device certificates (their rows go with the tenant or device).
CREATE FUNCTION mqgate_announce_certs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mqgate_registry', 'c:' || NEW.tenant_id);
    RETURN NULL;
END $$;
CREATE TRIGGER cas_announce AFTER INSERT OR UPDATE ON cas
    FOR EACH ROW EXECUTE FUNCTION mqgate_announce_certs();
CREATE TRIGGER device_certs_announce AFTER INSERT OR UPDATE ON device_certs
    FOR EACH ROW EXECUTE FUNCTION mqgate_announce_certs();
