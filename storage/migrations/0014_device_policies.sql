-- Device policies (issue 12, item 6): a tenant's policy (employee_id '') and per-employee
-- overrides, each a whole policy. Every process holds them in memory (storage/policies.py,
-- refreshed every second), so ingest finds a device's policy per batch without a query.
-- Clearing an override writes a newer row with cleared = true; rows are never deleted, so the
-- newest version of a tenant's rows is its policy version.
CREATE TABLE IF NOT EXISTS device_policies
(
    tenant_id       String,
    employee_id     String,
    cleared         Bool,
    sim_slots       Array(Int32),
    has_hours       Bool,
    start_minute    UInt16,
    end_minute      UInt16,
    weekdays        Array(UInt8),
    timezone        String,
    sync_interval_s UInt32,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, employee_id);
