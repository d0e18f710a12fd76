//! OpenCode usage (agent-log-formats.md section 5).
//!
//! Roots: `$OPENCODE_DATA_DIR`, else `${XDG_DATA_HOME:-~/.local/share}/opencode`; `$OPENCODE_DB`
//! names one more database file (relative names are taken inside the root).
//!
//! Stores, never both for the same data:
//! - SQLite `opencode.db` / `opencode-<channel>.db` (v1.2+), opened read-only through a URI so
//!   that the `-wal` file is honoured. Each database is one [`FoundFile`] with `whole = true`;
//!   its cursor state holds the size and mtime of the database and its `-wal` file (checked
//!   without opening it) and a change check (row counts and `max(time_updated)` of the
//!   message tables), because a write that only reached the `-wal` file leaves the `.db` size and
//!   mtime unchanged: the ledger therefore rescans, and [`OpenCodeCollector::scan`] returns at
//!   once with no events when the check is unchanged.
//! - The legacy JSON store (`storage/message/<sessionID>/*.json` with parts in
//!   `storage/part/<messageID>/*.json`), read only when the root holds no database (the
//!   database is a migrated superset of it). Each message file is one `whole` [`FoundFile`].
//!
//! Per assistant message the usage is the sum of its `step-finish` parts' tokens (the message's
//! own `tokens` keep only the last step), else the message's `tokens`; all-zero rows are skipped.
//! Mapping: input = `input + cache.read + cache.write`, cached = `cache.read`, cache creation =
//! `cache.write`, output = `output + reasoning`, reasoning = `reasoning`. The dedupe key is
//! `stable_hash("opencode", message id)`.
//!
//! OpenCode 2.x (best effort, from public reports of its schema, not from its source): messages
//! live in `session_message(id, session_id, type, seq, time_created, time_updated, data)` and
//! sessions in `session_v2(…, directory, fork_session_id, fork_boundary, …)`. A session that has
//! `session_message` rows is read from there only (its frozen v1 rows are ignored). A fork copies
//! its parent's rows under new ids, keeping their `seq`: rows of a fork whose `seq` is at or
//! before the `seq` of its `fork_boundary` message are dropped; when the boundary cannot be
//! resolved, a row is dropped when the parent has a row of the same `seq` with the same tokens.

use crate::pick::{self, Any, Fields, Object, Shape, Skip};
use crate::{stable_hash, Collector, Env, FileScan, FoundFile, SkipReason, Skipped, UsageEvent};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::de::MapAccess;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokenledger_core::{normalize_model, Source, TokenCounts};

/// Legacy JSON files bigger than this are skipped as [`SkipReason::TooLong`].
pub const MAX_DOCUMENT: u64 = 256 * 1024 * 1024;

/// How long a read waits for a writer's lock before the database is reported unreadable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Page cache of the read-only database connection, as SQLite's `cache_size` (negative: KiB).
const READ_CACHE_KIB: i64 = -256;

/// The OpenCode collector.
pub struct OpenCodeCollector;

/// OpenCode's raw token fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawTokens {
    pub input: u64,
    pub output: u64,
    pub reasoning: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl RawTokens {
    /// The canonical fields (SPEC section 1).
    pub fn counts(&self) -> TokenCounts {
        TokenCounts::new(
            self.input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_write),
            self.cache_read,
            self.cache_write,
            self.output.saturating_add(self.reasoning),
            self.reasoning,
        )
    }

    fn add(&mut self, o: &RawTokens) {
        self.input = self.input.saturating_add(o.input);
        self.output = self.output.saturating_add(o.output);
        self.reasoning = self.reasoning.saturating_add(o.reasoning);
        self.cache_read = self.cache_read.saturating_add(o.cache_read);
        self.cache_write = self.cache_write.saturating_add(o.cache_write);
    }

    /// Parses a `tokens` object; `None` when a field has a wrong type.
    pub fn from_json(t: &Value) -> Option<RawTokens> {
        let obj = t.as_object()?;
        let cache = match obj.get("cache") {
            None | Some(Value::Null) => None,
            Some(c) => Some(c.as_object()?),
        };
        let cache_field = |name: &str| match cache {
            Some(c) => count(c.get(name)),
            None => Some(0),
        };
        Some(RawTokens {
            input: count(obj.get("input"))?,
            output: count(obj.get("output"))?,
            reasoning: count(obj.get("reasoning"))?,
            cache_read: cache_field("read")?,
            cache_write: cache_field("write")?,
        })
    }
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

/// What an OpenCode message JSON (a `message.data`, a `session_message.data` or a legacy file)
/// says about usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: Option<String>,
    pub session: Option<String>,
    /// `role` (v1) or `type` (v2 data) is `assistant`.
    pub assistant: bool,
    /// `time.created`, epoch milliseconds.
    pub created_ms: Option<i64>,
    pub model: Option<String>,
    /// `path.root`, else `path.cwd` (or `path` itself when it is a string).
    pub project: Option<String>,
    /// The message's own tokens (`None` when absent).
    pub tokens: Option<RawTokens>,
}

fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
}

/// The fields of a message JSON that [`MessageInfo`] needs (last key wins, as in `Value`).
#[derive(Default)]
struct MessageFields<'a> {
    id: Option<Any<'a>>,
    session: Option<Any<'a>>,
    role: Option<Any<'a>>,
    kind: Option<Any<'a>>,
    time: Option<Shape<'a, TimeFields<'a>>>,
    model_id: Option<Any<'a>>,
    model: Option<Shape<'a, NamedFields<'a>>>,
    path: Option<Shape<'a, NamedFields<'a>>>,
    tokens: Option<Shape<'a, TokenFields<'a>>>,
}

