//! Codex CLI and Every Code rollouts (`sessions/**/rollout-*.jsonl[.zst]`, `archived_sessions/`).
//!
//! Both agents write the same envelope, `{"timestamp","type","payload"}`, one line per item.
//! Usage comes from `token_count` events (`event_msg`, or Every Code's `event` with
//! `payload.msg`), whose `info.total_token_usage` is a running total per thread: each usage
//! event is the delta of that total against the previous one in the same file.
//!
//! The traps of agent-log-formats.md sections 1 and 2, and how this module handles them:
//! - Re-emitted `token_count` lines with unchanged totals give a zero delta and no event;
//!   `last_token_usage` is used only when a line has no totals; `info: null` lines (rate-limit
//!   snapshots) carry no usage.
//! - Totals that go down (any field) are a reset: the baseline restarts at zero, so the first
//!   total after the reset counts in full as new usage (what the origin tools do).
//! - A fork or spawned subagent (first `session_meta` with `forked_from_id`, `parent_thread_id`
//!   or `source.subagent.thread_spawn`) replays its parent's `token_count` history at its start.
//!   Every `token_count` no later than one second after the child's start (or after the previous
//!   replayed line) belongs to that burst: it only moves the baseline, so the last replayed total
//!   is subtracted from the child's first real total. Copies keep their original timestamps in
//!   some versions; those are earlier than the child's start and fall in the burst too.
//! - Only the first `session_meta` describes the file; the copied ancestor ones that follow are
//!   ignored. The rollout id is the filename UUID, else the first `session_meta.payload.id`.
//! - The same rollout in `sessions/` and `archived_sessions/`, or as `.jsonl` and `.jsonl.zst`:
//!   dedupe keys are content-derived (source, rollout id, line timestamp, cumulative totals after
//!   the line), so copies produce equal keys and the ledger keeps one.
//! - `token_usage_record` lines describe the same responses as `token_count`: records count
//!   only while the file has shown no `token_count` with usage (records buffered in a scan are
//!   dropped when one appears later in that scan), keyed by `(thread_id, response_id)`.
//!   `compacted.payload.latest_token_usage_record` is a copy and is never read.
//!   Known limit: if an earlier incremental scan already emitted records and a `token_count`
//!   first appears later, that `token_count` only sets the baseline (nothing counts twice),
//!   but a full rescan of the file would key the same usage by its `token_count` lines instead.
//! - Every Code (`originator` `code_*`) and Codex (any other originator) may share one folder:
//!   each collector emits nothing for the other's rollouts. Without an originator, Every Code's
//!   `event` lines mark its files and anything else is Codex's.
//!
//! Parsing is two-staged for speed: the envelope prefix `{"timestamp":"…","type":"…"` is read
//! by hand and only `session_meta`, `turn_context`, `token_usage_record` and `token_count`
//! lines are deserialised (with borrowed structs); the bulk (`response_item`, `compacted`, …)
//! is skipped after a few bytes.

use crate::walk::Walk;
use crate::{
    lines, stable_hash, Collector, DirCache, Env, FileMeta, FileScan, FoundFile, SkipReason,
    Skipped,
};
use memchr::memmem;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use tokenledger_core::{normalize_model, Source, TokenCounts};

/// The Codex CLI collector (source `codex`).
pub struct CodexCollector;

/// The Every Code collector (source `every-code`).
pub struct EveryCodeCollector;

impl Collector for CodexCollector {
    fn source(&self) -> Source {
        Source::Codex
    }

    /// Roots: `$CODEX_HOME` (comma-separated list allowed), else `~/.codex`.
    fn discover(&self, env: &Env) -> Vec<FoundFile> {
        without_meta(self.discover_with_meta(env, &DirCache::none()))
    }

    fn discover_with_meta(
        &self,
        env: &Env,
        listings: &DirCache,
    ) -> Vec<(FoundFile, Option<FileMeta>)> {
        let roots = env
            .dir_list("CODEX_HOME")
            .unwrap_or_else(|| vec![env.home_join(".codex")]);
        discover_rollouts(Source::Codex, &roots, listings)
    }

