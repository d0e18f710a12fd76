//! Gemini CLI chats (agent-log-formats.md section 4).
//!
//! Files live under `$GEMINI_CLI_HOME/.gemini` (the variable replaces `$HOME`) or `~/.gemini`:
//! `tmp/<project>/chats/session-*.json` (legacy, one JSON document rewritten in place, read
//! whole), `tmp/<project>/chats/session-*.jsonl` (append-only, read incrementally) and subagent
//! chats `tmp/<project>/chats/<parentSessionId>/<sessionId>.jsonl`.
//!
//! Usage is on messages with `type == "gemini"`; input = `tokens.input + tokens.tool`, cached =
//! `tokens.cached`, output = `tokens.output + tokens.thoughts`, reasoning = `tokens.thoughts`.
//!
//! Deduplication: every message gets the key `stable_hash("gemini", sessionId, message id)`.
//! - A message re-appended when it changes repeats its id: the ledger keeps one event per key,
//!   the one with the largest `total_tokens`. Gemini only ever adds to a message's tokens, so the
//!   largest is the last record. Within one scan this module applies the same rule (largest
//!   total, the first on ties), so an incremental scan and a full scan agree.
//! - `$set.messages` repeats messages under the same ids: they collapse onto the same keys, and a
//!   message seen only inside a `$set.messages` list still counts once.
//! - `$rewindTo` rewrites the conversation, not the bill: rewound messages stay counted.
//! - A legacy `.json` and the `.jsonl` written when it is resumed hold the same sessionId and
//!   message ids, so the pair yields the same keys and counts once.

use crate::{stable_hash, Collector, Env, FileScan, FoundFile, SkipReason, Skipped, UsageEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenledger_core::{normalize_model, parse_timestamp, Source, TokenCounts};

/// Whole-document files bigger than this are skipped as [`SkipReason::TooLong`].
pub const MAX_DOCUMENT: u64 = 256 * 1024 * 1024;

/// The Gemini CLI collector.
pub struct GeminiCollector;

/// Cursor state of a `.jsonl` chat: what the metadata line said, needed by later scans.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    /// Session start (unix seconds): the timestamp of messages that carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<i64>,
}

impl Collector for GeminiCollector {
    fn source(&self) -> Source {
        Source::Gemini
    }

    fn discover(&self, env: &Env) -> Vec<FoundFile> {
        let root = match env.var("GEMINI_CLI_HOME") {
            Some(h) => env.expand(h).join(".gemini"),
            None => env.home_join(".gemini"),
        };
        discover_root(&root)
    }

    fn scan(&self, file: &FoundFile, offset: u64, state: &str) -> FileScan {
        if is_jsonl(&file.path) {
            scan_jsonl(&file.path, offset, state)
        } else {
            scan_document(&file.path)
        }
    }
}

/// The chat files under one `.gemini` folder, sorted by path.
pub fn discover_root(root: &Path) -> Vec<FoundFile> {
    let mut out = Vec::new();
    for project in crate::walk::dir_sorted(&root.join("tmp")) {
        let chats = project.join("chats");
        for entry in crate::walk::dir_sorted(&chats) {
            let Some(name) = entry.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if entry.is_dir() {
                // Subagent chats: chats/<parentSessionId>/<sessionId>.jsonl
                for sub in crate::walk::dir_sorted(&entry) {
                    if sub.is_file() && is_jsonl(&sub) {
                        out.push(found(sub, false));
                    }
                }
            } else if name.starts_with("session-") {
                if name.ends_with(".jsonl") {
                    out.push(found(entry, false));
                } else if name.ends_with(".json") {
                    out.push(found(entry, true));
                }
            }
        }
    }
    out
}

fn found(path: PathBuf, whole: bool) -> FoundFile {
    FoundFile {
        source: Source::Gemini,
        path,
        whole,
    }
}

fn is_jsonl(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("jsonl")
}

