-- The hot path's cache fill in one round trip: resolve the client id, fence the statement to its
-- tenant (transaction-local, so it ends with the statement), and return the device with its
-- credentials, rules and limits. Row-level security applies inside as everywhere else.
CREATE FUNCTION mqgate_load_client(p_client_id TEXT)
RETURNS TABLE (src TEXT, id BIGINT, device_id BIGINT, s1 TEXT, s2 TEXT, s3 TEXT,
               n1 BIGINT, n2 BIGINT, f1 DOUBLE PRECISION, b1 BOOLEAN, t_id BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t BIGINT;
    d BIGINT;
BEGIN
    SELECT c.tenant_id INTO t FROM client_directory c WHERE c.client_id = p_client_id;
    IF t IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
    SELECT dv.id INTO d FROM devices dv WHERE dv.tenant_id = t AND dv.client_id = p_client_id;
    IF d IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT 'd'::TEXT, dv.id, dv.id, dv.client_id, dv.username, tn.name, dv.created_at, NULL::BIGINT,
               NULL::DOUBLE PRECISION, dv.enabled, dv.tenant_id
          FROM devices dv JOIN tenants tn ON tn.id = dv.tenant_id WHERE dv.tenant_id = t AND dv.id = d
        UNION ALL
        SELECT 'c', c.id, c.device_id, c.kind, c.digest, NULL, c.created_at, c.expires_at, NULL, NULL, c.tenant_id
          FROM credentials c WHERE c.tenant_id = t AND c.device_id = d
        UNION ALL
        SELECT 'r', r.id, r.device_id, r.permission, r.action, r.topic, NULL, NULL, NULL, NULL, r.tenant_id
          FROM acl_rules r WHERE r.tenant_id = t AND (r.device_id = d OR r.device_id IS NULL)
        UNION ALL
        SELECT 'l', l.id, l.device_id, NULL, NULL, NULL, l.burst::BIGINT, NULL, l.per_sec, NULL, l.tenant_id
          FROM rate_limits l WHERE l.tenant_id = t AND (l.device_id = d OR l.device_id IS NULL)
        ORDER BY 1, 2;
END
$$;
