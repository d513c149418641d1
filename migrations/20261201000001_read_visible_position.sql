-- Reads also report `visible_lsn`: every commit whose X-Consistency-Token is at or below it is
-- visible in the rows, so a cache entry filled from them can prove it is at least as new as a
-- client's token. On a replica it is the replay position taken before the query's snapshot
-- (as replay_lsn). On a primary it is the insert position taken before the snapshot, minus
-- one: a token is read after its commit is visible, and a token below that position was read
-- before it, so its commit is in the snapshot.
--
-- The return type changes, so the functions are dropped and created again in this
-- migration's transaction. Callers select columns by name: an older instance ignores the
-- new column.
DROP FUNCTION read_product_sizes(text[]);
DROP FUNCTION read_product_sizes_page(text, integer);

CREATE FUNCTION read_product_sizes(wanted text[])
RETURNS TABLE (
    replay_lsn     text,
    sku            text,
    length_mm      integer,
    width_mm       integer,
    height_mm      integer,
    weight_g       integer,
    size_label     text,
    version        bigint,
    source_version bigint,
    deleted        boolean,
    updated_at     timestamptz,
    visible_lsn    text
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    replayed text := pg_last_wal_replay_lsn()::text;
    visible text := CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_insert_lsn() - 1 END::text;
BEGIN
    RETURN QUERY
        SELECT replayed, p.sku, p.length_mm, p.width_mm, p.height_mm, p.weight_g,
               p.size_label, p.version, p.source_version, p.deleted, p.updated_at, visible
        FROM product_sizes AS p
        WHERE p.sku = ANY (wanted);
    IF NOT FOUND THEN
        replay_lsn := replayed;
        visible_lsn := visible;
        RETURN NEXT;
    END IF;
END;
$$;

CREATE FUNCTION read_product_sizes_page(after_sku text, page_size integer)
RETURNS TABLE (
    replay_lsn     text,
    sku            text,
    length_mm      integer,
    width_mm       integer,
    height_mm      integer,
    weight_g       integer,
    size_label     text,
    version        bigint,
    source_version bigint,
    deleted        boolean,
    updated_at     timestamptz,
    visible_lsn    text
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    replayed text := pg_last_wal_replay_lsn()::text;
    visible text := CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_insert_lsn() - 1 END::text;
BEGIN
    RETURN QUERY
        SELECT replayed, p.sku, p.length_mm, p.width_mm, p.height_mm, p.weight_g,
               p.size_label, p.version, p.source_version, p.deleted, p.updated_at, visible
        FROM product_sizes AS p
        WHERE p.sku > after_sku
        ORDER BY p.sku
        LIMIT page_size;
    IF NOT FOUND THEN
        replay_lsn := replayed;
        visible_lsn := visible;
        RETURN NEXT;
    END IF;
END;
$$;
