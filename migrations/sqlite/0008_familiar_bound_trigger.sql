-- The bound on a device's familiar addresses (the newest 8, `limit::lockout::FAMILIAR_MAX`; the
-- store contract test checks the two agree) held by the table itself. The writer used to ask the
-- upsert to return every device it touched and count those: in a reconnect storm of devices seen
-- for the first time that was a row per login sent back through sqlx's worker channel, a sixth
-- of the server's time. The count here is one seek on the primary key's prefix, and only an
-- insert can take a device past the bound (the upsert's update path changes no count).
CREATE TRIGGER familiar_addresses_bound AFTER INSERT ON familiar_addresses
WHEN (SELECT COUNT(*) FROM familiar_addresses WHERE device_id = NEW.device_id) > 8
BEGIN
    DELETE FROM familiar_addresses WHERE device_id = NEW.device_id AND address NOT IN
        (SELECT address FROM familiar_addresses WHERE device_id = NEW.device_id
         ORDER BY last_ok_ms DESC, address LIMIT 8);
END;
