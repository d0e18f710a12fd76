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

/// A ledger written by schema 2 (cursors in `files`, no `agg_hour`) opens with its cursors and
/// totals intact: a re-run reads nothing, an append is read from the old offset.
#[test]
fn schema_2_ledger_migrates_cursors_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let f = dir.path().join("logs/a.log");
    append(&f, "100 k1 10\n200 k2 20\n");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let md = std::fs::metadata(&f).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let conn = rusqlite::Connection::open(home.join("ledger.db")).unwrap();
        conn.execute_batch(SCHEMA_2).unwrap();
        let mtime = md
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        conn.execute(
            "INSERT INTO files VALUES ('claude', ?1, ?2, ?3, ?4, ?5, ?4, 0, 0, '{\"s\":1}', 7)",
            rusqlite::params![
                f.to_string_lossy(),
                md.dev() as i64,
                md.ino() as i64,
                md.len() as i64,
                mtime
            ],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO dims VALUES (1, 'a.log', 'p');
             INSERT INTO entries VALUES (11, 'claude', 'm', 100, 0, 1, 10, 0, 0, 0, 0, 10, NULL, 0);
             INSERT INTO entries VALUES (12, 'claude', 'm', 200, 0, 1, 20, 0, 0, 0, 0, 20, NULL, 0);
             INSERT INTO agg VALUES (0, 'claude', 'm', 1, 30, 0, 0, 0, 0, 30);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let c: Vec<Box<dyn Collector>> = vec![Box::new(Fake {
        root: dir.path().join("logs"),
    })];
    let mut l = Ledger::open_in(&home).unwrap();
    let files = l.files().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!((files[0].size, files[0].offset), (md.len(), md.len()));
    assert_eq!(total(&l), 30);
    let hh = l.half_hour_buckets(&Filter::default()).unwrap();
    assert_eq!(hh.len(), 1);
    assert_eq!(hh[0].tokens.total_tokens, 30);
    let r = l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!((r.files_read, r.bytes_read), (0, 0));
    append(&f, "300 k3 5\n");
    let r = l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(r.bytes_read, "300 k3 5\n".len() as u64);
    assert_eq!(total(&l), 35);
    assert_eq!(
        l.half_hour_buckets(&Filter::default()).unwrap()[0]
            .tokens
            .total_tokens,
        35
    );
    // The same usage again, in a later scan: the migrated entries still count it once.
    append(&f, "300 k3 5\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    assert_eq!(total(&l), 35);
    assert!(l.aggregates_consistent().unwrap());
}

/// The tables of schema versions 1 and 2, as they were written.
const SCHEMA_2: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
   source TEXT NOT NULL,
   path TEXT NOT NULL,
   dev INTEGER NOT NULL,
   inode INTEGER NOT NULL,
   size INTEGER NOT NULL,
   mtime_ns INTEGER NOT NULL,
   offset INTEGER NOT NULL,
   head_len INTEGER NOT NULL,
   head_hash INTEGER NOT NULL,
   state TEXT NOT NULL DEFAULT '',
   last_scan INTEGER NOT NULL,
   PRIMARY KEY (source, path)
);
CREATE TABLE IF NOT EXISTS dims (
   id INTEGER PRIMARY KEY,
   session TEXT NOT NULL,
   project TEXT NOT NULL,
   UNIQUE (session, project)
);
CREATE TABLE IF NOT EXISTS entries (
   id INTEGER PRIMARY KEY,
   source TEXT NOT NULL,
   model TEXT NOT NULL,
   ts INTEGER NOT NULL,
   hour_start INTEGER NOT NULL,
   dim INTEGER NOT NULL,
   input INTEGER NOT NULL,
   cached INTEGER NOT NULL,
   cache_creation INTEGER NOT NULL,
   output INTEGER NOT NULL,
   reasoning INTEGER NOT NULL,
   total INTEGER NOT NULL,
   grp INTEGER,
   replay INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_hour ON entries (hour_start);
CREATE INDEX IF NOT EXISTS entries_grp ON entries (grp) WHERE grp IS NOT NULL;
CREATE TABLE IF NOT EXISTS agg (
   hour_start INTEGER NOT NULL,
   source TEXT NOT NULL,
   model TEXT NOT NULL,
   dim INTEGER NOT NULL,
   input INTEGER NOT NULL,
   cached INTEGER NOT NULL,
   cache_creation INTEGER NOT NULL,
   output INTEGER NOT NULL,
   reasoning INTEGER NOT NULL,
   total INTEGER NOT NULL,
   PRIMARY KEY (hour_start, source, model, dim)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirty_hours (h INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS dirty_groups (g INTEGER PRIMARY KEY);
";

mod deltas {
    //! The aggregates kept by deltas against the rule they implement, over random histories:
    //! files appended to, rewritten and truncated across scans, copies of the same usage in
    //! several files with different totals, replayed copies before and after their originals.
    use super::*;
    use proptest::prelude::*;

    /// Everything about a usage but its total derives from its key, as with real dedupe keys.
    fn line(key: u8, total: u16) -> String {
        let ts = 1_700_000_000 + (key as i64 % 7) * 1800 + key as i64;
        let (kind, group) = match key % 5 {
            0 | 1 => ("replay", key % 4),
            2 => ("orig", key % 4),
            _ => ("plain", 0),
        };
        if kind == "plain" {
            format!("{ts} k{key} {total}\n")
        } else {
            format!("{ts} k{key} {total} {kind} g{group}\n")
        }
    }

    /// The rule: per key the largest total; a replayed copy counts unless an original of its
    /// group exists.
    fn expected(seen: &std::collections::BTreeMap<u8, u64>) -> u64 {
        let originals: std::collections::HashSet<u8> =
            seen.keys().filter(|k| *k % 5 == 2).map(|k| k % 4).collect();
        seen.iter()
            .filter(|(k, _)| !(*k % 5 < 2 && originals.contains(&(*k % 4))))
            .map(|(_, t)| *t)
            .sum()
    }

    #[derive(Debug, Clone)]
    enum Step {
        Append(u8, Vec<(u8, u16)>),
        Rewrite(u8, Vec<(u8, u16)>),
        Scan,
    }

    fn step() -> impl Strategy<Value = Step> {
        let lines = proptest::collection::vec((0u8..40, 1u16..500), 0..8);
        prop_oneof![
            4 => (0u8..4, lines.clone()).prop_map(|(f, l)| Step::Append(f, l)),
            1 => (0u8..4, lines).prop_map(|(f, l)| Step::Rewrite(f, l)),
            2 => Just(Step::Scan),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn kept_aggregates_equal_a_recomputation(steps in proptest::collection::vec(step(), 1..25)) {
            let (dir, c, mut l) = setup();
            // What each file holds now, and what scans have seen (history stays).
            let mut files: std::collections::BTreeMap<u8, Vec<(u8, u16)>> = Default::default();
            let mut seen = std::collections::BTreeMap::new();
            for s in steps.iter().chain(std::iter::once(&Step::Scan)) {
                match s {
                    Step::Append(f, lines) | Step::Rewrite(f, lines) => {
                        let p = dir.path().join(format!("logs/f{f}.log"));
                        let text: String = lines.iter().map(|(k, t)| line(*k, *t)).collect();
                        let held = files.entry(*f).or_default();
                        if matches!(s, Step::Rewrite(..)) {
                            std::fs::write(&p, &text).unwrap();
                            held.clear();
                        } else {
                            append(&p, &text);
                        }
                        held.extend(lines);
                    }
                    Step::Scan => {
                        for (k, t) in files.values().flatten() {
                            let e = seen.entry(*k).or_insert(0u64);
                            *e = (*e).max(*t as u64);
                        }
                        l.scan(&c, &Env::default(), &NoProgress).unwrap();
                        prop_assert!(l.aggregates_consistent().unwrap());
                        prop_assert_eq!(total(&l), expected(&seen));
                        let hh: u64 = l
                            .half_hour_buckets(&Filter::default())
                            .unwrap()
                            .iter()
                            .map(|b| b.tokens.total_tokens)
                            .sum();
                        prop_assert_eq!(hh, expected(&seen));
                    }
                }
            }
        }
    }
}

/// Two processes scanning one ledger at once (a hook and a report, say): the writes take turns
/// and the result is what one scan alone gives.
#[test]
fn concurrent_scans_of_one_ledger_agree_with_one_scan() {
    let (dir, _, _) = setup();
    for i in 0..20 {
        append(
            &dir.path().join(format!("logs/f{i}.log")),
            &format!(
                "{} ko{i} 10 orig g{i}\n{} kr{i} 7 replay g{i}\n{} kp{i} 3\n",
                100 + i,
                9000 + i,
                200 + i
            ),
        );
    }
    let home = dir.path().join("home");
    let logs = dir.path().join("logs");
    let scans: Vec<_> = (0..2)
        .map(|_| {
            let (home, logs) = (home.clone(), logs.clone());
            std::thread::spawn(move || {
                let c: Vec<Box<dyn Collector>> = vec![Box::new(Fake { root: logs })];
                let mut l = Ledger::open_in(&home).unwrap();
                l.scan(&c, &Env::default(), &NoProgress).unwrap();
            })
        })
        .collect();
    for s in scans {
        s.join().unwrap();
    }
    let mut l = Ledger::open_in(&home).unwrap();
    assert!(l.aggregates_consistent().unwrap());
    // Each original counts, its replayed copy does not.
    assert_eq!(total(&l), 20 * (10 + 3));
}

/// A scan with nothing new writes nothing, so it does not wait for another process that holds
/// the ledger's write lock (a long first scan, a sync in `serve`).
#[test]
fn nothing_new_does_not_wait_for_a_writer() {
    let (dir, c, mut l) = setup();
    append(&dir.path().join("logs/a.log"), "100 k1 10\n");
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    let other = rusqlite::Connection::open(dir.path().join("home/ledger.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let logs = dir.path().join("logs");
    let home = dir.path().join("home");
    std::thread::spawn(move || {
        let c: Vec<Box<dyn Collector>> = vec![Box::new(Fake { root: logs })];
        let mut l = Ledger::open_in(&home).unwrap();
        let r = l
            .scan(&c, &Env::default(), &NoProgress)
            .map(|r| r.files_read);
        let _ = done_tx.send(r.map_err(|e| e.to_string()));
    });
    // Only reached on failure: the scan would block on the lock (busy timeout 30 s).
    let r = done_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a scan with nothing new waited for the write lock");
    assert_eq!(r, Ok(0));
    other.execute_batch("ROLLBACK").unwrap();
}

/// A first scan writes the database file itself (a rollback journal while it runs: its pages
/// are new) and leaves the ledger in WAL mode with an empty log, so that the runs after it do
/// not rebuild a log index on open. Later runs that write leave their write-ahead log for the
/// next writing scan to fold into the database file (no checkpoint on commit or close, where it
/// would end every such run); what they wrote is read back by every later connection
/// meanwhile, and repeated writing scans keep the log from growing with each one.
#[test]
fn write_ahead_log_is_folded_by_the_next_writing_scan() {
    let (dir, c, mut l) = setup();
    let wal = dir.path().join("home/ledger.db-wal");
    let journal = dir.path().join("home/ledger.db-journal");
    let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let f = dir.path().join("logs/a.log");
    let line = |i: usize| format!("{} k{i} {}\n", 100 + i, 1 + i % 7);
    let mut expected = 0;
    for i in 0..400 {
        append(&f, &line(i));
        expected += 1 + (i % 7) as u64;
    }
    // Many files, so that the first scan writes many pages.
    for j in 0..300 {
        append(&dir.path().join(format!("logs/g{j}.log")), &line(1000 + j));
        expected += 1 + ((1000 + j) % 7) as u64;
    }
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    let mode: String = l
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        mode, "wal",
        "the first scan left the ledger out of WAL mode"
    );
    drop(l);
    assert_eq!(wal_len(), 0, "the first scan left pages in the log");
    assert!(
        !journal.exists(),
        "the first scan left its rollback journal"
    );
    let file_len = std::fs::metadata(dir.path().join("home/ledger.db"))
        .unwrap()
        .len();
    assert!(
        file_len > 64 * 1024,
        "{file_len} bytes in the database file"
    );
    // The second scan is a big one too: its pages stay in the log when it ends.
    let mut l = Ledger::open_in(&dir.path().join("home")).unwrap();
    assert_eq!(total(&l), expected);
    for j in 0..300 {
        append(&dir.path().join(format!("logs/h{j}.log")), &line(2000 + j));
        expected += 1 + ((2000 + j) % 7) as u64;
    }
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    drop(l);
    let after_first = wal_len();
    assert!(after_first > 0, "the second scan's log was folded at close");
    // A new connection reads what is only in the log.
    let mut l = Ledger::open_in(&dir.path().join("home")).unwrap();
    assert_eq!(total(&l), expected);
    assert!(l.aggregates_consistent().unwrap());
    // Each later scan writes a little and folds the log first: the log stays the size the
    // largest scan needed, it does not grow by what every run adds.
    for i in 400..440 {
        append(&f, &line(i));
        expected += 1 + (i % 7) as u64;
        l.scan(&c, &Env::default(), &NoProgress).unwrap();
    }
    assert_eq!(total(&l), expected);
    assert!(
        wal_len() <= after_first,
        "the log grew from {after_first} to {} bytes over 40 writing scans",
        wal_len()
    );
    let db = rusqlite::Connection::open(dir.path().join("home/ledger.db")).unwrap();
    let (busy, log, folded): (i64, i64, i64) = db
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0);
    // Only the last scan's pages were still to fold.
    assert!(log < 40, "{log} log pages were never folded ({folded} now)");
}

/// A first scan that finds another connection reading the new ledger does not wait for it to
/// leave WAL mode: it writes through the write-ahead log as any later scan does, and counts the
/// same.
#[test]
fn a_first_scan_beside_another_reader_stays_in_wal_and_counts_the_same() {
    let (dir, c, mut l) = setup();
    append(&dir.path().join("logs/a.log"), "100 k1 10\n200 k2 20\n");
    let other = rusqlite::Connection::open(dir.path().join("home/ledger.db")).unwrap();
    other
        .execute_batch("BEGIN; SELECT count(*) FROM cursor_buckets;")
        .unwrap();
    // Waiting would end in "database is locked" after the busy timeout: the scan would fail.
    l.scan(&c, &Env::default(), &NoProgress).unwrap();
    let mode: String = l
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(!dir.path().join("home/ledger.db-journal").exists());
    assert_eq!(total(&l), 30);
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    drop(l);
    let l = Ledger::open_in(&dir.path().join("home")).unwrap();
    assert_eq!(total(&l), 30);
}
