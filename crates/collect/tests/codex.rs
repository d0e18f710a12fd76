//! Codex CLI and Every Code collectors: discovery, token mapping and every double-counting trap
//! of agent-log-formats.md sections 1 and 2, checked with exact totals after the ledger's merge
//! rule (keep the largest `total_tokens` per `dedupe_key`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tokenledger_collect::codex::{scan_bytes, CodexCollector, EveryCodeCollector};
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, UsageEvent};
use tokenledger_core::{Source, TokenCounts};

// ---------------------------------------------------------------------------------------------
// helpers

const ID: &str = "019a0000-1111-7222-8333-444455556666";
const PARENT: &str = "019a0000-9999-7222-8333-444455556666";

fn rollout_name(id: &str) -> String {
    format!("rollout-2025-10-01T12-00-00-{id}.jsonl")
}

/// The ledger's merge rule over several scans: keep the largest `total_tokens` per key.
fn merge(scans: &[&FileScan]) -> Vec<UsageEvent> {
    let mut order = Vec::new();
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
    order.iter().map(|k| best[k].clone()).collect()
}

fn total(events: &[UsageEvent]) -> TokenCounts {
    events.iter().map(|e| e.tokens).sum()
}

fn found(path: &Path) -> FoundFile {
    FoundFile {
        source: Source::Codex,
        path: path.to_path_buf(),
        whole: path.to_string_lossy().ends_with(".zst"),
    }
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&path, text).unwrap();
    path
}

fn scan(path: &Path) -> FileScan {
    CodexCollector.scan(&found(path), 0, "")
}

fn meta(ts: &str, id: &str, originator: &str, extra: &str) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"session_meta","payload":{{"id":"{id}","timestamp":"{ts}","cwd":"/home/dev/proj","originator":"{originator}","cli_version":"0.50.0"{extra}}}}}"#
    )
}

fn turn(ts: &str, model: &str) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"turn_context","payload":{{"cwd":"/home/dev/proj","approval_policy":"on-request","model":"{model}","summary":"auto"}}}}"#
    )
}

/// `[input, cached, cache_write, output, reasoning]`
fn usage(u: [u64; 5]) -> String {
    format!(
        r#"{{"input_tokens":{},"cached_input_tokens":{},"cache_write_input_tokens":{},"output_tokens":{},"reasoning_output_tokens":{},"total_tokens":{}}}"#,
        u[0],
        u[1],
        u[2],
        u[3],
        u[4],
        u[0] + u[3]
    )
}

fn tc(ts: &str, totals: [u64; 5], last: [u64; 5]) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"event_msg","payload":{{"type":"token_count","info":{{"total_token_usage":{},"last_token_usage":{},"model_context_window":272000}},"rate_limits":{{"primary":{{"used_percent":1.0,"window_minutes":300,"resets_at":1761950223}},"secondary":null}}}}}}"#,
        usage(totals),
        usage(last)
    )
}

fn rate_limit_only(ts: &str) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"event_msg","payload":{{"type":"token_count","info":null,"rate_limits":{{"primary":{{"used_percent":1.0,"window_minutes":300,"resets_at":1761950223}},"secondary":{{"used_percent":7.0,"window_minutes":10080,"resets_at":1762458353}}}}}}}}"#
    )
}

fn item(ts: &str, text: &str) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"response_item","payload":{{"type":"message","role":"assistant","content":[{{"type":"output_text","text":"{text}"}}]}}}}"#
    )
}

fn tk(u: [u64; 5]) -> TokenCounts {
    TokenCounts::new(u[0], u[1], u[2], u[3], u[4])
}