impl<'de> Fields<'de> for MessageFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "id" => self.id = Some(map.next_value()?),
            "sessionID" => self.session = Some(map.next_value()?),
            "role" => self.role = Some(map.next_value()?),
            "type" => self.kind = Some(map.next_value()?),
            "time" => self.time = Some(map.next_value()?),
            "modelID" => self.model_id = Some(map.next_value()?),
            "model" => self.model = Some(map.next_value()?),
            "path" => self.path = Some(map.next_value()?),
            "tokens" => self.tokens = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

/// `time.created`.
#[derive(Default)]
struct TimeFields<'a> {
    created: Option<Any<'a>>,
}

impl<'de> Fields<'de> for TimeFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == "created" {
            self.created = Some(map.next_value()?);
        } else {
            map.next_value::<Skip>()?;
        }
        Ok(())
    }
}

/// The string fields of `model` (`modelID`, `id`) and `path` (`root`, `cwd`).
#[derive(Default)]
struct NamedFields<'a> {
    model_id: Option<Any<'a>>,
    id: Option<Any<'a>>,
    root: Option<Any<'a>>,
    cwd: Option<Any<'a>>,
}

impl<'de> Fields<'de> for NamedFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "modelID" => self.model_id = Some(map.next_value()?),
            "id" => self.id = Some(map.next_value()?),
            "root" => self.root = Some(map.next_value()?),
            "cwd" => self.cwd = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

/// A `tokens` object: `input`, `output`, `reasoning` and `cache.{read,write}`.
#[derive(Default)]
struct TokenFields<'a> {
    input: Option<Any<'a>>,
    output: Option<Any<'a>>,
    reasoning: Option<Any<'a>>,
    cache: Option<Shape<'a, CacheFields<'a>>>,
}

impl<'de> Fields<'de> for TokenFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "input" => self.input = Some(map.next_value()?),
            "output" => self.output = Some(map.next_value()?),
            "reasoning" => self.reasoning = Some(map.next_value()?),
            "cache" => self.cache = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct CacheFields<'a> {
    read: Option<Any<'a>>,
    write: Option<Any<'a>>,
}

impl<'de> Fields<'de> for CacheFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "read" => self.read = Some(map.next_value()?),
            "write" => self.write = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

impl TokenFields<'_> {
    /// The counts; `None` when a field has a wrong type (as [`RawTokens::from_json`]).
    fn raw(&self) -> Option<RawTokens> {
        let (read, write) = match &self.cache {
            None | Some(Shape::Null) => (None, None),
            Some(Shape::Obj(c)) => (c.read.as_ref(), c.write.as_ref()),
            Some(_) => return None,
        };
        Some(RawTokens {
            input: pick::count(self.input.as_ref())?,
            output: pick::count(self.output.as_ref())?,
            reasoning: pick::count(self.reasoning.as_ref())?,
            cache_read: pick::count(read)?,
            cache_write: pick::count(write)?,
        })
    }
}

/// A `tokens` value: `Ok(None)` when absent or null, an error when it is not a valid object.
fn tokens_of(t: &Option<Shape<'_, TokenFields<'_>>>) -> Result<Option<RawTokens>, SkipReason> {
    match t {
        None | Some(Shape::Null) => Ok(None),
        Some(Shape::Obj(t)) => t.raw().map(Some).ok_or(SkipReason::BadFields),
        Some(_) => Err(SkipReason::BadFields),
    }
}

