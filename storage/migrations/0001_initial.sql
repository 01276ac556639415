-- Every table starts its ORDER BY with tenant_id: tenant isolation is the first key of every read.
-- Tables whose rows can be re-sent or updated use ReplacingMergeTree(version) keyed by the
-- record's identity, so re-sends collapse; readers use FINAL or argMax.
-- Numbers, names and notes are stored only as AEAD ciphertext (*_enc) plus, for numbers, a
-- 32-byte HMAC-SHA256 blind index (*_bidx) for grouping and joins.

CREATE TABLE IF NOT EXISTS tenants
(
    tenant_id      String,
    name           String,
    default_region LowCardinality(String),
    timezone       LowCardinality(String),
    created_at     DateTime64(3, 'UTC'),
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY tenant_id;

-- Per-tenant data keys wrapped (AES-256-GCM) by the master key. Deleting a tenant's rows here
-- crypto-shreds all of its numbers, names and notes.
CREATE TABLE IF NOT EXISTS tenant_keys
(
    tenant_id   String,
    key_id      UInt32,
    wrapped_key String,
    created_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, key_id);

CREATE TABLE IF NOT EXISTS api_keys
(
    tenant_id  String,
    key_id     String,
    name       String,
    role       Enum8('ADMIN' = 1, 'REPORTS' = 2),
    token_hash FixedString(32),
    created_at DateTime64(3, 'UTC'),
    revoked    Bool,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, key_id);

CREATE TABLE IF NOT EXISTS employees
(
    tenant_id   String,
    employee_id String,
    name_enc    String,
    number_enc  String,
    number_bidx FixedString(32),
    tags        Array(LowCardinality(String)),
    created_at  DateTime64(3, 'UTC'),
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, employee_id);

CREATE TABLE IF NOT EXISTS enrollments
(
    tenant_id     String,
    enrollment_id String,
    employee_id   String,
    code_hash     FixedString(32),
    created_at    DateTime64(3, 'UTC'),
    expires_at    DateTime64(3, 'UTC'),
    used_at       Nullable(DateTime64(3, 'UTC')),
    device_id     String,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, enrollment_id);

CREATE TABLE IF NOT EXISTS devices
(
    tenant_id       String,
    device_id       String,
    employee_id     String,
    token_hash      FixedString(32),
    model           String,
    manufacturer    String,
    android_version String,
    sdk_int         Int32,
    app_version     String,
    version_code    Int64,
    fcm_id          String,
    sim_ids         Array(String),
    region          LowCardinality(String),
    registered_at   DateTime64(3, 'UTC'),
    revoked         Bool,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, device_id);

-- A call is (tenant, device, call_id); version is updated_at_ms (or started_at_ms). started_at
-- never changes between versions of a call, so it can lead the sorting key: reports read a time
-- range of one tenant from the primary index, and ReplacingMergeTree still collapses the versions
-- of a call (same key). client_key is the first 8 bytes of the blind index, a cheap GROUP BY key.
-- The deduplication window makes a retried insert with the same insert_deduplication_token a
-- no-op even on a non-replicated table.
CREATE TABLE IF NOT EXISTS calls
(
    tenant_id     String,
    device_id     String,
    call_id       String,
    employee_id   String,
    number_bidx   FixedString(32),
    number_enc    String,
    name_enc      String,
    type          UInt8,
    started_at    DateTime64(3, 'UTC'),
    duration_s    UInt32,
    sim_slot      Int32,
    sim_id        String,
    note_enc      String,
    recording_uri String,
    version       UInt64,
    synced_at     DateTime64(3, 'UTC'),
    client_key    UInt64 MATERIALIZED reinterpretAsUInt64(substring(number_bidx, 1, 8))
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant_id, started_at, device_id, call_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The versions of each device's calls, keyed for lookup by device: what the ingest dedup layer
-- loads when it first sees a device. Filled by the view on every insert into calls.
CREATE TABLE IF NOT EXISTS call_versions
(
    tenant_id String,
    device_id String,
    call_id   String,
    version   UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, device_id, call_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS call_versions_mv TO call_versions AS
SELECT tenant_id, device_id, call_id, version FROM calls;

CREATE TABLE IF NOT EXISTS contacts
(
    tenant_id    String,
    device_id    String,
    contact_id   String,
    name_enc     String,
    numbers_enc  Array(String),
    numbers_bidx Array(FixedString(32)),
    photo_uri    String,
    deleted      Bool,
    version      UInt64,
    synced_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, device_id, contact_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Telemetry is appended and expires; a re-sent sample has the same key and collapses.
CREATE TABLE IF NOT EXISTS telemetry
(
    tenant_id       String,
    device_id       String,
    captured_at     DateTime64(3, 'UTC'),
    battery_pct     UInt8,
    charging        Bool,
    latitude        Float64,
    longitude       Float64,
    accuracy_m      Float32,
    network         UInt8,
    app_version     String,
    version_code    Int64,
    android_version String,
    sdk_int         Int32,
    model           String,
    fcm_id          String,
    sim_ids         Array(String),
    synced_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(captured_at)
ORDER BY (tenant_id, device_id, captured_at)
TTL toDateTime(captured_at) + INTERVAL 90 DAY DELETE
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS leads
(
    tenant_id      String,
    lead_id        String,
    employee_id    String,
    first_name_enc String,
    last_name_enc  String,
    company        String,
    primary_enc    String,
    primary_bidx   FixedString(32),
    secondary_enc  String,
    secondary_bidx FixedString(32),
    email_enc      String,
    address_enc    String,
    city           String,
    state          String,
    country        String,
    zipcode        String,
    tags           Array(LowCardinality(String)),
    created_at     DateTime64(3, 'UTC'),
    version        UInt64,
    is_deleted     UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY tuple()
ORDER BY (tenant_id, lead_id);

CREATE TABLE IF NOT EXISTS excluded_numbers
(
    tenant_id   String,
    number_bidx FixedString(32),
    number_enc  String,
    version     UInt64,
    is_deleted  UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY tuple()
ORDER BY (tenant_id, number_bidx);
