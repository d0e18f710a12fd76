-- The daily rollup keyed user_id + day + source + model (UTC days), kept by triggers on
-- usage_buckets and filled from the buckets already stored. Rollback: sql/rollup-rollback.sql.
CREATE TABLE usage_daily_rollup (
    user_id INTEGER NOT NULL,
    day TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, source, model)
) WITHOUT ROWID;

CREATE TRIGGER usage_buckets_rollup_insert AFTER INSERT ON usage_buckets
BEGIN
    INSERT INTO usage_daily_rollup (
        user_id, day, source, model, input_tokens, cached_input_tokens,
        cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
    ) VALUES (
        NEW.user_id, date(NEW.hour_start, 'unixepoch'), NEW.source, NEW.model,
        NEW.input_tokens, NEW.cached_input_tokens, NEW.cache_creation_input_tokens,
        NEW.output_tokens, NEW.reasoning_output_tokens, NEW.total_tokens
    )
    ON CONFLICT (user_id, day, source, model) DO UPDATE SET
        input_tokens = input_tokens + excluded.input_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        reasoning_output_tokens = reasoning_output_tokens + excluded.reasoning_output_tokens,
        total_tokens = total_tokens + excluded.total_tokens;
END;

CREATE TRIGGER usage_buckets_rollup_delete AFTER DELETE ON usage_buckets
BEGIN
    INSERT INTO usage_daily_rollup (
        user_id, day, source, model, input_tokens, cached_input_tokens,
        cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
    ) VALUES (
        OLD.user_id, date(OLD.hour_start, 'unixepoch'), OLD.source, OLD.model,
        -OLD.input_tokens, -OLD.cached_input_tokens, -OLD.cache_creation_input_tokens,
        -OLD.output_tokens, -OLD.reasoning_output_tokens, -OLD.total_tokens
    )
    ON CONFLICT (user_id, day, source, model) DO UPDATE SET
        input_tokens = input_tokens + excluded.input_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        reasoning_output_tokens = reasoning_output_tokens + excluded.reasoning_output_tokens,
        total_tokens = total_tokens + excluded.total_tokens;
END;

-- An update may move a bucket to another key: take the old values off the old day and add the
-- new ones to the new day.
CREATE TRIGGER usage_buckets_rollup_update AFTER UPDATE ON usage_buckets
BEGIN
    INSERT INTO usage_daily_rollup (
        user_id, day, source, model, input_tokens, cached_input_tokens,
        cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
    ) VALUES (
        OLD.user_id, date(OLD.hour_start, 'unixepoch'), OLD.source, OLD.model,
        -OLD.input_tokens, -OLD.cached_input_tokens, -OLD.cache_creation_input_tokens,
        -OLD.output_tokens, -OLD.reasoning_output_tokens, -OLD.total_tokens
    )
    ON CONFLICT (user_id, day, source, model) DO UPDATE SET
        input_tokens = input_tokens + excluded.input_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        reasoning_output_tokens = reasoning_output_tokens + excluded.reasoning_output_tokens,
        total_tokens = total_tokens + excluded.total_tokens;
    INSERT INTO usage_daily_rollup (
        user_id, day, source, model, input_tokens, cached_input_tokens,
        cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
    ) VALUES (
        NEW.user_id, date(NEW.hour_start, 'unixepoch'), NEW.source, NEW.model,
        NEW.input_tokens, NEW.cached_input_tokens, NEW.cache_creation_input_tokens,
        NEW.output_tokens, NEW.reasoning_output_tokens, NEW.total_tokens
    )
    ON CONFLICT (user_id, day, source, model) DO UPDATE SET
        input_tokens = input_tokens + excluded.input_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        reasoning_output_tokens = reasoning_output_tokens + excluded.reasoning_output_tokens,
        total_tokens = total_tokens + excluded.total_tokens;
END;

INSERT INTO usage_daily_rollup (
    user_id, day, source, model, input_tokens, cached_input_tokens,
    cache_creation_input_tokens, output_tokens, reasoning_output_tokens, total_tokens
)
SELECT
    user_id, date(hour_start, 'unixepoch'), source, model, sum(input_tokens),
    sum(cached_input_tokens), sum(cache_creation_input_tokens), sum(output_tokens),
    sum(reasoning_output_tokens), sum(total_tokens)
FROM usage_buckets
GROUP BY 1, 2, 3, 4;
