//! Incremental scanning: decide per file what to read from its cursor, read changed files in
//! parallel, and write entries, cursors and aggregates in one writer.

use crate::{Ledger, Result};
use rayon::prelude::*;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::sync::Mutex;
use tokenledger_collect::lines::HEAD_LEN;
use tokenledger_collect::{
    Collector, DirCache, DirStamp, Env, FileMeta, FileScan, FoundFile, KeyBuild, ListingChanges,
    SkipReason, Skipped, StoredListings,
};
use tokenledger_core::Source;

/// Events a reader's batch holds before it is sent on without waiting for the rest of its
/// files (memory bound).
const BATCH_EVENTS: usize = 4096;
/// How much the batches waiting for the writer may hold, in events (a file counts as
/// [`FILE_WEIGHT`] events, a skipped line as 2): about 10 MB at most. The writer takes
/// thousands of files' rows per flush, and readers that find the queue full meanwhile leave a
/// core idle: a third of this bound made a first scan of 1 GiB ~9% slower.
const QUEUE_WEIGHT: usize = 96 * 1024;
/// What a file's record weighs in a queued batch against an event (its path, parser state
/// and session).
const FILE_WEIGHT: usize = 4;
/// Cursors buffered before they are written (memory bound).
const FILES_PER_FLUSH: usize = 4096;
/// Files at least this big are read first, biggest first (about 4 ms of parsing each): the
/// last files the readers take are then small, and they finish together.
const BIG_FILE: u64 = 4 << 20;
/// A writer with nothing waiting flushes once it holds this many events or files (see
/// `write_batches`): a first scan of all five agents then ended with ~60 ms of writing alone
/// instead of ~135 ms (1.23 s -> 1.20 s).
const IDLE_FLUSH_EVENTS: usize = 8192;
const IDLE_FLUSH_FILES: usize = 1024;
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
    /// Files the collectors found (one found under two roots counts twice unless it is read).
    pub files_seen: u64,
    /// Files that had something new and were read.
    pub files_read: u64,
    /// Log bytes read.
    pub bytes_read: u64,
    /// Entries added or raised.
    pub entries_written: u64,
    /// Lines (or files) skipped, with why.
    pub skipped: Vec<Skipped>,
    /// Folders the walks read, and folders they did not need to read (unchanged since their
    /// stored listing).
    pub folders_read: u64,
    pub folders_reused: u64,
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
pub(crate) struct Cursor {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub offset: u64,
    pub head_len: u64,
    pub head_hash: u64,
}

/// Bytes of a packed cursor: seven little-endian 64-bit figures.
const PACKED_LEN: usize = 56;

impl Cursor {
    /// Whether a file with this metadata is the one this cursor describes, unchanged (a file
    /// that is not needs reading, from its cursor's offset or again from its start).
    fn matches(&self, stat: &FileMeta) -> bool {
        self.stat() == *stat
    }

    /// The file's identity, size and modification time as the cursor saw them.
    fn stat(&self) -> FileMeta {
        FileMeta {
            dev: self.dev,
            inode: self.inode,
            size: self.size,
            mtime_ns: self.mtime_ns,
        }
    }

    /// The form stored in `cursors.stat` (one column: a warm scan loads every cursor).
    pub(crate) fn pack(&self) -> [u8; PACKED_LEN] {
        let mut out = [0u8; PACKED_LEN];
        let figures = [
            self.dev,
            self.inode,
            self.size,
            self.mtime_ns as u64,
            self.offset,
            self.head_len,
            self.head_hash,
        ];
        for (chunk, v) in out.chunks_exact_mut(8).zip(figures) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// A packed cursor; `None` when the bytes are not one (the file is then read again from
    /// its start, and entries already counted count once).
    pub(crate) fn unpack(bytes: &[u8]) -> Option<Cursor> {
        let bytes: &[u8; PACKED_LEN] = bytes.try_into().ok()?;
        let mut f = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
        let mut next = || f.next().unwrap_or_default();
        Some(Cursor {
            dev: next(),
            inode: next(),
            size: next(),
            mtime_ns: next() as i64,
            offset: next(),
            head_len: next(),
            head_hash: next(),
        })
    }
}

/// A file the collectors found, with its metadata (`None` when it cannot be read).
struct Found {
    key: i64,
    collector: usize,
    file: FoundFile,
    stat: Option<FileMeta>,
}

/// A found file with something to read.
struct Work {
    key: i64,
    collector: usize,
    file: FoundFile,
    stat: FileMeta,
    offset: u64,
    state: String,
    /// The head recorded in the cursor (length, hash), checked before an appended read.
    head: (u64, u64),
    /// Whether the ledger had a cursor for the file.
    known: bool,
    /// The cursor's offset when the file's metadata has not changed since (a database offered
    /// for its own change check): a scan that finds nothing new then has nothing to write.
    same_as: Option<u64>,
}

impl Work {
    /// Bytes left to read.
    fn remaining(&self) -> u64 {
        self.stat.size.saturating_sub(self.offset)
    }
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
        let started = std::time::Instant::now();
        let timing = std::env::var_os("TOKENLEDGER_TIMING").is_some();
        // Folders unchanged since their stored listing are not read again, and files whose
        // cursor matches what the walk finds are dropped by the walk itself: a warm scan keeps
        // no record of the tens of thousands of files that have nothing new.
        let stored = load_listings(&self.conn)?;
        let cursors = load_cursors(&self.conn)?;
        if timing {
            eprintln!(
                "scan: listings and cursors loaded at {:?}",
                started.elapsed()
            );
        }
        let unchanged = |source: Source, path: &[u8], stat: &FileMeta| -> bool {
            // A database is offered to its collector for its own change check, always.
            if source == Source::OpenCode {
                return false;
            }
            let key = match std::str::from_utf8(path) {
                Ok(path) => crate::cursor_key(source.as_str(), path),
                Err(_) => crate::cursor_key(source.as_str(), &String::from_utf8_lossy(path)),
            };
            cursors.unchanged(key, stat)
        };
        let listings =
            DirCache::settled_now(stored, self.listing_margin_ns).with_unchanged(&unchanged);
        // Discover (collectors in parallel) and stat every file in parallel: a warm scan is
        // mostly file-system lookups. Cursor keys (one hash of each path) are computed here
        // too. One list per collector.
        let found: Vec<Vec<Found>> = collectors
            .par_iter()
            .enumerate()
            .map(|(collector, c)| {
                let mut found: Vec<Found> = c
                    .discover_with_meta(env, &listings)
                    .into_par_iter()
                    .with_min_len(1024)
                    .map(|(file, stat)| Found {
                        key: cursor_key_of(&file),
                        collector,
                        file,
                        stat,
                    })
                    .collect();
                found
                    .par_iter_mut()
                    .with_min_len(256)
                    .filter(|f| f.stat.is_none())
                    .for_each(|f| f.stat = FileMeta::read(&f.file.path).ok());
                found
            })
            .collect();
        let (read, reused, unchanged_files) = listings.counts();
        (report.folders_read, report.folders_reused) = (read, reused);
        let mut listings = listings.into_changes();
        if timing {
            eprintln!(
                "scan: discovered in {:?} ({})",
                started.elapsed(),
                peak_memory()
            );
        }
        // Planned one by one straight into the work list: only what changed becomes work
        // (the walks dropped the files that have nothing new), and a first scan, which plans
        // every file, builds no second list of them on the way. A file found twice (two roots
        // naming one folder) is planned once.
        let found_len: usize = found.iter().map(Vec::len).sum();
        report.files_seen = found_len as u64 + unchanged_files;
        let mut seen = KeySet::default();
        let mut work: Vec<Work> = Vec::with_capacity(found_len);
        for f in found.into_iter().flatten() {
            let cursor = cursors.get(f.key);
            match plan(f, cursor) {
                None => {}
                Some(Planned::Unreadable(path)) => report
                    .skipped
                    .push(Skipped::file(&path, SkipReason::Unreadable)),
                Some(Planned::Read(mut w, needs_state)) => {
                    if !seen.insert(w.key) {
                        report.files_seen -= 1;
                        continue;
                    }
                    if needs_state {
                        w.state = load_state(&self.conn, w.key)?;
                    }
                    work.push(w);
                }
            }
        }
        drop(cursors);

