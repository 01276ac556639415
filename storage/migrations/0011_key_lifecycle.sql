-- Keys and tenants (issue 12, item 1).
-- When an API key was revoked; NULL while it is valid (RevokeApiKey writes a revoked version).
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS revoked_at Nullable(DateTime64(3, 'UTC'));

-- When each API key was last used, to about a minute: every process keeps the times in memory
-- as keys authenticate and writes the changed ones here about once a minute (storage/tenants.py).
-- The newest time wins; ListApiKeys reads the latest with max().
CREATE TABLE IF NOT EXISTS api_key_uses
(
    tenant_id    String,
    key_id       String,
    last_used_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(last_used_at)
PARTITION BY tuple()
ORDER BY (tenant_id, key_id)
