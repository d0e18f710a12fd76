//! Qwen Code chats: `<root>/projects/<sanitized-cwd>/chats/<sessionId>.jsonl` (root `~/.qwen`,
//! or the comma list in `QWEN_DATA_DIR`), a Claude-style envelope, one JSON object a line.
//!
//! Usage sits on `type == "assistant"` lines under `usageMetadata` (Gemini field names). The same
//! call is also logged as a `system`/`ui_telemetry` line; only the assistant line is counted.
//! Each event is keyed by `(sessionId, uuid)`, so a line read twice (or rewritten with the same
//! uuid and more usage) counts once. Stateless per line: the cursor state is always empty.

use crate::{stable_hash, Collector, Env, FileScan, FoundFile, SkipReason, UsageEvent};
use memchr::memmem;
use serde::Deserialize;
use std::borrow::Cow;

use std::path::Path;
use std::sync::OnceLock;
use tokenledger_core::{normalize_model, parse_timestamp, Source, TokenCounts};

pub struct QwenCollector;

impl Collector for QwenCollector {
    fn source(&self) -> Source {
        Source::Qwen
    }

    fn discover(&self, env: &Env) -> Vec<FoundFile> {
        let roots = env
            .dir_list("QWEN_DATA_DIR")
            .unwrap_or_else(|| vec![env.home_join(".qwen")]);
        let mut files = Vec::new();
        for root in roots {
            let mut found = Vec::new();
            for project in crate::walk::dir_sorted(&root.join("projects")) {
                if !project.is_dir() {
                    continue;
                }
                for path in crate::walk::dir_sorted(&project.join("chats")) {
                    if path.extension().is_some_and(|e| e == "jsonl") && path.is_file() {
                        found.push(path);
                    }
                }
            }
            found.sort();
            files.extend(found.into_iter().map(|path| FoundFile {
                source: Source::Qwen,
                path,
                whole: false,
            }));
        }
        files.dedup();
        files
    }

    fn scan(&self, file: &FoundFile, offset: u64, _state: &str) -> FileScan {
        let ctx = FileContext::new(&file.path);
        // Streamed blocks of one response share a key: keep only the largest within this scan.
        crate::lines::scan_stateless(&file.path, offset, |line| parse_line(line, &ctx))
    }
}

/// What a file's path says, used when a line lacks the field.
struct FileContext {
    /// The file stem: the session id of `<sessionId>.jsonl`.
    stem: String,
    /// The project folder: the parent of `chats/`.
    project: String,
}

impl FileContext {
    fn new(path: &Path) -> Self {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = path.parent();
        let project_dir = match parent {
            Some(p) if p.file_name().is_some_and(|n| n == "chats") => p.parent(),
            other => other,
        };
        let project = project_dir
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        FileContext { stem, project }
    }
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "sessionId", borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    uuid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cwd: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(rename = "usageMetadata")]
    usage: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
}

impl UsageMetadata {
    /// The Gemini mapping (SPEC section 1): the prompt count includes cache reads; thoughts are
    /// a separate count that the canonical output includes.
    fn tokens(&self) -> TokenCounts {
        let input = self
            .prompt_token_count
            .unwrap_or(0)
            .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0));
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        let output = self
            .candidates_token_count
            .unwrap_or(0)
            .saturating_add(thoughts);
        // Cache reads are part of the prompt; a larger count is a malformed record.
        let cached = self.cached_content_token_count.unwrap_or(0).min(input);
        TokenCounts::new(input, cached, 0, output, thoughts)
    }
}

fn finders() -> &'static (memmem::Finder<'static>, memmem::Finder<'static>) {
    static FINDERS: OnceLock<(memmem::Finder<'static>, memmem::Finder<'static>)> = OnceLock::new();
    FINDERS.get_or_init(|| {
        (
            memmem::Finder::new(b"\"usageMetadata\""),
            memmem::Finder::new(b"\"assistant\""),
        )
    })
}

/// Parses one line: `Ok(None)` for lines without usage, `Err` for usage-looking lines that
/// cannot be read.
fn parse_line(line: &[u8], ctx: &FileContext) -> Result<Option<UsageEvent>, SkipReason> {
    let (usage_finder, assistant_finder) = finders();
    if usage_finder.find(line).is_none() || assistant_finder.find(line).is_none() {
        return match crate::lines::malformed(line) {
            Some(reason) => Err(reason),
            None => Ok(None),
        };
    }
    let parsed: Line = crate::lines::parse_json(line)?;
    if parsed.kind.as_deref() != Some("assistant") {
        return Ok(None);
    }
    let Some(usage) = parsed.usage else {
        return Ok(None);
    };
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
    let line_id = non_empty(parsed.uuid.as_deref())
        .or(parsed.timestamp.as_deref())
        .unwrap_or_default();
    Ok(Some(UsageEvent {
        source: Source::Qwen,
        ts,
        model: normalize_model(parsed.model.as_deref()),
        session: session.to_string(),
        project: project.to_string(),
        tokens,
        dedupe_key: stable_hash(&[b"qwen", session.as_bytes(), line_id.as_bytes()]),
        group: None,
        replay: false,
    }))
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_from_path() {
        let c = FileContext::new(Path::new("/h/.qwen/projects/-tmp-p/chats/s1.jsonl"));
        assert_eq!(c.stem, "s1");
        assert_eq!(c.project, "-tmp-p");
    }

    #[test]
    fn telemetry_line_is_not_counted() {
        let line = br#"{"type":"system","subtype":"ui_telemetry","sessionId":"s","timestamp":"2026-01-01T00:00:00Z","systemPayload":{"uiEvent":{"event.name":"qwen-code.api_response","input_token_count":5}},"usageMetadata":{"promptTokenCount":5},"role":"assistant"}"#;
        let c = FileContext::new(Path::new("/p/chats/s.jsonl"));
        assert_eq!(parse_line(line, &c), Ok(None));
    }
}
