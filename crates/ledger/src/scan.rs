//! Incremental scanning: decide per file what to read from its cursor, read changed files in
//! parallel, and write entries, cursors and aggregates in one writer.

use crate::{Ledger, Result};
use rayon::prelude::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, Skipped};
use tokenledger_core::Source;

/// How many bytes at the start of a file are hashed to notice a rewrite.
const HEAD_LEN: u64 = 4096;
/// Files written per transaction; a crash loses at most this much progress, never a token.
const FILES_PER_COMMIT: usize = 4000;

/// Progress of a scan, for a progress bar.
pub trait Progress: Sync {
    /// Called once before reading, with the number of files and bytes that will be read.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// Called after each file is read.
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// A progress sink that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a scan did.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// Files the collectors found.
    pub files_seen: u64,
    /// Files that had something new and were read.
    pub files_read: u64,
    /// Log bytes read.
    pub bytes_read: u64,
    /// Entries added or raised.
    pub entries_written: u64,
    /// Lines (or files) skipped, with why.
    pub skipped: Vec<Skipped>,
}

impl ScanReport {
    /// Skipped lines counted by reason.
    pub fn skipped_by_reason(&self) -> BTreeMap<SkipReason, u64> {
        let mut m = BTreeMap::new();
        for s in &self.skipped {
            *m.entry(s.reason).or_insert(0) += 1;
        }
        m
    }
}

#[derive(Debug, Clone)]
struct Cursor {
    dev: u64,
    inode: u64,
    size: u64,
    mtime_ns: i64,
    offset: u64,
    head_len: u64,
    head_hash: u64,
    state: String,
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    dev: u64,
    inode: u64,
    size: u64,
    mtime_ns: i64,
}

struct Work {
    collector: usize,
    file: FoundFile,
    stat: Stat,
    offset: u64,
    state: String,
}

struct Done {
    file: FoundFile,
    stat: Stat,
    scan: FileScan,
    head_len: u64,
    head_hash: u64,
}

fn stat_of(path: &std::path::Path) -> std::io::Result<Stat> {
    let md = std::fs::metadata(path)?;
    #[cfg(unix)]
    let (dev, inode) = {
        use std::os::unix::fs::MetadataExt;
        (md.dev(), md.ino())
    };
    #[cfg(not(unix))]
    let (dev, inode) = (0u64, 0u64);
    let mtime_ns = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Ok(Stat {
        dev,
        inode,
        size: md.len(),
        mtime_ns,
    })
}

/// Hash of the first `len` bytes of `path` (or `None` when they cannot be read whole).
fn head_hash(path: &std::path::Path, len: u64) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).ok()?;
    Some(xxhash_rust::xxh3::xxh3_64(&buf))
}

/// Whether a collector's whole files must be offered to it even when unchanged on disk
/// (SQLite databases change through their `-wal` file; the collector does a cheap check).
fn always_offer(source: Source, file: &FoundFile) -> bool {
    source == Source::OpenCode && file.whole
}

