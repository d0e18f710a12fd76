//! The SQLite backend of [`ProviderStore`]: the provider tables inside the server's embedded
//! database file (`server.db`). rusqlite is blocking, so every call runs on the blocking pool.

use crate::model::{Counters, Dimensions, StoredRow, UsageWindow, COUNTER_NAMES, MAX_COUNTER};
use crate::store::{
    merged_records, Cursor, NewProviderKey, ProviderKeyId, ProviderKeyInfo, ProviderKind,
    ProviderStore, UsageQuery, UserId, WriteCounts,
};
use crate::{Error, Result};
use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The embedded migrations: (version, name, SQL). Only ever appended.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "provider",
    include_str!("../migrations/sqlite/0001_provider.sql"),
)];

/// Applies the pending provider migrations; returns the versions applied.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Vec<i64>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS provider_schema_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM provider_schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if done {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO provider_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, jiff::Timestamp::now().as_second()],
        )?;
        tx.commit()?;
        applied.push(*version);
    }
    Ok(applied)
}

/// The provider tables in a SQLite file.
#[derive(Clone)]
pub struct SqliteProviderStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteProviderStore {
    /// Opens (creating if needed) the database file and applies the provider migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::store)?;
        }
        let conn = Connection::open(path).map_err(Error::store)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(Error::store)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(Error::store)?;
        Self::from_connection(conn)
    }

    /// Uses an open connection, applying the provider migrations.
    pub fn from_connection(mut conn: Connection) -> Result<Self> {
        migrate(&mut conn).map_err(Error::store)?;
        Ok(SqliteProviderStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(Error::store)?
    }
}

const KEY_COLS: &str = "id, user_id, provider, name, base_url, masked_key, enabled, created_at";

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProviderKeyInfo> {
    let provider: String = r.get(2)?;
    Ok(ProviderKeyInfo {
        id: r.get(0)?,
        user_id: r.get(1)?,
        provider: ProviderKind::parse(&provider).unwrap_or(ProviderKind::OpenAi),
        name: r.get(3)?,
        base_url: r.get(4)?,
        masked_key: r.get(5)?,
        enabled: r.get::<_, i64>(6)? != 0,
        created_at: r.get(7)?,
    })
}

pub(crate) fn counter_cols() -> String {
    COUNTER_NAMES.join(", ")
}

fn row_cols() -> String {
    format!(
        "provider_key_id, window_start, window_end, project_id, provider_user_id, api_key_id, \
         model, batch, service_tier, {}",
        counter_cols()
    )
}

fn counters_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Counters> {
    let mut c = Counters::default();
    for i in 0..COUNTER_NAMES.len() {
        let v: i64 = r.get(first + i)?;
        c.0[i] = u64::try_from(v).unwrap_or(0);
    }
    Ok(c)
}

fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        provider_key_id: r.get(0)?,
        window_start: r.get(1)?,
        window_end: r.get(2)?,
        dims: Dimensions {
            project_id: r.get(3)?,
            user_id: r.get(4)?,
            api_key_id: r.get(5)?,
            model: r.get(6)?,
            batch: r.get::<_, Option<i64>>(7)?.map(|b| b != 0),
            service_tier: r.get(8)?,
        },
        counters: counters_at(r, 9)?,
    })
}

fn as_i64(v: u64) -> i64 {
    v.min(MAX_COUNTER) as i64
}

