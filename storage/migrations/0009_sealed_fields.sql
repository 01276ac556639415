-- Fields that can carry a phone number are no longer stored in plaintext (issue 11, item 11):
-- Android recorders put the number in a recording's file name, and SIM ids, FCM ids, a lead's
-- company, city and zip code are free text a number can sit in. They become AES-256-GCM
-- ciphertexts under the tenant's data key (``*_enc``, ``b""`` for an empty value), like notes.
--
-- SQL cannot encrypt them: a tenant's data key exists only wrapped by the master key, which only
-- a server process holds, and the migrator runs SQL only. So the plaintext columns are dropped
-- and the ciphertext columns start empty: values stored before this migration are lost (a
-- recording_uri of an old call reads as ""), which is the point of the change. New uploads and
-- imports fill them. Telemetry coordinates are coarsened instead (2 decimals, about 1.1 km), which
-- SQL can do in place. Every statement is idempotent, so a start-up that died half-way runs the
-- file again safely.
ALTER TABLE calls
    ADD COLUMN IF NOT EXISTS sim_id_enc LowCardinality(String) CODEC(ZSTD(1)) AFTER sim_slot,
    ADD COLUMN IF NOT EXISTS recording_uri_enc String CODEC(ZSTD(1)) AFTER note_enc;

ALTER TABLE calls
    DROP COLUMN IF EXISTS sim_id,
    DROP COLUMN IF EXISTS recording_uri
SETTINGS mutations_sync = 2;

ALTER TABLE telemetry
    ADD COLUMN IF NOT EXISTS fcm_id_enc String AFTER model,
    ADD COLUMN IF NOT EXISTS sim_ids_enc Array(String) AFTER fcm_id_enc;

ALTER TABLE telemetry
    DROP COLUMN IF EXISTS fcm_id,
    DROP COLUMN IF EXISTS sim_ids
SETTINGS mutations_sync = 2;

-- Coordinates are kept to 2 decimals (~1.1 km): where a phone was, not which house.
ALTER TABLE telemetry
    UPDATE latitude = round(latitude, 2), longitude = round(longitude, 2)
    WHERE latitude != round(latitude, 2) OR longitude != round(longitude, 2)
SETTINGS mutations_sync = 2;

ALTER TABLE devices
    ADD COLUMN IF NOT EXISTS fcm_id_enc String AFTER version_code,
    ADD COLUMN IF NOT EXISTS sim_ids_enc Array(String) AFTER fcm_id_enc;

ALTER TABLE devices
    DROP COLUMN IF EXISTS fcm_id,
    DROP COLUMN IF EXISTS sim_ids
SETTINGS mutations_sync = 2;

ALTER TABLE leads
    ADD COLUMN IF NOT EXISTS company_enc String AFTER last_name_enc,
    ADD COLUMN IF NOT EXISTS city_enc String AFTER address_enc,
    ADD COLUMN IF NOT EXISTS zipcode_enc String AFTER country;

ALTER TABLE leads
    DROP COLUMN IF EXISTS company,
    DROP COLUMN IF EXISTS city,
    DROP COLUMN IF EXISTS zipcode
SETTINGS mutations_sync = 2;
