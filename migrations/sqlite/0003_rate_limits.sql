-- Ingestion limit overrides: one row per tenant (device_id NULL) or device.
CREATE TABLE rate_limits (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  INTEGER REFERENCES devices (id) ON DELETE CASCADE,
    per_sec    REAL    NOT NULL CHECK (per_sec > 0),
    burst      INTEGER NOT NULL CHECK (burst >= 1),
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX rate_limits_scope ON rate_limits (tenant_id, IFNULL(device_id, 0));

CREATE TRIGGER rate_limits_ins_feed AFTER INSERT ON rate_limits BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        VALUES (NEW.tenant_id, (SELECT client_id FROM devices WHERE id = NEW.device_id));
END;
CREATE TRIGGER rate_limits_upd_feed AFTER UPDATE ON rate_limits BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        VALUES (NEW.tenant_id, (SELECT client_id FROM devices WHERE id = NEW.device_id));
END;
CREATE TRIGGER rate_limits_del_feed AFTER DELETE ON rate_limits BEGIN
    INSERT INTO registry_changes (tenant_id, client_id)
        VALUES (OLD.tenant_id, (SELECT client_id FROM devices WHERE id = OLD.device_id));
END;
