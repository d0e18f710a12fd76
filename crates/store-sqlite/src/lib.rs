//! The embedded SQLite backend of the tokenledger server: one file, zero setup.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. Writes go through one
//! writer connection (SQLite has one writer anyway); reads use a small pool of connections in
//! WAL mode so that dashboards never wait behind an ingest.
//!
//! The schema lives in `migrations/` (embedded, applied at open, only ever appended); the daily
//! rollup is kept by triggers, and `sql/rollup-rollback.sql` removes it.

use async_trait::async_trait;
use jiff::civil::Date;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokenledger_core::TokenCounts;
use tokenledger_store::{
    day_start_utc, now_unix, stored_u64, Device, DeviceId, DeviceUsage, IngestCounts, Migration,
    NewBucket, Period, Result, Store, StoreError, UsageFilter, UsageRow, User, UserId, WebSession,
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

/// Removes the daily rollup (triggers and table); buckets stay.
pub const ROLLUP_ROLLBACK_SQL: &str = include_str!("../sql/rollup-rollback.sql");

const READERS: usize = 4;

/// Write calls between two background checkpoints.
const CHECKPOINT_EVERY: u64 = 16;

/// The single writer connection and its link to the checkpoint thread.
struct Writer {
    conn: Connection,
    commits: u64,
    checkpoints: std::sync::mpsc::SyncSender<()>,
}

/// Starts the thread that runs passive WAL checkpoints when asked; it ends when the store
/// (the sender) is dropped.
fn spawn_checkpointer(path: &Path) -> rusqlite::Result<std::sync::mpsc::SyncSender<()>> {
    let conn = open_conn(path)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // PASSIVE never blocks the writer or readers; what it cannot copy now is
                // copied next time.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing_warn(&e);
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread the writer's own automatic checkpoints still bound the WAL.
        tracing_warn(&e);
    }
    Ok(tx)
}

fn tracing_warn(e: &dyn std::fmt::Display) {
    tracing::warn!(error = %e, "SQLite background checkpoint failed");
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::db(e)
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -32000;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Applies the embedded migrations not yet recorded, up to `upto` (all when `None`).
/// Returns the versions applied.
pub fn migrate(conn: &mut Connection, upto: Option<i64>) -> Result<Vec<i64>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(db_err)?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if upto.is_some_and(|u| m.version > u) {
            break;
        }
        let done: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
                [m.version],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if done {
            continue;
        }
        let wrap = |e: rusqlite::Error| StoreError::Migration {
            version: m.version,
            name: m.name,
            source: Box::new(e),
        };
        let tx = conn.transaction().map_err(wrap)?;
        tx.execute_batch(m.sql).map_err(wrap)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_unix()],
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        applied.push(m.version);
    }
    Ok(applied)
}

/// Opens (creating if needed) the database file and applies migrations up to `upto`, without
/// building a store. For tests of the migration chain and for tooling.
pub fn migrate_path(path: &Path, upto: Option<i64>) -> Result<Vec<i64>> {
    let mut conn = open_conn(path).map_err(db_err)?;
    migrate(&mut conn, upto)
}

impl SqliteStore {
    /// Opens the database file (its folder is created), applies every pending migration.
    pub async fn open(path: impl Into<PathBuf>) -> Result<SqliteStore> {
        let path = path.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(StoreError::db)?
    }

    fn open_blocking(path: PathBuf) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::db)?;
        }
        let mut writer = open_conn(&path).map_err(db_err)?;
        migrate(&mut writer, None)?;
        // Checkpoints (copying the WAL back into the database, with its fsyncs) run on a
        // thread of their own, so that the single writer does not stall on them; the writer
        // checkpoints itself only if the WAL grows past ~40 MB regardless.
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 10000;")
            .map_err(db_err)?;
        let checkpoints = spawn_checkpointer(&path).map_err(db_err)?;
        let readers = (0..READERS)
            .map(|_| open_conn(&path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        Ok(SqliteStore {
            path,
            writer: Arc::new(Mutex::new(Writer {
                conn: writer,
                commits: 0,
                checkpoints,
            })),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a SQL script on the writer connection (e.g. [`ROLLUP_ROLLBACK_SQL`]).
    pub async fn execute_script(&self, sql: &str) -> Result<()> {
        let sql = sql.to_string();
        self.write(move |c| c.execute_batch(&sql)).await
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut w.conn).map_err(db_err);
            w.commits += 1;
            if w.commits.is_multiple_of(CHECKPOINT_EVERY) {
                // Full channel: a checkpoint is already due; nothing to add.
                let _ = w.checkpoints.try_send(());
            }
            out
        })
        .await
        .map_err(StoreError::db)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let idx = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[idx].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(StoreError::db)?
    }
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
    })
}