    fn scan(&self, file: &FoundFile, offset: u64, state: &str) -> FileScan {
        scan_file(Source::Codex, file, offset, state)
    }
}

impl Collector for EveryCodeCollector {
    fn source(&self) -> Source {
        Source::EveryCode
    }

    /// Roots: `$CODE_HOME`, else `$CODEX_HOME`, else `~/.code` (lists allowed).
    fn discover(&self, env: &Env) -> Vec<FoundFile> {
        without_meta(self.discover_with_meta(env, &DirCache::none()))
    }

    fn discover_with_meta(
        &self,
        env: &Env,
        listings: &DirCache,
    ) -> Vec<(FoundFile, Option<FileMeta>)> {
        let roots = env
            .dir_list("CODE_HOME")
            .or_else(|| env.dir_list("CODEX_HOME"))
            .unwrap_or_else(|| vec![env.home_join(".code")]);
        discover_rollouts(Source::EveryCode, &roots, listings)
    }

    fn scan(&self, file: &FoundFile, offset: u64, state: &str) -> FileScan {
        scan_file(Source::EveryCode, file, offset, state)
    }
}

/// Sorted by path (the walk's own order is not fixed).
fn without_meta(files: Vec<(FoundFile, Option<FileMeta>)>) -> Vec<FoundFile> {
    let mut files: Vec<FoundFile> = files.into_iter().map(|(f, _)| f).collect();
    files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    files
}

/// Parses an in-memory Codex rollout named `file_name` (the name supplies the rollout id) as a
/// scan from offset 0 with empty state. Used by the fuzz target and tests.
pub fn scan_bytes(data: &[u8], file_name: &str) -> FileScan {
    scan_bytes_as(Source::Codex, data, file_name)
}

/// [`scan_bytes`] for either source (`Source::Codex` or `Source::EveryCode`).
pub fn scan_bytes_as(source: Source, data: &[u8], file_name: &str) -> FileScan {
    let path = PathBuf::from(file_name);
    let mut parser = Parser::new(source, &path, State::default());
    let mut skipped = Vec::new();
    let mut consumed = 0usize;
    let mut rest = data;
    while let Some(i) = memchr::memchr(b'\n', rest) {
        let mut line = &rest[..i];
        if let Some(s) = line.strip_suffix(b"\r") {
            line = s;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            parser.line(line, &mut skipped);
        } else {
            parser.line_no += 1;
        }
        consumed += i + 1;
        rest = &rest[i + 1..];
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        skipped.push(Skipped {
            path: path.clone(),
            line: parser.line_no + 1,
            reason: SkipReason::TornLastLine,
        });
    }
    let (events, state) = parser.finish();
    FileScan {
        events,
        offset: consumed as u64,
        state,
        skipped,
        bytes_read: data.len() as u64,
        head: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery

fn discover_rollouts(
    source: Source,
    roots: &[PathBuf],
    listings: &DirCache,
) -> Vec<(FoundFile, Option<FileMeta>)> {
    let accept = |name: &std::ffi::OsStr| name.to_str().is_some_and(is_rollout_file_name);
    let make = |path: PathBuf, meta| {
        let whole = crate::lines::is_zst(&path);
        (
            FoundFile {
                source,
                path,
                whole,
            },
            meta,
        )
    };
    let mut files: Vec<(FoundFile, Option<FileMeta>)> = Vec::new();
    for root in roots {
        // `sessions/YYYY/MM/DD/`; archived rollouts live in one flat folder.
        for (dir, max_depth) in [
            (root.join("sessions"), MAX_DEPTH),
            (root.join("archived_sessions"), 0),
        ] {
            let walk = Walk {
                max_depth,
                accept: &accept,
                links_to_files_only: false,
                listings,
                source,
            };
            let mut found = walk.run_with(&dir, &make);
            if files.is_empty() {
                files = found;
            } else {
                files.append(&mut found);
            }
        }
    }
    if roots.len() > 1 {
        // Two roots may name one folder (`a,a/`): each rollout once. One walk never repeats.
        files.par_sort_unstable_by(|a, b| a.0.path.as_os_str().cmp(b.0.path.as_os_str()));
        files.dedup_by(|a, b| a.0.path == b.0.path);
    }
    files
}

/// Deep enough for `YYYY/MM/DD`, and a bound against pathological trees.
const MAX_DEPTH: usize = 6;

fn is_rollout_file_name(n: &str) -> bool {
    n.starts_with("rollout-") && (n.ends_with(".jsonl") || n.ends_with(".jsonl.zst"))
}

/// The thread UUID at the end of a rollout file name (`rollout-<ts>-<uuid>.jsonl[.zst]`).
pub fn rollout_id_from_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".zst").unwrap_or(name);
    let stem = stem.strip_suffix(".jsonl")?;
    let id = stem.get(stem.len().checked_sub(36)?..)?;
    let ok = id.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    ok.then_some(id)
}

