//! The local ledger: one SQLite file under the platform data dir (or `$TOKENLEDGER_HOME`).
//!
//! It holds a cursor per log file (identity, size, offset, parser state), every usage entry
//! deduplicated by its content-derived key, and half-hour aggregates per source, model, session
//! and project that reports read. History stays when an agent deletes its old logs: entries are
//! only ever added or raised, never removed because a file went away.
//!
//! Data flows one way: collectors -> [`Ledger::scan`] -> entries -> aggregates -> reports/outbox.

mod queue;
mod scan;
mod schema;

pub use scan::{NoProgress, Progress, ScanReport};

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use tokenledger_core::{Bucket, BucketKey, Source, TokenCounts};

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("ledger directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the ledger at {0} was written by a newer tokenledger (schema {1}); upgrade tokenledger"
    )]
    TooNew(PathBuf, i64),
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// The directory holding tokenledger's local state: `$TOKENLEDGER_HOME`, else the platform data
/// dir (`~/.local/share/tokenledger` on Linux).
pub fn data_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("TOKENLEDGER_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::data_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tokenledger")
}

/// One aggregate row: a half hour of one source, model, session and project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBucket {
    pub source: Source,
    pub model: String,
    pub hour_start: i64,
    pub session: String,
    pub project: String,
    pub tokens: TokenCounts,
}

/// Which aggregate rows to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Inclusive lower bound on `hour_start` (unix seconds).
    pub from: Option<i64>,
    /// Exclusive upper bound on `hour_start`.
    pub to: Option<i64>,
    pub sources: Vec<Source>,
    pub models: Vec<String>,
}

/// What the ledger knows about one log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCursor {
    pub path: String,
    pub source: String,
    pub size: u64,
    pub offset: u64,
    pub last_scan: i64,
}

/// The local ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    /// How long a folder must have stayed unchanged for its listing to be remembered.
    listing_margin_ns: i64,
}

/// How much of the database file reads map rather than copy (see [`Ledger::open`]).
const MMAP_SIZE: i64 = 256 << 20;

