//! OpenCode collector: SQLite (v1 and 2.x tables) and the legacy JSON store, `step-finish`
//! sums, zero rows, forks, change checks and unreadable databases, with exact totals.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use tokenledger_collect::opencode::{self, OpenCodeCollector};
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, UsageEvent};
use tokenledger_core::{Source, TokenCounts};

fn total(events: &[UsageEvent]) -> TokenCounts {
    events.iter().map(|e| e.tokens).sum()
}

fn found(path: &Path) -> FoundFile {
    FoundFile {
        source: Source::OpenCode,
        path: path.to_path_buf(),
        whole: true,
    }
}

fn scan(path: &Path, state: &str) -> FileScan {
    OpenCodeCollector.scan(&found(path), 0, state)
}

fn by_id<'a>(events: &'a [UsageEvent], id: &str) -> &'a UsageEvent {
    let key = tokenledger_collect::stable_hash(&[b"opencode", id.as_bytes()]);
    events
        .iter()
        .find(|e| e.dedupe_key == key)
        .unwrap_or_else(|| panic!("no event for {id}"))
}

const V1_SCHEMA: &str = "
CREATE TABLE session (id TEXT PRIMARY KEY, project_id TEXT, parent_id TEXT, directory TEXT,
    title TEXT, version TEXT, time_created INTEGER, time_updated INTEGER);
CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT, time_created INTEGER,
    time_updated INTEGER, data TEXT);
CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT, session_id TEXT, time_created INTEGER,
    time_updated INTEGER, data TEXT);
";

fn session(c: &Connection, id: &str, parent: Option<&str>, dir: &str) {
    c.execute(
        "INSERT INTO session VALUES (?1, 'proj', ?2, ?3, 't', '1.3.0', 1, 1)",
        params![id, parent, dir],
    )
    .unwrap();
}

fn message(c: &Connection, id: &str, session: &str, data: &str) {
    c.execute(
        "INSERT INTO message VALUES (?1, ?2, 1764547200000, 1764547200000, ?3)",
        params![id, session, data],
    )
    .unwrap();
}

fn part(c: &Connection, id: &str, message: &str, data: &str) {
    c.execute(
        "INSERT INTO part VALUES (?1, ?2, 's', 1, 1, ?3)",
        params![id, message, data],
    )
    .unwrap();
}

fn assistant(created_ms: i64, tokens: &str, extra: &str) -> String {
    format!(
        r#"{{"role":"assistant","time":{{"created":{created_ms},"completed":{}}},"modelID":"claude-sonnet-4.5","providerID":"anthropic","cost":0.1,"tokens":{tokens}{extra}}}"#,
        created_ms + 1000
    )
}

