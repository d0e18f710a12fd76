-- Missing and blank models become 'unknown'; then model is NOT NULL and part of the key
-- (user_id + device_id + source + model + hour_start). SQLite cannot alter a primary key, so
-- the table is rebuilt. The old key had one row per (device, source, hour_start), so the copy
-- cannot collide.
UPDATE usage_buckets SET model = 'unknown' WHERE model IS NULL OR trim(model) = '';

CREATE TABLE usage_buckets_v3 (
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL CHECK (model <> ''),
    hour_start INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, source, model, hour_start)
) WITHOUT ROWID;

INSERT INTO usage_buckets_v3 (
    user_id, device_id, source, model, hour_start, input_tokens, cached_input_tokens,
    cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens, updated_at
)
SELECT
    user_id, device_id, source, model, hour_start, input_tokens, cached_input_tokens,
    cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens, updated_at
FROM usage_buckets;

DROP TABLE usage_buckets;
ALTER TABLE usage_buckets_v3 RENAME TO usage_buckets;
CREATE INDEX usage_buckets_user_hour_idx ON usage_buckets (user_id, hour_start);