/// The file name without `.zst` and `.jsonl`, the id of last resort.
fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(".zst").unwrap_or(&name);
    name.strip_suffix(".jsonl").unwrap_or(name).to_string()
}

// ---------------------------------------------------------------------------------------------
// Scanning

fn scan_file(source: Source, file: &FoundFile, offset: u64, state: &str) -> FileScan {
    // A zstd file is re-read whole, so it always starts over. A missing or unreadable state
    // cannot carry the baseline forward, so the file is then re-read from the start: the
    // content-derived keys make what was read before merge with what is read again.
    let whole = file.whole || crate::lines::is_zst(&file.path);
    let resumed = if whole || offset == 0 {
        None
    } else {
        serde_json::from_str::<State>(state).ok()
    };
    let (offset, st) = match resumed {
        Some(st) => (offset, st),
        None => (0, State::default()),
    };
    let mut parser = Parser::new(source, &file.path, st);
    let mut skipped = Vec::new();
    let mut line_skips = Vec::new();
    let read = lines::for_each_line(&file.path, offset, &mut skipped, |line| {
        parser.line(line, &mut line_skips)
    });
    skipped.extend(line_skips);
    skipped.sort_by_key(|s| s.line);
    let (events, state) = parser.finish();
    FileScan {
        events,
        offset: read.offset,
        state,
        skipped,
        bytes_read: read.read,
        head: read.head,
    }
}

/// Who wrote a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Owner {
    Codex,
    EveryCode,
}

impl Owner {
    fn source(self) -> Source {
        match self {
            Owner::Codex => Source::Codex,
            Owner::EveryCode => Source::EveryCode,
        }
    }

    fn from_originator(o: &str) -> Owner {
        if o.trim().starts_with("code_") {
            Owner::EveryCode
        } else {
            Owner::Codex
        }
    }
}

/// Where a child rollout stands with the replay of its parent's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
enum Burst {
    /// Not a child rollout, or the replay is over.
    #[default]
    Done,
    /// A child rollout still inside (or before) its replay burst; the reference instant in
    /// milliseconds (the child's start, or the latest replayed line), if known.
    Active(Option<i64>),
}

/// Parser state carried between incremental scans (serialised as JSON into `FileScan.state`).
/// The ledger keeps one per rollout, so the JSON is short: one- or two-letter names, fields at
/// their default left out. The long names that ledgers written before still hold are read too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// Whether the file's own (first) `session_meta` has been read.
    #[serde(
        default,
        rename = "ms",
        alias = "meta_seen",
        skip_serializing_if = "is_false"
    )]
    meta_seen: bool,
    /// `session_meta.payload.id` of the first `session_meta`.
    #[serde(
        default,
        rename = "id",
        alias = "meta_id",
        skip_serializing_if = "Option::is_none"
    )]
    meta_id: Option<String>,
    #[serde(
        default,
        rename = "o",
        alias = "owner",
        skip_serializing_if = "Option::is_none"
    )]
    owner: Option<Owner>,
    #[serde(
        default,
        rename = "b",
        alias = "burst",
        skip_serializing_if = "Burst::is_done"
    )]
    burst: Burst,
    /// The previous cumulative total (the baseline of the next delta).
    #[serde(
        default,
        rename = "p",
        alias = "prev",
        skip_serializing_if = "Option::is_none"
    )]
    prev: Option<[u64; 5]>,
    #[serde(
        default,
        rename = "m",
        alias = "model",
        skip_serializing_if = "Option::is_none"
    )]
    model: Option<String>,
    #[serde(
        default,
        rename = "c",
        alias = "cwd",
        skip_serializing_if = "Option::is_none"
    )]
    cwd: Option<String>,
    /// The latest parseable line timestamp (ms), used for lines whose own is unreadable.
    #[serde(
        default,
        rename = "t",
        alias = "last_ms",
        skip_serializing_if = "Option::is_none"
    )]
    last_ms: Option<i64>,
    /// A `token_count` with usage has been seen: `token_usage_record` lines are ignored.
    #[serde(
        default,
        rename = "tc",
        alias = "seen_token_count",
        skip_serializing_if = "is_false"
    )]
    seen_token_count: bool,
    /// Records were emitted by an earlier scan before any `token_count` appeared.
    #[serde(
        default,
        rename = "re",
        alias = "records_emitted",
        skip_serializing_if = "is_false"
    )]
    records_emitted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Burst {
    fn is_done(&self) -> bool {
        *self == Burst::Done
    }
}

