//! Incremental scanning: decide per file what to read from its cursor, read changed files in
//! parallel, and write entries, cursors and aggregates in one writer.

use crate::{Ledger, Result};
use rayon::prelude::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, Skipped};
use tokenledger_core::Source;

use tokenledger_collect::lines::HEAD_LEN;
/// Files written per transaction; a crash loses at most this much progress, never a token.
const FILES_PER_COMMIT: usize = 16384;

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
    /// The head recorded in the cursor (length, hash), checked before an appended read.
    head: (u64, u64),
    /// Whether the ledger had a cursor for the file.
    known: bool,
}

impl Work {
    /// Bytes left to read.
    fn remaining(&self) -> u64 {
        self.stat.size.saturating_sub(self.offset)
    }
}

struct Done {
    file: FoundFile,
    stat: Stat,
    scan: FileScan,
    head_len: u64,
    head_hash: u64,
    /// Whether the ledger had a cursor for the file.
    known: bool,
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
    Some(tokenledger_collect::lines::head_hash(&buf))
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
        // Discover (collectors in parallel) and stat every file in parallel, while this
        // thread loads the cursors: a warm run is mostly file-system lookups.
        let conn = &self.conn;
        let (cursors, (listed, stats)) = std::thread::scope(|s| {
            let files = s.spawn(|| {
                let found: Vec<Vec<FoundFile>> =
                    collectors.par_iter().map(|c| c.discover(env)).collect();
                let mut seen: HashSet<u64> = HashSet::new();
                let mut listed: Vec<(usize, FoundFile, u64)> = Vec::new();
                for (ci, files) in found.into_iter().enumerate() {
                    for file in files {
                        let key = cursor_key(file.source.as_str(), &file.path.to_string_lossy());
                        if seen.insert(key) {
                            listed.push((ci, file, key));
                        }
                    }
                }
                let stats: Vec<std::io::Result<Stat>> = listed
                    .par_iter()
                    .with_min_len(256)
                    .map(|(_, f, _)| stat_of(&f.path))
                    .collect();
                (listed, stats)
            });
            let cursors = load_cursors(conn);
            (cursors, files.join().expect("discovery does not panic"))
        });
        let cursors = cursors?;
        let mut work: Vec<Work> = Vec::new();
        for ((ci, file, key), stat) in listed.into_iter().zip(stats) {
            report.files_seen += 1;
            let stat = match stat {
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
            let known = cursors.get(&key);
            let head = known.map_or((0, 0), |c| (c.head_len, c.head_hash));
            let known = known.is_some();
            let (offset, state) = match cursors.get(&key) {
                None => (0, String::new()),
                Some(cur) => {
                    let same_identity = cur.dev == stat.dev && cur.inode == stat.inode;
                    let unchanged =
                        same_identity && cur.size == stat.size && cur.mtime_ns == stat.mtime_ns;
                    if file.whole {
                        if always_offer(file.source, &file) {
                            (0, load_state(&self.conn, &file)?)
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
                        (cur.offset, load_state(&self.conn, &file)?)
                    }
                }
            };
            work.push(Work {
                collector: ci,
                file,
                stat,
                offset,
                state,
                head,
                known,
            });
        }

        let total_bytes: u64 = work.iter().map(Work::remaining).sum();
        // Big files first, so that the parallel readers finish together.
        work.sort_by_key(|w| std::cmp::Reverse(w.remaining()));
        if !work.is_empty() {
            progress.start(work.len() as u64, total_bytes);
        }

        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Done>>(32);
        let conn = &mut self.conn;
        let writer_result = std::thread::scope(|s| {
            s.spawn(move || {
                // Files go to the writer in small batches: one wake-up per file costs more
                // than reading a small file.
                work.into_par_iter()
                    .chunks(16)
                    .for_each_with(tx, |tx, chunk| {
                        let batch: Vec<Done> = chunk
                            .into_iter()
                            .map(|w| {
                                let scan =
                                    collectors[w.collector].scan(&w.file, w.offset, &w.state);
                                progress.advance(scan.bytes_read);
                                let (head_len, head_hash) = if w.file.whole {
                                    (0, 0)
                                } else if let Some(head) = scan.head {
                                    // Read from the start: the collector hashed the head.
                                    head
                                } else if w.offset > 0 && w.head.0 == HEAD_LEN {
                                    // Appended to: the full head was checked before reading.
                                    w.head
                                } else {
                                    let len = scan.offset.min(HEAD_LEN);
                                    match head_hash(&w.file.path, len) {
                                        Some(h) if len > 0 => (len, h),
                                        _ => (0, 0),
                                    }
                                };
                                Done {
                                    file: w.file,
                                    stat: w.stat,
                                    scan,
                                    head_len,
                                    head_hash,
                                    known: w.known,
                                }
                            })
                            .collect();
                        let _ = tx.send(batch);
                    });
            });
            write_all(conn, rx, &mut report)
        });
        progress.finish();
        writer_result?;
        Ok(report)
    }
}

/// The identity of a file's cursor: its source and path, hashed (paths hash slowly).
fn cursor_key(source: &str, path: &str) -> u64 {
    tokenledger_collect::stable_hash(&[source.as_bytes(), path.as_bytes()])
}

/// The parser state of one file's cursor (read only for files that changed: most do not).
fn load_state(conn: &Connection, file: &FoundFile) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT state FROM files WHERE source = ?1 AND path = ?2")?
        .query_row(
            params![file.source.as_str(), file.path.to_string_lossy()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default())
}

fn load_cursors(conn: &Connection) -> Result<HashMap<u64, Cursor>> {
    let mut stmt = conn.prepare(
        "SELECT source, path, dev, inode, size, mtime_ns, offset, head_len, head_hash FROM files",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            cursor_key(r.get_ref(0)?.as_str()?, r.get_ref(1)?.as_str()?),
            Cursor {
                dev: r.get::<_, i64>(2)? as u64,
                inode: r.get::<_, i64>(3)? as u64,
                size: r.get::<_, i64>(4)? as u64,
                mtime_ns: r.get(5)?,
                offset: r.get::<_, i64>(6)? as u64,
                head_len: r.get::<_, i64>(7)? as u64,
                head_hash: r.get::<_, i64>(8)? as u64,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
}

/// One event waiting to be written, in a compact form.
struct Pending {
    key: i64,
    source: Source,
    model: u32,
    ts: i64,
    dim: i64,
    tokens: [u64; 6],
    grp: Option<i64>,
    replay: bool,
}

/// Events are buffered, sorted by key and deduplicated in memory before they reach SQLite:
/// sorted upserts touch each B-tree page once instead of at random.
const PENDING_LIMIT: usize = 250_000;

struct Writer {
    /// Interned `(session, project)` ids by a hash of the pair.
    dims: HashMap<u64, i64>,
    /// Whether `dims` holds every pair of the ledger.
    dims_loaded: bool,
    models: Vec<String>,
    model_ids: HashMap<String, u32>,
    pending: Vec<Pending>,
    files: Vec<Done>,
    touched: HashSet<i64>,
    /// Replay groups whose original was written in this transaction.
    originals: HashSet<i64>,
    now: i64,
    /// Time spent per phase (with `TOKENLEDGER_TIMING`): buffer, entries, cursors, dirty marks.
    phases: [std::time::Duration; 4],
}

fn write_all(
    conn: &mut Connection,
    rx: std::sync::mpsc::Receiver<Vec<Done>>,
    report: &mut ScanReport,
) -> Result<()> {
    let mut w = Writer {
        dims: HashMap::new(),
        dims_loaded: false,
        models: Vec::new(),
        model_ids: HashMap::new(),
        pending: Vec::new(),
        files: Vec::new(),
        touched: HashSet::new(),
        originals: HashSet::new(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        phases: Default::default(),
    };
    let timing = std::env::var_os("TOKENLEDGER_TIMING").is_some();
    let mut busy = std::time::Duration::ZERO;
    let mut events = 0usize;
    let mut tx = conn.transaction()?;
    for mut done in rx.into_iter().flatten() {
        let t = std::time::Instant::now();
        report.files_read += 1;
        report.bytes_read += done.scan.bytes_read;
        report.skipped.append(&mut done.scan.skipped);
        events += done.scan.events.len();
        buffer(&tx, &mut w, &mut done)?;
        w.phases[0] += t.elapsed();
        w.files.push(done);
        if w.pending.len() >= PENDING_LIMIT || w.files.len() >= FILES_PER_COMMIT {
            flush(&tx, &mut w, report)?;
            tx.commit()?;
            tx = conn.transaction()?;
        }
        busy += t.elapsed();
    }
    let t = std::time::Instant::now();
    flush(&tx, &mut w, report)?;
    let t_flush = t.elapsed();
    refresh_aggregates(&tx)?;
    let t_refresh = t.elapsed();
    tx.commit()?;
    if timing {
        eprintln!(
            "writer: {events} events, busy {busy:?}, last flush {t_flush:?}, aggregates {:?}, commit {:?}",
            t_refresh - t_flush,
            t.elapsed() - t_refresh
        );
        eprintln!(
            "writer phases (buffer, entries, cursors, dirty): {:?}",
            w.phases
        );
    }
    Ok(())
}

fn dim_id(tx: &Transaction, w: &mut Writer, session: &str, project: &str) -> Result<i64> {
    let key = tokenledger_collect::stable_hash(&[session.as_bytes(), project.as_bytes()]);
    if let Some(id) = w.dims.get(&key) {
        return Ok(*id);
    }
    if !w.dims_loaded {
        // First miss: load every known pair once, so that later misses are new pairs.
        let mut st = tx.prepare("SELECT id, session, project FROM dims")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let session: String = r.get(1)?;
            let project: String = r.get(2)?;
            let k = tokenledger_collect::stable_hash(&[session.as_bytes(), project.as_bytes()]);
            w.dims.insert(k, r.get(0)?);
        }
        w.dims_loaded = true;
        if let Some(id) = w.dims.get(&key) {
            return Ok(*id);
        }
    }
    tx.prepare_cached("INSERT INTO dims (session, project) VALUES (?1, ?2)")?
        .execute(params![session, project])?;
    let id = tx.last_insert_rowid();
    w.dims.insert(key, id);
    Ok(id)
}

/// Moves a file's events into the pending buffer.
fn buffer(tx: &Transaction, w: &mut Writer, done: &mut Done) -> Result<()> {
    for e in std::mem::take(&mut done.scan.events) {
        if e.tokens.is_zero() {
            continue;
        }
        let dim = dim_id(tx, w, &e.session, &e.project)?;
        let model = match w.model_ids.get(&e.model) {
            Some(id) => *id,
            None => {
                let id = w.models.len() as u32;
                w.model_ids.insert(e.model.clone(), id);
                w.models.push(e.model);
                id
            }
        };
        w.pending.push(Pending {
            key: e.dedupe_key as i64,
            source: e.source,
            model,
            ts: e.ts,
            dim,
            tokens: e.tokens.as_array(),
            grp: e.group.map(|g| g as i64),
            replay: e.replay,
        });
    }
    Ok(())
}

/// Writes the buffered events (largest total per key), the cursors of their files, and the
/// aggregates of the half hours they touched, in the caller's transaction.
fn flush(tx: &Transaction, w: &mut Writer, report: &mut ScanReport) -> Result<()> {
    let mut pending = std::mem::take(&mut w.pending);
    // Sort by key, largest total first within a key; keep the first of each key.
    pending.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.tokens[5].cmp(&a.tokens[5])));
    pending.dedup_by_key(|p| p.key);
    let t0 = std::time::Instant::now();
    {
        // A plain insert, then a raise only where the key was there already: an upsert
        // statement (`ON CONFLICT DO UPDATE`) makes SQLite keep a statement journal, copying
        // every page it touches.
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO entries (id, source, model, ts, hour_start, dim, input,
                                            cached, cache_creation, output, reasoning, total,
                                            grp, replay)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        let mut raise = tx.prepare_cached(
            "UPDATE entries SET model = ?2, input = ?3, cached = ?4, cache_creation = ?5,
                                output = ?6, reasoning = ?7, total = ?8
             WHERE id = ?1 AND total < ?8
             RETURNING hour_start",
        )?;
        for p in &pending {
            let t = &p.tokens;
            let model = &w.models[p.model as usize];
            let hour = tokenledger_core::floor_half_hour(p.ts);
            let inserted = insert.execute(params![
                p.key,
                p.source.as_str(),
                model,
                p.ts,
                hour,
                p.dim,
                t[0] as i64,
                t[1] as i64,
                t[2] as i64,
                t[3] as i64,
                t[4] as i64,
                t[5] as i64,
                p.grp,
                p.replay as i64,
            ])? > 0;
            let touched: Option<i64> = if inserted {
                Some(hour)
            } else {
                raise
                    .query_row(
                        params![
                            p.key,
                            model,
                            t[0] as i64,
                            t[1] as i64,
                            t[2] as i64,
                            t[3] as i64,
                            t[4] as i64,
                            t[5] as i64,
                        ],
                        |r| r.get(0),
                    )
                    .optional()?
            };
            if let Some(h) = touched {
                report.entries_written += 1;
                w.touched.insert(h);
                if let (Some(g), false) = (p.grp, p.replay) {
                    // A replayed copy of this response may already be counted in another
                    // half hour: refresh_aggregates touches those hours too.
                    w.originals.insert(g);
                }
            }
        }
    }
    w.phases[1] += t0.elapsed();
    let t0 = std::time::Instant::now();
    {
        // Update, else insert (not an upsert statement: see the entries above).
        let mut update = tx.prepare_cached(
            "UPDATE files SET dev = ?3, inode = ?4, size = ?5, mtime_ns = ?6, offset = ?7,
                              head_len = ?8, head_hash = ?9, state = ?10, last_scan = ?11
             WHERE source = ?1 AND path = ?2",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO files (source, path, dev, inode, size, mtime_ns, offset, head_len,
                                head_hash, state, last_scan)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for done in w.files.drain(..) {
            let path = done.file.path.to_string_lossy();
            let values = params![
                done.file.source.as_str(),
                path,
                done.stat.dev as i64,
                done.stat.inode as i64,
                done.stat.size as i64,
                done.stat.mtime_ns,
                done.scan.offset as i64,
                done.head_len as i64,
                done.head_hash as i64,
                done.scan.state,
                w.now,
            ];
            // New files are inserted first; the other statement runs only on a miss (another
            // scan wrote the row meanwhile, or the file went away from the ledger).
            if done.known {
                if update.execute(values)? == 0 {
                    insert.execute(values)?;
                }
            } else if insert.execute(values)? == 0 {
                update.execute(values)?;
            }
        }
    }
    w.phases[2] += t0.elapsed();
    let t0 = std::time::Instant::now();
    mark_dirty(tx, w)?;
    w.phases[3] += t0.elapsed();
    Ok(())
}

/// Records the half hours and replay groups this flush touched, in the flush's transaction, so
/// that a crash before [`refresh_aggregates`] leaves them to the next scan.
fn mark_dirty(tx: &Transaction, w: &mut Writer) -> Result<()> {
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO dirty_hours (h) VALUES (?1)")?;
    for h in w.touched.drain() {
        ins.execute([h])?;
    }
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO dirty_groups (g) VALUES (?1)")?;
    for g in w.originals.drain() {
        ins.execute([g])?;
    }
    Ok(())
}

/// Recomputes the aggregates of every dirty half hour from the entries, leaving out replayed
/// copies whose original is known, and clears the dirty marks. Runs once per scan: refreshing
/// per flush would re-aggregate the same hours again and again.
pub(crate) fn refresh_aggregates(tx: &Transaction) -> Result<()> {
    let (hours_dirty, groups_dirty): (i64, i64) = tx.query_row(
        "SELECT (SELECT count(*) FROM dirty_hours), (SELECT count(*) FROM dirty_groups)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if hours_dirty + groups_dirty == 0 {
        return Ok(());
    }
    let hours_all: i64 = tx.query_row(
        "SELECT count(*) FROM (SELECT DISTINCT hour_start FROM agg)",
        [],
        |r| r.get(0),
    )?;
    // When most of the ledger is dirty (a first scan), one sequential pass over every entry beats
    // looking each dirty half hour up through the index; otherwise the (small) dirty set drives
    // the join (CROSS JOIN keeps it the outer loop), and the hours holding a replayed copy of an
    // original written now are dirty too.
    let (prelude, from, only_dirty) = if hours_dirty * 2 >= hours_all {
        ("DELETE FROM agg;", "entries e NOT INDEXED", "")
    } else {
        (
            "INSERT OR IGNORE INTO dirty_hours (h)
             SELECT e.hour_start FROM dirty_groups o CROSS JOIN entries e
             WHERE e.grp = o.g AND e.replay = 1;
             DELETE FROM agg WHERE hour_start IN (SELECT h FROM dirty_hours);",
            "dirty_hours d CROSS JOIN entries e",
            "e.hour_start = d.h AND",
        )
    };
    tx.execute_batch(&format!(
        "{prelude}
         INSERT INTO agg (hour_start, source, model, dim, input, cached, cache_creation, output,
                          reasoning, total)
         SELECT e.hour_start, e.source, e.model, e.dim, SUM(e.input), SUM(e.cached),
                SUM(e.cache_creation), SUM(e.output), SUM(e.reasoning), SUM(e.total)
         FROM {from}
         WHERE {only_dirty} NOT (e.replay = 1 AND EXISTS (
                SELECT 1 FROM entries p WHERE p.grp = e.grp AND p.replay = 0 AND p.id <> e.id))
         GROUP BY e.hour_start, e.source, e.model, e.dim;
         DELETE FROM dirty_hours; DELETE FROM dirty_groups;"
    ))?;
    Ok(())
}
