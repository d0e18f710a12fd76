#![no_main]
//! The OpenCode JSON parsers on arbitrary bytes: a message (`message.data`, a
//! `session_message.data` or a legacy file) and a part. Neither may panic; usage built from
//! what they return must be internally consistent.
use libfuzzer_sys::fuzz_target;
use tokenledger_collect::opencode;
use tokenledger_core::TokenCounts;

/// Totals are derived (saturating); reasoning is part of output, cache parts of input.
fn check(t: &TokenCounts) {
    assert_eq!(
        t.total_tokens,
        t.input_tokens.saturating_add(t.output_tokens)
    );
    assert!(t.reasoning_output_tokens <= t.output_tokens);
    assert!(t.cached_input_tokens <= t.input_tokens);
    assert!(t.cache_creation_input_tokens <= t.input_tokens);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = opencode::parse_message(data) {
        if let Some(t) = info.tokens {
            if let Some(e) = opencode::usage_event(
                info.id.as_deref().unwrap_or("m"),
                info.session.as_deref().unwrap_or(""),
                info.created_ms,
                info.model.as_deref(),
                info.project.as_deref().unwrap_or(""),
                &t,
            ) {
                check(&e.tokens);
                assert!(!e.tokens.is_zero());
            }
        }
    }
    if let Ok(Some((_, t))) = opencode::parse_step_finish(data) {
        check(&t.counts());
    }
});
