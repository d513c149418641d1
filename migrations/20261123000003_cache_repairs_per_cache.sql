-- Repairs belong to the cache that missed the update: deployments that share a database but
-- not a cache (their own CACHE_KEY_PREFIX) must not apply or clear each other's repairs.
ALTER TABLE cache_repairs ADD COLUMN cache_prefix text NOT NULL DEFAULT '';
ALTER TABLE cache_repairs DROP CONSTRAINT cache_repairs_pkey;
ALTER TABLE cache_repairs ADD PRIMARY KEY (cache_prefix, sku);