        if work.is_empty() {
            // Nothing new: no write transaction that would wait for another process's scan.
            store_listings_unless_busy(&mut self.conn, &listings)?;
            return Ok(report);
        }
        let total_bytes: u64 = work.iter().map(Work::remaining).sum();
        // Big files first, so that the parallel readers finish together; the rest stay in the
        // order the walks found them, folder by folder, so that a reader opens each folder's
        // files one after another (by name in the folder: see `lines::open_log`). The sort is
        // stable.
        work.sort_by_key(|w| std::cmp::Reverse(Some(w.remaining()).filter(|&r| r >= BIG_FILE)));
        progress.start(work.len() as u64, total_bytes);

        let queue = crate::queue::Queue::<Batch>::new(QUEUE_WEIGHT);
        let shells = Shells::default();
        readers_yield_to_writer();
        let conn = &mut self.conn;
        let writer_result = std::thread::scope(|s| {
            let queue = &queue;
            let shells = &shells;
            s.spawn(move || {
                let _done = queue.senders();
                // Files go to the writer in small batches: one wake-up per file costs more
                // than reading a small file. A batch that holds many events goes at once
                // (the biggest files come first, and a database can hold tens of thousands).
                work.into_par_iter().chunks(16).for_each(|chunk| {
                    let mut batch = shells.take();
                    tokenledger_collect::lines::with_folder_reuse(|| {
                        for w in chunk {
                            let scan = collectors[w.collector].scan(&w.file, w.offset, &w.state);
                            progress.advance(scan.bytes_read);
                            batch.add(w, scan);
                            if batch.events.len() >= BATCH_EVENTS {
                                let full = std::mem::replace(&mut batch, shells.take());
                                let weight = full.weight();
                                queue.push(full, weight);
                            }
                        }
                    });
                    let weight = batch.weight();
                    queue.push(batch, weight);
                });
                if timing {
                    eprintln!(
                        "scan: read everything at {:?} ({})",
                        started.elapsed(),
                        peak_memory()
                    );
                }
            });
            write_all(conn, queue.receiver(), shells, &mut report, &mut listings)
        });
        progress.finish();
        if timing {
            eprintln!("scan: written at {:?}", started.elapsed());
        }
        if !writer_result? {
            store_listings_unless_busy(&mut self.conn, &listings)?;
        }
        Ok(report)
    }
}

/// How much less the readers weigh than the writer with the scheduler (a nice value). The
/// writer is the one part of a scan that cannot run in parallel; with every thread equal, two
/// readers and the writer share two cores a third each, the writer falls behind, and the scan
/// ends with it working off its backlog alone while a core idles (a first scan of 1 GiB took
/// ~10% longer). Nice 4 (weight 423 against 1024) is the least that gives the writer a whole
/// core next to two readers; next to another program's busy thread a reader still gets ~40%.
const READER_NICENESS: i32 = 4;

/// Lowers the priority of the threads that read logs (rayon's pool) below the writer's (the
/// calling thread). Linux only; elsewhere, and when the system refuses, threads stay equal.
fn readers_yield_to_writer() {
    #[cfg(target_os = "linux")]
    rayon::broadcast(|_| {
        // On Linux a priority is per thread; raising one's own nice value is always allowed.
        let _ = rustix::process::setpriority_process(None, READER_NICENESS);
    });
}

/// CPU time of the calling thread so far, for `TOKENLEDGER_TIMING` (Linux only).
fn thread_cpu() -> String {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(|ns| format!("{:?}", std::time::Duration::from_nanos(ns)))
        .unwrap_or_default()
}

/// Resident and peak memory, for `TOKENLEDGER_TIMING` (Linux only).
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What planning decided for one found file that is not simply unchanged.
enum Planned {
    /// Its metadata could not be read.
    Unreadable(std::path::PathBuf),
    /// Something to read; `true` when the parser state of its cursor must be loaded.
    Read(Work, bool),
}

/// Decides what to read of one found file from its cursor: `None` when there is nothing to
/// read, else the work with its offset (the state is loaded by the caller, from the ledger).
fn plan(f: Found, cursor: Option<&Cursor>) -> Option<Planned> {
    let Some(stat) = f.stat else {
        return Some(Planned::Unreadable(f.file.path));
    };
    let mut w = Work {
        key: f.key,
        collector: f.collector,
        file: f.file,
        stat,
        offset: 0,
        state: String::new(),
        head: (0, 0),
        known: false,
        same_as: None,
    };
    let Some(cur) = cursor else {
        return Some(Planned::Read(w, false));
    };
    w.known = true;
    w.head = (cur.head_len, cur.head_hash);
    let same_identity = cur.dev == stat.dev && cur.inode == stat.inode;
    let unchanged = cur.matches(&stat);
    if w.file.whole {
        if always_offer(w.file.source, &w.file) {
            w.same_as = unchanged.then_some(cur.offset);
            return Some(Planned::Read(w, true));
        }
        return (!unchanged).then_some(Planned::Read(w, false));
    }
    if unchanged {
        return None;
    }
    if !same_identity || stat.size < cur.offset {
        return Some(Planned::Read(w, false));
    }
    if cur.head_len > 0 && head_hash(&w.file.path, cur.head_len) != Some(cur.head_hash) {
        // Rewritten in place: read again from the start; dedupe keys make what was read
        // before count once.
        return Some(Planned::Read(w, false));
    }
    w.offset = cur.offset;
    Some(Planned::Read(w, true))
}

/// The cursor key of a found file, from its path as stored (lossy only for a path that is not
/// UTF-8: checking with `to_str` first is the fast path, `to_string_lossy` checks byte by byte).
fn cursor_key_of(file: &FoundFile) -> i64 {
    match file.path.to_str() {
        Some(path) => crate::cursor_key(file.source.as_str(), path),
        None => crate::cursor_key(file.source.as_str(), &file.path.to_string_lossy()),
    }
}

/// The parser state of one file's cursor (read only for files that changed: most do not).
fn load_state(conn: &Connection, key: i64) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT state FROM cursor_files WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// Every cursor, ordered by key, with a table of where each range of keys starts: keys are
/// uniform hashes, so a lookup lands within a few entries of its cursor (a binary search over
/// tens of thousands of cursors missed the cache at every step, for every file of a warm run).
struct Cursors {
    sorted: Vec<(i64, Cursor)>,
    /// The same keys in the same order, each with the [`stat_print`] of its cursor: what the
    /// walk asks of every file, packed four to a cache line (the cursors take one each).
    prints: Vec<(i64, u64)>,
    /// `starts[b]..starts[b + 1]`: the cursors whose key's top `bits` bits are `b`.
    starts: Vec<u32>,
    bits: u32,
}

