//! Claude Code collector: discovery, token mapping and every double-counting trap of
//! agent-log-formats.md section 3, checked with exact totals after the ledger's merge rule.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tokenledger_collect::claude::ClaudeCollector;
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, UsageEvent};
use tokenledger_core::{parse_timestamp, Source, TokenCounts};

// ---------------------------------------------------------------------------------------------
// helpers

/// The ledger's merge rule, applied to the events of several scans: keep the largest
/// `total_tokens` per `dedupe_key` (the first on ties), then drop a replay event when a
/// non-replay event of the same group exists under another key.
fn merge(scans: &[&FileScan]) -> Vec<UsageEvent> {
    let mut order: Vec<u64> = Vec::new();
    let mut best: HashMap<u64, UsageEvent> = HashMap::new();
    for ev in scans.iter().flat_map(|s| s.events.iter()) {
        match best.get(&ev.dedupe_key) {
            Some(old) if old.tokens.total_tokens >= ev.tokens.total_tokens => {}
            Some(_) => {
                best.insert(ev.dedupe_key, ev.clone());
            }
            None => {
                order.push(ev.dedupe_key);
                best.insert(ev.dedupe_key, ev.clone());
            }
        }
    }
    let kept: Vec<UsageEvent> = order.iter().map(|k| best[k].clone()).collect();
    kept.iter()
        .filter(|ev| {
            !ev.replay
                || !kept.iter().any(|other| {
                    !other.replay
                        && other.group.is_some()
                        && other.group == ev.group
                        && other.dedupe_key != ev.dedupe_key
                })
        })
        .cloned()
        .collect()
}

fn total(events: &[UsageEvent]) -> TokenCounts {
    events.iter().map(|e| e.tokens).sum()
}

fn found(path: &Path) -> FoundFile {
    FoundFile {
        source: Source::Claude,
        path: path.to_path_buf(),
        whole: false,
    }
}

fn scan(path: &Path) -> FileScan {
    ClaudeCollector.scan(&found(path), 0, "")
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// An assistant line in Claude Code's shape.
struct Line<'a> {
    session: &'a str,
    uuid: &'a str,
    ts: &'a str,
    msg: Option<&'a str>,
    req: Option<&'a str>,
    model: &'a str,
    sidechain: bool,
    /// `input, output, cache_read, cache_creation`
    usage: [u64; 4],
}

impl Default for Line<'_> {
    fn default() -> Self {
        Line {
            session: "ses-1",
            uuid: "u-1",
            ts: "2025-12-16T00:10:00.000Z",
            msg: Some("msg_1"),
            req: Some("req_1"),
            model: "claude-opus-4-5",
            sidechain: false,
            usage: [0; 4],
        }
    }
}

impl Line<'_> {
    fn json(&self) -> String {
        let mut message = serde_json::json!({
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": "some reply text with \"quotes\" and \u{e9}"}],
            "usage": {
                "input_tokens": self.usage[0],
                "output_tokens": self.usage[1],
                "cache_read_input_tokens": self.usage[2],
                "cache_creation_input_tokens": self.usage[3],
                "service_tier": "standard"
            }
        });
        if let Some(m) = self.msg {
            message["id"] = m.into();
        }
        let mut line = serde_json::json!({
            "parentUuid": null,
            "isSidechain": self.sidechain,
            "userType": "external",
            "cwd": "/home/dev/proj",
            "sessionId": self.session,
            "version": "2.0.51",
            "type": "assistant",
            "message": message,
            "uuid": self.uuid,
            "timestamp": self.ts
        });
        if let Some(r) = self.req {
            line["requestId"] = r.into();
        }
        line.to_string()
    }
}

fn lines(ls: &[Line]) -> String {
    ls.iter().map(|l| l.json() + "\n").collect()
}

fn user_line(session: &str) -> String {
    serde_json::json!({
        "type": "user",
        "sessionId": session,
        "cwd": "/home/dev/proj",
        "timestamp": "2025-12-16T00:09:00.000Z",
        "message": {"role": "user", "content": [{"type": "tool_result", "content": "x".repeat(5000)}]},
        "uuid": "user-1"
    })
    .to_string()
        + "\n"
}