/// A plain session: two responses, the first re-emitted twice, one rate-limit line.
fn plain_session() -> Vec<String> {
    vec![
        meta("2025-10-01T12:00:00.000Z", ID, "codex_cli_rs", ""),
        turn("2025-10-01T12:00:01.000Z", "gpt-5-codex"),
        item("2025-10-01T12:00:02.000Z", "hi"),
        tc(
            "2025-10-01T12:00:03.000Z",
            [1000, 800, 0, 50, 20],
            [1000, 800, 0, 50, 20],
        ),
        tc(
            "2025-10-01T12:00:04.000Z",
            [1000, 800, 0, 50, 20],
            [1000, 800, 0, 50, 20],
        ),
        rate_limit_only("2025-10-01T12:00:05.000Z"),
        tc(
            "2025-10-01T12:00:06.000Z",
            [1000, 800, 0, 50, 20],
            [1000, 800, 0, 50, 20],
        ),
        item("2025-10-01T12:31:00.000Z", "token_count mentioned in text"),
        tc(
            "2025-10-01T12:31:02.000Z",
            [2500, 1800, 100, 90, 30],
            [1500, 1000, 100, 40, 10],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// field mapping, re-emitted lines, rate-limit lines, model and session

#[test]
fn maps_fields_and_counts_reemitted_token_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &rollout_name(ID), &plain_session());
    let s = scan(&path);
    assert_eq!(s.events.len(), 2, "{:?}", s.events);
    let e0 = &s.events[0];
    assert_eq!(e0.tokens, tk([1000, 800, 0, 50, 20]));
    assert_eq!(e0.tokens.total_tokens, 1050);
    assert_eq!(e0.source, Source::Codex);
    assert_eq!(e0.model, "gpt-5-codex");
    assert_eq!(e0.session, ID);
    assert_eq!(e0.project, "/home/dev/proj");
    assert_eq!(e0.ts, 1759320003);
    // Second response: delta of totals, not last_token_usage summed per line.
    assert_eq!(s.events[1].tokens, tk([1500, 1000, 100, 40, 10]));
    assert_eq!(s.events[1].ts, 1759320000 + 31 * 60 + 2);
    assert_eq!(total(&s.events), tk([2500, 1800, 100, 90, 30]));
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(s.offset, fs::metadata(&path).unwrap().len());
}

#[test]
fn rate_limit_only_lines_carry_no_usage() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        meta("2025-10-31T17:00:00.000Z", ID, "codex_cli_rs", ""),
        rate_limit_only("2025-10-31T17:00:10.000Z"),
        rate_limit_only("2025-10-31T17:00:11.000Z"),
    ];
    let s = scan(&write(dir.path(), &rollout_name(ID), &lines));
    assert!(s.events.is_empty());
    assert!(s.skipped.is_empty());
}

#[test]
fn model_is_unknown_until_turn_context_and_follows_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        meta("2025-10-01T12:00:00.000Z", ID, "codex_cli_rs", ""),
        tc(
            "2025-10-01T12:00:03.000Z",
            [10, 0, 0, 1, 0],
            [10, 0, 0, 1, 0],
        ),
        turn("2025-10-01T12:00:04.000Z", "  gpt-5  "),
        tc(
            "2025-10-01T12:00:05.000Z",
            [30, 0, 0, 2, 0],
            [20, 0, 0, 1, 0],
        ),
        turn("2025-10-01T12:00:06.000Z", "gpt-5.1-codex-max"),
        tc(
            "2025-10-01T12:00:07.000Z",
            [60, 0, 0, 3, 0],
            [30, 0, 0, 1, 0],
        ),
        turn("2025-10-01T12:00:08.000Z", "codex-auto-review"),
        tc(
            "2025-10-01T12:00:09.000Z",
            [100, 0, 0, 4, 0],
            [40, 0, 0, 1, 0],
        ),
    ];
    let s = scan(&write(dir.path(), &rollout_name(ID), &lines));
    let models: Vec<&str> = s.events.iter().map(|e| e.model.as_str()).collect();
    assert_eq!(
        models,
        ["unknown", "gpt-5", "gpt-5.1-codex-max", "unknown"],
        "codex-auto-review is a label, left to the unknown-model reassignment"
    );
    let inputs: Vec<u64> = s.events.iter().map(|e| e.tokens.input_tokens).collect();
    assert_eq!(inputs, [10, 20, 30, 40]);
}

#[test]
fn model_falls_back_to_info_model_without_turn_context() {
    let line = r#"{"timestamp":"2025-09-10T10:00:00.000Z","type":"event_msg","payload":{"type":"token_count","info":{"model":"gpt-5","total_token_usage":{"input_tokens":7,"output_tokens":3}}}}"#;
    let s = scan_bytes(format!("{line}\n").as_bytes(), &rollout_name(ID));
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].model, "gpt-5");
    assert_eq!(s.events[0].tokens, tk([7, 0, 0, 3, 0]));
}

#[test]
fn last_token_usage_is_used_only_when_totals_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let last_only = |ts: &str, u: [u64; 5]| {
        format!(
            r#"{{"timestamp":"{ts}","type":"event_msg","payload":{{"type":"token_count","info":{{"total_token_usage":null,"last_token_usage":{}}}}}}}"#,
            usage(u)
        )
    };
    let lines = vec![
        meta("2025-10-01T12:00:00.000Z", ID, "codex_cli_rs", ""),
        turn("2025-10-01T12:00:01.000Z", "gpt-5"),
        tc(
            "2025-10-01T12:00:02.000Z",
            [100, 50, 0, 10, 5],
            [100, 50, 0, 10, 5],
        ),
        last_only("2025-10-01T12:00:03.000Z", [40, 20, 0, 4, 1]),
        // Totals resume from the previous total (the last-only line did not move the baseline).
        tc(
            "2025-10-01T12:00:04.000Z",
            [300, 150, 0, 30, 15],
            [200, 100, 0, 20, 10],
        ),
    ];
    let s = scan(&write(dir.path(), &rollout_name(ID), &lines));
    assert_eq!(s.events.len(), 3);
    assert_eq!(s.events[1].tokens, tk([40, 20, 0, 4, 1]));
    assert_eq!(total(&s.events), tk([340, 170, 0, 34, 16]));
}