/// A non-blank string field, owned.
fn non_blank(v: Option<&Any<'_>>) -> Option<String> {
    v.and_then(Any::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
}

/// Parses an OpenCode message JSON. Errors are the reason to skip it.
pub fn parse_message(bytes: &[u8]) -> Result<MessageInfo, SkipReason> {
    let v: Object<MessageFields> =
        serde_json::from_slice(bytes).map_err(|_| crate::lines::unparsable(bytes))?;
    let Object::Is(v) = v else {
        return Err(SkipReason::BadFields);
    };
    // `role` when the key is there (whatever its value), else `type`.
    let role = match &v.role {
        Some(r) => r.as_str(),
        None => v.kind.as_ref().and_then(Any::as_str),
    };
    let created = match &v.time {
        Some(Shape::Obj(t)) => t.created.as_ref(),
        _ => None,
    };
    let created_ms = match created {
        None => None,
        Some(c) if c.is_null() => None,
        Some(c) => match c.number() {
            Some(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            None => return Err(SkipReason::BadFields),
        },
    };
    // v1: top-level `modelID`; newer: `model.{modelID|id}`.
    let model = non_blank(v.model_id.as_ref()).or_else(|| match &v.model {
        Some(Shape::Str(s)) => Some(s.to_string()),
        Some(Shape::Obj(m)) => non_blank(m.model_id.as_ref()).or_else(|| non_blank(m.id.as_ref())),
        _ => None,
    });
    let project = match &v.path {
        Some(Shape::Str(s)) if !s.trim().is_empty() => Some(s.to_string()),
        Some(Shape::Obj(p)) => non_blank(p.root.as_ref()).or_else(|| non_blank(p.cwd.as_ref())),
        _ => None,
    };
    let tokens = tokens_of(&v.tokens)?;
    Ok(MessageInfo {
        id: non_blank(v.id.as_ref()),
        session: non_blank(v.session.as_ref()),
        assistant: role == Some("assistant"),
        created_ms,
        model,
        project,
        tokens,
    })
}

/// The fields of a part JSON that [`parse_step_finish`] needs.
#[derive(Default)]
struct PartFields<'a> {
    kind: Option<Any<'a>>,
    message: Option<Any<'a>>,
    tokens: Option<Shape<'a, TokenFields<'a>>>,
}

impl<'de> Fields<'de> for PartFields<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "type" => self.kind = Some(map.next_value()?),
            "messageID" => self.message = Some(map.next_value()?),
            "tokens" => self.tokens = Some(map.next_value()?),
            _ => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

/// A part JSON: `Ok(Some((messageID, tokens)))` for a `step-finish` part, `Ok(None)` for any
/// other part, an error when it cannot be read.
pub fn parse_step_finish(bytes: &[u8]) -> Result<Option<(Option<String>, RawTokens)>, SkipReason> {
    let v: Object<PartFields> =
        serde_json::from_slice(bytes).map_err(|_| crate::lines::unparsable(bytes))?;
    let Object::Is(v) = v else {
        return Ok(None);
    };
    if v.kind.as_ref().and_then(Any::as_str) != Some("step-finish") {
        return Ok(None);
    }
    let tokens = tokens_of(&v.tokens)?.unwrap_or_default();
    Ok(Some((non_blank(v.message.as_ref()), tokens)))
}

/// The usage event of one assistant message, or `None` when every count is zero or it has no
/// timestamp.
pub fn usage_event(
    message_id: &str,
    session: &str,
    created_ms: Option<i64>,
    model: Option<&str>,
    project: &str,
    tokens: &RawTokens,
) -> Option<UsageEvent> {
    let counts = tokens.counts();
    if counts.is_zero() {
        return None;
    }
    Some(UsageEvent {
        source: Source::OpenCode,
        ts: created_ms?.div_euclid(1000),
        model: normalize_model(model),
        session: session.to_string(),
        project: project.to_string(),
        tokens: counts,
        dedupe_key: stable_hash(&[b"opencode", message_id.as_bytes()]),
        group: None,
        replay: false,
    })
}

impl Collector for OpenCodeCollector {
    fn source(&self) -> Source {
        Source::OpenCode
    }

    fn discover(&self, env: &Env) -> Vec<FoundFile> {
        let root = match env.var("OPENCODE_DATA_DIR") {
            Some(d) => env.expand(d),
            None => match env.var("XDG_DATA_HOME") {
                Some(x) => env.expand(x).join("opencode"),
                None => env.home_join(".local/share/opencode"),
            },
        };
        let mut dbs: Vec<PathBuf> = databases_in(&root);
        if let Some(db) = env.var("OPENCODE_DB") {
            if db != ":memory:" {
                let p = env.expand(db);
                let p = if p.is_absolute() { p } else { root.join(p) };
                if p.is_file() && !dbs.contains(&p) {
                    dbs.push(p);
                }
            }
        }
        let mut out: Vec<FoundFile> = dbs.iter().map(|p| found(p.clone())).collect();
        if dbs.is_empty() {
            out.extend(
                legacy_messages(&root.join("storage"))
                    .into_iter()
                    .map(found),
            );
        }
        out
    }

    fn scan(&self, file: &FoundFile, _offset: u64, state: &str) -> FileScan {
        // Legacy message files are `.json`; anything else is a database (`$OPENCODE_DB` may
        // name a file with any extension).
        if file.path.extension().and_then(|e| e.to_str()) == Some("json") {
            scan_legacy_message(&file.path)
        } else {
            scan_db(&file.path, state)
        }
    }
}

fn found(path: PathBuf) -> FoundFile {
    FoundFile {
        source: Source::OpenCode,
        path,
        whole: true,
    }
}

/// `opencode.db` and `opencode-<channel>.db` in a root.
pub fn databases_in(root: &Path) -> Vec<PathBuf> {
    crate::walk::dir_sorted(root)
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n == "opencode.db" || (n.starts_with("opencode-") && n.ends_with(".db"))
                })
        })
        .collect()
}

/// `storage/message/<sessionID>/*.json`.
fn legacy_messages(storage: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for session in crate::walk::dir_sorted(&storage.join("message")) {
        for f in crate::walk::dir_sorted(&session) {
            if f.is_file() && f.extension().and_then(|e| e.to_str()) == Some("json") {
                out.push(f);
            }
        }
    }
    out
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
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut buf)
        .map_err(|_| SkipReason::Unreadable)?;
    if buf.len() as u64 > MAX_DOCUMENT {
        return Err(SkipReason::TooLong);
    }
    Ok(buf)
}

