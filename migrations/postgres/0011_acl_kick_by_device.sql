-- The ACL kick of 0008 found its devices with `(r.device_id IS NULL OR d.id = r.device_id)`; once
-- PL/pgSQL settles on a generic plan that cannot use the primary key, so every device rule scanned
-- all of its tenant's devices (a bulk import of 100k devices with rules took quadratic time). The
-- two cases apart: a device rule kicks its device (by primary key), a tenant rule every enabled
-- device of the tenant.
CREATE OR REPLACE FUNCTION mqgate_kick_acl() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r acl_rules;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF r.device_id IS NULL THEN
        INSERT INTO emqx_kicks (tenant_id, client_id, reason)
            SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
            WHERE d.tenant_id = r.tenant_id AND d.enabled;
    ELSE
        INSERT INTO emqx_kicks (tenant_id, client_id, reason)
            SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
            WHERE d.id = r.device_id AND d.tenant_id = r.tenant_id AND d.enabled;
    END IF;
    RETURN NULL;
END $$;
