//! Collectors: one module per agent. Each discovers its agent's files, parses them tolerantly
//! (bad lines are skipped and counted, never a panic) and turns them into [`UsageEvent`]s.
//!
//! A collector is pure: it reads files and returns events plus an opaque cursor state. The local
//! ledger (crate `tokenledger-ledger`) owns persistence: it stores the cursor of each file, calls
//! [`Collector::scan`] from the stored offset and state, and merges events by
//! [`UsageEvent::dedupe_key`] (keeping the largest `total_tokens`), so that the same usage read
//! twice, from two files or in two runs, counts once.

pub mod env;
pub mod lines;
pub mod listing;
mod walk;

pub mod claude;
pub mod codex;
pub mod gemini;
pub mod opencode;
mod pick;
pub mod qwen;

pub use env::Env;
pub use listing::{DirCache, DirListing, DirStamp, ListingChanges, StoredListings};

use std::path::PathBuf;
use tokenledger_core::{Source, TokenCounts};

/// One usage record: the tokens of one API response (or one delta of a cumulative counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub source: Source,
    /// When the usage happened, unix seconds (UTC).
    pub ts: i64,
    /// Normalised model name (`tokenledger_core::normalize_model`).
    pub model: String,
    /// Session (thread) id; private, never leaves the machine.
    pub session: String,
    /// Project (cwd or project folder); private, never leaves the machine. May be empty.
    pub project: String,
    pub tokens: TokenCounts,
    /// Content-derived identity of this usage, stable across files and runs (a hash of e.g.
    /// `claude:<message.id>:<requestId>`). Events with equal keys are the same usage: the ledger
    /// keeps the one with the largest `total_tokens`.
    pub dedupe_key: u64,
    /// Optional replay group (Claude: hash of `message.id`). An event with `replay == true` is
    /// dropped when a non-replay event of the same group exists under another key.
    pub group: Option<u64>,
    /// Whether this event may be a replayed copy (Claude `isSidechain: true`).
    pub replay: bool,
}

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    InvalidJson,
    InvalidUtf8,
    /// A last line without a newline; left unread until it is complete.
    TornLastLine,
    /// A line longer than the reader accepts.
    TooLong,
    /// The file could not be opened or read (permissions, a directory, ...).
    Unreadable,
    /// A usage-looking line whose fields have the wrong types.
    BadFields,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::InvalidJson => "invalid JSON",
            SkipReason::InvalidUtf8 => "invalid UTF-8",
            SkipReason::TornLastLine => "incomplete last line",
            SkipReason::TooLong => "line too long",
            SkipReason::Unreadable => "unreadable file",
            SkipReason::BadFields => "unexpected field types",
        }
    }
}

/// One skipped line (for `--verbose`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    /// 1-based line number within the part of the file read in this scan (0 for the whole file).
    pub line: u64,
    pub reason: SkipReason,
}

impl Skipped {
    /// A whole file skipped (unreadable, too large, ...): line 0.
    pub fn file(path: &std::path::Path, reason: SkipReason) -> Skipped {
        Skipped {
            path: path.to_path_buf(),
            line: 0,
            reason,
        }
    }
}

/// A file a collector wants read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    pub source: Source,
    pub path: PathBuf,
    /// Whether the file is only readable from the start (zstd, whole-document JSON, SQLite):
    /// it is re-read whole when it changes, and dedupe keys absorb what was read before.
    pub whole: bool,
}

/// What the ledger compares to notice that a file changed: identity, size, modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileMeta {
    pub fn of(md: &std::fs::Metadata) -> FileMeta {
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
        FileMeta {
            dev,
            inode,
            size: md.len(),
            mtime_ns,
        }
    }

    /// The metadata of `path` (symlinks followed).
    pub fn read(path: &std::path::Path) -> std::io::Result<FileMeta> {
        std::fs::metadata(path).map(|m| FileMeta::of(&m))
    }
}

/// The result of scanning one file from an offset.
#[derive(Debug, Clone, Default)]
pub struct FileScan {
    pub events: Vec<UsageEvent>,
    /// Offset just past the last complete line consumed (for `whole` files: the file size).
    pub offset: u64,
    /// Parser state to pass to the next scan of this file (opaque JSON, may be empty).
    pub state: String,
    pub skipped: Vec<Skipped>,
    /// Bytes read in this scan.
    pub bytes_read: u64,
    /// When the file was read from its start: the length and `lines::head_hash` of its first
    /// bytes, so that a later scan can tell a file rewritten in place from one appended to.
    pub head: Option<(u64, u64)>,
}

/// An agent's collector.
pub trait Collector: Send + Sync {
    fn source(&self) -> Source;
    /// Finds this agent's files under the roots the environment names.
    fn discover(&self, env: &Env) -> Vec<FoundFile>;
    /// [`Collector::discover`], with the metadata of each file where the walk got it for free
    /// (`None`: the caller reads it). Walks may reuse the stored listings of unchanged folders
    /// in `listings`, and record there what they listed.
    fn discover_with_meta(
        &self,
        env: &Env,
        _listings: &DirCache,
    ) -> Vec<(FoundFile, Option<FileMeta>)> {
        self.discover(env).into_iter().map(|f| (f, None)).collect()
    }
    /// Reads `file` from `offset` (0 for a new, rewritten or truncated file), continuing from
    /// `state` (what the previous scan returned, or empty). Never panics on any input; a file
    /// that cannot be read yields a `Skipped` with [`SkipReason::Unreadable`].
    fn scan(&self, file: &FoundFile, offset: u64, state: &str) -> FileScan;
}

/// The collectors built into this version.
pub fn all_collectors() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(codex::CodexCollector),
        Box::new(codex::EveryCodeCollector),
        Box::new(claude::ClaudeCollector),
        Box::new(gemini::GeminiCollector),
        Box::new(opencode::OpenCodeCollector),
        Box::new(qwen::QwenCollector),
    ]
}

/// A stable 64-bit hash for dedupe keys (xxh3; the same on every machine and version).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.digest()
}

/// A hasher for map keys that are hashes already (cursor keys, dims, replay groups, path
/// hashes): the key is its own hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_i64(&mut self, n: i64) {
        self.0 = n as u64;
    }
}

/// Builds [`KeyHasher`]s.
pub type KeyBuild = std::hash::BuildHasherDefault<KeyHasher>;
