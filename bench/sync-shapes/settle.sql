-- The writer's settle, appended to a shape: it clears the record of its own transaction in a
-- transaction of its own, as the service does once Redis holds the versions
-- (src/db/sizes.rs settle_own_writes). Uses the batch's :xact.
DELETE FROM cache_own_writes WHERE ledger = 'pgbench' AND xact = :xact;