/// One legacy message file, with its parts from `storage/part/<messageID>/`.
fn scan_legacy_message(path: &Path) -> FileScan {
    let mut scan = FileScan::default();
    let bytes = match read_capped(path) {
        Ok(b) => b,
        Err(reason) => {
            scan.skipped.push(Skipped::file(path, reason));
            return scan;
        }
    };
    scan.offset = bytes.len() as u64;
    scan.bytes_read = bytes.len() as u64;
    let info = match parse_message(&bytes) {
        Ok(i) => i,
        Err(reason) => {
            scan.skipped.push(Skipped::file(path, reason));
            return scan;
        }
    };
    if !info.assistant {
        return scan;
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let id = info.id.clone().unwrap_or_else(|| stem.to_string());
    let session_dir = path.parent();
    let session = info.session.clone().unwrap_or_else(|| {
        session_dir
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    });
    // storage/message/<sessionID>/<file>: the storage folder is three levels up.
    let storage = path.ancestors().nth(3).map(Path::to_path_buf);

    let mut steps: Option<RawTokens> = None;
    if let Some(storage) = &storage {
        for part in crate::walk::dir_sorted(&storage.join("part").join(&id)) {
            if part.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = read_capped(&part).and_then(|b| {
                scan.bytes_read += b.len() as u64;
                parse_step_finish(&b)
            });
            match parsed {
                Ok(Some((_, t))) => steps.get_or_insert_with(RawTokens::default).add(&t),
                Ok(None) => {}
                Err(reason) => scan.skipped.push(Skipped::file(&part, reason)),
            }
        }
    }
    let Some(tokens) = steps.or(info.tokens) else {
        return scan;
    };
    let project = info
        .project
        .clone()
        .or_else(|| {
            storage
                .as_deref()
                .and_then(|s| legacy_session_dir(s, &session))
        })
        .unwrap_or_default();
    if tokens.counts().is_zero() {
        return scan;
    }
    match usage_event(
        &id,
        &session,
        info.created_ms,
        info.model.as_deref(),
        &project,
        &tokens,
    ) {
        Some(e) => scan.events.push(e),
        None => scan
            .skipped
            .push(Skipped::file(path, SkipReason::BadFields)),
    }
    scan
}

/// The `directory` of `storage/session/<projectID>/<sessionID>.json`.
fn legacy_session_dir(storage: &Path, session: &str) -> Option<String> {
    for project in crate::walk::dir_sorted(&storage.join("session")) {
        for name in [format!("{session}.json"), format!("ses_{session}.json")] {
            let p = project.join(name);
            if let Ok(b) = read_capped(&p) {
                if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                    return str_field(&v, "directory");
                }
            }
        }
    }
    None
}

/// The cursor state of a database scan.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct DbState {
    #[serde(default)]
    check: String,
    /// Size and modification time of the database and its `-wal` file when `check` was taken:
    /// every commit changes one of them, so equal stamps mean nothing to read, without opening
    /// the database at all.
    #[serde(default)]
    stamps: String,
}

/// Size and mtime of `path` and of `path-wal`.
fn file_stamps(path: &Path) -> String {
    let stamp = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}:{t}", m.len())
        }
        Err(_) => "-".to_string(),
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    format!("{}/{}", stamp(path), stamp(Path::new(&wal)))
}

/// A `file:` URI for SQLite (`%`, `?` and `#` escaped), read-only.
fn sqlite_uri(path: &Path) -> String {
    let mut s = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => s.push_str("%25"),
            '?' => s.push_str("%3f"),
            '#' => s.push_str("%23"),
            c => s.push(c),
        }
    }
    s.push_str("?mode=ro");
    s
}

fn scan_db(path: &Path, state: &str) -> FileScan {
    let prev: DbState = serde_json::from_str(state).unwrap_or_default();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let stamps = file_stamps(path);
    if !prev.check.is_empty() && prev.stamps == stamps {
        return FileScan {
            offset: size,
            state: state.to_string(),
            ..Default::default()
        };
    }
    match read_db(path, &prev) {
        Ok(None) => FileScan {
            offset: size,
            state: serde_json::to_string(&DbState {
                check: prev.check,
                stamps,
            })
            .unwrap_or_default(),
            ..Default::default()
        },
        Ok(Some((events, skipped, check, read))) => FileScan {
            events,
            offset: size,
            state: serde_json::to_string(&DbState { check, stamps }).unwrap_or_default(),
            skipped,
            bytes_read: read,
            head: None,
        },
        Err(_) => FileScan {
            offset: 0,
            state: state.to_string(),
            skipped: vec![Skipped::file(path, SkipReason::Unreadable)],
            ..Default::default()
        },
    }
}

type DbRead = (Vec<UsageEvent>, Vec<Skipped>, String, u64);

fn bytes_of(v: ValueRef<'_>) -> Option<&[u8]> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(b),
        _ => None,
    }
}

fn str_of(v: ValueRef<'_>) -> Option<&str> {
    bytes_of(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
}

fn text_of(v: ValueRef<'_>) -> Option<String> {
    str_of(v).map(str::to_string)
}

/// The key of a message id in the step totals.
fn step_key(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

fn int_of(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(f) => Some(f as i64),
        _ => None,
    }
}

/// Reads a database; `Ok(None)` when its change check equals `prev`.
fn read_db(path: &Path, prev: &DbState) -> rusqlite::Result<Option<DbRead>> {
    let conn = Connection::open_with_flags(
        sqlite_uri(path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The reads are single passes over each table: a small page cache does as well as the
    // default 2 MB, which would stay allocated while the events are built.
    conn.pragma_update(None, "cache_size", READ_CACHE_KIB)?;
    // One read transaction: the change check and the rows come from the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let tables: HashSet<String> = {
        let mut st = tx.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
        let names = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<HashSet<String>>>()?;
        names
    };
    // A database read before is first asked whether its usage tables changed. One never read
    // has nothing to compare with: its check is gathered while its tables are read anyway (the
    // check alone reads every row of `part`, most of the database).
    let asked = if prev.check.is_empty() {
        None
    } else {
        let check = change_check(&tx, &tables, &Tallies::default())?;
        if check == prev.check {
            return Ok(None);
        }
        Some(check)
    };
    let mut reader = DbReader {
        path,
        conn: &tx,
        tables: &tables,
        events: Vec::new(),
        skipped: Vec::new(),
        read: 0,
        tallies: Tallies::default(),
    };
    // A 2.x schema this reader does not know must not hide the v1 rows.
    let v2_sessions = match reader.read_v2() {
        Ok(s) => s,
        Err(_) => {
            reader.skip(0, SkipReason::BadFields);
            HashSet::new()
        }
    };
    reader.read_v1(&v2_sessions)?;
    let check = match asked {
        Some(check) => check,
        None => change_check(&tx, &tables, &reader.tallies)?,
    };
    let DbReader {
        events,
        mut skipped,
        read,
        ..
    } = reader;
    skipped.sort_by_key(|s| s.line);
    Ok(Some((events, skipped, check, read)))
}

/// Row counts and the latest `time_updated` of the tables that hold usage; a table in
/// `tallies` is not asked again.
fn change_check(
    conn: &Connection,
    tables: &HashSet<String>,
    tallies: &Tallies,
) -> rusqlite::Result<String> {
    let mut parts = Vec::new();
    for t in [
        "message",
        "part",
        "session_message",
        "session",
        "session_v2",
    ] {
        if !tables.contains(t) {
            continue;
        }
        let tallied = match t {
            "message" => tallies.message.as_ref(),
            "part" => tallies.part.as_ref(),
            _ => None,
        };
        if let Some(tally) = tallied {
            parts.push(format!("{t}:{}:{}", tally.rows, tally.latest()));
            continue;
        }
        let q = format!("SELECT count(*), max(time_updated) FROM \"{t}\"");
        let r = conn.query_row(&q, [], |r| {
            Ok(format!(
                "{t}:{}:{}",
                int_of(r.get_ref(0)?).unwrap_or(0),
                int_of(r.get_ref(1)?).unwrap_or(0)
            ))
        });
        match r {
            Ok(s) => parts.push(s),
            // A table without `time_updated`: count rows only.
            Err(_) => {
                let n: i64 =
                    conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))?;
                parts.push(format!("{t}:{n}"));
            }
        }
    }
    Ok(parts.join(","))
}