impl Cursors {
    fn new(sorted: Vec<(i64, Cursor)>) -> Cursors {
        debug_assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        // About four cursors per range; at least one range.
        let bits = (sorted.len() / 4).max(1).ilog2().clamp(1, 24);
        let ranges = 1usize << bits;
        let mut starts = Vec::with_capacity(ranges + 1);
        let mut i = 0;
        for b in 0..ranges {
            while i < sorted.len() && Self::range(sorted[i].0, bits) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(sorted.len() as u32);
        let prints = sorted
            .iter()
            .map(|(k, c)| (*k, stat_print(&c.stat())))
            .collect();
        Cursors {
            sorted,
            prints,
            starts,
            bits,
        }
    }

    /// Whether the file of `key` has a cursor that says it is unchanged at `stat` (the same
    /// answer as `get(key)` and [`Cursor::matches`], short of a 64-bit hash collision).
    fn unchanged(&self, key: i64, stat: &FileMeta) -> bool {
        let b = Self::range(key, self.bits);
        let near = &self.prints[self.starts[b] as usize..self.starts[b + 1] as usize];
        near.iter()
            .find(|(k, _)| *k == key)
            .is_some_and(|(_, print)| *print == stat_print(stat))
    }

    /// The range of `key`: its top bits, in an order that follows the signed keys' order.
    fn range(key: i64, bits: u32) -> usize {
        ((key as u64 ^ (1 << 63)) >> (64 - bits)) as usize
    }

    fn get(&self, key: i64) -> Option<&Cursor> {
        let b = Self::range(key, self.bits);
        let near = &self.sorted[self.starts[b] as usize..self.starts[b + 1] as usize];
        near.iter().find(|(k, _)| *k == key).map(|(_, c)| c)
    }
}

/// A 64-bit digest of what [`Cursor::matches`] compares.
fn stat_print(stat: &FileMeta) -> u64 {
    let mut bytes = [0u8; 32];
    for (chunk, v) in
        bytes
            .chunks_exact_mut(8)
            .zip([stat.dev, stat.inode, stat.size, stat.mtime_ns as u64])
    {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Every cursor, in key order.
fn load_cursors(conn: &Connection) -> Result<Cursors> {
    let mut out = Vec::new();
    CursorBuckets::each(conn, |c| out.push((c.key, c.cursor)))?;
    if !out.is_sorted_by(|a, b| a.0 < b.0) {
        // Only a damaged ledger gets here: its files are read again, and count once.
        out.sort_by_key(|c| c.0);
        out.dedup_by_key(|c| c.0);
    }
    Ok(Cursors::new(out))
}

/// A cursor as stored: its file's key, the cursor, and when the file was last read.
pub(crate) struct StoredCursor {
    pub key: i64,
    pub cursor: Cursor,
    pub last_scan: i64,
}

/// The cursors, packed into one row per range of keys (`cursor_buckets`): the top
/// [`CursorBuckets::BITS`] bits of a key (sign flipped, so that ranges follow key order) name
/// its range, and a range's row holds its cursors sorted by key, [`CursorBuckets::ENTRY`]
/// bytes each (key, packed cursor, last scan; little-endian).
pub(crate) struct CursorBuckets;

impl CursorBuckets {
    const BITS: u32 = 12;
    const ENTRY: usize = 8 + PACKED_LEN + 8;

    fn bucket(key: i64) -> i64 {
        Cursors::range(key, Self::BITS) as i64
    }

    fn encode(c: &StoredCursor, out: &mut Vec<u8>) {
        out.extend_from_slice(&c.key.to_le_bytes());
        out.extend_from_slice(&c.cursor.pack());
        out.extend_from_slice(&c.last_scan.to_le_bytes());
    }

    /// The cursors of one row (an entry that is not one is left out: its file is read again).
    fn decode(blob: &[u8]) -> impl Iterator<Item = StoredCursor> + '_ {
        blob.chunks_exact(Self::ENTRY).filter_map(|e| {
            let int = |r: std::ops::Range<usize>| {
                e.get(r)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_le_bytes)
            };
            Some(StoredCursor {
                key: int(0..8)?,
                cursor: Cursor::unpack(&e[8..8 + PACKED_LEN])?,
                last_scan: int(8 + PACKED_LEN..Self::ENTRY)?,
            })
        })
    }

    /// Calls `f` with every stored cursor, in key order.
    pub(crate) fn each(conn: &Connection, mut f: impl FnMut(StoredCursor)) -> Result<()> {
        let mut stmt = conn.prepare("SELECT cursors FROM cursor_buckets ORDER BY bucket")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let blob = r.get_ref(0)?.as_bytes().map_err(rusqlite::Error::from)?;
            Self::decode(blob).for_each(&mut f);
        }
        Ok(())
    }

    /// Stores `cursors` (new ones, or new states of stored ones, which they replace), in the
    /// caller's transaction: each range they fall in is read, merged and written once.
    pub(crate) fn write(tx: &Connection, mut cursors: Vec<StoredCursor>) -> Result<()> {
        // The last of one key wins (a stable sort keeps the order they came in).
        cursors.sort_by_key(|c| c.key);
        let mut read = tx.prepare_cached("SELECT cursors FROM cursor_buckets WHERE bucket = ?1")?;
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO cursor_buckets (bucket, cursors) VALUES (?1, ?2)",
        )?;
        let mut blob = Vec::new();
        let mut rest = &cursors[..];
        while let Some(first) = rest.first() {
            let bucket = Self::bucket(first.key);
            let n = rest.partition_point(|c| Self::bucket(c.key) == bucket);
            let (new, more) = rest.split_at(n);
            rest = more;
            let old: Option<Vec<u8>> = read.query_row([bucket], |r| r.get(0)).optional()?;
            let old: Vec<StoredCursor> = old.as_deref().map_or_else(Vec::new, |b| {
                Self::decode(b)
                    .filter(|c| Self::bucket(c.key) == bucket)
                    .collect()
            });
            blob.clear();
            let (mut i, mut j) = (0, 0);
            while i < old.len() || j < new.len() {
                // Merge by key; of equal keys the new one, and of repeated new keys the last.
                if j == new.len() || (i < old.len() && old[i].key < new[j].key) {
                    Self::encode(&old[i], &mut blob);
                    i += 1;
                    continue;
                }
                while j + 1 < new.len() && new[j + 1].key == new[j].key {
                    j += 1;
                }
                while i < old.len() && old[i].key <= new[j].key {
                    i += 1;
                }
                Self::encode(&new[j], &mut blob);
                j += 1;
            }
            put.execute(params![bucket, &blob[..]])?;
        }
        Ok(())
    }
}

type KeySet = HashSet<i64, KeyBuild>;

/// A file read by a worker: its new cursor. Its path and parser state are in its batch's
/// `text` (once the writer holds it, in the writer's `texts`, at the index kept beside it).
struct FileDone {
    key: i64,
    source: Source,
    path: Span,
    cursor: Cursor,
    state: Span,
    /// Whether the ledger had a cursor for the file.
    known: bool,
}

/// What a worker hands the writer for a few files, in a compact form: the workers intern
/// strings per batch so that the writer only maps small ids, and every string of a batch
/// (paths, parser states, sessions, projects, models) is copied into its one `text`. The
/// strings a worker made are freed by that worker: memory freed by another thread than the
/// one that took it makes glibc lock the other thread's arena, and with a few allocations per
/// file freed by the writer, the threads waited on each other ~7,000 times in a first scan
/// (all agents: 1.08 -> 1.00 s, CPU -0.1 s).
#[derive(Default)]
struct Batch {
    files: Vec<FileDone>,
    /// Events with `model` an index into `models` and `dim` a hash of (session, project).
    events: Vec<Pending>,
    /// The (session, project) pairs of `events` by hash.
    dims: Vec<(i64, Span, Span)>,
    models: Vec<Span>,
    skipped: Vec<Skipped>,
    text: String,
    bytes_read: u64,
}

