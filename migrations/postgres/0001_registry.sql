-- The device registry (PostgreSQL). Times are Unix seconds chosen by mqgate, never the database
-- clock. Tenant-scoped tables carry row-level security keyed on the transaction-local setting
-- `mqgate.tenant_id`: a second fence behind the application's own `WHERE tenant_id = …`.

CREATE TABLE tenants (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE devices (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  BIGINT  NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id  TEXT    NOT NULL,
    username   TEXT,
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT  NOT NULL,
    UNIQUE (tenant_id, client_id)
);

-- Brokers send only a client id, so client ids are unique across tenants; this maps one to its
-- tenant, the only lookup not scoped by tenant (and so without row-level security).
CREATE TABLE client_directory (
    client_id TEXT   PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);

CREATE TABLE credentials (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind       TEXT   NOT NULL CHECK (kind IN ('token', 'argon2', 'bcrypt')),
    digest     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX credentials_device ON credentials (tenant_id, device_id);

CREATE TABLE acl_rules (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  BIGINT REFERENCES devices (id) ON DELETE CASCADE,
    permission TEXT   NOT NULL CHECK (permission IN ('allow', 'deny')),
    action     TEXT   NOT NULL CHECK (action IN ('publish', 'subscribe', 'all')),
    topic      TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX acl_rules_tenant ON acl_rules (tenant_id, device_id);

CREATE TABLE audit_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id BIGINT,
    at        BIGINT NOT NULL,
    kind      TEXT   NOT NULL,
    detail    JSONB  NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);

-- The fence. NULLIF: once a transaction-local setting has been used on a connection it reads as
-- '' afterwards, which must mean "no tenant", not an error.
CREATE FUNCTION mqgate_tenant() RETURNS BIGINT LANGUAGE sql STABLE AS
    $$ SELECT NULLIF(current_setting('mqgate.tenant_id', true), '')::BIGINT $$;

ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON devices USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());

ALTER TABLE credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON credentials USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());

ALTER TABLE acl_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE acl_rules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON acl_rules USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());