fn step(tokens: &str) -> String {
    format!(r#"{{"type":"step-finish","reason":"tool-calls","cost":0.01,"tokens":{tokens}}}"#)
}

/// 2025-12-01T00:00:00Z in ms.
const T0: i64 = 1_764_547_200_000;

/// A v1 database with every trap; returns its path. Ground truth in `v1_database_totals`.
fn v1_db(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let c = Connection::open(&path).unwrap();
    c.execute_batch(V1_SCHEMA).unwrap();
    session(&c, "ses_main", None, "/work/app");
    session(&c, "ses_sub", Some("ses_main"), "/work/app");
    message(
        &c,
        "msg_u1",
        "ses_main",
        r#"{"role":"user","time":{"created":1764547200000}}"#,
    );
    // Multi-step: the message keeps only the last step's tokens; the parts hold both steps.
    message(
        &c,
        "msg_a1",
        "ses_main",
        &assistant(
            T0 + 5_000,
            r#"{"input":50,"output":5,"reasoning":1,"cache":{"read":400,"write":0}}"#,
            "",
        ),
    );
    part(
        &c,
        "prt_1",
        "msg_a1",
        r#"{"type":"text","text":"mentions step-finish in prose"}"#,
    );
    part(
        &c,
        "prt_2",
        "msg_a1",
        &step(r#"{"input":100,"output":10,"reasoning":2,"cache":{"read":300,"write":200}}"#),
    );
    part(
        &c,
        "prt_3",
        "msg_a1",
        &step(r#"{"input":50,"output":5,"reasoning":1,"cache":{"read":400,"write":0}}"#),
    );
    // No step-finish parts: the message's tokens; project from `path.root`.
    message(
        &c,
        "msg_a2",
        "ses_main",
        &assistant(
            T0 + 1_900_000,
            r#"{"total":1700,"input":1000,"output":200,"reasoning":100,"cache":{"read":300,"write":100}}"#,
            r#","path":{"cwd":"/work/app/sub","root":"/work/app-root"}"#,
        ),
    );
    // Still being written (all zero): skipped.
    message(
        &c,
        "msg_a3",
        "ses_main",
        &assistant(
            T0 + 2_000_000,
            r#"{"input":0,"output":0,"reasoning":0,"cache":{"read":0,"write":0}}"#,
            "",
        ),
    );
    // A subagent session's call: counted once.
    message(
        &c,
        "msg_s1",
        "ses_sub",
        &assistant(
            T0 + 10_000,
            r#"{"input":7,"output":3,"reasoning":0,"cache":{"read":0,"write":0}}"#,
            "",
        ),
    );
    // Broken rows.
    message(&c, "msg_bad", "ses_main", "{not json");
    message(
        &c,
        "msg_badtype",
        "ses_main",
        &assistant(T0, r#"{"input":"many","output":1}"#, ""),
    );
    path
}

#[test]
fn v1_database_totals() {
    let dir = tempfile::tempdir().unwrap();
    let db = v1_db(dir.path(), "opencode.db");
    let s = scan(&db, "");
    assert_eq!(s.events.len(), 3);
    // msg_a1: steps summed: input 150+700 read+200 write, output 15+3 reasoning.
    let a1 = by_id(&s.events, "msg_a1");
    assert_eq!(a1.tokens, TokenCounts::new(1050, 700, 200, 18, 3));
    assert_eq!(a1.session, "ses_main");
    assert_eq!(a1.project, "/work/app");
    assert_eq!(a1.model, "claude-sonnet-4.5");
    assert_eq!(a1.ts, (T0 + 5_000) / 1000);
    assert_eq!(a1.source, Source::OpenCode);
    let a2 = by_id(&s.events, "msg_a2");
    assert_eq!(a2.tokens, TokenCounts::new(1400, 300, 100, 300, 100));
    assert_eq!(a2.project, "/work/app-root");
    let s1 = by_id(&s.events, "msg_s1");
    assert_eq!(s1.tokens, TokenCounts::new(7, 0, 0, 3, 0));
    assert_eq!(s1.session, "ses_sub");
    assert_eq!(
        total(&s.events),
        TokenCounts::new(2457, 1000, 300, 321, 103)
    );
    assert_eq!(total(&s.events).total_tokens, 2778);
    let reasons: Vec<SkipReason> = s.skipped.iter().map(|k| k.reason).collect();
    assert_eq!(
        reasons,
        vec![SkipReason::InvalidJson, SkipReason::BadFields]
    );
    assert_eq!(s.offset, fs::metadata(&db).unwrap().len());
    assert!(s.bytes_read > 0);
}

#[test]
fn unchanged_database_returns_at_once_and_wal_writes_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let db = v1_db(dir.path(), "opencode.db");
    let first = scan(&db, "");
    assert_eq!(first.events.len(), 3);
    assert!(!first.state.is_empty());

    let again = scan(&db, &first.state);
    assert!(again.events.is_empty());
    assert!(again.skipped.is_empty());
    assert_eq!(again.state, first.state);
    assert_eq!(again.bytes_read, 0);

    // A writer in WAL mode that stays open: the new row lives only in the -wal file.
    let w = Connection::open(&db).unwrap();
    let mode: String = w
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    w.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let size_before = fs::metadata(&db).unwrap().len();
    message(
        &w,
        "msg_a4",
        "ses_main",
        &assistant(
            T0 + 20_000,
            r#"{"input":11,"output":2,"reasoning":0,"cache":{"read":0,"write":0}}"#,
            "",
        ),
    );
    assert_eq!(fs::metadata(&db).unwrap().len(), size_before);
    assert!(
        fs::metadata(dir.path().join("opencode.db-wal"))
            .unwrap()
            .len()
            > 0
    );

    let third = scan(&db, &again.state);
    assert_ne!(third.state, first.state);
    assert_eq!(third.events.len(), 4);
    assert_eq!(
        by_id(&third.events, "msg_a4").tokens,
        TokenCounts::new(11, 0, 0, 2, 0)
    );
    // Whole re-read: the same keys as before plus the new one.
    assert_eq!(
        total(&third.events),
        total(&first.events) + TokenCounts::new(11, 0, 0, 2, 0)
    );
    drop(w);
}

#[test]
fn corrupt_database_is_unreadable_and_other_databases_still_scan() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("opencode.db");
    fs::write(
        &bad,
        b"this is not a database, just 64 bytes of text padding.........",
    )
    .unwrap();
    v1_db(dir.path(), "opencode-beta.db");
    let env = Env {
        home: dir.path().to_path_buf(),
        vars: HashMap::from([(
            "OPENCODE_DATA_DIR".to_string(),
            dir.path().to_string_lossy().into_owned(),
        )]),
    };
    let files = OpenCodeCollector.discover(&env);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["opencode-beta.db", "opencode.db"]);
    assert!(files
        .iter()
        .all(|f| f.whole && f.source == Source::OpenCode));

    let s = OpenCodeCollector.scan(&files[1], 0, "");
    assert!(s.events.is_empty());
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].reason, SkipReason::Unreadable);

    let good = OpenCodeCollector.scan(&files[0], 0, "");
    assert_eq!(total(&good.events).total_tokens, 2778);

    // A missing file too.
    let gone = scan(&dir.path().join("missing.db"), "");
    assert!(gone.events.is_empty());
    assert_eq!(gone.skipped[0].reason, SkipReason::Unreadable);
}

