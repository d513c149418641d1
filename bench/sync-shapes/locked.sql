-- The service's transaction shape: whole rows locked and sent to the client (which decides
-- what to store), then one set-based UPDATE (which returns the transaction's id for
-- settle.sql), then the position read after the commit.
\set start random(0, :rows - 1)
BEGIN;
SELECT sku, length_mm, width_mm, height_mm, weight_g, size_label, version, source_version,
       deleted, updated_at
  FROM product_sizes
 WHERE sku = ANY (ARRAY(SELECT 'B' || lpad(((:start + i * 997) % :rows + 1)::text, 7, '0')
                          FROM generate_series(1, 1000) AS i))
 ORDER BY sku FOR UPDATE;
WITH n AS (
    SELECT 'B' || lpad(((:start + i * 997) % :rows + 1)::text, 7, '0') AS sku,
           (1 + floor(random() * 100000))::int AS length_mm
      FROM generate_series(1, 1000) AS i
), stored AS (
    UPDATE product_sizes AS p
       SET length_mm = n.length_mm, version = p.version + 1, updated_at = now()
      FROM n
     WHERE p.sku = n.sku
    RETURNING 1
)
SELECT count(*), pg_current_xact_id()::text::bigint AS xact FROM stored \gset
COMMIT;
SELECT p.lsn::text, substr(pg_walfile_name(p.lsn), 1, 8), c.system_identifier::text
  FROM (SELECT pg_current_wal_insert_lsn() AS lsn) AS p, pg_control_system() AS c;
