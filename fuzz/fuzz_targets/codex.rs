//! Arbitrary bytes as a Codex / Every Code rollout: the parser must never panic, and whatever
//! it emits must be well-formed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenledger_collect::codex::{scan_bytes, scan_bytes_as};
use tokenledger_core::Source;

const NAME: &str = "rollout-2025-10-01T12-00-00-019a0000-1111-7222-8333-444455556666.jsonl";

fuzz_target!(|data: &[u8]| {
    let codex = scan_bytes(data, NAME);
    let every = scan_bytes_as(Source::EveryCode, data, NAME);
    for scan in [&codex, &every] {
        assert!(scan.offset <= data.len() as u64);
        for e in &scan.events {
            let t = e.tokens;
            assert_eq!(
                t.total_tokens,
                t.input_tokens.saturating_add(t.output_tokens)
            );
            assert!(!e.tokens.is_zero());
            assert!(!e.model.trim().is_empty());
        }
    }
    // A file belongs to one agent: never both.
    assert!(codex.events.is_empty() || every.events.is_empty());
});
