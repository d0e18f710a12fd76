//! tokenledger versus ccusage 20.0.24 versus the ground truth.
//!
//! Runs only when ccusage is installed: `TOKENLEDGER_CCUSAGE` (a path to ccusage's `cli.js` or
//! native binary), else `~/.cache/tokenledger-ccusage` (see scripts/install-ccusage.sh).
//! Otherwise each test prints why it skipped and passes.
//!
//! Known ccusage 20.0.24 errors these tests pin:
//! - Claude lines without `requestId` are counted once per streamed content block;
//! - Codex `.jsonl.zst` rollouts are not read.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokenledger_testkit::{generate, Options, Truth};

/// (source, day) -> input, cached, cache creation, output (canonical fields).
type PerDay = BTreeMap<(String, String), [u64; 4]>;

/// The command that runs ccusage, or `None` (with a message) when it is not installed.
fn ccusage() -> Option<Vec<String>> {
    let path = match std::env::var_os("TOKENLEDGER_CCUSAGE") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME")?;
            PathBuf::from(home).join(".cache/tokenledger-ccusage/node_modules/ccusage/src/cli.js")
        }
    };
    if !path.exists() {
        eprintln!(
            "skipping: ccusage not found at {} (run scripts/install-ccusage.sh or set TOKENLEDGER_CCUSAGE)",
            path.display()
        );
        return None;
    }
    let p = path.to_string_lossy().to_string();
    if p.ends_with(".js") && Command::new("node").arg("--version").output().is_err() {
        eprintln!("skipping: ccusage found at {p} but `node` is not on PATH");
        return None;
    }
    Some(if p.ends_with(".js") {
        vec!["node".into(), p]
    } else {
        vec![p]
    })
}

fn clean(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env_remove("CODEX_HOME")
        .env_remove("CLAUDE_CONFIG_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env("NO_COLOR", "1");
}

fn run_json(mut cmd: Command, what: &str) -> Value {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// ccusage's daily rows of one agent (`claude` or `codex`), in canonical fields. ccusage reports
/// `inputTokens` without cache reads and writes for both agents.
fn ccusage_daily(cc: &[String], home: &Path, agent: &str) -> PerDay {
    let mut cmd = Command::new(&cc[0]);
    cmd.args(&cc[1..])
        .args([agent, "daily", "--json", "--offline", "--timezone", "UTC"]);
    clean(&mut cmd, home);
    let v = run_json(cmd, &format!("ccusage {agent} daily"));
    let mut out = PerDay::new();
    for r in v["daily"].as_array().expect("ccusage daily array") {
        let g = |k: &str| r[k].as_u64().unwrap_or(0);
        let (read, write) = (g("cacheReadTokens"), g("cacheCreationTokens"));
        out.insert(
            (
                agent.to_string(),
                r["date"].as_str().unwrap_or("").to_string(),
            ),
            [
                g("inputTokens") + read + write,
                read,
                write,
                g("outputTokens"),
            ],
        );
    }
    out
}

fn tokenledger_daily(home: &Path, ledger: &Path) -> PerDay {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenledger"));
    cmd.args([
        "report",
        "daily",
        "--json",
        "--breakdown",
        "--timezone",
        "UTC",
    ])
    .env("TOKENLEDGER_HOME", ledger);
    clean(&mut cmd, home);
    let v = run_json(cmd, "tokenledger report daily");
    let mut out = PerDay::new();
    for row in v["rows"].as_array().expect("rows") {
        for b in row["breakdown"].as_array().expect("breakdown") {
            let g = |k: &str| b[k].as_u64().unwrap_or(0);
            let key = (
                b["source"].as_str().unwrap_or("").to_string(),
                row["period"].as_str().unwrap_or("").to_string(),
            );
            let e = out.entry(key).or_default();
            for (i, k) in [
                "input_tokens",
                "cached_input_tokens",
                "cache_creation_input_tokens",
                "output_tokens",
            ]
            .iter()
            .enumerate()
            {
                e[i] += g(k);
            }
        }
    }
    out.retain(|_, v| v.iter().any(|x| *x != 0));
    out
}

fn truth_daily(t: &Truth) -> PerDay {
    let mut out = PerDay::new();
    for r in t.daily() {
        let e = out
            .entry((r.source.as_str().to_string(), r.day))
            .or_default();
        e[0] += r.tokens.input_tokens;
        e[1] += r.tokens.cached_input_tokens;
        e[2] += r.tokens.cache_creation_input_tokens;
        e[3] += r.tokens.output_tokens;
    }
    out
}

fn source_sum(d: &PerDay, source: &str) -> [u64; 4] {
    let mut s = [0u64; 4];
    for ((src, _), v) in d {
        if src == source {
            for i in 0..4 {
                s[i] += v[i];
            }
        }
    }
    s
}

fn differing_days(a: &PerDay, b: &PerDay, source: &str) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| k.0 == source && a.get(*k) != b.get(*k))
        .map(|k| k.1.clone())
        .collect()
}

