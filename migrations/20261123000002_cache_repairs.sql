-- Cache updates that writes still owe Redis (an outbox). Each write records its SKU and
-- version here in its own transaction, so neither a Redis outage nor a crash between commit
-- and cache update can lose the repair. A row is deleted once Redis holds that version (or a
-- newer one); a background worker applies what is left once Redis answers again.
CREATE TABLE cache_repairs (
    sku        text        PRIMARY KEY,
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
