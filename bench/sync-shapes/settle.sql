-- B: A, then the writer clears its own records of the batch in a transaction of its own, as
-- the service does once Redis holds the versions (src/db/sizes.rs settle_repairs).
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
DELETE FROM cache_repairs AS r
 USING (SELECT 'B' || lpad(((:start + i * 997) % :rows + 1)::text, 7, '0') AS sku
          FROM generate_series(1, 1000) AS i) AS s
 WHERE r.cache_prefix = 'pgbench' AND r.sku = s.sku;