const DEVICE_COLS: &str = "id, user_id, name, platform, created_at, last_seen_at, revoked_at";

fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        platform: r.get(3)?,
        created_at: r.get(4)?,
        last_seen_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

fn to_i64(v: u64) -> i64 {
    // Callers validate against MAX_TOKEN_VALUE; saturate rather than wrap if one did not.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn token_params(t: &TokenCounts) -> [i64; 6] {
    t.as_array().map(to_i64)
}

const SUM_COLS: &str = "sum(input_tokens), sum(cached_input_tokens), \
     sum(cache_creation_input_tokens), sum(output_tokens), sum(reasoning_output_tokens), \
     sum(total_tokens)";

fn usage_rows(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
    let mut rows = stmt.query(args).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        let mut a = [0u64; 6];
        for (i, slot) in a.iter_mut().enumerate() {
            let v: Option<i64> = r.get(3 + i).map_err(db_err)?;
            *slot = stored_u64(v.unwrap_or(0))?;
        }
        out.push(UsageRow {
            period: r.get(0).map_err(db_err)?,
            source: r.get(1).map_err(db_err)?,
            model: r.get(2).map_err(db_err)?,
            tokens: TokenCounts::from_array(a),
        });
    }
    Ok(out)
}

/// Sums rollup rows read in `(day, source, model)` order into [`UsageRow`]s of a period, in
/// the order `ORDER BY period, source, model` gives.
struct RollupSums {
    period: Period,
    /// `(period, source, model, sums)`; for [`Period::All`], one per series (period 0).
    rows: Vec<(i64, String, String, [i64; 6])>,
    /// [`Period::All`]: `source \0 model` -> index in `rows`.
    index: HashMap<Vec<u8>, usize>,
    /// [`Period::All`]: the series expected next (each day repeats the same series order).
    hint: usize,
    key: Vec<u8>,
    day: Vec<u8>,
    day_start: i64,
}

fn text(v: &[u8]) -> Result<String> {
    String::from_utf8(v.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl RollupSums {
    fn new(period: Period) -> Self {
        RollupSums {
            period,
            rows: Vec::new(),
            index: HashMap::new(),
            hint: 0,
            key: Vec::new(),
            day: Vec::new(),
            day_start: 0,
        }
    }

    /// Adds one rollup row; `day` is only read for periods other than [`Period::All`].
    fn add(&mut self, day: &[u8], source: &[u8], model: &[u8], t: [i64; 6]) -> Result<()> {
        if self.period == Period::All {
            let hit = self
                .rows
                .get(self.hint)
                .is_some_and(|r| r.1.as_bytes() == source && r.2.as_bytes() == model);
            let at = if hit {
                self.hint
            } else {
                self.key.clear();
                self.key.extend_from_slice(source);
                self.key.push(0);
                self.key.extend_from_slice(model);
                match self.index.get(&self.key) {
                    Some(&at) => at,
                    None => {
                        self.index.insert(self.key.clone(), self.rows.len());
                        self.rows.push((0, text(source)?, text(model)?, [0; 6]));
                        self.rows.len() - 1
                    }
                }
            };
            self.hint = if at + 1 == self.rows.len() { 0 } else { at + 1 };
            let sums = &mut self.rows[at].3;
            for (s, v) in sums.iter_mut().zip(t) {
                *s = s
                    .checked_add(v)
                    .ok_or_else(|| StoreError::Corrupt("token sum overflows".into()))?;
            }
            return Ok(());
        }
        // One row per (day, source, model): the key of the rollup.
        if self.day != day {
            let date: Date = std::str::from_utf8(day)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("rollup day {}", String::from_utf8_lossy(day)))
                })?;
            self.day_start = day_start_utc(date);
            self.day.clear();
            self.day.extend_from_slice(day);
        }
        self.rows
            .push((self.day_start, text(source)?, text(model)?, t));
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<UsageRow>> {
        if self.period == Period::All {
            self.rows.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        }
        self.rows
            .into_iter()
            .map(|(period, source, model, t)| {
                let mut a = [0u64; 6];
                for (slot, v) in a.iter_mut().zip(t) {
                    *slot = stored_u64(v)?;
                }
                Ok(UsageRow {
                    period,
                    source,
                    model,
                    tokens: TokenCounts::from_array(a),
                })
            })
            .collect()
    }
}

