-- Provider usage: encrypted organisation keys, daily usage results, per-key cursors.
-- Keyed by user_id first, like the server's own tables. Times are unix seconds (UTC).
CREATE TABLE provider_keys (
    user_id INTEGER NOT NULL,
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    base_url TEXT NOT NULL,
    -- format byte, 12-byte nonce, AES-256-GCM ciphertext and tag
    sealed_key BLOB NOT NULL,
    masked_key TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX provider_keys_user_id_idx ON provider_keys (user_id, id);

-- One row per result: a window of one key and one combination of dimensions. dims_hash digests
-- every dimension with nulls included, so the primary key treats equal nulls as equal.
CREATE TABLE provider_usage_windows (
    user_id INTEGER NOT NULL,
    provider_key_id INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    dims_hash TEXT NOT NULL,
    project_id TEXT,
    provider_user_id TEXT,
    api_key_id TEXT,
    model TEXT,
    batch INTEGER,
    service_tier TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    input_cached_tokens INTEGER NOT NULL DEFAULT 0,
    input_cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    input_uncached_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    input_text_tokens INTEGER NOT NULL DEFAULT 0,
    output_text_tokens INTEGER NOT NULL DEFAULT 0,
    input_cached_text_tokens INTEGER NOT NULL DEFAULT 0,
    input_audio_tokens INTEGER NOT NULL DEFAULT 0,
    input_cached_audio_tokens INTEGER NOT NULL DEFAULT 0,
    output_audio_tokens INTEGER NOT NULL DEFAULT 0,
    input_image_tokens INTEGER NOT NULL DEFAULT 0,
    input_cached_image_tokens INTEGER NOT NULL DEFAULT 0,
    output_image_tokens INTEGER NOT NULL DEFAULT 0,
    num_model_requests INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, provider_key_id, window_start, window_end, dims_hash)
) WITHOUT ROWID;
CREATE INDEX provider_usage_windows_day_idx ON provider_usage_windows (user_id, window_start);

CREATE TABLE provider_cursors (
    user_id INTEGER NOT NULL,
    provider_key_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    last_complete_day TEXT,
    next_page TEXT,
    page_start INTEGER,
    page_end INTEGER,
    error_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, provider_key_id, name)
);
