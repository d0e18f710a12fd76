//! The PostgreSQL backend of [`ProviderStore`] (sqlx, runtime queries).

use crate::model::{Counters, Dimensions, StoredRow, UsageWindow, COUNTER_NAMES, MAX_COUNTER};
use crate::sqlite::counter_cols;
use crate::store::{
    merged_records, Cursor, NewProviderKey, ProviderKeyId, ProviderKeyInfo, ProviderKind,
    ProviderStore, UsageQuery, UserId, WriteCounts,
};
use crate::{Error, Result};
use async_trait::async_trait;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use std::collections::HashMap;

/// The embedded migrations: (version, name, SQL). Only ever appended.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "provider",
    include_str!("../migrations/postgres/0001_provider.sql"),
)];

/// Applies the pending provider migrations; returns the versions applied. Concurrent callers
/// are serialised by an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>> {
    let mut tx = pool.begin().await.map_err(Error::store)?;
    sqlx::query("SELECT pg_advisory_xact_lock(7283012)")
        .execute(&mut *tx)
        .await
        .map_err(Error::store)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS provider_schema_migrations (
             version bigint PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(&mut *tx)
    .await
    .map_err(Error::store)?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM provider_schema_migrations WHERE version = $1)",
        )
        .bind(version)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::store)?;
        if done {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(Error::store)?;
        sqlx::query("INSERT INTO provider_schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(Error::store)?;
        applied.push(*version);
    }
    tx.commit().await.map_err(Error::store)?;
    Ok(applied)
}

/// The provider tables in a PostgreSQL database.
#[derive(Clone)]
pub struct PgProviderStore {
    pool: PgPool,
}

