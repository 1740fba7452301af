-- EMQX kicks: an outbox of "disconnect this client" requests for EMQX's management API.
--
-- EMQX never re-authenticates a live connection, so a change that ends a device's right to stay
-- connected must reach it as `DELETE /api/v5/clients/{clientid}`. The rows are written by
-- triggers in the same transaction as the change (whoever makes it: the CLI, a replica), so a
-- kick exists exactly when the change committed. Replicas claim rows with
-- `FOR UPDATE SKIP LOCKED` and a lease (`claimed_until`), so each row is sent by one replica,
-- once, and a replica that dies mid-way leaves its rows to the others when the lease ends.
-- No row-level security: the kicker works across tenants (like `client_directory`).
--
-- Times: `due_at`, `done_at`, `keep_until` Unix seconds, `claimed_until` Unix milliseconds, all
-- chosen by mqgate (the credential's own `expires_at` for rotation), never the database clock.
CREATE TABLE emqx_kicks (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    client_id     TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    dedupe        TEXT   UNIQUE,      -- one kick per revoked certificate (revoke and CRL alike)
    due_at        BIGINT,             -- NULL: at once; else not before (rotation grace end)
    claimed_until BIGINT,
    done_at       BIGINT,
    outcome       TEXT,
    keep_until    BIGINT              -- set by the pruner / on completion; deleted after it
);
CREATE INDEX emqx_kicks_pending ON emqx_kicks (id) WHERE done_at IS NULL;

-- Disabled (not re-enabled) or removed devices.
CREATE FUNCTION mqgate_kick_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO emqx_kicks (tenant_id, client_id, reason) VALUES (OLD.tenant_id, OLD.client_id, 'removed');
    ELSIF OLD.enabled AND NOT NEW.enabled THEN
        INSERT INTO emqx_kicks (tenant_id, client_id, reason) VALUES (NEW.tenant_id, NEW.client_id, 'disabled');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER devices_kick AFTER UPDATE OF enabled OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION mqgate_kick_device();

-- A credential given an end (rotation, `--grace 0s`, password replacement): kick when it ends.
CREATE FUNCTION mqgate_kick_credential() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.expires_at IS NOT NULL AND (OLD.expires_at IS NULL OR NEW.expires_at < OLD.expires_at) THEN
        INSERT INTO emqx_kicks (tenant_id, client_id, reason, due_at)
            SELECT d.tenant_id, d.client_id, 'credential_expired', NEW.expires_at
            FROM devices d WHERE d.id = NEW.device_id AND d.tenant_id = NEW.tenant_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER credentials_kick AFTER UPDATE OF expires_at ON credentials
    FOR EACH ROW EXECUTE FUNCTION mqgate_kick_credential();

-- A certificate revoked by `cert revoke` (CRL listings: `Store::kick_revoked_serials`).
CREATE FUNCTION mqgate_kick_cert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
        INSERT INTO emqx_kicks (tenant_id, client_id, reason, dedupe)
            SELECT d.tenant_id, d.client_id, 'certificate_revoked', 'cert:' || NEW.fingerprint
            FROM devices d WHERE d.id = NEW.device_id AND d.tenant_id = NEW.tenant_id
            ON CONFLICT (dedupe) DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER device_certs_kick AFTER UPDATE OF revoked_at ON device_certs
    FOR EACH ROW EXECUTE FUNCTION mqgate_kick_cert();

-- An ACL change: the `acl` list pushed at CONNECT and the subscriptions EMQX granted no longer
-- reflect it. A device rule kicks its device (not when the rule goes with its removed device:
-- the device row is gone by then); a tenant rule kicks every enabled device of the tenant.
CREATE FUNCTION mqgate_kick_acl() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r acl_rules;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    INSERT INTO emqx_kicks (tenant_id, client_id, reason)
        SELECT d.tenant_id, d.client_id, 'acl_changed' FROM devices d
        WHERE d.tenant_id = r.tenant_id AND d.enabled
          AND (r.device_id IS NULL OR d.id = r.device_id);
    RETURN NULL;
END $$;
CREATE TRIGGER acl_rules_kick AFTER INSERT OR DELETE ON acl_rules
    FOR EACH ROW EXECUTE FUNCTION mqgate_kick_acl();
