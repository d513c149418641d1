-- The service's set-based batch write, run directly: 1,000 random SKUs per transaction, with the
-- same UNNEST shape, locking and repair-record insert as the service's statement.
BEGIN;
SELECT sku FROM product_sizes
 WHERE sku = ANY (ARRAY(SELECT 'B' || lpad((1 + floor(random() * :rows))::int::text, 7, '0')
                          FROM generate_series(1, 1000)))
 ORDER BY sku FOR UPDATE;
WITH n AS (
    SELECT DISTINCT ON (sku) sku, (1 + floor(random() * 100000))::int AS length_mm
      FROM (SELECT 'B' || lpad((1 + floor(random() * :rows))::int::text, 7, '0') AS sku
              FROM generate_series(1, 1000)) s
), stored AS (
    UPDATE product_sizes AS p
       SET length_mm = n.length_mm, version = p.version + 1, updated_at = now()
      FROM n WHERE p.sku = n.sku
    RETURNING p.sku, p.version
), owed AS (
    INSERT INTO cache_repairs AS r (cache_prefix, sku, version)
    SELECT 'pgbench', sku, version FROM stored
    ON CONFLICT (cache_prefix, sku) DO UPDATE SET version = EXCLUDED.version, created_at = now()
)
SELECT count(*) FROM stored;
COMMIT;
