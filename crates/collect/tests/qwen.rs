//! Qwen Code collector: discovery, the Gemini-style token mapping, the ui_telemetry duplicate
//! trap (agent-log-formats.md section 6) and tolerance, checked with exact totals.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use tokenledger_collect::qwen::QwenCollector;
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, UsageEvent};
use tokenledger_core::{parse_timestamp, Source, TokenCounts};

/// The ledger's merge rule over several scans: the largest `total_tokens` per `dedupe_key`, then
/// replays dropped when a non-replay of the same group exists under another key (Qwen emits no
/// replays, so only the first part matters here).
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
                || !kept.iter().any(|o| {
                    !o.replay
                        && o.group.is_some()
                        && o.group == ev.group
                        && o.dedupe_key != ev.dedupe_key
                })
        })
        .cloned()
        .collect()
}

fn total(events: &[UsageEvent]) -> TokenCounts {
    events.iter().map(|e| e.tokens).sum()
}

fn scan(path: &Path) -> FileScan {
    QwenCollector.scan(
        &FoundFile {
            source: Source::Qwen,
            path: path.to_path_buf(),
            whole: false,
        },
        0,
        "",
    )
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// An assistant line; `usage` is `prompt, candidates, thoughts, cached`.
fn assistant(session: &str, uuid: &str, ts: &str, model: &str, usage: [u64; 4]) -> String {
    serde_json::json!({
        "uuid": uuid,
        "parentUuid": null,
        "sessionId": session,
        "timestamp": ts,
        "type": "assistant",
        "cwd": "/home/dev/qproj",
        "version": "0.18.1",
        "model": model,
        "message": {"role": "model", "parts": [{"text": "reply", "thought": false}]},
        "usageMetadata": {
            "promptTokenCount": usage[0],
            "candidatesTokenCount": usage[1],
            "thoughtsTokenCount": usage[2],
            "totalTokenCount": usage[0] + usage[1] + usage[2],
            "cachedContentTokenCount": usage[3]
        }
    })
    .to_string()
}

/// The `ui_telemetry` copy of the same call, which must not be counted again.
fn telemetry(session: &str, uuid: &str, ts: &str, usage: [u64; 4]) -> String {
    serde_json::json!({
        "uuid": uuid,
        "sessionId": session,
        "timestamp": ts,
        "type": "system",
        "subtype": "ui_telemetry",
        "cwd": "/home/dev/qproj",
        "systemPayload": {"uiEvent": {
            "event.name": "qwen-code.api_response",
            "model": "coder-model",
            "input_token_count": usage[0],
            "output_token_count": usage[1],
            "thoughts_token_count": usage[2],
            "cached_content_token_count": usage[3],
            "usageMetadata": {"promptTokenCount": usage[0]},
            "role": "assistant"
        }}
    })
    .to_string()
}

const T1: &str = "2026-06-15T14:40:22.909Z";
const T2: &str = "2026-06-15T14:41:00.000Z";

#[test]
fn maps_fields_like_gemini_and_ignores_telemetry_copies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir
        .path()
        .join("projects/-home-dev-qproj/chats/ses-q.jsonl");
    let text = [
        assistant("ses-q", "a1", T1, "coder-model", [500, 20, 7, 300]),
        telemetry("ses-q", "t1", T1, [500, 20, 7, 300]),
        assistant("ses-q", "a2", T2, "coder-model", [900, 40, 0, 0]),
        telemetry("ses-q", "t2", T2, [900, 40, 0, 0]),
    ]
    .join("\n")
        + "\n";
    write(&p, &text);
    let s = scan(&p);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(s.events.len(), 2);
    let ev = &s.events[0];
    assert_eq!(ev.source, Source::Qwen);
    assert_eq!(
        ev.tokens,
        TokenCounts {
            input_tokens: 500,
            cached_input_tokens: 300,
            cache_creation_input_tokens: 0,
            output_tokens: 27,
            reasoning_output_tokens: 7,
            total_tokens: 527,
        }
    );
    assert_eq!(ev.ts, parse_timestamp(T1).unwrap());
    assert_eq!(ev.model, "coder-model");
    assert_eq!(ev.session, "ses-q");
    assert_eq!(ev.project, "/home/dev/qproj");
    assert_eq!(total(&merge(&[&s])), TokenCounts::new(1400, 300, 0, 67, 7));
    assert_eq!(s.offset, text.len() as u64);
}

#[test]
fn same_uuid_counts_once_and_rereads_do_not_double() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/chats/ses-q.jsonl");
    // The same uuid written twice (as Qwen does when it rewrites a record), the second larger.
    let text = [
        assistant("ses-q", "a1", T1, "m", [100, 1, 0, 0]),
        assistant("ses-q", "a1", T1, "m", [100, 30, 5, 0]),
        assistant("ses-q", "a2", T2, "m", [200, 10, 0, 50]),
    ]
    .join("\n")
        + "\n";
    write(&p, &text);
    let s1 = scan(&p);
    let s2 = scan(&p);
    assert_eq!(s1.events.len(), 2);
    assert_eq!(
        total(&merge(&[&s1, &s2])),
        TokenCounts::new(300, 50, 0, 45, 5)
    );
    // The same uuid in another session is another call.
    let other = dir.path().join("projects/-p/chats/ses-r.jsonl");
    write(
        &other,
        assistant("ses-r", "a1", T1, "m", [100, 30, 5, 0]) + "\n",
    );
    assert_eq!(
        total(&merge(&[&s1, &scan(&other)])),
        TokenCounts::new(400, 50, 0, 80, 10)
    );
}