#[test]
fn totals_going_down_start_a_new_baseline_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        meta("2025-10-01T12:00:00.000Z", ID, "codex_cli_rs", ""),
        turn("2025-10-01T12:00:01.000Z", "gpt-5"),
        tc(
            "2025-10-01T12:00:02.000Z",
            [100, 0, 0, 10, 0],
            [100, 0, 0, 10, 0],
        ),
        tc(
            "2025-10-01T12:00:03.000Z",
            [300, 0, 0, 20, 0],
            [200, 0, 0, 10, 0],
        ),
        // Reset (compaction / resume): the first post-reset total counts in full.
        tc(
            "2025-10-01T12:00:04.000Z",
            [50, 0, 0, 5, 0],
            [50, 0, 0, 5, 0],
        ),
        tc(
            "2025-10-01T12:00:05.000Z",
            [50, 0, 0, 5, 0],
            [50, 0, 0, 5, 0],
        ),
        tc(
            "2025-10-01T12:00:06.000Z",
            [80, 0, 0, 8, 0],
            [30, 0, 0, 3, 0],
        ),
        // A zero total is a reset with nothing new.
        tc("2025-10-01T12:00:07.000Z", [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
        tc("2025-10-01T12:00:08.000Z", [5, 0, 0, 1, 0], [5, 0, 0, 1, 0]),
    ];
    let s = scan(&write(dir.path(), &rollout_name(ID), &lines));
    let inputs: Vec<u64> = s.events.iter().map(|e| e.tokens.input_tokens).collect();
    assert_eq!(inputs, [100, 200, 50, 30, 5]);
    assert_eq!(total(&s.events), tk([385, 0, 0, 29, 0]));
}

// ---------------------------------------------------------------------------------------------
// forks and subagents

fn fork_child(extra: &str, replay_ts: [&str; 3]) -> Vec<String> {
    vec![
        meta("2025-10-02T09:00:00.000Z", ID, "codex_cli_rs", extra),
        // The parent's copied session_meta must not replace the child's id.
        meta("2025-10-01T08:00:00.000Z", PARENT, "codex_cli_rs", ""),
        turn(replay_ts[0], "gpt-5"),
        tc(
            replay_ts[0],
            [1000, 500, 0, 100, 10],
            [1000, 500, 0, 100, 10],
        ),
        tc(
            replay_ts[1],
            [1000, 500, 0, 100, 10],
            [1000, 500, 0, 100, 10],
        ),
        tc(
            replay_ts[2],
            [4000, 2500, 0, 300, 40],
            [3000, 2000, 0, 200, 30],
        ),
        turn("2025-10-02T09:00:20.000Z", "gpt-5-codex"),
        tc(
            "2025-10-02T09:00:25.000Z",
            [4600, 2900, 0, 350, 45],
            [600, 400, 0, 50, 5],
        ),
        tc(
            "2025-10-02T09:01:10.000Z",
            [5000, 3000, 0, 400, 50],
            [400, 100, 0, 50, 5],
        ),
    ]
}

fn check_child(s: &FileScan) {
    assert_eq!(s.events.len(), 2, "{:?}", s.events);
    assert!(s.events.iter().all(|e| e.session == ID));
    assert_eq!(s.events[0].model, "gpt-5-codex");
    assert_eq!(s.events[0].tokens, tk([600, 400, 0, 50, 5]));
    assert_eq!(total(&s.events), tk([1000, 500, 0, 100, 10]));
}

#[test]
fn fork_replay_burst_with_rewritten_timestamps_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let lines = fork_child(
        &format!(r#","forked_from_id":"{PARENT}""#),
        [
            "2025-10-02T09:00:00.010Z",
            "2025-10-02T09:00:00.020Z",
            "2025-10-02T09:00:00.030Z",
        ],
    );
    check_child(&scan(&write(dir.path(), &rollout_name(ID), &lines)));
}

#[test]
fn fork_replay_burst_with_original_timestamps_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let lines = fork_child(
        &format!(r#","forked_from_id":"{PARENT}""#),
        [
            "2025-10-01T08:00:10.000Z",
            "2025-10-01T08:05:00.000Z",
            "2025-10-01T08:40:00.000Z",
        ],
    );
    check_child(&scan(&write(dir.path(), &rollout_name(ID), &lines)));
}

#[test]
fn spawned_subagent_replay_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#","source":{{"subagent":{{"thread_spawn":{{"parent_thread_id":"{PARENT}","depth":1,"agent_nickname":"scout"}}}}}}"#
    );
    let lines = fork_child(
        &extra,
        [
            "2025-10-02T09:00:00.100Z",
            "2025-10-02T09:00:00.900Z",
            "2025-10-02T09:00:01.500Z",
        ],
    );
    check_child(&scan(&write(dir.path(), &rollout_name(ID), &lines)));
}