#[async_trait]
impl ProviderStore for SqliteProviderStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn user_id_by_name(&self, name: &str) -> Result<Option<UserId>> {
        let name = name.to_owned();
        self.call(move |c| {
            let mut st = c
                .prepare("SELECT id FROM users WHERE name = ?1 ORDER BY id LIMIT 2")
                .map_err(Error::store)?;
            let ids: Vec<i64> = st
                .query_map([&name], |r| r.get(0))
                .map_err(Error::store)?
                .collect::<rusqlite::Result<_>>()
                .map_err(Error::store)?;
            match ids.as_slice() {
                [] => Ok(None),
                [id] => Ok(Some(*id)),
                _ => Err(Error::Invalid(format!(
                    "more than one user is named {name:?}"
                ))),
            }
        })
        .await
    }

    async fn user_id_by_token_hash(&self, token_hash: &str) -> Result<Option<UserId>> {
        let h = token_hash.to_owned();
        self.call(move |c| {
            c.query_row("SELECT id FROM users WHERE token_hash = ?1", [&h], |r| {
                r.get(0)
            })
            .optional()
            .map_err(Error::store)
        })
        .await
    }

    async fn add_key(
        &self,
        user_id: UserId,
        key: NewProviderKey,
        now: i64,
    ) -> Result<ProviderKeyInfo> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO provider_keys (user_id, provider, name, base_url, sealed_key, \
                 masked_key, enabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
                params![
                    user_id,
                    key.provider.as_str(),
                    key.name,
                    key.base_url,
                    key.sealed_key,
                    key.masked_key,
                    now
                ],
            )
            .map_err(Error::store)?;
            Ok(ProviderKeyInfo {
                id: c.last_insert_rowid(),
                user_id,
                provider: key.provider,
                name: key.name,
                base_url: key.base_url,
                masked_key: key.masked_key,
                enabled: true,
                created_at: now,
            })
        })
        .await
    }

    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ProviderKeyInfo>> {
        self.call(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {KEY_COLS} FROM provider_keys WHERE user_id = ?1 ORDER BY id"
                ))
                .map_err(Error::store)?;
            let rows = st
                .query_map([user_id], key_from_row)
                .map_err(Error::store)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store)?;
            Ok(rows)
        })
        .await
    }

    async fn enabled_keys(&self) -> Result<Vec<ProviderKeyInfo>> {
        self.call(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {KEY_COLS} FROM provider_keys WHERE enabled = 1 ORDER BY user_id, id"
                ))
                .map_err(Error::store)?;
            let rows = st
                .query_map([], key_from_row)
                .map_err(Error::store)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store)?;
            Ok(rows)
        })
        .await
    }

    async fn sealed_key(&self, user_id: UserId, id: ProviderKeyId) -> Result<Option<Vec<u8>>> {
        self.call(move |c| {
            c.query_row(
                "SELECT sealed_key FROM provider_keys WHERE user_id = ?1 AND id = ?2",
                params![user_id, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(Error::store)
        })
        .await
    }

    async fn set_key_enabled(
        &self,
        user_id: UserId,
        id: ProviderKeyId,
        enabled: bool,
    ) -> Result<bool> {
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE provider_keys SET enabled = ?3 WHERE user_id = ?1 AND id = ?2",
                    params![user_id, id, enabled as i64],
                )
                .map_err(Error::store)?;
            Ok(n > 0)
        })
        .await
    }

    async fn remove_key(&self, user_id: UserId, id: ProviderKeyId) -> Result<bool> {
        self.call(move |c| {
            let tx = c.transaction().map_err(Error::store)?;
            let n = tx
                .execute(
                    "DELETE FROM provider_keys WHERE user_id = ?1 AND id = ?2",
                    params![user_id, id],
                )
                .map_err(Error::store)?;
            if n > 0 {
                for table in ["provider_usage_windows", "provider_cursors"] {
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE user_id = ?1 AND provider_key_id = ?2"),
                        params![user_id, id],
                    )
                    .map_err(Error::store)?;
                }
            }
            tx.commit().map_err(Error::store)?;
            Ok(n > 0)
        })
        .await
    }

    async fn cursor(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        name: &str,
    ) -> Result<Option<Cursor>> {
        let name = name.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT last_complete_day, next_page, page_start, page_end, error_count, \
                 last_error FROM provider_cursors \
                 WHERE user_id = ?1 AND provider_key_id = ?2 AND name = ?3",
                params![user_id, key, name],
                |r| {
                    let day: Option<String> = r.get(0)?;
                    let ps: Option<i64> = r.get(2)?;
                    let pe: Option<i64> = r.get(3)?;
                    Ok(Cursor {
                        name: name.clone(),
                        last_complete_day: day.and_then(|d| d.parse().ok()),
                        next_page: r.get(1)?,
                        page_range: ps.zip(pe),
                        error_count: r.get(4)?,
                        last_error: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(Error::store)
        })
        .await
    }

    async fn put_cursor(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        cursor: &Cursor,
        now: i64,
    ) -> Result<()> {
        let cur = cursor.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO provider_cursors (user_id, provider_key_id, name, last_complete_day, \
                 next_page, page_start, page_end, error_count, last_error, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (user_id, provider_key_id, name) DO UPDATE SET \
                 last_complete_day = excluded.last_complete_day, next_page = excluded.next_page, \
                 page_start = excluded.page_start, page_end = excluded.page_end, \
                 error_count = excluded.error_count, last_error = excluded.last_error, \
                 updated_at = excluded.updated_at",
                params![
                    user_id,
                    key,
                    cur.name,
                    cur.last_complete_day.map(|d| d.to_string()),
                    cur.next_page,
                    cur.page_range.map(|p| p.0),
                    cur.page_range.map(|p| p.1),
                    cur.error_count,
                    cur.last_error,
                    now
                ],
            )
            .map_err(Error::store)?;
            Ok(())
        })
        .await
    }

    async fn replace_windows(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        windows: &[UsageWindow],
        now: i64,
    ) -> Result<WriteCounts> {
        let windows = windows.to_vec();
        self.call(move |c| {
            let tx = c.transaction().map_err(Error::store)?;
            let mut counts = WriteCounts::default();
            let cols = counter_cols();
            let select = format!(
                "SELECT dims_hash, {cols} FROM provider_usage_windows WHERE user_id = ?1 AND \
                 provider_key_id = ?2 AND window_start = ?3 AND window_end = ?4"
            );
            let placeholders: Vec<String> = (0..COUNTER_NAMES.len())
                .map(|i| format!("?{}", i + 13))
                .collect();
            let insert = format!(
                "INSERT INTO provider_usage_windows (user_id, provider_key_id, window_start, \
                 window_end, dims_hash, project_id, provider_user_id, api_key_id, model, batch, \
                 service_tier, updated_at, {cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, {})",
                placeholders.join(", ")
            );
            let sets: Vec<String> = COUNTER_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n} = ?{}", i + 7))
                .collect();
            let update = format!(
                "UPDATE provider_usage_windows SET updated_at = ?6, {} WHERE user_id = ?1 AND \
                 provider_key_id = ?2 AND window_start = ?3 AND window_end = ?4 AND dims_hash = ?5",
                sets.join(", ")
            );
            for w in &windows {
                let existing: HashMap<String, Counters> = {
                    let mut st = tx.prepare_cached(&select).map_err(Error::store)?;
                    let rows = st
                        .query_map(params![user_id, key, w.start, w.end], |r| {
                            Ok((r.get::<_, String>(0)?, counters_at(r, 1)?))
                        })
                        .map_err(Error::store)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(Error::store)?;
                    rows.into_iter().collect()
                };
                let mut seen = std::collections::HashSet::new();
                for (hash, rec) in merged_records(w) {
                    let vals: Vec<i64> = rec.counters.0.iter().map(|v| as_i64(*v)).collect();
                    match existing.get(&hash) {
                        Some(old) if *old == rec.counters => counts.unchanged += 1,
                        Some(_) => {
                            let mut p: Vec<rusqlite::types::Value> = vec![
                                user_id.into(),
                                key.into(),
                                w.start.into(),
                                w.end.into(),
                                hash.clone().into(),
                                now.into(),
                            ];
                            p.extend(vals.iter().map(|v| rusqlite::types::Value::from(*v)));
                            tx.prepare_cached(&update)
                                .and_then(|mut st| st.execute(params_from_iter(p)))
                                .map_err(Error::store)?;
                            counts.updated += 1;
                        }
                        None => {
                            let d = &rec.dims;
                            let mut p: Vec<rusqlite::types::Value> = vec![
                                user_id.into(),
                                key.into(),
                                w.start.into(),
                                w.end.into(),
                                hash.clone().into(),
                                d.project_id.clone().into(),
                                d.user_id.clone().into(),
                                d.api_key_id.clone().into(),
                                d.model.clone().into(),
                                d.batch.map(|b| b as i64).into(),
                                d.service_tier.clone().into(),
                                now.into(),
                            ];
                            p.extend(vals.iter().map(|v| rusqlite::types::Value::from(*v)));
                            tx.prepare_cached(&insert)
                                .and_then(|mut st| st.execute(params_from_iter(p)))
                                .map_err(Error::store)?;
                            counts.inserted += 1;
                        }
                    }
                    seen.insert(hash);
                }
                for hash in existing.keys().filter(|h| !seen.contains(*h)) {
                    tx.execute(
                        "DELETE FROM provider_usage_windows WHERE user_id = ?1 AND \
                         provider_key_id = ?2 AND window_start = ?3 AND window_end = ?4 AND \
                         dims_hash = ?5",
                        params![user_id, key, w.start, w.end, hash],
                    )
                    .map_err(Error::store)?;
                    counts.deleted += 1;
                }
            }
            tx.commit().map_err(Error::store)?;
            Ok(counts)
        })
        .await
    }

    async fn prune_before(&self, user_id: UserId, key: ProviderKeyId, before: i64) -> Result<u64> {
        self.call(move |c| {
            let n = c
                .execute(
                    "DELETE FROM provider_usage_windows WHERE user_id = ?1 AND \
                     provider_key_id = ?2 AND window_start < ?3",
                    params![user_id, key, before],
                )
                .map_err(Error::store)?;
            Ok(n as u64)
        })
        .await
    }

    async fn usage_rows(&self, user_id: UserId, q: &UsageQuery) -> Result<Vec<StoredRow>> {
        let q = q.clone();
        self.call(move |c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {} FROM provider_usage_windows WHERE user_id = ?1 AND \
                     window_start >= ?2 AND window_start < ?3 \
                     ORDER BY window_start, provider_key_id, dims_hash",
                    row_cols()
                ))
                .map_err(Error::store)?;
            let rows = st
                .query_map(params![user_id, q.from, q.to], stored_from_row)
                .map_err(Error::store)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::store)?;
            Ok(rows.into_iter().filter(|r| q.matches(r)).collect())
        })
        .await
    }
}
