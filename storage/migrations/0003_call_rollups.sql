-- Month rollups (storage/rollups.py): one tenant's calls in whole UTC months (partitions of
-- calls), newest versions only (FINAL), aggregated per (employee, client) and per (employee,
-- local day): a "month" run per month, and "span" runs that add up the month runs of
-- consecutive months without the employee. Reports make a run on first use and reuse it only
-- while its months and the excluded numbers are unchanged: ``state`` records them as the
-- highest block number and data version of their active parts, which every insert and every
-- mutation (a lightweight DELETE too) raises. A run's rows are written before its entry here, so
-- a run that died half-way is never read. Readers take runs younger than 30 days; entries
-- expire a day later and rows two days later, so a listed run always has all its rows.
CREATE TABLE IF NOT EXISTS call_rollup_runs
(
    tenant_id  LowCardinality(String),
    kind       LowCardinality(String),
    month      UInt32,
    last_month UInt32,
    timezone   LowCardinality(String),
    state      String,
    run_id     UUID,
    created_at DateTime('UTC')
)
ENGINE = MergeTree
PARTITION BY tuple()
ORDER BY (tenant_id, kind, month, last_month, timezone, state)
TTL created_at + INTERVAL 31 DAY;

-- is_client = 1: one (employee, client), day unset (a span run: one client, employee unset);
-- is_client = 0: one employee's local day in the run's time zone, client_key unset. whole_day = 1
-- marks a day that lies wholly within the run's months: its working seconds (day_seconds) are
-- final; a span run sums all of them into one such row with neither employee nor day.
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
    created_at         DateTime('UTC')
)
ENGINE = MergeTree
PARTITION BY tuple()
ORDER BY (tenant_id, run_id, is_client, employee_id, client_key, day)
TTL created_at + INTERVAL 32 DAY;
