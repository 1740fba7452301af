-- Brute-force state that survives a restart (issue #11). Times are Unix milliseconds (the unit of
-- the in-memory guard), chosen by mqgate.

-- Addresses a device logged in from successfully: its client id's lockout never applies to them.
-- At most 8 per device (the writer drops the oldest), gone with the device.
CREATE TABLE familiar_addresses (
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  INTEGER NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    address    TEXT    NOT NULL,
    last_ok_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, address)
);

-- Failure counts and lockouts of client ids and addresses (not tenant-scoped: client ids are
-- unique across tenants and an address belongs to no tenant).
CREATE TABLE auth_failures (
    scope           TEXT    NOT NULL CHECK (scope IN ('client_id', 'address')),
    key             TEXT    NOT NULL,
    window_start_ms INTEGER NOT NULL,
    failures        INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key)
);
