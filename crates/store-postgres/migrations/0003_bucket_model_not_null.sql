-- Missing and blank models become 'unknown'; then model is NOT NULL and part of the key
-- (user_id + device_id + source + model + hour_start). The old key had one row per
-- (device, source, hour_start), so the new key cannot collide.
UPDATE usage_buckets SET model = 'unknown' WHERE model IS NULL OR btrim(model) = '';
ALTER TABLE usage_buckets ALTER COLUMN model SET NOT NULL;
ALTER TABLE usage_buckets ADD CONSTRAINT usage_buckets_model_not_blank CHECK (model <> '');
ALTER TABLE usage_buckets DROP CONSTRAINT usage_buckets_pkey;
ALTER TABLE usage_buckets ADD PRIMARY KEY (user_id, device_id, source, model, hour_start);
CREATE INDEX usage_buckets_user_hour_idx ON usage_buckets (user_id, hour_start);