#[test]
fn parent_thread_id_marks_a_child() {
    let dir = tempfile::tempdir().unwrap();
    let lines = fork_child(
        &format!(r#","parent_thread_id":"{PARENT}""#),
        [
            "2025-10-02T09:00:00.000Z",
            "2025-10-02T09:00:00.000Z",
            "2025-10-02T09:00:00.000Z",
        ],
    );
    check_child(&scan(&write(dir.path(), &rollout_name(ID), &lines)));
}

#[test]
fn a_plain_rollout_counts_its_first_burst() {
    // Without fork markers, lines close to the start are real usage.
    let dir = tempfile::tempdir().unwrap();
    let lines = fork_child(
        "",
        [
            "2025-10-02T09:00:00.010Z",
            "2025-10-02T09:00:00.020Z",
            "2025-10-02T09:00:00.030Z",
        ],
    );
    let s = scan(&write(dir.path(), &rollout_name(ID), &lines));
    assert_eq!(total(&s.events), tk([5000, 3000, 0, 400, 50]));
}

#[test]
fn copied_session_meta_never_replaces_the_id() {
    // Without a UUID in the file name, the first session_meta names the rollout.
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        meta("2025-10-02T09:00:00.000Z", ID, "codex_cli_rs", ""),
        meta("2025-10-01T08:00:00.000Z", PARENT, "codex_cli_rs", ""),
        tc(
            "2025-10-02T09:00:05.000Z",
            [10, 0, 0, 1, 0],
            [10, 0, 0, 1, 0],
        ),
    ];
    let s = scan(&write(dir.path(), "session.jsonl", &lines));
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].session, ID);
    // The file name's UUID is the authority over session_meta.
    let s = scan(&write(dir.path(), &rollout_name(PARENT), &lines));
    assert_eq!(s.events[0].session, PARENT);
}

// ---------------------------------------------------------------------------------------------
// copies: archived and zstd

fn codex_home(dir: &Path) -> Env {
    let mut env = Env {
        home: dir.join("home"),
        vars: HashMap::new(),
    };
    env.vars.insert(
        "CODEX_HOME".into(),
        dir.join("codex").to_string_lossy().into_owned(),
    );
    env
}

#[test]
fn archived_duplicate_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = codex_home(dir.path());
    let name = rollout_name(ID);
    write(
        &dir.path().join("codex/sessions/2025/10/01"),
        &name,
        &plain_session(),
    );
    write(
        &dir.path().join("codex/archived_sessions"),
        &name,
        &plain_session(),
    );
    let files = CodexCollector.discover(&env);
    assert_eq!(files.len(), 2);
    let scans: Vec<FileScan> = files
        .iter()
        .map(|f| CodexCollector.scan(f, 0, ""))
        .collect();
    let merged = merge(&scans.iter().collect::<Vec<_>>());
    assert_eq!(merged.len(), 2);
    assert_eq!(total(&merged), tk([2500, 1800, 100, 90, 30]));
}

#[test]
fn zst_rollout_is_read_whole_and_dedupes_with_its_plain_copy() {
    let dir = tempfile::tempdir().unwrap();
    let env = codex_home(dir.path());
    let day = dir.path().join("codex/sessions/2025/10/01");
    let name = rollout_name(ID);
    // The compressed copy holds the whole session, the plain one only its start.
    let all = plain_session();
    let mut text = all.join("\n");
    text.push('\n');
    fs::create_dir_all(&day).unwrap();
    fs::write(
        day.join(format!("{name}.zst")),
        zstd::encode_all(text.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    write(&day, &name, &all[..5]);
    let files = CodexCollector.discover(&env);
    assert_eq!(files.len(), 2);
    let zst = files.iter().find(|f| f.whole).expect("zst is whole");
    assert!(zst.path.to_string_lossy().ends_with(".jsonl.zst"));
    // A whole file ignores any offset and state it is given.
    let zs = CodexCollector.scan(zst, 17, "{\"prev\":[1,1,1,1,1]}");
    assert_eq!(zs.events.len(), 2);
    assert_eq!(zs.offset, fs::metadata(&zst.path).unwrap().len());
    let scans: Vec<FileScan> = files
        .iter()
        .map(|f| CodexCollector.scan(f, 0, ""))
        .collect();
    let merged = merge(&scans.iter().collect::<Vec<_>>());
    assert_eq!(merged.len(), 2);
    assert_eq!(total(&merged), tk([2500, 1800, 100, 90, 30]));
}

// ---------------------------------------------------------------------------------------------
// token_usage_record

fn record(ts: &str, thread: &str, response: &str, u: [u64; 5]) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"token_usage_record","payload":{{"thread_id":"{thread}","session_id":"{thread}","turn_id":"t1","response_id":"{response}","usage":{},"thread_token_usage":{},"attribution":{{"model":"gpt-5.5","model_provider":"openai"}}}}}}"#,
        usage(u),
        usage(u)
    )
}

