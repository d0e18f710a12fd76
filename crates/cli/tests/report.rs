//! End-to-end tests of `tokenledger report`: the real binary on hand-written agent logs in a
//! fresh home, checking what users see (JSON numbers, table width, errors).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tokenledger"))
            .args(args)
            .env_clear()
            .env("HOME", self.path())
            .env("TOKENLEDGER_HOME", self.path().join("tl"))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A Claude Code transcript with one assistant line per `(timestamp, model, msg id, input, output)`.
    fn claude(&self, session: &str, lines: &[(&str, &str, &str, u64, u64)]) -> PathBuf {
        let dir = self.path().join(".claude/projects/-work-demo");
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = String::new();
        for (ts, model, id, input, output) in lines {
            s.push_str(&format!(
                r#"{{"type":"assistant","sessionId":"{session}","cwd":"/work/demo","timestamp":"{ts}","requestId":"req_{id}","message":{{"id":"{id}","model":"{model}","usage":{{"input_tokens":{input},"output_tokens":{output},"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}}}}}"#
            ));
            s.push('\n');
        }
        let p = dir.join(format!("{session}.jsonl"));
        std::fs::write(&p, s).unwrap();
        p
    }

    /// A Codex rollout: `(timestamp, Some(model) for a turn_context | None, cumulative input, cumulative output)`.
    fn codex(&self, id: &str, events: &[(&str, Option<&str>, u64, u64)]) -> PathBuf {
        let dir = self.path().join(".codex/sessions/2025/10/06");
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = format!(
            r#"{{"timestamp":"2025-10-06T00:00:00.000Z","type":"session_meta","payload":{{"id":"{id}","cwd":"/work/demo","originator":"codex_cli_rs","cli_version":"0.50.0"}}}}"#
        );
        s.push('\n');
        for (ts, model, input, output) in events {
            if let Some(m) = model {
                s.push_str(&format!(
                    r#"{{"timestamp":"{ts}","type":"turn_context","payload":{{"cwd":"/work/demo","model":"{m}"}}}}"#
                ));
                s.push('\n');
            }
            let total = input + output;
            s.push_str(&format!(
                r#"{{"timestamp":"{ts}","type":"event_msg","payload":{{"type":"token_count","info":{{"total_token_usage":{{"input_tokens":{input},"cached_input_tokens":0,"output_tokens":{output},"reasoning_output_tokens":0,"total_tokens":{total}}},"last_token_usage":null}}}}}}"#
            ));
            s.push('\n');
        }
        let p = dir.join(format!("rollout-2025-10-06T00-00-00-{id}.jsonl"));
        std::fs::write(&p, s).unwrap();
        p
    }
}

fn totals(v: &Value) -> u64 {
    v["totals"]["total_tokens"].as_u64().unwrap()
}

