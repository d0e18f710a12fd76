//! Arbitrary bytes as a Claude transcript: scanning never panics, and what it returns is sane.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use tokenledger_collect::claude::ClaudeCollector;
use tokenledger_collect::{Collector, FoundFile};
use tokenledger_core::Source;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::Builder::new().suffix(".jsonl").tempfile() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    let found = FoundFile {
        source: Source::Claude,
        path: file.path().to_path_buf(),
        whole: false,
    };
    let len = data.len() as u64;
    // From the start, and from an arbitrary offset (possibly mid-line or past the end).
    let start = data.first().map_or(0, |b| u64::from(*b) % (len + 2));
    for offset in [0, start] {
        let scan = ClaudeCollector.scan(&found, offset, "");
        assert!(scan.offset <= len.max(offset));
        for ev in &scan.events {
            assert_eq!(ev.source, Source::Claude);
            let t = ev.tokens;
            assert_eq!(
                t.total_tokens,
                t.input_tokens.saturating_add(t.output_tokens)
            );
            assert!(ev.tokens.cached_input_tokens <= ev.tokens.input_tokens);
            assert!(ev.tokens.reasoning_output_tokens <= ev.tokens.output_tokens);
        }
    }
});
