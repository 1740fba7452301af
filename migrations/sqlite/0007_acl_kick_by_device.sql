-- The ACL kick triggers of 0006 found their devices with `(NEW.device_id IS NULL OR d.id =
-- NEW.device_id)`, which no index answers: every device rule scanned all of its tenant's devices
-- (a bulk import of 100k devices with rules took quadratic time). One trigger per case instead: a
-- device rule kicks its device (by primary key), a tenant rule every enabled device of the tenant.
DROP TRIGGER acl_rules_ins_kick;
DROP TRIGGER acl_rules_del_kick;

CREATE TRIGGER acl_rules_ins_kick_device AFTER INSERT ON acl_rules WHEN NEW.device_id IS NOT NULL BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.id = NEW.device_id AND d.tenant_id = NEW.tenant_id AND d.enabled;
END;
CREATE TRIGGER acl_rules_ins_kick_tenant AFTER INSERT ON acl_rules WHEN NEW.device_id IS NULL BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.tenant_id = NEW.tenant_id AND d.enabled;
END;
CREATE TRIGGER acl_rules_del_kick_device AFTER DELETE ON acl_rules WHEN OLD.device_id IS NOT NULL BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.id = OLD.device_id AND d.tenant_id = OLD.tenant_id AND d.enabled;
END;
CREATE TRIGGER acl_rules_del_kick_tenant AFTER DELETE ON acl_rules WHEN OLD.device_id IS NULL BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.tenant_id = OLD.tenant_id AND d.enabled;
END;
