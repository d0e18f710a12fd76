//! Gemini CLI collector: discovery, token mapping and every double-counting trap of
//! agent-log-formats.md section 4, checked with exact totals after the ledger's merge rule.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tokenledger_collect::gemini::{self, GeminiCollector};
use tokenledger_collect::{Collector, Env, FileScan, FoundFile, SkipReason, UsageEvent};
use tokenledger_core::{parse_timestamp, Source, TokenCounts};

/// The ledger's merge rule: the largest `total_tokens` per `dedupe_key` (the first on ties).
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
    order.iter().map(|k| best[k].clone()).collect()
}

fn total(events: &[UsageEvent]) -> TokenCounts {
    events.iter().map(|e| e.tokens).sum()
}

fn found(path: &Path) -> FoundFile {
    FoundFile {
        source: Source::Gemini,
        path: path.to_path_buf(),
        whole: path.extension().and_then(|e| e.to_str()) == Some("json"),
    }
}

fn scan(path: &Path) -> FileScan {
    GeminiCollector.scan(&found(path), 0, "")
}

/// `<home>/.gemini/tmp/<project>/chats/<name>`, created with `text`.
fn chat_file(home: &Path, project: &str, name: &str, text: &str) -> PathBuf {
    let p = home
        .join(".gemini/tmp")
        .join(project)
        .join("chats")
        .join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

const META: &str = r#"{"sessionId":"sess-1","projectHash":"abc","startTime":"2026-04-29T21:00:00.000Z","lastUpdated":"2026-04-29T21:00:00.000Z","kind":"main"}"#;

fn gemini_msg(
    id: &str,
    ts: &str,
    input: u64,
    output: u64,
    cached: u64,
    thoughts: u64,
    tool: u64,
) -> String {
    format!(
        r#"{{"id":"{id}","timestamp":"{ts}","type":"gemini","content":"x","tokens":{{"input":{input},"output":{output},"cached":{cached},"thoughts":{thoughts},"tool":{tool},"total":{}}},"model":"gemini-3-flash-preview"}}"#,
        input + output + thoughts + tool
    )
}

fn lines(ls: &[String]) -> String {
    let mut s = ls.join("\n");
    s.push('\n');
    s
}

#[test]
fn maps_gemini_tokens_to_canonical_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p = chat_file(
        dir.path(),
        "myproj",
        "session-2026-04-29T21-00-sess1.jsonl",
        &lines(&[
            META.to_string(),
            r#"{"id":"u1","timestamp":"2026-04-29T21:00:01Z","type":"user","content":"hi"}"#.into(),
            gemini_msg("g1", "2026-04-29T21:00:02.500Z", 100, 20, 30, 7, 5),
        ]),
    );
    let s = scan(&p);
    assert_eq!(s.events.len(), 1);
    let e = &s.events[0];
    assert_eq!(e.tokens, TokenCounts::new(105, 30, 0, 27, 7));
    assert_eq!(e.tokens.total_tokens, 132);
    assert_eq!(e.model, "gemini-3-flash-preview");
    assert_eq!(e.session, "sess-1");
    assert_eq!(e.project, "myproj");
    assert_eq!(e.ts, parse_timestamp("2026-04-29T21:00:02Z").unwrap());
    assert_eq!(e.source, Source::Gemini);
    assert!(s.skipped.is_empty());
    assert_eq!(s.offset, fs::metadata(&p).unwrap().len());
}

#[test]
fn re_appended_message_counts_once_with_its_last_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let p = chat_file(
        dir.path(),
        "p",
        "session-a.jsonl",
        &lines(&[
            META.to_string(),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 0, 0, 0, 0),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 4, 0),
            gemini_msg("g2", "2026-04-29T21:00:05Z", 200, 20, 50, 0, 0),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 4, 6),
        ]),
    );
    let s = scan(&p);
    let merged = merge(&[&s]);
    assert_eq!(merged.len(), 2);
    // g1 last: input 106 output 14 reasoning 4; g2: input 200 cached 50 output 20.
    assert_eq!(total(&merged), TokenCounts::new(306, 50, 0, 34, 4));
    assert_eq!(total(&merged).total_tokens, 340);
    // The collector already keeps one event per key within a scan.
    assert_eq!(s.events.len(), 2);
}