#[test]
fn bad_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-p/chats/ses-q.jsonl");
    let good = assistant("ses-q", "a1", T1, "m", [10, 2, 0, 0]);
    let mut bytes: Vec<u8> = Vec::new();
    bytes.extend_from_slice(&good.as_bytes()[..good.len() - 3]); // cut-off JSON
    bytes.push(b'\n');
    let mut raw = assistant("ses-q", "a2", T1, "BAD", [10, 2, 0, 0]).into_bytes();
    let at = raw.windows(3).position(|w| w == b"BAD").unwrap();
    raw[at] = 0xC0; // invalid UTF-8
    bytes.extend_from_slice(&raw);
    bytes.push(b'\n');
    bytes.extend_from_slice(
        assistant("ses-q", "a3", T1, "m", [10, 2, 0, 0])
            .replace("\"promptTokenCount\":10", "\"promptTokenCount\":-10")
            .as_bytes(),
    );
    bytes.push(b'\n');
    bytes.extend_from_slice(b"\x00\x01 noise\n");
    bytes.extend_from_slice(good.as_bytes());
    bytes.push(b'\n');
    // A torn last line: left for the next scan.
    bytes.extend_from_slice(&good.as_bytes()[..20]);
    write(&p, &bytes);
    let s = scan(&p);
    let reasons: Vec<(u64, SkipReason)> = s.skipped.iter().map(|k| (k.line, k.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (1, SkipReason::InvalidJson),
            (2, SkipReason::InvalidUtf8),
            (3, SkipReason::BadFields),
            (4, SkipReason::InvalidJson),
            (6, SkipReason::TornLastLine),
        ]
    );
    assert_eq!(total(&s.events), TokenCounts::new(10, 0, 0, 2, 0));
    assert_eq!(s.offset, (bytes.len() - 20) as u64);
}

#[test]
fn session_and_project_fall_back_to_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("projects/-home-dev-x/chats/0199.jsonl");
    let line = r#"{"type":"assistant","uuid":"u","timestamp":"2026-01-01T00:00:00Z","usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4}}"#;
    write(&p, format!("{line}\n"));
    let s = scan(&p);
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].session, "0199");
    assert_eq!(s.events[0].project, "-home-dev-x");
    assert_eq!(s.events[0].model, "unknown");
    assert_eq!(s.events[0].tokens, TokenCounts::new(3, 0, 0, 4, 0));
}

fn discovered(env: &Env) -> Vec<PathBuf> {
    QwenCollector
        .discover(env)
        .into_iter()
        .inspect(|f| assert!(f.source == Source::Qwen && !f.whole))
        .map(|f| f.path)
        .collect()
}

#[test]
fn discovers_chats_under_default_and_overridden_roots() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let want = [
        h.join(".qwen/projects/-a/chats/s1.jsonl"),
        h.join(".qwen/projects/-a/chats/s2.jsonl"),
        h.join(".qwen/projects/-b/chats/s3.jsonl"),
    ];
    for f in &want {
        write(f, "");
    }
    write(&h.join(".qwen/projects/-a/chats/notes.json"), "");
    write(&h.join(".qwen/projects/-a/s0.jsonl"), "");
    write(&h.join(".qwen/projects/-a/chats/dir.jsonl/x.jsonl"), "");
    write(&h.join(".qwen/tmp/abc/chats/old.json"), "");
    let env = Env {
        home: h.to_path_buf(),
        vars: HashMap::new(),
    };
    assert_eq!(discovered(&env), want.to_vec());

    write(&h.join("q1/projects/-c/chats/s4.jsonl"), "");
    write(&h.join("q2/projects/-d/chats/s5.jsonl"), "");
    let list = format!("{},{}", h.join("q1").display(), h.join("q2").display());
    let env = Env {
        home: h.to_path_buf(),
        vars: HashMap::from([("QWEN_DATA_DIR".to_string(), list)]),
    };
    assert_eq!(
        discovered(&env),
        vec![
            h.join("q1/projects/-c/chats/s4.jsonl"),
            h.join("q2/projects/-d/chats/s5.jsonl")
        ]
    );
}

fn shared_fixtures() -> Option<PathBuf> {
    let base = match std::env::var_os("TOKENLEDGER_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let dir = base.join("fixtures/agent-sessions/qwen");
    dir.is_dir().then_some(dir)
}

#[test]
fn real_fixtures() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("skipped: shared fixtures not found");
        return;
    };
    // Only ...0004 carries usage: uuid ...0046 is written twice, first without usageMetadata,
    // then with prompt 12 and candidates 4 (model synthetic-active-model, after a rewind that
    // moved the cwd to new-project). system_telemetry.jsonl's assistant line has an empty
    // usageMetadata and its ui_telemetry lines must not count. The glued objects of ...0005
    // carry no usage.
    let mut scans = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let s = scan(&path);
        assert!(s.skipped.is_empty(), "{}: {:?}", path.display(), s.skipped);
        assert_eq!(s.offset, fs::metadata(&path).unwrap().len());
        scans.push(s);
    }
    assert_eq!(scans.len(), 6);
    let merged = merge(&scans.iter().collect::<Vec<_>>());
    assert_eq!(merged.len(), 1);
    let ev = &merged[0];
    assert_eq!(ev.tokens, TokenCounts::new(12, 0, 0, 4, 0));
    assert_eq!(ev.model, "synthetic-active-model");
    assert_eq!(ev.session, "019f0000-0000-7000-8000-000000000004");
    assert_eq!(ev.project, "/tmp/as-qwen-fixture/new-project");
    assert_eq!(ev.ts, parse_timestamp("2026-08-17T13:00:06Z").unwrap());
}