/// A stretch of a batch's `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// Appends `s` to `text`.
    fn push(text: &mut String, s: &str) -> Span {
        let start = text.len();
        text.push_str(s);
        Span {
            start,
            end: text.len(),
        }
    }

    fn of(self, text: &str) -> &str {
        &text[self.start..self.end]
    }
}

/// Emptied batches that the writer gives back for the workers to fill again: their buffers
/// are taken once and reused rather than freed by the writer (see [`Batch`]). As many as are
/// in flight at once, each with buffers of at most a few batches' worth.
#[derive(Default)]
struct Shells(Mutex<Vec<Batch>>);

impl Shells {
    fn take(&self) -> Batch {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// Takes back an emptied batch (one whose buffers grew past a few batches' worth, for a
    /// file with very many events, is let go: memory stays bounded).
    fn give(&self, mut b: Batch) {
        debug_assert!(b.files.is_empty() && b.events.is_empty() && b.skipped.is_empty());
        if b.events.capacity() > 2 * BATCH_EVENTS || b.text.capacity() > REUSED_TEXT_MAX {
            return;
        }
        b.dims.clear();
        b.models.clear();
        b.text.clear();
        b.bytes_read = 0;
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(b);
    }
}

impl Batch {
    /// Its weight in the writer's queue (see [`QUEUE_WEIGHT`]).
    fn weight(&self) -> usize {
        self.events.len() + FILE_WEIGHT * self.files.len() + 2 * self.skipped.len()
    }

    fn add(&mut self, w: Work, mut scan: FileScan) {
        self.bytes_read += scan.bytes_read;
        if w.same_as == Some(scan.offset)
            && scan.state == w.state
            && scan.events.is_empty()
            && scan.skipped.is_empty()
        {
            // Its cursor already says all this: nothing to write.
            return;
        }
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
            let dim = dim_hash(&e.session, &e.project);
            if !self.dims.iter().rev().any(|d| d.0 == dim) {
                let session = Span::push(&mut self.text, &e.session);
                let project = Span::push(&mut self.text, &e.project);
                self.dims.push((dim, session, project));
            }
            let text = &self.text;
            let model = match self.models.iter().position(|m| m.of(text) == e.model) {
                Some(i) => i,
                None => {
                    self.models.push(Span::push(&mut self.text, &e.model));
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
        let path = Span::push(&mut self.text, &w.file.path.to_string_lossy());
        let state = Span::push(&mut self.text, &scan.state);
        self.files.push(FileDone {
            key: w.key,
            source: w.file.source,
            path,
            cursor: Cursor {
                dev: w.stat.dev,
                inode: w.stat.inode,
                size: w.stat.size,
                mtime_ns: w.stat.mtime_ns,
                offset: scan.offset,
                head_len,
                head_hash,
            },
            state,
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
/// sorted inserts touch each B-tree page once instead of at random.
const PENDING_LIMIT: usize = 50_000;

/// How many replay groups with an original a scan remembers (memory bound); past that, the
/// ledger is asked.
const ORIGINALS_LIMIT: usize = 1 << 20;

/// An aggregate row's key: half hour, source and model (as [`Names`] ids), dims row.
type AggKey = (i64, u32, u32, i64);
type Sums = [i64; 6];

/// Source and model names as small ids, both ways.
#[derive(Default)]
struct Names {
    list: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.list.len() as u32;
        self.list.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.list[id as usize]
    }
}

struct Writer {
    /// Interned `(session, project)` ids by a hash of the pair.
    dims: HashMap<i64, i64, KeyBuild>,
    /// Whether `dims` holds every pair of the ledger.
    dims_loaded: bool,
    names: Names,
    /// Events waiting for the next flush: `model` a [`Names`] id, `dim` a dims row id.
    pending: Vec<Pending>,
    /// Files waiting for the next flush, each with the index in `texts` of its batch's text.
    files: Vec<(u32, FileDone)>,
    /// The texts of the batches that `files` came from.
    texts: Vec<String>,
    /// Emptied texts, for the batches given back to the workers.
    spare_texts: Vec<String>,
    /// Cursors of written files, not yet in their ranges (see [`write_cursor_buckets`]).
    cursors: Vec<StoredCursor>,
    /// The ledger held no entries when the scan began: no replayed copy predates this scan.
    cold: bool,
    /// `agg_hour` is left alone until the transaction commits, then made from `agg` in one
    /// pass: the scan began with both empty. (Kept up to date row by row, a first scan
    /// touched each half hour's row once per flush.)
    hours_deferred: bool,
    /// Replay groups with a replayed copy written in this scan.
    replay_groups: KeySet,
    /// Replay groups with an original written in this scan (up to [`ORIGINALS_LIMIT`]).
    originals: KeySet,
    /// What the entries written since the last flush change in the aggregates.
    deltas: HashMap<AggKey, Sums>,
    now: i64,
    /// Time spent per phase (with `TOKENLEDGER_TIMING`): buffer, entries, cursors, aggregates.
    phases: [std::time::Duration; 4],
}

/// Writes what the readers send; the folder listings go in first (and are let go: a first
/// scan lists thousands of folders). Returns whether anything was written (nothing, and no
/// lock taken, when no batch had anything; the listings are then left to the caller).
fn write_all(
    conn: &mut Connection,
    mut rx: crate::queue::Receiver<'_, Batch>,
    shells: &Shells,
    report: &mut ScanReport,
    listings: &mut ListingChanges,
) -> Result<bool> {
    // Nothing is written (no write lock, no checkpoint) until a batch has something to write:
    // files offered for their own change check usually have not.
    let first = loop {
        match rx.next() {
            None => return Ok(false),
            Some(b) if b.files.is_empty() && b.events.is_empty() && b.skipped.is_empty() => {
                report.bytes_read += b.bytes_read;
            }
            Some(b) => break b,
        }
    };
    let journal = FirstScanJournal::enter(conn)?;
    let written = write_batches(conn, first, rx, shells, report, listings);
    match (written, journal.leave(conn)) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(w), Ok(())) => Ok(w),
    }
}

/// A first scan writes tens of megabytes into an empty ledger. Written through the write-ahead
/// log, all of it stays in the log until the next scan that writes, and every run until then
/// rebuilds the log's index when it opens the ledger (~11 ms of a 70 ms run over 1 GiB of
/// logs), or a checkpoint copies it all once more (~45 ms, two fsyncs). So a first scan runs
/// with a rollback journal instead: its pages are new, so there is next to nothing to journal,
/// they go straight into the database file, and one fsync at commit makes them durable. A crash
/// leaves a hot journal that the next open rolls back, as SQLite always does. The ledger is
/// back in WAL mode when the scan ends (or at the next open, after a crash).
struct FirstScanJournal {
    active: bool,
}

impl FirstScanJournal {
    /// Switches to a rollback journal when the ledger holds no scanned file yet and no other
    /// connection has it open (leaving WAL mode needs that; otherwise the scan stays in WAL).
    fn enter(conn: &mut Connection) -> Result<FirstScanJournal> {
        if !holds_no_scan(conn)? {
            return Ok(FirstScanJournal { active: false });
        }
        // Mapped pages of the file count as the process's memory: the scan reads what it
        // writes through the page cache instead, as it does from the write-ahead log.
        conn.pragma_update(None, "mmap_size", 0)?;
        // Never waits: with another connection open, the scan simply stays in WAL mode.
        let mode = unless_busy(conn, |conn| {
            conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0))
        })?;
        let j = FirstScanJournal {
            active: mode.is_some_and(|m| m.eq_ignore_ascii_case("delete")),
        };
        if !j.active {
            j.restore_mmap(conn)?;
        }
        Ok(j)
    }

    fn leave(self, conn: &mut Connection) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        // Another process that opened the ledger meanwhile may hold it: then the next open
        // (of any process: see `Ledger::open`) goes back to WAL, and this scan is done anyway.
        unless_busy(conn, |conn| {
            conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        })?;
        self.restore_mmap(conn)
    }