#[test]
fn set_messages_never_double_counts_but_counts_messages_only_seen_there() {
    let dir = tempfile::tempdir().unwrap();
    let set = format!(
        r#"{{"$set":{{"lastUpdated":"2026-04-29T21:01:00Z","messages":[{},{}]}}}}"#,
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 0, 0),
        gemini_msg("g9", "2026-04-29T21:00:09Z", 40, 4, 0, 0, 0),
    );
    let p = chat_file(
        dir.path(),
        "p",
        "session-b.jsonl",
        &lines(&[
            META.to_string(),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 0, 0),
            r#"{"$set":{"lastUpdated":"2026-04-29T21:00:30Z"}}"#.into(),
            set,
        ]),
    );
    let merged = merge(&[&scan(&p)]);
    assert_eq!(merged.len(), 2);
    assert_eq!(total(&merged), TokenCounts::new(140, 0, 0, 14, 0));
}

#[test]
fn rewound_messages_stay_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = chat_file(
        dir.path(),
        "p",
        "session-c.jsonl",
        &lines(&[
            META.to_string(),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 0, 0),
            gemini_msg("g2", "2026-04-29T21:00:03Z", 200, 20, 0, 0, 0),
            r#"{"$rewindTo":"g2"}"#.into(),
            gemini_msg("g3", "2026-04-29T21:00:04Z", 300, 30, 0, 0, 0),
            r#"{"$rewindTo":"g1"}"#.into(),
            gemini_msg("g4", "2026-04-29T21:00:05Z", 400, 40, 0, 0, 0),
        ]),
    );
    let merged = merge(&[&scan(&p)]);
    assert_eq!(merged.len(), 4);
    assert_eq!(total(&merged), TokenCounts::new(1000, 0, 0, 100, 0));
}

#[test]
fn legacy_json_and_its_jsonl_copy_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = format!(
        r#"{{"sessionId":"sess-1","projectHash":"abc","startTime":"2026-04-29T21:00:00Z","lastUpdated":"2026-04-29T21:00:09Z","messages":[
            {{"id":"u1","timestamp":"2026-04-29T21:00:01Z","type":"user","content":"hi"}},
            {},
            {}
        ]}}"#,
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 0, 0),
        gemini_msg("g2", "2026-04-29T21:00:03Z", 200, 20, 0, 5, 0),
    );
    let json = chat_file(
        dir.path(),
        "p",
        "session-2026-04-29T21-00-sess1.json",
        &legacy,
    );
    let jsonl = chat_file(
        dir.path(),
        "p",
        "session-2026-04-29T21-00-sess1.jsonl",
        &lines(&[
            META.to_string(),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 0, 0),
            gemini_msg("g2", "2026-04-29T21:00:03Z", 200, 20, 0, 5, 0),
            gemini_msg("g3", "2026-04-29T21:00:30Z", 50, 5, 0, 0, 0),
        ]),
    );
    let a = scan(&json);
    let b = scan(&jsonl);
    assert_eq!(a.events.len(), 2);
    assert_eq!(a.offset, fs::metadata(&json).unwrap().len());
    let merged = merge(&[&a, &b]);
    assert_eq!(merged.len(), 3);
    assert_eq!(total(&merged), TokenCounts::new(350, 0, 0, 40, 5));
}

#[test]
fn incremental_scans_equal_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let all = [
        META.to_string(),
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 0, 0, 0, 0),
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 20, 3, 0),
        gemini_msg("g2", "2026-04-29T21:40:00Z", 200, 20, 0, 0, 7),
        r#"{"$rewindTo":"g2"}"#.to_string(),
        format!(
            r#"{{"$set":{{"messages":[{}]}}}}"#,
            gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 20, 3, 0)
        ),
        gemini_msg("g2", "2026-04-29T21:40:00Z", 200, 25, 0, 0, 7),
        gemini_msg("g3", "2026-04-29T22:10:00Z", 300, 30, 100, 0, 0),
    ];
    let p = chat_file(dir.path(), "p", "session-d.jsonl", "");
    let full_text = lines(&all);
    // Append in pieces, the second piece ending in a torn line that is completed later.
    let cut = full_text.find(r#""id":"g2""#).unwrap() + 10;
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    let mut scans = Vec::new();
    let (mut offset, mut state) = (0u64, String::new());
    for piece in [&full_text[..cut], &full_text[cut..]] {
        f.write_all(piece.as_bytes()).unwrap();
        f.flush().unwrap();
        let s = GeminiCollector.scan(&found(&p), offset, &state);
        offset = s.offset;
        state = s.state.clone();
        scans.push(s);
    }
    assert_eq!(scans[0].skipped.len(), 1);
    assert_eq!(scans[0].skipped[0].reason, SkipReason::TornLastLine);
    assert_eq!(offset, full_text.len() as u64);
    let refs: Vec<&FileScan> = scans.iter().collect();
    let inc = merge(&refs);
    let full = merge(&[&scan(&p)]);
    let mut a: Vec<_> = inc
        .iter()
        .map(|e| (e.dedupe_key, e.tokens, e.ts, e.session.clone()))
        .collect();
    let mut b: Vec<_> = full
        .iter()
        .map(|e| (e.dedupe_key, e.tokens, e.ts, e.session.clone()))
        .collect();
    a.sort_by_key(|x| x.0);
    b.sort_by_key(|x| x.0);
    assert_eq!(a, b);
    // g1: 100/20 cached, 13 out, 3 reasoning; g2: 207, 25 out; g3: 300, 100 cached, 30 out.
    assert_eq!(total(&full), TokenCounts::new(607, 120, 0, 68, 3));
    // The session id came from the metadata line of the first piece, through the state.
    assert!(inc.iter().all(|e| e.session == "sess-1"));
}

