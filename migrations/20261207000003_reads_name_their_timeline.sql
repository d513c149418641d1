-- Reads also report `timeline`: the WAL timeline of the server whose rows they return. After a
-- PostgreSQL failover, a standby left on the old timeline may hold writes the new primary lost,
-- under version numbers the new primary hands out again with other content. Every read checks
-- this against the timeline its cache epoch is bound to (or the primary's), in the same round
-- trip as its rows, so no such standby is read, and nothing read on another history is
-- installed, not even in the moments before the replica probe notices.
--
-- On a primary it is the timeline of its current WAL. On a standby it is the timeline of the
-- WAL it receives (`pg_stat_wal_receiver`, visible to roles with `pg_read_all_stats`), else
-- that of its last restartpoint, which can lag behind a switch: then the standby is not read
-- until its next restartpoint, never read wrongly.
--
-- The return types change, so the functions are dropped and created again in this
-- migration's transaction. Callers select columns by name: an older instance ignores the new
-- column.
CREATE FUNCTION product_sizes_timeline() RETURNS integer
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN pg_is_in_recovery()
                THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                              (SELECT timeline_id FROM pg_control_checkpoint()))
                ELSE ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))
                         ::bit(32)::integer
           END
$$;

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
    visible_lsn    text,
    timeline       integer
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    replayed text := pg_last_wal_replay_lsn()::text;
    visible text := CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_insert_lsn() - 1 END::text;
    on_timeline integer := product_sizes_timeline();
BEGIN
    RETURN QUERY
        SELECT replayed, p.sku, p.length_mm, p.width_mm, p.height_mm, p.weight_g,
               p.size_label, p.version, p.source_version, p.deleted, p.updated_at, visible,
               on_timeline
        FROM product_sizes AS p
        WHERE p.sku = ANY (wanted);
    IF NOT FOUND THEN
        replay_lsn := replayed;
        visible_lsn := visible;
        timeline := on_timeline;
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
    visible_lsn    text,
    timeline       integer
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    replayed text := pg_last_wal_replay_lsn()::text;
    visible text := CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                         ELSE pg_current_wal_insert_lsn() - 1 END::text;
    on_timeline integer := product_sizes_timeline();
BEGIN
    RETURN QUERY
        SELECT replayed, p.sku, p.length_mm, p.width_mm, p.height_mm, p.weight_g,
               p.size_label, p.version, p.source_version, p.deleted, p.updated_at, visible,
               on_timeline
        FROM product_sizes AS p
        WHERE p.sku > after_sku
        ORDER BY p.sku
        LIMIT page_size;
    IF NOT FOUND THEN
        replay_lsn := replayed;
        visible_lsn := visible;
        timeline := on_timeline;
        RETURN NEXT;
    END IF;
END;
$$;
