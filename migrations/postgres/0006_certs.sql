-- Device certificates. A tenant's certificate authorities (created by mqgate, with the private
-- key sealed under `ca_key_secret`, or imported without a key) and the certificates bound to its
-- devices (issued here, or registered by SHA-256 fingerprint). Same tenant fence as the rest.

CREATE TABLE cas (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            TEXT   NOT NULL,
    cert_der        BYTEA  NOT NULL,
    fingerprint     TEXT   NOT NULL,
    subject         TEXT   NOT NULL,
    not_after       BIGINT NOT NULL,
    key_sealed      BYTEA,            -- NULL: an imported CA, mqgate cannot sign for it
    crl_url         TEXT,             -- fetched on a schedule when set
    crl_der         BYTEA,            -- the newest CRL whose signature verified
    crl_number      BIGINT NOT NULL DEFAULT 0,
    crl_next_update BIGINT,
    crl_error       TEXT,             -- why the last fetch or import was refused, until one succeeds
    created_at      BIGINT NOT NULL,
    UNIQUE (tenant_id, name),
    UNIQUE (fingerprint)
);

CREATE TABLE device_certs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id   BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    ca_id       BIGINT REFERENCES cas (id) ON DELETE SET NULL,
    fingerprint TEXT   NOT NULL UNIQUE,
    serial      TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX device_certs_tenant ON device_certs (tenant_id, device_id);

ALTER TABLE cas ENABLE ROW LEVEL SECURITY;
ALTER TABLE cas FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON cas USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());

ALTER TABLE device_certs ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_certs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_fence ON device_certs USING (tenant_id = mqgate_tenant()) WITH CHECK (tenant_id = mqgate_tenant());