impl Ledger {
    /// Scans every collector's files for what is new since the last scan and records it.
    /// A re-run with nothing new reads no log bytes.
    pub fn scan(
        &mut self,
        collectors: &[Box<dyn Collector>],
        env: &Env,
        progress: &dyn Progress,
    ) -> Result<ScanReport> {
        let mut report = ScanReport::default();
        let cursors = load_cursors(&self.conn)?;

        // Discover and decide.
        let mut work: Vec<Work> = Vec::new();
        let mut seen: HashSet<(Source, PathBuf)> = HashSet::new();
        for (ci, c) in collectors.iter().enumerate() {
            for file in c.discover(env) {
                if !seen.insert((file.source, file.path.clone())) {
                    continue;
                }
                report.files_seen += 1;
                let stat = match stat_of(&file.path) {
                    Ok(s) => s,
                    Err(_) => {
                        report.skipped.push(Skipped {
                            path: file.path.clone(),
                            line: 0,
                            reason: SkipReason::Unreadable,
                        });
                        continue;
                    }
                };
                let key = (
                    file.source.as_str().to_string(),
                    file.path.to_string_lossy().into_owned(),
                );
                let (offset, state) = match cursors.get(&key) {
                    None => (0, String::new()),
                    Some(cur) => {
                        let same_identity = cur.dev == stat.dev && cur.inode == stat.inode;
                        let unchanged =
                            same_identity && cur.size == stat.size && cur.mtime_ns == stat.mtime_ns;
                        if file.whole {
                            if always_offer(file.source, &file) {
                                (0, cur.state.clone())
                            } else if unchanged {
                                continue;
                            } else {
                                (0, String::new())
                            }
                        } else if unchanged {
                            continue;
                        } else if !same_identity || stat.size < cur.offset {
                            (0, String::new())
                        } else if cur.head_len > 0
                            && head_hash(&file.path, cur.head_len) != Some(cur.head_hash)
                        {
                            // Rewritten in place: read again from the start; dedupe keys make
                            // what was read before count once.
                            (0, String::new())
                        } else {
                            (cur.offset, cur.state.clone())
                        }
                    }
                };
                work.push(Work {
                    collector: ci,
                    file,
                    stat,
                    offset,
                    state,
                });
            }
        }

        let total_bytes: u64 = work
            .iter()
            .map(|w| w.stat.size.saturating_sub(w.offset))
            .sum();
        // Big files first, so that the parallel readers finish together.
        work.sort_by(|a, b| {
            (b.stat.size - b.offset.min(b.stat.size))
                .cmp(&(a.stat.size - a.offset.min(a.stat.size)))
        });
        if !work.is_empty() {
            progress.start(work.len() as u64, total_bytes);
        }

        let (tx, rx) = std::sync::mpsc::sync_channel::<Done>(256);
        let conn = &mut self.conn;
        let writer_result = std::thread::scope(|s| {
            s.spawn(move || {
                work.into_par_iter().for_each_with(tx, |tx, w| {
                    let scan = collectors[w.collector].scan(&w.file, w.offset, &w.state);
                    progress.advance(scan.bytes_read);
                    let (head_len, head_hash) = if w.file.whole {
                        (0, 0)
                    } else {
                        let len = scan.offset.min(HEAD_LEN);
                        match head_hash(&w.file.path, len) {
                            Some(h) if len > 0 => (len, h),
                            _ => (0, 0),
                        }
                    };
                    let _ = tx.send(Done {
                        file: w.file,
                        stat: w.stat,
                        scan,
                        head_len,
                        head_hash,
                    });
                });
            });
            write_all(conn, rx, &mut report)
        });
        progress.finish();
        writer_result?;
        Ok(report)
    }
}