    fn restore_mmap(&self, conn: &Connection) -> Result<()> {
        conn.pragma_update(None, "mmap_size", crate::MMAP_SIZE)?;
        Ok(())
    }
}

/// What a scan's transaction must hold before it commits, after its last flush: the buffered
/// cursors in their ranges and the deferred hour totals.
fn before_commit(tx: &Transaction, w: &mut Writer) -> Result<()> {
    write_cursor_buckets(tx, w)?;
    hours_from_agg(tx, w)
}

/// [`write_all`] once a batch has something to write.
fn write_batches(
    conn: &mut Connection,
    first: Batch,
    mut rx: crate::queue::Receiver<'_, Batch>,
    shells: &Shells,
    report: &mut ScanReport,
    listings: &mut ListingChanges,
) -> Result<bool> {
    // What earlier writes left in the write-ahead log goes into the database file now, while
    // the readers parse (see `Ledger::open`); it skips what a reader still uses.
    checkpoint(conn)?;
    // Write transactions take the write lock when they begin, so that what this one reads (is
    // the ledger empty? which dims exist?) stays true until it commits, whatever another
    // tokenledger process does meanwhile.
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let cold = !tx.query_row("SELECT EXISTS (SELECT 1 FROM entries)", [], |r| {
        r.get::<_, bool>(0)
    })?;
    store_listings(&tx, listings)?;
    *listings = ListingChanges::default();
    let mut w = Writer {
        dims: HashMap::default(),
        dims_loaded: false,
        names: Names::default(),
        pending: Vec::new(),
        files: Vec::new(),
        texts: Vec::new(),
        spare_texts: Vec::new(),
        cursors: Vec::new(),
        cold,
        hours_deferred: cold,
        replay_groups: KeySet::default(),
        originals: KeySet::default(),
        deltas: HashMap::new(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        phases: Default::default(),
    };
    let timing = std::env::var_os("TOKENLEDGER_TIMING").is_some();
    let mut busy = std::time::Duration::ZERO;
    let mut events = 0usize;
    let mut last_commit = std::time::Instant::now();
    let mut next = Some(first);
    while let Some(mut batch) = next.take().or_else(|| rx.next()) {
        let t = std::time::Instant::now();
        report.files_read += batch.files.len() as u64;
        report.bytes_read += batch.bytes_read;
        report.skipped.append(&mut batch.skipped);
        events += batch.events.len();
        buffer(&tx, &mut w, &mut batch)?;
        shells.give(batch);
        w.phases[0] += t.elapsed();
        let full = w.pending.len() >= PENDING_LIMIT || w.files.len() >= FILES_PER_FLUSH;
        // Caught up with the readers: flush what is there now rather than wait for a full
        // flush's worth, so that less is left to write alone when the last file is read.
        let idle = || {
            (w.pending.len() >= IDLE_FLUSH_EVENTS || w.files.len() >= IDLE_FLUSH_FILES)
                && !rx.has_waiting()
        };
        if full || idle() {
            flush(&tx, &mut w, report)?;
            if last_commit.elapsed() >= COMMIT_EVERY {
                before_commit(&tx, &mut w)?;
                tx.commit()?;
                // A long scan keeps the log from growing with everything it writes.
                checkpoint(conn)?;
                tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                last_commit = std::time::Instant::now();
                // Another process may have written between the two transactions: what this
                // scan knew of the ledger's entries and dims is asked again.
                w.cold = false;
                w.dims.clear();
                w.dims_loaded = false;
            }
        }
        busy += t.elapsed();
    }
    let t = std::time::Instant::now();
    flush(&tx, &mut w, report)?;
    before_commit(&tx, &mut w)?;
    let t_flush = t.elapsed();
    tx.commit()?;
    if timing {
        eprintln!(
            "writer: {events} events, busy {busy:?} (thread cpu {}), last flush {t_flush:?}, \
             commit {:?}",
            thread_cpu(),
            t.elapsed() - t_flush
        );
        eprintln!(
            "writer phases (buffer, entries, cursors, aggregates): {:?}",
            w.phases
        );
    }
    Ok(true)
}

/// The stored folder listings (see [`DirCache`]).
fn load_listings(conn: &Connection) -> Result<StoredListings> {
    let mut stmt =
        conn.prepare("SELECT path, dev, inode, mtime_ns, ctime_ns, entries FROM dir_listings")?;
    let mut rows = stmt.query([])?;
    let mut out = StoredListings::default();
    while let Some(r) = rows.next()? {
        let int = |i: usize| -> rusqlite::Result<i64> {
            r.get_ref(i)?.as_i64().map_err(rusqlite::Error::from)
        };
        let bytes = |i: usize| -> rusqlite::Result<&[u8]> {
            r.get_ref(i)?.as_bytes().map_err(rusqlite::Error::from)
        };
        let stamp = DirStamp {
            dev: int(1)? as u64,
            inode: int(2)? as u64,
            mtime_ns: int(3)?,
            ctime_ns: int(4)?,
        };
        out.push(bytes(0)?, stamp, bytes(5)?);
    }
    Ok(out)
}

/// Forgets the listings of folders that are gone (and of every folder below them) and
/// remembers the new ones, in the caller's transaction.
fn store_listings(tx: &Connection, changes: &ListingChanges) -> rusqlite::Result<()> {
    let mut forget = tx
        .prepare_cached("DELETE FROM dir_listings WHERE path = ?1 OR (path >= ?2 AND path < ?3)")?;
    for path in &changes.gone {
        // Below `path`: the paths that start with `path/`, which sort before `path0`.
        let mut below = path.clone();
        below.push(b'/');
        let mut after = path.clone();
        after.push(b'/' + 1);
        forget.execute(params![path, below, after])?;
    }
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO dir_listings (path, dev, inode, mtime_ns, ctime_ns, entries)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for l in &changes.put {
        put.execute(params![
            l.path,
            l.stamp.dev as i64,
            l.stamp.inode as i64,
            l.stamp.mtime_ns,
            l.stamp.ctime_ns,
            l.entries
        ])?;
    }
    Ok(())
}

/// [`store_listings`] in a transaction of its own, for a scan that wrote nothing else: left
/// for a later scan when another process holds the write lock (a scan with nothing new never
/// waits for one).
fn store_listings_unless_busy(conn: &mut Connection, changes: &ListingChanges) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    unless_busy(conn, |conn| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        store_listings(&tx, changes)?;
        tx.commit()
    })?;
    Ok(())
}

/// Runs `f` without waiting for another connection's lock: `None` when the ledger was busy.
fn unless_busy<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> Result<Option<T>> {
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let done = f(conn);
    conn.busy_timeout(crate::BUSY_TIMEOUT)?;
    match done {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            Ok(None)
        }
        other => Ok(Some(other?)),
    }
}

/// Whether the ledger holds no scanned file and no entry yet: what a first scan starts from.
pub(crate) fn holds_no_scan(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM cursor_files) AND NOT EXISTS (SELECT 1 FROM entries)",
        [],
        |r| r.get(0),
    )
}

/// Copies the committed write-ahead log into the database file as far as readers allow
/// (`PASSIVE`: never waits for them).
fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(())
}

