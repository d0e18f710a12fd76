//! Property tests of the bucket invariants: totals conserved, flooring, determinism, idempotence.

use proptest::prelude::*;
use tokenledger_core::{floor_half_hour, reassign_unknown, Bucket, BucketKey, Source, TokenCounts};

fn arb_bucket() -> impl Strategy<Value = Bucket> {
    (
        prop::sample::select(Source::ALL.to_vec()),
        prop::sample::select(vec!["unknown", "gpt-5", "gpt-5-mini", "claude-x", "b", "a"]),
        0i64..40,
        (
            0u64..1_000_000,
            0u64..1000,
            0u64..1000,
            0u64..1_000_000,
            0u64..1000,
        ),
    )
        .prop_map(|(source, model, h, (i, c, w, o, r))| Bucket {
            key: BucketKey {
                source,
                model: model.to_string(),
                hour_start: h * 1800,
            },
            tokens: TokenCounts::new(i, c, w, o, r),
        })
}

fn total(bs: &[Bucket]) -> TokenCounts {
    bs.iter().map(|b| b.tokens).sum()
}

fn total_per_source(bs: &[Bucket], s: Source) -> TokenCounts {
    bs.iter()
        .filter(|b| b.key.source == s)
        .map(|b| b.tokens)
        .sum()
}

proptest! {
    #[test]
    fn totals_are_conserved(input in prop::collection::vec(arb_bucket(), 0..60)) {
        let out = reassign_unknown(input.clone());
        prop_assert_eq!(total(&input), total(&out));
        for s in Source::ALL {
            prop_assert_eq!(total_per_source(&input, s), total_per_source(&out, s));
        }
    }

    #[test]
    fn idempotent_and_deterministic(mut input in prop::collection::vec(arb_bucket(), 0..60)) {
        let once = reassign_unknown(input.clone());
        prop_assert_eq!(reassign_unknown(once.clone()), once.clone());
        input.reverse();
        prop_assert_eq!(reassign_unknown(input), once);
    }

    #[test]
    fn no_unknown_next_to_a_known_model(input in prop::collection::vec(arb_bucket(), 0..60)) {
        let out = reassign_unknown(input);
        for b in &out {
            if b.key.model == "unknown" {
                let known_peer = out.iter().any(|o| o.key.source == b.key.source
                    && o.key.hour_start == b.key.hour_start && o.key.model != "unknown");
                prop_assert!(!known_peer);
            }
        }
    }

    #[test]
    fn flooring(t in -10_000_000_000i64..10_000_000_000i64) {
        let f = floor_half_hour(t);
        prop_assert!(f <= t && t - f < 1800);
        prop_assert_eq!(f.rem_euclid(1800), 0);
        prop_assert_eq!(floor_half_hour(f), f);
    }
}