#[test]
fn bad_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = lines(&[
        META.to_string(),
        "{not json".into(),
        r#"{"id":"g0","timestamp":"2026-04-29T21:00:01Z","type":"gemini","tokens":{"input":"ten"}}"#.into(),
        r#"{"id":"g5","timestamp":"2026-04-29T21:00:01Z","type":"gemini","tokens":{"input":-4}}"#.into(),
        "[1,2]".into(),
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 0, 0),
    ])
    .into_bytes();
    text.extend_from_slice(b"{\"id\":\"\xff\xfe\"}\n");
    let p = dir.path().join("session-e.jsonl");
    fs::write(&p, &text).unwrap();
    let s = scan(&p);
    assert_eq!(total(&s.events), TokenCounts::new(100, 0, 0, 10, 0));
    let reasons: Vec<SkipReason> = s.skipped.iter().map(|k| k.reason).collect();
    assert_eq!(
        reasons,
        vec![
            SkipReason::InvalidJson,
            SkipReason::BadFields,
            SkipReason::BadFields,
            SkipReason::BadFields,
            SkipReason::InvalidUtf8
        ]
    );
    // Outside a `chats` folder, the project is empty and the session comes from the metadata.
    assert_eq!(s.events[0].project, "");
    assert_eq!(s.events[0].session, "sess-1");
}

#[test]
fn missing_timestamp_falls_back_to_session_start_and_missing_file_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("session-f.jsonl");
    fs::write(
        &p,
        lines(&[
            META.to_string(),
            r#"{"id":"g1","type":"gemini","tokens":{"input":5,"output":1}}"#.into(),
        ]),
    )
    .unwrap();
    let s = scan(&p);
    assert_eq!(s.events.len(), 1);
    assert_eq!(
        s.events[0].ts,
        parse_timestamp("2026-04-29T21:00:00Z").unwrap()
    );
    assert_eq!(s.events[0].model, "unknown");

    let gone = GeminiCollector.scan(&found(&dir.path().join("nope.json")), 0, "");
    assert!(gone.events.is_empty());
    assert_eq!(gone.skipped[0].reason, SkipReason::Unreadable);
}

#[test]
fn oversized_document_is_skipped_as_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("session-big.json");
    let f = fs::File::create(&p).unwrap();
    // Sparse: no real disk use.
    f.set_len(gemini::MAX_DOCUMENT + 1).unwrap();
    let s = scan(&p);
    assert!(s.events.is_empty());
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.skipped[0].reason, SkipReason::TooLong);
    assert_eq!(s.bytes_read, 0);
}

#[test]
fn discovers_main_legacy_and_subagent_chats_under_gemini_cli_home() {
    let home = tempfile::tempdir().unwrap();
    let alt = tempfile::tempdir().unwrap();
    for base in [home.path(), alt.path()] {
        chat_file(base, "proj", "session-2026-01-01T00-00-aaaa.json", "{}");
        chat_file(base, "proj", "session-2026-01-01T00-00-aaaa.jsonl", "");
        chat_file(base, "proj", "parent-id/child-id.jsonl", "");
        chat_file(base, "proj", "notes.txt", "");
        chat_file(base, "proj", "other.json", "{}");
    }
    fs::write(home.path().join(".gemini/tmp/proj/logs.json"), "[]").unwrap();

    let env = Env {
        home: home.path().to_path_buf(),
        vars: HashMap::new(),
    };
    let files = GeminiCollector.discover(&env);
    let rel: Vec<(String, bool)> = files
        .iter()
        .map(|f| {
            (
                f.path
                    .strip_prefix(home.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                f.whole,
            )
        })
        .collect();
    assert_eq!(
        rel,
        vec![
            (
                ".gemini/tmp/proj/chats/parent-id/child-id.jsonl".to_string(),
                false
            ),
            (
                ".gemini/tmp/proj/chats/session-2026-01-01T00-00-aaaa.json".to_string(),
                true
            ),
            (
                ".gemini/tmp/proj/chats/session-2026-01-01T00-00-aaaa.jsonl".to_string(),
                false
            ),
        ]
    );
    assert!(files.iter().all(|f| f.source == Source::Gemini));

    let env = Env {
        home: home.path().to_path_buf(),
        vars: HashMap::from([(
            "GEMINI_CLI_HOME".to_string(),
            alt.path().to_string_lossy().into_owned(),
        )]),
    };
    let files = GeminiCollector.discover(&env);
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f.path.starts_with(alt.path())));
}

