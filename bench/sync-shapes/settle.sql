-- The writer's settle, appended to a shape: it clears its own change records of the batch in
-- a transaction of its own, as the service does once Redis holds the versions
-- (src/db/sizes.rs settle_repairs). Uses the batch's :start.
DELETE FROM cache_repairs AS r
 USING (SELECT 'B' || lpad(((:start + i * 997) % :rows + 1)::text, 7, '0') AS sku
          FROM generate_series(1, 1000) AS i) AS s
 WHERE r.cache_prefix = 'pgbench' AND r.sku = s.sku;
