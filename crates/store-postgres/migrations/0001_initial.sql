-- The first schema: users, devices and usage buckets keyed without a model (as older servers had).
-- Every table is keyed by user_id first, so it can be distributed by user (Citus).
CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    user_id bigint NOT NULL REFERENCES users (id),
    id bigint GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    platform text NOT NULL,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz,
    revoked_at timestamptz,
    PRIMARY KEY (user_id, id)
);

CREATE TABLE usage_buckets (
    user_id bigint NOT NULL,
    device_id bigint NOT NULL,
    source text NOT NULL,
    hour_start timestamptz NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    reasoning_output_tokens bigint NOT NULL DEFAULT 0,
    total_tokens bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id, source, hour_start)
);
