-- Rollup sets (storage/rollups.py): a tenant's runs come in one set per (time zone,
-- include_excluded) that reports ask for, and only the first few sets to be claimed may be made.
-- Sets are ranked by the block number of their oldest entry, which every insert takes above all
-- earlier ones, so that of two services claiming the last free place at once the one that wrote
-- second always sees the other ahead of it. Entries written before this setting report their
-- part's first block number until merged, after which it is kept per row.
ALTER TABLE call_rollup_runs MODIFY SETTING enable_block_number_column = 1;