fn shared_fixtures() -> Option<PathBuf> {
    let base = match std::env::var_os("TOKENLEDGER_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let dir = base.join("fixtures/agent-sessions/claude");
    dir.is_dir().then_some(dir)
}

fn env_with(home: &Path, vars: &[(&str, String)]) -> Env {
    Env {
        home: home.to_path_buf(),
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// token mapping and streamed blocks

#[test]
fn maps_fields_per_spec() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-home-dev-proj/ses-1.jsonl");
    write(
        &p,
        lines(&[Line {
            usage: [3, 250, 104_929, 386],
            ..Default::default()
        }]),
    );
    let s = scan(&p);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(s.events.len(), 1);
    let ev = &s.events[0];
    assert_eq!(ev.source, Source::Claude);
    assert_eq!(
        ev.tokens,
        TokenCounts {
            input_tokens: 3 + 104_929 + 386,
            cached_input_tokens: 104_929,
            cache_creation_input_tokens: 386,
            output_tokens: 250,
            reasoning_output_tokens: 0,
            total_tokens: 3 + 104_929 + 386 + 250,
        }
    );
    assert_eq!(ev.ts, parse_timestamp("2025-12-16T00:10:00Z").unwrap());
    assert_eq!(ev.model, "claude-opus-4-5");
    assert_eq!(ev.session, "ses-1");
    assert_eq!(ev.project, "/home/dev/proj");
    assert!(!ev.replay);
    assert!(ev.group.is_some());
    assert_eq!(s.offset, fs::metadata(&p).unwrap().len());
    assert!(s.state.is_empty());
}

#[test]
fn streamed_blocks_keep_the_largest_including_a_larger_final_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    // One response written as thinking, text and tool_use blocks: early snapshots say output 1,
    // the last line carries the final 180. A second response's largest line comes first.
    let text = lines(&[
        Line {
            uuid: "a1",
            usage: [5, 1, 1000, 200],
            ..Default::default()
        },
        Line {
            uuid: "a2",
            usage: [5, 1, 1000, 200],
            ..Default::default()
        },
        Line {
            uuid: "a3",
            usage: [5, 180, 1000, 200],
            ..Default::default()
        },
        Line {
            uuid: "b1",
            msg: Some("msg_2"),
            req: Some("req_2"),
            usage: [2, 40, 1205, 0],
            ..Default::default()
        },
        Line {
            uuid: "b2",
            msg: Some("msg_2"),
            req: Some("req_2"),
            usage: [2, 1, 1205, 0],
            ..Default::default()
        },
    ]);
    write(&p, &(user_line("ses-1") + &text));
    let s = scan(&p);
    // Within one scan only the largest line of each response is emitted.
    assert_eq!(s.events.len(), 2);
    let merged = merge(&[&s]);
    assert_eq!(
        total(&merged),
        TokenCounts::new(1205 + 1207, 1000 + 1205, 200, 180 + 40, 0)
    );
    assert_eq!(total(&merged).total_tokens, 2412 + 220);
    // Read again (a second sync from offset 0): nothing doubles.
    let again = scan(&p);
    assert_eq!(total(&merge(&[&s, &again])), total(&merged));
}

#[test]
fn streamed_blocks_split_across_two_scans_keep_the_final_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    let first = lines(&[Line {
        uuid: "a1",
        usage: [5, 1, 100, 0],
        ..Default::default()
    }]);
    write(&p, &first);
    let s1 = scan(&p);
    assert_eq!(s1.offset, first.len() as u64);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(
        lines(&[Line {
            uuid: "a2",
            usage: [5, 77, 100, 0],
            ..Default::default()
        }])
        .as_bytes(),
    )
    .unwrap();
    drop(f);
    let s2 = ClaudeCollector.scan(&found(&p), s1.offset, &s1.state);
    assert_eq!(s2.events.len(), 1);
    assert_eq!(
        total(&merge(&[&s1, &s2])),
        TokenCounts::new(105, 100, 0, 77, 0)
    );
}