/// The identity of a (session, project) pair, as the writer looks its dims row up.
fn dim_hash(session: &str, project: &str) -> i64 {
    tokenledger_collect::stable_hash(&[session.as_bytes(), project.as_bytes()]) as i64
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
            w.dims.insert(dim_hash(s, p), r.get(0)?);
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
/// The batch is left empty for the workers to reuse (its text, when it has files, kept until
/// they are written and replaced by a spare one).
fn buffer(tx: &Transaction, w: &mut Writer, batch: &mut Batch) -> Result<()> {
    let text = &batch.text;
    for (hash, session, project) in &batch.dims {
        dim_id(tx, w, *hash, session.of(text), project.of(text))?;
    }
    let models: Vec<u32> = batch
        .models
        .iter()
        .map(|m| w.names.id(m.of(text)))
        .collect();
    for mut p in batch.events.drain(..) {
        p.model = models[p.model as usize];
        p.dim = w.dims[&p.dim];
        w.pending.push(p);
    }
    if !batch.files.is_empty() {
        let at = w.texts.len() as u32;
        w.files.extend(batch.files.drain(..).map(|f| (at, f)));
        let spare = w.spare_texts.pop().unwrap_or_default();
        w.texts.push(std::mem::replace(&mut batch.text, spare));
    }
    Ok(())
}

/// Writes the buffered events (largest total per key), the cursors of their files, and what
/// they change in the aggregates, in the caller's transaction.
///
/// The aggregates are kept as the sum of the counted entries: every entry, except a replayed
/// copy (`replay`) whose group has an original (a non-replay entry of the same group). An entry
/// added or raised changes its own row; an original that is the first of its group also takes
/// its group's replayed copies out.
fn flush(tx: &Transaction, w: &mut Writer, report: &mut ScanReport) -> Result<()> {
    let mut pending = std::mem::take(&mut w.pending);
    // Sort by key, largest total first within a key; keep the first of each key.
    pending.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.tokens[5].cmp(&a.tokens[5])));
    pending.dedup_by_key(|p| p.key);
    let t0 = std::time::Instant::now();
    // A plain insert, then a raise only where the key was there already: an upsert statement
    // (`ON CONFLICT DO UPDATE`) makes SQLite keep a statement journal, copying every page it
    // touches.
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO entries (id, source, model, ts, hour_start, dim, input,
                                        cached, cache_creation, output, reasoning, total,
                                        grp, replay)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for p in &pending {
        let t = p.tokens.map(|v| v as i64);
        let hour = tokenledger_core::floor_half_hour(p.ts);
        // Bound one by one with their types (no `ToSql` per value): this runs once per event.
        insert.raw_bind_parameter(1, p.key)?;
        insert.raw_bind_parameter(2, p.source.as_str())?;
        insert.raw_bind_parameter(3, w.names.name(p.model))?;
        insert.raw_bind_parameter(4, p.ts)?;
        insert.raw_bind_parameter(5, hour)?;
        insert.raw_bind_parameter(6, p.dim)?;
        for (i, v) in t.iter().enumerate() {
            insert.raw_bind_parameter(7 + i, *v)?;
        }
        insert.raw_bind_parameter(13, p.grp)?;
        insert.raw_bind_parameter(14, p.replay as i64)?;
        let inserted = insert.raw_execute()? > 0;
        if inserted {
            report.entries_written += 1;
            let key = (hour, w.names.id(p.source.as_str()), p.model, p.dim);
            match (p.replay, p.grp) {
                (true, Some(g)) => {
                    w.replay_groups.insert(g);
                    if !has_original(tx, w, g)? {
                        add(&mut w.deltas, key, &t, 1);
                    }
                }
                (false, Some(g)) => {
                    add(&mut w.deltas, key, &t, 1);
                    first_original(tx, w, g, p.key)?;
                }
                (_, None) => add(&mut w.deltas, key, &t, 1),
            }
        } else if raise(tx, w, p.key, p.model, &t)? {
            report.entries_written += 1;
        }
    }
    w.phases[1] += t0.elapsed();
    let t0 = std::time::Instant::now();
    write_cursors(tx, w)?;
    w.phases[2] += t0.elapsed();
    let t0 = std::time::Instant::now();
    apply_deltas(tx, w)?;
    w.phases[3] += t0.elapsed();
    Ok(())
}

fn add(deltas: &mut HashMap<AggKey, Sums>, key: AggKey, t: &Sums, sign: i64) {
    let d = deltas.entry(key).or_insert([0; 6]);
    for (a, v) in d.iter_mut().zip(t) {
        *a = a.wrapping_add(sign.wrapping_mul(*v));
    }
}

/// Whether replay group `g` has an original in the ledger.
fn has_original(tx: &Transaction, w: &Writer, g: i64) -> Result<bool> {
    if w.originals.contains(&g) {
        return Ok(true);
    }
    if w.cold && w.originals.len() < ORIGINALS_LIMIT {
        // Every original of this scan is in the set, and none predates it.
        return Ok(false);
    }
    Ok(tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM entries WHERE grp = ?1 AND replay = 0)")?
        .query_row([g], |r| r.get(0))?)
}

/// Entry `id`, an original of group `g`, was just added: if it is the group's first original,
/// the group's replayed copies stop counting.
fn first_original(tx: &Transaction, w: &mut Writer, g: i64, id: i64) -> Result<()> {
    if w.originals.len() < ORIGINALS_LIMIT {
        w.originals.insert(g);
    }
    if w.cold && !w.replay_groups.contains(&g) {
        // No copy of this group exists: none predates the scan, none was written in it.
        return Ok(());
    }
    let other: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM entries WHERE grp = ?1 AND replay = 0 AND id <> ?2)",
        )?
        .query_row([g, id], |r| r.get(0))?;
    if other {
        return Ok(());
    }
    let mut copies = tx.prepare_cached(
        "SELECT hour_start, source, model, dim, input, cached, cache_creation, output,
                reasoning, total FROM entries WHERE grp = ?1 AND replay = 1",
    )?;
    let mut rows = copies.query([g])?;
    while let Some(r) = rows.next()? {
        add(
            &mut w.deltas,
            row_key(&mut w.names, r)?,
            &row_sums(r, 4)?,
            -1,
        );
    }
    Ok(())
}

/// Raises entry `id` to `t` (and `model`) when `t` has the larger total; returns whether it did.
fn raise(tx: &Transaction, w: &mut Writer, id: i64, model: u32, t: &Sums) -> Result<bool> {
    let old = tx
        .prepare_cached(
            "SELECT hour_start, source, model, dim, input, cached, cache_creation, output,
                    reasoning, total, grp, replay FROM entries WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                row_key(&mut w.names, r)?,
                row_sums(r, 4)?,
                r.get::<_, Option<i64>>(10)?,
                r.get::<_, bool>(11)?,
            ))
        })
        .optional()?;
    let Some((old_key, old_sums, grp, replay)) = old else {
        return Ok(false);
    };
    if t[5] <= old_sums[5] {
        return Ok(false);
    }
    tx.prepare_cached(
        "UPDATE entries SET model = ?2, input = ?3, cached = ?4, cache_creation = ?5,
                            output = ?6, reasoning = ?7, total = ?8
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        w.names.name(model),
        t[0],
        t[1],
        t[2],
        t[3],
        t[4],
        t[5]
    ])?;
    let counted = match (replay, grp) {
        (true, Some(g)) => !has_original(tx, w, g)?,
        _ => true,
    };
    if counted {
        add(&mut w.deltas, old_key, &old_sums, -1);
        add(
            &mut w.deltas,
            (old_key.0, old_key.1, model, old_key.3),
            t,
            1,
        );
    }
    Ok(true)
}

