-- One page of rows in SKU order (for warming and auditing the cache), with the replay position
-- taken before the page's snapshot, exactly as read_product_sizes() does.
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
        WHERE p.sku > after_sku
        ORDER BY p.sku
        LIMIT page_size;
    IF NOT FOUND THEN
        replay_lsn := replayed;
        RETURN NEXT;
    END IF;
END;
$$;