/// The five counted fields in [`TokenCounts`] order (total derived).
type Five = [u64; 5];

fn counts(f: Five) -> TokenCounts {
    TokenCounts::new(f[0], f[1], f[2], f[3], f[4])
}

struct Parser<'p> {
    source: Source,
    path: &'p Path,
    name_id: Option<String>,
    stem: String,
    st: State,
    line_no: u64,
    events: Vec<crate::UsageEvent>,
    pending_records: Vec<crate::UsageEvent>,
    record_keys: HashSet<u64>,
}

static TOKEN_COUNT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"token_count"));
static NEEDLES: LazyLock<[memmem::Finder<'static>; 4]> = LazyLock::new(|| {
    [
        memmem::Finder::new(b"token_count"),
        memmem::Finder::new(b"turn_context"),
        memmem::Finder::new(b"session_meta"),
        memmem::Finder::new(b"token_usage_record"),
    ]
});

/// The envelope types this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SessionMeta,
    TurnContext,
    /// `event_msg` (Codex) or `event` (Every Code): possibly a `token_count`.
    Event {
        every_code: bool,
    },
    Record,
    Other,
}

impl Kind {
    fn of(t: &[u8]) -> Kind {
        match t {
            b"session_meta" => Kind::SessionMeta,
            b"turn_context" => Kind::TurnContext,
            b"event_msg" => Kind::Event { every_code: false },
            b"event" => Kind::Event { every_code: true },
            b"token_usage_record" => Kind::Record,
            _ => Kind::Other,
        }
    }
}

