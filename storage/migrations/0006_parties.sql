-- A call's number and name move out of ``calls`` into ``parties``, stored once per (tenant,
-- client_key, name_key) (storage/parties.py): in ``calls``, sorted by time, each row's blind index
-- and ciphertexts sat among unrelated rows and did not compress (143 bytes a call on 20M calls).
-- This migration adds name_key and fills both from the existing rows while the old columns are
-- still there; 0007 then drops them. Both only add or overwrite with equal values, so a start-up
-- that died half-way runs them again safely.
--
-- name_key: 0 for no name, else a 32-bit keyed hash of the name, never 0. New rows hash the
-- plaintext (pipeline/crypto.py); existing rows have only the ciphertext, so they hash that
-- instead. Keys only need to agree between calls and parties, which both take from here.
CREATE TABLE IF NOT EXISTS parties
(
    tenant_id   LowCardinality(String),
    client_key  UInt64,
    name_key    UInt32,
    number_bidx FixedString(32),
    number_enc  String,
    name_enc    String,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY tuple()
ORDER BY (tenant_id, client_key, name_key)
-- Small granules and compression blocks: readers look up a page's worth of scattered client
-- keys (101 keys among 185k parties: ~16 ms with the defaults, ~13 ms so, 1% larger).
SETTINGS index_granularity = 256, min_compress_block_size = 4096,
    max_compress_block_size = 16384, non_replicated_deduplication_window = 10000;

ALTER TABLE calls ADD COLUMN IF NOT EXISTS name_key UInt32;

ALTER TABLE calls
    UPDATE name_key = toUInt32(sipHash64(name_enc) % 4294967295) + 1
    WHERE name_enc != ''
SETTINGS mutations_sync = 2;

-- One row per key; a second run adds equal rows, which the engine collapses.
INSERT INTO parties
SELECT tenant_id, client_key, name_key, any(number_bidx), any(number_enc), any(name_enc),
       max(version)
FROM calls
GROUP BY tenant_id, client_key, name_key;
