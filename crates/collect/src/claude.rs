//! Claude Code transcripts: `<root>/projects/<slug>/**/*.jsonl`, one JSON object a line.
//!
//! Usage sits on `type == "assistant"` lines under `message.usage`. Claude Code writes one line
//! per content block and repeats the usage on each (with `output_tokens` often an early streaming
//! snapshot), sidechain `/btw` replays copy parent messages under a new `requestId`, and resumed
//! sessions copy history into other files. So every event carries a content-derived
//! [`UsageEvent::dedupe_key`] (`message.id` + `requestId`), a replay `group` (`message.id`) and
//! `replay = isSidechain`; the ledger keeps the largest event per key and drops replays. The
//! parser is stateless per line, so the cursor state is always empty.

#[path = "claude_fast.rs"]
mod fast;

use crate::walk::Walk;
use crate::{
    stable_hash, Collector, DirCache, Env, FileMeta, FileScan, FoundFile, SkipReason, UsageEvent,
};
use memchr::memmem;
use serde::Deserialize;
use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tokenledger_core::{normalize_model, parse_timestamp, Source, TokenCounts};

/// The model Claude Code writes on placeholder messages for API errors.
const SYNTHETIC_MODEL: &str = "<synthetic>";

/// Directory levels walked below `projects/` (slug, session, `subagents`, `workflows`, run id,
/// with room to spare); bounds the walk on odd trees.
const MAX_DEPTH: usize = 8;

pub struct ClaudeCollector;

impl Collector for ClaudeCollector {
    fn source(&self) -> Source {
        Source::Claude
    }

    /// Sorted by path (the walk's own order is not fixed).
    fn discover(&self, env: &Env) -> Vec<FoundFile> {
        let mut files: Vec<FoundFile> = self
            .discover_with_meta(env, &DirCache::none())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        files
    }

    fn discover_with_meta(
        &self,
        env: &Env,
        listings: &DirCache,
    ) -> Vec<(FoundFile, Option<FileMeta>)> {
        let mut files = Vec::new();
        let mut seen_roots: Vec<PathBuf> = Vec::new();
        let walk = Walk {
            max_depth: MAX_DEPTH,
            // `<name>.jsonl` (a file named only `.jsonl` has no extension).
            accept: &|name| {
                let b = name.as_encoded_bytes();
                b.len() > ".jsonl".len() && b.ends_with(b".jsonl")
            },
            links_to_files_only: true,
            listings,
            source: Source::Claude,
        };
        for root in roots(env) {
            let projects = root.join("projects");
            // `~/.claude` is sometimes a link to `~/.config/claude`: walk each real root once.
            let real = fs::canonicalize(&projects).unwrap_or_else(|_| projects.clone());
            if seen_roots.contains(&real) {
                continue;
            }
            seen_roots.push(real);
            let mut found = walk.run_with(&projects, &|path, meta| {
                let file = FoundFile {
                    source: Source::Claude,
                    path,
                    whole: false,
                };
                (file, meta)
            });
            if files.is_empty() {
                files = found;
            } else {
                files.append(&mut found);
            }
        }
        files
    }

    fn scan(&self, file: &FoundFile, offset: u64, _state: &str) -> FileScan {
        let ctx = FileContext::new(&file.path);
        // Streamed blocks of one response share a key: keep only the largest within this scan.
        crate::lines::scan_stateless(&file.path, offset, |line| parse_line(line, &ctx))
    }
}

/// The configuration roots: `$CLAUDE_CONFIG_DIR` (a comma list), else both default locations.
fn roots(env: &Env) -> Vec<PathBuf> {
    env.dir_list("CLAUDE_CONFIG_DIR").unwrap_or_else(|| {
        vec![
            env.home_join(".config").join("claude"),
            env.home_join(".claude"),
        ]
    })
}

/// What a file's path says, used when a line lacks the field.
struct FileContext {
    /// The file stem: the session id of `<sessionId>.jsonl`.
    stem: String,
    /// The project folder (the slug directly under `projects/`).
    project: String,
}

impl FileContext {
    fn new(path: &Path) -> Self {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The slug directly under the last `projects/` (a file directly in `projects/` has none).
        let components: Vec<_> = path.components().map(|c| c.as_os_str()).collect();
        let slug = components
            .iter()
            .rposition(|c| *c == "projects")
            .filter(|i| i + 2 < components.len())
            .map(|i| components[i + 1]);
        let project = slug
            .or_else(|| path.parent().and_then(Path::file_name))
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        FileContext { stem, project }
    }
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "sessionId", borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cwd: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uuid: Option<Cow<'a, str>>,
    #[serde(rename = "requestId", borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(rename = "isSidechain")]
    is_sidechain: Option<bool>,
    #[serde(rename = "isApiErrorMessage")]
    is_api_error: Option<bool>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
}

/// `message`; its `content` (the bulk of the line) is skipped without being built.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<Usage>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

fn finders() -> &'static (memmem::Finder<'static>, memmem::Finder<'static>) {
    static FINDERS: OnceLock<(memmem::Finder<'static>, memmem::Finder<'static>)> = OnceLock::new();
    FINDERS.get_or_init(|| {
        (
            memmem::Finder::new(b"\"usage\""),
            memmem::Finder::new(b"\"assistant\""),
        )
    })
}