#[test]
fn subagent_chat_uses_its_own_session_and_the_project_folder() {
    let dir = tempfile::tempdir().unwrap();
    let p = chat_file(
        dir.path(),
        "slug",
        "parent-1/child-1.jsonl",
        &lines(&[
            r#"{"sessionId":"child-1","startTime":"2026-04-29T21:00:00Z","kind":"subagent"}"#
                .into(),
            gemini_msg("g1", "2026-04-29T21:00:02Z", 10, 1, 0, 0, 0),
        ]),
    );
    let s = scan(&p);
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].session, "child-1");
    assert_eq!(s.events[0].project, "slug");
}

#[test]
fn fuzz_entry_points_agree_with_file_scans() {
    let text = lines(&[
        META.to_string(),
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 10, 0, 2, 0),
        gemini_msg("g1", "2026-04-29T21:00:02Z", 100, 12, 0, 2, 0),
    ]);
    let (events, skipped) =
        gemini::parse_jsonl_bytes(Path::new("x/chats/s.jsonl"), text.as_bytes());
    assert!(skipped.is_empty());
    assert_eq!(total(&events), TokenCounts::new(100, 0, 0, 14, 2));
    let (events, skipped) = gemini::parse_document_bytes(Path::new("s.json"), b"\xff not json");
    assert!(events.is_empty());
    assert_eq!(skipped[0].reason, SkipReason::InvalidUtf8);
}

fn shared_fixtures() -> Option<PathBuf> {
    let base = match std::env::var_os("TOKENLEDGER_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let dir = base.join("fixtures/agent-sessions/gemini");
    dir.is_dir().then_some(dir)
}

#[test]
fn real_fixtures_give_known_totals() {
    let Some(dir) = shared_fixtures() else {
        eprintln!("skipped: shared fixtures not found");
        return;
    };
    let s = scan(&dir.join("jsonl_v040.jsonl"));
    assert!(s.skipped.is_empty());
    assert_eq!(s.events.len(), 2);
    assert_eq!(total(&s.events), TokenCounts::new(23924, 11502, 0, 228, 0));
    assert!(s.events.iter().all(|e| e.session == "gemini_stage0_jsonl"));
    assert!(s.events.iter().all(|e| e.model == "gemini-3-flash-preview"));

    let s = scan(&dir.join("small.json"));
    assert_eq!(total(&s.events), TokenCounts::new(10, 0, 0, 5, 0));
    assert_eq!(s.events[0].session, "session-2026-01-16T18-34-3739ef95");

    // m2 has tokens; m2b (no tokens) and the `model`/`info` records carry none.
    let s = scan(&dir.join("large.json"));
    assert_eq!(s.events.len(), 1);
    assert_eq!(total(&s.events), TokenCounts::new(100, 0, 0, 10, 0));

    // A drifted shape with no `messages`: nothing, and nothing skipped.
    let s = scan(&dir.join("schema_drift.json"));
    assert!(s.events.is_empty());
    assert!(s.skipped.is_empty());
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let p = Path::new("h/.gemini/tmp/p/chats/session-x.jsonl");
        let (events, _) = gemini::parse_jsonl_bytes(p, &bytes);
        for e in events {
            proptest::prop_assert!(e.tokens.is_consistent());
        }
        let _ = gemini::parse_document_bytes(p, &bytes);
    }

    #[test]
    fn token_mapping_matches_the_spec(
        i in 0u64..1 << 40, o in 0u64..1 << 40, c in 0u64..1 << 40,
        th in 0u64..1 << 40, tool in 0u64..1 << 40,
    ) {
        let v: serde_json::Value = serde_json::json!({
            "input": i, "output": o, "cached": c, "thoughts": th, "tool": tool
        });
        let t = gemini::gemini_tokens(&v).unwrap();
        proptest::prop_assert_eq!(t, TokenCounts::new(i + tool, c, 0, o + th, th));
    }
}
