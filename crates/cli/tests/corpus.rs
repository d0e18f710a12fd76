//! End-to-end: the real `tokenledger` binary over generated corpora whose ground truth is known
//! (crate `tokenledger-testkit`), compared field by field, exactly.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use tokenledger_testkit::{generate, Corpus, Options, Source, TokenCounts, Truth};

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

fn small(seed: u64, hold_back: bool) -> Options {
    Options {
        seed,
        files: 70,
        bytes: 3 << 20,
        hold_back,
        ..Options::default()
    }
}

/// Runs `tokenledger report daily --json --breakdown --timezone UTC` in a clean environment.
fn report(home: &Path, ledger: &Path) -> (Value, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenledger"))
        .args([
            "report",
            "daily",
            "--json",
            "--breakdown",
            "--timezone",
            "UTC",
        ])
        .env("HOME", home)
        .env("TOKENLEDGER_HOME", ledger)
        .env_remove("CODEX_HOME")
        .env_remove("CLAUDE_CONFIG_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("run tokenledger");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "tokenledger exited with {}\nstderr:\n{stderr}",
        out.status
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (v, stdout, stderr)
}

fn fields(v: &Value, what: &str) -> [u64; 6] {
    let mut a = [0u64; 6];
    for (i, f) in FIELDS.iter().enumerate() {
        a[i] = v[*f]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: field {f} missing or not an integer in {v}"));
    }
    a
}

fn add(a: &mut [u64; 6], b: [u64; 6]) {
    for i in 0..6 {
        a[i] += b[i];
    }
}

/// Checks the report's internal consistency and returns its breakdown rows.
fn actual_daily(v: &Value) -> Daily {
    assert_eq!(v["report"], "daily", "{v}");
    assert_eq!(v["timezone"], "UTC", "{v}");
    let rows = v["rows"].as_array().expect("rows array");
    let mut out = Daily::new();
    let mut grand = [0u64; 6];
    let mut grand_cost = 0.0;
    for row in rows {
        let period = row["period"].as_str().expect("period").to_string();
        let row_fields = fields(row, &period);
        let mut sum = [0u64; 6];
        for b in row["breakdown"].as_array().expect("breakdown array") {
            let f = fields(b, &period);
            add(&mut sum, f);
            assert!(b["cost_usd"].is_number(), "cost_usd of {b}");
            let source = b["source"].as_str().expect("source").to_string();
            let model = b["model"].as_str().expect("model").to_string();
            if f.iter().any(|x| *x != 0) {
                let prev = out.insert((period.clone(), source, model), f);
                assert!(prev.is_none(), "duplicate breakdown row in {row}");
            }
        }
        assert_eq!(
            row_fields, sum,
            "row {period} is not the sum of its breakdown"
        );
        add(&mut grand, row_fields);
        grand_cost += row["cost_usd"].as_f64().expect("row cost_usd");
    }
    assert_eq!(
        fields(&v["totals"], "totals"),
        grand,
        "totals are not the sum of rows"
    );
    let total_cost = v["totals"]["cost_usd"].as_f64().expect("totals cost_usd");
    assert!(
        (total_cost - grand_cost).abs() <= 1e-6 * grand_cost.max(1.0),
        "total cost {total_cost} vs sum of rows {grand_cost}"
    );
    out
}

fn expected_daily(truth: &Truth) -> Daily {
    truth
        .daily()
        .into_iter()
        .map(|r| {
            (
                (r.day, r.source.as_str().to_string(), r.model),
                r.tokens.as_array(),
            )
        })
        .collect()
}

/// Asserts equality with a readable list of the differing rows.
fn assert_matches(actual: &Daily, expected: &Daily, context: &str) {
    if actual == expected {
        return;
    }
    let mut diff = String::new();
    let keys: std::collections::BTreeSet<_> = actual.keys().chain(expected.keys()).collect();
    for k in keys {
        let (a, e) = (actual.get(k), expected.get(k));
        if a != e {
            diff.push_str(&format!("  {k:?}\n    report: {a:?}\n    truth:  {e:?}\n"));
        }
    }
    panic!("{context}: report differs from the ground truth (fields {FIELDS:?}):\n{diff}");
}

fn corpus(dir: &Path, opts: &Options) -> Corpus {
    let c = generate(&dir.join("home"), opts).expect("generate corpus");
    assert!(c.truth.source_totals(Source::Codex).total_tokens > 0);
    assert!(c.truth.source_totals(Source::Claude).total_tokens > 0);
    c
}

#[test]
fn daily_report_matches_ground_truth_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path(), &small(11, false));
    let (v, _, _) = report(&c.home, &dir.path().join("ledger"));
    assert_matches(&actual_daily(&v), &expected_daily(&c.truth), "first run");
}

