-- A device's rows in the tables that hang off it, found by the device (issue #14), as PostgreSQL's
-- migration 0018 does. Their indexes led with the tenant, so a lookup by device read every row of
-- the device's tenant: a cache fill's rate limits (`rate_limits_scope` indexes
-- `IFNULL(device_id, 0)`, which `device_id = ?` cannot use), and each `ON DELETE CASCADE` of a
-- deleted device (`WHERE device_id = ?`, which no index led with).
CREATE INDEX credentials_by_device ON credentials (device_id);
CREATE INDEX acl_rules_by_device ON acl_rules (device_id);
CREATE INDEX rate_limits_by_device ON rate_limits (device_id, tenant_id);
CREATE INDEX device_certs_by_device ON device_certs (device_id);