/// How long a write waits for another process's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Ledger {
    /// Opens (creating if needed) the ledger in `dir` (`ledger.db`).
    pub fn open_in(dir: &Path) -> Result<Ledger> {
        std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ledger::open(&dir.join("ledger.db"))
    }

    /// Opens (creating if needed) the ledger file at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        let conn = Connection::open(path).map_err(|source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // A new ledger gets 16 KiB pages: a first scan writes tens of megabytes, and fewer,
        // larger pages mean fewer writes (the size is fixed once the first table exists).
        conn.execute_batch("PRAGMA page_size=16384;")?;
        // Reads map the database file (up to 256 MiB) rather than copy each page they touch
        // into fresh memory: a warm run reads every cursor and folder listing. With pages
        // mapped, a 2 MiB page cache writes a first scan as fast as 8 MiB did (4 MiB less
        // peak memory).
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;
             PRAGMA temp_store=MEMORY; PRAGMA cache_size=-2048;",
        )?;
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
        // Checkpoints (copying the write-ahead log into the database file, with an fsync) are
        // not done when a write commits or a connection closes, where they would end every run
        // that wrote (a first scan's took ~70 ms of its 1.6 s), but when the next scan's
        // writer starts, while its readers parse logs: see `scan`. The log then holds what the
        // last scan (and the writes since) left, readable by every connection meanwhile.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        schema::migrate(&conn, path)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            listing_margin_ns: tokenledger_collect::listing::SETTLE_NS,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets how long (ns) a folder must have stayed unchanged before scans remember its
    /// listing ([`tokenledger_collect::listing::SETTLE_NS`] by default). Tests that change
    /// folders faster than that set a negative margin and give changed folders a distinct
    /// time themselves.
    pub fn set_listing_margin(&mut self, ns: i64) {
        self.listing_margin_ns = ns;
    }

    /// The underlying connection, for crates layered on the ledger (the sync outbox).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Aggregate rows matching `filter`, ordered by time.
    pub fn buckets(&self, filter: &Filter) -> Result<Vec<LocalBucket>> {
        let mut sql = String::from(
            "SELECT a.source, a.model, a.hour_start, d.session, d.project,
                    a.input, a.cached, a.cache_creation, a.output, a.reasoning, a.total
             FROM agg a JOIN dims d ON d.id = a.dim WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        push_filter(filter, &mut sql, &mut args);
        sql.push_str(" ORDER BY a.hour_start");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            let source: String = r.get(0)?;
            Ok((
                source,
                LocalBucket {
                    source: Source::Codex,
                    model: r.get(1)?,
                    hour_start: r.get(2)?,
                    session: r.get(3)?,
                    project: r.get(4)?,
                    tokens: read_tokens(r, 5)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (source, mut b) = row?;
            let Ok(src) = source.parse::<Source>() else {
                continue;
            };
            b.source = src;
            out.push(b);
        }
        Ok(out)
    }

    /// Half-hour buckets `(source, model, hour_start)` matching `filter`, summed over sessions
    /// and projects, before the unknown-model reassignment.
    pub fn half_hour_buckets(&self, filter: &Filter) -> Result<Vec<Bucket>> {
        let mut sql = String::from(
            "SELECT source, model, hour_start, input, cached, cache_creation, output, reasoning,
                    total
             FROM agg_hour WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        push_filter(filter, &mut sql, &mut args);
        sql.push_str(" ORDER BY hour_start, source, model");
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        // Every report reads the whole rollup: text is compared in place, not copied per row
        // (sources parse once per name, models are cloned from the last one seen).
        let mut sources: Vec<(String, Option<Source>)> = Vec::new();
        let mut models: std::collections::HashSet<String> = std::collections::HashSet::new();
        while let Some(r) = rows.next()? {
            let text = |i: usize| -> rusqlite::Result<&str> {
                r.get_ref(i)?.as_str().map_err(rusqlite::Error::from)
            };
            let name = text(0)?;
            let source = match sources.iter().find(|(n, _)| n == name) {
                Some((_, s)) => *s,
                None => {
                    let s = name.parse::<Source>().ok();
                    sources.push((name.to_string(), s));
                    s
                }
            };
            let Some(source) = source else {
                continue;
            };
            let name = text(1)?;
            let model = match models.get(name) {
                Some(m) => m.clone(),
                None => {
                    models.insert(name.to_string());
                    name.to_string()
                }
            };
            let hour_start: i64 = r.get(2)?;
            let tokens = read_tokens(r, 3)?;
            out.push(Bucket {
                key: BucketKey {
                    source,
                    model,
                    hour_start,
                },
                tokens,
            });
        }
        Ok(out)
    }

    /// Whether no log file has been scanned into the ledger yet (a first scan is coming).
    pub fn is_new(&self) -> Result<bool> {
        Ok(scan::holds_no_scan(&self.conn)?)
    }

    /// Every file cursor, for `status`.
    pub fn files(&self) -> Result<Vec<FileCursor>> {
        let mut cursors = std::collections::HashMap::new();
        scan::CursorBuckets::each(&self.conn, |c| {
            cursors.insert(c.key, (c.cursor, c.last_scan));
        })?;
        let mut stmt = self
            .conn
            .prepare("SELECT key, path, source FROM cursor_files ORDER BY source, path")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, path, source) = row?;
            if let Some((c, last_scan)) = cursors.get(&key) {
                out.push(FileCursor {
                    path,
                    source,
                    size: c.size,
                    offset: c.offset,
                    last_scan: *last_scan,
                });
            }
        }
        Ok(out)
    }

    /// Whether the stored aggregates equal a recomputation from the entries (they are kept up
    /// to date by deltas as scans write). Changes nothing.
    pub fn aggregates_consistent(&mut self) -> Result<bool> {
        let tx = self.conn.transaction()?;
        type Rows = Vec<Vec<i64>>;
        let snapshot = |tx: &rusqlite::Transaction| -> Result<(Rows, Rows)> {
            let read = |sql: &str| -> Result<Vec<Vec<i64>>> {
                let mut st = tx.prepare(sql)?;
                let n = st.column_count();
                let rows = st.query_map([], |r| {
                    (0..n)
                        .map(|i| match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Text(t) => {
                                Ok(tokenledger_collect::stable_hash(&[t]) as i64)
                            }
                            v => v.as_i64().map_err(rusqlite::Error::from),
                        })
                        .collect::<rusqlite::Result<Vec<i64>>>()
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            };
            Ok((
                read("SELECT * FROM agg ORDER BY hour_start, source, model, dim")?,
                read("SELECT * FROM agg_hour ORDER BY hour_start, source, model")?,
            ))
        };
        let kept = snapshot(&tx)?;
        scan::rebuild_aggregates(&tx)?;
        let fresh = snapshot(&tx)?;
        tx.rollback()?;
        Ok(kept == fresh)
    }

    /// A value of the ledger's key-value table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

/// The identity of a file's cursor: a hash of its source and path (the `cursors` key).
pub(crate) fn cursor_key(source: &str, path: &str) -> i64 {
    tokenledger_collect::stable_hash(&[source.as_bytes(), path.as_bytes()]) as i64
}

/// Reads six token columns starting at `first`.
fn read_tokens(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<TokenCounts> {
    let mut a = [0u64; 6];
    for (i, v) in a.iter_mut().enumerate() {
        *v = r.get::<_, i64>(first + i)?.max(0) as u64;
    }
    Ok(TokenCounts::from_array(a))
}

/// Appends the `WHERE` terms of `filter` (columns of `agg`, unqualified or as `a.`).
fn push_filter(filter: &Filter, sql: &mut String, args: &mut Vec<rusqlite::types::Value>) {
    if let Some(f) = filter.from {
        sql.push_str(" AND hour_start >= ?");
        args.push(f.into());
    }
    if let Some(t) = filter.to {
        sql.push_str(" AND hour_start < ?");
        args.push(t.into());
    }
    if !filter.sources.is_empty() {
        sql.push_str(" AND source IN (");
        for (i, s) in filter.sources.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            args.push(s.as_str().to_string().into());
        }
        sql.push(')');
    }
    if !filter.models.is_empty() {
        sql.push_str(" AND model IN (");
        for (i, m) in filter.models.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            args.push(m.clone().into());
        }
        sql.push(')');
    }
}