#[test]
fn token_usage_records_are_ignored_when_token_count_is_present() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        meta("2026-07-01T12:00:00.000Z", ID, "codex_cli_rs", ""),
        turn("2026-07-01T12:00:01.000Z", "gpt-5.5"),
        record("2026-07-01T12:00:02.000Z", ID, "resp_1", [100, 0, 0, 10, 0]),
        tc(
            "2026-07-01T12:00:02.100Z",
            [100, 0, 0, 10, 0],
            [100, 0, 0, 10, 0],
        ),
        record("2026-07-01T12:00:05.000Z", ID, "resp_2", [200, 0, 0, 20, 0]),
        tc(
            "2026-07-01T12:00:05.100Z",
            [300, 0, 0, 30, 0],
            [200, 0, 0, 20, 0],
        ),
        // A compaction carries a copy of the latest record: never counted.
        format!(
            r#"{{"timestamp":"2026-07-01T12:00:06.000Z","type":"compacted","payload":{{"message":"","latest_token_usage_record":{}}}}}"#,
            &record("x", ID, "resp_2", [200, 0, 0, 20, 0])[..]
        ),
    ];
    let s = scan(&write(dir.path(), &rollout_name(ID), &lines));
    assert_eq!(total(&s.events), tk([300, 0, 0, 30, 0]));
    assert_eq!(s.events.len(), 2);
}

#[test]
fn token_usage_records_alone_count_once_per_response() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![
        meta("2026-07-01T12:00:00.000Z", ID, "codex_cli_rs", ""),
        record(
            "2026-07-01T12:00:02.000Z",
            ID,
            "resp_1",
            [100, 60, 0, 10, 2],
        ),
        record(
            "2026-07-01T12:00:02.000Z",
            ID,
            "resp_1",
            [100, 60, 0, 10, 2],
        ),
        record("2026-07-01T12:00:05.000Z", ID, "resp_2", [200, 0, 0, 20, 0]),
    ];
    let path = write(dir.path(), &rollout_name(ID), &lines);
    let s = scan(&path);
    assert_eq!(s.events.len(), 2);
    assert_eq!(s.events[0].model, "gpt-5.5");
    assert_eq!(total(&s.events), tk([300, 60, 0, 30, 2]));
    // A copy of the same record elsewhere (a fork) has the same key.
    let other = write(dir.path(), &rollout_name(PARENT), &lines[1..2]);
    let o = scan(&other);
    let merged = merge(&[&s, &o]);
    assert_eq!(total(&merged), tk([300, 60, 0, 30, 2]));
}

// ---------------------------------------------------------------------------------------------
// Every Code

fn every_tc(ts: &str, totals: [u64; 5], last: [u64; 5], seq: u64) -> String {
    format!(
        r#"{{"timestamp":"{ts}","type":"event","payload":{{"id":"sub-1","event_seq":{seq},"order":{{"request_ordinal":1,"output_index":0,"sequence_number":{seq}}},"msg":{{"type":"token_count","info":{{"total_token_usage":{},"last_token_usage":{},"model_context_window":272000,"requested_model":"gpt-5","latest_response_model":"gpt-5"}},"rate_limits":{{"primary":{{"used_percent":3.0,"window_minutes":300,"resets_in_seconds":100}},"secondary":null}}}}}}}}"#,
        usage(totals),
        usage(last)
    )
}

fn every_code_session() -> Vec<String> {
    vec![
        meta("2025-11-01T10:00:00.000Z", ID, "code_cli_rs", ""),
        turn("2025-11-01T10:00:01.000Z", "gpt-5-codex"),
        every_tc(
            "2025-11-01T10:00:05.000Z",
            [500, 100, 0, 40, 8],
            [500, 100, 0, 40, 8],
            3,
        ),
        every_tc(
            "2025-11-01T10:00:06.000Z",
            [500, 100, 0, 40, 8],
            [500, 100, 0, 40, 8],
            4,
        ),
        every_tc(
            "2025-11-01T10:00:15.000Z",
            [900, 300, 50, 70, 9],
            [400, 200, 50, 30, 1],
            9,
        ),
    ]
}

#[test]
fn every_code_event_lines_are_read_and_kept_apart_from_codex() {
    let dir = tempfile::tempdir().unwrap();
    let env = codex_home(dir.path());
    let day = dir.path().join("codex/sessions/2025/11/01");
    let every = write(&day, &rollout_name(ID), &every_code_session());
    let codex = write(&day, &rollout_name(PARENT), &plain_session());

    // Every Code falls back to CODEX_HOME: both collectors see both files.
    let ec_files = EveryCodeCollector.discover(&env);
    let cx_files = CodexCollector.discover(&env);
    assert_eq!(ec_files.len(), 2);
    assert_eq!(cx_files.len(), 2);
    assert!(ec_files.iter().all(|f| f.source == Source::EveryCode));

    let ec = |p: &Path| {
        EveryCodeCollector.scan(
            &FoundFile {
                source: Source::EveryCode,
                path: p.to_path_buf(),
                whole: false,
            },
            0,
            "",
        )
    };
    let s = ec(&every);
    assert_eq!(s.events.len(), 2);
    assert!(s.events.iter().all(|e| e.source == Source::EveryCode));
    assert_eq!(s.events[0].model, "gpt-5-codex");
    assert_eq!(total(&s.events), tk([900, 300, 50, 70, 9]));
    // Each collector emits nothing for the other agent's rollout.
    assert!(ec(&codex).events.is_empty());
    assert!(scan(&every).events.is_empty());
    assert_eq!(scan(&codex).events.len(), 2);
}

