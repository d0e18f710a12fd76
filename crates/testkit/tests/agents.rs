//! The opt-in extra agents of the generator: every trap planted, the Codex/Claude part of a seed
//! unchanged, and the every-code unknown step visible in the truth.

use std::collections::BTreeMap;
use std::path::Path;
use tokenledger_testkit::{add_agents, generate, AgentOptions, Options, Source, TokenCounts};

fn opts(seed: u64) -> Options {
    Options {
        seed,
        files: 30,
        bytes: 1 << 20,
        ..Options::default()
    }
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path, out: &mut BTreeMap<String, Vec<u8>>, root: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            tree(&p, out, root);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            out.insert(rel, std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn agents_leave_codex_and_claude_unchanged_and_plant_every_trap() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let plain = generate(a.path(), &opts(7)).unwrap();
    let mut more = generate(b.path(), &opts(7)).unwrap();
    add_agents(&mut more, &opts(7), &AgentOptions::all(10)).unwrap();

    for s in [Source::Codex, Source::Claude] {
        let keep = |t: &tokenledger_testkit::Truth| -> Vec<_> {
            t.half_hours
                .iter()
                .filter(|((src, _, _), _)| *src == s)
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        assert_eq!(keep(&plain.truth), keep(&more.truth), "{s:?} truth moved");
    }
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    tree(a.path(), &mut fa, a.path());
    tree(b.path(), &mut fb, b.path());
    for (rel, data) in &fa {
        assert_eq!(fb.get(rel), Some(data), "{rel} changed");
    }
    assert!(fb.len() > fa.len());

    for s in [
        Source::EveryCode,
        Source::Gemini,
        Source::OpenCode,
        Source::Qwen,
    ] {
        assert_ne!(more.truth.source_totals(s), TokenCounts::default(), "{s:?}");
    }
    let t = &more.agent_traps;
    for (name, n) in [
        ("every_code_reemitted", t.every_code_reemitted),
        ("every_code_rate_limit_only", t.every_code_rate_limit_only),
        (
            "every_code_unknown_model_events",
            t.every_code_unknown_model_events,
        ),
        (
            "every_code_info_model_only_sessions",
            t.every_code_info_model_only_sessions,
        ),
        ("gemini_reappended", t.gemini_reappended),
        ("gemini_set_patches", t.gemini_set_patches),
        ("gemini_set_messages", t.gemini_set_messages),
        ("gemini_rewinds", t.gemini_rewinds),
        ("gemini_rewound_billed", t.gemini_rewound_billed),
        ("gemini_legacy_json", t.gemini_legacy_json),
        (
            "gemini_legacy_with_jsonl_copy",
            t.gemini_legacy_with_jsonl_copy,
        ),
        ("gemini_subagent_chats", t.gemini_subagent_chats),
        ("opencode_subagent_sessions", t.opencode_subagent_sessions),
        (
            "opencode_multi_step_messages",
            t.opencode_multi_step_messages,
        ),
        ("opencode_no_step_parts", t.opencode_no_step_parts),
        ("opencode_zero_token_rows", t.opencode_zero_token_rows),
        ("opencode_legacy_copies", t.opencode_legacy_copies),
        ("qwen_telemetry_duplicates", t.qwen_telemetry_duplicates),
    ] {
        assert!(n > 0, "trap {name} not planted");
    }
    assert!(b.path().join(".local/share/opencode/opencode.db").is_file());

    // Unknown every-code usage ends up under a Codex model no Every Code session used.
    let every_code_models = ["gpt-5.1-codex", "gpt-5-codex", "gpt-5.2"];
    assert!(more
        .truth
        .daily()
        .iter()
        .any(|r| r.source == Source::EveryCode
            && !every_code_models.contains(&r.model.as_str())
            && r.model != "unknown"));
    // Deterministic.
    let c = tempfile::tempdir().unwrap();
    let mut again = generate(c.path(), &opts(7)).unwrap();
    add_agents(&mut again, &opts(7), &AgentOptions::all(10)).unwrap();
    assert_eq!(again.truth, more.truth);
}
