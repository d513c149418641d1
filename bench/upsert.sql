-- The service's set-based batch write, run directly: 1,000 random SKUs per transaction, locked
-- in SKU order (as the service does), updated with one statement; the capture trigger records
-- the batch for the writer's own cache, as it does for the service's statement (run with
-- PGOPTIONS="-c product_size.own_ledgers=pgbench").
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