#[test]
fn every_code_home_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = Env {
        home: dir.path().join("home"),
        vars: HashMap::new(),
    };
    let name = rollout_name(ID);
    write(
        &dir.path().join("home/.code/sessions/2025/11/01"),
        &name,
        &every_code_session(),
    );
    write(
        &dir.path().join("home/.codex/sessions/2025/11/01"),
        &name,
        &plain_session(),
    );
    write(
        &dir.path().join("other/archived_sessions"),
        &name,
        &every_code_session(),
    );
    let under = |files: Vec<FoundFile>, part: &str| {
        files.len() == 1 && files[0].path.to_string_lossy().contains(part)
    };
    assert!(under(EveryCodeCollector.discover(&env), "/.code/"));
    assert!(under(CodexCollector.discover(&env), "/.codex/"));
    env.vars.insert(
        "CODEX_HOME".into(),
        dir.path().join("other").to_string_lossy().into_owned(),
    );
    assert!(under(EveryCodeCollector.discover(&env), "/other/"));
    assert!(under(CodexCollector.discover(&env), "/other/"));
    env.vars.insert(
        "CODE_HOME".into(),
        dir.path().join("home/.code").to_string_lossy().into_owned(),
    );
    assert!(under(EveryCodeCollector.discover(&env), "/.code/"));
}

#[test]
fn codex_home_may_list_several_roots_and_ignores_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write(
        &a.join("sessions/2025/10/01"),
        &rollout_name(ID),
        &plain_session(),
    );
    write(
        &b.join("archived_sessions"),
        &rollout_name(PARENT),
        &plain_session(),
    );
    write(&b.join("sessions"), "notes.jsonl", &plain_session());
    write(&b.join("sessions"), "rollout-x.json", &plain_session());
    let mut env = Env {
        home: dir.path().join("home"),
        vars: HashMap::new(),
    };
    env.vars.insert(
        "CODEX_HOME".into(),
        format!("{}, {}", a.display(), b.display()),
    );
    let files = CodexCollector.discover(&env);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| !f.whole && f.source == Source::Codex));
}

// ---------------------------------------------------------------------------------------------
// tolerance

#[test]
fn torn_last_line_is_left_for_the_next_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(rollout_name(ID));
    let lines = plain_session();
    let last = lines.last().unwrap().clone();
    let mut text = lines[..lines.len() - 1].join("\n");
    text.push('\n');
    let cut = text.len() as u64;
    text.push_str(&last[..last.len() / 2]);
    fs::write(&path, &text).unwrap();
    let first = scan(&path);
    assert_eq!(first.offset, cut);
    assert_eq!(first.events.len(), 1);
    assert!(first
        .skipped
        .iter()
        .any(|s| s.reason == SkipReason::TornLastLine));
    // The writer finishes the line; the next scan continues from the cursor.
    text.push_str(&last[last.len() / 2..]);
    text.push('\n');
    fs::write(&path, &text).unwrap();
    let second = CodexCollector.scan(&found(&path), first.offset, &first.state);
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].tokens, tk([1500, 1000, 100, 40, 10]));
    assert!(second.skipped.is_empty());
}

