//! The outbox: what is queued, what a reassignment zeroes, and the conditional acknowledgement.

use std::collections::BTreeMap;
use tokenledger_core::{Bucket, BucketKey, Source, TokenCounts};
use tokenledger_ledger::Ledger;
use tokenledger_sync::outbox::{Outbox, Pending};

const H: i64 = 1_759_276_800; // 2025-10-01T00:00:00Z

fn b(source: Source, model: &str, half_hours: i64, input: u64, output: u64) -> Bucket {
    Bucket {
        key: BucketKey {
            source,
            model: model.into(),
            hour_start: H + half_hours * 1800,
        },
        tokens: TokenCounts::new(input, 0, 0, output, 0),
    }
}

fn totals(p: &[Pending]) -> BTreeMap<(String, i64), u64> {
    p.iter()
        .map(|p| {
            (
                (p.bucket.key.model.clone(), p.bucket.key.hour_start),
                p.bucket.tokens.total_tokens,
            )
        })
        .collect()
}

fn ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open_in(dir.path()).unwrap();
    (dir, l)
}

#[test]
fn queues_changes_only_and_latest_totals_win() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    let first = vec![
        b(Source::Codex, "gpt-5", 0, 100, 10),
        b(Source::Claude, "opus", 0, 50, 5),
    ];
    let r = ob.emit_from(first.clone(), "dev1").unwrap();
    assert_eq!((r.queued, r.zeroed, r.pending), (2, 0, 2));
    // The same state again queues nothing.
    assert_eq!(ob.emit_from(first, "dev1").unwrap().queued, 0);
    // A later total replaces the queued one (one row per key).
    let r = ob
        .emit_from(
            vec![
                b(Source::Codex, "gpt-5", 0, 300, 30),
                b(Source::Claude, "opus", 0, 50, 5),
            ],
            "dev1",
        )
        .unwrap();
    assert_eq!((r.queued, r.pending), (1, 2));
    let p = ob.pending(10).unwrap();
    assert_eq!(
        totals(&p),
        BTreeMap::from([(("gpt-5".into(), H), 330), (("opus".into(), H), 55)])
    );
    // Sessions never reach the wire: the wire bucket has exactly the key and the counts.
    let w = serde_json::to_value(p[0].to_wire()).unwrap();
    let mut keys: Vec<&str> = w.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cache_creation_input_tokens",
            "cached_input_tokens",
            "hour_start",
            "input_tokens",
            "model",
            "output_tokens",
            "reasoning_output_tokens",
            "source",
            "total_tokens"
        ]
    );
    assert_eq!(w["hour_start"], "2025-10-01T00:00:00.000Z");
}

#[test]
fn acked_key_that_reassignment_removes_is_queued_as_zero() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    // Only an unknown model in the half hour: it is sent as `unknown`.
    ob.emit_from(vec![b(Source::Codex, "unknown", 0, 70, 0)], "dev1")
        .unwrap();
    let sent = ob.pending(10).unwrap();
    assert_eq!(totals(&sent), BTreeMap::from([(("unknown".into(), H), 70)]));
    assert_eq!(ob.ack(&sent).unwrap(), 1);
    assert!(ob.is_empty().unwrap());

    // A known model appears in that half hour: the unknown tokens move to it, and the server's
    // `unknown` row must be zeroed or the 70 tokens would count twice.
    let r = ob
        .emit_from(
            vec![
                b(Source::Codex, "unknown", 0, 70, 0),
                b(Source::Codex, "gpt-5", 0, 30, 0),
            ],
            "dev1",
        )
        .unwrap();
    assert_eq!((r.queued, r.zeroed), (1, 1));
    let p = ob.pending(10).unwrap();
    assert_eq!(
        totals(&p),
        BTreeMap::from([(("gpt-5".into(), H), 100), (("unknown".into(), H), 0)])
    );
    ob.ack(&p).unwrap();
    // Nothing left to do, and the zero is not queued again.
    let r = ob
        .emit_from(
            vec![
                b(Source::Codex, "unknown", 0, 70, 0),
                b(Source::Codex, "gpt-5", 0, 30, 0),
            ],
            "dev1",
        )
        .unwrap();
    assert_eq!((r.queued, r.zeroed, r.pending), (0, 0, 0));
    let acked = ob.acked().unwrap();
    let sum: u64 = acked.values().map(|t| t.total_tokens).sum();
    assert_eq!(sum, 100);
}

#[test]
fn a_queued_key_that_vanishes_before_upload_is_zeroed_too() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    ob.emit_from(vec![b(Source::Gemini, "unknown", 1, 9, 0)], "d")
        .unwrap();
    ob.emit_from(
        vec![
            b(Source::Gemini, "unknown", 1, 9, 0),
            b(Source::Gemini, "gemini-2.5-pro", 1, 1, 0),
        ],
        "d",
    )
    .unwrap();
    let p = ob.pending(10).unwrap();
    // Never sent, but it might have been (a crash after the upload, before the ack): zero it.
    assert_eq!(
        totals(&p),
        BTreeMap::from([
            (("gemini-2.5-pro".into(), H + 1800), 10),
            (("unknown".into(), H + 1800), 0)
        ])
    );
}

#[test]
fn ack_keeps_totals_queued_after_the_batch_was_read() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    ob.emit_from(vec![b(Source::Codex, "gpt-5", 0, 10, 0)], "d")
        .unwrap();
    let in_flight = ob.pending(10).unwrap();
    // New usage arrives while the batch is on the wire.
    ob.emit_from(vec![b(Source::Codex, "gpt-5", 0, 25, 0)], "d")
        .unwrap();
    assert_eq!(ob.ack(&in_flight).unwrap(), 0);
    let p = ob.pending(10).unwrap();
    assert_eq!(totals(&p), BTreeMap::from([(("gpt-5".into(), H), 25)]));
    assert_eq!(
        ob.acked().unwrap().values().next().unwrap().total_tokens,
        10
    );
    assert_eq!(ob.ack(&p).unwrap(), 1);
    assert!(ob.is_empty().unwrap());
}

#[test]
fn a_new_device_sends_everything_again() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    let state = vec![
        b(Source::Codex, "gpt-5", 0, 10, 0),
        b(Source::Codex, "gpt-5", 1, 20, 0),
    ];
    ob.emit_from(state.clone(), "old").unwrap();
    let p = ob.pending(10).unwrap();
    ob.ack(&p).unwrap();
    assert_eq!(ob.emit_from(state.clone(), "old").unwrap().pending, 0);
    let r = ob.emit_from(state, "new").unwrap();
    assert_eq!((r.queued, r.pending), (2, 2));
}

#[test]
fn preview_changes_nothing() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    let p = ob
        .preview(vec![b(Source::Qwen, "qwen3-coder", 0, 5, 5)], "d")
        .unwrap();
    assert_eq!(p.len(), 1);
    assert!(ob.is_empty().unwrap());
}

#[test]
fn pending_is_bounded_and_oldest_first() {
    let (_d, mut l) = ledger();
    let mut ob = Outbox::open(&mut l).unwrap();
    let many: Vec<Bucket> = (0..1203)
        .map(|i| b(Source::Codex, "gpt-5", i, 1 + i as u64, 0))
        .collect();
    ob.emit_from(many, "d").unwrap();
    assert_eq!(ob.len().unwrap(), 1203);
    let p = ob.pending(500).unwrap();
    assert_eq!(p.len(), 500);
    assert!(p.windows(2).all(|w| w[0].seq < w[1].seq));
}
