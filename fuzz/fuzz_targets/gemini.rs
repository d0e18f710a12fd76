#![no_main]
//! The Gemini chat parsers on arbitrary bytes: the `.jsonl` record parser and the legacy
//! whole-document parser. Neither may panic; every event must be internally consistent.
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tokenledger_collect::gemini;
use tokenledger_core::TokenCounts;

/// Totals are derived (saturating) and reasoning is part of output.
fn check(t: &TokenCounts) {
    assert_eq!(
        t.total_tokens,
        t.input_tokens.saturating_add(t.output_tokens)
    );
    assert!(t.reasoning_output_tokens <= t.output_tokens);
    assert!(!t.is_zero());
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/h/.gemini/tmp/proj/chats/session-x.jsonl");
    let (events, _) = gemini::parse_jsonl_bytes(path, data);
    for e in &events {
        check(&e.tokens);
    }
    let path = Path::new("/h/.gemini/tmp/proj/chats/session-x.json");
    let (events, _) = gemini::parse_document_bytes(path, data);
    for e in &events {
        check(&e.tokens);
    }
});