impl PgProviderStore {
    /// Connects to `url` and applies the provider migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| Error::Config(format!("cannot connect to PostgreSQL: {e}")))?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool (e.g. the server's), applying the provider migrations.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        migrate(&pool).await?;
        Ok(PgProviderStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const KEY_COLS: &str = "id, user_id, provider, name, base_url, masked_key, enabled, created_at";

fn key_from_row(r: &PgRow) -> sqlx::Result<ProviderKeyInfo> {
    let provider: String = r.try_get(2)?;
    Ok(ProviderKeyInfo {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        provider: ProviderKind::parse(&provider).unwrap_or(ProviderKind::OpenAi),
        name: r.try_get(3)?,
        base_url: r.try_get(4)?,
        masked_key: r.try_get(5)?,
        enabled: r.try_get(6)?,
        created_at: r.try_get(7)?,
    })
}

fn counters_at(r: &PgRow, first: usize) -> sqlx::Result<Counters> {
    let mut c = Counters::default();
    for i in 0..COUNTER_NAMES.len() {
        let v: i64 = r.try_get(first + i)?;
        c.0[i] = u64::try_from(v).unwrap_or(0);
    }
    Ok(c)
}

fn as_i64(v: u64) -> i64 {
    v.min(MAX_COUNTER) as i64
}

#[async_trait]
impl ProviderStore for PgProviderStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn user_id_by_name(&self, name: &str) -> Result<Option<UserId>> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM users WHERE name = $1 ORDER BY id LIMIT 2")
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::store)?;
        match ids.as_slice() {
            [] => Ok(None),
            [id] => Ok(Some(*id)),
            _ => Err(Error::Invalid(format!(
                "more than one user is named {name:?}"
            ))),
        }
    }

    async fn user_id_by_token_hash(&self, token_hash: &str) -> Result<Option<UserId>> {
        sqlx::query_scalar("SELECT id FROM users WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::store)
    }

    async fn add_key(
        &self,
        user_id: UserId,
        key: NewProviderKey,
        now: i64,
    ) -> Result<ProviderKeyInfo> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO provider_keys (user_id, provider, name, base_url, sealed_key, \
             masked_key, enabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, true, $7) \
             RETURNING id",
        )
        .bind(user_id)
        .bind(key.provider.as_str())
        .bind(&key.name)
        .bind(&key.base_url)
        .bind(&key.sealed_key)
        .bind(&key.masked_key)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::store)?;
        Ok(ProviderKeyInfo {
            id,
            user_id,
            provider: key.provider,
            name: key.name,
            base_url: key.base_url,
            masked_key: key.masked_key,
            enabled: true,
            created_at: now,
        })
    }

    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ProviderKeyInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM provider_keys WHERE user_id = $1 ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::store)?;
        rows.iter()
            .map(|r| key_from_row(r).map_err(Error::store))
            .collect()
    }

    async fn enabled_keys(&self) -> Result<Vec<ProviderKeyInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM provider_keys WHERE enabled ORDER BY user_id, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(Error::store)?;
        rows.iter()
            .map(|r| key_from_row(r).map_err(Error::store))
            .collect()
    }

    async fn sealed_key(&self, user_id: UserId, id: ProviderKeyId) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT sealed_key FROM provider_keys WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::store)
    }

    async fn set_key_enabled(
        &self,
        user_id: UserId,
        id: ProviderKeyId,
        enabled: bool,
    ) -> Result<bool> {
        let r = sqlx::query("UPDATE provider_keys SET enabled = $3 WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .bind(enabled)
            .execute(&self.pool)
            .await
            .map_err(Error::store)?;
        Ok(r.rows_affected() > 0)
    }

    async fn remove_key(&self, user_id: UserId, id: ProviderKeyId) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(Error::store)?;
        let n = sqlx::query("DELETE FROM provider_keys WHERE user_id = $1 AND id = $2")
            .bind(user_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(Error::store)?
            .rows_affected();
        if n > 0 {
            for table in ["provider_usage_windows", "provider_cursors"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE user_id = $1 AND provider_key_id = $2"
                ))
                .bind(user_id)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(Error::store)?;
            }
        }
        tx.commit().await.map_err(Error::store)?;
        Ok(n > 0)
    }

    async fn cursor(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        name: &str,
    ) -> Result<Option<Cursor>> {
        let row = sqlx::query(
            "SELECT last_complete_day, next_page, page_start, page_end, error_count, last_error \
             FROM provider_cursors WHERE user_id = $1 AND provider_key_id = $2 AND name = $3",
        )
        .bind(user_id)
        .bind(key)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::store)?;
        let Some(r) = row else { return Ok(None) };
        let get = || -> sqlx::Result<Cursor> {
            let day: Option<String> = r.try_get(0)?;
            let ps: Option<i64> = r.try_get(2)?;
            let pe: Option<i64> = r.try_get(3)?;
            Ok(Cursor {
                name: name.to_owned(),
                last_complete_day: day.and_then(|d| d.parse().ok()),
                next_page: r.try_get(1)?,
                page_range: ps.zip(pe),
                error_count: r.try_get(4)?,
                last_error: r.try_get(5)?,
            })
        };
        get().map(Some).map_err(Error::store)
    }

    async fn put_cursor(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        cur: &Cursor,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO provider_cursors (user_id, provider_key_id, name, last_complete_day, \
             next_page, page_start, page_end, error_count, last_error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (user_id, provider_key_id, name) DO UPDATE SET \
             last_complete_day = excluded.last_complete_day, next_page = excluded.next_page, \
             page_start = excluded.page_start, page_end = excluded.page_end, \
             error_count = excluded.error_count, last_error = excluded.last_error, \
             updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(key)
        .bind(&cur.name)
        .bind(cur.last_complete_day.map(|d| d.to_string()))
        .bind(&cur.next_page)
        .bind(cur.page_range.map(|p| p.0))
        .bind(cur.page_range.map(|p| p.1))
        .bind(cur.error_count)
        .bind(&cur.last_error)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(Error::store)?;
        Ok(())
    }

    async fn replace_windows(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        windows: &[UsageWindow],
        now: i64,
    ) -> Result<WriteCounts> {
        let cols = counter_cols();
        let select = format!(
            "SELECT dims_hash, {cols} FROM provider_usage_windows WHERE user_id = $1 AND \
             provider_key_id = $2 AND window_start = $3 AND window_end = $4 FOR UPDATE"
        );
        let placeholders: Vec<String> = (0..COUNTER_NAMES.len())
            .map(|i| format!("${}", i + 13))
            .collect();
        let updates: Vec<String> = COUNTER_NAMES
            .iter()
            .map(|n| format!("{n} = excluded.{n}"))
            .collect();
        // ON CONFLICT keeps concurrent pulls of the same window from failing on the key.
        let upsert = format!(
            "INSERT INTO provider_usage_windows (user_id, provider_key_id, window_start, \
             window_end, dims_hash, project_id, provider_user_id, api_key_id, model, batch, \
             service_tier, updated_at, {cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, {}) ON CONFLICT (user_id, provider_key_id, window_start, window_end, \
             dims_hash) DO UPDATE SET updated_at = excluded.updated_at, {}",
            placeholders.join(", "),
            updates.join(", ")
        );
        let mut tx = self.pool.begin().await.map_err(Error::store)?;
        let mut counts = WriteCounts::default();
        for w in windows {
            let rows = sqlx::query(&select)
                .bind(user_id)
                .bind(key)
                .bind(w.start)
                .bind(w.end)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::store)?;
            let mut existing: HashMap<String, Counters> = HashMap::new();
            for r in &rows {
                let h: String = r.try_get(0).map_err(Error::store)?;
                existing.insert(h, counters_at(r, 1).map_err(Error::store)?);
            }
            let mut seen = std::collections::HashSet::new();
            for (hash, rec) in merged_records(w) {
                let changed = match existing.get(&hash) {
                    Some(old) if *old == rec.counters => {
                        counts.unchanged += 1;
                        false
                    }
                    Some(_) => {
                        counts.updated += 1;
                        true
                    }
                    None => {
                        counts.inserted += 1;
                        true
                    }
                };
                if changed {
                    let d = &rec.dims;
                    let mut q = sqlx::query(&upsert)
                        .bind(user_id)
                        .bind(key)
                        .bind(w.start)
                        .bind(w.end)
                        .bind(&hash)
                        .bind(&d.project_id)
                        .bind(&d.user_id)
                        .bind(&d.api_key_id)
                        .bind(&d.model)
                        .bind(d.batch)
                        .bind(&d.service_tier)
                        .bind(now);
                    for v in rec.counters.0 {
                        q = q.bind(as_i64(v));
                    }
                    q.execute(&mut *tx).await.map_err(Error::store)?;
                }
                seen.insert(hash);
            }
            for hash in existing.keys().filter(|h| !seen.contains(*h)) {
                sqlx::query(
                    "DELETE FROM provider_usage_windows WHERE user_id = $1 AND \
                     provider_key_id = $2 AND window_start = $3 AND window_end = $4 AND \
                     dims_hash = $5",
                )
                .bind(user_id)
                .bind(key)
                .bind(w.start)
                .bind(w.end)
                .bind(hash)
                .execute(&mut *tx)
                .await
                .map_err(Error::store)?;
                counts.deleted += 1;
            }
        }
        tx.commit().await.map_err(Error::store)?;
        Ok(counts)
    }

    async fn prune_before(&self, user_id: UserId, key: ProviderKeyId, before: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM provider_usage_windows WHERE user_id = $1 AND provider_key_id = $2 \
             AND window_start < $3",
        )
        .bind(user_id)
        .bind(key)
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(Error::store)?;
        Ok(r.rows_affected())
    }

    async fn usage_rows(&self, user_id: UserId, q: &UsageQuery) -> Result<Vec<StoredRow>> {
        let rows = sqlx::query(&format!(
            "SELECT provider_key_id, window_start, window_end, project_id, provider_user_id, \
             api_key_id, model, batch, service_tier, {} FROM provider_usage_windows \
             WHERE user_id = $1 AND window_start >= $2 AND window_start < $3 \
             ORDER BY window_start, provider_key_id, dims_hash",
            counter_cols()
        ))
        .bind(user_id)
        .bind(q.from)
        .bind(q.to)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::store)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let row = (|| -> sqlx::Result<StoredRow> {
                Ok(StoredRow {
                    provider_key_id: r.try_get(0)?,
                    window_start: r.try_get(1)?,
                    window_end: r.try_get(2)?,
                    dims: Dimensions {
                        project_id: r.try_get(3)?,
                        user_id: r.try_get(4)?,
                        api_key_id: r.try_get(5)?,
                        model: r.try_get(6)?,
                        batch: r.try_get(7)?,
                        service_tier: r.try_get(8)?,
                    },
                    counters: counters_at(r, 9)?,
                })
            })()
            .map_err(Error::store)?;
            if q.matches(&row) {
                out.push(row);
            }
        }
        Ok(out)
    }
}
