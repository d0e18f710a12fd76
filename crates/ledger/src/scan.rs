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
/// Cursors buffered before they are written (memory bound).
const FILES_PER_FLUSH: usize = 8192;
/// How often a long scan commits: a crash loses at most this much progress, never a token.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
    key: i64,
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
                let mut seen: HashSet<i64> = HashSet::new();
                let mut listed: Vec<(usize, FoundFile, i64)> = Vec::new();
                for (ci, files) in found.into_iter().enumerate() {
                    for file in files {
                        let key =
                            crate::cursor_key(file.source.as_str(), &file.path.to_string_lossy());
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
                            (0, load_state(&self.conn, key)?)
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
                        (cur.offset, load_state(&self.conn, key)?)
                    }
                }
            };
            work.push(Work {
                key,
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

        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(32);
        let conn = &mut self.conn;
        let writer_result = std::thread::scope(|s| {
            s.spawn(move || {
                // Files go to the writer in small batches: one wake-up per file costs more
                // than reading a small file.
                work.into_par_iter()
                    .chunks(16)
                    .for_each_with(tx, |tx, chunk| {
                        let mut batch = Batch::default();
                        for w in chunk {
                            let scan = collectors[w.collector].scan(&w.file, w.offset, &w.state);
                            progress.advance(scan.bytes_read);
                            batch.add(w, scan);
                        }
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

/// The parser state of one file's cursor (read only for files that changed: most do not).
fn load_state(conn: &Connection, key: i64) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT state FROM cursor_state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

fn load_cursors(conn: &Connection) -> Result<HashMap<i64, Cursor>> {
    let mut stmt = conn.prepare(
        "SELECT key, dev, inode, size, mtime_ns, offset, head_len, head_hash FROM cursors",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            Cursor {
                dev: r.get::<_, i64>(1)? as u64,
                inode: r.get::<_, i64>(2)? as u64,
                size: r.get::<_, i64>(3)? as u64,
                mtime_ns: r.get(4)?,
                offset: r.get::<_, i64>(5)? as u64,
                head_len: r.get::<_, i64>(6)? as u64,
                head_hash: r.get::<_, i64>(7)? as u64,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<HashMap<_, _>>>()?)
}

/// A file read by a worker: its new cursor.
struct FileDone {
    key: i64,
    source: Source,
    path: String,
    stat: Stat,
    offset: u64,
    state: String,
    head_len: u64,
    head_hash: u64,
    /// Whether the ledger had a cursor for the file.
    known: bool,
}

/// What a worker hands the writer for a few files, in a compact form: the workers intern
/// strings per batch so that the writer only maps small ids (and strings are freed by the
/// thread that made them).
#[derive(Default)]
struct Batch {
    files: Vec<FileDone>,
    /// Events with `model` an index into `models` and `dim` a hash of (session, project).
    events: Vec<Pending>,
    /// The (session, project) pairs of `events` by hash.
    dims: Vec<(i64, String, String)>,
    models: Vec<String>,
    skipped: Vec<Skipped>,
    bytes_read: u64,
}

impl Batch {
    fn add(&mut self, w: Work, mut scan: FileScan) {
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
        for e in scan.events.iter_mut() {
            if e.tokens.is_zero() {
                continue;
            }
            let dim =
                tokenledger_collect::stable_hash(&[e.session.as_bytes(), e.project.as_bytes()])
                    as i64;
            if !self.dims.iter().rev().any(|d| d.0 == dim) {
                self.dims.push((
                    dim,
                    std::mem::take(&mut e.session),
                    std::mem::take(&mut e.project),
                ));
            }
            let model = match self.models.iter().position(|m| *m == e.model) {
                Some(i) => i,
                None => {
                    self.models.push(std::mem::take(&mut e.model));
                    self.models.len() - 1
                }
            } as u32;
            self.events.push(Pending {
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
        self.skipped.append(&mut scan.skipped);
        self.bytes_read += scan.bytes_read;
        self.files.push(FileDone {
            key: w.key,
            source: w.file.source,
            path: w.file.path.to_string_lossy().into_owned(),
            stat: w.stat,
            offset: scan.offset,
            state: scan.state,
            head_len,
            head_hash,
            known: w.known,
        });
    }
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
    dims: HashMap<i64, i64>,
    /// Whether `dims` holds every pair of the ledger.
    dims_loaded: bool,
    models: Vec<String>,
    model_ids: HashMap<String, u32>,
    /// Events waiting for the next flush: `model` a global model id, `dim` a dims row id.
    pending: Vec<Pending>,
    files: Vec<FileDone>,
    touched: HashSet<i64>,
    /// Replay groups whose original was written in this transaction.
    originals: HashSet<i64>,
    now: i64,
    /// Time spent per phase (with `TOKENLEDGER_TIMING`): buffer, entries, cursors, dirty marks.
    phases: [std::time::Duration; 4],
}

fn write_all(
    conn: &mut Connection,
    rx: std::sync::mpsc::Receiver<Batch>,
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
    let mut last_commit = std::time::Instant::now();
    for mut batch in rx {
        let t = std::time::Instant::now();
        report.files_read += batch.files.len() as u64;
        report.bytes_read += batch.bytes_read;
        report.skipped.append(&mut batch.skipped);
        events += batch.events.len();
        buffer(&tx, &mut w, batch)?;
        w.phases[0] += t.elapsed();
        if w.pending.len() >= PENDING_LIMIT || w.files.len() >= FILES_PER_FLUSH {
            flush(&tx, &mut w, report)?;
            if last_commit.elapsed() >= COMMIT_EVERY {
                tx.commit()?;
                tx = conn.transaction()?;
                last_commit = std::time::Instant::now();
            }
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

/// The dims row of a (session, project) pair, by the pair's hash; inserted when new.
fn dim_id(
    tx: &Transaction,
    w: &mut Writer,
    hash: i64,
    session: &str,
    project: &str,
) -> Result<i64> {
    if let Some(id) = w.dims.get(&hash) {
        return Ok(*id);
    }
    if !w.dims_loaded {
        // First miss: load every known pair once, so that later misses are new pairs.
        let mut st = tx.prepare("SELECT id, session, project FROM dims")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let s = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let p = r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
            let k = tokenledger_collect::stable_hash(&[s.as_bytes(), p.as_bytes()]) as i64;
            w.dims.insert(k, r.get(0)?);
        }
        w.dims_loaded = true;
        if let Some(id) = w.dims.get(&hash) {
            return Ok(*id);
        }
    }
    tx.prepare_cached("INSERT INTO dims (session, project) VALUES (?1, ?2)")?
        .execute(params![session, project])?;
    let id = tx.last_insert_rowid();
    w.dims.insert(hash, id);
    Ok(id)
}

/// Moves a batch's events (with its ids mapped to the ledger's) and cursors into the buffers.
fn buffer(tx: &Transaction, w: &mut Writer, batch: Batch) -> Result<()> {
    for (hash, session, project) in &batch.dims {
        dim_id(tx, w, *hash, session, project)?;
    }
    let models: Vec<u32> = batch
        .models
        .into_iter()
        .map(|m| match w.model_ids.get(&m) {
            Some(id) => *id,
            None => {
                let id = w.models.len() as u32;
                w.model_ids.insert(m.clone(), id);
                w.models.push(m);
                id
            }
        })
        .collect();
    for mut p in batch.events {
        p.model = models[p.model as usize];
        p.dim = w.dims[&p.dim];
        w.pending.push(p);
    }
    w.files.extend(batch.files);
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
    write_cursors(tx, w)?;
    w.phases[2] += t0.elapsed();
    let t0 = std::time::Instant::now();
    mark_dirty(tx, w)?;
    w.phases[3] += t0.elapsed();
    Ok(())
}

/// Writes the cursors of the buffered files, in key order. Update-else-insert rather than an
/// upsert statement (see the entries above); new files try the insert first.
fn write_cursors(tx: &Transaction, w: &mut Writer) -> Result<()> {
    let mut update = tx.prepare_cached(
        "UPDATE cursors SET dev = ?2, inode = ?3, size = ?4, mtime_ns = ?5, offset = ?6,
                            head_len = ?7, head_hash = ?8, last_scan = ?9
         WHERE key = ?1",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO cursors (key, dev, inode, size, mtime_ns, offset, head_len,
                                        head_hash, last_scan, source, path)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut set_state = tx.prepare_cached("UPDATE cursor_state SET state = ?2 WHERE key = ?1")?;
    let mut add_state =
        tx.prepare_cached("INSERT OR IGNORE INTO cursor_state (key, state) VALUES (?1, ?2)")?;
    let mut clear_state = tx.prepare_cached("DELETE FROM cursor_state WHERE key = ?1")?;
    w.files.sort_unstable_by_key(|f| f.key);
    for f in w.files.drain(..) {
        let values = params![
            f.key,
            f.stat.dev as i64,
            f.stat.inode as i64,
            f.stat.size as i64,
            f.stat.mtime_ns,
            f.offset as i64,
            f.head_len as i64,
            f.head_hash as i64,
            w.now,
        ];
        let inserted = !f.known
            && insert.execute(params![
                f.key,
                f.stat.dev as i64,
                f.stat.inode as i64,
                f.stat.size as i64,
                f.stat.mtime_ns,
                f.offset as i64,
                f.head_len as i64,
                f.head_hash as i64,
                w.now,
                f.source.as_str(),
                f.path,
            ])? > 0;
        if !inserted && update.execute(values)? == 0 {
            // Known when the scan began, but gone since (nothing else deletes cursors).
            insert.execute(params![
                f.key,
                f.stat.dev as i64,
                f.stat.inode as i64,
                f.stat.size as i64,
                f.stat.mtime_ns,
                f.offset as i64,
                f.head_len as i64,
                f.head_hash as i64,
                w.now,
                f.source.as_str(),
                f.path,
            ])?;
        }
        if !f.state.is_empty() {
            if inserted || set_state.execute(params![f.key, f.state])? == 0 {
                add_state.execute(params![f.key, f.state])?;
            }
        } else if f.known {
            clear_state.execute([f.key])?;
        }
    }
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
    // When most of the ledger is dirty (a first scan), one sequential pass over every entry
    // beats looking each dirty half hour up through the index; otherwise the (small) dirty set
    // drives the join (CROSS JOIN keeps it the outer loop), and the hours holding a replayed
    // copy of an original written now are dirty too.
    if hours_dirty * 2 >= hours_all {
        return rebuild_aggregates(tx);
    }
    let (prelude, from, only_dirty, hours_from, hours_dirty) = (
        "INSERT OR IGNORE INTO dirty_hours (h)
         SELECT e.hour_start FROM dirty_groups o CROSS JOIN entries e
         WHERE e.grp = o.g AND e.replay = 1;
         DELETE FROM agg WHERE hour_start IN (SELECT h FROM dirty_hours);
         DELETE FROM agg_hour WHERE hour_start IN (SELECT h FROM dirty_hours);",
        "dirty_hours d CROSS JOIN entries e",
        "e.hour_start = d.h AND",
        "dirty_hours d CROSS JOIN agg a",
        "WHERE a.hour_start = d.h",
    );
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
         INSERT INTO agg_hour (hour_start, source, model, input, cached, cache_creation, output,
                               reasoning, total)
         SELECT a.hour_start, a.source, a.model, SUM(a.input), SUM(a.cached),
                SUM(a.cache_creation), SUM(a.output), SUM(a.reasoning), SUM(a.total)
         FROM {hours_from} {hours_dirty}
         GROUP BY a.hour_start, a.source, a.model;
         DELETE FROM dirty_hours; DELETE FROM dirty_groups;"
    ))?;
    Ok(())
}

/// Recomputes every aggregate from the entries in one pass, in memory (the same rule as the
/// SQL of [`refresh_aggregates`]: a replayed copy is left out when its group has an original).
/// Memory is bounded by the number of aggregate rows and replay groups, not of entries.
fn rebuild_aggregates(tx: &Transaction) -> Result<()> {
    let mut originals: HashSet<i64> = HashSet::new();
    {
        let mut st =
            tx.prepare("SELECT grp FROM entries NOT INDEXED WHERE replay = 0 AND grp IS NOT NULL")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            originals.insert(r.get(0)?);
        }
    }
    // Source and model names interned: (hour, source, model, dim) -> sums.
    let mut names: Vec<String> = Vec::new();
    let mut name_ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |s: &str| -> u32 {
        if let Some(id) = name_ids.get(s) {
            return *id;
        }
        names.push(s.to_string());
        name_ids.insert(s.to_string(), (names.len() - 1) as u32);
        (names.len() - 1) as u32
    };
    let mut sums: HashMap<(i64, u32, u32, i64), [i64; 6]> = HashMap::new();
    {
        let mut st = tx.prepare(
            "SELECT hour_start, source, model, dim, input, cached, cache_creation, output,
                    reasoning, total, grp, replay FROM entries NOT INDEXED",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            if r.get::<_, i64>(11)? != 0 {
                if let Some(g) = r.get::<_, Option<i64>>(10)? {
                    if originals.contains(&g) {
                        continue;
                    }
                }
            }
            let text = |i: usize| -> rusqlite::Result<&str> {
                r.get_ref(i)?.as_str().map_err(rusqlite::Error::from)
            };
            let key = (r.get(0)?, intern(text(1)?), intern(text(2)?), r.get(3)?);
            let acc = sums.entry(key).or_insert([0; 6]);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = a.saturating_add(r.get::<_, i64>(4 + i)?);
            }
        }
    }
    // Written in primary-key order (text compares as bytes, as SQLite's BINARY collation).
    let mut rows: Vec<((i64, u32, u32, i64), [i64; 6])> = sums.into_iter().collect();
    rows.sort_unstable_by(|(a, _), (b, _)| {
        (a.0, &names[a.1 as usize], &names[a.2 as usize], a.3).cmp(&(
            b.0,
            &names[b.1 as usize],
            &names[b.2 as usize],
            b.3,
        ))
    });
    tx.execute_batch("DELETE FROM agg; DELETE FROM agg_hour;")?;
    let mut agg = tx.prepare(
        "INSERT INTO agg (hour_start, source, model, dim, input, cached, cache_creation, output,
                          reasoning, total) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut hour = tx.prepare(
        "INSERT INTO agg_hour (hour_start, source, model, input, cached, cache_creation, output,
                               reasoning, total) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut i = 0;
    while i < rows.len() {
        // Rows of one (hour, source, model) are adjacent: their sum is one agg_hour row.
        let (h, s, m, _) = rows[i].0;
        let mut total = [0i64; 6];
        while i < rows.len() && (rows[i].0 .0, rows[i].0 .1, rows[i].0 .2) == (h, s, m) {
            let ((_, _, _, dim), t) = &rows[i];
            let (source, model) = (&names[s as usize], &names[m as usize]);
            agg.execute(params![
                h, source, model, dim, t[0], t[1], t[2], t[3], t[4], t[5]
            ])?;
            for (a, v) in total.iter_mut().zip(t) {
                *a = a.saturating_add(*v);
            }
            i += 1;
        }
        let (source, model) = (&names[s as usize], &names[m as usize]);
        hour.execute(params![
            h, source, model, total[0], total[1], total[2], total[3], total[4], total[5]
        ])?;
    }
    tx.execute_batch("DELETE FROM dirty_hours; DELETE FROM dirty_groups;")?;
    Ok(())
}
