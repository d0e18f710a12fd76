//! The PostgreSQL backend of the tokenledger server, for teams and companies.
//!
//! Queries are built at run time (sqlx `query`), so building never needs a live database. The
//! schema lives in `migrations/` (embedded, applied at connect under an advisory lock, only ever
//! appended); the daily rollup is kept by statement-level plpgsql triggers, and
//! `sql/rollup-rollback.sql` removes it.

use async_trait::async_trait;
use jiff::civil::Date;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::str::FromStr;
use tokenledger_core::TokenCounts;
use tokenledger_store::{
    day_start_utc, stored_u64, Device, DeviceId, DeviceUsage, IngestCounts, Migration, NewBucket,
    Period, Result, Store, StoreError, UsageFilter, UsageRow, User, UserId, WebSession,
};

/// The embedded migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "bucket_model_column",
        sql: include_str!("../migrations/0002_bucket_model_column.sql"),
    },
    Migration {
        version: 3,
        name: "bucket_model_not_null",
        sql: include_str!("../migrations/0003_bucket_model_not_null.sql"),
    },
    Migration {
        version: 4,
        name: "daily_rollup",
        sql: include_str!("../migrations/0004_daily_rollup.sql"),
    },
    Migration {
        version: 5,
        name: "dashboard_sessions",
        sql: include_str!("../migrations/0005_dashboard_sessions.sql"),
    },
];

/// Removes the daily rollup (triggers, function and table); buckets stay.
pub const ROLLUP_ROLLBACK_SQL: &str = include_str!("../sql/rollup-rollback.sql");

/// Key of the advisory lock that serialises migrations of concurrent servers.
const MIGRATION_LOCK: i64 = 0x746f6b656e6c6564; // "tokenled"

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::db(e)
}

/// Applies the embedded migrations not yet recorded, up to `upto` (all when `None`).
/// Returns the versions applied.
pub async fn migrate(conn: &mut PgConnection, upto: Option<i64>) -> Result<Vec<i64>> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    let result = migrate_locked(conn, upto).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(db_err);
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn migrate_locked(conn: &mut PgConnection, upto: Option<i64>) -> Result<Vec<i64>> {
    sqlx::raw_sql(
        "SET client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version bigint PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if upto.is_some_and(|u| m.version > u) {
            break;
        }
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
        )
        .bind(m.version)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
        if done {
            continue;
        }
        let wrap = |e: sqlx::Error| StoreError::Migration {
            version: m.version,
            name: m.name,
            source: Box::new(e),
        };
        let mut tx = conn.begin().await.map_err(wrap)?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(wrap)?;
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        applied.push(m.version);
    }
    Ok(applied)
}

/// Connects to `url` and applies migrations up to `upto`, without building a store. For tests
/// of the migration chain and for tooling.
pub async fn migrate_url(url: &str, upto: Option<i64>) -> Result<Vec<i64>> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
    let mut conn = PgConnection::connect_with(&opts).await.map_err(db_err)?;
    migrate(&mut conn, upto).await
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool to `url` (`postgres://...`) and applies every pending migration.
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::connect_with_pool_size(url, 16).await
    }

    pub async fn connect_with_pool_size(url: &str, max_connections: u32) -> Result<PgStore> {
        let opts =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        let mut conn = pool.acquire().await.map_err(db_err)?;
        migrate(&mut conn, None).await?;
        drop(conn);
        Ok(PgStore { pool })
    }

    /// The connection pool, for tooling and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs a SQL script (e.g. [`ROLLUP_ROLLBACK_SQL`]).
    pub async fn execute_script(&self, sql: &str) -> Result<()> {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .map_err(db_err)
            .map(|_| ())
    }
}

const USER_COLS: &str = "id, name, extract(epoch FROM created_at)::bigint";
const DEVICE_COLS: &str = "id, user_id, name, platform, extract(epoch FROM created_at)::bigint, \
     extract(epoch FROM last_seen_at)::bigint, extract(epoch FROM revoked_at)::bigint";

fn user_from_row(r: &PgRow) -> sqlx::Result<User> {
    Ok(User {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
    })
}

