-- A device's rows in the tables that hang off it, found by the device (issue #14). Their indexes
-- led with the tenant, so a lookup by device read every row of the device's tenant:
-- - a cache fill's rate limits: `rate_limits_scope` indexes `COALESCE(device_id, 0)`, which
--   `device_id IS NULL` and `device_id IN (...)` cannot use. With a limit per device on a 100k
--   tenant a fill took 17 ms instead of 0.3 ms, a warm-up page as long;
-- - deleting a device: each `ON DELETE CASCADE` asks `WHERE device_id = $1`, which no index led
--   with: 7.7 ms per device on a 100k registry with a rule and a limit each (a full read of four
--   tables), 0.13 ms with these.
-- The tenant-led indexes stay: tenant-wide reads and a tenant's deletion use them.
CREATE INDEX credentials_by_device ON credentials (device_id);
CREATE INDEX acl_rules_by_device ON acl_rules (device_id);
CREATE INDEX rate_limits_by_device ON rate_limits (device_id, tenant_id);
CREATE INDEX device_certs_by_device ON device_certs (device_id);
