-- The service's own writes recorded once per transaction (SPEC.md C7; docs/change-capture.md).
--
-- A write's own caches get their record in the writer's transaction, as before, and the
-- writing instance clears it once those caches hold the versions. One row per changed SKU
-- made a 1,000-row sync insert 1,000 records and, a moment later, delete them one by one:
-- about a fifth of what the primary spent on the sync. A connection that names its caches in
-- the setting `product_size.own_ledgers` gets one `cache_own_writes` row per transaction and
-- cache instead, listing the SKUs and versions it wrote, and its instance deletes that one row.
-- If the row is still there after 2 s (its writer died, or the cache update failed), or its
-- writer asks because the update failed, a repair worker hands it over: the row becomes the
-- usual per-SKU records in `cache_repairs`, applied as before.
--
-- `product_size.ledgers` (one own record per row) still works, for instances started before
-- this migration: a rolling upgrade keeps their records where they look for them.

CREATE TABLE cache_own_writes (
    ledger     text        NOT NULL,
    -- The writing transaction (pg_current_xact_id()); its instance names it to clear the row.
    xact       bigint      NOT NULL,
    skus       text[]      NOT NULL,
    versions   bigint[]    NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ledger, xact)
);

CREATE OR REPLACE FUNCTION product_sizes_capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- Caches of an instance started before this migration: one own record per row.
    here text[] := coalesce(
        string_to_array(nullif(current_setting('product_size.ledgers', true), ''), ' '),
        '{}');
    -- The writing instance's caches: one record per transaction.
    own text[] := coalesce(
        string_to_array(nullif(current_setting('product_size.own_ledgers', true), ''), ' '),
        '{}');
    others boolean;
BEGIN
    IF cardinality(own) > 0 THEN
        -- A transaction's second statement (an upsert fires the insert and the update
        -- trigger) adds to its row.
        INSERT INTO cache_own_writes AS w (ledger, xact, skus, versions)
        SELECT ledger, pg_current_xact_id()::text::bigint, c.skus, c.versions
          FROM unnest(own) AS ledger,
               (SELECT array_agg(sku), array_agg(version) FROM changed) AS c(skus, versions)
         WHERE c.skus IS NOT NULL
        ON CONFLICT (ledger, xact) DO UPDATE
            SET skus = w.skus || EXCLUDED.skus,
                versions = w.versions || EXCLUDED.versions;
    END IF;
    WITH followers AS (
        -- The writing instance's own caches always get their records (it relies on them to
        -- repair a failed cache update), registered yet or not.
        SELECT unnest(here) AS ledger, true AS own_write
        UNION ALL
        SELECT ledger, false
          FROM cache_ledgers
         WHERE seen_at > now() - interval '1 minute' AND NOT ledger = ANY(here || own)
    ), recorded AS (
        INSERT INTO cache_repairs AS r (cache_prefix, sku, version, own_write)
        SELECT f.ledger, c.sku, c.version, f.own_write
          FROM changed AS c CROSS JOIN followers AS f
        ON CONFLICT (cache_prefix, sku) DO UPDATE
            SET version = GREATEST(r.version, EXCLUDED.version),
                created_at = now(),
                own_write = EXCLUDED.own_write
        RETURNING r.own_write
    )
    SELECT bool_or(NOT own_write) INTO others FROM recorded;
    IF others THEN
        PERFORM pg_notify('product_size_changes', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Hands the own writes of `ledger` that are older than `older_than`, or were made by the
-- transactions `xacts`, over to `cache_repairs`, one record per SKU at its highest version,
-- as old as the write. Returns how many records that made or raised.
CREATE FUNCTION hand_over_own_writes(ledger text, xacts bigint[], older_than interval)
RETURNS bigint
LANGUAGE sql AS $$
    WITH handed AS (
        DELETE FROM cache_own_writes AS w
         WHERE w.ledger = hand_over_own_writes.ledger
           AND (w.xact = ANY(xacts) OR w.created_at < now() - older_than)
        RETURNING w.skus, w.versions, w.created_at
    ), owed AS (
        SELECT o.sku, max(o.version) AS version, min(h.created_at) AS created_at
          FROM handed AS h, unnest(h.skus, h.versions) AS o(sku, version)
         GROUP BY o.sku
    ), recorded AS (
        -- In SKU order, as the service writes its rows: this and a concurrent write of the
        -- same SKUs take their records' locks in the same order (no deadlock between them).
        INSERT INTO cache_repairs AS r (cache_prefix, sku, version, created_at, own_write)
        SELECT hand_over_own_writes.ledger, sku, version, created_at, true FROM owed
         ORDER BY sku
        ON CONFLICT (cache_prefix, sku) DO UPDATE
            SET version = GREATEST(r.version, EXCLUDED.version),
                created_at = LEAST(r.created_at, EXCLUDED.created_at),
                -- Another writer's change stays due at once.
                own_write = r.own_write AND EXCLUDED.own_write
        RETURNING 1
    )
    SELECT count(*) FROM recorded;
$$;

-- As before, and the own writes of the forgotten ledgers go with their records.
CREATE OR REPLACE FUNCTION forget_lapsed_cache_ledgers() RETURNS bigint
LANGUAGE sql AS $$
    WITH lapsed AS (
        DELETE FROM cache_ledgers WHERE seen_at < now() - interval '5 minutes'
        RETURNING ledger
    ), live AS (
        SELECT ledger FROM cache_ledgers WHERE seen_at >= now() - interval '5 minutes'
    ), dropped AS (
        DELETE FROM cache_repairs WHERE cache_prefix NOT IN (SELECT ledger FROM live)
        RETURNING 1
    ), dropped_writes AS (
        DELETE FROM cache_own_writes WHERE ledger NOT IN (SELECT ledger FROM live)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM lapsed) + (SELECT count(*) FROM dropped)
         + (SELECT count(*) FROM dropped_writes);
$$;