#[test]
fn missing_request_id_falls_back_to_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    write(
        &p,
        lines(&[
            Line {
                uuid: "a1",
                req: None,
                usage: [10, 2, 0, 0],
                ..Default::default()
            },
            Line {
                uuid: "a2",
                req: None,
                usage: [10, 9, 0, 0],
                ..Default::default()
            },
            Line {
                uuid: "b1",
                msg: Some("msg_2"),
                req: None,
                usage: [20, 3, 0, 0],
                ..Default::default()
            },
        ]),
    );
    let s = scan(&p);
    assert_eq!(s.events.len(), 2);
    assert_eq!(total(&merge(&[&s])), TokenCounts::new(30, 0, 0, 12, 0));
}

#[test]
fn lines_without_message_id_count_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    write(
        &p,
        lines(&[
            Line {
                uuid: "a1",
                msg: None,
                req: None,
                usage: [10, 2, 0, 0],
                ..Default::default()
            },
            Line {
                uuid: "a2",
                msg: None,
                req: None,
                usage: [7, 1, 0, 0],
                ..Default::default()
            },
        ]),
    );
    let s1 = scan(&p);
    let s2 = scan(&p);
    assert_eq!(s1.events.len(), 2);
    assert!(s1.events.iter().all(|e| e.group.is_none()));
    assert_eq!(total(&merge(&[&s1, &s2])), TokenCounts::new(17, 0, 0, 3, 0));
}

// ---------------------------------------------------------------------------------------------
// replays and copies across files

#[test]
fn sidechain_replay_of_a_parent_message_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("projects/-p/ses-1.jsonl");
    write(
        &parent,
        lines(&[Line {
            uuid: "a1",
            usage: [4, 60, 900, 100],
            ..Default::default()
        }]),
    );
    // A /btw sidechain replays msg_1 under a new requestId, then makes its own call msg_9.
    let side = dir.path().join("projects/-p/ses-2.jsonl");
    write(
        &side,
        lines(&[
            Line {
                session: "ses-2",
                uuid: "s1",
                req: Some("req_btw"),
                sidechain: true,
                usage: [4, 60, 900, 100],
                ..Default::default()
            },
            Line {
                session: "ses-2",
                uuid: "s2",
                msg: Some("msg_9"),
                req: Some("req_9"),
                sidechain: true,
                usage: [1, 5, 0, 0],
                ..Default::default()
            },
        ]),
    );
    let (a, b) = (scan(&parent), scan(&side));
    assert_eq!(b.events.len(), 2);
    assert!(b.events.iter().all(|e| e.replay));
    let merged = merge(&[&a, &b]);
    assert_eq!(merged.len(), 2);
    assert_eq!(total(&merged), TokenCounts::new(1004 + 1, 900, 100, 65, 0));
    // The same holds whichever file is read first.
    assert_eq!(total(&merge(&[&b, &a])), total(&merged));
}