/// `<root>/storage/...` legacy JSON store with one multi-step and one single-step message.
fn legacy_store(root: &Path) {
    let st = root.join("storage");
    let w = |rel: &str, text: &str| {
        let p = st.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "session/proj1/ses_l1.json",
        r#"{"id":"ses_l1","projectID":"proj1","directory":"/work/legacy","time":{"created":1,"updated":2}}"#,
    );
    w(
        "message/ses_l1/msg_l0.json",
        r#"{"id":"msg_l0","sessionID":"ses_l1","role":"user","time":{"created":1764547200000}}"#,
    );
    w(
        "message/ses_l1/msg_l1.json",
        &format!(
            r#"{{"id":"msg_l1","sessionID":"ses_l1",{}"#,
            &assistant(
                T0,
                r#"{"input":5,"output":1,"reasoning":0,"cache":{"read":0,"write":0}}"#,
                ""
            )[1..]
        ),
    );
    w(
        "part/msg_l1/prt_a.json",
        &step(r#"{"input":20,"output":2,"reasoning":0,"cache":{"read":0,"write":0}}"#),
    );
    w(
        "part/msg_l1/prt_b.json",
        &step(r#"{"input":5,"output":1,"reasoning":0,"cache":{"read":10,"write":0}}"#),
    );
    w("part/msg_l1/prt_c.json", r#"{"type":"text","text":"hi"}"#);
    w("part/msg_l1/prt_d.json", "{broken");
    w(
        "message/ses_l1/msg_l2.json",
        &format!(
            r#"{{"id":"msg_l2","sessionID":"ses_l1",{}"#,
            &assistant(
                T0 + 60_000,
                r#"{"input":3,"output":4,"reasoning":2,"cache":{"read":1,"write":1}}"#,
                ""
            )[1..]
        ),
    );
}

#[test]
fn legacy_json_store_is_read_only_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data/opencode");
    legacy_store(&root);
    let env = Env {
        home: dir.path().to_path_buf(),
        vars: HashMap::from([(
            "XDG_DATA_HOME".to_string(),
            dir.path().join("data").to_string_lossy().into_owned(),
        )]),
    };
    let files = OpenCodeCollector.discover(&env);
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f.whole));
    let scans: Vec<FileScan> = files
        .iter()
        .map(|f| OpenCodeCollector.scan(f, 0, ""))
        .collect();
    let events: Vec<UsageEvent> = scans.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(events.len(), 2);
    // msg_l1: the two steps (input 25 + 10 read, output 3); msg_l2: its own tokens.
    assert_eq!(
        by_id(&events, "msg_l1").tokens,
        TokenCounts::new(35, 10, 0, 3, 0)
    );
    assert_eq!(
        by_id(&events, "msg_l2").tokens,
        TokenCounts::new(5, 1, 1, 6, 2)
    );
    assert_eq!(by_id(&events, "msg_l1").project, "/work/legacy");
    assert_eq!(by_id(&events, "msg_l1").session, "ses_l1");
    let skipped: Vec<SkipReason> = scans
        .iter()
        .flat_map(|s| s.skipped.iter().map(|k| k.reason))
        .collect();
    assert_eq!(skipped, vec![SkipReason::InvalidJson]);

    // Once a database exists in the root, the JSON store is ignored.
    v1_db(&root, "opencode.db");
    let files = OpenCodeCollector.discover(&env);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, root.join("opencode.db"));
}

