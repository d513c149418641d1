-- Every writer seen, whatever its session says, and a TRUNCATE seen too.
--
-- `session_replication_role = replica` (logical replication's apply worker, a data-only
-- restore) disables ordinary triggers: an UPDATE made that way kept its version and recorded
-- nothing for the caches, which went on serving the old content. The triggers that keep
-- versions monotonic and capture every change fire in every session role now.
--
-- A TRUNCATE removes rows without firing row triggers: nothing records which SKUs went, and a
-- SKU created again afterwards starts over at version 1, below what a cache may hold. So a
-- TRUNCATE ends every cache's authoritative epoch instead (`cache_epochs`, see the migration
-- `reader_leases`): in the truncating transaction, each epoch is replaced by a marker that
-- names no epoch, and every instance is notified. An instance serves a cache only from the
-- authoritative epoch, learns the marker with its next lease renewal (at once, on the
-- notification), and then starts a new epoch, which begins empty and becomes authoritative
-- only once every other instance knows. Nothing cached before the TRUNCATE is served after.

ALTER TABLE product_sizes ENABLE ALWAYS TRIGGER product_sizes_versions;
ALTER TABLE product_sizes ENABLE ALWAYS TRIGGER product_sizes_tombstones;
ALTER TABLE product_sizes ENABLE ALWAYS TRIGGER product_sizes_capture_inserts;
ALTER TABLE product_sizes ENABLE ALWAYS TRIGGER product_sizes_capture_updates;

-- The marker an epoch is replaced with; `truncated:` and the transaction, so that two
-- TRUNCATEs leave two different markers. No epoch takes this form (epochs are hexadecimal).
-- What the caches were owed goes too: those rows are gone, their SKUs restart at version 1,
-- and a record of a higher version would never be settled (a SKU owed is never served from
-- the cache). The new epochs start empty and owe nothing from before.
CREATE FUNCTION product_sizes_end_epochs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cache_epochs
       SET epoch = 'truncated:' || pg_current_xact_id()::text, recorded_at = now();
    DELETE FROM cache_repairs;
    DELETE FROM cache_own_writes;
    PERFORM pg_notify('product_size_changes', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER product_sizes_truncate
    AFTER TRUNCATE ON product_sizes
    FOR EACH STATEMENT
    EXECUTE FUNCTION product_sizes_end_epochs();

ALTER TABLE product_sizes ENABLE ALWAYS TRIGGER product_sizes_truncate;
