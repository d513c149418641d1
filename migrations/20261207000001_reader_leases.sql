-- Reader leases: an instance serves a cache only while it knows every SKU that cache is owed
-- (docs/reader-leases.md). Every instance renews, for each cache it reads, a row here, and
-- with it reads the cache's whole owed book from `cache_repairs`. A write whose cache update
-- failed hands its record over and is acknowledged once every other reader's row shows that it
-- has applied a book that includes the record, or once that reader's lease has ended.

CREATE TABLE cache_readers (
    ledger     text        NOT NULL,
    -- One running instance (random, new on every start).
    reader     text        NOT NULL,
    -- The WAL position the reader's applied owed book is complete up to: every record handed
    -- over before a position at or below this is in the book it serves by.
    applied    pg_lsn      NOT NULL DEFAULT '0/0',
    -- The primary's timeline `applied` was read on: positions of another history compare
    -- with nothing (a promoted standby may reuse them).
    applied_on integer     NOT NULL DEFAULT 0,
    -- How long a lease lasts from the moment its renewal was sent.
    lease_ms   integer     NOT NULL,
    renewed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ledger, reader)
);

-- Which epoch of each cache is *authoritative*: the data set readers may serve and writers
-- must install into. An instance that starts an epoch (a new data set, a restart, a failover,
-- a lapse) records it here before the epoch can be used, and every reader learns it with
-- its lease: a Redis the deployment moved away from (split brain: an old master still
-- running after its replica was promoted) is neither read nor counted as a successful
-- update, whoever can still reach it.
CREATE TABLE cache_epochs (
    ledger      text        PRIMARY KEY,
    epoch       text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Records `new_epoch` as the authoritative epoch of `for_ledger` and notifies every instance,
-- so that each renews its lease (and learns it) at once.
CREATE FUNCTION record_cache_epoch(for_ledger text, new_epoch text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO cache_epochs AS e (ledger, epoch) VALUES (for_ledger, new_epoch)
    ON CONFLICT (ledger) DO UPDATE SET epoch = EXCLUDED.epoch, recorded_at = now();
    PERFORM pg_notify('product_size_changes', '');
END;
$$;

-- The primary's current timeline (the first 8 hexadecimal digits of its WAL file name).
CREATE FUNCTION cache_reader_timeline() RETURNS integer
LANGUAGE sql VOLATILE AS $$
    SELECT ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::integer
$$;

-- Renews the lease of `by_reader` on the cache `for_ledger`: publishes `applied_to` (how far
-- the book the reader applied before this call reaches), then reads the primary's WAL insert
-- position minus one and, in a later snapshot, the whole owed book and the authoritative
-- epoch. `registered` is false (the book grants no lease) when the row was made by this
-- call, since a book read in the same transaction may predate a writer's check that did not
-- see the row; and when the ledger's registration as a follower of the table has lapsed,
-- since its records may have been forgotten (`forget_lapsed_cache_ledgers`) and its epoch is
-- replaced before it is registered again (`follow_cache_ledgers`' caller).
--
-- Each statement must take its own snapshot (READ COMMITTED): under REPEATABLE READ the book
-- would be as old as the call, older than `visible`.
CREATE FUNCTION renew_cache_reader(for_ledger text, by_reader text, applied_to text,
                                   applied_timeline integer, lease integer)
RETURNS TABLE (registered boolean, visible text, timeline integer, authority text,
               skus text[], versions bigint[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    had_row boolean;
    existed boolean;
    here text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'renew_cache_reader needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    UPDATE cache_readers AS r
       SET applied = applied_to::pg_lsn, applied_on = applied_timeline, lease_ms = lease,
           renewed_at = now()
     WHERE r.ledger = for_ledger AND r.reader = by_reader;
    had_row := FOUND;
    IF NOT had_row THEN
        INSERT INTO cache_readers (ledger, reader, lease_ms)
        VALUES (for_ledger, by_reader, lease)
        ON CONFLICT (ledger, reader) DO NOTHING;
    END IF;
    existed := had_row AND EXISTS (
        SELECT 1 FROM cache_ledgers AS l
         WHERE l.ledger = for_ledger AND l.seen_at > now() - interval '45 seconds');
    -- Read before the next statement's snapshot: a position at or below it was read after a
    -- commit that the snapshot therefore includes.
    here := (pg_current_wal_insert_lsn() - 1)::text;
    RETURN QUERY
        SELECT existed, here, cache_reader_timeline(),
               (SELECT e.epoch FROM cache_epochs AS e WHERE e.ledger = for_ledger),
               coalesce(array_agg(c.sku ORDER BY c.sku), '{}'),
               coalesce(array_agg(c.version ORDER BY c.sku), '{}')
          FROM cache_repairs AS c
         WHERE c.cache_prefix = for_ledger;
END;
$$;

-- Records that the cache `for_ledger` missed a write: the transactions `xacts` (their own-write
-- rows are handed over) and the rows `owed_skus` at `owed_versions` (rows the write only
-- reported unchanged have no own-write row). Notifies every instance, so that each renews its
-- lease, and so learns the SKUs are owed, at once. Returns how many records that made.
CREATE FUNCTION owe_failed_write(for_ledger text, xacts bigint[], owed_skus text[],
                                 owed_versions bigint[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    made bigint;
BEGIN
    PERFORM hand_over_own_writes(for_ledger, xacts, interval '1 hour');
    WITH owed AS (
        SELECT o.sku, max(o.version) AS version
          FROM unnest(owed_skus, owed_versions) AS o(sku, version)
         GROUP BY o.sku
    ), recorded AS (
        INSERT INTO cache_repairs AS r (cache_prefix, sku, version, own_write)
        SELECT for_ledger, sku, version, true FROM owed ORDER BY sku
        ON CONFLICT (cache_prefix, sku) DO UPDATE
            SET version = GREATEST(r.version, EXCLUDED.version),
                own_write = r.own_write AND EXCLUDED.own_write
        RETURNING 1
    )
    SELECT count(*) INTO made FROM recorded;
    PERFORM pg_notify('product_size_changes', '');
    RETURN made;
END;
$$;