fn device_from_row(r: &PgRow) -> sqlx::Result<Device> {
    Ok(Device {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        name: r.try_get(2)?,
        platform: r.try_get(3)?,
        created_at: r.try_get(4)?,
        last_seen_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
    })
}

const SUM_COLS: &str = "sum(input_tokens)::bigint, sum(cached_input_tokens)::bigint, \
     sum(cache_creation_input_tokens)::bigint, sum(output_tokens)::bigint, \
     sum(reasoning_output_tokens)::bigint, sum(total_tokens)::bigint";

fn usage_row(r: &PgRow) -> Result<UsageRow> {
    let mut a = [0u64; 6];
    for (i, slot) in a.iter_mut().enumerate() {
        let v: Option<i64> = r.try_get(3 + i).map_err(db_err)?;
        *slot = stored_u64(v.unwrap_or(0))?;
    }
    Ok(UsageRow {
        period: r.try_get(0).map_err(db_err)?,
        source: r.try_get(1).map_err(db_err)?,
        model: r.try_get(2).map_err(db_err)?,
        tokens: TokenCounts::from_array(a),
    })
}

fn filter_sql(filter: &UsageFilter, sql: &mut String, first: usize) -> Vec<String> {
    let mut args = Vec::new();
    let mut n = first;
    if let Some(s) = filter.source {
        sql.push_str(&format!(" AND source = ${n}"));
        args.push(s.as_str().to_string());
        n += 1;
    }
    if let Some(m) = &filter.model {
        sql.push_str(&format!(" AND model = ${n}"));
        args.push(m.clone());
    }
    args
}

