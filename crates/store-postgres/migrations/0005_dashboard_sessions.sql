-- The dashboard: one-time login codes and browser sessions (hashes only), keyed by user.
CREATE TABLE login_codes (
    code_hash text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at bigint NOT NULL,
    used_at bigint
);

CREATE TABLE web_sessions (
    token_hash text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at bigint NOT NULL
);
CREATE INDEX web_sessions_expires_idx ON web_sessions (expires_at);
