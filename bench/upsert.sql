-- The service's set-based batch write, run directly: 1,000 random SKUs per transaction, locked
-- in SKU order (as the service does), updated with one statement. The capture trigger records
-- each row for the caches that follow the table, as it does for any writer other than the
-- service (bench/run.sh registers one).
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
)
SELECT count(*) FROM stored;
