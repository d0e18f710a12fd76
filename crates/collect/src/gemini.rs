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

use crate::pick::{self, Any, Fields, List, Object, Skip};
use crate::{stable_hash, Collector, Env, FileScan, FoundFile, SkipReason, Skipped, UsageEvent};
use serde::de::MapAccess;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
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

/// The message fields of a record or of a `messages` element (last key wins, as in `Value`).
#[derive(Default)]
struct MsgFields<'a> {
    /// Whether the object has a `type` key, and its value.
    kind: Option<Any<'a>>,
    tokens: Option<Tokens<'a>>,
    timestamp: Option<Any<'a>>,
    id: Option<Any<'a>>,
    model: Option<Any<'a>>,
}

impl<'de> MsgFields<'de> {
    /// Reads `key` when it is a message field; `false` when it is not one.
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "type" => self.kind = Some(map.next_value()?),
            "tokens" => self.tokens = Some(map.next_value()?),
            "timestamp" => self.timestamp = Some(map.next_value()?),
            "id" => self.id = Some(map.next_value()?),
            "model" => self.model = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Fields<'de> for MsgFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if !self.read(key, map)? {
            map.next_value::<Skip>()?;
        }
        Ok(())
    }
}

/// An element of `messages`: non-objects carry no usage.
type Msg<'a> = Object<MsgFields<'a>>;

/// A `tokens` value: `null`, an object (its five counts, last key wins) or a wrong type.
enum Tokens<'a> {
    Null,
    Counts([Option<Any<'a>>; 5]),
    Wrong,
}

#[derive(Default)]
struct TokenFields<'a>([Option<Any<'a>>; 5]);

impl<'de> Fields<'de> for TokenFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let i = match key {
            "input" => 0,
            "output" => 1,
            "cached" => 2,
            "thoughts" => 3,
            "tool" => 4,
            _ => {
                map.next_value::<Skip>()?;
                return Ok(());
            }
        };
        self.0[i] = Some(map.next_value()?);
        Ok(())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Tokens<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // An object is read field by field; any other value only for whether it is null.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Tokens<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tokens<'de>, E> {
                Ok(Tokens::Wrong)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tokens<'de>, E> {
                Ok(Tokens::Wrong)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tokens<'de>, E> {
                Ok(Tokens::Wrong)
            }
            fn visit_f64<E>(self, f: f64) -> Result<Tokens<'de>, E> {
                // `Value` holds a non-finite float as null.
                Ok(if f.is_finite() {
                    Tokens::Wrong
                } else {
                    Tokens::Null
                })
            }
            fn visit_str<E>(self, _: &str) -> Result<Tokens<'de>, E> {
                Ok(Tokens::Wrong)
            }
            fn visit_unit<E>(self) -> Result<Tokens<'de>, E> {
                Ok(Tokens::Null)
            }
            fn visit_none<E>(self) -> Result<Tokens<'de>, E> {
                Ok(Tokens::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Tokens<'de>, A::Error> {
                let mut seq = seq;
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Tokens::Wrong)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tokens<'de>, A::Error> {
                let mut t = TokenFields::default();
                while let Some(key) = map.next_key::<Any<'de>>()? {
                    t.field(key.as_str().unwrap_or(""), &mut map)?;
                }
                Ok(Tokens::Counts(t.0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `.jsonl` record or a legacy document: the message fields, the metadata, `$set`,
/// `$rewindTo` and `messages` (last key wins).
#[derive(Default)]
struct RecordFields<'a> {
    msg: MsgFields<'a>,
    session_id: Option<Any<'a>>,
    start_time: Option<Any<'a>>,
    /// `$set` is present; its `messages` when it is an object holding an array there.
    set: Option<Option<Vec<Msg<'a>>>>,
    rewind: bool,
    messages: Option<Vec<Msg<'a>>>,
}

/// `$set`: its `messages` when it is an array (last key wins).
#[derive(Default)]
struct SetFields<'a>(Option<Vec<Msg<'a>>>);

impl<'de> Fields<'de> for SetFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == "messages" {
            self.0 = map.next_value::<List<Msg<'de>>>()?.0;
        } else {
            map.next_value::<Skip>()?;
        }
        Ok(())
    }
}