#[test]
fn daily_report_matches_ground_truth_other_seed() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path(), &small(12, false));
    let (v, _, _) = report(&c.home, &dir.path().join("ledger"));
    assert_matches(&actual_daily(&v), &expected_daily(&c.truth), "seed 12");
}

#[test]
fn second_run_with_nothing_new_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path(), &small(13, false));
    let ledger = dir.path().join("ledger");
    let (_, first, _) = report(&c.home, &ledger);
    let (v, second, _) = report(&c.home, &ledger);
    assert_eq!(
        first, second,
        "a re-run with nothing new changed the report"
    );
    assert_matches(&actual_daily(&v), &expected_daily(&c.truth), "second run");
}

#[test]
fn appended_lines_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = corpus(dir.path(), &small(14, true));
    assert!(c.has_pending());
    assert_ne!(c.truth, c.truth_after_append);
    let ledger = dir.path().join("ledger");
    let (v, _, _) = report(&c.home, &ledger);
    assert_matches(
        &actual_daily(&v),
        &expected_daily(&c.truth),
        "before append",
    );
    c.append_pending().unwrap();
    let (v, _, _) = report(&c.home, &ledger);
    assert_matches(&actual_daily(&v), &expected_daily(&c.truth), "after append");
    // And a fresh ledger over the final files agrees with the incremental one.
    let (fresh, _, _) = report(&c.home, &dir.path().join("ledger2"));
    assert_eq!(actual_daily(&fresh), actual_daily(&v));
}

#[test]
fn history_survives_deleted_logs() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path(), &small(15, false));
    let ledger = dir.path().join("ledger");
    let (before, _, _) = report(&c.home, &ledger);
    for d in [".codex", ".claude", ".config/claude"] {
        let p = c.home.join(d);
        if p.exists() {
            fs::remove_dir_all(&p).unwrap();
        }
    }
    let (after, _, _) = report(&c.home, &ledger);
    assert_eq!(actual_daily(&after), actual_daily(&before));
    assert_matches(
        &actual_daily(&after),
        &expected_daily(&c.truth),
        "after deletion",
    );
}

/// A first scan writes the new ledger with a rollback journal (see `Ledger::scan`): killed
/// while it has pages in the database file and its journal beside it, the next run rolls the
/// half-written scan back and counts every token once.
#[test]
fn a_first_scan_killed_while_writing_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(
        dir.path(),
        &Options {
            seed: 21,
            files: 300,
            bytes: 12 << 20,
            ..Options::default()
        },
    );
    let expected = expected_daily(&c.truth);
    let mut killed_mid_write = 0;
    for attempt in 0..4 {
        let ledger = dir.path().join(format!("ledger{attempt}"));
        let db = ledger.join("ledger.db");
        let journal = ledger.join("ledger.db-journal");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokenledger"))
            .args(["report", "daily", "--json"])
            .env("HOME", &c.home)
            .env("TOKENLEDGER_HOME", &ledger)
            .env_remove("CODEX_HOME")
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it while its transaction is open (the journal is there): at once, or once
        // the file has grown by pages of the scan (when it spills or commits, which a short
        // scan may end before).
        let mut start_len = None;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let size = fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
            if !journal.exists() {
                continue;
            }
            let start = *start_len.get_or_insert(size);
            if attempt < 2 || size > start {
                child.kill().unwrap();
                child.wait().unwrap();
                killed_mid_write += 1;
                break;
            }
        }
        let (v, _, _) = report(&c.home, &ledger);
        assert_matches(
            &actual_daily(&v),
            &expected,
            &format!("run after the kill of attempt {attempt}"),
        );
        assert!(!journal.exists(), "attempt {attempt}: the journal is left");
        let (again, _, _) = report(&c.home, &ledger);
        assert_eq!(actual_daily(&again), actual_daily(&v));
    }
    assert!(
        killed_mid_write >= 2,
        "only {killed_mid_write} of 4 first scans were killed while writing"
    );
}