#[test]
fn invalid_utf8_invalid_json_and_wrong_types_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(rollout_name(ID));
    let mut bytes = Vec::new();
    let lines = plain_session();
    for l in &lines[..4] {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    // 5: a token_count with invalid UTF-8 in a string.
    let mut bad = tc(
        "2025-10-01T12:10:00.000Z",
        [9000, 0, 0, 9, 0],
        [1, 0, 0, 0, 0],
    )
    .into_bytes();
    let at = bad.len() - 10;
    bad.splice(at..at, [0xff, 0xfe]);
    bytes.extend_from_slice(&bad);
    bytes.push(b'\n');
    // 6: cut JSON.
    bytes.extend_from_slice(br#"{"timestamp":"2025-10-01T12:11:00.000Z","type":"event_msg","payload":{"type":"token_count","info":{"#);
    bytes.push(b'\n');
    // 7: wrong types.
    bytes.extend_from_slice(br#"{"timestamp":"2025-10-01T12:12:00.000Z","type":"event_msg","payload":{"type":"token_count","info":{"total_token_usage":{"input_tokens":"many"}}}}"#);
    bytes.push(b'\n');
    // 8: negative count.
    bytes.extend_from_slice(br#"{"timestamp":"2025-10-01T12:13:00.000Z","type":"event_msg","payload":{"type":"token_count","info":{"total_token_usage":{"input_tokens":-5}}}}"#);
    bytes.push(b'\n');
    // 9: not an object; 10: binary noise.
    bytes.extend_from_slice(b"\"token_count\"\n\x00\x01\xff token_count\n");
    for l in &lines[4..] {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    fs::write(&path, &bytes).unwrap();
    let s = scan(&path);
    assert_eq!(total(&s.events), tk([2500, 1800, 100, 90, 30]));
    let reasons: Vec<(u64, SkipReason)> = s.skipped.iter().map(|k| (k.line, k.reason)).collect();
    assert_eq!(
        reasons,
        [
            (5, SkipReason::InvalidUtf8),
            (6, SkipReason::InvalidJson),
            (7, SkipReason::BadFields),
            (8, SkipReason::BadFields),
            (9, SkipReason::BadFields),
            (10, SkipReason::InvalidUtf8),
        ]
    );
}

#[test]
fn unreadable_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = scan(&dir.path().join("missing.jsonl"));
    assert!(s.events.is_empty());
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].reason, SkipReason::Unreadable);
}

#[test]
fn pre_envelope_rollouts_have_no_usage() {
    let lines = [
        r#"{"id":"x","timestamp":"2025-05-01T10:00:00Z","instructions":null}"#,
        r#"{"record_type":"state"}"#,
        r#"{"type":"message","role":"user","content":[{"type":"input_text","text":"token_count"}]}"#,
    ];
    let s = scan_bytes(
        format!("{}\n", lines.join("\n")).as_bytes(),
        "rollout-old.jsonl",
    );
    assert!(s.events.is_empty());
    assert!(s.skipped.is_empty());
}

#[test]
fn non_canonical_field_order_and_spacing_still_parse() {
    let line = r#"{ "payload": { "info": { "total_token_usage": { "input_tokens": 12, "output_tokens": 4 } }, "type": "token_count" }, "type": "event_msg", "timestamp": "2025-10-01T12:00:03Z" }"#;
    let s = scan_bytes(format!("{line}\n").as_bytes(), &rollout_name(ID));
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].tokens, tk([12, 0, 0, 4, 0]));
    assert_eq!(s.events[0].session, ID);
}

// ---------------------------------------------------------------------------------------------
// incremental scans

fn scan_in_parts(path: &Path, content: &[u8], cuts: &[usize]) -> Vec<UsageEvent> {
    let mut events = Vec::new();
    let (mut offset, mut state) = (0u64, String::new());
    for &cut in cuts.iter().chain(std::iter::once(&content.len())) {
        fs::write(path, &content[..cut]).unwrap();
        let s = CodexCollector.scan(&found(path), offset, &state);
        assert!(s.offset <= cut as u64);
        offset = s.offset;
        state = s.state;
        events.extend(s.events);
    }
    events
}

fn busy_child_session() -> Vec<String> {
    let mut lines = fork_child(
        &format!(r#","forked_from_id":"{PARENT}""#),
        [
            "2025-10-02T09:00:00.010Z",
            "2025-10-02T09:00:00.020Z",
            "2025-10-02T09:00:00.030Z",
        ],
    );
    lines.push(rate_limit_only("2025-10-02T09:02:00.000Z"));
    lines.push(tc(
        "2025-10-02T09:03:00.000Z",
        [100, 0, 0, 10, 0],
        [100, 0, 0, 10, 0],
    ));
    lines.push(turn("2025-10-02T09:03:30.000Z", "gpt-5.1"));
    lines.push(tc(
        "2025-10-02T09:04:00.000Z",
        [250, 50, 0, 30, 5],
        [150, 50, 0, 20, 5],
    ));
    lines.push(tc(
        "2025-10-02T09:04:00.000Z",
        [250, 50, 0, 30, 5],
        [150, 50, 0, 20, 5],
    ));
    lines
}

proptest! {
    #[test]
    fn incremental_scans_equal_a_full_scan(
        cuts in proptest::collection::vec(0usize..400, 0..6),
        torn in 0usize..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(rollout_name(ID));
        let lines = busy_child_session();
        let mut content = Vec::new();
        let mut bounds = vec![0usize];
        for l in &lines {
            content.extend_from_slice(l.as_bytes());
            content.push(b'\n');
            bounds.push(content.len());
        }
        // Cut at line boundaries, and sometimes inside a line (a torn last line).
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| {
                let b = bounds[c % bounds.len()];
                if c % 3 == 0 { (b + torn).min(content.len()) } else { b }
            })
            .collect();
        points.sort_unstable();
        let parts = scan_in_parts(&path, &content, &points);
        fs::write(&path, &content).unwrap();
        let full = scan(&path);
        prop_assert_eq!(&parts, &full.events);
        prop_assert_eq!(total(&full.events), tk([1250, 550, 0, 130, 15]));
    }
}

#[test]
fn a_missing_state_rereads_from_the_start_without_double_counting() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &rollout_name(ID), &plain_session());
    let full = scan(&path);
    let again = CodexCollector.scan(&found(&path), 500, "not json");
    assert_eq!(again.events, full.events);
    assert_eq!(
        total(&merge(&[&full, &again])),
        tk([2500, 1800, 100, 90, 30])
    );
}