impl<'de> Fields<'de> for RecordFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if self.msg.read(key, map)? {
            return Ok(());
        }
        match key {
            "sessionId" => self.session_id = Some(map.next_value()?),
            "startTime" => self.start_time = Some(map.next_value()?),
            "$set" => {
                self.set = Some(match map.next_value::<Object<SetFields<'de>>>()? {
                    Object::Is(s) => s.0,
                    Object::Not => None,
                })
            }
            "$rewindTo" => {
                map.next_value::<Skip>()?;
                self.rewind = true;
            }
            "messages" => self.messages = map.next_value::<List<Msg<'de>>>()?.0,
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

type Record<'a> = Object<RecordFields<'a>>;

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
    fn metadata(&mut self, session_id: Option<&Any<'_>>, start_time: Option<&Any<'_>>) {
        if let Some(id) = session_id.and_then(Any::as_str) {
            if !id.trim().is_empty() {
                self.session = id.to_string();
            }
        }
        if let Some(t) = start_time.and_then(Any::as_str) {
            if let Some(ts) = parse_timestamp(t) {
                self.start = Some(ts);
            }
        }
    }

    /// Parses one `.jsonl` line and takes what it says.
    fn line(&mut self, line: &[u8], line_no: u64) {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => self.record(r, line_no),
            Err(_) => self.skip(line_no, crate::lines::unparsable(line)),
        }
    }

    /// One `.jsonl` record: metadata, a message, a `$set` patch or a `$rewindTo`.
    fn record(&mut self, r: Record<'_>, line: u64) {
        let Object::Is(r) = r else {
            self.skip(line, SkipReason::BadFields);
            return;
        };
        if let Some(set) = r.set {
            // A patch may carry a whole `messages` array: each message collapses onto its key.
            for m in set.iter().flatten() {
                self.message(m, line);
            }
            return;
        }
        if r.rewind {
            // Rewound messages were billed: they stay counted.
            return;
        }
        if r.msg.kind.is_some() || r.msg.tokens.is_some() {
            self.message_fields(&r.msg, line);
        } else if r.session_id.is_some() {
            self.metadata(r.session_id.as_ref(), r.start_time.as_ref());
        }
    }

    /// A legacy whole document `{sessionId, startTime, messages[], ...}`.
    fn document(&mut self, bytes: &[u8]) {
        let r = match serde_json::from_slice::<Record>(bytes) {
            Ok(r) => r,
            Err(_) => {
                self.skip(0, crate::lines::unparsable(bytes));
                return;
            }
        };
        let Object::Is(r) = r else {
            self.skip(0, SkipReason::BadFields);
            return;
        };
        self.metadata(r.session_id.as_ref(), r.start_time.as_ref());
        for m in r.messages.iter().flatten() {
            self.message(m, 0);
        }
    }

    fn message(&mut self, m: &Msg<'_>, line: u64) {
        if let Object::Is(m) = m {
            self.message_fields(m, line);
        }
    }

    fn message_fields(&mut self, m: &MsgFields<'_>, line: u64) {
        if m.kind.as_ref().and_then(Any::as_str) != Some("gemini") {
            return;
        }
        let counts = match &m.tokens {
            None | Some(Tokens::Null) => return,
            Some(Tokens::Wrong) => None,
            Some(Tokens::Counts(c)) => gemini_counts(c),
        };
        let Some(counts) = counts else {
            self.skip(line, SkipReason::BadFields);
            return;
        };
        if counts.is_zero() {
            return;
        }
        let timestamp = m.timestamp.as_ref().and_then(Any::as_str);
        let ts = match timestamp {
            Some(t) => parse_timestamp(t),
            None => self.start,
        };
        let Some(ts) = ts else {
            self.skip(line, SkipReason::BadFields);
            return;
        };
        let number;
        let id: Cow<str> = match &m.id {
            Some(Any::Str(s)) => Cow::Borrowed(s),
            Some(a) if a.number().is_some() => {
                number = a.number().map(|n| n.to_string()).unwrap_or_default();
                Cow::Borrowed(&number)
            }
            // No id: the timestamp is the best identity left.
            _ => Cow::Owned(format!("@{}", timestamp.unwrap_or(""))),
        };
        let model = m.model.as_ref().and_then(Any::as_str);
        self.push(ts, model, &id, counts);
    }

    fn push(&mut self, ts: i64, model: Option<&str>, id: &str, counts: TokenCounts) {
        let event = UsageEvent {
            source: Source::Gemini,
            ts,
            model: normalize_model(model),
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

/// The canonical fields of the five counts `input, output, cached, thoughts, tool`; `None`
/// when one has a wrong type.
fn gemini_counts(c: &[Option<Any<'_>>; 5]) -> Option<TokenCounts> {
    let input = pick::count(c[0].as_ref())?;
    let output = pick::count(c[1].as_ref())?;
    let cached = pick::count(c[2].as_ref())?;
    let thoughts = pick::count(c[3].as_ref())?;
    let tool = pick::count(c[4].as_ref())?;
    Some(TokenCounts::new(
        input.saturating_add(tool),
        cached,
        0,
        output.saturating_add(thoughts),
        thoughts,
    ))
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
        chat.line(line, line_no);
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
    chat.document(&bytes);
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
        chat.line(line, line_no);
    }
    (chat.events, chat.skipped)
}

/// Parses a legacy whole-document chat as if it were the file at `path` (for fuzzing and tests).
pub fn parse_document_bytes(path: &Path, bytes: &[u8]) -> (Vec<UsageEvent>, Vec<Skipped>) {
    let mut chat = Chat::new(path, session_from_name(path), None);
    chat.document(bytes);
    (chat.events, chat.skipped)
}

/// The `Value` reader these typed readers replaced, kept as the reference they must agree with.
#[cfg(test)]
mod reference {
    use super::*;

    impl Chat {
        fn metadata_value(&mut self, v: &serde_json::Map<String, Value>) {
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

        fn record_value(&mut self, v: &Value, line: u64) {
            let Some(obj) = v.as_object() else {
                self.skip(line, SkipReason::BadFields);
                return;
            };
            if let Some(set) = obj.get("$set") {
                if let Some(messages) = set.get("messages").and_then(Value::as_array) {
                    for m in messages {
                        self.message_value(m, line);
                    }
                }
                return;
            }
            if obj.contains_key("$rewindTo") {
                return;
            }
            if obj.contains_key("type") || obj.contains_key("tokens") {
                self.message_value(v, line);
            } else if obj.contains_key("sessionId") {
                self.metadata_value(obj);
            }
        }

        fn document_value(&mut self, v: &Value) {
            let Some(obj) = v.as_object() else {
                self.skip(0, SkipReason::BadFields);
                return;
            };
            self.metadata_value(obj);
            if let Some(messages) = obj.get("messages").and_then(Value::as_array) {
                for m in messages {
                    self.message_value(m, 0);
                }
            }
        }

        fn message_value(&mut self, m: &Value, line: u64) {
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
                _ => format!(
                    "@{}",
                    m.get("timestamp").and_then(Value::as_str).unwrap_or("")
                ),
            };
            self.push(ts, m.get("model").and_then(Value::as_str), &id, counts);
        }
    }

    pub(super) fn jsonl(path: &Path, bytes: &[u8]) -> (Vec<UsageEvent>, Vec<Skipped>) {
        let mut chat = Chat::new(path, session_from_name(path), None);
        let mut line_no = 0u64;
        for line in bytes.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            line_no += 1;
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => chat.record_value(&v, line_no),
                Err(_) => chat.skip(line_no, crate::lines::unparsable(line)),
            }
        }
        (chat.events, chat.skipped)
    }

    pub(super) fn document(path: &Path, bytes: &[u8]) -> (Vec<UsageEvent>, Vec<Skipped>) {
        let mut chat = Chat::new(path, session_from_name(path), None);
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => chat.document_value(&v),
            Err(_) => chat.skip(0, crate::lines::unparsable(bytes)),
        }
        (chat.events, chat.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records built from pieces that exercise every branch: repeated keys, escaped keys,
    /// numeric and missing ids, wrong types, nulls, floats, `$set`/`$rewindTo`, nesting,
    /// surrogates and invalid UTF-8.
    fn pieces() -> Vec<&'static str> {
        vec![
            r#""type":"gemini""#,
            r#""type":"user""#,
            r#""type":5"#,
            r#""t\u0079pe":"gemini""#,
            r#""type":"gem\u0069ni""#,
            r#""tokens":{"input":10,"output":3,"cached":2,"thoughts":1,"tool":4}"#,
            r#""tokens":{"input":7,"input":9,"output":1.0}"#,
            r#""tokens":{"input":-1}"#,
            r#""tokens":{"input":1e3,"thoughts":2.5}"#,
            r#""tokens":{"input":null,"output":18446744073709551615}"#,
            r#""tokens":{"input":1.9e19}"#,
            r#""tokens":{"output":"5"}"#,
            r#""tokens":{"output":[1],"x":{"y":[]}}"#,
            r#""tokens":null"#,
            r#""tokens":[]"#,
            r#""tokens":"a""#,
            r#""tokens":{}"#,
            r#""timestamp":"2025-10-29T05:30:35.642Z""#,
            r#""timestamp":"2025-10-29T06:00:00Z""#,
            r#""timestamp":"not a time""#,
            r#""timestamp":17"#,
            r#""id":"g-1""#,
            r#""id":"g-\u0031""#,
            r#""id":42"#,
            r#""id":-42"#,
            r#""id":4.0"#,
            r#""id":1e2"#,
            r#""id":null"#,
            r#""id":{"a":1}"#,
            r#""model":"gemini-2.5-pro""#,
            r#""model":7"#,
            r#""sessionId":"s-1""#,
            r#""sessionId":"  ""#,
            r#""sessionId":3"#,
            r#""startTime":"2025-10-29T05:00:00Z""#,
            r#""startTime":"bad""#,
            r#""$set":{"messages":[{"type":"gemini","id":"g-1","tokens":{"input":50}},5,null]}"#,
            r#""$set":{"messages":{"a":1}}"#,
            r#""$set":{"other":[1]}"#,
            r#""$set":null"#,
            r#""$set":[{"messages":[]}]"#,
            r#""$rewindTo":"g-1""#,
            r#""messages":[{"type":"gemini","id":"g-2","tokens":{"output":5},"timestamp":"2025-10-29T07:00:00Z"},{"type":"gemini","id":"g-2","tokens":{"output":8}},[],"x"]"#,
            r#""messages":"none""#,
            r#""content":"a\\nb \ud83d\ude00 \u00e9""#,
            r#""content":"\ud800""#,
            r#""content":[[[[{"a":[]}]]]]"#,
            r#""kind":true"#,
        ]
    }

    fn lcg(seed: &mut u64) -> usize {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as usize
    }

    fn same(
        a: (Vec<UsageEvent>, Vec<Skipped>),
        b: (Vec<UsageEvent>, Vec<Skipped>),
        what: &[u8],
    ) -> (usize, usize) {
        let seen = (a.0.len(), a.1.len());
        assert_eq!(
            format!("{:?}", a),
            format!("{:?}", b),
            "{}",
            String::from_utf8_lossy(what)
        );
        seen
    }

    /// The typed readers give exactly what the `Value` readers gave, on records and documents
    /// made of random pieces, and on invalid ones.
    #[test]
    fn typed_readers_agree_with_the_value_readers() {
        let pieces = pieces();
        let path = Path::new("/h/.gemini/tmp/proj/chats/session-x.jsonl");
        let doc_path = Path::new("/h/.gemini/tmp/proj/chats/session-x.json");
        let mut seed = 42u64;
        let (mut events, mut skipped) = (0, 0);
        let mut add = |(e, s): (usize, usize)| {
            events += e;
            skipped += s;
        };
        for _ in 0..4000 {
            let mut text = Vec::new();
            let lines = 1 + lcg(&mut seed) % 5;
            for _ in 0..lines {
                // Half the records start as a valid message that later pieces may override.
                let mut fields: Vec<&str> = Vec::new();
                if lcg(&mut seed).is_multiple_of(2) {
                    fields.extend([pieces[0], pieces[5], pieces[17], pieces[21]]);
                }
                let n = lcg(&mut seed) % 4;
                fields.extend((0..n).map(|_| pieces[lcg(&mut seed) % pieces.len()]));
                let mut line = format!("{{{}}}", fields.join(","));
                match lcg(&mut seed) % 20 {
                    0 => line.truncate(line.len() / 2),
                    1 => line = format!("[{line}]"),
                    2 => line.push_str(" x"),
                    _ => {}
                }
                text.extend_from_slice(line.as_bytes());
                if lcg(&mut seed).is_multiple_of(30) {
                    text.extend_from_slice(b"\xff");
                }
                text.push(b'\n');
            }
            add(same(
                parse_jsonl_bytes(path, &text),
                reference::jsonl(path, &text),
                &text,
            ));
            let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
            add(same(
                parse_document_bytes(doc_path, first),
                reference::document(doc_path, first),
                first,
            ));
        }
        for n in [120, 126, 127, 128, 129, 140] {
            let deep = format!(
                r#"{{"type":"gemini","tokens":{{"input":1}},"id":"d","timestamp":"2025-10-29T05:30:35.642Z","c":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            );
            add(same(
                parse_jsonl_bytes(path, deep.as_bytes()),
                reference::jsonl(path, deep.as_bytes()),
                deep.as_bytes(),
            ));
        }
        // The pieces reach both outcomes often.
        assert!(
            events > 1000 && skipped > 1000,
            "{events} events, {skipped} skipped"
        );
    }
}
