-- Removes the daily rollup (migration 4) cleanly: its triggers, their function, then its table.
-- Buckets are untouched; usage queries fall back to scanning buckets while the rollup is absent.
-- The migration record is deleted too, so the next `tokenledger serve` re-creates the rollup
-- from the buckets. Apply with: psql "$DATABASE_URL" -f rollup-rollback.sql
BEGIN;
DROP TRIGGER IF EXISTS usage_buckets_rollup_insert ON usage_buckets;
DROP TRIGGER IF EXISTS usage_buckets_rollup_update ON usage_buckets;
DROP TRIGGER IF EXISTS usage_buckets_rollup_delete ON usage_buckets;
DROP FUNCTION IF EXISTS usage_daily_rollup_apply();
DROP TABLE IF EXISTS usage_daily_rollup;
DELETE FROM schema_migrations WHERE version = 4;
COMMIT;
