-- Provider usage: encrypted organisation keys, daily usage results, per-key cursors.
-- Keyed by user_id first, like the server's own tables. Times are unix seconds (UTC).
CREATE TABLE provider_keys (
    user_id bigint NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    provider text NOT NULL,
    name text NOT NULL,
    base_url text NOT NULL,
    -- format byte, 12-byte nonce, AES-256-GCM ciphertext and tag
    sealed_key bytea NOT NULL,
    masked_key text NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    created_at bigint NOT NULL,
    PRIMARY KEY (user_id, id)
);

-- One row per result: a window of one key and one combination of dimensions. dims_hash digests
-- every dimension with nulls included, so the primary key treats equal nulls as equal.
CREATE TABLE provider_usage_windows (
    user_id bigint NOT NULL,
    provider_key_id bigint NOT NULL,
    window_start bigint NOT NULL,
    window_end bigint NOT NULL,
    dims_hash text NOT NULL,
    project_id text,
    provider_user_id text,
    api_key_id text,
    model text,
    batch boolean,
    service_tier text,
    input_tokens bigint NOT NULL DEFAULT 0,
    input_cached_tokens bigint NOT NULL DEFAULT 0,
    input_cache_write_tokens bigint NOT NULL DEFAULT 0,
    input_uncached_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    input_text_tokens bigint NOT NULL DEFAULT 0,
    output_text_tokens bigint NOT NULL DEFAULT 0,
    input_cached_text_tokens bigint NOT NULL DEFAULT 0,
    input_audio_tokens bigint NOT NULL DEFAULT 0,
    input_cached_audio_tokens bigint NOT NULL DEFAULT 0,
    output_audio_tokens bigint NOT NULL DEFAULT 0,
    input_image_tokens bigint NOT NULL DEFAULT 0,
    input_cached_image_tokens bigint NOT NULL DEFAULT 0,
    output_image_tokens bigint NOT NULL DEFAULT 0,
    num_model_requests bigint NOT NULL DEFAULT 0,
    updated_at bigint NOT NULL,
    PRIMARY KEY (user_id, provider_key_id, window_start, window_end, dims_hash)
);
CREATE INDEX provider_usage_windows_day_idx ON provider_usage_windows (user_id, window_start);

CREATE TABLE provider_cursors (
    user_id bigint NOT NULL,
    provider_key_id bigint NOT NULL,
    name text NOT NULL,
    last_complete_day text,
    next_page text,
    page_start bigint,
    page_end bigint,
    error_count bigint NOT NULL DEFAULT 0,
    last_error text,
    updated_at bigint NOT NULL,
    PRIMARY KEY (user_id, provider_key_id, name)
);
