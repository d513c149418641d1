-- Capture every change to product_sizes, whoever makes it (SPEC.md C7). See
-- docs/change-capture.md for the choice of a trigger and an outbox over logical decoding.
--
-- Each cache that follows the table (a *ledger*: one per deployment's CACHE_KEY_PREFIX, one
-- more for its secondary cluster) registers in `cache_ledgers` and renews its registration
-- every few seconds. Every committed INSERT or UPDATE (a DELETE becomes an UPDATE to a
-- tombstone) records, in the writer's own transaction, one `cache_repairs` row per changed SKU
-- and per ledger followed in the last minute: the service's writes and everyone else's alike.
--
-- A record for a cache the writing instance updates itself (it names its ledgers in the
-- connection setting `product_size.ledgers`) is `own_write`: its writer installs the version
-- and clears it, and any instance takes it over only if that has not happened within 2 s.
-- Every other record is due at once, and the statement wakes the instances with a
-- notification on the channel `product_size_changes` (taken at commit; the records, not the
-- notification, are what guarantee delivery).

CREATE TABLE cache_ledgers (
    ledger  text        PRIMARY KEY,
    -- Followed without a gap since this time (a renewal after a lapse restarts it).
    since   timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- Rows already here were recorded by the service for its own writes.
ALTER TABLE cache_repairs ADD COLUMN own_write boolean NOT NULL DEFAULT true;

CREATE FUNCTION product_sizes_capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    here text[] := coalesce(
        string_to_array(nullif(current_setting('product_size.ledgers', true), ''), ' '),
        '{}');
    others boolean;
BEGIN
    WITH followers AS (
        -- The writing instance's own caches always get their records (it relies on them to
        -- repair a failed cache update), registered yet or not.
        SELECT unnest(here) AS ledger, true AS own_write
        UNION ALL
        SELECT ledger, false
          FROM cache_ledgers
         WHERE seen_at > now() - interval '1 minute' AND NOT ledger = ANY(here)
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

CREATE TRIGGER product_sizes_capture_inserts
    AFTER INSERT ON product_sizes
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT
    EXECUTE FUNCTION product_sizes_capture();

CREATE TRIGGER product_sizes_capture_updates
    AFTER UPDATE ON product_sizes
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT
    EXECUTE FUNCTION product_sizes_capture();

-- Renews the registration of `ledgers` and returns those whose registration had lapsed (or
-- never existed): their cache missed changes and must not be trusted (a new cache epoch).
-- A registration counts as continuous for 45 s, less than the minute the trigger still
-- records for, so no change can fall between a lapse and the renewal that reports it.
CREATE FUNCTION follow_cache_ledgers(ledgers text[]) RETURNS SETOF text
LANGUAGE sql AS $$
    WITH renewed AS (
        INSERT INTO cache_ledgers AS l (ledger, since, seen_at)
        SELECT DISTINCT unnest(ledgers), now(), now()
        ON CONFLICT (ledger) DO UPDATE
            SET since = CASE WHEN l.seen_at > now() - interval '45 seconds' THEN l.since
                             ELSE now() END,
                seen_at = now()
        RETURNING l.ledger, l.since = now() AS lapsed
    )
    SELECT ledger FROM renewed WHERE lapsed;
$$;

-- Forgets ledgers not renewed for 5 minutes and what they were owed: whoever comes back
-- under one starts a new cache epoch, so nothing recorded for it before matters.
CREATE FUNCTION forget_lapsed_cache_ledgers() RETURNS bigint
LANGUAGE sql AS $$
    WITH lapsed AS (
        DELETE FROM cache_ledgers WHERE seen_at < now() - interval '5 minutes'
        RETURNING ledger
    ), dropped AS (
        DELETE FROM cache_repairs AS r
         WHERE NOT EXISTS (SELECT 1 FROM cache_ledgers AS l
                            WHERE l.ledger = r.cache_prefix
                              AND l.seen_at >= now() - interval '5 minutes')
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM lapsed) + (SELECT count(*) FROM dropped);
$$;
