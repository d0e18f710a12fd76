//! The generator itself: deterministic, plants every trap, holds back tails on request.

use tokenledger_testkit::{generate, Options, Source};

fn opts(seed: u64) -> Options {
    Options {
        seed,
        files: 60,
        bytes: 2 << 20,
        ..Options::default()
    }
}

#[test]
fn same_seed_same_corpus_and_truth() {
    let a = tempfile_dir("a");
    let b = tempfile_dir("b");
    let ca = generate(&a, &opts(7)).unwrap();
    let cb = generate(&b, &opts(7)).unwrap();
    assert_eq!(ca.truth, cb.truth);
    assert_eq!((ca.files, ca.bytes), (cb.files, cb.bytes));
    let cc = generate(&tempfile_dir("c"), &opts(8)).unwrap();
    assert_ne!(ca.truth, cc.truth);
}

#[test]
fn every_trap_is_planted() {
    let c = generate(&tempfile_dir("traps"), &opts(3)).unwrap();
    let v = serde_json::to_value(&c.traps).unwrap();
    for (name, n) in v.as_object().unwrap() {
        assert!(n.as_u64().unwrap() > 0, "trap {name} not planted: {v}");
    }
    assert!(c.truth.source_totals(Source::Codex).total_tokens > 0);
    assert!(c.truth.source_totals(Source::Claude).total_tokens > 0);
    assert!(c.files >= 60 && c.bytes >= 2 << 20);
}

#[test]
fn hold_back_appends_later() {
    let dir = tempfile_dir("hold");
    let mut c = generate(
        &dir,
        &Options {
            hold_back: true,
            ..opts(5)
        },
    )
    .unwrap();
    assert!(c.has_pending());
    let before = c.truth.totals();
    let after = c.truth_after_append.totals();
    assert!(after.total_tokens > before.total_tokens);
    c.append_pending().unwrap();
    assert!(!c.has_pending());
    assert_eq!(c.truth.totals(), after);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tokenledger-testkit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
