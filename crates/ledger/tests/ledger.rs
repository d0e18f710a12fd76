//! Ledger behaviour with a tiny line-based collector: incremental reads, rewrites, truncation,
//! deleted logs, dedupe by key and the replay rule.

use std::io::Write;
use std::path::{Path, PathBuf};
use tokenledger_collect::{lines, Collector, Env, FileScan, FoundFile, UsageEvent};
use tokenledger_core::{Source, TokenCounts};
use tokenledger_ledger::{Filter, Ledger, NoProgress};

/// Lines: `ts key total [replay group]`; every file under `root` named `*.log`.
struct Fake {
    root: PathBuf,
}

impl Collector for Fake {
    fn source(&self) -> Source {
        Source::Claude
    }
    fn discover(&self, _env: &Env) -> Vec<FoundFile> {
        let mut v: Vec<FoundFile> = std::fs::read_dir(&self.root)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|path| FoundFile {
                source: Source::Claude,
                path,
                whole: false,
            })
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
    fn scan(&self, file: &FoundFile, offset: u64, _state: &str) -> FileScan {
        let mut scan = FileScan::default();
        let mut events = Vec::new();
        let read = lines::for_each_line(&file.path, offset, &mut scan.skipped, |l| {
            let s = std::str::from_utf8(l).unwrap();
            let f: Vec<&str> = s.split_whitespace().collect();
            let total: u64 = f[2].parse().unwrap();
            events.push(UsageEvent {
                source: Source::Claude,
                ts: f[0].parse().unwrap(),
                model: "m".into(),
                session: file.path.file_name().unwrap().to_string_lossy().into(),
                project: "p".into(),
                tokens: TokenCounts::new(total, 0, 0, 0, 0),
                dedupe_key: tokenledger_collect::stable_hash(&[f[1].as_bytes()]),
                group: f
                    .get(4)
                    .map(|g| tokenledger_collect::stable_hash(&[g.as_bytes()])),
                replay: f.get(3) == Some(&"replay"),
            });
        });
        scan.events = events;
        scan.offset = read.offset;
        scan.bytes_read = read.read;
        scan.head = read.head;
        scan
    }
}

fn total(l: &Ledger) -> u64 {
    l.buckets(&Filter::default())
        .unwrap()
        .iter()
        .map(|b| b.tokens.total_tokens)
        .sum()
}

fn append(p: &Path, s: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

fn setup() -> (tempfile::TempDir, Vec<Box<dyn Collector>>, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let c: Vec<Box<dyn Collector>> = vec![Box::new(Fake {
        root: dir.path().join("logs"),
    })];
    let l = Ledger::open_in(&dir.path().join("home")).unwrap();
    (dir, c, l)
}

#[test]
fn rerun_reads_nothing_and_appends_are_read_once() {
    let (dir, c, mut l) = setup();
    let f = dir.path().join("logs/a.log");
    append(&f, "100 k1 10\n200 k2 20\n");
    let r = l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(r.files_read, 1);
    assert_eq!(total(&l), 30);
    let r = l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!((r.files_read, r.bytes_read), (0, 0));
    append(&f, "300 k3 5\n");
    let r = l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(r.bytes_read, "300 k3 5\n".len() as u64);
    assert_eq!(total(&l), 35);
}

#[test]
fn torn_last_line_is_read_when_complete() {
    let (dir, c, mut l) = setup();
    let f = dir.path().join("logs/a.log");
    append(&f, "100 k1 10\n200 k2 2");
    let r = l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 10);
    assert_eq!(r.skipped.len(), 1);
    append(&f, "0\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 30);
}

#[test]
fn truncated_or_rewritten_file_is_reread_without_double_counting() {
    let (dir, c, mut l) = setup();
    let f = dir.path().join("logs/a.log");
    append(&f, "100 k1 10\n200 k2 20\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    // Rewritten with the same first entry and a new one: k1 counts once.
    std::fs::write(&f, "100 k1 10\n300 k3 7\n400 k4 1\n").unwrap();
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 10 + 20 + 7 + 1);
    // Truncated: nothing is lost, nothing doubled.
    std::fs::write(&f, "100 k1 10\n").unwrap();
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 38);
}

#[test]
fn history_stays_after_logs_are_deleted() {
    let (dir, c, mut l) = setup();
    let f = dir.path().join("logs/a.log");
    append(&f, "100 k1 10\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    std::fs::remove_file(&f).unwrap();
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 10);
    // And across a reopen.
    let path = l.path().to_path_buf();
    drop(l);
    let l = Ledger::open(&path).unwrap();
    assert_eq!(total(&l), 10);
}

#[test]
fn same_key_keeps_largest_across_files() {
    let (dir, c, mut l) = setup();
    append(
        &dir.path().join("logs/a.log"),
        "100 k1 3\n100 k1 9\n100 k1 4\n",
    );
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 9);
    append(&dir.path().join("logs/b.log"), "100 k1 12\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 12);
}

#[test]
fn replay_is_dropped_when_original_known_in_either_order() {
    let (dir, c, mut l) = setup();
    // The replay arrives first, in another half hour.
    append(&dir.path().join("logs/a.log"), "9000 k-side 50 replay g1\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 50);
    append(&dir.path().join("logs/b.log"), "100 k-orig 50 orig g1\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 50);
    // A replay-flagged event with no original (a real subagent call) counts.
    append(&dir.path().join("logs/c.log"), "100 k-sub 5 replay g2\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 55);
}

#[test]
fn buckets_are_half_hours() {
    let (dir, c, mut l) = setup();
    append(
        &dir.path().join("logs/a.log"),
        "0 a 1\n1799 b 2\n1800 c 4\n",
    );
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    let b = l.buckets(&Filter::default()).unwrap();
    let v: Vec<(i64, u64)> = b
        .iter()
        .map(|b| (b.hour_start, b.tokens.total_tokens))
        .collect();
    assert_eq!(v, vec![(0, 3), (1800, 4)]);
}

#[test]
fn small_changes_refresh_only_their_half_hours() {
    let (dir, c, mut l) = setup();
    // Ten half hours of history, so that one change takes the incremental path.
    let mut s = String::new();
    for h in 0..10 {
        s.push_str(&format!("{} k{h} 10\n", h * 1800));
    }
    append(&dir.path().join("logs/a.log"), &s);
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 100);
    // A replayed copy lands in hour 7 before its original (hour 2) is known...
    append(&dir.path().join("logs/b.log"), "12600 k-rep 5 replay g9\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 105);
    // ...then the original arrives: the copy in hour 7 must drop out.
    append(&dir.path().join("logs/a.log"), "3600 k-orig 5 orig g9\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 105);
    let b = l.buckets(&Filter::default()).unwrap();
    let at = |h: i64| -> u64 {
        b.iter()
            .filter(|x| x.hour_start == h)
            .map(|x| x.tokens.total_tokens)
            .sum()
    };
    assert_eq!((at(3600), at(12600)), (15, 10));
}
