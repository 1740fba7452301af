-- Device certificates (see migrations/postgres/0006_certs.sql for the meaning of each column).
CREATE TABLE cas (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    cert_der        BLOB    NOT NULL,
    fingerprint     TEXT    NOT NULL UNIQUE,
    subject         TEXT    NOT NULL,
    not_after       INTEGER NOT NULL,
    key_sealed      BLOB,
    crl_url         TEXT,
    crl_der         BLOB,
    crl_number      INTEGER NOT NULL DEFAULT 0,
    crl_next_update INTEGER,
    crl_error       TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE device_certs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id   INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    ca_id       INTEGER REFERENCES cas (id) ON DELETE SET NULL,
    fingerprint TEXT    NOT NULL UNIQUE,
    serial      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    revoked_at  INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX device_certs_tenant ON device_certs (tenant_id, device_id);

-- Certificate changes reach a running server through the same feed, marked `certs = 1`.
ALTER TABLE registry_changes ADD COLUMN certs INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER cas_ins_feed AFTER INSERT ON cas BEGIN
    INSERT INTO registry_changes (tenant_id, client_id, certs) VALUES (NEW.tenant_id, NULL, 1);
END;
CREATE TRIGGER cas_upd_feed AFTER UPDATE ON cas BEGIN
    INSERT INTO registry_changes (tenant_id, client_id, certs) VALUES (NEW.tenant_id, NULL, 1);
END;
CREATE TRIGGER device_certs_ins_feed AFTER INSERT ON device_certs BEGIN
    INSERT INTO registry_changes (tenant_id, client_id, certs) VALUES (NEW.tenant_id, NULL, 1);
END;
CREATE TRIGGER device_certs_upd_feed AFTER UPDATE ON device_certs BEGIN
    INSERT INTO registry_changes (tenant_id, client_id, certs) VALUES (NEW.tenant_id, NULL, 1);
END;