#[test]
fn resumed_session_copying_history_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("projects/-p/ses-1.jsonl");
    let history = [
        Line {
            uuid: "a1",
            usage: [3, 30, 100, 10],
            ..Default::default()
        },
        Line {
            uuid: "b1",
            msg: Some("msg_2"),
            req: Some("req_2"),
            usage: [2, 20, 200, 0],
            ..Default::default()
        },
    ];
    write(&first, lines(&history));
    // The resumed session copies both responses (new session id, new uuids) and adds one.
    let resumed = dir.path().join("projects/-p/ses-2.jsonl");
    write(
        &resumed,
        lines(&[
            Line {
                session: "ses-2",
                uuid: "c-a1",
                usage: [3, 30, 100, 10],
                ..Default::default()
            },
            Line {
                session: "ses-2",
                uuid: "c-b1",
                msg: Some("msg_2"),
                req: Some("req_2"),
                usage: [2, 20, 200, 0],
                ..Default::default()
            },
            Line {
                session: "ses-2",
                uuid: "c1",
                msg: Some("msg_3"),
                req: Some("req_3"),
                usage: [1, 7, 300, 0],
                ..Default::default()
            },
        ]),
    );
    let merged = merge(&[&scan(&first), &scan(&resumed)]);
    assert_eq!(merged.len(), 3);
    assert_eq!(
        total(&merged),
        TokenCounts::new(113 + 202 + 301, 600, 10, 57, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// skipped lines

#[test]
fn synthetic_and_api_error_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    let synthetic = Line {
        uuid: "x1",
        msg: Some("msg_syn"),
        model: "<synthetic>",
        usage: [50, 50, 0, 0],
        ..Default::default()
    }
    .json();
    let mut api_error: serde_json::Value = serde_json::from_str(
        &Line {
            uuid: "x2",
            msg: Some("msg_err"),
            usage: [60, 60, 0, 0],
            ..Default::default()
        }
        .json(),
    )
    .unwrap();
    api_error["isApiErrorMessage"] = true.into();
    let real = Line {
        uuid: "a1",
        usage: [1, 2, 3, 4],
        ..Default::default()
    }
    .json();
    write(&p, format!("{synthetic}\n{api_error}\n{real}\n"));
    let s = scan(&p);
    assert!(s.skipped.is_empty());
    assert_eq!(s.events.len(), 1);
    assert_eq!(total(&s.events), TokenCounts::new(8, 3, 4, 2, 0));
}

#[test]
fn cache_creation_split_is_used_when_the_flat_field_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    let split_only = r#"{"type":"assistant","sessionId":"s","timestamp":"2025-12-16T00:00:01Z","requestId":"r1","message":{"id":"m1","model":"claude-sonnet-4-5","usage":{"input_tokens":5,"output_tokens":9,"cache_read_input_tokens":40,"cache_creation":{"ephemeral_5m_input_tokens":30,"ephemeral_1h_input_tokens":70}}}}"#;
    // When both are present the flat field wins (it already is the sum).
    let both = r#"{"type":"assistant","sessionId":"s","timestamp":"2025-12-16T00:00:02Z","requestId":"r2","message":{"id":"m2","model":"claude-sonnet-4-5","usage":{"input_tokens":1,"output_tokens":1,"cache_creation_input_tokens":12,"cache_creation":{"ephemeral_5m_input_tokens":2,"ephemeral_1h_input_tokens":10}}}}"#;
    write(&p, format!("{split_only}\n{both}\n"));
    let s = scan(&p);
    assert_eq!(s.events.len(), 2);
    assert_eq!(s.events[0].tokens, TokenCounts::new(145, 40, 100, 9, 0));
    assert_eq!(s.events[1].tokens, TokenCounts::new(13, 0, 12, 1, 0));
}

#[test]
fn torn_last_line_is_left_for_the_next_scan() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    let done = lines(&[Line {
        uuid: "a1",
        usage: [10, 20, 0, 0],
        ..Default::default()
    }]);
    let next = Line {
        uuid: "b1",
        msg: Some("msg_2"),
        req: Some("req_2"),
        usage: [1, 2, 0, 0],
        ..Default::default()
    }
    .json();
    let (head, tail) = next.split_at(next.len() / 2);
    write(&p, format!("{done}{head}"));
    let s1 = scan(&p);
    assert_eq!(s1.offset, done.len() as u64);
    assert_eq!(s1.events.len(), 1);
    assert_eq!(s1.skipped.len(), 1);
    assert_eq!(s1.skipped[0].reason, SkipReason::TornLastLine);
    // The writer finishes the line.
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(format!("{tail}\n").as_bytes()).unwrap();
    drop(f);
    let s2 = ClaudeCollector.scan(&found(&p), s1.offset, &s1.state);
    assert!(s2.skipped.is_empty());
    assert_eq!(s2.offset, fs::metadata(&p).unwrap().len());
    assert_eq!(
        total(&merge(&[&s1, &s2])),
        TokenCounts::new(11, 0, 0, 22, 0)
    );
}

