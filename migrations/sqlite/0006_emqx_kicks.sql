-- EMQX kicks: an outbox of "disconnect this client" requests for EMQX's management API, written
-- by triggers in the same transaction as the change (see migrations/postgres/0008_emqx_kicks.sql
-- for the design). Times: `due_at`, `done_at`, `keep_until` Unix seconds, `claimed_until` Unix ms.
CREATE TABLE emqx_kicks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id     INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id     TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    dedupe        TEXT    UNIQUE,
    due_at        INTEGER,
    claimed_until INTEGER,
    done_at       INTEGER,
    outcome       TEXT,
    keep_until    INTEGER
);
CREATE INDEX emqx_kicks_pending ON emqx_kicks (id) WHERE done_at IS NULL;

CREATE TRIGGER devices_disable_kick AFTER UPDATE OF enabled ON devices
    WHEN OLD.enabled AND NOT NEW.enabled BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason) VALUES (NEW.tenant_id, NEW.client_id, 'disabled');
END;
CREATE TRIGGER devices_remove_kick AFTER DELETE ON devices BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason) VALUES (OLD.tenant_id, OLD.client_id, 'removed');
END;

CREATE TRIGGER credentials_expire_kick AFTER UPDATE OF expires_at ON credentials
    WHEN NEW.expires_at IS NOT NULL AND (OLD.expires_at IS NULL OR NEW.expires_at < OLD.expires_at) BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason, due_at)
        SELECT d.tenant_id, d.client_id, 'credential_expired', NEW.expires_at
        FROM devices d WHERE d.id = NEW.device_id AND d.tenant_id = NEW.tenant_id;
END;

CREATE TRIGGER device_certs_revoke_kick AFTER UPDATE OF revoked_at ON device_certs
    WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL BEGIN
    INSERT OR IGNORE INTO emqx_kicks (tenant_id, client_id, reason, dedupe)
        SELECT d.tenant_id, d.client_id, 'certificate_revoked', 'cert:' || NEW.fingerprint
        FROM devices d WHERE d.id = NEW.device_id AND d.tenant_id = NEW.tenant_id;
END;

CREATE TRIGGER acl_rules_ins_kick AFTER INSERT ON acl_rules BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.tenant_id = NEW.tenant_id AND d.enabled
          AND (NEW.device_id IS NULL OR d.id = NEW.device_id);
END;
CREATE TRIGGER acl_rules_del_kick AFTER DELETE ON acl_rules BEGIN
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.tenant_id = OLD.tenant_id AND d.enabled
          AND (OLD.device_id IS NULL OR d.id = OLD.device_id);
END;
