-- Employees can be deactivated (UpdateEmployee, issue 12 item 2): an inactive employee stays
-- listed, gets no new enrollment, and its number may be given to another employee. Rows written
-- before this migration read as active.
ALTER TABLE employees ADD COLUMN IF NOT EXISTS active Bool DEFAULT true AFTER tags;

-- What the server last heard from each device (issue 12 item 3, storage/activity.py). Each
-- process keeps the devices it heard from in memory and writes the changed ones in one insert
-- every few seconds; several processes write rows for one device, so every column is a maximum
-- that merges keep and readers take again with max() ... GROUP BY: the newest time wins whichever
-- process wrote it. last_batch is (acked at ms, UploadResult) so that max() keeps the result of
-- the latest batch. Times are epoch milliseconds UTC, 0 for never.
CREATE TABLE IF NOT EXISTS device_activity
(
    tenant_id    String,
    device_id    String,
    last_seen_ms SimpleAggregateFunction(max, UInt64),
    last_sync_ms SimpleAggregateFunction(max, UInt64),
    last_batch   SimpleAggregateFunction(max, Tuple(UInt64, UInt8))
)
ENGINE = AggregatingMergeTree
PARTITION BY tuple()
ORDER BY (tenant_id, device_id);