/// Reads the canonical envelope prefix `{"timestamp":"…",("ordinal":N,)"type":"…"` and returns
/// the type and the rest of the line; `None` when the line is not in that exact shape.
fn fast_head(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = line.strip_prefix(b"{\"timestamp\":\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    let mut rest = &rest[end + 1..];
    if let Some(r) = rest.strip_prefix(b",\"ordinal\":") {
        let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &r[digits..];
    }
    let rest = rest.strip_prefix(b",\"type\":\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    Some((&rest[..end], &rest[end + 1..]))
}

impl<'p> Parser<'p> {
    fn new(source: Source, path: &'p Path, st: State) -> Self {
        let name_id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(rollout_id_from_name)
            .map(str::to_string);
        Parser {
            source,
            path,
            name_id,
            stem: file_stem(path),
            st,
            line_no: 0,
            events: Vec::new(),
            pending_records: Vec::new(),
            record_keys: HashSet::new(),
        }
    }

    fn skip(&self, out: &mut Vec<Skipped>, reason: SkipReason) {
        out.push(Skipped {
            path: self.path.to_path_buf(),
            line: self.line_no,
            reason,
        });
    }

    /// One complete, non-blank line.
    fn line(&mut self, line: &[u8], out: &mut Vec<Skipped>) {
        self.line_no += 1;
        let kind = match fast_head(line) {
            Some((t, rest)) => {
                let kind = Kind::of(t);
                match kind {
                    Kind::Other => return,
                    Kind::SessionMeta if self.st.meta_seen => return,
                    Kind::Event { .. } if TOKEN_COUNT.find(rest).is_none() => return,
                    _ => Some(kind),
                }
            }
            None => {
                if !NEEDLES.iter().any(|n| n.find(line).is_some()) {
                    if let Some(reason) = crate::lines::malformed(line) {
                        self.skip(out, reason);
                    }
                    return;
                }
                None
            }
        };
        let Ok(text) = std::str::from_utf8(line) else {
            self.skip(out, SkipReason::InvalidUtf8);
            return;
        };
        let kind = match kind {
            Some(k) => k,
            None => match serde_json::from_str::<Head>(text) {
                Ok(h) => Kind::of(h.kind.as_deref().unwrap_or("").as_bytes()),
                Err(e) => {
                    self.skip(out, crate::lines::json_error(&e));
                    return;
                }
            },
        };
        let res = match kind {
            Kind::SessionMeta => self.session_meta(text),
            Kind::TurnContext => self.turn_context(text),
            Kind::Event { every_code } => self.event(text, every_code),
            Kind::Record => self.record(text),
            Kind::Other => Ok(()),
        };
        if let Err(e) = res {
            // A line that only mentions a needle in text is not an error of ours to report.
            if e.is_data() && kind_is_incidental(kind, text) {
                return;
            }
            self.skip(out, crate::lines::json_error(&e));
        }
    }

    fn session_meta(&mut self, text: &str) -> serde_json::Result<()> {
        if self.st.meta_seen {
            return Ok(());
        }
        let env: Envelope<SessionMeta> = serde_json::from_str(text)?;
        self.st.meta_seen = true;
        let line_ms = env.timestamp.as_deref().and_then(parse_ms);
        self.note_ts(line_ms);
        let Some(p) = env.payload else {
            return Ok(());
        };
        self.st.meta_id =
            p.id.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        if let Some(cwd) = p.cwd.as_deref().filter(|s| !s.trim().is_empty()) {
            self.st.cwd = Some(cwd.to_string());
        }
        if let Some(o) = p.originator.as_deref() {
            if self.st.owner.is_none() {
                self.st.owner = Some(Owner::from_originator(o));
            }
        }
        let spawned = p
            .source
            .as_ref()
            .and_then(|s| s.get("subagent"))
            .and_then(|s| s.get("thread_spawn"))
            .is_some_and(|t| !t.is_null());
        let child = spawned
            || p.forked_from_id.as_ref().is_some_and(|v| !v.is_null())
            || p.parent_thread_id.as_ref().is_some_and(|v| !v.is_null());
        if child {
            let start = p.timestamp.as_deref().and_then(parse_ms).or(line_ms);
            self.st.burst = Burst::Active(start);
        }
        Ok(())
    }

    fn turn_context(&mut self, text: &str) -> serde_json::Result<()> {
        let env: Envelope<TurnContext> = serde_json::from_str(text)?;
        self.note_ts(env.timestamp.as_deref().and_then(parse_ms));
        let Some(p) = env.payload else {
            return Ok(());
        };
        let alt = p
            .collaboration_mode
            .as_ref()
            .and_then(|c| c.get("settings"))
            .and_then(|s| s.get("model"))
            .and_then(|m| m.as_str());
        if let Some(model) = p.model.as_deref().or(alt) {
            self.st.model = Some(model_label(model));
        }
        if let Some(cwd) = p.cwd.as_deref().filter(|s| !s.trim().is_empty()) {
            self.st.cwd = Some(cwd.to_string());
        }
        Ok(())
    }

    /// Whether this file's events belong to the collector; decides the owner on first use.
    fn owned(&mut self, fallback: Owner) -> bool {
        let owner = *self.st.owner.get_or_insert(fallback);
        owner.source() == self.source
    }

    fn event(&mut self, text: &str, every_code: bool) -> serde_json::Result<()> {
        let env: Envelope<EventPayload> = serde_json::from_str(text)?;
        let raw_ts = env.timestamp.as_deref().unwrap_or("");
        let ms = raw_ts_ms(raw_ts);
        self.note_ts(ms);
        let Some(p) = env.payload else {
            return Ok(());
        };
        let (kind, info) = match p.msg {
            Some(m) if every_code || p.kind.is_none() => (m.kind, m.info),
            _ => (p.kind, p.info),
        };
        if kind.as_deref() != Some("token_count") {
            return Ok(());
        }
        // `info: null` is a rate-limit snapshot: no usage.
        let Some(info) = info else {
            return Ok(());
        };
        let totals = info.total_token_usage.as_ref().map(Usage::five);
        let last = info.last_token_usage.as_ref().map(Usage::five);
        if totals.is_none() && last.is_none() {
            return Ok(());
        }
        let fallback = if every_code {
            Owner::EveryCode
        } else {
            Owner::Codex
        };
        if !self.owned(fallback) {
            return Ok(());
        }
        let first_token_count = !self.st.seen_token_count;
        self.st.seen_token_count = true;
        let ms = ms.or(self.st.last_ms);

        if let Burst::Active(reference) = self.st.burst {
            // Unknown times stay in the burst: better to miss a line than to count a replay.
            let in_burst = match (ms, reference) {
                (Some(t), Some(r)) => t <= r.saturating_add(1000),
                _ => true,
            };
            if in_burst {
                if let Some(t) = totals {
                    self.st.prev = Some(t);
                }
                let r = match (ms, reference) {
                    (Some(t), Some(r)) => Some(t.max(r)),
                    (t, r) => t.or(r),
                };
                self.st.burst = Burst::Active(r);
                return Ok(());
            }
            self.st.burst = Burst::Done;
        }

        if first_token_count && self.st.records_emitted {
            // Usage so far was counted from records in an earlier scan: start from here.
            if let Some(t) = totals {
                self.st.prev = Some(t);
            }
            return Ok(());
        }

        let (delta, key_tail): (Five, [u64; 6]) = match totals {
            Some(t) => {
                let delta = match self.st.prev {
                    Some(p) => sub5(t, p).unwrap_or(t),
                    None => t,
                };
                self.st.prev = Some(t);
                (delta, extend(t, 0))
            }
            // No totals: this line's own usage, not cumulative; the baseline is untouched.
            None => {
                let l = last.unwrap_or_default();
                (l, extend(l, 1))
            }
        };
        if delta == [0; 5] {
            return Ok(());
        }
        let Some(ms) = ms else {
            return Ok(());
        };
        let model = self
            .st
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| {
                [
                    &info.model,
                    &info.latest_response_model,
                    &info.requested_model,
                ]
                .into_iter()
                .find_map(|m| m.as_deref().map(model_label))
            })
            .unwrap_or_default();
        let session = self.session_id();
        let mut key_bytes = [0u8; 48];
        for (i, v) in key_tail.iter().enumerate() {
            key_bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let dedupe_key = stable_hash(&[
            self.source.as_str().as_bytes(),
            session.as_bytes(),
            raw_ts.as_bytes(),
            &key_bytes,
        ]);
        self.events.push(crate::UsageEvent {
            source: self.source,
            ts: ms.div_euclid(1000),
            model: normalize_model(Some(&model)),
            session,
            project: self.st.cwd.clone().unwrap_or_default(),
            tokens: counts(delta),
            dedupe_key,
            group: None,
            replay: false,
        });
        Ok(())
    }

    fn record(&mut self, text: &str) -> serde_json::Result<()> {
        let env: Envelope<RecordPayload> = serde_json::from_str(text)?;
        let raw_ts = env.timestamp.as_deref().unwrap_or("");
        let line_ms = raw_ts_ms(raw_ts);
        self.note_ts(line_ms);
        if self.st.seen_token_count {
            return Ok(());
        }
        let Some(p) = env.payload else {
            return Ok(());
        };
        let Some(usage) = p.usage.as_ref().map(Usage::five) else {
            return Ok(());
        };
        if usage == [0; 5] || !self.owned(Owner::Codex) {
            return Ok(());
        }
        let Some(ms) = p.completed_at_ms.or(line_ms).or(self.st.last_ms) else {
            return Ok(());
        };
        let session = self.session_id();
        let thread = p.thread_id.as_deref().unwrap_or(&session);
        let dedupe_key = match p.response_id.as_deref() {
            Some(r) => stable_hash(&[
                self.source.as_str().as_bytes(),
                b"record",
                thread.as_bytes(),
                r.as_bytes(),
            ]),
            None => {
                let mut key_bytes = [0u8; 40];
                for (i, v) in usage.iter().enumerate() {
                    key_bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                stable_hash(&[
                    self.source.as_str().as_bytes(),
                    b"record",
                    thread.as_bytes(),
                    raw_ts.as_bytes(),
                    &key_bytes,
                ])
            }
        };
        if !self.record_keys.insert(dedupe_key) {
            return Ok(());
        }
        let model = p
            .attribution
            .as_ref()
            .and_then(|a| a.model.as_deref())
            .map(model_label)
            .or_else(|| self.st.model.clone())
            .unwrap_or_default();
        self.pending_records.push(crate::UsageEvent {
            source: self.source,
            ts: ms.div_euclid(1000),
            model: normalize_model(Some(&model)),
            project: self.st.cwd.clone().unwrap_or_default(),
            session,
            tokens: counts(usage),
            dedupe_key,
            group: None,
            replay: false,
        });
        Ok(())
    }

    fn note_ts(&mut self, ms: Option<i64>) {
        if ms.is_some() {
            self.st.last_ms = ms;
        }
    }

    fn session_id(&self) -> String {
        self.name_id
            .clone()
            .or_else(|| self.st.meta_id.clone())
            .unwrap_or_else(|| self.stem.clone())
    }

    fn finish(mut self) -> (Vec<crate::UsageEvent>, String) {
        if !self.st.seen_token_count && !self.pending_records.is_empty() {
            self.st.records_emitted = true;
            self.events.append(&mut self.pending_records);
            self.events.sort_by_key(|e| e.ts);
        }
        let state = serde_json::to_string(&self.st).unwrap_or_default();
        (self.events, state)
    }
}

/// Whether a line that failed to deserialise as `kind` was really of that kind; a line reached
/// through the needle prefilter may only mention a needle in its text.
fn kind_is_incidental(kind: Kind, text: &str) -> bool {
    match kind {
        Kind::Event { .. } => {
            let Ok(env) = serde_json::from_str::<Envelope<KindOnly>>(text) else {
                return false;
            };
            let Some(p) = env.payload else { return true };
            let inner = p.msg.as_ref().and_then(|m| m.get("type")?.as_str());
            p.kind.as_deref() != Some("token_count") && inner != Some("token_count")
        }
        _ => false,
    }
}

/// `codex-auto-review` is a label, not a model: it is left for the unknown-model reassignment.
fn model_label(m: &str) -> String {
    let m = m.trim();
    if m == "codex-auto-review" {
        String::new()
    } else {
        m.to_string()
    }
}

fn parse_ms(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn raw_ts_ms(s: &str) -> Option<i64> {
    if s.is_empty() {
        None
    } else {
        parse_ms(s)
    }
}

fn sub5(a: Five, b: Five) -> Option<Five> {
    let mut out = [0u64; 5];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x.checked_sub(y)?;
    }
    Some(out)
}

fn extend(f: Five, tag: u64) -> [u64; 6] {
    [f[0], f[1], f[2], f[3], f[4], tag]
}

// ---------------------------------------------------------------------------------------------
// Borrowed line shapes (only the fields read; everything else is skipped by serde).

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Envelope<'a, P> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    /// A missing `Option` field is `None` (no `default` attribute: it would bound `P: Default`).
    payload: Option<P>,
}

#[derive(Deserialize)]
struct SessionMeta<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cwd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    originator: Option<Cow<'a, str>>,
    #[serde(default)]
    forked_from_id: Option<serde_json::Value>,
    #[serde(default)]
    parent_thread_id: Option<serde_json::Value>,
    #[serde(default)]
    source: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TurnContext<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cwd: Option<Cow<'a, str>>,
    #[serde(default)]
    collaboration_mode: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EventPayload<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    info: Option<Info<'a>>,
    #[serde(borrow, default)]
    msg: Option<EventMsg<'a>>,
}

#[derive(Deserialize)]
struct EventMsg<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    info: Option<Info<'a>>,
}