/// An assistant line of Claude Code with final usage.
fn claude_line(msg: &str, req: &str, ts: &str, model: &str, u: [u64; 4]) -> String {
    format!(
        "{{\"parentUuid\":null,\"isSidechain\":false,\"userType\":\"external\",\"cwd\":\"/home/dev/bad\",\"sessionId\":\"bad-session\",\"version\":\"2.0.51\",\"type\":\"assistant\",\"uuid\":\"u-{msg}\",\"timestamp\":\"{ts}\",\"requestId\":\"{req}\",\"message\":{{\"id\":\"{msg}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{model}\",\"content\":[{{\"type\":\"text\",\"text\":\"ok\"}}],\"usage\":{{\"input_tokens\":{},\"cache_read_input_tokens\":{},\"cache_creation_input_tokens\":{},\"output_tokens\":{}}}}}}}",
        u[0], u[1], u[2], u[3]
    )
}

fn codex_count(ts: &str, total: [u64; 4], last: [u64; 4]) -> String {
    let u = |a: [u64; 4]| {
        format!(
            "{{\"input_tokens\":{},\"cached_input_tokens\":{},\"output_tokens\":{},\"reasoning_output_tokens\":{},\"total_tokens\":{}}}",
            a[0], a[1], a[2], a[3], a[0] + a[2]
        )
    };
    format!(
        "{{\"timestamp\":\"{ts}\",\"type\":\"event_msg\",\"payload\":{{\"type\":\"token_count\",\"info\":{{\"total_token_usage\":{},\"last_token_usage\":{},\"model_context_window\":272000}}}}}}",
        u(total),
        u(last)
    )
}

