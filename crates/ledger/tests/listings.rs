//! Folder listings kept in the ledger: a scan reads only folders that changed since the last
//! one, and still finds every new file and forgets folders that went.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tokenledger_collect::claude::ClaudeCollector;
use tokenledger_collect::{Collector, Env};
use tokenledger_ledger::{Filter, Ledger, NoProgress};

fn line(id: &str, input: u64) -> String {
    format!(
        r#"{{"type":"assistant","sessionId":"s","timestamp":"2025-12-16T00:00:01Z","requestId":"r{id}","message":{{"id":"m{id}","model":"claude-sonnet-4-5","usage":{{"input_tokens":{input},"output_tokens":1}}}}}}"#
    ) + "\n"
}

fn append(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

/// A folder's mtime far in the past: a later change to its entries gives it another stamp
/// however coarse the clock, so the test need not wait for time to pass.
fn backdate(dir: &Path) {
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::open(dir)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(old))
        .unwrap();
}

fn input_total(l: &Ledger) -> u64 {
    l.buckets(&Filter::default())
        .unwrap()
        .iter()
        .map(|b| b.tokens.input_tokens)
        .sum()
}

fn stored(l: &Ledger) -> Vec<String> {
    let mut st = l
        .connection()
        .prepare("SELECT path FROM dir_listings ORDER BY path")
        .unwrap();
    let rows = st
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|p| String::from_utf8(p.unwrap()).unwrap())
        .collect();
    rows
}

/// Claude Code's logs under `claude` (in a home at `home`), its collector, and a ledger in
/// `home/ledger` where folders count as settled at once (the margin itself is tested in the
/// collector).
#[cfg(target_os = "linux")]
fn claude_scan(home: &Path, claude: &Path) -> (Env, Vec<Box<dyn Collector>>, Ledger) {
    let env = Env {
        home: home.to_path_buf(),
        vars: HashMap::from([("CLAUDE_CONFIG_DIR".into(), claude.display().to_string())]),
    };
    let c: Vec<Box<dyn Collector>> = vec![Box::new(ClaudeCollector)];
    let mut l = Ledger::open_in(&home.join("ledger")).unwrap();
    l.set_listing_margin(-10_000_000_000);
    (env, c, l)
}

#[cfg(target_os = "linux")]
#[test]
fn a_scan_reads_only_changed_folders_and_misses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let claude = t.path().join("claude");
    let projects = claude.join("projects");
    append(&projects.join("p1/a.jsonl"), &line("1", 10));
    append(&projects.join("p2/b.jsonl"), &line("2", 20));
    append(
        &projects.join("p2/b/subagents/agent-x.jsonl"),
        &line("3", 40),
    );
    let folders = ["", "p1", "p2", "p2/b", "p2/b/subagents"];
    for d in folders {
        backdate(&projects.join(d));
    }
    let (env, c, mut l) = claude_scan(t.path(), &claude);

    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!((r.folders_read, r.folders_reused), (5, 0));
    assert_eq!(input_total(&l), 70);
    let p = |d: &str| {
        projects
            .join(d)
            .display()
            .to_string()
            .trim_end_matches('/')
            .to_string()
    };
    assert_eq!(stored(&l), folders.map(p).to_vec());

    // Nothing new: no folder read, nothing read.
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!((r.folders_read, r.folders_reused), (0, 5));
    assert_eq!((r.files_read, r.bytes_read), (0, 0));
    assert_eq!(r.files_seen, 3);

    // A new session in p1 and an append in p2: p1 is read again, p2 is not (an append does not
    // change a folder), and both are counted.
    append(&projects.join("p1/new.jsonl"), &line("4", 100));
    append(&projects.join("p2/b.jsonl"), &line("5", 200));
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!((r.folders_read, r.folders_reused), (1, 4));
    assert_eq!(r.files_read, 2);
    assert_eq!(input_total(&l), 370);

    // A project that goes takes its folders' listings along; its history stays.
    std::fs::remove_dir_all(projects.join("p2")).unwrap();
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!(r.folders_read, 1);
    assert_eq!(stored(&l), [p(""), p("p1")]);
    assert_eq!(input_total(&l), 370);

    // It comes back with other files: found, although its old listing was stored.
    append(&projects.join("p2/c.jsonl"), &line("6", 1000));
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!(r.files_read, 1);
    assert_eq!(input_total(&l), 1370);

    // A folder that changed with no new log (an empty subfolder) is remembered by a scan that
    // has nothing else to write, unless another process holds the write lock: then it is left
    // for a later scan, and this one does not wait.
    std::fs::create_dir(projects.join("p1/empty")).unwrap();
    let other = rusqlite::Connection::open(t.path().join("ledger/ledger.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!((r.folders_read, r.files_read), (2, 0));
    other.execute_batch("ROLLBACK").unwrap();
    assert!(!stored(&l).contains(&p("p1/empty")));
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!(r.folders_read, 2);
    assert!(stored(&l).contains(&p("p1/empty")));
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!(r.folders_read, 0);

    // With the real margin, folders changed just now are read but not remembered.
    let mut fresh = Ledger::open_in(&t.path().join("ledger2")).unwrap();
    let r = fresh.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!(r.folders_read, 4);
    assert!(stored(&fresh).is_empty(), "{:?}", stored(&fresh));
    assert_eq!(input_total(&fresh), 1110);
}

#[cfg(target_os = "linux")]
#[test]
fn a_deep_change_under_unchanged_folders_is_found() {
    let t = tempfile::tempdir().unwrap();
    let claude = t.path().join("claude");
    let projects = claude.join("projects");
    append(&projects.join("p/s.jsonl"), &line("1", 1));
    append(
        &projects.join("p/s/subagents/agent-a.jsonl"),
        &line("2", 10),
    );
    append(&projects.join("q/t.jsonl"), &line("3", 100));
    let (env, c, mut l) = claude_scan(t.path(), &claude);
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!((r.folders_read, r.files_read), (5, 3));

    // Only the deepest folder changes: it is reached through three folders that are neither
    // read nor opened, and its old and new logs are told apart.
    append(
        &projects.join("p/s/subagents/agent-b.jsonl"),
        &line("4", 1000),
    );
    append(
        &projects.join("p/s/subagents/agent-a.jsonl"),
        &line("5", 10_000),
    );
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!((r.folders_read, r.folders_reused), (1, 4));
    assert_eq!((r.files_seen, r.files_read), (4, 2));
    assert_eq!(input_total(&l), 11_111);

    // Then nothing new: the changed folder's listing was remembered.
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!((r.folders_read, r.bytes_read), (0, 0));

    // A file in a reused folder that turns into a folder, and a reused folder that turns into
    // a file, lose nothing already counted and break nothing.
    std::fs::remove_file(projects.join("q/t.jsonl")).unwrap();
    std::fs::create_dir(projects.join("q/t.jsonl")).unwrap();
    std::fs::remove_dir_all(projects.join("p/s/subagents")).unwrap();
    std::fs::write(projects.join("p/s/subagents"), "not a folder").unwrap();
    let r = l.scan(&c, &env, &NoProgress).unwrap();
    assert_eq!(r.files_read, 0);
    assert_eq!(input_total(&l), 11_111);
}
