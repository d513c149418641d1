-- The direct upsert (bench/upsert.sql) on a set of 1,000 SKUs, every 997th from a random start
-- (as locked.sql picks them).
\set start random(0, :rows - 1)
WITH n AS MATERIALIZED (
    SELECT 'B' || lpad(((:start + i * 997) % :rows + 1)::text, 7, '0') AS sku,
           (1 + floor(random() * 100000))::int AS length_mm
      FROM generate_series(1, 1000) AS i
     ORDER BY 1
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
