-- Cache fills for many client ids in one round trip: concurrent cache misses (a reconnect storm)
-- are batched into one call. Per tenant of the requested ids, the statement is fenced to that
-- tenant and returns each device with its credentials, rules and limits, keyed by client id
-- (`cid`). Row-level security applies inside as everywhere else.
DROP FUNCTION mqgate_load_client(TEXT);

CREATE FUNCTION mqgate_load_clients(p_client_ids TEXT[])
RETURNS TABLE (cid TEXT, src TEXT, id BIGINT, device_id BIGINT, s1 TEXT, s2 TEXT, s3 TEXT,
               n1 BIGINT, n2 BIGINT, f1 DOUBLE PRECISION, b1 BOOLEAN, t_id BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t BIGINT;
BEGIN
    FOR t IN SELECT DISTINCT c.tenant_id FROM client_directory c WHERE c.client_id = ANY (p_client_ids) LOOP
        PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
        RETURN QUERY
            WITH dv AS (
                SELECT d.id, d.tenant_id, d.client_id, d.username, d.enabled, d.created_at
                  FROM devices d WHERE d.tenant_id = t AND d.client_id = ANY (p_client_ids)
            )
            SELECT dv.client_id, 'd'::TEXT, dv.id, dv.id, dv.client_id, dv.username, tn.name, dv.created_at,
                   NULL::BIGINT, NULL::DOUBLE PRECISION, dv.enabled, dv.tenant_id
              FROM dv JOIN tenants tn ON tn.id = dv.tenant_id
            UNION ALL
            SELECT dv.client_id, 'c', c.id, c.device_id, c.kind, c.digest, NULL, c.created_at, c.expires_at, NULL, NULL, c.tenant_id
              FROM credentials c JOIN dv ON dv.id = c.device_id WHERE c.tenant_id = t
            UNION ALL
            SELECT dv.client_id, 'r', r.id, r.device_id, r.permission, r.action, r.topic, NULL, NULL, NULL, NULL, r.tenant_id
              FROM acl_rules r JOIN dv ON dv.id = r.device_id WHERE r.tenant_id = t
            UNION ALL
            SELECT dv.client_id, 'r', r.id, r.device_id, r.permission, r.action, r.topic, NULL, NULL, NULL, NULL, r.tenant_id
              FROM acl_rules r CROSS JOIN dv WHERE r.tenant_id = t AND r.device_id IS NULL
            UNION ALL
            SELECT dv.client_id, 'l', l.id, l.device_id, NULL, NULL, NULL, l.burst::BIGINT, NULL, l.per_sec, NULL, l.tenant_id
              FROM rate_limits l JOIN dv ON dv.id = l.device_id WHERE l.tenant_id = t
            UNION ALL
            SELECT dv.client_id, 'l', l.id, l.device_id, NULL, NULL, NULL, l.burst::BIGINT, NULL, l.per_sec, NULL, l.tenant_id
              FROM rate_limits l CROSS JOIN dv WHERE l.tenant_id = t AND l.device_id IS NULL
            ORDER BY 1, 2, 3;
    END LOOP;
END
$$;
