//! End-to-end over the extra agents (Every Code, Gemini CLI, OpenCode, Qwen Code) next to Codex
//! and Claude: the real `tokenledger` binary against the generator's ground truth, exactly, per
//! (day, source, model); a re-run; bad input per format; a corrupt and a locked OpenCode
//! database.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokenledger_testkit::{add_agents, generate, AgentOptions, Corpus, Options, Truth};

const FIELDS: [&str; 6] = [
    "input_tokens",
    "cached_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "total_tokens",
];

/// (day, source, model) -> the six fields.
type Daily = BTreeMap<(String, String, String), [u64; 6]>;

fn corpus(home: &Path, seed: u64) -> Corpus {
    let opts = Options {
        seed,
        files: 24,
        bytes: 1 << 20,
        ..Options::default()
    };
    let mut c = generate(home, &opts).expect("generate");
    add_agents(&mut c, &opts, &AgentOptions::all(10)).expect("add agents");
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(home: &Path, ledger: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenledger"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("TOKENLEDGER_HOME", ledger)
        .output()
        .expect("run tokenledger");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn report(home: &Path, ledger: &Path) -> Run {
    run(
        home,
        ledger,
        &[
            "report",
            "daily",
            "--json",
            "--breakdown",
            "--timezone",
            "UTC",
            "--verbose",
        ],
    )
}

fn actual(r: &Run) -> Daily {
    assert_eq!(r.code, 0, "exit code; stderr:\n{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", r.stdout, r.stderr));
    let mut out = Daily::new();
    for row in v["rows"].as_array().expect("rows") {
        let day = row["period"].as_str().expect("period").to_string();
        for b in row["breakdown"].as_array().expect("breakdown") {
            let mut f = [0u64; 6];
            for (i, k) in FIELDS.iter().enumerate() {
                f[i] = b[*k].as_u64().unwrap_or_else(|| panic!("{k} in {b}"));
            }
            if f.iter().any(|x| *x != 0) {
                let key = (
                    day.clone(),
                    b["source"].as_str().unwrap().to_string(),
                    b["model"].as_str().unwrap().to_string(),
                );
                assert!(out.insert(key, f).is_none(), "duplicate row in {row}");
            }
        }
    }
    out
}

fn expected(t: &Truth, skip_source: Option<&str>) -> Daily {
    t.daily()
        .into_iter()
        .filter(|r| Some(r.source.as_str()) != skip_source)
        .map(|r| {
            let k = &r.tokens;
            (
                (r.day, r.source.as_str().to_string(), r.model),
                [
                    k.input_tokens,
                    k.cached_input_tokens,
                    k.cache_creation_input_tokens,
                    k.output_tokens,
                    k.reasoning_output_tokens,
                    k.total_tokens,
                ],
            )
        })
        .collect()
}

fn assert_same(actual: &Daily, expected: &Daily) {
    let mut diffs = Vec::new();
    for k in actual.keys().chain(expected.keys()) {
        if actual.get(k) != expected.get(k) && !diffs.iter().any(|(d, _, _)| d == k) {
            diffs.push((k.clone(), actual.get(k).copied(), expected.get(k).copied()));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} rows differ (key, actual, truth):\n{:#?}",
        diffs.len(),
        expected.len(),
        &diffs[..diffs.len().min(20)]
    );
}

fn sources(d: &Daily) -> Vec<String> {
    let mut s: Vec<String> = d.keys().map(|k| k.1.clone()).collect();
    s.sort();
    s.dedup();
    s
}

/// The files of one kind under `dir`, sorted.
fn files_under(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, suffix, out);
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out.sort();
}

#[test]
fn every_source_equals_the_truth_and_a_rerun_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let c = corpus(home.path(), 3);
    let first = report(home.path(), ledger.path());
    let a = actual(&first);
    let e = expected(&c.truth, None);
    assert_same(&a, &e);
    assert_eq!(
        sources(&a),
        [
            "claude",
            "codex",
            "every-code",
            "gemini",
            "opencode",
            "qwen"
        ]
    );
    // The every-code unknown usage went to a Codex model (nearest Codex bucket).
    // Every Code itself uses gpt-5.1-codex, gpt-5-codex and gpt-5.2 only.
    assert!(a.keys().any(|k| k.1 == "every-code"
        && !["gpt-5.1-codex", "gpt-5-codex", "gpt-5.2"].contains(&k.2.as_str())));
    assert!(!a.keys().any(|k| k.1 == "every-code" && k.2 == "unknown"));
    assert!(
        !first.stderr.contains("warning"),
        "unexpected warnings:\n{}",
        first.stderr
    );

    // Nothing new: the same output, and the ledger's cursors still cover every file.
    let second = report(home.path(), ledger.path());
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.code, 0);

    // A fresh ledger agrees (no state carried over by accident).
    let ledger2 = tempfile::tempdir().unwrap();
    assert_eq!(report(home.path(), ledger2.path()).stdout, first.stdout);
}