#[test]
fn scan_bytes_matches_the_file_scan() {
    let dir = tempfile::tempdir().unwrap();
    let name = rollout_name(ID);
    let path = write(dir.path(), &name, &busy_child_session());
    let from_file = scan(&path);
    let from_bytes = scan_bytes(&fs::read(&path).unwrap(), &name);
    assert_eq!(from_file.events, from_bytes.events);
    assert_eq!(from_file.state, from_bytes.state);
    assert_eq!(from_file.offset, from_bytes.offset);
}

// ---------------------------------------------------------------------------------------------
// real fixtures (skipped when the shared folder is absent)

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TOKENLEDGER_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    dir.join("fixtures/agent-sessions/codex")
        .is_dir()
        .then_some(dir)
}

fn fixture(name: &str) -> Option<FileScan> {
    let Some(dir) = shared_dir() else {
        eprintln!("shared fixtures missing; skipping");
        return None;
    };
    Some(scan(&dir.join("fixtures/agent-sessions/codex").join(name)))
}

#[test]
fn fixture_small_current_shape() {
    let Some(s) = fixture("small.jsonl") else {
        return;
    };
    // One real token_count (line 22); a rate-limit-only line (86) and an all-zero total
    // (87) add nothing; the copied session_meta lines (29, 36, 37, 42, 94, 96) with fork
    // markers do not make the file a child or change its id.
    assert_eq!(s.events.len(), 1, "{:?}", s.events);
    let e = &s.events[0];
    assert_eq!(e.tokens, tk([16341, 3584, 0, 81, 63]));
    assert_eq!(e.tokens.total_tokens, 16422);
    assert_eq!(e.model, "gpt-5.6-luna");
    assert_eq!(e.session, "019fc8be-3658-7ca3-9e29-000000000000");
    assert_eq!(e.project, "/tmp/repo");
    assert_eq!(e.ts, 1785754136); // 2026-08-03T10:48:56Z
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
}

#[test]
fn fixture_large() {
    let Some(s) = fixture("large.jsonl") else {
        return;
    };
    assert_eq!(s.events.len(), 1);
    let e = &s.events[0];
    assert_eq!(e.tokens, tk([12091, 10880, 0, 182, 128]));
    assert_eq!(e.tokens.total_tokens, 12273);
    assert_eq!(e.model, "gpt-5.2");
    assert_eq!(e.session, "019b2ea4-aaaa-bbbb-cccc-58208e1f0000");
    assert_eq!(e.project, "/tmp/large");
}

#[test]
fn fixture_schema_drift_has_no_usage() {
    let Some(s) = fixture("schema_drift.jsonl") else {
        return;
    };
    assert!(s.events.is_empty());
    assert!(s.skipped.is_empty());
}

#[test]
fn without_an_originator_event_lines_mark_every_code() {
    let lines = every_code_session()[1..].join("\n") + "\n";
    let name = rollout_name(ID);
    let every =
        tokenledger_collect::codex::scan_bytes_as(Source::EveryCode, lines.as_bytes(), &name);
    assert_eq!(total(&every.events), tk([900, 300, 50, 70, 9]));
    assert!(scan_bytes(lines.as_bytes(), &name).events.is_empty());
    // And event_msg lines without an originator are Codex's.
    let codex = plain_session()[1..].join("\n") + "\n";
    assert_eq!(
        total(&scan_bytes(codex.as_bytes(), &name).events),
        tk([2500, 1800, 100, 90, 30])
    );
    assert!(
        tokenledger_collect::codex::scan_bytes_as(Source::EveryCode, codex.as_bytes(), &name)
            .events
            .is_empty()
    );
}

#[test]
fn every_code_is_registered() {
    let sources: Vec<Source> = tokenledger_collect::all_collectors()
        .iter()
        .map(|c| c.source())
        .collect();
    assert!(sources.contains(&Source::Codex));
    assert!(sources.contains(&Source::EveryCode));
}

proptest! {
    /// Damaged copies of a real-shaped session (bytes flipped, cut, duplicated) never panic
    /// and never yield malformed events.
    #[test]
    fn damaged_sessions_never_panic(
        edits in proptest::collection::vec((0usize..4000, any::<u8>()), 0..12),
        cut in 0usize..4000,
    ) {
        let mut bytes = busy_child_session().join("\n").into_bytes();
        bytes.push(b'\n');
        for (at, b) in edits {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        let cut = cut % (bytes.len() + 1);
        let doubled = [&bytes[..cut], &bytes[..]].concat();
        for data in [&bytes[..cut], &doubled[..]] {
            let s = scan_bytes(data, &rollout_name(ID));
            prop_assert!(s.offset <= data.len() as u64);
            for e in &s.events {
                prop_assert!(!e.tokens.is_zero());
                prop_assert_eq!(
                    e.tokens.total_tokens,
                    e.tokens.input_tokens + e.tokens.output_tokens
                );
            }
        }
    }
}