/// Parses one line: `Ok(None)` for lines without usage (most lines), `Err` for lines that look
/// like usage but cannot be read.
fn parse_line(line: &[u8], ctx: &FileContext) -> Result<Option<UsageEvent>, SkipReason> {
    // Most bytes are user/tool lines without usage: rule them out without parsing.
    let (usage_finder, assistant_finder) = finders();
    if usage_finder.find(line).is_none() || assistant_finder.find(line).is_none() {
        return match crate::lines::malformed(line) {
            Some(reason) => Err(reason),
            None => Ok(None),
        };
    }
    // Most usage lines take the fast path; serde reads the rest (and judges invalid ones).
    let parsed: Line = match std::str::from_utf8(line).ok().and_then(fast::line) {
        Some(l) => l,
        None => crate::lines::parse_json(line)?,
    };
    if parsed.kind.as_deref() != Some("assistant") || parsed.is_api_error == Some(true) {
        return Ok(None);
    }
    let Some(message) = parsed.message else {
        return Ok(None);
    };
    let Some(usage) = message.usage else {
        return Ok(None);
    };
    if message.model.as_deref().map(str::trim) == Some(SYNTHETIC_MODEL) {
        return Ok(None);
    }
    let tokens = usage.tokens();
    if tokens.is_zero() {
        return Ok(None);
    }
    let ts = parsed
        .timestamp
        .as_deref()
        .and_then(parse_timestamp)
        .ok_or(SkipReason::BadFields)?;
    let session = non_empty(parsed.session_id.as_deref()).unwrap_or(&ctx.stem);
    let project = non_empty(parsed.cwd.as_deref()).unwrap_or(&ctx.project);
    let message_id = non_empty(message.id.as_deref());
    let request_id = non_empty(parsed.request_id.as_deref());
    let (dedupe_key, group) = match message_id {
        Some(id) => {
            let key = match request_id {
                Some(req) => stable_hash(&[b"claude", id.as_bytes(), req.as_bytes()]),
                None => stable_hash(&[b"claude", id.as_bytes()]),
            };
            (key, Some(stable_hash(&[b"claude-msg", id.as_bytes()])))
        }
        None => {
            // No response id: the line itself is the identity, so it still counts once.
            let line_id = non_empty(parsed.uuid.as_deref())
                .or(parsed.timestamp.as_deref())
                .unwrap_or_default();
            let key = stable_hash(&[b"claude-line", session.as_bytes(), line_id.as_bytes()]);
            (key, None)
        }
    };
    Ok(Some(UsageEvent {
        source: Source::Claude,
        ts,
        model: normalize_model(message.model.as_deref()),
        session: session.to_string(),
        project: project.to_string(),
        tokens,
        dedupe_key,
        group,
        replay: parsed.is_sidechain == Some(true),
    }))
}