#[test]
fn invalid_json_utf8_and_wrong_types_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/ses-1.jsonl");
    let good = Line {
        uuid: "a1",
        usage: [10, 20, 0, 0],
        ..Default::default()
    }
    .json();
    let mut bytes: Vec<u8> = Vec::new();
    // 1: cut-off JSON that looks like usage.
    bytes.extend_from_slice(&good.as_bytes()[..good.len() - 5]);
    bytes.push(b'\n');
    // 2: invalid UTF-8 inside a usage line.
    let mut raw = Line {
        uuid: "a2",
        msg: Some("msg_u"),
        model: "claude-BAD",
        usage: [5, 5, 0, 0],
        ..Default::default()
    }
    .json()
    .into_bytes();
    let at = raw.windows(3).position(|w| w == b"BAD").unwrap();
    raw[at] = 0xFF;
    bytes.extend_from_slice(&raw);
    bytes.push(b'\n');
    // 3: a usage count of the wrong type.
    bytes.extend_from_slice(
        Line {
            uuid: "a3",
            msg: Some("msg_t"),
            usage: [7, 7, 0, 0],
            ..Default::default()
        }
        .json()
        .replace("\"input_tokens\":7", "\"input_tokens\":\"7\"")
        .as_bytes(),
    );
    bytes.push(b'\n');
    // 4: garbage without any usage marker: not a JSON object line, counted.
    bytes.extend_from_slice(b"\xfe\xff not json at all\n");
    // 5: a usage line without a readable timestamp.
    bytes.extend_from_slice(
        Line {
            uuid: "a5",
            msg: Some("msg_ts"),
            ts: "[trimmed for fixture]",
            usage: [7, 7, 0, 0],
            ..Default::default()
        }
        .json()
        .as_bytes(),
    );
    bytes.push(b'\n');
    // 6: valid.
    bytes.extend_from_slice(good.as_bytes());
    bytes.push(b'\n');
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, &bytes).unwrap();

    let s = scan(&p);
    let reasons: Vec<(u64, SkipReason)> = s.skipped.iter().map(|k| (k.line, k.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (1, SkipReason::InvalidJson),
            (2, SkipReason::InvalidUtf8),
            (3, SkipReason::BadFields),
            (4, SkipReason::InvalidUtf8),
            (5, SkipReason::BadFields),
        ]
    );
    assert_eq!(s.events.len(), 1);
    assert_eq!(total(&s.events), TokenCounts::new(10, 0, 0, 20, 0));
    assert_eq!(s.offset, bytes.len() as u64);
}

#[test]
fn unreadable_file_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("projects/-p/dir.jsonl");
    fs::create_dir_all(&d).unwrap();
    let s = scan(&d);
    assert!(s.events.is_empty());
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].reason, SkipReason::Unreadable);
    let missing = scan(&dir.path().join("nope.jsonl"));
    assert_eq!(missing.skipped[0].reason, SkipReason::Unreadable);
}

#[test]
fn session_and_project_fall_back_to_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-home-dev-p/9f2c.jsonl");
    let line = r#"{"type":"assistant","timestamp":"2025-12-16T00:00:01Z","requestId":"r","message":{"id":"m","model":"  claude-haiku-4-5 ","usage":{"input_tokens":1,"output_tokens":1}}}"#;
    let no_model = r#"{"type":"assistant","timestamp":"2025-12-16T00:00:01Z","cwd":"","requestId":"r2","message":{"id":"m2","usage":{"input_tokens":1,"output_tokens":1}}}"#;
    write(&p, format!("{line}\n{no_model}\n"));
    let s = scan(&p);
    assert_eq!(s.events.len(), 2);
    assert_eq!(s.events[0].session, "9f2c");
    assert_eq!(s.events[0].project, "-home-dev-p");
    assert_eq!(s.events[0].model, "claude-haiku-4-5");
    assert_eq!(s.events[1].model, "unknown");
    assert_eq!(s.events[1].project, "-home-dev-p");
}

// ---------------------------------------------------------------------------------------------
// discovery

fn discovered(env: &Env) -> Vec<PathBuf> {
    let files = ClaudeCollector.discover(env);
    assert!(files.iter().all(|f| f.source == Source::Claude && !f.whole));
    files.into_iter().map(|f| f.path).collect()
}