fn periods(v: &Value) -> Vec<(String, u64)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["period"].as_str().unwrap().to_string(),
                r["total_tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

const CODEX_ID: &str = "0199b0c1-0000-7000-8000-00000000abcd";

#[test]
fn daily_json_with_breakdown_has_the_documented_shape() {
    let h = Home::new();
    h.claude(
        "s1",
        &[("2025-10-06T10:00:00Z", "claude-sonnet-4-5", "m1", 100, 20)],
    );
    h.codex(
        CODEX_ID,
        &[("2025-10-06T11:00:00Z", Some("gpt-5-codex"), 1000, 50)],
    );
    let v = h.json(&[
        "report",
        "daily",
        "--json",
        "--breakdown",
        "--timezone",
        "UTC",
    ]);
    assert_eq!(v["report"], "daily");
    assert_eq!(v["timezone"], "UTC");
    let row = &v["rows"][0];
    assert_eq!(row["period"], "2025-10-06");
    for k in [
        "input_tokens",
        "cached_input_tokens",
        "cache_creation_input_tokens",
        "output_tokens",
        "reasoning_output_tokens",
        "total_tokens",
    ] {
        assert!(row[k].is_u64(), "{k} missing in {row}");
        assert!(v["totals"][k].is_u64());
    }
    assert!(row["cost_usd"].is_f64() || row["cost_usd"].is_u64());
    assert_eq!(row["total_tokens"], 1170);
    let b = row["breakdown"].as_array().unwrap();
    assert_eq!(b.len(), 2);
    let claude = b.iter().find(|x| x["source"] == "claude").unwrap();
    assert_eq!(claude["model"], "claude-sonnet-4-5");
    assert_eq!(claude["input_tokens"], 100);
    assert_eq!(claude["output_tokens"], 20);
    let codex = b.iter().find(|x| x["source"] == "codex").unwrap();
    assert_eq!(codex["model"], "gpt-5-codex");
    assert_eq!(codex["total_tokens"], 1050);
    assert_eq!(totals(&v), 1170);
}

#[test]
fn timezone_moves_usage_across_midnight() {
    let h = Home::new();
    h.claude(
        "s1",
        &[
            ("2025-10-06T23:30:00Z", "claude-sonnet-4-5", "m1", 10, 0),
            ("2025-10-06T12:00:00Z", "claude-sonnet-4-5", "m2", 5, 0),
        ],
    );
    let utc = h.json(&["report", "daily", "--json", "--timezone", "UTC"]);
    assert_eq!(periods(&utc), vec![("2025-10-06".to_string(), 15)]);
    let tokyo = h.json(&["report", "daily", "--json", "--timezone", "Asia/Tokyo"]);
    assert_eq!(
        periods(&tokyo),
        vec![
            ("2025-10-06".to_string(), 5),
            ("2025-10-07".to_string(), 10)
        ]
    );
    // Backward-compatible alias names work too.
    let kolkata = h.json(&["report", "daily", "--json", "--timezone", "Asia/Calcutta"]);
    assert_eq!(kolkata["timezone"], "Asia/Calcutta");
    assert_eq!(
        periods(&kolkata),
        vec![
            ("2025-10-06".to_string(), 5),
            ("2025-10-07".to_string(), 10)
        ]
    );
}

#[test]
fn since_until_source_and_model_filters() {
    let h = Home::new();
    h.claude(
        "s1",
        &[
            ("2025-10-05T10:00:00Z", "claude-a", "m1", 1, 0),
            ("2025-10-06T10:00:00Z", "claude-a", "m2", 2, 0),
            ("2025-10-07T10:00:00Z", "claude-b", "m3", 4, 0),
            ("2025-10-08T10:00:00Z", "claude-a", "m4", 8, 0),
        ],
    );
    h.codex(CODEX_ID, &[("2025-10-06T11:00:00Z", Some("gpt-5"), 16, 0)]);
    let args = ["report", "daily", "--json", "-z", "UTC"];
    let v = h.json(
        &[
            &args[..],
            &["--since", "2025-10-06", "--until", "2025-10-07"],
        ]
        .concat(),
    );
    assert_eq!(
        periods(&v),
        vec![
            ("2025-10-06".to_string(), 18),
            ("2025-10-07".to_string(), 4)
        ]
    );
    let v = h.json(&[&args[..], &["--source", "codex"]].concat());
    assert_eq!(totals(&v), 16);
    let v = h.json(&[&args[..], &["--model", "claude-a"]].concat());
    assert_eq!(totals(&v), 11);
    let v = h.json(&[&args[..], &["--model", "claude-a,gpt-5"]].concat());
    assert_eq!(totals(&v), 27);
}

#[test]
fn weekly_monthly_models_session_blocks() {
    let h = Home::new();
    h.claude(
        "sess-one",
        &[
            ("2025-10-06T10:00:00Z", "claude-a", "m1", 1, 0), // Monday
            ("2025-10-12T10:00:00Z", "claude-a", "m2", 2, 0), // Sunday
            ("2025-10-13T10:00:00Z", "claude-b", "m3", 4, 0), // next Monday
        ],
    );
    h.claude(
        "sess-two",
        &[("2025-11-01T00:10:00Z", "claude-b", "m4", 8, 0)],
    );
    let w = h.json(&["report", "weekly", "--json", "-z", "UTC"]);
    assert_eq!(
        periods(&w),
        vec![
            ("2025-10-06".to_string(), 3),
            ("2025-10-13".to_string(), 4),
            ("2025-10-27".to_string(), 8)
        ]
    );
    let m = h.json(&["report", "monthly", "--json", "-z", "UTC"]);
    assert_eq!(
        periods(&m),
        vec![("2025-10".to_string(), 7), ("2025-11".to_string(), 8)]
    );
    let models = h.json(&["report", "models", "--json", "-z", "UTC"]);
    let rows: Vec<(String, u64)> = models["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["model"].as_str().unwrap().into(),
                r["total_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, vec![("claude-b".into(), 12), ("claude-a".into(), 3)]);
    let sessions = h.json(&["report", "session", "--json", "-z", "UTC"]);
    let rows: Vec<(String, u64)> = sessions["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["session"].as_str().unwrap().into(),
                r["total_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, vec![("sess-one".into(), 7), ("sess-two".into(), 8)]);
    assert_eq!(sessions["rows"][0]["project"], "/work/demo");
    let blocks = h.json(&["report", "blocks", "--json", "-z", "UTC"]);
    let starts: Vec<&str> = blocks["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["start"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        vec![
            "2025-10-06T10:00:00.000Z",
            "2025-10-12T10:00:00.000Z",
            "2025-10-13T10:00:00.000Z",
            "2025-11-01T00:00:00.000Z"
        ]
    );
    assert_eq!(totals(&blocks), 15);
}

#[test]
fn tables_fit_eighty_columns() {
    let h = Home::new();
    h.claude(
        "s1",
        &[(
            "2025-10-06T10:00:00Z",
            "claude-sonnet-4-5-20250929-with-a-very-long-suffix",
            "m1",
            123_456_789_012,
            98_765_432,
        )],
    );
    for kind in ["daily", "weekly", "monthly", "session", "blocks", "models"] {
        let out = h.run(&["report", kind, "--breakdown", "-z", "UTC"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Total"), "{kind}: {text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{kind} line too wide: {line:?}");
        }
    }
}

#[test]
fn unknown_model_is_reassigned_to_the_dominant_model_of_its_half_hour() {
    let h = Home::new();
    // Usage before any turn_context is `unknown`; in the same half hour gpt-5 dominates.
    h.codex(
        CODEX_ID,
        &[
            ("2025-10-06T10:01:00Z", None, 7, 0),
            ("2025-10-06T10:02:00Z", Some("gpt-5"), 100, 0),
        ],
    );
    let v = h.json(&["report", "daily", "--json", "--breakdown", "-z", "UTC"]);
    let b = v["rows"][0]["breakdown"].as_array().unwrap();
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0]["model"], "gpt-5");
    assert_eq!(b[0]["total_tokens"], 100);
}

#[test]
fn bad_flags_are_clear_errors() {
    let h = Home::new();
    let out = h.run(&["report", "daily", "--timezone", "Mars/Olympus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Mars/Olympus"));
    let out = h.run(&[
        "report",
        "daily",
        "--since",
        "2025-10-08",
        "--until",
        "2025-10-01",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("after"));
    let out = h.run(&["report", "daily", "--since", "yesterday"]);
    assert!(!out.status.success());
    let out = h.run(&["report", "daily", "--source", "cursor"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cursor"));
}

#[test]
fn empty_machine_reports_nothing_and_succeeds() {
    let h = Home::new();
    let v = h.json(&["report", "daily", "--json"]);
    assert_eq!(v["rows"].as_array().unwrap().len(), 0);
    assert_eq!(totals(&v), 0);
    // Zero cost, not the -0.0 of an empty sum.
    let cost = &v["totals"]["cost_usd"];
    assert_eq!(cost.to_string(), "0.0", "{v}");
    let out = h.run(&["report", "daily"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("No usage"));
    assert!(
        table.contains("$0.00") && !table.contains("-0.00"),
        "{table}"
    );
}

#[test]
fn malformed_lines_are_counted_on_stderr_and_the_report_completes() {
    let h = Home::new();
    let p = h.claude(
        "s1",
        &[("2025-10-06T10:00:00Z", "claude-sonnet-4-5", "m1", 100, 20)],
    );
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(b"{bad\n\xff\xfe\n\n{\"type\":\"user\"}\n");
    std::fs::write(&p, bytes).unwrap();
    let out = h.run(&["report", "daily", "--json", "-z", "UTC"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(totals(&v), 120);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipped 2 malformed line(s)"), "{err}");
    assert!(
        err.contains("1 invalid JSON") && err.contains("1 invalid UTF-8"),
        "{err}"
    );
    // Lines are reported by the scan that reads them; a fresh ledger reads them again.
    std::fs::remove_dir_all(h.path().join("tl")).unwrap();
    let out = h.run(&["report", "daily", "--verbose", "-z", "UTC"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s1.jsonl:2: invalid JSON"), "{err}");
}

/// Many sessions in one scan: the readers hand the writer their files in batches whose
/// strings (sessions, projects, models, paths) share one buffer and whose buffers are reused
/// batch after batch; each session must still get exactly its own tokens and model.
#[test]
fn many_sessions_in_one_scan_each_keep_their_own_tokens() {
    let h = Home::new();
    let mut expected = Vec::new();
    for i in 0..300u64 {
        let session = format!("sess-{i:03}");
        let model = format!("claude-m{}", i % 7);
        // A few sessions are long enough to fill a batch on their own.
        let n = if i % 97 == 0 { 5000 } else { 1 + i % 5 };
        let lines: Vec<(String, String, String, u64, u64)> = (0..n)
            .map(|k| {
                let ts = format!("2025-10-{:02}T{:02}:{:02}:00Z", 1 + i % 28, k % 24, k % 60);
                (ts, model.clone(), format!("m{i}-{k}"), i + 1, k + 1)
            })
            .collect();
        let refs: Vec<(&str, &str, &str, u64, u64)> = lines
            .iter()
            .map(|(t, m, id, a, b)| (t.as_str(), m.as_str(), id.as_str(), *a, *b))
            .collect();
        h.claude(&session, &refs);
        let total: u64 = lines.iter().map(|l| l.3 + l.4).sum();
        expected.push((session, model, total));
    }
    let v = h.json(&["report", "session", "--json", "-z", "UTC"]);
    let mut rows: Vec<(String, String, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["project"], "/work/demo");
            let models: Vec<&str> = r["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap())
                .collect();
            assert_eq!(models.len(), 1, "{r}");
            (
                r["session"].as_str().unwrap().to_string(),
                models[0].to_string(),
                r["total_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(rows, expected);
}
