-- Brute-force state every replica shares (issue #11). Times are Unix milliseconds (the unit of
-- the in-memory guard), chosen by mqgate, never the database clock.

-- Addresses a device logged in from successfully: its client id's lockout never applies to them.
-- Written off the hot path, at most 8 per device (the writer drops the oldest), gone with the
-- device. Same tenant fence as the other device tables.
CREATE TABLE familiar_addresses (
    tenant_id  BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    address    TEXT   NOT NULL,
    last_ok_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, address)
);
ALTER TABLE familiar_addresses ENABLE ROW LEVEL SECURITY;
ALTER TABLE familiar_addresses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON familiar_addresses USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());

-- Failure counts and lockouts of client ids and addresses. Not tenant-scoped, like
-- client_directory: client ids are unique across tenants and an address belongs to no tenant.
-- Only counted failures before a lockout are written; a lockout is announced on NOTIFY.
CREATE TABLE auth_failures (
    scope           TEXT    NOT NULL CHECK (scope IN ('client_id', 'address')),
    key             TEXT    NOT NULL,
    window_start_ms BIGINT  NOT NULL,
    failures        INTEGER NOT NULL,
    locked_until_ms BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key)
);
