-- Who redeemed an enrollment code (storage/claims.py). Every RegisterDevice appends a claim and
-- reads the enrollment's claims back; the winner is the claim with the lowest (_block_number,
-- device_id). With enable_block_number_column every row keeps the number of the insert that
-- wrote it; a MergeTree numbers an insert when it commits, under the lock that makes it visible,
-- so a claim that can see itself sees every claim numbered before it: two claimants, in one
-- process or in two sharing this ClickHouse, agree on one winner, and only the winner writes its
-- device. Plain MergeTree: claims are never collapsed. Codes live at most 30 days, so a claim is
-- kept 40 days and expires by whole parts of its month.
CREATE TABLE IF NOT EXISTS enrollment_claims
(
    tenant_id     String,
    enrollment_id String,
    device_id     String,
    claimed_at    DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(claimed_at)
ORDER BY (tenant_id, enrollment_id)
TTL toDateTime(claimed_at) + INTERVAL 40 DAY
SETTINGS enable_block_number_column = 1;
