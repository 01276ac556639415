-- ``calls`` keeps only the keys of a call's number and name (see 0006 and storage/parties.py).
-- client_key stops being computed from number_bidx (the writer sends it, same bytes: the first 8
-- of the blind index, little-endian), so the number and name columns can go. Every statement
-- here is idempotent.
ALTER TABLE calls MODIFY COLUMN client_key UInt64 DEFAULT 0;

ALTER TABLE calls
    DROP COLUMN IF EXISTS number_bidx,
    DROP COLUMN IF EXISTS number_enc,
    DROP COLUMN IF EXISTS name_enc
SETTINGS mutations_sync = 2;

-- Codecs measured on loadtest/bench_reports.py data in this table's order (bytes a row, default
-- LZ4 -> chosen): started_at 4.97 -> 3.35 and version 5.00 -> 3.50 (Delta), synced_at 5.15 ->
-- 3.34, duration_s 2.40 -> 1.20 and type 0.67 -> 0.37 (T64), call_id 5.69 -> 2.30 (ZSTD).
-- ZSTD on every column gave 26 bytes a row instead of ~31 but made a 30-day FINAL scan 2.7x
-- slower (its decompression), so the columns every report scans keep LZ4 (call_id costs little
-- to decompress for what it saves); columns only CallHistory pages show take ZSTD.
-- client_key and name_key (random bytes) gain nothing from any codec. Parts written before take
-- them when merged.
ALTER TABLE calls
    MODIFY COLUMN call_id String CODEC(ZSTD(1)),
    MODIFY COLUMN type UInt8 CODEC(T64, LZ4),
    MODIFY COLUMN started_at DateTime64(3, 'UTC') CODEC(Delta, LZ4),
    MODIFY COLUMN duration_s UInt32 CODEC(T64, LZ4),
    MODIFY COLUMN sim_slot Int32 CODEC(T64, ZSTD(1)),
    MODIFY COLUMN sim_id LowCardinality(String) CODEC(ZSTD(1)),
    MODIFY COLUMN note_enc String CODEC(ZSTD(1)),
    MODIFY COLUMN recording_uri String CODEC(ZSTD(1)),
    MODIFY COLUMN version UInt64 CODEC(Delta, LZ4),
    MODIFY COLUMN synced_at DateTime64(3, 'UTC') CODEC(T64, LZ4);

-- Rewrites the existing parts now, with the codecs above and without the dropped columns' marks:
-- months already merged would otherwise keep their old encoding for good (2M calls of
-- loadtest/bench_reports.py: 142 -> 42 bytes a call after the drop, 27-31 after this, 1.9 s).
OPTIMIZE TABLE calls FINAL;