/// With every agent present, the OpenCode database included (it is offered to its collector on
/// every run for its own change check), a re-run with nothing new writes nothing: it completes
/// while another process holds the ledger's write lock, and reports the same.
#[test]
fn a_rerun_with_nothing_new_needs_no_write_lock() {
    let home = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    corpus(home.path(), 5);
    let first = report(home.path(), ledger.path());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(sources(&actual(&first)).contains(&"opencode".to_string()));
    let other = rusqlite::Connection::open(ledger.path().join("ledger.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (h, l) = (home.path().to_path_buf(), ledger.path().to_path_buf());
    std::thread::spawn(move || {
        let _ = done_tx.send(report(&h, &l));
    });
    // Only reached on failure: the run would block on the lock (busy timeout 30 s).
    let second = done_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a run with nothing new waited for the ledger's write lock");
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stdout, first.stdout);
}

#[test]
fn bad_lines_in_every_new_format_are_skipped_and_named() {
    let home = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let c = corpus(home.path(), 4);
    let mut planted = Vec::new();
    for (dir, suffix) in [
        (".gemini", ".jsonl"),
        (".qwen", ".jsonl"),
        (".code", ".jsonl"),
    ] {
        let mut files = Vec::new();
        files_under(&home.path().join(dir), suffix, &mut files);
        let f = files.first().cloned().expect("a file");
        // An invalid JSON line, an invalid UTF-8 line, then a torn last line.
        let mut data = fs::read(&f).unwrap();
        data.extend_from_slice(b"{\"type\":\"gemini\",\"tokens\":{\"input\":\n");
        data.extend_from_slice(b"{\"type\":\"assistant\",\"x\":\"\xff\xfe\"}\n");
        data.extend_from_slice(b"{\"id\":\"torn\",\"type\":\"gemini\",\"tokens\":{\"input\":99");
        fs::write(&f, data).unwrap();
        planted.push(f);
    }
    let r = report(home.path(), ledger.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same(&actual(&r), &expected(&c.truth, None));
    assert!(r.stderr.contains("malformed line"), "{}", r.stderr);
    for f in &planted {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(r.stderr.contains(&name), "{name} not named:\n{}", r.stderr);
    }
}

#[test]
fn a_corrupt_opencode_database_is_named_and_the_rest_reported() {
    let home = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let c = corpus(home.path(), 5);
    let db = home.path().join(".local/share/opencode/opencode.db");
    let mut garbage = b"this is not a database ".repeat(200);
    garbage.extend_from_slice(&[0xff; 512]);
    fs::write(&db, garbage).unwrap();
    let r = report(home.path(), ledger.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("opencode.db"),
        "no warning naming the database:\n{}",
        r.stderr
    );
    let a = actual(&r);
    assert_same(&a, &expected(&c.truth, Some("opencode")));
    assert_eq!(
        sources(&a),
        ["claude", "codex", "every-code", "gemini", "qwen"]
    );
}

#[test]
fn a_locked_opencode_database_is_named_then_read_once_free() {
    let home = tempfile::tempdir().unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let c = corpus(home.path(), 6);
    let db = home.path().join(".local/share/opencode/opencode.db");
    {
        // A writer holding an EXCLUSIVE lock (rollback journal): readers cannot start.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE; UPDATE session SET title = title || '!';")
            .unwrap();
        let r = report(home.path(), ledger.path());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr.contains("warning") && r.stderr.contains("opencode.db"),
            "no warning naming the locked database:\n{}",
            r.stderr
        );
        assert_same(&actual(&r), &expected(&c.truth, Some("opencode")));
        conn.execute_batch("ROLLBACK;").unwrap();
    }
    // Unlocked: the next run reads it, and everything equals the truth.
    let r = report(home.path(), ledger.path());
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    assert_same(&actual(&r), &expected(&c.truth, None));
}