/// What `SELECT count(*), max(time_updated)` returns for a table (as [`change_check`] words it),
/// counted row by row by a read that goes through the whole table anyway.
#[derive(Default)]
struct Tally {
    rows: i64,
    int: Option<i64>,
    real: Option<f64>,
    /// A text or blob value, which SQL's `max` ranks above every number.
    other: bool,
}

impl Tally {
    fn add(&mut self, v: ValueRef<'_>) {
        self.rows += 1;
        match v {
            ValueRef::Integer(i) => self.int = Some(self.int.map_or(i, |m| m.max(i))),
            ValueRef::Real(f) => self.real = Some(self.real.map_or(f, |m| m.max(f))),
            ValueRef::Text(_) | ValueRef::Blob(_) => self.other = true,
            ValueRef::Null => {}
        }
    }

    /// The latest `time_updated` as the check writes it (0 when it is not a number).
    fn latest(&self) -> i64 {
        if self.other {
            return 0;
        }
        match (self.int, self.real) {
            (Some(i), Some(f)) if f > i as f64 => f as i64,
            (Some(i), _) => i,
            (None, Some(f)) => f as i64,
            (None, None) => 0,
        }
    }
}

/// The tables whose check was counted while reading them.
#[derive(Default)]
struct Tallies {
    message: Option<Tally>,
    part: Option<Tally>,
}

struct DbReader<'a> {
    path: &'a Path,
    conn: &'a Connection,
    tables: &'a HashSet<String>,
    events: Vec<UsageEvent>,
    skipped: Vec<Skipped>,
    read: u64,
    tallies: Tallies,
}

impl<'a> DbReader<'a> {
    /// Adds an event, growing the list by a quarter at a time rather than doubling it: a
    /// database holds tens of thousands of events, and a doubled list is mostly empty.
    fn push_event(&mut self, e: UsageEvent) {
        if self.events.len() == self.events.capacity() {
            let more = (self.events.capacity() / 4).max(1024);
            self.events.reserve_exact(more);
        }
        self.events.push(e);
    }

    fn skip(&mut self, row: u64, reason: SkipReason) {
        self.skipped.push(Skipped {
            path: self.path.to_path_buf(),
            line: row,
            reason,
        });
    }

    /// `with_time` when the table has a `time_updated` column (with a [`Tally`] to count it in),
    /// else `without`.
    fn prepare_tallied(
        &self,
        with_time: &str,
        without: &str,
    ) -> rusqlite::Result<(rusqlite::Statement<'a>, Option<Tally>)> {
        match self.conn.prepare(with_time) {
            Ok(st) => Ok((st, Some(Tally::default()))),
            Err(_) => Ok((self.conn.prepare(without)?, None)),
        }
    }

    /// `id -> directory` of a session table (empty when it has no such columns).
    fn directories(&self, table: &str) -> HashMap<String, String> {
        let mut out = HashMap::new();
        if !self.tables.contains(table) {
            return out;
        }
        let q = format!("SELECT id, directory FROM \"{table}\"");
        let Ok(mut st) = self.conn.prepare(&q) else {
            return out;
        };
        let Ok(mut rows) = st.query([]) else {
            return out;
        };
        while let Ok(Some(r)) = rows.next() {
            if let (Ok(id), Ok(dir)) = (r.get_ref(0), r.get_ref(1)) {
                if let (Some(id), Some(dir)) = (text_of(id), text_of(dir)) {
                    out.insert(id, dir);
                }
            }
        }
        out
    }

