-- The hot path's store calls each in one statement (issue #14). A reconnect storm's batch was five
-- round trips for its cache fill (directory, BEGIN, fence, page document, COMMIT) and five for its
-- familiar addresses: PostgreSQL spent more time on the statements' overhead than on their work.
-- The functions below fence each tenant's part with the transaction-local setting (the statement's
-- own transaction, so it ends with the call) exactly as the application did; row-level security
-- applies inside as everywhere else.

-- The cache fill (a set-wise page document per tenant) no longer goes through these.
DROP FUNCTION mqgate_fill_clients(TEXT[]);

-- A page document is the shape `registry::rows::PageDoc` decodes (SQLite builds the same) over the
-- devices a `p` CTE selects (with `pos`, their order) in tenant `t`: each device with each
-- credential as a flat array, the page's device rules and limits, the tenant's name, rules and
-- limits once; one row. Set-wise: a document per device costs a correlated subquery per part. The
-- two functions below build it over their own pages (written out in each: a shared function over
-- an array of rows measured slower than the inline query); PL/pgSQL keeps their plans.

-- Cache fills for many client ids: their tenants from the directory (the one lookup not scoped
-- by tenant), then per tenant, fenced to it, one page document of its devices among them.
CREATE FUNCTION mqgate_fill_pages(p_client_ids TEXT[]) RETURNS SETOF TEXT
LANGUAGE plpgsql AS $$
DECLARE
    t BIGINT;