/// The `<project>` folder: the parent of the nearest `chats` ancestor (empty when none).
fn project_of(path: &Path) -> String {
    path.ancestors()
        .skip(1)
        .find(|a| a.file_name().and_then(|n| n.to_str()) == Some("chats"))
        .and_then(|chats| chats.parent())
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// The session id to use before the file names one: the file name without extension.
fn session_from_name(path: &Path) -> String {
    path.file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Accumulates the usage of one chat file (or one part of it).
struct Chat {
    path: PathBuf,
    project: String,
    session: String,
    start: Option<i64>,
    events: Vec<UsageEvent>,
    by_key: HashMap<u64, usize>,
    skipped: Vec<Skipped>,
}

impl Chat {
    fn new(path: &Path, session: String, start: Option<i64>) -> Chat {
        Chat {
            path: path.to_path_buf(),
            project: project_of(path),
            session,
            start,
            events: Vec::new(),
            by_key: HashMap::new(),
            skipped: Vec::new(),
        }
    }

    fn skip(&mut self, line: u64, reason: SkipReason) {
        self.skipped.push(Skipped {
            path: self.path.clone(),
            line,
            reason,
        });
    }

    /// Takes the session id and start time from a metadata object (a `.jsonl` first line, or
    /// the top of a legacy document).
    fn metadata(&mut self, v: &serde_json::Map<String, Value>) {
        if let Some(id) = v.get("sessionId").and_then(Value::as_str) {
            if !id.trim().is_empty() {
                self.session = id.to_string();
            }
        }
        if let Some(t) = v.get("startTime").and_then(Value::as_str) {
            if let Some(ts) = parse_timestamp(t) {
                self.start = Some(ts);
            }
        }
    }

    /// One `.jsonl` record: metadata, a message, a `$set` patch or a `$rewindTo`.
    fn record(&mut self, v: &Value, line: u64) {
        let Some(obj) = v.as_object() else {
            self.skip(line, SkipReason::BadFields);
            return;
        };
        if let Some(set) = obj.get("$set") {
            // A patch may carry a whole `messages` array: each message collapses onto its key.
            if let Some(messages) = set.get("messages").and_then(Value::as_array) {
                for m in messages {
                    self.message(m, line);
                }
            }
            return;
        }
        if obj.contains_key("$rewindTo") {
            // Rewound messages were billed: they stay counted.
            return;
        }
        if obj.contains_key("type") || obj.contains_key("tokens") {
            self.message(v, line);
        } else if obj.contains_key("sessionId") {
            self.metadata(obj);
        }
    }

    /// A legacy whole document `{sessionId, startTime, messages[], ...}`.
    fn document(&mut self, v: &Value) {
        let Some(obj) = v.as_object() else {
            self.skip(0, SkipReason::BadFields);
            return;
        };
        self.metadata(obj);
        if let Some(messages) = obj.get("messages").and_then(Value::as_array) {
            for m in messages {
                self.message(m, 0);
            }
        }
    }

    fn message(&mut self, m: &Value, line: u64) {
        if m.get("type").and_then(Value::as_str) != Some("gemini") {
            return;
        }
        let Some(tokens) = m.get("tokens").filter(|t| !t.is_null()) else {
            return;
        };
        let Some(counts) = gemini_tokens(tokens) else {
            self.skip(line, SkipReason::BadFields);
            return;
        };
        if counts.is_zero() {
            return;
        }
        let ts = match m.get("timestamp").and_then(Value::as_str) {
            Some(t) => parse_timestamp(t),
            None => self.start,
        };
        let Some(ts) = ts else {
            self.skip(line, SkipReason::BadFields);
            return;
        };
        let id = match m.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            // No id: the timestamp is the best identity left.
            _ => format!(
                "@{}",
                m.get("timestamp").and_then(Value::as_str).unwrap_or("")
            ),
        };
        let event = UsageEvent {
            source: Source::Gemini,
            ts,
            model: normalize_model(m.get("model").and_then(Value::as_str)),
            session: self.session.clone(),
            project: self.project.clone(),
            tokens: counts,
            dedupe_key: stable_hash(&[b"gemini", self.session.as_bytes(), id.as_bytes()]),
            group: None,
            replay: false,
        };
        match self.by_key.get(&event.dedupe_key) {
            Some(&i) => {
                // Same rule as the ledger: the largest total wins, the first on ties.
                if event.tokens.total_tokens > self.events[i].tokens.total_tokens {
                    self.events[i] = event;
                }
            }
            None => {
                self.by_key.insert(event.dedupe_key, self.events.len());
                self.events.push(event);
            }
        }
    }
}

/// Maps a Gemini `tokens` object to the canonical fields; `None` when a field has a wrong type.
pub fn gemini_tokens(t: &Value) -> Option<TokenCounts> {
    let obj = t.as_object()?;
    let f = |name: &str| count(obj.get(name));
    let input = f("input")?;
    let output = f("output")?;
    let cached = f("cached")?;
    let thoughts = f("thoughts")?;
    let tool = f("tool")?;
    Some(TokenCounts::new(
        input.saturating_add(tool),
        cached,
        0,
        output.saturating_add(thoughts),
        thoughts,
    ))
}

/// A token count: missing or null is 0; a non-negative integer (or integral float) is itself;
/// anything else is a wrong type.
fn count(v: Option<&Value>) -> Option<u64> {
    match v {
        None | Some(Value::Null) => Some(0),
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

fn scan_jsonl(path: &Path, offset: u64, state: &str) -> FileScan {
    let prev: State = serde_json::from_str(state).unwrap_or_default();
    let session = prev.session.unwrap_or_else(|| session_from_name(path));
    let mut chat = Chat::new(path, session, prev.start);
    let mut skipped = Vec::new();
    let mut line_no = 0u64;
    let read = crate::lines::for_each_line(path, offset, &mut skipped, |line| {
        line_no += 1;
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => chat.record(&v, line_no),
            Err(_) => chat.skip(line_no, crate::lines::unparsable(line)),
        }
    });
    skipped.append(&mut chat.skipped);
    skipped.sort_by_key(|s| s.line);
    let state = State {
        session: Some(chat.session),
        start: chat.start,
    };
    FileScan {
        events: chat.events,
        offset: read.offset,
        state: serde_json::to_string(&state).unwrap_or_default(),
        skipped,
        bytes_read: read.read,
        head: read.head,
    }
}

/// Reads a whole file of at most [`MAX_DOCUMENT`] bytes.
fn read_capped(path: &Path) -> Result<Vec<u8>, SkipReason> {
    let file = std::fs::File::open(path).map_err(|_| SkipReason::Unreadable)?;
    let meta = file.metadata().map_err(|_| SkipReason::Unreadable)?;
    if !meta.is_file() {
        return Err(SkipReason::Unreadable);
    }
    if meta.len() > MAX_DOCUMENT {
        return Err(SkipReason::TooLong);
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // `take` guards against a file that grew after the size check.
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut buf)
        .map_err(|_| SkipReason::Unreadable)?;
    if buf.len() as u64 > MAX_DOCUMENT {
        return Err(SkipReason::TooLong);
    }
    Ok(buf)
}

fn scan_document(path: &Path) -> FileScan {
    let bytes = match read_capped(path) {
        Ok(b) => b,
        Err(reason) => {
            return FileScan {
                offset: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                skipped: vec![Skipped::file(path, reason)],
                ..Default::default()
            }
        }
    };
    let mut chat = Chat::new(path, session_from_name(path), None);
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => chat.document(&v),
        Err(_) => chat.skip(0, crate::lines::unparsable(&bytes)),
    }
    FileScan {
        events: chat.events,
        offset: bytes.len() as u64,
        state: String::new(),
        skipped: chat.skipped,
        bytes_read: bytes.len() as u64,
        head: None,
    }
}

/// Parses `.jsonl` chat bytes as if they were a whole file at `path` (for fuzzing and tests).
pub fn parse_jsonl_bytes(path: &Path, bytes: &[u8]) -> (Vec<UsageEvent>, Vec<Skipped>) {
    let mut chat = Chat::new(path, session_from_name(path), None);
    let mut line_no = 0u64;
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        line_no += 1;
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => chat.record(&v, line_no),
            Err(_) => chat.skip(line_no, crate::lines::unparsable(line)),
        }
    }
    (chat.events, chat.skipped)
}

/// Parses a legacy whole-document chat as if it were the file at `path` (for fuzzing and tests).
pub fn parse_document_bytes(path: &Path, bytes: &[u8]) -> (Vec<UsageEvent>, Vec<Skipped>) {
    let mut chat = Chat::new(path, session_from_name(path), None);
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => chat.document(&v),
        Err(_) => chat.skip(0, crate::lines::unparsable(bytes)),
    }
    (chat.events, chat.skipped)
}