    /// The v1 tables `message` and `part`, for sessions not read from v2.
    fn read_v1(&mut self, skip_sessions: &HashSet<String>) -> rusqlite::Result<()> {
        if !self.tables.contains("message") {
            return Ok(());
        }
        // Step totals per message, keyed by a 128-bit hash of the message id rather than the
        // id itself: a third of the memory, and a collision is out of reach.
        let mut steps: HashMap<u128, RawTokens> = HashMap::new();
        if self.tables.contains("part") {
            // Only parts holding `step-finish` go to the JSON parser (the large text and tool
            // parts do not). The search is done here rather than by SQLite's `instr`, which
            // costs several times more; `n` numbers the rows that `instr(data, 'step-finish')
            // > 0` would have returned, as before.
            let finder = memchr::memmem::Finder::new(b"step-finish");
            let (mut st, mut tally) = self.prepare_tallied(
                "SELECT message_id, data, time_updated FROM part ORDER BY rowid",
                "SELECT message_id, data FROM part ORDER BY rowid",
            )?;
            let mut rows = st.query([])?;
            let mut n = 0u64;
            let mut bad = Vec::new();
            while let Some(r) = rows.next()? {
                if let Some(t) = tally.as_mut() {
                    t.add(r.get_ref(2)?);
                }
                let Some(data) = bytes_of(r.get_ref(1)?) else {
                    continue;
                };
                if finder.find(data).is_none() {
                    continue;
                }
                n += 1;
                self.read += data.len() as u64;
                match parse_step_finish(data) {
                    Ok(Some((mid, t))) => {
                        let key = match str_of(r.get_ref(0)?) {
                            Some(m) => step_key(m),
                            None => match mid {
                                Some(m) => step_key(&m),
                                None => continue,
                            },
                        };
                        steps.entry(key).or_default().add(&t);
                    }
                    Ok(None) => {}
                    Err(reason) => bad.push((n, reason)),
                }
            }
            for (n, reason) in bad {
                self.skip(n, reason);
            }
            drop(rows);
            self.tallies.part = tally;
        }
        let dirs = self.directories("session");
        let (mut st, mut tally) = self.prepare_tallied(
            "SELECT id, session_id, time_created, data, time_updated FROM message ORDER BY rowid",
            "SELECT id, session_id, time_created, data FROM message ORDER BY rowid",
        )?;
        let mut rows = st.query([])?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            n += 1;
            if let Some(t) = tally.as_mut() {
                t.add(r.get_ref(4)?);
            }
            let Some(data) = bytes_of(r.get_ref(3)?) else {
                continue;
            };
            self.read += data.len() as u64;
            let info = match parse_message(data) {
                Ok(i) => i,
                Err(reason) => {
                    self.skip(n, reason);
                    continue;
                }
            };
            if !info.assistant {
                continue;
            }
            let Some(id) = text_of(r.get_ref(0)?).or(info.id.clone()) else {
                continue;
            };
            let session = text_of(r.get_ref(1)?)
                .or(info.session.clone())
                .unwrap_or_default();
            if skip_sessions.contains(&session) {
                continue;
            }
            let Some(tokens) = steps.get(&step_key(&id)).copied().or(info.tokens) else {
                continue;
            };
            if tokens.counts().is_zero() {
                continue;
            }
            let created = info.created_ms.or(int_of(r.get_ref(2)?));
            let project = info
                .project
                .clone()
                .or_else(|| dirs.get(&session).cloned())
                .unwrap_or_default();
            match usage_event(
                &id,
                &session,
                created,
                info.model.as_deref(),
                &project,
                &tokens,
            ) {
                Some(e) => self.push_event(e),
                None => self.skip(n, SkipReason::BadFields),
            }
        }
        drop(rows);
        self.tallies.message = tally;
        Ok(())
    }

    /// The OpenCode 2.x tables; returns the sessions read from them.
    fn read_v2(&mut self) -> rusqlite::Result<HashSet<String>> {
        let mut sessions = HashSet::new();
        if !self.tables.contains("session_message") {
            return Ok(sessions);
        }
        struct Row {
            n: u64,
            id: String,
            session: String,
            seq: Option<i64>,
            created: Option<i64>,
            info: MessageInfo,
        }
        let mut st = self.conn.prepare(
            "SELECT id, session_id, type, seq, time_created, data FROM session_message \
             ORDER BY rowid",
        )?;
        let mut rows = st.query([])?;
        let mut usage: Vec<Row> = Vec::new();
        let mut seq_of: HashMap<String, i64> = HashMap::new();
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            n += 1;
            let Some(id) = text_of(r.get_ref(0)?) else {
                continue;
            };
            let Some(session) = text_of(r.get_ref(1)?) else {
                continue;
            };
            sessions.insert(session.clone());
            let seq = int_of(r.get_ref(3)?);
            if let Some(s) = seq {
                seq_of.insert(id.clone(), s);
            }
            let kind = text_of(r.get_ref(2)?);
            if kind.as_deref().is_some_and(|k| k != "assistant") {
                continue;
            }
            let Some(data) = bytes_of(r.get_ref(5)?) else {
                continue;
            };
            self.read += data.len() as u64;
            let mut info = match parse_message(data) {
                Ok(i) => i,
                Err(reason) => {
                    self.skip(n, reason);
                    continue;
                }
            };
            if kind.as_deref() == Some("assistant") {
                info.assistant = true;
            }
            if !info.assistant {
                continue;
            }
            let created = info.created_ms.or(int_of(r.get_ref(4)?));
            usage.push(Row {
                n,
                id,
                session,
                seq,
                created,
                info,
            });
        }
        drop(rows);
        drop(st);

        // Forks: fork session -> (parent session, boundary message id).
        let mut forks: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        let mut dirs: HashMap<String, String> = HashMap::new();
        if self.tables.contains("session_v2") {
            dirs = self.directories("session_v2");
            if let Ok(mut st) = self
                .conn
                .prepare("SELECT id, fork_session_id, fork_boundary FROM session_v2")
            {
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let (Some(id), parent, boundary) = (
                        text_of(r.get_ref(0)?),
                        text_of(r.get_ref(1)?),
                        text_of(r.get_ref(2)?),
                    ) else {
                        continue;
                    };
                    if parent.is_some() || boundary.is_some() {
                        forks.insert(id, (parent, boundary));
                    }
                }
            }
        }
        // (session, seq) -> tokens, to recognise copies when a boundary cannot be resolved.
        let by_seq: HashMap<(&str, i64), Option<RawTokens>> = usage
            .iter()
            .filter_map(|u| Some(((u.session.as_str(), u.seq?), u.info.tokens)))
            .collect();
        let mut events = Vec::new();
        let mut bad = Vec::new();
        for u in &usage {
            if let Some((parent, boundary)) = forks.get(&u.session) {
                let boundary_seq = boundary.as_ref().and_then(|b| seq_of.get(b).copied());
                let copied = match (boundary_seq, u.seq) {
                    (Some(b), Some(s)) => s <= b,
                    (None, Some(s)) => parent
                        .as_deref()
                        .is_some_and(|p| by_seq.get(&(p, s)).is_some_and(|t| *t == u.info.tokens)),
                    _ => false,
                };
                if copied {
                    continue;
                }
            }
            let Some(tokens) = u.info.tokens else {
                continue;
            };
            if tokens.counts().is_zero() {
                continue;
            }
            let project = u
                .info
                .project
                .clone()
                .or_else(|| dirs.get(&u.session).cloned())
                .unwrap_or_default();
            match usage_event(
                &u.id,
                &u.session,
                u.created,
                u.info.model.as_deref(),
                &project,
                &tokens,
            ) {
                Some(e) => events.push(e),
                None => bad.push(u.n),
            }
        }
        self.events.extend(events);
        for n in bad {
            self.skip(n, SkipReason::BadFields);
        }
        Ok(sessions)
    }
}

