-- Ingestion limit overrides: one row per tenant (device_id NULL) or device. Defaults come from
-- mqgate's configuration; a row here replaces the default for its scope.
CREATE TABLE rate_limits (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  BIGINT           NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  BIGINT           REFERENCES devices (id) ON DELETE CASCADE,
    per_sec    DOUBLE PRECISION NOT NULL CHECK (per_sec > 0),
    burst      INTEGER          NOT NULL CHECK (burst >= 1),
    created_at BIGINT           NOT NULL
);
CREATE UNIQUE INDEX rate_limits_scope ON rate_limits (tenant_id, COALESCE(device_id, 0));

ALTER TABLE rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON rate_limits USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());
