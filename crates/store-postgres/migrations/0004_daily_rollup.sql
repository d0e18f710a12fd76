-- The daily rollup keyed user_id + day + source + model (UTC days), kept by statement-level
-- triggers on usage_buckets (one set-based upsert per statement, from the transition tables)
-- and filled from the buckets already stored. Rollback: sql/rollup-rollback.sql.
CREATE TABLE usage_daily_rollup (
    user_id bigint NOT NULL,
    day date NOT NULL,
    source text NOT NULL,
    model text NOT NULL,
    input_tokens bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_creation_input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    reasoning_output_tokens bigint NOT NULL DEFAULT 0,
    total_tokens bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, day, source, model)
);

CREATE FUNCTION usage_daily_rollup_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Deltas per (user, UTC day, source, model): new rows count up, old rows count down.
    -- Sorted so that concurrent statements lock rollup rows in the same order.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO usage_daily_rollup AS r (
            user_id, day, source, model, input_tokens, cached_input_tokens,
            cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
        )
        SELECT user_id, (hour_start AT TIME ZONE 'UTC')::date, source, model,
               sum(input_tokens), sum(cached_input_tokens), sum(cache_creation_input_tokens),
               sum(output_tokens), sum(reasoning_output_tokens), sum(total_tokens)
        FROM new_rows
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (user_id, day, source, model) DO UPDATE SET
            input_tokens = r.input_tokens + excluded.input_tokens,
            cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
            cache_creation_input_tokens = r.cache_creation_input_tokens + excluded.cache_creation_input_tokens,
            output_tokens = r.output_tokens + excluded.output_tokens,
            reasoning_output_tokens = r.reasoning_output_tokens + excluded.reasoning_output_tokens,
            total_tokens = r.total_tokens + excluded.total_tokens,
            updated_at = now();
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO usage_daily_rollup AS r (
            user_id, day, source, model, input_tokens, cached_input_tokens,
            cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
        )
        SELECT user_id, (hour_start AT TIME ZONE 'UTC')::date, source, model,
               -sum(input_tokens), -sum(cached_input_tokens), -sum(cache_creation_input_tokens),
               -sum(output_tokens), -sum(reasoning_output_tokens), -sum(total_tokens)
        FROM old_rows
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (user_id, day, source, model) DO UPDATE SET
            input_tokens = r.input_tokens + excluded.input_tokens,
            cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
            cache_creation_input_tokens = r.cache_creation_input_tokens + excluded.cache_creation_input_tokens,
            output_tokens = r.output_tokens + excluded.output_tokens,
            reasoning_output_tokens = r.reasoning_output_tokens + excluded.reasoning_output_tokens,
            total_tokens = r.total_tokens + excluded.total_tokens,
            updated_at = now();
    ELSE
        INSERT INTO usage_daily_rollup AS r (
            user_id, day, source, model, input_tokens, cached_input_tokens,
            cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
        )
        SELECT user_id, day, source, model,
               sum(i), sum(c), sum(cc), sum(o), sum(rs), sum(t)
        FROM (
            SELECT user_id, (hour_start AT TIME ZONE 'UTC')::date AS day, source, model,
                   input_tokens AS i, cached_input_tokens AS c,
                   cache_creation_input_tokens AS cc, output_tokens AS o,
                   reasoning_output_tokens AS rs, total_tokens AS t
            FROM new_rows
            UNION ALL
            SELECT user_id, (hour_start AT TIME ZONE 'UTC')::date, source, model,
                   -input_tokens, -cached_input_tokens, -cache_creation_input_tokens,
                   -output_tokens, -reasoning_output_tokens, -total_tokens
            FROM old_rows
        ) AS d
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (user_id, day, source, model) DO UPDATE SET
            input_tokens = r.input_tokens + excluded.input_tokens,
            cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
            cache_creation_input_tokens = r.cache_creation_input_tokens + excluded.cache_creation_input_tokens,
            output_tokens = r.output_tokens + excluded.output_tokens,
            reasoning_output_tokens = r.reasoning_output_tokens + excluded.reasoning_output_tokens,
            total_tokens = r.total_tokens + excluded.total_tokens,
            updated_at = now();
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER usage_buckets_rollup_insert
    AFTER INSERT ON usage_buckets
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_rollup_apply();

CREATE TRIGGER usage_buckets_rollup_update
    AFTER UPDATE ON usage_buckets
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_rollup_apply();

CREATE TRIGGER usage_buckets_rollup_delete
    AFTER DELETE ON usage_buckets
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_rollup_apply();

INSERT INTO usage_daily_rollup (
    user_id, day, source, model, input_tokens, cached_input_tokens,
    cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
)
SELECT user_id, (hour_start AT TIME ZONE 'UTC')::date, source, model,
       sum(input_tokens), sum(cached_input_tokens), sum(cache_creation_input_tokens),
       sum(output_tokens), sum(reasoning_output_tokens), sum(total_tokens)
FROM usage_buckets
GROUP BY 1, 2, 3, 4;