/// The `Value` readers the typed ones replaced, kept as the reference they must agree with.
#[cfg(test)]
mod reference {
    use super::*;

    fn parse_bytes(bytes: &[u8]) -> Result<Value, SkipReason> {
        serde_json::from_slice(bytes).map_err(|_| crate::lines::unparsable(bytes))
    }

    /// Parses an OpenCode message JSON. Errors are the reason to skip it.
    pub(super) fn parse_message(bytes: &[u8]) -> Result<MessageInfo, SkipReason> {
        let v = parse_bytes(bytes)?;
        message_info(&v)
    }

    fn message_info(v: &Value) -> Result<MessageInfo, SkipReason> {
        if !v.is_object() {
            return Err(SkipReason::BadFields);
        }
        let role = v
            .get("role")
            .or_else(|| v.get("type"))
            .and_then(Value::as_str);
        let created_ms = match v.get("time").and_then(|t| t.get("created")) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(_) => return Err(SkipReason::BadFields),
        };
        // v1: top-level `modelID`; newer: `model.{modelID|id}`.
        let model = str_field(v, "modelID").or_else(|| {
            v.get("model").and_then(|m| match m {
                Value::String(s) => Some(s.clone()),
                Value::Object(_) => str_field(m, "modelID").or_else(|| str_field(m, "id")),
                _ => None,
            })
        });
        let project = match v.get("path") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(p @ Value::Object(_)) => str_field(p, "root").or_else(|| str_field(p, "cwd")),
            _ => None,
        };
        let tokens = match v.get("tokens") {
            None | Some(Value::Null) => None,
            Some(t) => Some(RawTokens::from_json(t).ok_or(SkipReason::BadFields)?),
        };
        Ok(MessageInfo {
            id: str_field(v, "id"),
            session: str_field(v, "sessionID"),
            assistant: role == Some("assistant"),
            created_ms,
            model,
            project,
            tokens,
        })
    }

    /// A part JSON: `Ok(Some((messageID, tokens)))` for a `step-finish` part, `Ok(None)` for any
    /// other part, an error when it cannot be read.
    pub(super) fn parse_step_finish(
        bytes: &[u8],
    ) -> Result<Option<(Option<String>, RawTokens)>, SkipReason> {
        let v = parse_bytes(bytes)?;
        if v.get("type").and_then(Value::as_str) != Some("step-finish") {
            return Ok(None);
        }
        let tokens = match v.get("tokens") {
            None | Some(Value::Null) => RawTokens::default(),
            Some(t) => RawTokens::from_json(t).ok_or(SkipReason::BadFields)?,
        };
        Ok(Some((str_field(&v, "messageID"), tokens)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> usize {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as usize
    }

    /// Object members that exercise every branch of the message and part readers.
    const PIECES: &[&str] = &[
        r#""id":"msg_1""#,
        r#""id":" ""#,
        r#""id":5"#,
        r#""sessionID":"ses_1""#,
        r#""sessionID":null"#,
        r#""role":"assistant""#,
        r#""role":null"#,
        r#""role":"user""#,
        r#""type":"assistant""#,
        r#""type":"step-finish""#,
        r#""type":"text""#,
        r#""t\u0079pe":"step-finish""#,
        r#""time":{"created":1759441061567,"completed":1}"#,
        r#""time":{"created":1.5e12}"#,
        r#""time":{"created":-3}"#,
        r#""time":{"created":9223372036854775808}"#,
        r#""time":{"created":"x"}"#,
        r#""time":{"created":null}"#,
        r#""time":[1]"#,
        r#""time":7"#,
        r#""modelID":"claude-sonnet-4.6""#,
        r#""modelID":"  ""#,
        r#""modelID":3"#,
        r#""model":"gpt-5""#,
        r#""model":"""#,
        r#""model":{"providerID":"p","modelID":"m1"}"#,
        r#""model":{"id":"m2","modelID":" "}"#,
        r#""model":[]"#,
        r#""path":"/p""#,
        r#""path":" ""#,
        r#""path":{"cwd":"/c","root":"/r"}"#,
        r#""path":{"cwd":"/c","root":4}"#,
        r#""path":null"#,
        r#""tokens":{"total":5,"input":2081,"output":1916,"reasoning":0,"cache":{"read":24845,"write":0}}"#,
        r#""tokens":{"input":1,"input":2,"cache":null}"#,
        r#""tokens":{"input":1.0,"cache":{"read":-1}}"#,
        r#""tokens":{"output":"1"}"#,
        r#""tokens":{"cache":5}"#,
        r#""tokens":{"cache":{"write":3e2,"x":[{}]}}"#,
        r#""tokens":null"#,
        r#""tokens":[]"#,
        r#""tokens":"x""#,
        r#""messageID":"msg_1""#,
        r#""messageID":"""#,
        r#""messageID":{"a":1}"#,
        r#""text":"a\\nb \ud83d\ude00""#,
        r#""text":"\udc00""#,
        r#""state":{"output":[[[[]]]]}"#,
    ];

    /// The typed readers give exactly what the `Value` readers gave.
    #[test]
    fn typed_readers_agree_with_the_value_readers() {
        let mut seed = 7u64;
        let (mut infos, mut steps, mut errors) = (0, 0, 0);
        for _ in 0..6000 {
            let mut fields: Vec<&str> = Vec::new();
            match lcg(&mut seed) % 3 {
                0 => fields.extend([PIECES[0], PIECES[5], PIECES[12], PIECES[33]]),
                1 => fields.extend([PIECES[9], PIECES[33], PIECES[42]]),
                _ => {}
            }
            let n = lcg(&mut seed) % 4;
            fields.extend((0..n).map(|_| PIECES[lcg(&mut seed) % PIECES.len()]));
            let mut text = format!("{{{}}}", fields.join(",")).into_bytes();
            match lcg(&mut seed) % 25 {
                0 => text.truncate(text.len() / 2),
                1 => text = [b"[", &text[..], b"]"].concat(),
                2 => text.extend_from_slice(b"\xff"),
                3 => text = b"null".to_vec(),
                _ => {}
            }
            let what = String::from_utf8_lossy(&text).into_owned();
            let m = parse_message(&text);
            assert_eq!(m, reference::parse_message(&text), "{what}");
            let p = parse_step_finish(&text);
            assert_eq!(p, reference::parse_step_finish(&text), "{what}");
            infos += usize::from(m.is_ok_and(|m| m.tokens.is_some()));
            steps += usize::from(matches!(p, Ok(Some(_))));
            errors += usize::from(p.is_err());
        }
        assert!(
            infos > 1000 && steps > 1000 && errors > 500,
            "{infos} {steps} {errors}"
        );
    }

    /// The parts filter (a byte search in Rust instead of SQLite's `instr`) keeps the same
    /// parts and numbers skipped parts as the `instr` query numbered its rows.
    #[test]
    fn parts_filter_matches_instr_and_its_row_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opencode.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT, time_created INTEGER,
                 time_updated INTEGER, data);
             CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT, session_id TEXT,
                 time_created INTEGER, time_updated INTEGER, data);",
        )
        .unwrap();
        let step = |input: u64| {
            format!(r#"{{"type":"step-finish","tokens":{{"input":{input},"output":1}}}}"#)
        };
        let parts: Vec<rusqlite::types::Value> = vec![
            "{\"type\":\"text\",\"text\":\"no marker\"}"
                .to_string()
                .into(),
            step(10).into(),
            rusqlite::types::Value::Null,
            "{\"type\":\"step-finish\",\"tokens\":{\"input\":\"bad\"}}"
                .to_string()
                .into(),
            rusqlite::types::Value::Integer(5),
            "{\"type\":\"text\",\"text\":\"mentions step-finish\"}"
                .to_string()
                .into(),
            b"{\"type\":\"step-finish\",\"tokens\":{\"input\":100}}"
                .to_vec()
                .into(),
            "{\"type\":\"text\",\"text\":\"\u{e9}\"}".to_string().into(),
            b"{\"type\":\"step-finish\xff\"}".to_vec().into(),
            "step-finish, not json".to_string().into(),
            step(1000).into(),
        ];
        for (i, d) in parts.iter().enumerate() {
            c.execute(
                "INSERT INTO part VALUES (?1, 'msg_1', 'ses_1', 0, 0, ?2)",
                rusqlite::params![format!("prt_{i}"), d],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO message VALUES ('msg_1', 'ses_1', 0, 0, ?1)",
            [r#"{"role":"assistant","time":{"created":1759441061567},"tokens":{"input":1}}"#],
        )
        .unwrap();
        drop(c);

        // What the `instr` query gave: its rows, numbered from 1, through the same parser.
        let c = Connection::open(&path).unwrap();
        let mut st = c
            .prepare("SELECT data FROM part WHERE instr(data, 'step-finish') > 0 ORDER BY rowid")
            .unwrap();
        let mut rows = st.query([]).unwrap();
        let (mut n, mut expected_skips, mut input) = (0u64, Vec::new(), 0u64);
        while let Some(r) = rows.next().unwrap() {
            n += 1;
            match parse_step_finish(bytes_of(r.get_ref(0).unwrap()).unwrap()) {
                Ok(Some((_, t))) => input += t.input,
                Ok(None) => {}
                Err(reason) => expected_skips.push((n, reason)),
            }
        }
        assert_eq!(input, 1110);
        assert_eq!(expected_skips.len(), 3);

        let scan = scan_db(&path, "");
        let skips: Vec<(u64, SkipReason)> =
            scan.skipped.iter().map(|s| (s.line, s.reason)).collect();
        assert_eq!(skips, expected_skips);
        assert_eq!(scan.events.len(), 1);
        assert_eq!(scan.events[0].tokens.input_tokens, 1110);
    }
}