#[test]
fn bad_input_is_skipped_counted_and_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let c = corpus(dir.path(), &small(16, false));
    let mut truth = c.truth.clone();
    let home = &c.home;

    // Claude: a folder of broken files next to the generated ones.
    let bad = home.join(".claude/projects/-home-dev-bad");
    fs::create_dir_all(&bad).unwrap();
    // A 50 MiB single line, then a good usage line the reader must still find.
    let mut f = fs::File::create(bad.join("huge.jsonl")).unwrap();
    f.write_all(b"{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"")
        .unwrap();
    f.write_all(&vec![b'a'; 50 << 20]).unwrap();
    f.write_all(b"\"}}\n").unwrap();
    let ts = "2025-10-05T10:10:00.000Z";
    let model = "claude-sonnet-4-5-20250929";
    writeln!(
        f,
        "{}",
        claude_line("msg_bad_1", "req_bad_1", ts, model, [7, 1000, 200, 50])
    )
    .unwrap();
    truth.add(
        Source::Claude,
        model,
        tokenledger_core::parse_timestamp(ts).unwrap(),
        TokenCounts::new(7 + 1000 + 200, 1000, 200, 50, 0),
    );
    // Invalid JSON, invalid UTF-8, a good line, and a torn last line.
    let mut f = fs::File::create(bad.join("mixed.jsonl")).unwrap();
    // Usage-looking lines, so that no parser may call them noise: a cut-off assistant line, and
    // an early streamed block of msg_bad_2 with invalid UTF-8 in its text (skipped or not, the
    // largest block of msg_bad_2 decides, so the truth is the same).
    let ts2 = "2025-10-05T11:45:00.000Z";
    let cut = claude_line("msg_bad_9", "req_bad_9", ts2, model, [1, 2, 3, 4]);
    f.write_all(&cut.as_bytes()[..cut.len() - 40]).unwrap();
    f.write_all(b"\n").unwrap();
    let early = claude_line("msg_bad_2", "req_bad_2", ts2, model, [3, 0, 0, 1])
        .replace("\"ok\"", "\"BAD\"");
    let early = early.as_bytes();
    let at = early.windows(3).position(|w| w == b"BAD").unwrap();
    f.write_all(&early[..at]).unwrap();
    f.write_all(b"\xff\xfe\xfd").unwrap();
    f.write_all(&early[at + 3..]).unwrap();
    f.write_all(b"\n").unwrap();
    writeln!(
        f,
        "{}",
        claude_line("msg_bad_2", "req_bad_2", ts2, model, [3, 0, 0, 9])
    )
    .unwrap();
    truth.add(
        Source::Claude,
        model,
        tokenledger_core::parse_timestamp(ts2).unwrap(),
        TokenCounts::new(3, 0, 0, 9, 0),
    );
    let torn = claude_line("msg_bad_3", "req_bad_3", ts2, model, [5, 5, 5, 5]);
    f.write_all(&torn.as_bytes()[..torn.len() / 2]).unwrap();
    drop(f);
    fs::File::create(bad.join("empty.jsonl")).unwrap();
    fs::create_dir_all(bad.join("x.jsonl")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        "/nonexistent/tokenledger/gone.jsonl",
        bad.join("gone.jsonl"),
    )
    .unwrap();
    // chmod 000 only stops non-root users; its content is usage-free so the truth holds either way.
    let locked = bad.join("locked.jsonl");
    fs::write(
        &locked,
        "{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":\"hi\"}}\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        if fs::File::open(&locked).is_ok() {
            eprintln!("running as root: chmod 000 does not make a file unreadable; the dangling symlink covers that case");
        }
    }

    // Codex: a rollout with garbage between two good token_count lines and a torn tail.
    let day = home.join(".codex/sessions/2025/10/05");
    fs::create_dir_all(&day).unwrap();
    let id = "019a0000-bad0-7000-8000-0000000000aa";
    let mut f =
        fs::File::create(day.join(format!("rollout-2025-10-05T09-00-00-{id}.jsonl"))).unwrap();
    writeln!(f, "{{\"timestamp\":\"2025-10-05T09:00:00.000Z\",\"type\":\"session_meta\",\"payload\":{{\"id\":\"{id}\",\"cwd\":\"/home/dev/bad\",\"originator\":\"codex_cli_rs\",\"cli_version\":\"0.46.0\"}}}}").unwrap();
    writeln!(f, "{{\"timestamp\":\"2025-10-05T09:00:01.000Z\",\"type\":\"turn_context\",\"payload\":{{\"cwd\":\"/home/dev/bad\",\"model\":\"gpt-5\"}}}}").unwrap();
    writeln!(
        f,
        "{}",
        codex_count(
            "2025-10-05T09:01:00.000Z",
            [1000, 400, 100, 10],
            [1000, 400, 100, 10]
        )
    )
    .unwrap();
    // A token_count line cut off mid-object, and a re-emitted token_count (same totals, so it
    // counts zero whether or not it is skipped) with invalid UTF-8 in its rate limits.
    let cut = codex_count(
        "2025-10-05T09:02:00.000Z",
        [1000, 400, 100, 10],
        [1000, 400, 100, 10],
    );
    f.write_all(&cut.as_bytes()[..cut.len() / 2]).unwrap();
    f.write_all(b"\n").unwrap();
    let again = codex_count(
        "2025-10-05T09:02:30.000Z",
        [1000, 400, 100, 10],
        [1000, 400, 100, 10],
    );
    let again = again.replacen("}}}", "},\"rate_limits\":{\"plan_type\":\"BAD\"}}}", 1);
    let again = again.as_bytes();
    let at = again.windows(3).position(|w| w == b"BAD").unwrap();
    f.write_all(&again[..at]).unwrap();
    f.write_all(b"\xc3\x28").unwrap();
    f.write_all(&again[at + 3..]).unwrap();
    f.write_all(b"\n").unwrap();
    writeln!(
        f,
        "{}",
        codex_count(
            "2025-10-05T09:03:00.000Z",
            [1500, 600, 130, 10],
            [500, 200, 30, 0]
        )
    )
    .unwrap();
    let torn = codex_count(
        "2025-10-05T09:04:00.000Z",
        [9000, 600, 130, 10],
        [7500, 0, 0, 0],
    );
    f.write_all(&torn.as_bytes()[..torn.len() - 10]).unwrap();
    drop(f);
    let t0 = tokenledger_core::parse_timestamp("2025-10-05T09:01:00Z").unwrap();
    truth.add(
        Source::Codex,
        "gpt-5",
        t0,
        TokenCounts::new(1000, 400, 0, 100, 10),
    );
    truth.add(
        Source::Codex,
        "gpt-5",
        t0 + 120,
        TokenCounts::new(500, 200, 0, 30, 0),
    );
    // A directory that looks like a rollout.
    fs::create_dir_all(
        day.join("rollout-2025-10-05T08-00-00-019a0000-bad0-7000-8000-0000000000bb.jsonl"),
    )
    .unwrap();

    let (v, _, stderr) = report(home, &dir.path().join("ledger"));
    assert_matches(&actual_daily(&v), &expected_daily(&truth), "bad input");
    // The report says how many lines it skipped and why: at least the 2 invalid JSON and the 2
    // invalid UTF-8 lines (torn last lines and unreadable files may be counted too).
    let skipped: u64 = stderr
        .split("skipped ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        skipped >= 4,
        "stderr should say how many lines were skipped (at least 4):\n{stderr}"
    );
    assert!(
        stderr.contains("invalid JSON"),
        "stderr should name invalid JSON:\n{stderr}"
    );
    assert!(
        stderr.contains("invalid UTF-8"),
        "stderr should name invalid UTF-8:\n{stderr}"
    );
}