fn filter_sql(filter: &UsageFilter, sql: &mut String, args: &mut Vec<String>, first: usize) {
    let mut n = first;
    if let Some(s) = filter.source {
        sql.push_str(&format!(" AND source = ?{n}"));
        args.push(s.as_str().to_string());
        n += 1;
    }
    if let Some(m) = &filter.model {
        sql.push_str(&format!(" AND model = ?{n}"));
        args.push(m.clone());
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(db_err)
                .map(|_| ())
        })
        .await
    }

    async fn create_user(&self, name: &str, token_hash: &str) -> Result<User> {
        let (name, hash) = (name.to_string(), token_hash.to_string());
        self.write(move |c| {
            c.query_row(
                "INSERT INTO users (name, token_hash, created_at) VALUES (?1, ?2, ?3)
                 RETURNING id, name, created_at",
                params![name, hash, now_unix()],
                user_from_row,
            )
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id, name, created_at FROM users ORDER BY id")
                .map_err(db_err)?;
            let rows = stmt.query_map([], user_from_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>> {
        let hash = token_hash.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT id, name, created_at FROM users WHERE token_hash = ?1")
                .and_then(|mut s| s.query_row([hash], user_from_row).optional())
                .map_err(db_err)
        })
        .await
    }

    async fn create_device(
        &self,
        user_id: UserId,
        name: &str,
        platform: &str,
        token_hash: &str,
    ) -> Result<Device> {
        let (name, platform, hash) = (
            name.to_string(),
            platform.to_string(),
            token_hash.to_string(),
        );
        self.write(move |c| {
            c.query_row(
                &format!(
                    "INSERT INTO devices (user_id, name, platform, token_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING {DEVICE_COLS}"
                ),
                params![user_id, name, platform, hash, now_unix()],
                device_from_row,
            )
        })
        .await
    }

    async fn device_by_token_hash(&self, token_hash: &str) -> Result<Option<Device>> {
        let hash = token_hash.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {DEVICE_COLS} FROM devices WHERE token_hash = ?1 AND revoked_at IS NULL"
            ))
            .and_then(|mut s| s.query_row([hash], device_from_row).optional())
            .map_err(db_err)
        })
        .await
    }

    async fn list_devices(&self, user_id: UserId) -> Result<Vec<Device>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {DEVICE_COLS} FROM devices WHERE user_id = ?1 ORDER BY id"
                ))
                .map_err(db_err)?;
            let rows = stmt.query_map([user_id], device_from_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
        .await
    }

    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId) -> Result<bool> {
        self.write(move |c| {
            c.execute(
                "UPDATE devices SET revoked_at = ?3
                 WHERE user_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![user_id, device_id, now_unix()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn ingest(
        &self,
        user_id: UserId,
        device_id: DeviceId,
        buckets: &[NewBucket],
        now: i64,
    ) -> Result<IngestCounts> {
        // In key order, so that the B-tree pages of one series are visited together.
        // Stable, so that of repeated keys the last still wins.
        let mut buckets = buckets.to_vec();
        buckets.sort_by(|a, b| {
            (a.source.as_str(), &a.model, a.hour_start).cmp(&(
                b.source.as_str(),
                &b.model,
                b.hour_start,
            ))
        });
        self.write(move |c| {
            let tx = c.transaction()?;
            let mut counts = IngestCounts::default();
            {
                // A new key is inserted in one step; only an existing key costs a second
                // statement, which changes the row only if a value differs.
                let mut insert = tx.prepare_cached(
                    "INSERT INTO usage_buckets (user_id, device_id, source, model, hour_start,
                         input_tokens, cached_input_tokens, cache_creation_input_tokens,
                         output_tokens, reasoning_output_tokens, total_tokens, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (user_id, device_id, source, model, hour_start) DO NOTHING",
                )?;
                let mut update = tx.prepare_cached(
                    "UPDATE usage_buckets SET input_tokens = ?6, cached_input_tokens = ?7,
                         cache_creation_input_tokens = ?8, output_tokens = ?9,
                         reasoning_output_tokens = ?10, total_tokens = ?11, updated_at = ?12
                     WHERE user_id = ?1 AND device_id = ?2 AND source = ?3 AND model = ?4
                       AND hour_start = ?5
                       AND NOT (input_tokens = ?6 AND cached_input_tokens = ?7
                            AND cache_creation_input_tokens = ?8 AND output_tokens = ?9
                            AND reasoning_output_tokens = ?10 AND total_tokens = ?11)",
                )?;
                for b in &buckets {
                    let t = token_params(&b.tokens);
                    let values = params![
                        user_id,
                        device_id,
                        b.source.as_str(),
                        b.model,
                        b.hour_start,
                        t[0],
                        t[1],
                        t[2],
                        t[3],
                        t[4],
                        t[5],
                        now
                    ];
                    if insert.execute(values)? == 1 {
                        counts.inserted += 1;
                    } else if update.execute(values)? == 1 {
                        counts.updated += 1;
                    } else {
                        counts.unchanged += 1;
                    }
                }
                tx.prepare_cached(
                    "UPDATE devices SET last_seen_at = ?3 WHERE user_id = ?1 AND id = ?2",
                )?
                .execute(params![user_id, device_id, now])?;
            }
            tx.commit()?;
            Ok(counts)
        })
        .await
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
            Period::All => "0",
            Period::Day => "(hour_start - ((hour_start % 86400) + 86400) % 86400)",
            Period::HalfHour => "hour_start",
        };
        let mut sql = format!(
            "SELECT {period_sql} AS p, source, model, {SUM_COLS} FROM usage_buckets
             WHERE user_id = ?1 AND hour_start >= ?2 AND hour_start < ?3"
        );
        let mut extra = Vec::new();
        filter_sql(filter, &mut sql, &mut extra, 4);
        sql.push_str(" GROUP BY p, source, model ORDER BY p, source, model");
        self.read(move |c| {
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&user_id, &from_ts, &to_ts];
            args.extend(extra.iter().map(|s| s as &dyn rusqlite::ToSql));
            usage_rows(c, &sql, &args)
        })
        .await
    }

    async fn rollup_rows(
        &self,
        user_id: UserId,
        from: Date,
        to: Date,
        filter: &UsageFilter,
        period: Period,
    ) -> Result<Vec<UsageRow>> {
        // Rows come in primary-key order (one per day, source and model) and are summed here:
        // a GROUP BY in SQL would sort every row of the range first, which costs several times
        // the scan itself.
        let mut sql = String::from(
            "SELECT day, source, model, input_tokens, cached_input_tokens,
                    cache_creation_input_tokens, output_tokens, reasoning_output_tokens,
                    total_tokens
             FROM usage_daily_rollup WHERE user_id = ?1 AND day >= ?2 AND day <= ?3",
        );
        let mut extra = Vec::new();
        filter_sql(filter, &mut sql, &mut extra, 4);
        sql.push_str(" ORDER BY day, source, model");
        let (from, to) = (from.to_string(), to.to_string());
        self.read(move |c| {
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&user_id, &from, &to];
            args.extend(extra.iter().map(|s| s as &dyn rusqlite::ToSql));
            let mut stmt = c.prepare_cached(&sql).map_err(db_err)?;
            let mut rows = stmt.query(&args[..]).map_err(db_err)?;
            let mut acc = RollupSums::new(period);
            let all = period == Period::All;
            while let Some(r) = rows.next().map_err(db_err)? {
                let bytes = |i: usize| -> Result<&[u8]> {
                    r.get_ref(i)
                        .map_err(db_err)?
                        .as_bytes()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                };
                let mut t = [0i64; 6];
                for (i, slot) in t.iter_mut().enumerate() {
                    *slot = r
                        .get_ref(3 + i)
                        .map_err(db_err)?
                        .as_i64()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                }
                let day = if all { &[][..] } else { bytes(0)? };
                acc.add(day, bytes(1)?, bytes(2)?, t)?;
            }
            acc.finish()
        })
        .await
    }

    async fn rebuild_rollup(&self, from: Date, to: Date) -> Result<u64> {
        let (from_ts, to_ts) = (
            day_start_utc(from),
            day_start_utc(to.tomorrow().unwrap_or(to)),
        );
        let (from, to) = (from.to_string(), to.to_string());
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM usage_daily_rollup WHERE day >= ?1 AND day <= ?2",
                params![from, to],
            )?;
            let n = tx.execute(
                &format!(
                    "INSERT INTO usage_daily_rollup (user_id, day, source, model, input_tokens,
                         cached_input_tokens, cache_creation_input_tokens, output_tokens,
                         reasoning_output_tokens, total_tokens)
                     SELECT user_id, date(hour_start, 'unixepoch'), source, model, {SUM_COLS}
                     FROM usage_buckets WHERE hour_start >= ?1 AND hour_start < ?2
                     GROUP BY 1, 2, 3, 4"
                ),
                params![from_ts, to_ts],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn create_login_code(
        &self,
        user_id: UserId,
        code_hash: &str,
        expires_at: i64,
    ) -> Result<()> {
        let hash = code_hash.to_string();
        self.write(move |c| {
            let now = now_unix();
            c.execute(
                "DELETE FROM login_codes WHERE expires_at < ?1",
                [now - 86_400],
            )?;
            c.execute(
                "INSERT INTO login_codes (code_hash, user_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![hash, user_id, now, expires_at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn redeem_login_code(&self, code_hash: &str, now: i64) -> Result<Option<User>> {
        let hash = code_hash.to_string();
        self.write(move |c| {
            let tx = c.transaction()?;
            let user_id: Option<i64> = tx
                .query_row(
                    "UPDATE login_codes SET used_at = ?2
                     WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2
                     RETURNING user_id",
                    params![hash, now],
                    |r| r.get(0),
                )
                .optional()?;
            let user = match user_id {
                Some(id) => tx
                    .query_row(
                        "SELECT id, name, created_at FROM users WHERE id = ?1",
                        [id],
                        user_from_row,
                    )
                    .optional()?,
                None => None,
            };
            tx.commit()?;
            Ok(user)
        })
        .await
    }

    async fn create_web_session(
        &self,
        user_id: UserId,
        token_hash: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<()> {
        let (hash, csrf) = (token_hash.to_string(), csrf_token.to_string());
        self.write(move |c| {
            let now = now_unix();
            c.execute("DELETE FROM web_sessions WHERE expires_at <= ?1", [now])?;
            c.execute(
                "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash, user_id, csrf, now, expires_at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn web_session(&self, token_hash: &str, now: i64) -> Result<Option<WebSession>> {
        let hash = token_hash.to_string();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT u.id, u.name, u.created_at, s.csrf_token, s.expires_at
                 FROM web_sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![hash, now], |r| {
                    Ok(WebSession {
                        user: user_from_row(r)?,
                        csrf_token: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(db_err)
        })
        .await
    }

    async fn delete_web_session(&self, token_hash: &str) -> Result<()> {
        let hash = token_hash.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM web_sessions WHERE token_hash = ?1", [hash])
                .map(|_| ())
        })
        .await
    }

    async fn device_usage(
        &self,
        user_id: UserId,
        from_ts: i64,
        to_ts: i64,
    ) -> Result<Vec<DeviceUsage>> {
        self.read(move |c| {
            let rows = usage_rows(
                c,
                &format!(
                    "SELECT device_id, '', '', {SUM_COLS} FROM usage_buckets
                     WHERE user_id = ?1 AND hour_start >= ?2 AND hour_start < ?3
                     GROUP BY device_id ORDER BY device_id"
                ),
                &[&user_id, &from_ts, &to_ts],
            )?;
            Ok(rows
                .into_iter()
                .map(|r| DeviceUsage {
                    device_id: r.period,
                    tokens: r.tokens,
                })
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenledger_core::Source;

    #[tokio::test]
    async fn triggers_keep_the_rollup() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db")).await.unwrap();
        let u = store.create_user("a", "h").await.unwrap();
        let d = store.create_device(u.id, "m", "linux", "dh").await.unwrap();
        let b = |hs: i64, n: u64| NewBucket {
            source: Source::Codex,
            model: "gpt-5".into(),
            hour_start: hs,
            tokens: TokenCounts::new(n, 0, 0, n, 0),
        };
        let c = store
            .ingest(u.id, d.id, &[b(0, 10), b(1800, 5)], 1)
            .await
            .unwrap();
        assert_eq!((c.inserted, c.updated, c.unchanged), (2, 0, 0));
        let c = store
            .ingest(u.id, d.id, &[b(0, 10), b(1800, 7)], 2)
            .await
            .unwrap();
        assert_eq!((c.inserted, c.updated, c.unchanged), (0, 1, 1));
        let day = jiff::civil::date(1970, 1, 1);
        let rows = store
            .rollup_rows(u.id, day, day, &UsageFilter::default(), Period::Day)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].tokens.total_tokens, 34);
        assert_eq!(rows[0].period, 0);
    }
}
