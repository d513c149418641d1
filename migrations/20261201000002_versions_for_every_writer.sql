-- Versions for every writer (SPEC.md C2, C7). The cache compares versions: a row changed
-- without a higher version would leave two contents under one version (one ETag), and no
-- compare-and-set could ever replace the older one. So the table keeps versions monotonic
-- whoever writes it, a data fix in psql included:
--
-- - an UPDATE that changes the content (sizes, label, source_version, deleted) without raising
--   the version gets it raised by one, and `updated_at` set; one that lowers the version keeps
--   the stored one. The service's own writes always raise the version themselves, so the
--   trigger's WHEN condition (evaluated without calling the function) skips them.
-- - a DELETE keeps the row as a tombstone at the next version, so a re-create continues from
--   it and no older cached version can come back. Re-create a deleted SKU with an UPDATE
--   (`SET deleted = false, ...`) or through the API; an INSERT of its SKU fails on the key.
-- - an INSERT may leave out `version` and `updated_at`.
-- - a SKU is never renamed: that would delete one SKU without a tombstone.
--
-- TRUNCATE bypasses all of this: after one, flush the cache (`FLUSHALL`, or every key under
-- the deployment's CACHE_KEY_PREFIX). Creating the triggers does not rewrite the table.

ALTER TABLE product_sizes
    ALTER COLUMN version SET DEFAULT 1,
    ALTER COLUMN updated_at SET DEFAULT now();

CREATE FUNCTION product_sizes_keep_versions_monotonic() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.sku IS DISTINCT FROM OLD.sku THEN
        RAISE EXCEPTION 'product_sizes: a SKU cannot be renamed (% to %)', OLD.sku, NEW.sku
            USING HINT = 'delete the old SKU and create the new one';
    END IF;
    IF (NEW.length_mm, NEW.width_mm, NEW.height_mm, NEW.weight_g, NEW.size_label,
        NEW.source_version, NEW.deleted)
       IS DISTINCT FROM
       (OLD.length_mm, OLD.width_mm, OLD.height_mm, OLD.weight_g, OLD.size_label,
        OLD.source_version, OLD.deleted) THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    ELSE
        NEW.version := OLD.version;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER product_sizes_versions
    BEFORE UPDATE ON product_sizes
    FOR EACH ROW
    WHEN (NEW.sku IS DISTINCT FROM OLD.sku
          OR NEW.version < OLD.version
          OR (NEW.version = OLD.version
              AND (NEW.length_mm, NEW.width_mm, NEW.height_mm, NEW.weight_g, NEW.size_label,
                   NEW.source_version, NEW.deleted)
                  IS DISTINCT FROM
                  (OLD.length_mm, OLD.width_mm, OLD.height_mm, OLD.weight_g, OLD.size_label,
                   OLD.source_version, OLD.deleted)))
    EXECUTE FUNCTION product_sizes_keep_versions_monotonic();

CREATE FUNCTION product_sizes_keep_tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE product_sizes
       SET deleted = true, version = OLD.version + 1, updated_at = now()
     WHERE sku = OLD.sku AND NOT deleted;
    -- The row stays: the DELETE itself reports no rows.
    RETURN NULL;
END;
$$;

CREATE TRIGGER product_sizes_tombstones
    BEFORE DELETE ON product_sizes
    FOR EACH ROW
    EXECUTE FUNCTION product_sizes_keep_tombstone();
