-- Durable erasure (issue 11, item 10): EraseNumber records a tombstone per (tenant, client_key)
-- (the first 8 bytes of the number's blind index, as calls store it), and every server process
-- holds the tenant's tombstones in memory (storage/identities.py, refreshed with the identities),
-- so a device re-sending a call or contact with the number has it dropped at ingest instead of
-- stored. LiftErasure writes a newer row with lifted = true. Only the key is kept: no number,
-- no ciphertext.
CREATE TABLE IF NOT EXISTS erasures
(
    tenant_id  String,
    client_key UInt64,
    lifted     Bool,
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, client_key);