/// `status --json` lists every scanned log once, in (source, path) order, with the size the scan
/// saw and how far it read; after lines are appended, the next scan's figures replace them.
#[test]
fn status_lists_each_scanned_log_with_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = corpus(dir.path(), &small(16, true));
    let ledger = dir.path().join("ledger");
    let home = c.home.clone();
    let status = || -> Vec<(String, String, u64, u64)> {
        let out = Command::new(env!("CARGO_BIN_EXE_tokenledger"))
            .args(["status", "--json"])
            .env("HOME", &home)
            .env("TOKENLEDGER_HOME", &ledger)
            .output()
            .expect("run tokenledger status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["source"].as_str().unwrap().to_string(),
                    f["path"].as_str().unwrap().to_string(),
                    f["size"].as_u64().unwrap(),
                    f["offset"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let check = |files: &[(String, String, u64, u64)]| {
        assert!(files.len() > 20, "{} files", files.len());
        let keys: Vec<_> = files.iter().map(|f| (&f.0, &f.1)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "not in (source, path) order, or listed twice");
        for (_, path, size, offset) in files {
            let len = fs::metadata(path).unwrap().len();
            assert_eq!(*size, len, "{path}");
            assert!(offset <= size, "{path}");
        }
    };
    report(&c.home, &ledger);
    let before = status();
    check(&before);
    c.append_pending().unwrap();
    report(&c.home, &ledger);
    let after = status();
    check(&after);
    assert_eq!(after.len(), before.len());
    let grown = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| a.2 > b.2 && a.3 > b.3)
        .count();
    assert!(grown > 0, "no appended file shows its new size");
}