fn load_cursors(conn: &Connection) -> Result<HashMap<(String, String), Cursor>> {
    let mut stmt = conn.prepare(
        "SELECT source, path, dev, inode, size, mtime_ns, offset, head_len, head_hash, state
         FROM files",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            Cursor {
                dev: r.get::<_, i64>(2)? as u64,
                inode: r.get::<_, i64>(3)? as u64,
                size: r.get::<_, i64>(4)? as u64,
                mtime_ns: r.get(5)?,
                offset: r.get::<_, i64>(6)? as u64,
                head_len: r.get::<_, i64>(7)? as u64,
                head_hash: r.get::<_, i64>(8)? as u64,
                state: r.get(9)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
}

struct Writer {
    dims: HashMap<(String, String), i64>,
    touched: HashSet<i64>,
}

fn write_all(
    conn: &mut Connection,
    rx: std::sync::mpsc::Receiver<Done>,
    report: &mut ScanReport,
) -> Result<()> {
    let mut w = Writer {
        dims: HashMap::new(),
        touched: HashSet::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut tx = conn.transaction()?;
    let mut in_tx = 0usize;
    for done in rx {
        write_one(&tx, &mut w, &done, now, report)?;
        report.files_read += 1;
        report.bytes_read += done.scan.bytes_read;
        report.skipped.extend(done.scan.skipped);
        in_tx += 1;
        if in_tx >= FILES_PER_COMMIT {
            refresh_aggregates(&tx, &mut w.touched)?;
            tx.commit()?;
            tx = conn.transaction()?;
            in_tx = 0;
        }
    }
    refresh_aggregates(&tx, &mut w.touched)?;
    tx.commit()?;
    Ok(())
}

fn dim_id(tx: &Transaction, w: &mut Writer, session: &str, project: &str) -> Result<i64> {
    if let Some(id) = w.dims.get(&(session.to_string(), project.to_string())) {
        return Ok(*id);
    }
    let id: Option<i64> = tx
        .prepare_cached("SELECT id FROM dims WHERE session = ?1 AND project = ?2")?
        .query_row(params![session, project], |r| r.get(0))
        .optional()?;
    let id = match id {
        Some(id) => id,
        None => {
            tx.prepare_cached("INSERT INTO dims (session, project) VALUES (?1, ?2)")?
                .execute(params![session, project])?;
            tx.last_insert_rowid()
        }
    };
    w.dims
        .insert((session.to_string(), project.to_string()), id);
    Ok(id)
}

fn write_one(
    tx: &Transaction,
    w: &mut Writer,
    done: &Done,
    now: i64,
    report: &mut ScanReport,
) -> Result<()> {
    for e in &done.scan.events {
        if e.tokens.is_zero() {
            continue;
        }
        let dim = dim_id(tx, w, &e.session, &e.project)?;
        let t = &e.tokens;
        let hour = tokenledger_core::floor_half_hour(e.ts);
        let mut upsert = tx.prepare_cached(
            "INSERT INTO entries (id, source, model, ts, hour_start, dim, input, cached,
                                  cache_creation, output, reasoning, total, grp, replay)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (id) DO UPDATE SET
                model = excluded.model, input = excluded.input, cached = excluded.cached,
                cache_creation = excluded.cache_creation, output = excluded.output,
                reasoning = excluded.reasoning, total = excluded.total
             WHERE excluded.total > entries.total
             RETURNING hour_start",
        )?;
        let touched: Option<i64> = upsert
            .query_row(
                params![
                    e.dedupe_key as i64,
                    e.source.as_str(),
                    e.model,
                    e.ts,
                    hour,
                    dim,
                    t.input_tokens as i64,
                    t.cached_input_tokens as i64,
                    t.cache_creation_input_tokens as i64,
                    t.output_tokens as i64,
                    t.reasoning_output_tokens as i64,
                    t.total_tokens as i64,
                    e.group.map(|g| g as i64),
                    e.replay as i64,
                ],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(h) = touched {
            report.entries_written += 1;
            w.touched.insert(h);
            if let (Some(g), false) = (e.group, e.replay) {
                // A replayed copy of this response may already be counted elsewhere.
                let mut q = tx.prepare_cached(
                    "SELECT hour_start FROM entries WHERE grp = ?1 AND replay = 1",
                )?;
                let hours = q.query_map([g as i64], |r| r.get::<_, i64>(0))?;
                for h in hours {
                    w.touched.insert(h?);
                }
            }
        }
    }
    tx.prepare_cached(
        "INSERT INTO files (source, path, dev, inode, size, mtime_ns, offset, head_len, head_hash,
                            state, last_scan)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (source, path) DO UPDATE SET
            dev = excluded.dev, inode = excluded.inode, size = excluded.size,
            mtime_ns = excluded.mtime_ns, offset = excluded.offset, head_len = excluded.head_len,
            head_hash = excluded.head_hash, state = excluded.state, last_scan = excluded.last_scan",
    )?
    .execute(params![
        done.file.source.as_str(),
        done.file.path.to_string_lossy(),
        done.stat.dev as i64,
        done.stat.inode as i64,
        done.stat.size as i64,
        done.stat.mtime_ns,
        done.scan.offset as i64,
        done.head_len as i64,
        done.head_hash as i64,
        done.scan.state,
        now,
    ])?;
    Ok(())
}

/// Recomputes the aggregates of every touched half hour from the entries, leaving out replayed
/// copies whose original is known.
fn refresh_aggregates(tx: &Transaction, touched: &mut HashSet<i64>) -> Result<()> {
    if touched.is_empty() {
        return Ok(());
    }
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS touched (h INTEGER PRIMARY KEY); DELETE FROM touched;",
    )?;
    {
        let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO touched (h) VALUES (?1)")?;
        for h in touched.iter() {
            ins.execute([h])?;
        }
    }
    tx.execute_batch(
        "DELETE FROM agg WHERE hour_start IN (SELECT h FROM touched);
         INSERT INTO agg (hour_start, source, model, dim, input, cached, cache_creation, output,
                          reasoning, total)
         SELECT e.hour_start, e.source, e.model, e.dim, SUM(e.input), SUM(e.cached),
                SUM(e.cache_creation), SUM(e.output), SUM(e.reasoning), SUM(e.total)
         FROM entries e
         WHERE e.hour_start IN (SELECT h FROM touched)
           AND NOT (e.replay = 1 AND EXISTS (
                SELECT 1 FROM entries p WHERE p.grp = e.grp AND p.replay = 0 AND p.id <> e.id))
         GROUP BY e.hour_start, e.source, e.model, e.dim;
         DELETE FROM touched;",
    )?;
    touched.clear();
    Ok(())
}