#[test]
fn default_root_and_opencode_db_variable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(".local/share/opencode");
    fs::create_dir_all(&root).unwrap();
    v1_db(&root, "opencode.db");
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let other = v1_db(&elsewhere, "custom.db");
    let mut env = Env {
        home: dir.path().to_path_buf(),
        vars: HashMap::new(),
    };
    let files = OpenCodeCollector.discover(&env);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, root.join("opencode.db"));
    env.vars.insert(
        "OPENCODE_DB".to_string(),
        other.to_string_lossy().into_owned(),
    );
    let files = OpenCodeCollector.discover(&env);
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(
        paths,
        vec![root.join("opencode.db").as_path(), other.as_path()]
    );
}

const V2_SCHEMA: &str = "
CREATE TABLE session_v2 (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, parent_id TEXT,
    fork_session_id TEXT, fork_boundary TEXT, slug TEXT, directory TEXT NOT NULL, title TEXT,
    version TEXT, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL);
CREATE TABLE session_message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, type TEXT NOT NULL,
    seq INTEGER NOT NULL, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT);
";

fn v2_session(c: &Connection, id: &str, fork: Option<(&str, &str)>) {
    c.execute(
        "INSERT INTO session_v2 VALUES (?1, 'proj', NULL, ?2, ?3, 's', '/work/v2', 't', '2.0.8', 1, 1)",
        params![id, fork.map(|f| f.0), fork.map(|f| f.1)],
    )
    .unwrap();
}

fn v2_row(c: &Connection, id: &str, session: &str, kind: &str, seq: i64, tokens: Option<&str>) {
    let data = match tokens {
        Some(t) => format!(
            r#"{{"agent":"build","model":{{"id":"gpt-5","providerID":"openai"}},"time":{{"created":{}}},"tokens":{t},"content":[]}}"#,
            T0 + seq * 1000
        ),
        None => r#"{"text":"hi"}"#.to_string(),
    };
    c.execute(
        "INSERT INTO session_message VALUES (?1, ?2, ?3, ?4, 1, 1, ?5)",
        params![id, session, kind, seq, data],
    )
    .unwrap();
}

