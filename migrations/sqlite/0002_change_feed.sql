-- The change feed a running server polls (SQLite has no NOTIFY, and the CLI is another process).
CREATE TABLE registry_changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL,
    client_id TEXT              -- NULL: every device of the tenant (tenant-wide rules)
);

CREATE TRIGGER devices_ins_feed AFTER INSERT ON devices BEGIN
    INSERT INTO registry_changes (tenant_id, client_id) VALUES (NEW.tenant_id, NEW.client_id);
END;
CREATE TRIGGER devices_upd_feed AFTER UPDATE ON devices BEGIN
    INSERT INTO registry_changes (tenant_id, client_id) VALUES (NEW.tenant_id, NEW.client_id);
END;
CREATE TRIGGER devices_del_feed AFTER DELETE ON devices BEGIN
    INSERT INTO registry_changes (tenant_id, client_id) VALUES (OLD.tenant_id, OLD.client_id);
END;

CREATE TRIGGER credentials_ins_feed AFTER INSERT ON credentials BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        SELECT tenant_id, client_id FROM devices WHERE id = NEW.device_id;
END;
CREATE TRIGGER credentials_upd_feed AFTER UPDATE ON credentials BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        SELECT tenant_id, client_id FROM devices WHERE id = NEW.device_id;
END;
CREATE TRIGGER credentials_del_feed AFTER DELETE ON credentials BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        SELECT tenant_id, client_id FROM devices WHERE id = OLD.device_id;
END;

CREATE TRIGGER acl_rules_ins_feed AFTER INSERT ON acl_rules BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        VALUES (NEW.tenant_id, (SELECT client_id FROM devices WHERE id = NEW.device_id));
END;
CREATE TRIGGER acl_rules_del_feed AFTER DELETE ON acl_rules WHEN OLD.device_id IS NULL BEGIN
    INSERT INTO registry_changes (tenant_id, client_id) VALUES (OLD.tenant_id, NULL);
END;
CREATE TRIGGER acl_rules_del_dev_feed AFTER DELETE ON acl_rules WHEN OLD.device_id IS NOT NULL BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        SELECT tenant_id, client_id FROM devices WHERE id = OLD.device_id;
END;
