-- The audit chain hashes each entry's detail exactly as stored; JSONB would re-render it (key
-- order, spacing) and break the chain on read. Keep the text as written.
ALTER TABLE audit_events ALTER COLUMN detail TYPE TEXT USING detail::TEXT;