/// The aggregate key of an entry row read as `hour_start, source, model, dim, ...`.
fn row_key(names: &mut Names, r: &rusqlite::Row<'_>) -> rusqlite::Result<AggKey> {
    let text = |i: usize| -> rusqlite::Result<&str> {
        r.get_ref(i)?.as_str().map_err(rusqlite::Error::from)
    };
    Ok((r.get(0)?, names.id(text(1)?), names.id(text(2)?), r.get(3)?))
}

fn row_sums(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Sums> {
    let mut s = [0i64; 6];
    for (i, v) in s.iter_mut().enumerate() {
        *v = r.get(first + i)?;
    }
    Ok(s)
}

/// Adds the buffered deltas to `agg` and `agg_hour`.
fn apply_deltas(tx: &Transaction, w: &mut Writer) -> Result<()> {
    let deltas = std::mem::take(&mut w.deltas);
    add_to_aggregates(tx, &w.names, deltas, w.cold, !w.hours_deferred)
}

/// Makes `agg_hour` from `agg` when the scan deferred it (see [`Writer::hours_deferred`]);
/// later writes in the scan keep it up to date row by row.
fn hours_from_agg(tx: &Transaction, w: &mut Writer) -> Result<()> {
    if !w.hours_deferred {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    tx.execute_batch(
        "DELETE FROM agg_hour;
         INSERT INTO agg_hour (hour_start, source, model, input, cached, cache_creation, output,
                               reasoning, total)
            SELECT hour_start, source, model, SUM(input), SUM(cached), SUM(cache_creation),
                   SUM(output), SUM(reasoning), SUM(total)
            FROM agg GROUP BY hour_start, source, model;",
    )?;
    w.hours_deferred = false;
    w.phases[3] += t0.elapsed();
    Ok(())
}

/// Adds `sums` to `agg` and (with `hours`) their totals per (hour, source, model) to
/// `agg_hour`, in key order; rows that drop to zero go. `insert_first` when most rows are new.
fn add_to_aggregates(
    tx: &Transaction,
    names: &Names,
    sums: HashMap<AggKey, Sums>,
    insert_first: bool,
    hours: bool,
) -> Result<()> {
    let mut rows: Vec<(AggKey, Sums)> = sums
        .into_iter()
        .filter(|(_, d)| d.iter().any(|v| *v != 0))
        .collect();
    // Primary-key order (text compares as bytes, as SQLite's BINARY collation).
    let text = |k: &AggKey| (k.0, names.name(k.1), names.name(k.2), k.3);
    rows.sort_unstable_by(|(a, _), (b, _)| text(a).cmp(&text(b)));
    let mut agg = AggWriter::new(
        tx,
        "agg",
        "hour_start = ?1 AND source = ?2 AND model = ?3 AND dim = ?10",
        insert_first,
    )?;
    let mut hour = AggWriter::new(
        tx,
        "agg_hour",
        "hour_start = ?1 AND source = ?2 AND model = ?3",
        insert_first,
    )?;
    let mut i = 0;
    while i < rows.len() {
        // Rows of one (hour, source, model) are adjacent: their sum is one agg_hour delta.
        let (h, s, m, _) = rows[i].0;
        let (source, model) = (names.name(s), names.name(m));
        let mut sum = [0i64; 6];
        while i < rows.len() && (rows[i].0 .0, rows[i].0 .1, rows[i].0 .2) == (h, s, m) {
            let ((_, _, _, dim), d) = &rows[i];
            agg.apply(h, source, model, Some(*dim), d)?;
            for (a, v) in sum.iter_mut().zip(d) {
                *a = a.wrapping_add(*v);
            }
            i += 1;
        }
        if hours {
            hour.apply(h, source, model, None, &sum)?;
        }
    }
    Ok(())
}

/// Adds deltas to one aggregate table (`agg`, keyed with `dim`, or `agg_hour`).
struct AggWriter<'t> {
    update: rusqlite::CachedStatement<'t>,
    insert: rusqlite::CachedStatement<'t>,
    drop_zero: rusqlite::CachedStatement<'t>,
    /// The table was empty when the scan began: most rows are new, try the insert first.
    insert_first: bool,
}

impl<'t> AggWriter<'t> {
    fn new(tx: &'t Transaction, table: &str, key: &str, insert_first: bool) -> Result<Self> {
        let (cols, vals) = if table == "agg" {
            ("hour_start, source, model, dim, ", "?1, ?2, ?3, ?10, ")
        } else {
            ("hour_start, source, model, ", "?1, ?2, ?3, ")
        };
        Ok(AggWriter {
            update: tx.prepare_cached(&format!(
                "UPDATE {table} SET input = input + ?4, cached = cached + ?5,
                        cache_creation = cache_creation + ?6, output = output + ?7,
                        reasoning = reasoning + ?8, total = total + ?9
                 WHERE {key}"
            ))?,
            insert: tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {table} ({cols} input, cached, cache_creation, output,
                                                reasoning, total)
                 VALUES ({vals} ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?,
            drop_zero: tx.prepare_cached(&format!(
                "DELETE FROM {table} WHERE {key} AND input = 0 AND cached = 0
                        AND cache_creation = 0 AND output = 0 AND reasoning = 0 AND total = 0"
            ))?,
            insert_first,
        })
    }

    fn apply(&mut self, h: i64, s: &str, m: &str, dim: Option<i64>, d: &Sums) -> Result<()> {
        // ?1-?3 the key, ?4-?9 the sums, ?10 the dim; a statement binds those it has.
        let bind = |st: &mut rusqlite::CachedStatement<'_>| -> rusqlite::Result<usize> {
            let n = st.parameter_count();
            st.raw_bind_parameter(1, h)?;
            st.raw_bind_parameter(2, s)?;
            st.raw_bind_parameter(3, m)?;
            for (i, v) in d.iter().enumerate().take(n.saturating_sub(3)) {
                st.raw_bind_parameter(4 + i, *v)?;
            }
            if let (Some(dim), true) = (dim, n >= 10) {
                st.raw_bind_parameter(10, dim)?;
            }
            st.raw_execute()
        };
        let done = self.insert_first && bind(&mut self.insert)? > 0;
        if !done && bind(&mut self.update)? == 0 {
            bind(&mut self.insert)?;
        }
        if d.iter().any(|v| *v < 0) {
            bind(&mut self.drop_zero)?;
        }
        Ok(())
    }
}

/// Writes the paths and parser states of the buffered files, and buffers their cursors for
/// [`write_cursor_buckets`] (which runs before every commit).
fn write_cursors(tx: &Transaction, w: &mut Writer) -> Result<()> {
    // A new file's path and state (a replaced row: nothing else deletes one).
    let mut name = tx.prepare_cached(
        "INSERT OR REPLACE INTO cursor_files (key, source, path, state) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut set_state =
        tx.prepare_cached("UPDATE cursor_files SET state = ?2 WHERE key = ?1 AND state <> ?2")?;
    // A known file whose row is gone since the scan began (nothing deletes one, but a row
    // must never be missing): written again unless it is there.
    let mut name_again = tx.prepare_cached(
        "INSERT OR IGNORE INTO cursor_files (key, source, path, state) VALUES (?1, ?2, ?3, ?4)",
    )?;
    w.files.sort_unstable_by_key(|(_, f)| f.key);
    for (at, f) in w.files.drain(..) {
        let text = &w.texts[at as usize];
        let (path, state) = (f.path.of(text), f.state.of(text));
        let values = params![f.key, f.source.as_str(), path, state];
        if !f.known {
            name.execute(values)?;
        } else if set_state.execute(params![f.key, state])? == 0 {
            name_again.execute(values)?;
        }
        w.cursors.push(StoredCursor {
            key: f.key,
            cursor: f.cursor,
            last_scan: w.now,
        });
    }
    for mut t in w.texts.drain(..) {
        if t.capacity() <= REUSED_TEXT_MAX && w.spare_texts.len() < SPARE_TEXTS {
            t.clear();
            w.spare_texts.push(t);
        }
    }
    if w.cursors.len() >= CURSORS_BUFFERED {
        write_cursor_buckets(tx, w)?;
    }
    Ok(())
}

/// Emptied batch texts the writer keeps for the batches it gives back (more than the batches
/// in flight at once is no use).
const SPARE_TEXTS: usize = 256;

/// The largest batch text kept for reuse, in bytes of capacity (a larger one, grown for a file
/// with very long paths or parser states, is let go: memory stays bounded).
const REUSED_TEXT_MAX: usize = 1 << 20;

/// Cursors buffered before their ranges are written (memory bound: ~80 bytes each). A first
/// scan of ~47,000 files writes each range once, at its commit.
const CURSORS_BUFFERED: usize = 1 << 16;

/// Writes the buffered cursors into their ranges (see [`CursorBuckets`]).
fn write_cursor_buckets(tx: &Transaction, w: &mut Writer) -> Result<()> {
    let t0 = std::time::Instant::now();
    CursorBuckets::write(tx, std::mem::take(&mut w.cursors))?;
    w.phases[2] += t0.elapsed();
    Ok(())
}

/// Recomputes every aggregate from the entries in one pass, in memory, by the rule the deltas
/// of [`flush`] keep: a replayed copy is left out when its group has an original. Used by
/// schema migrations and to check the deltas ([`crate::Ledger::aggregates_consistent`]).
/// Memory is bounded by the number of aggregate rows and replay groups, not of entries.
pub(crate) fn rebuild_aggregates(tx: &Transaction) -> Result<()> {
    let mut originals = KeySet::default();
    {
        let mut st =
            tx.prepare("SELECT grp FROM entries NOT INDEXED WHERE replay = 0 AND grp IS NOT NULL")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            originals.insert(r.get(0)?);
        }
    }
    let mut names = Names::default();
    let mut sums: HashMap<AggKey, Sums> = HashMap::new();
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
            // The same arithmetic as the deltas, so that both give the same sums.
            add(&mut sums, row_key(&mut names, r)?, &row_sums(r, 4)?, 1);
        }
    }
    tx.execute_batch("DELETE FROM agg; DELETE FROM agg_hour;")?;
    add_to_aggregates(tx, &names, sums, true, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cursor(n: i64) -> Cursor {
        Cursor {
            dev: 1,
            inode: n as u64,
            size: 2,
            mtime_ns: 3,
            offset: 4,
            head_len: 5,
            head_hash: 6,
        }
    }

    proptest! {
        /// Every stored key is found with its own cursor, and no other key is, whatever the
        /// keys' spread (both signs, the extremes, clusters) and count.
        #[test]
        fn cursor_lookup_finds_exactly_the_stored_keys(
            mut keys in prop::collection::vec(
                prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), Just(0i64), -50i64..50],
                0..600,
            ),
            probes in prop::collection::vec(any::<i64>(), 0..200),
        ) {
            keys.sort_unstable();
            keys.dedup();
            let index = Cursors::new(keys.iter().map(|k| (*k, cursor(*k))).collect());
            for k in &keys {
                prop_assert_eq!(index.get(*k).map(|c| c.inode), Some(*k as u64));
            }
            for p in probes.iter().chain([i64::MIN, i64::MAX, 0, -1].iter()) {
                let expected = keys.binary_search(p).is_ok();
                prop_assert_eq!(index.get(*p).is_some(), expected);
            }
        }

        /// Cursors written in rounds (new keys, and new states of keys written before, some
        /// repeated within a round) read back as exactly the last state of every key, in key
        /// order, whatever ranges the keys fall in.
        #[test]
        fn cursor_ranges_keep_the_last_state_of_every_key(
            rounds in prop::collection::vec(
                prop::collection::vec(
                    (prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -40i64..40],
                     any::<u64>()),
                    0..150,
                ),
                1..5,
            ),
        ) {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(
                "CREATE TABLE cursor_buckets (bucket INTEGER PRIMARY KEY, cursors BLOB NOT NULL);",
            )
            .unwrap();
            let mut expected = BTreeMap::new();
            for (n, round) in rounds.iter().enumerate() {
                let cursors = round
                    .iter()
                    .map(|&(key, size)| {
                        let mut c = cursor(key);
                        c.size = size;
                        StoredCursor { key, cursor: c, last_scan: n as i64 }
                    })
                    .collect();
                for &(key, size) in round {
                    expected.insert(key, (size, n as i64));
                }
                CursorBuckets::write(&conn, cursors).unwrap();
            }
            let mut got = Vec::new();
            CursorBuckets::each(&conn, |c| {
                got.push((c.key, (c.cursor.size, c.last_scan), c.cursor.inode));
            })
            .unwrap();
            let expected: Vec<_> =
                expected.into_iter().map(|(k, v)| (k, v, k as u64)).collect();
            prop_assert_eq!(got, expected);
        }

        /// The walk's question (is this file unchanged at this stat?) gets the answer of the
        /// full cursor for stored keys with their own stat, with any one figure changed, and
        /// for keys not stored.
        #[test]
        fn unchanged_agrees_with_the_cursor(
            mut keys in prop::collection::vec(any::<i64>(), 1..300),
            which in 0usize..4,
            delta in 1u64..u64::MAX,
            probes in prop::collection::vec(any::<i64>(), 0..50),
        ) {
            keys.sort_unstable();
            keys.dedup();
            let index = Cursors::new(keys.iter().map(|k| (*k, cursor(*k))).collect());
            for k in &keys {
                let c = index.get(*k).unwrap();
                let mut stat = c.stat();
                prop_assert!(index.unchanged(*k, &stat));
                match which {
                    0 => stat.dev = stat.dev.wrapping_add(delta),
                    1 => stat.inode = stat.inode.wrapping_add(delta),
                    2 => stat.size = stat.size.wrapping_add(delta),
                    _ => stat.mtime_ns = stat.mtime_ns.wrapping_add(delta as i64),
                }
                prop_assert_eq!(index.unchanged(*k, &stat), c.matches(&stat));
            }
            let stat = FileMeta { dev: 1, inode: 0, size: 2, mtime_ns: 3 };
            for p in &probes {
                if keys.binary_search(p).is_err() {
                    prop_assert!(!index.unchanged(*p, &stat));
                }
            }
        }

        /// A packed cursor unpacks to itself (every figure, both signs of the mtime); bytes of
        /// any other length are no cursor.
        #[test]
        fn packed_cursors_round_trip(
            f in prop::array::uniform7(any::<u64>()),
            junk in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let c = Cursor {
                dev: f[0],
                inode: f[1],
                size: f[2],
                mtime_ns: f[3] as i64,
                offset: f[4],
                head_len: f[5],
                head_hash: f[6],
            };
            let back = Cursor::unpack(&c.pack()).unwrap();
            prop_assert_eq!(
                [back.dev, back.inode, back.size, back.mtime_ns as u64, back.offset,
                 back.head_len, back.head_hash],
                f
            );
            prop_assert_eq!(Cursor::unpack(&junk).is_some(), junk.len() == PACKED_LEN);
        }
    }
}