fn to_i64(v: u64) -> i64 {
    // Callers validate against MAX_TOKEN_VALUE; saturate rather than wrap if one did not.
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)
            .map(|_| ())
    }

    async fn create_user(&self, name: &str, token_hash: &str) -> Result<User> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (name, token_hash) VALUES ($1, $2) RETURNING {USER_COLS}"
        ))
        .bind(name)
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        user_from_row(&row).map_err(db_err)
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| user_from_row(r).map_err(db_err))
            .collect()
    }

    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| user_from_row(&r).map_err(db_err)).transpose()
    }

    async fn create_device(
        &self,
        user_id: UserId,
        name: &str,
        platform: &str,
        token_hash: &str,
    ) -> Result<Device> {
        let row = sqlx::query(&format!(
            "INSERT INTO devices (user_id, name, platform, token_hash) VALUES ($1, $2, $3, $4)
             RETURNING {DEVICE_COLS}"
        ))
        .bind(user_id)
        .bind(name)
        .bind(platform)
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        device_from_row(&row).map_err(db_err)
    }

    async fn device_by_token_hash(&self, token_hash: &str) -> Result<Option<Device>> {
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| device_from_row(&r).map_err(db_err)).transpose()
    }

    async fn list_devices(&self, user_id: UserId) -> Result<Vec<Device>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE user_id = $1 ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| device_from_row(r).map_err(db_err))
            .collect()
    }

    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE devices SET revoked_at = now()
             WHERE user_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(device_id)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn ingest(
        &self,
        user_id: UserId,
        device_id: DeviceId,
        buckets: &[NewBucket],
        now: i64,
    ) -> Result<IngestCounts> {
        // Sorted so that concurrent requests lock rows in the same order.
        let mut sorted: Vec<&NewBucket> = buckets.iter().collect();
        sorted.sort_by(|a, b| {
            (a.source.as_str(), &a.model, a.hour_start).cmp(&(
                b.source.as_str(),
                &b.model,
                b.hour_start,
            ))
        });
        let n = sorted.len();
        let mut sources = Vec::with_capacity(n);
        let mut models = Vec::with_capacity(n);
        let mut hours = Vec::with_capacity(n);
        let mut cols: [Vec<i64>; 6] = Default::default();
        for b in &sorted {
            sources.push(b.source.as_str());
            models.push(b.model.as_str());
            hours.push(b.hour_start);
            for (col, v) in cols.iter_mut().zip(b.tokens.as_array()) {
                col.push(to_i64(v));
            }
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // `xmax = 0` marks a freshly inserted row; rows whose values did not change are
        // neither updated nor returned.
        let rows = sqlx::query(
            "INSERT INTO usage_buckets AS b (user_id, device_id, source, model, hour_start,
                 input_tokens, cached_input_tokens, cache_creation_input_tokens, output_tokens,
                 reasoning_output_tokens, total_tokens, updated_at)
             SELECT $1, $2, t.source, t.model, to_timestamp(t.hs), t.i, t.c, t.cc, t.o, t.r,
                    t.tot, to_timestamp($12)
             FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],
                         $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
                  AS t(source, model, hs, i, c, cc, o, r, tot)
             ON CONFLICT (user_id, device_id, source, model, hour_start) DO UPDATE SET
                 input_tokens = excluded.input_tokens,
                 cached_input_tokens = excluded.cached_input_tokens,
                 cache_creation_input_tokens = excluded.cache_creation_input_tokens,
                 output_tokens = excluded.output_tokens,
                 reasoning_output_tokens = excluded.reasoning_output_tokens,
                 total_tokens = excluded.total_tokens,
                 updated_at = excluded.updated_at
             WHERE (b.input_tokens, b.cached_input_tokens, b.cache_creation_input_tokens,
                    b.output_tokens, b.reasoning_output_tokens, b.total_tokens)
                IS DISTINCT FROM
                   (excluded.input_tokens, excluded.cached_input_tokens,
                    excluded.cache_creation_input_tokens, excluded.output_tokens,
                    excluded.reasoning_output_tokens, excluded.total_tokens)
             RETURNING (xmax = 0) AS inserted",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(&sources)
        .bind(&models)
        .bind(&hours)
        .bind(&cols[0])
        .bind(&cols[1])
        .bind(&cols[2])
        .bind(&cols[3])
        .bind(&cols[4])
        .bind(&cols[5])
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut counts = IngestCounts::default();
        for r in &rows {
            if r.try_get::<bool, _>(0).map_err(db_err)? {
                counts.inserted += 1;
            } else {
                counts.updated += 1;
            }
        }
        counts.unchanged = n as u64 - counts.inserted - counts.updated;
        sqlx::query(
            "UPDATE devices SET last_seen_at = to_timestamp($3) WHERE user_id = $1 AND id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(counts)
    }

    async fn bucket_rows(
        &self,
        user_id: UserId,
        from_ts: i64,
        to_ts: i64,
        filter: &UsageFilter,
        period: Period,
    ) -> Result<Vec<UsageRow>> {
        let period_sql = match period {
            Period::All => "0::bigint",
            Period::Day => "(floor(extract(epoch FROM hour_start) / 86400) * 86400)::bigint",
            Period::HalfHour => "extract(epoch FROM hour_start)::bigint",
        };
        let mut sql = format!(
            "SELECT {period_sql} AS p, source, model, {SUM_COLS} FROM usage_buckets
             WHERE user_id = $1 AND hour_start >= to_timestamp($2) AND hour_start < to_timestamp($3)"
        );
        let extra = filter_sql(filter, &mut sql, 4);
        sql.push_str(match period {
            Period::All => " GROUP BY 2, 3 ORDER BY 2, 3",
            Period::Day | Period::HalfHour => " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        });
        let mut q = sqlx::query(&sql).bind(user_id).bind(from_ts).bind(to_ts);
        for a in &extra {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(usage_row).collect()
    }

    async fn rollup_rows(
        &self,
        user_id: UserId,
        from: Date,
        to: Date,
        filter: &UsageFilter,
        period: Period,
    ) -> Result<Vec<UsageRow>> {
        let period_sql = match period {
            Period::All => "0::bigint",
            Period::Day | Period::HalfHour => "(day - date '1970-01-01')::bigint * 86400",
        };
        let mut sql = format!(
            "SELECT {period_sql} AS p, source, model, {SUM_COLS} FROM usage_daily_rollup
             WHERE user_id = $1 AND day >= $2::date AND day <= $3::date"
        );
        let extra = filter_sql(filter, &mut sql, 4);
        // The constant period of `Period::All` stays out of the grouping key: hashing it with
        // every row doubles the cost of the aggregate.
        sql.push_str(match period {
            Period::All => " GROUP BY 2, 3 ORDER BY 2, 3",
            Period::Day | Period::HalfHour => " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        });
        let mut q = sqlx::query(&sql)
            .bind(user_id)
            .bind(from.to_string())
            .bind(to.to_string());
        for a in &extra {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(usage_row).collect()
    }

    async fn rebuild_rollup(&self, from: Date, to: Date) -> Result<u64> {
        let from_ts = day_start_utc(from);
        let to_ts = day_start_utc(to.tomorrow().unwrap_or(to));
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("DELETE FROM usage_daily_rollup WHERE day >= $1::date AND day <= $2::date")
            .bind(from.to_string())
            .bind(to.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let done = sqlx::query(
            "INSERT INTO usage_daily_rollup (user_id, day, source, model, input_tokens,
                 cached_input_tokens, cache_creation_input_tokens, output_tokens,
                 reasoning_output_tokens, total_tokens)
             SELECT user_id, (hour_start AT TIME ZONE 'UTC')::date, source, model,
                    sum(input_tokens), sum(cached_input_tokens),
                    sum(cache_creation_input_tokens), sum(output_tokens),
                    sum(reasoning_output_tokens), sum(total_tokens)
             FROM usage_buckets
             WHERE hour_start >= to_timestamp($1) AND hour_start < to_timestamp($2)
             GROUP BY 1, 2, 3, 4",
        )
        .bind(from_ts)
        .bind(to_ts)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn create_login_code(
        &self,
        user_id: UserId,
        code_hash: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM login_codes WHERE expires_at < extract(epoch FROM now())::bigint - 86400",
        )
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        sqlx::query("INSERT INTO login_codes (code_hash, user_id, expires_at) VALUES ($1, $2, $3)")
            .bind(code_hash)
            .bind(user_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn redeem_login_code(&self, code_hash: &str, now: i64) -> Result<Option<User>> {
        // One statement: the UPDATE's row lock makes a concurrent second redemption see the
        // code as used.
        let row = sqlx::query(&format!(
            "WITH used AS (
                 UPDATE login_codes SET used_at = $2
                 WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING user_id)
             SELECT {USER_COLS} FROM users WHERE id IN (SELECT user_id FROM used)"
        ))
        .bind(code_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| user_from_row(&r).map_err(db_err)).transpose()
    }

    async fn create_web_session(
        &self,
        user_id: UserId,
        token_hash: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM web_sessions WHERE expires_at <= extract(epoch FROM now())::bigint",
        )
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "INSERT INTO web_sessions (token_hash, user_id, csrf_token, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf_token)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn web_session(&self, token_hash: &str, now: i64) -> Result<Option<WebSession>> {
        let row = sqlx::query(
            "SELECT u.id, u.name, extract(epoch FROM u.created_at)::bigint, s.csrf_token,
                    s.expires_at
             FROM web_sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(WebSession {
            user: user_from_row(&r).map_err(db_err)?,
            csrf_token: r.try_get(3).map_err(db_err)?,
            expires_at: r.try_get(4).map_err(db_err)?,
        }))
    }

    async fn delete_web_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn device_usage(
        &self,
        user_id: UserId,
        from_ts: i64,
        to_ts: i64,
    ) -> Result<Vec<DeviceUsage>> {
        let rows = sqlx::query(&format!(
            "SELECT device_id, '' AS s, '' AS m, {SUM_COLS} FROM usage_buckets
             WHERE user_id = $1 AND hour_start >= to_timestamp($2) AND hour_start < to_timestamp($3)
             GROUP BY device_id ORDER BY device_id"
        ))
        .bind(user_id)
        .bind(from_ts)
        .bind(to_ts)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                usage_row(r).map(|u| DeviceUsage {
                    device_id: u.period,
                    tokens: u.tokens,
                })
            })
            .collect()
    }
}