#[test]
fn on_the_trap_corpus_tokenledger_matches_truth_and_ccusage_does_not() {
    let Some(cc) = ccusage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let c = generate(
        &home,
        &Options {
            seed: 21,
            files: 80,
            bytes: 3 << 20,
            ..Options::default()
        },
    )
    .unwrap();
    let truth = truth_daily(&c.truth);
    let ours = tokenledger_daily(&home, &dir.path().join("ledger"));
    let mut theirs = ccusage_daily(&cc, &home, "claude");
    theirs.extend(ccusage_daily(&cc, &home, "codex"));

    eprintln!("per source, fields [input, cached, cache_creation, output]:");
    for s in ["claude", "codex"] {
        eprintln!(
            "  {s:6} truth       {:?}\n  {s:6} tokenledger {:?} ({} days differ)\n  {s:6} ccusage     {:?} ({} days differ)",
            source_sum(&truth, s),
            source_sum(&ours, s),
            differing_days(&ours, &truth, s).len(),
            source_sum(&theirs, s),
            differing_days(&theirs, &truth, s).len(),
        );
    }
    assert_eq!(ours, truth, "tokenledger must equal the ground truth");
    // ccusage over-counts Claude (streamed blocks without requestId)...
    let (t, x) = (source_sum(&truth, "claude"), source_sum(&theirs, "claude"));
    assert!(
        x[0] > t[0] && x[3] > t[3],
        "ccusage claude {x:?} vs truth {t:?}"
    );
    // ...and under-counts Codex (.jsonl.zst rollouts unread).
    let (t, x) = (source_sum(&truth, "codex"), source_sum(&theirs, "codex"));
    assert!(
        x[0] < t[0] && x[3] < t[3],
        "ccusage codex {x:?} vs truth {t:?}"
    );
}

fn claude_block(uuid: &str, ts: &str, content: &str, output: u64) -> String {
    format!(
        "{{\"parentUuid\":null,\"isSidechain\":false,\"userType\":\"external\",\"cwd\":\"/p\",\"sessionId\":\"s1\",\"version\":\"2.0.51\",\"type\":\"assistant\",\"uuid\":\"{uuid}\",\"timestamp\":\"{ts}\",\"message\":{{\"id\":\"msg_norequest\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[{content}],\"usage\":{{\"input_tokens\":10,\"cache_read_input_tokens\":1000,\"cache_creation_input_tokens\":100,\"output_tokens\":{output}}}}}}}"
    )
}

/// One response streamed as three blocks without `requestId`: truth is one response of
/// 1110 input (1000 cached, 100 written) and 500 output.
#[test]
fn ccusage_counts_each_streamed_block_without_request_id() {
    let Some(cc) = ccusage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let p = home.join(".claude/projects/-p");
    fs::create_dir_all(&p).unwrap();
    let lines = [
        claude_block(
            "u1",
            "2025-10-05T10:00:00.000Z",
            "{\"type\":\"thinking\",\"thinking\":\"t\"}",
            1,
        ),
        claude_block(
            "u2",
            "2025-10-05T10:00:01.000Z",
            "{\"type\":\"text\",\"text\":\"x\"}",
            1,
        ),
        claude_block(
            "u3",
            "2025-10-05T10:00:02.000Z",
            "{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{}}",
            500,
        ),
    ];
    fs::write(p.join("s1.jsonl"), lines.join("\n") + "\n").unwrap();
    let key = ("claude".to_string(), "2025-10-05".to_string());
    let truth = [1110, 1000, 100, 500];
    let theirs = ccusage_daily(&cc, &home, "claude");
    assert_eq!(
        theirs.get(&key),
        Some(&[3330, 3000, 300, 502]),
        "ccusage: {theirs:?}"
    );
    let ours = tokenledger_daily(&home, &dir.path().join("ledger"));
    assert_eq!(ours.get(&key), Some(&truth), "tokenledger: {ours:?}");
}

/// A rollout compressed by Codex's idle-thread worker: ccusage reports nothing.
#[test]
fn ccusage_does_not_read_zst_rollouts() {
    let Some(cc) = ccusage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let d = home.join(".codex/sessions/2025/10/05");
    fs::create_dir_all(&d).unwrap();
    let id = "019a0000-0000-7000-8000-00000000c0de";
    let plain = format!(
        "{{\"timestamp\":\"2025-10-05T10:00:00.000Z\",\"type\":\"session_meta\",\"payload\":{{\"id\":\"{id}\",\"cwd\":\"/p\",\"originator\":\"codex_cli_rs\",\"cli_version\":\"0.146.0\"}}}}\n\
         {{\"timestamp\":\"2025-10-05T10:00:01.000Z\",\"type\":\"turn_context\",\"payload\":{{\"cwd\":\"/p\",\"model\":\"gpt-5\"}}}}\n\
         {{\"timestamp\":\"2025-10-05T10:00:30.000Z\",\"type\":\"event_msg\",\"payload\":{{\"type\":\"token_count\",\"info\":{{\"total_token_usage\":{{\"input_tokens\":5000,\"cached_input_tokens\":3000,\"cache_write_input_tokens\":0,\"output_tokens\":200,\"reasoning_output_tokens\":50,\"total_tokens\":5200}},\"last_token_usage\":{{\"input_tokens\":5000,\"cached_input_tokens\":3000,\"cache_write_input_tokens\":0,\"output_tokens\":200,\"reasoning_output_tokens\":50,\"total_tokens\":5200}},\"model_context_window\":272000}}}}}}\n"
    );
    let mut f =
        fs::File::create(d.join(format!("rollout-2025-10-05T10-00-00-{id}.jsonl.zst"))).unwrap();
    f.write_all(&zstd_compress(plain.as_bytes())).unwrap();
    drop(f);
    let key = ("codex".to_string(), "2025-10-05".to_string());
    let theirs = ccusage_daily(&cc, &home, "codex");
    assert_eq!(theirs.get(&key), None, "ccusage: {theirs:?}");
    let ours = tokenledger_daily(&home, &dir.path().join("ledger"));
    assert_eq!(
        ours.get(&key),
        Some(&[5000, 3000, 0, 200]),
        "tokenledger: {ours:?}"
    );
}

/// A zstd frame, through the zstd crate the testkit links.
fn zstd_compress(data: &[u8]) -> Vec<u8> {
    tokenledger_testkit::util::zstd_compress(data)
}
