-- Familiar addresses without foreign keys (issue #14). Each row a login stored checked two: a
-- `FOR KEY SHARE` lock on its device's row and on its tenant's row, written into those tuples (the
-- same tenant row for every login of the fleet). In a reconnect storm of 100k devices that was
-- more than half of the familiar writer's time and a third of PostgreSQL's time per login.
-- What the keys gave, the addresses going with their device, is a statement trigger on `devices`
-- now. A login stored while its device is being deleted can leave a row behind, for an id that is
-- never reused and never read (every read joins `devices`).
ALTER TABLE familiar_addresses
    DROP CONSTRAINT familiar_addresses_tenant_id_fkey,
    DROP CONSTRAINT familiar_addresses_device_id_fkey;

-- The deleted devices' addresses, per tenant, fenced to it as every tenant-scoped write is (one
-- statement may delete several tenants' devices, e.g. an operator's, or a cascade from `tenants`
-- that runs outside the session's fence); the session's fence is put back afterwards.
CREATE FUNCTION mqgate_forget_addresses() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    fence TEXT := current_setting('mqgate.tenant_id', true);
    t BIGINT;
BEGIN
    FOR t IN SELECT DISTINCT g.tenant_id FROM gone g ORDER BY 1 LOOP
        PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
        DELETE FROM familiar_addresses f USING gone g
        WHERE f.tenant_id = t AND g.tenant_id = t AND f.device_id = g.id;
    END LOOP;
    PERFORM set_config('mqgate.tenant_id', COALESCE(fence, ''), true);
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_forget_addresses AFTER DELETE ON devices
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION mqgate_forget_addresses();
