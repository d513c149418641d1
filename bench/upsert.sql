-- The service's set-based batch write, run directly: 1,000 random SKUs per transaction, locked
-- in SKU order (as the service does), updated with one statement that also records the cache
-- repairs, as the service's statement does.
WITH n AS MATERIALIZED (
    SELECT DISTINCT ON (sku) sku, (1 + floor(random() * 100000))::int AS length_mm
      FROM (SELECT 'B' || lpad((1 + floor(random() * :rows))::int::text, 7, '0') AS sku
              FROM generate_series(1, 1000)) s
     ORDER BY sku
), locked AS MATERIALIZED (
    SELECT p.sku FROM product_sizes p JOIN n USING (sku) ORDER BY p.sku FOR UPDATE OF p
), stored AS (
    UPDATE product_sizes AS p
       SET length_mm = n.length_mm, version = p.version + 1, updated_at = now()
      FROM n
     WHERE p.sku = n.sku AND EXISTS (SELECT 1 FROM locked)
    RETURNING p.sku, p.version
), owed AS (
    INSERT INTO cache_repairs AS r (cache_prefix, sku, version)
    SELECT 'pgbench', sku, version FROM stored
    ON CONFLICT (cache_prefix, sku) DO UPDATE SET version = EXCLUDED.version, created_at = now()
)
SELECT count(*) FROM stored;