#[derive(Deserialize)]
struct KindOnly<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    msg: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Info<'a> {
    #[serde(default)]
    total_token_usage: Option<Usage>,
    #[serde(default)]
    last_token_usage: Option<Usage>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    latest_response_model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    requested_model: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cached_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    reasoning_output_tokens: Option<u64>,
}

impl Usage {
    fn five(&self) -> Five {
        [
            self.input_tokens.unwrap_or(0),
            self.cached_input_tokens.unwrap_or(0),
            self.cache_write_input_tokens.unwrap_or(0),
            self.output_tokens.unwrap_or(0),
            self.reasoning_output_tokens.unwrap_or(0),
        ]
    }
}

#[derive(Deserialize)]
struct RecordPayload<'a> {
    #[serde(borrow, default)]
    thread_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_id: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    attribution: Option<Attribution<'a>>,
    #[serde(default)]
    completed_at_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Attribution<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_ids_from_names() {
        assert_eq!(
            rollout_id_from_name(
                "rollout-2025-09-18T00-16-27-243232f1-a7ab-44e6-b2c3-045b673746ea.jsonl.zst"
            ),
            Some("243232f1-a7ab-44e6-b2c3-045b673746ea")
        );
        assert_eq!(rollout_id_from_name("small.jsonl"), None);
        assert_eq!(rollout_id_from_name("rollout-x.json"), None);
    }

    #[test]
    fn states_written_with_the_long_names_still_resume() {
        // As ledgers written before the short names hold it.
        let old = r#"{"meta_seen":true,"meta_id":"203779d1-7026-74a7-b948-11d56c939d61","owner":"EveryCode","burst":{"Active":1759594020000},"prev":[68476,11640,0,2634,258],"model":"gpt-5-codex","cwd":"/home/dev/project-1","last_ms":1759594023041,"seen_token_count":true,"records_emitted":true}"#;
        let st: State = serde_json::from_str(old).unwrap();
        assert!(st.meta_seen && st.seen_token_count && st.records_emitted);
        assert_eq!(
            st.meta_id.as_deref(),
            Some("203779d1-7026-74a7-b948-11d56c939d61")
        );
        assert_eq!(st.owner, Some(Owner::EveryCode));
        assert_eq!(st.burst, Burst::Active(Some(1759594020000)));
        assert_eq!(st.prev, Some([68476, 11640, 0, 2634, 258]));
        assert_eq!(st.model.as_deref(), Some("gpt-5-codex"));
        assert_eq!(st.cwd.as_deref(), Some("/home/dev/project-1"));
        assert_eq!(st.last_ms, Some(1759594023041));
        // Written again, it is shorter and reads back the same.
        let new = serde_json::to_string(&st).unwrap();
        assert!(new.len() + 50 < old.len(), "{new}");
        assert_eq!(serde_json::from_str::<State>(&new).unwrap(), st);
        assert_eq!(serde_json::to_string(&State::default()).unwrap(), "{}");
    }

    proptest::proptest! {
        #[test]
        fn any_state_reads_back_the_same(
            meta_seen: bool,
            meta_id: Option<String>,
            every_code: Option<bool>,
            burst: Option<Option<i64>>,
            prev: Option<[u64; 5]>,
            model: Option<String>,
            cwd: Option<String>,
            last_ms: Option<i64>,
            seen_token_count: bool,
            records_emitted: bool,
        ) {
            let st = State {
                meta_seen,
                meta_id,
                owner: every_code.map(|e| if e { Owner::EveryCode } else { Owner::Codex }),
                burst: burst.map_or(Burst::Done, Burst::Active),
                prev,
                model,
                cwd,
                last_ms,
                seen_token_count,
                records_emitted,
            };
            let json = serde_json::to_string(&st).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<State>(&json).unwrap(), st);
        }
    }

    #[test]
    fn fast_head_reads_the_envelope() {
        let (t, _) =
            fast_head(br#"{"timestamp":"2025","ordinal":12,"type":"event_msg","payload":{}}"#)
                .unwrap();
        assert_eq!(t, b"event_msg");
        assert!(fast_head(br#"{"type":"event_msg","timestamp":"x"}"#).is_none());
    }
}