#[test]
fn discovers_sessions_subagents_and_workflows_in_both_default_roots() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let a = h.join(".claude/projects/-p");
    let files = [
        a.join("ses-1.jsonl"),
        a.join("ses-1/subagents/agent-a1.jsonl"),
        a.join("ses-1/subagents/workflows/run-1/agent-w1.jsonl"),
        a.join("agent-old.jsonl"),
        h.join(".config/claude/projects/-q/ses-2.jsonl"),
    ];
    for f in &files {
        write(f, "");
    }
    // Not transcripts: metadata, other extensions, a directory named like a transcript.
    write(&a.join("ses-1/subagents/agent-a1.meta.json"), "{}");
    write(&a.join("notes.txt"), "");
    write(&a.join("odd.jsonl/inner.jsonl"), "");
    write(&h.join(".claude/history.jsonl"), "");

    let mut got = discovered(&env_with(h, &[]));
    got.sort();
    let mut want: Vec<PathBuf> = files.to_vec();
    want.push(a.join("odd.jsonl/inner.jsonl"));
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn config_dir_variable_replaces_the_default_roots() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(&h.join(".claude/projects/-p/default.jsonl"), "");
    write(&h.join("c1/projects/-p/one.jsonl"), "");
    write(&h.join("c2/projects/-q/two.jsonl"), "");
    let list = format!("{}, {},", h.join("c1").display(), h.join("c2").display());
    let got = discovered(&env_with(h, &[("CLAUDE_CONFIG_DIR", list)]));
    assert_eq!(
        got,
        vec![
            h.join("c1/projects/-p/one.jsonl"),
            h.join("c2/projects/-q/two.jsonl")
        ]
    );
    // No roots at all: nothing, no panic.
    assert!(discovered(&env_with(&h.join("nowhere"), &[])).is_empty());
}