impl Usage {
    /// SPEC section 1: Claude's input excludes cache reads and writes, so they are added in.
    fn tokens(&self) -> TokenCounts {
        let uncached = self.input_tokens.unwrap_or(0);
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_creation = self.cache_creation_input_tokens.unwrap_or_else(|| {
            self.cache_creation.as_ref().map_or(0, |c| {
                c.ephemeral_5m_input_tokens
                    .unwrap_or(0)
                    .saturating_add(c.ephemeral_1h_input_tokens.unwrap_or(0))
            })
        });
        let input = uncached
            .saturating_add(cache_read)
            .saturating_add(cache_creation);
        TokenCounts::new(
            input,
            cache_read,
            cache_creation,
            self.output_tokens.unwrap_or(0),
            0,
        )
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod fast_tests {
    //! The fast path against serde: when it answers, serde reads the same; on plain lines of
    //! Claude Code's shape it does answer.
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, with escapes, unicode, numbers of every form and nesting.
    fn json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            "[a-z \\n\\t\"\\\\é/\u{1}]{0,30}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec(("[a-z]{1,8}", inner), 0..5).prop_map(|v| {
                    let m: Vec<String> = v.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", m.join(","))
                }),
            ]
        })
    }

    fn wanted_str() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9_:.-]{0,20}".prop_map(|s| format!("\"{s}\"")),
            1 => Just("null".to_string()),
            1 => Just("\"a\\nb\"".to_string()),
            1 => Just("7".to_string()),
        ]
    }

    /// A line: the fields the parser reads (some missing, some odd), others around them, in any
    /// order, possibly with a duplicate, a corruption, or odd whitespace.
    fn line() -> impl Strategy<Value = (String, bool)> {
        let usage = prop_oneof![
            Just(
                "{\"input_tokens\":3,\"output_tokens\":9,\"cache_read_input_tokens\":100}"
                    .to_string()
            ),
            Just(
                "{\"input_tokens\":3,\"cache_creation\":{\"ephemeral_5m_input_tokens\":2}}"
                    .to_string()
            ),
            Just("null".to_string()),
            Just("{\"input_tokens\":-1}".to_string()),
            Just("{\"input_tokens\":1.5}".to_string()),
        ];
        let message =
            (wanted_str(), wanted_str(), usage, json()).prop_map(|(id, model, usage, content)| {
                format!(
                    "{{\"id\":{id},\"model\":{model},\"content\":[{content}],\"usage\":{usage}}}"
                )
            });
        let bool_ = prop_oneof![Just("true"), Just("false"), Just("null"), Just("1")];
        (
            proptest::collection::vec(wanted_str(), 6),
            (bool_.clone(), bool_),
            message,
            proptest::collection::vec(("[a-zA-Z]{1,10}", json()), 0..4),
            any::<u64>(),
            0u8..10,
        )
            .prop_map(|(strs, (side, err), message, extra, seed, odd)| {
                let names = ["type", "sessionId", "cwd", "timestamp", "uuid", "requestId"];
                let mut members: Vec<String> = names
                    .iter()
                    .zip(&strs)
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                members.push(format!("\"isSidechain\":{side}"));
                members.push(format!("\"isApiErrorMessage\":{err}"));
                members.push(format!("\"message\":{message}"));
                members.extend(extra.iter().map(|(k, v)| format!("\"{k}\":{v}")));
                // A deterministic shuffle from the seed.
                let n = members.len();
                for i in (1..n).rev() {
                    members.swap(
                        i,
                        (seed.wrapping_mul(i as u64 + 7) % (i as u64 + 1)) as usize,
                    );
                }
                let mut text = format!("{{{}}}", members.join(","));
                let plain = odd >= 3;
                match odd {
                    0 => {
                        let mut at = text.len() / 2;
                        while !text.is_char_boundary(at) {
                            at += 1;
                        }
                        text.insert(at, ',')
                    }
                    1 => text = format!("{text}x"),
                    2 => text = text.replacen('{', "{\"type\":\"dup\",", 1),
                    _ => {}
                }
                (text, plain)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn fast_path_reads_what_serde_reads((text, _plain) in line()) {
            let serde: Result<Line, _> = serde_json::from_str(&text);
            if let Some(fast) = fast::line(&text) {
                prop_assert!(serde.is_ok(), "fast path read a line serde rejects: {text}");
                prop_assert_eq!(fast, serde.unwrap());
            }
        }
    }

    #[test]
    fn fast_path_answers_on_plain_claude_lines() {
        let line = r#"{"parentUuid":null,"isSidechain":false,"userType":"external","cwd":"/home/dev/app","sessionId":"s-1","version":"2.1.0","uuid":"u-1","timestamp":"2025-10-05T03:05:25.580Z","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-1","content":[{"type":"text","text":"a \"quoted\" line\nand \u00e9 more"}],"stop_reason":null,"usage":{"input_tokens":6,"cache_creation_input_tokens":11,"cache_read_input_tokens":24,"output_tokens":23,"service_tier":"standard"}},"requestId":"req_1","type":"assistant"}"#;
        let fast = fast::line(line).expect("the fast path reads a plain line");
        let serde: Line = serde_json::from_str(line).unwrap();
        assert_eq!(fast, serde);
        assert_eq!(fast.message.unwrap().usage.unwrap().output_tokens, Some(23));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> FileContext {
        FileContext::new(Path::new("/h/.claude/projects/-tmp-p/sess-1.jsonl"))
    }

    #[test]
    fn context_from_path() {
        let c = ctx();
        assert_eq!(c.stem, "sess-1");
        assert_eq!(c.project, "-tmp-p");
        let c = FileContext::new(Path::new(
            "/h/.claude/projects/-tmp-p/s1/subagents/workflows/r1/agent-x.jsonl",
        ));
        assert_eq!(c.stem, "agent-x");
        assert_eq!(c.project, "-tmp-p");
    }

    #[test]
    fn skips_lines_without_usage_before_parsing() {
        // No usage marker: not parsed, only checked for the shape of a JSON object line.
        assert_eq!(parse_line(b"{\"type\":\"user\",\"x\":1}", &ctx()), Ok(None));
        assert_eq!(
            parse_line(b"{\"type\":\"user\" garbage", &ctx()),
            Err(SkipReason::InvalidJson)
        );
        assert_eq!(
            parse_line(b"{\"t\":\"\xff\"}", &ctx()),
            Err(SkipReason::InvalidUtf8)
        );
        assert_eq!(
            parse_line(b"{\"type\":\"assistant\",\"usage\" garbage", &ctx()),
            Err(SkipReason::InvalidJson)
        );
    }

    #[test]
    fn escaped_strings_are_read() {
        let line = br#"{"type":"assistant","sessionId":"s\u0031","cwd":"/a\"b","timestamp":"2025-01-01T00:00:00Z","message":{"id":"m","model":"claude-x","usage":{"input_tokens":1,"output_tokens":2}}}"#;
        let ev = parse_line(line, &ctx()).unwrap().unwrap();
        assert_eq!(ev.session, "s1");
        assert_eq!(ev.project, "/a\"b");
        assert_eq!(ev.tokens.total_tokens, 3);
    }
}
