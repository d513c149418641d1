-- One cache warm-up per deployment, whichever instance an operator's request reaches. The row
-- of a cache is the lock, the shared status and the cancel switch: a warm-up starts only by
-- claiming it, the instance running it reports its progress here every second and reads
-- whether it was cancelled, and any instance answers the status from it. A run whose reports
-- stopped (its instance died) no longer holds the lock once they are older than the service's
-- limit, and reads as failed.
CREATE TABLE cache_warm_ups (
    ledger             text             PRIMARY KEY,
    -- The run holding the row (random, new on every start): only it reports and finishes.
    run                text             NOT NULL,
    state              text             NOT NULL
        CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    rate_limit         integer          NOT NULL,
    total              bigint           NOT NULL DEFAULT 0,
    rows_read          bigint           NOT NULL DEFAULT 0,
    installed          bigint           NOT NULL DEFAULT 0,
    skipped            bigint           NOT NULL DEFAULT 0,
    pages_from_primary bigint           NOT NULL DEFAULT 0,
    elapsed_secs       double precision NOT NULL DEFAULT 0,
    error              text,
    cancel_requested   boolean          NOT NULL DEFAULT false,
    started_at         timestamptz      NOT NULL DEFAULT now(),
    reported_at        timestamptz      NOT NULL DEFAULT now(),
    finished_at        timestamptz
);