fn tok(input: u64, output: u64) -> String {
    format!(r#"{{"input":{input},"output":{output},"reasoning":0,"cache":{{"read":0,"write":0}}}}"#)
}

#[test]
fn v2_tables_forks_exclude_copied_rows_and_v1_copies_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let db = v1_db(dir.path(), "opencode.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(V2_SCHEMA).unwrap();
    // Parent session, also present in the frozen v1 tables under another message id.
    v2_session(&c, "ses_main", None);
    v2_row(&c, "sm_u1", "ses_main", "user", 1, None);
    v2_row(&c, "sm_a1", "ses_main", "assistant", 2, Some(&tok(100, 10)));
    v2_row(&c, "sm_a2", "ses_main", "assistant", 3, Some(&tok(200, 20)));
    // Fork with a resolvable boundary (the parent's seq-3 row): seq 1..3 are copies.
    v2_session(&c, "ses_fork", Some(("ses_main", "sm_a2")));
    v2_row(&c, "sf_u1", "ses_fork", "user", 1, None);
    v2_row(&c, "sf_a1", "ses_fork", "assistant", 2, Some(&tok(100, 10)));
    v2_row(&c, "sf_a2", "ses_fork", "assistant", 3, Some(&tok(200, 20)));
    v2_row(&c, "sf_a3", "ses_fork", "assistant", 4, Some(&tok(40, 4)));
    // Fork whose boundary is unknown: copies are recognised by seq and equal tokens.
    v2_session(&c, "ses_fork2", Some(("ses_main", "gone")));
    v2_row(
        &c,
        "sg_a1",
        "ses_fork2",
        "assistant",
        2,
        Some(&tok(100, 10)),
    );
    v2_row(&c, "sg_a2", "ses_fork2", "assistant", 3, Some(&tok(9, 1)));
    // All zero: skipped.
    v2_row(&c, "sm_a0", "ses_main", "assistant", 5, Some(&tok(0, 0)));
    drop(c);

    let s = scan(&db, "");
    let mut ids: Vec<u64> = s.events.iter().map(|e| e.dedupe_key).collect();
    ids.sort();
    let mut want: Vec<u64> = ["sm_a1", "sm_a2", "sf_a3", "sg_a2", "msg_s1"]
        .iter()
        .map(|id| tokenledger_collect::stable_hash(&[b"opencode", id.as_bytes()]))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    // v2: 100+200+40+9 in, 10+20+4+1 out; v1 keeps only the subagent session (7 in, 3 out).
    assert_eq!(total(&s.events), TokenCounts::new(356, 0, 0, 38, 0));
    let f = by_id(&s.events, "sf_a3");
    assert_eq!(f.model, "gpt-5");
    assert_eq!(f.project, "/work/v2");
    assert_eq!(f.session, "ses_fork");
    assert_eq!(f.ts, (T0 + 4000) / 1000);
}

#[test]
fn json_parsers_are_tolerant() {
    let m = opencode::parse_message(
        br#"{"id":"m","sessionID":"s","role":"assistant","model":{"providerID":"openai","modelID":"gpt-4o-mini"},"path":"/tmp/x","tokens":{"input":120,"output":16}}"#,
    )
    .unwrap();
    assert!(m.assistant);
    assert_eq!(m.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(m.project.as_deref(), Some("/tmp/x"));
    assert_eq!(
        m.tokens.unwrap().counts(),
        TokenCounts::new(120, 0, 0, 16, 0)
    );
    assert_eq!(opencode::parse_message(b"[]"), Err(SkipReason::BadFields));
    assert_eq!(
        opencode::parse_message(b"\xff"),
        Err(SkipReason::InvalidUtf8)
    );
    assert_eq!(
        opencode::parse_message(br#"{"tokens":{"cache":5}}"#),
        Err(SkipReason::BadFields)
    );
    assert_eq!(opencode::parse_step_finish(br#"{"type":"text"}"#), Ok(None));
    let (mid, t) = opencode::parse_step_finish(
        br#"{"type":"step-finish","messageID":"m","tokens":{"input":1,"output":2,"reasoning":3,"cache":{"read":4,"write":5}}}"#,
    )
    .unwrap()
    .unwrap();
    assert_eq!(mid.as_deref(), Some("m"));
    assert_eq!(t.counts(), TokenCounts::new(10, 4, 5, 5, 3));
}

fn shared_fixtures() -> Option<PathBuf> {
    let base = match std::env::var_os("TOKENLEDGER_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let dir = base.join("fixtures/agent-sessions/opencode");
    dir.is_dir().then_some(dir)
}

fn fixture_messages(storage: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for s in fs::read_dir(storage.join("message")).unwrap() {
        for m in fs::read_dir(s.unwrap().path()).unwrap() {
            out.push(m.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn real_fixtures_give_known_totals() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("skipped: shared fixtures not found");
        return;
    };
    let scans: Vec<FileScan> = fixture_messages(&dir.join("storage_v2"))
        .iter()
        .map(|p| scan(p, ""))
        .collect();
    let events: Vec<UsageEvent> = scans.iter().flat_map(|s| s.events.clone()).collect();
    assert!(scans.iter().all(|s| s.skipped.is_empty()));
    // Only m_assistant_large_1 carries usage (its step-finish part: 120 in, 16 out).
    assert_eq!(events.len(), 1);
    let e = by_id(&events, "m_assistant_large_1");
    assert_eq!(e.tokens, TokenCounts::new(120, 0, 0, 16, 0));
    assert_eq!(e.model, "gpt-4o-mini");
    assert_eq!(e.session, "s_stage0_large");
    assert_eq!(e.project, "/tmp/large");
    assert_eq!(e.ts, 1_730_000_102);

    let scans: Vec<FileScan> = fixture_messages(&dir.join("storage_legacy"))
        .iter()
        .map(|p| scan(p, ""))
        .collect();
    assert!(scans
        .iter()
        .all(|s| s.events.is_empty() && s.skipped.is_empty()));
}

#[test]
fn unknown_v2_schema_does_not_hide_v1_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = v1_db(dir.path(), "opencode.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE session_message (id TEXT PRIMARY KEY, blob TEXT);")
        .unwrap();
    drop(c);
    let s = scan(&db, "");
    assert_eq!(total(&s.events).total_tokens, 2778);
    assert_eq!(
        s.skipped.iter().map(|k| k.reason).collect::<Vec<_>>(),
        vec![
            SkipReason::BadFields,
            SkipReason::InvalidJson,
            SkipReason::BadFields
        ]
    );
}

#[test]
fn database_named_by_opencode_db_with_another_extension_is_scanned_as_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = v1_db(dir.path(), "usage.sqlite");
    let s = scan(&db, "");
    assert_eq!(total(&s.events).total_tokens, 2778);
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = opencode::parse_message(&bytes);
        let _ = opencode::parse_step_finish(&bytes);
    }

    #[test]
    fn token_mapping_keeps_parts_inside_totals(
        i in 0u64..1 << 40, o in 0u64..1 << 40, r in 0u64..1 << 40,
        cr in 0u64..1 << 40, cw in 0u64..1 << 40,
    ) {
        let json = format!(
            r#"{{"type":"step-finish","tokens":{{"input":{i},"output":{o},"reasoning":{r},"cache":{{"read":{cr},"write":{cw}}}}}}}"#
        );
        let (_, t) = opencode::parse_step_finish(json.as_bytes()).unwrap().unwrap();
        let c = t.counts();
        proptest::prop_assert_eq!(c, TokenCounts::new(i + cr + cw, cr, cw, o + r, r));
        proptest::prop_assert_eq!(c.total_tokens, i + o + r + cr + cw);
    }
}

/// A database's first read gathers its change check while reading (one pass over `part`
/// instead of two); a later scan asks SQL for it. The two must agree, or every run after a
/// harmless write (new mtime, same usage) would read the whole database again.
#[test]
fn a_first_reads_change_check_is_the_one_asked_later() {
    let cases: [(&str, &str); 5] = [
        ("integers", ""),
        (
            "a real latest",
            "UPDATE part SET time_updated = 7.9 WHERE id = 'prt_3';",
        ),
        (
            "a real below the integers",
            "UPDATE part SET time_updated = 0.5 WHERE id = 'prt_3';
             UPDATE part SET time_updated = 3 WHERE id = 'prt_1';",
        ),
        (
            "text and null",
            "UPDATE message SET time_updated = 'later' WHERE id = 'msg_bad';
             UPDATE message SET time_updated = NULL WHERE id = 'msg_u1';",
        ),
        (
            "no time_updated column in part",
            "CREATE TABLE part2 (id TEXT PRIMARY KEY, message_id TEXT, session_id TEXT,
                                 time_created INTEGER, data TEXT);
             INSERT INTO part2 SELECT id, message_id, session_id, time_created, data FROM part;
             DROP TABLE part; ALTER TABLE part2 RENAME TO part;",
        ),
    ];
    for (name, sql) in cases {
        let dir = tempfile::tempdir().unwrap();
        let db = v1_db(dir.path(), "opencode.db");
        Connection::open(&db).unwrap().execute_batch(sql).unwrap();
        let first = scan(&db, "");
        assert_eq!(first.events.len(), 3, "{name}");
        // A write that changes no usage: the stamps differ, so the check is asked.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&db)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let second = scan(&db, &first.state);
        assert!(second.events.is_empty(), "{name}: read again");
        assert_eq!(second.bytes_read, 0, "{name}: read again");
        assert_ne!(second.state, first.state, "{name}: new stamps kept");
        // And a real change is still seen.
        message(
            &Connection::open(&db).unwrap(),
            "msg_a9",
            "ses_main",
            &assistant(
                T0 + 30_000,
                r#"{"input":5,"output":1,"reasoning":0,"cache":{"read":0,"write":0}}"#,
                "",
            ),
        );
        let third = scan(&db, &second.state);
        assert_eq!(third.events.len(), 4, "{name}");
    }
}
