-- The device registry (SQLite). Times are Unix seconds chosen by mqgate, never the database clock.
CREATE TABLE tenants (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE devices (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id  TEXT    NOT NULL,
    username   TEXT,
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, client_id)
);

-- Brokers send only a client id, so client ids are unique across tenants; this maps one to its
-- tenant, the only lookup not scoped by tenant.
CREATE TABLE client_directory (
    client_id TEXT    PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);

CREATE TABLE credentials (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL CHECK (kind IN ('token', 'argon2', 'bcrypt')),
    digest     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX credentials_device ON credentials (tenant_id, device_id);

CREATE TABLE acl_rules (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  INTEGER REFERENCES devices (id) ON DELETE CASCADE,
    permission TEXT    NOT NULL CHECK (permission IN ('allow', 'deny')),
    action     TEXT    NOT NULL CHECK (action IN ('publish', 'subscribe', 'all')),
    topic      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX acl_rules_tenant ON acl_rules (tenant_id, device_id);

CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
