-- Webhooks (issue 13, item 1): subscriptions, their durable outbox, and the leases that let one
-- process at a time deliver a webhook's events (storage/outbox.py, server/webhooks.py).
--
-- A webhook's signing secret is kept as an AES-256-GCM ciphertext under the tenant's data key
-- (like every sealed field), so the server can sign with it and nobody can read it at rest.
-- events holds WebhookEvent numbers of the contract. Deleting writes is_deleted = 1.
CREATE TABLE IF NOT EXISTS webhooks
(
    tenant_id              String,
    webhook_id             String,
    url                    String,
    events                 Array(UInt8),
    include_numbers        Bool,
    never_attended_after_s UInt32,
    device_silent_after_s  UInt32,
    secret_enc             String,
    created_at             DateTime64(3, 'UTC'),
    version                UInt64,
    is_deleted             UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY tuple()
ORDER BY (tenant_id, webhook_id);

-- The outbox: one row per (webhook, event), written before the first attempt and again on each
-- change of state. An event's id and time are derived from its source record, so a re-derived
-- event has the same key; its creation row has version 0, below every state change (clock
-- nanoseconds), so re-creating a delivered or dead event changes nothing. The time leads the key
-- after the webhook: due events are read in event-time order, deliveries are listed newest first.
-- The body is sealed under the tenant's data key (it may hold decrypted numbers). client_key is
-- the pseudonym a client.never_attended event is about (0 for other events): before sending one,
-- the dispatcher checks the client got no connected call since, and drops it (is_deleted) if so.
-- retry_from starts the retry window (creation, or the replay). Rows expire 35 days after the
-- event, by whole months.
CREATE TABLE IF NOT EXISTS webhook_deliveries
(
    tenant_id       String,
    webhook_id      String,
    occurred_at     DateTime64(3, 'UTC'),
    event_id        String,
    type            LowCardinality(String),
    body_enc        String CODEC(ZSTD(1)),
    client_key      UInt64,
    state           Enum8('PENDING' = 1, 'DELIVERED' = 2, 'DEAD' = 3),
    attempts        UInt32,
    last_status     UInt16,
    last_error      String,
    next_attempt_at DateTime64(3, 'UTC'),
    retry_from      DateTime64(3, 'UTC'),
    version         UInt64,
    is_deleted      UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, webhook_id, occurred_at, event_id)
TTL toDateTime(occurred_at) + INTERVAL 35 DAY;

-- Who delivers a webhook's events: leases claimed without a lock, like enrollment codes (0005).
-- A lease is a sequence of terms; the holder renews by claiming the next term before its own
-- expires, anyone else claims it only once the latest term has expired. Every claimant of a term
-- appends a row and reads the term back: the winner is the row with the lowest (_block_number,
-- holder), which every reader names alike. calls_cursor_ms is how far (calls.synced_at) the
-- holder has derived events from calls; the next term starts from its winner's cursor. Only the
-- latest term matters, so rows expire a day after their term.
CREATE TABLE IF NOT EXISTS webhook_leases
(
    tenant_id       String,
    webhook_id      String,
    term            UInt64,
    holder          String,
    expires_at      DateTime64(3, 'UTC'),
    calls_cursor_ms UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(expires_at)
ORDER BY (tenant_id, webhook_id, term)
TTL toDateTime(expires_at) + INTERVAL 1 DAY
SETTINGS enable_block_number_column = 1;

-- Webhook derivation reads the calls synced since its cursor every second; calls are sorted by
-- start time, so a min-max index of synced_at lets that read skip every granule synced earlier.
-- Parts written before this migration are read whole until they merge.
ALTER TABLE calls ADD INDEX IF NOT EXISTS synced_at_minmax synced_at TYPE minmax GRANULARITY 1;
