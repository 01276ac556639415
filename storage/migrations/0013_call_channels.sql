-- How a call's number was presented and which channel carried it (issue 12, items 5 and 7), as
-- the contract's enum numbers: presentation (NumberPresentation: 1 shown; 2, 3, 4 withheld,
-- unknown, payphone, the "private" client, see pipeline/encode.py), method (CallMethod: 1 phone,
-- 2 WhatsApp, 3 other VoIP) and mode (CallMode: 1 voice, 2 video). Ingest always writes a value
-- (never 0, UNSPECIFIED); calls stored before read as the defaults, which is what they were.
-- UInt8 rather than Enum8: the Arrow uint8 columns ingest writes go in without conversion, and
-- a value the contract adds later needs no migration. Almost every call has the same values, so
-- T64 + LZ4 (as for type) stores them in next to nothing.
ALTER TABLE calls
    ADD COLUMN IF NOT EXISTS presentation UInt8 DEFAULT 1 CODEC(T64, LZ4),
    ADD COLUMN IF NOT EXISTS method UInt8 DEFAULT 1 CODEC(T64, LZ4),
    ADD COLUMN IF NOT EXISTS mode UInt8 DEFAULT 1 CODEC(T64, LZ4);
