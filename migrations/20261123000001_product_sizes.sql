-- Product sizes, one row per SKU. A delete keeps the row as a tombstone (deleted = true) so
-- that versions and WMS counters never go backwards and no cache fill can resurrect it.
CREATE TABLE product_sizes (
    sku            text        PRIMARY KEY
                               CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    length_mm      integer     NOT NULL CHECK (length_mm BETWEEN 1 AND 100000),
    width_mm       integer     NOT NULL CHECK (width_mm BETWEEN 1 AND 100000),
    height_mm      integer     NOT NULL CHECK (height_mm BETWEEN 1 AND 100000),
    weight_g       integer     NOT NULL CHECK (weight_g BETWEEN 1 AND 50000000),
    size_label     text        CHECK (char_length(size_label) BETWEEN 1 AND 32),
    version        bigint      NOT NULL CHECK (version >= 1),
    source_version bigint      CHECK (source_version >= 0),
    deleted        boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL
);

-- Reads the given SKUs and reports the WAL position the server had replayed *before* the
-- query's snapshot was taken (NULL on a primary). A VOLATILE function takes a fresh snapshot
-- for each query it runs, so every commit at or before `replay_lsn` is visible in the rows:
-- comparing `replay_lsn` with the position of an acknowledged write is an exact freshness
-- check that rides on the read's own round trip. With no matching SKU, one row carries just
-- `replay_lsn`.
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
    updated_at     timestamptz
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    replayed text := pg_last_wal_replay_lsn()::text;
BEGIN
    RETURN QUERY
        SELECT replayed, p.sku, p.length_mm, p.width_mm, p.height_mm, p.weight_g,
               p.size_label, p.version, p.source_version, p.deleted, p.updated_at
        FROM product_sizes AS p
        WHERE p.sku = ANY (wanted);
    IF NOT FOUND THEN
        replay_lsn := replayed;
        RETURN NEXT;
    END IF;
END;
$$;
