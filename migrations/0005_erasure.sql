-- Erasure by crypto-shredding: the device's salt and device_id go; a keyed hash of the device_id
-- stays so that checks can answer `erased`. No time is kept with it: a time could be matched
-- with the erase entry's recorded_at, linking the tombstone to the old subject.
CREATE TABLE erased_devices (
    tombstone bytea PRIMARY KEY CHECK (length(tombstone) = 32)
);

-- Consent events name a device and its subject; erasure removes those still held.
ALTER TABLE webhook_deliveries ADD COLUMN subject text;
CREATE INDEX webhook_deliveries_by_subject ON webhook_deliveries (subject) WHERE subject IS NOT NULL;
