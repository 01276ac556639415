-- Rollups of whole UTC days besides whole months (storage/rollups.py). A month's state comes
-- from its partition in system.parts; days share their month's partition, so a day is stamped
-- from its own rows instead: the highest block number among them. With
-- enable_block_number_column every row keeps the number of the insert that wrote it
-- (``_block_number``) through merges, so a day's highest number rises with every insert into it
-- and is left alone by inserts into other days and by merges. Parts written before this setting
-- report their own first block number until merged, after which it is kept per row.
ALTER TABLE calls MODIFY SETTING enable_block_number_column = 1;

-- The rollup tables hold nothing but caches: they are made again with unit columns that name a
-- month (yyyymm) or a day (yyyymmdd) instead of months only.
DROP TABLE IF EXISTS call_rollup_runs;
DROP TABLE IF EXISTS call_rollups;

-- One entry per run: kind "month" (one UTC month, first_unit = last_unit = yyyymm), "day" (one
-- UTC day, first_unit = last_unit = yyyymmdd) or "span" (the runs of consecutive units added
-- up without the employee; first_unit and last_unit are the yyyymmdd of its first and last day). ``state`` is what the run was computed from (see
-- storage/rollups.py): a run is only read while the state read now is the same. A run's rows are
-- written before its entry here, so a run that died half-way is never read. Readers take month
-- runs younger than 30 days and other runs younger than 2 days; entries and rows expire a day
-- later (rows by whole partitions of the day they were made and their lifetime, so superseded
-- runs go without a mutation).
CREATE TABLE IF NOT EXISTS call_rollup_runs
(
    tenant_id  LowCardinality(String),
    kind       LowCardinality(String),
    first_unit UInt32,
    last_unit  UInt32,
    timezone   LowCardinality(String),
    state      String,
    run_id     UUID,
    created_at DateTime('UTC')
)
ENGINE = MergeTree
PARTITION BY tuple()
ORDER BY (tenant_id, kind, first_unit, last_unit, timezone, state)
TTL created_at + toIntervalDay(if(kind = 'month', 31, 3));

-- is_client = 1: one (employee, client), day unset (a span run: one client, employee unset);
-- is_client = 0: one employee's local day in the run's time zone, client_key unset. whole_day = 1
-- marks a day that lies wholly within the run's units: its working seconds (day_seconds) are
-- final; a span run sums all of them, figures and seconds, into one such row with neither
-- employee nor day.
-- Figures as in storage/summaries.py.
CREATE TABLE IF NOT EXISTS call_rollups
(
    tenant_id          LowCardinality(String),
    run_id             UUID,
    is_client          UInt8,
    whole_day          UInt8,
    employee_id        LowCardinality(String),
    client_key         UInt64,
    day                Date,
    calls              UInt32,
    incoming           UInt32,
    outgoing           UInt32,
    missed             UInt32,
    rejected           UInt32,
    connected          UInt32,
    connected_incoming UInt32,
    connected_outgoing UInt32,
    duration           UInt64,
    incoming_duration  UInt64,
    outgoing_duration  UInt64,
    first_call_at_ms   Int64,
    last_call_at_ms    Int64,
    last_call_end_ms   Int64,
    day_seconds        Int64,
    created_at         DateTime('UTC'),
    -- days the run's rows are kept (its readers' lifetime and one day)
    keep_days          UInt16
)
ENGINE = MergeTree
PARTITION BY (toYYYYMMDD(created_at), keep_days)
ORDER BY (tenant_id, run_id, is_client, employee_id, client_key, day)
TTL created_at + toIntervalDay(keep_days)
SETTINGS ttl_only_drop_parts = 1;
