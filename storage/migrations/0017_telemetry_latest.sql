-- The latest telemetry sample of each device (ListDevices, DeviceHealth). They used to take it
-- with argMax over the device's whole telemetry history, so DeviceHealth, which looks at every
-- device of a tenant, read every sample the fleet ever sent: ~1M rows a day at 10,000 phones.
-- This table holds one row per device after merges (the materialized view adds one per device
-- and insert), so the read is bounded by the number of devices. `latest` is a tuple led by
-- captured_at: max() keeps the newest sample whichever insert or merge saw it, and readers take
-- max(latest) ... GROUP BY again, as for device_activity. A latest sample older than 90 days
-- goes as merges run, like the samples themselves (telemetry's TTL).
CREATE TABLE IF NOT EXISTS telemetry_latest
(
    tenant_id String,
    device_id String,
    latest    SimpleAggregateFunction(max,
        Tuple(DateTime64(3, 'UTC'), UInt8, Bool, UInt8, String, String))
)
ENGINE = AggregatingMergeTree
PARTITION BY tuple()
ORDER BY (tenant_id, device_id)
TTL toDateTime(latest.1) + INTERVAL 90 DAY DELETE;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_latest_mv TO telemetry_latest AS
SELECT tenant_id, device_id,
    max((captured_at, battery_pct, charging, network, app_version, android_version)) AS latest
FROM telemetry
GROUP BY tenant_id, device_id;

-- The samples stored before this migration. Running it again (a start-up that died here) adds
-- the same maxima, which change nothing.
INSERT INTO telemetry_latest (tenant_id, device_id, latest)
SELECT tenant_id, device_id,
    max((captured_at, battery_pct, charging, network, app_version, android_version))
FROM telemetry
GROUP BY tenant_id, device_id;