#[test]
fn subagent_files_add_their_own_usage() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let a = h.join(".claude/projects/-p");
    write(
        &a.join("ses-1.jsonl"),
        lines(&[Line {
            uuid: "a1",
            usage: [2, 10, 500, 0],
            ..Default::default()
        }]),
    );
    // Subagent lines are all sidechain, with their own message ids: kept. Their final usage is
    // sometimes never written, so the largest snapshot is the estimate.
    write(
        &a.join("ses-1/subagents/agent-x.jsonl"),
        lines(&[
            Line {
                uuid: "c1",
                msg: Some("msg_sub_1"),
                req: Some("req_sub_1"),
                sidechain: true,
                usage: [3, 1, 4263, 0],
                ..Default::default()
            },
            Line {
                uuid: "c2",
                msg: Some("msg_sub_1"),
                req: Some("req_sub_1"),
                sidechain: true,
                usage: [3, 8, 4263, 0],
                ..Default::default()
            },
        ]),
    );
    write(
        &a.join("ses-1/subagents/workflows/run-1/agent-y.jsonl"),
        lines(&[Line {
            uuid: "w1",
            msg: Some("msg_wf_1"),
            req: Some("req_wf_1"),
            sidechain: true,
            usage: [1, 1, 0, 0],
            ..Default::default()
        }]),
    );
    let scans: Vec<FileScan> = ClaudeCollector
        .discover(&env_with(h, &[]))
        .iter()
        .map(|f| ClaudeCollector.scan(f, 0, ""))
        .collect();
    assert_eq!(scans.len(), 3);
    let merged = merge(&scans.iter().collect::<Vec<_>>());
    assert_eq!(merged.len(), 3);
    assert_eq!(
        total(&merged),
        TokenCounts::new(502 + 4266 + 1, 500 + 4263, 0, 10 + 8 + 1, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// real (redacted) sessions

#[test]
fn real_fixtures() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("skipped: shared fixtures not found");
        return;
    };
    // small.jsonl: 89 lines of every line type Claude Code writes. Usage sits on six assistant
    // lines: one <synthetic> placeholder and four redacted ones are all zeros, so only
    // msg_stage0_1 counts (input 10, output 5, no cache).
    let small = scan(&dir.join("small.jsonl"));
    assert!(small.skipped.is_empty(), "{:?}", small.skipped);
    assert_eq!(small.events.len(), 1);
    let ev = &small.events[0];
    assert_eq!(ev.tokens, TokenCounts::new(10, 0, 0, 5, 0));
    assert_eq!(ev.model, "claude-opus-5");
    assert_eq!(ev.session, "ses_stage0_small");
    assert_eq!(ev.project, "/tmp");
    assert_eq!(ev.ts, parse_timestamp("2025-12-16T00:00:20Z").unwrap());
    assert!(!ev.replay);

    // large.jsonl and schema_drift.jsonl hold no usage objects at all; the subagent pair neither.
    for name in [
        "large.jsonl",
        "schema_drift.jsonl",
        "subagent/0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f.jsonl",
        "subagent/0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f/subagents/agent-a0ad4f44468bdf20d.jsonl",
    ] {
        let s = scan(&dir.join(name));
        assert!(s.events.is_empty(), "{name}");
        assert!(s.skipped.is_empty(), "{name}: {:?}", s.skipped);
        assert_eq!(
            s.offset,
            fs::metadata(dir.join(name)).unwrap().len(),
            "{name}"
        );
    }

    // Laid out as a config root, the subagent transcript is found and its .meta.json is not.
    let root = tempfile::tempdir().unwrap();
    let slug = root.path().join("projects/-tmp");
    copy_tree(&dir.join("subagent"), &slug);
    let mut got: Vec<PathBuf> = discovered(&env_with(
        Path::new("/nonexistent"),
        &[("CLAUDE_CONFIG_DIR", root.path().display().to_string())],
    ));
    got.sort();
    let mut want = vec![
        slug.join("0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f.jsonl"),
        slug.join("0a1b2c3d-4e5f-4061-8071-2a3b4c5d6e7f/subagents/agent-a0ad4f44468bdf20d.jsonl"),
    ];
    want.sort();
    assert_eq!(got, want);
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// properties

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Streamed snapshots in any order, split across two scans at any line, merge to the
        /// sum over responses of the largest snapshot.
        #[test]
        fn snapshots_in_any_order_merge_to_the_largest(
            responses in prop::collection::vec(
                (0u64..1000, 0u64..5000, prop::collection::vec(0u64..400, 1..5)),
                1..6,
            ),
            shuffle in prop::collection::vec(any::<u32>(), 0..40),
            cut in any::<u16>(),
        ) {
            let mut all: Vec<(usize, u64, u64, u64)> = Vec::new();
            let mut want = TokenCounts::default();
            for (i, (input, cache_read, outputs)) in responses.iter().enumerate() {
                for out in outputs {
                    all.push((i, *input, *cache_read, *out));
                }
                let max_out = *outputs.iter().max().unwrap();
                let t = TokenCounts::new(input + cache_read, *cache_read, 0, max_out, 0);
                if !t.is_zero() {
                    want += t;
                }
            }
            for (k, r) in shuffle.iter().enumerate() {
                let j = *r as usize % all.len();
                let k = k % all.len();
                all.swap(j, k);
            }
            let text: Vec<String> = all
                .iter()
                .enumerate()
                .map(|(n, (i, input, cache_read, out))| {
                    let msg = format!("msg_{i}");
                    let req = format!("req_{i}");
                    let uuid = format!("u{n}");
                    Line {
                        uuid: &uuid,
                        msg: Some(&msg),
                        req: Some(&req),
                        usage: [*input, *out, *cache_read, 0],
                        ..Default::default()
                    }
                    .json()
                        + "\n"
                })
                .collect();
            let split = cut as usize % (text.len() + 1);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("projects/-p/ses-1.jsonl");
            write(&p, text[..split].concat());
            let s1 = scan(&p);
            write(&p, text.concat());
            let s2 = ClaudeCollector.scan(&found(&p), s1.offset, "");
            prop_assert!(s1.skipped.is_empty() && s2.skipped.is_empty());
            prop_assert_eq!(total(&merge(&[&s1, &s2])), want);
        }

        /// Arbitrary bytes around a valid line never panic, and the valid line still counts.
        #[test]
        fn garbage_lines_never_hide_a_valid_line(
            before in prop::collection::vec(any::<u8>(), 0..300),
            after in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let good = Line { uuid: "g", msg: Some("msg_good"), usage: [1, 2, 3, 4], ..Default::default() }.json();
            let strip = |v: &[u8]| -> Vec<u8> { v.iter().copied().filter(|b| *b != b'\n').collect() };
            let mut bytes = strip(&before);
            bytes.push(b'\n');
            bytes.extend_from_slice(good.as_bytes());
            bytes.push(b'\n');
            bytes.extend_from_slice(&strip(&after));
            bytes.push(b'\n');
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("projects/-p/ses-1.jsonl");
            write(&p, &bytes);
            let s = ClaudeCollector.scan(&found(&p), 0, "");
            let good_key = s.events.iter().find(|e| e.tokens == TokenCounts::new(8, 3, 4, 2, 0));
            prop_assert!(good_key.is_some());
            prop_assert_eq!(s.offset, bytes.len() as u64);
        }
    }
}