BEGIN
    FOR t IN SELECT DISTINCT c.tenant_id FROM client_directory c
             WHERE c.client_id = ANY (p_client_ids) ORDER BY 1 LOOP
        PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
        RETURN QUERY
        WITH p AS (
            SELECT d.*, row_number() OVER (ORDER BY d.id) AS pos FROM devices d
            WHERE d.tenant_id = t AND d.client_id = ANY (p_client_ids))
            SELECT json_build_object(
                'tenant_id', t,
                'tenant_name', (SELECT tn.name FROM tenants tn WHERE tn.id = t),
                'rules', COALESCE((
                        SELECT json_agg(json_build_object(
                            'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                            'action', r.action, 'topic', r.topic))
                        FROM acl_rules r WHERE r.tenant_id = t AND r.device_id IS NULL), '[]'::JSON),
                'limits', COALESCE((
                        SELECT json_agg(json_build_object(
                            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
                        FROM rate_limits l WHERE l.tenant_id = t AND l.device_id IS NULL), '[]'::JSON),
                'devices', COALESCE((
                        SELECT json_agg(json_build_array(
                            p.pos, p.id, p.client_id, p.username, CASE WHEN p.enabled THEN 1 ELSE 0 END,
                            p.created_at, c.id, c.kind, c.digest, c.expires_at))
                        FROM p LEFT JOIN credentials c
                            ON c.tenant_id = p.tenant_id AND c.device_id = p.id),
                        '[]'::JSON),
                'device_rules', COALESCE((
                        SELECT json_agg(json_build_object(
                            'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                            'action', r.action, 'topic', r.topic))
                        FROM acl_rules r
                        WHERE r.tenant_id = t AND r.device_id IN (SELECT p.id FROM p)), '[]'::JSON),
                'device_limits', COALESCE((
                        SELECT json_agg(json_build_object(
                            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
                        FROM rate_limits l
                        WHERE l.tenant_id = t AND l.device_id IN (SELECT p.id FROM p)), '[]'::JSON)
            )::TEXT;
    END LOOP;
END
$$;

-- A warm-up page, fenced to tenant `t`: its devices after client id `after` (all with NULL), at
-- most `lim`, in client id order (keyset on the (tenant_id, client_id) index).
CREATE FUNCTION mqgate_tenant_page(t BIGINT, after TEXT, lim BIGINT) RETURNS TEXT
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
    RETURN (
        WITH p AS (
            SELECT d.*, row_number() OVER (ORDER BY d.client_id) AS pos FROM (
                SELECT * FROM devices WHERE tenant_id = t AND client_id > COALESCE(after, '')
                ORDER BY client_id LIMIT lim) d)
            SELECT json_build_object(
                'tenant_id', t,
                'tenant_name', (SELECT tn.name FROM tenants tn WHERE tn.id = t),
                'rules', COALESCE((
                        SELECT json_agg(json_build_object(
                            'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                            'action', r.action, 'topic', r.topic))
                        FROM acl_rules r WHERE r.tenant_id = t AND r.device_id IS NULL), '[]'::JSON),
                'limits', COALESCE((
                        SELECT json_agg(json_build_object(
                            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
                        FROM rate_limits l WHERE l.tenant_id = t AND l.device_id IS NULL), '[]'::JSON),
                'devices', COALESCE((
                        SELECT json_agg(json_build_array(
                            p.pos, p.id, p.client_id, p.username, CASE WHEN p.enabled THEN 1 ELSE 0 END,
                            p.created_at, c.id, c.kind, c.digest, c.expires_at))
                        FROM p LEFT JOIN credentials c
                            ON c.tenant_id = p.tenant_id AND c.device_id = p.id),
                        '[]'::JSON),
                'device_rules', COALESCE((
                        SELECT json_agg(json_build_object(
                            'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                            'action', r.action, 'topic', r.topic))
                        FROM acl_rules r
                        WHERE r.tenant_id = t AND r.device_id IN (SELECT p.id FROM p)), '[]'::JSON),
                'device_limits', COALESCE((
                        SELECT json_agg(json_build_object(
                            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
                        FROM rate_limits l
                        WHERE l.tenant_id = t AND l.device_id IN (SELECT p.id FROM p)), '[]'::JSON)
            )::TEXT
    );
END
$$;

-- Familiar addresses of one batch (`remember_addresses`): per tenant, fenced to it, each (client
-- id, address) upserted with its latest time (a device that is gone is skipped by the join), then
-- only devices holding more than `keep` addresses lose their oldest. A stored time moves only
-- forward and by more than `refresh` ms (a fleet reconnecting from the addresses it always uses
-- rewrites no rows). The arrays are parallel; a (tenant, client id, address) appears once.
CREATE FUNCTION mqgate_remember_addresses(
    p_tenants BIGINT[], p_client_ids TEXT[], p_addresses TEXT[], p_ats BIGINT[], keep BIGINT,
    refresh BIGINT)
RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    t BIGINT;
    touched BIGINT[];
BEGIN
    FOR t IN SELECT DISTINCT x FROM unnest(p_tenants) AS x ORDER BY 1 LOOP
        PERFORM set_config('mqgate.tenant_id', t::TEXT, true);
        WITH up AS (
            INSERT INTO familiar_addresses (tenant_id, device_id, address, last_ok_ms)
            SELECT d.tenant_id, d.id, x.address, x.at
            FROM unnest(p_tenants, p_client_ids, p_addresses, p_ats) AS x (tenant, client_id, address, at)
            JOIN devices d ON d.tenant_id = t AND d.client_id = x.client_id
            WHERE x.tenant = t
            ON CONFLICT (device_id, address) DO UPDATE SET last_ok_ms = EXCLUDED.last_ok_ms
                WHERE EXCLUDED.last_ok_ms > familiar_addresses.last_ok_ms + refresh
            RETURNING device_id)
        SELECT array_agg(DISTINCT up.device_id) INTO touched FROM up;
        CONTINUE WHEN touched IS NULL;
        DELETE FROM familiar_addresses f
        USING (SELECT g.device_id, g.address, row_number() OVER (
                   PARTITION BY g.device_id ORDER BY g.last_ok_ms DESC, g.address) AS n
               FROM familiar_addresses g
               WHERE g.tenant_id = t AND g.device_id = ANY (touched)) old
        WHERE f.tenant_id = t AND f.device_id = old.device_id AND f.address = old.address
          AND old.n > keep;
    END LOOP;
END
$$;
