-- The cache fill as one typed JSON document per device, the shape SQLite builds too (decoded by
-- one serde struct, `registry::rows::FillDoc`), instead of an untyped union of rows. Every read
-- of a device record (the hot path's fill by client id, a tenant's warm-up, one device) goes
-- through `mqgate_device_doc`. Row-level security applies inside as everywhere else.
DROP FUNCTION mqgate_load_clients(TEXT[]);

-- The document of one device row: the device, its tenant's name, its credentials, its own rules
-- and its tenant's, its own limit and its tenant's.
CREATE FUNCTION mqgate_device_doc(d devices) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'tenant_name', (SELECT tn.name FROM tenants tn WHERE tn.id = d.tenant_id),
        'device', json_build_object(
            'id', d.id, 'tenant_id', d.tenant_id, 'client_id', d.client_id,
            'username', d.username, 'enabled', d.enabled, 'created_at', d.created_at),
        'credentials', COALESCE((
            SELECT json_agg(json_build_object(
                'id', c.id, 'kind', c.kind, 'digest', c.digest, 'expires_at', c.expires_at)
                ORDER BY c.id)
            FROM credentials c WHERE c.tenant_id = d.tenant_id AND c.device_id = d.id), '[]'::JSON),
        'rules', COALESCE((
            SELECT json_agg(json_build_object(
                'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                'action', r.action, 'topic', r.topic) ORDER BY r.device_id IS NULL, r.id)
            FROM acl_rules r
            WHERE r.tenant_id = d.tenant_id AND (r.device_id = d.id OR r.device_id IS NULL)), '[]'::JSON),
        'limits', COALESCE((
            SELECT json_agg(json_build_object(
                'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
            FROM rate_limits l
            WHERE l.tenant_id = d.tenant_id AND (l.device_id = d.id OR l.device_id IS NULL)), '[]'::JSON)
    )::TEXT
$$;

-- Cache fills for many client ids in one round trip: per tenant of the requested ids, the
-- statement is fenced to that tenant and returns each device's document, keyed by client id.
CREATE FUNCTION mqgate_fill_clients(p_client_ids TEXT[])
RETURNS TABLE (cid TEXT, doc TEXT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t BIGINT;
BEGIN
    FOR t IN SELECT DISTINCT c.tenant_id FROM client_directory c WHERE c.client_id = ANY (p_client_ids) LOOP
        PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
        RETURN QUERY
            SELECT d.client_id, mqgate_device_doc(d)
            FROM devices d WHERE d.tenant_id = t AND d.client_id = ANY (p_client_ids);
    END LOOP;
END
$$;
