//! Property tests of the bucket invariants: totals conserved, flooring, determinism, idempotence.

use proptest::prelude::*;
use tokenledger_core::{floor_half_hour, reassign_unknown, Bucket, BucketKey, Source, TokenCounts};

fn arb_bucket() -> impl Strategy<Value = Bucket> {
    (
        prop::sample::select(Source::ALL.to_vec()),
        prop::sample::select(vec![
            "unknown",
            "gpt-5",
            "gpt-5-mini",
            "claude-x",
            "b",
            "a",
            "",
        ]),
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

/// The reassignment written the plain way (maps of groups), as the faster one must agree
/// with it: SPEC section 1, step by step.
fn reference(buckets: Vec<Bucket>) -> Vec<Bucket> {
    use std::collections::BTreeMap;
    fn dominant(models: &BTreeMap<String, TokenCounts>) -> Option<String> {
        let mut best: Option<(&String, u64)> = None;
        for (m, t) in models {
            if m != "unknown" && best.is_none_or(|(_, total)| t.total_tokens > total) {
                best = Some((m, t.total_tokens));
            }
        }
        best.map(|(m, _)| m.clone())
    }
    let mut groups: BTreeMap<(Source, i64), BTreeMap<String, TokenCounts>> = BTreeMap::new();
    for b in buckets {
        *groups
            .entry((b.key.source, b.key.hour_start))
            .or_default()
            .entry(b.key.model)
            .or_default() += b.tokens;
    }
    for models in groups.values_mut() {
        if let Some(d) = dominant(models) {
            if let Some(u) = models.remove("unknown") {
                *models.get_mut(&d).unwrap() += u;
            }
        }
    }
    let codex: Vec<(i64, Option<String>)> = groups
        .iter()
        .filter(|((s, _), _)| *s == Source::Codex)
        .map(|((_, h), m)| (*h, dominant(m)))
        .collect();
    for ((source, hour), models) in groups.iter_mut() {
        if *source != Source::EveryCode || dominant(models).is_some() {
            continue;
        }
        let Some(u) = models.get("unknown").copied() else {
            continue;
        };
        // Nearest codex half hour by distance, the earlier on a tie.
        let nearest = codex.iter().min_by_key(|(h, _)| ((h - hour).abs(), *h));
        if let Some((_, Some(m))) = nearest {
            models.remove("unknown");
            *models.entry(m.clone()).or_default() += u;
        }
    }
    let mut out: Vec<Bucket> = groups
        .into_iter()
        .flat_map(|((source, hour_start), models)| {
            models.into_iter().map(move |(model, tokens)| Bucket {
                key: BucketKey {
                    source,
                    model,
                    hour_start,
                },
                tokens,
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
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
    fn agrees_with_the_plain_reassignment(input in prop::collection::vec(arb_bucket(), 0..80)) {
        prop_assert_eq!(reassign_unknown(input.clone()), reference(input));
    }

    #[test]
    fn flooring(t in -10_000_000_000i64..10_000_000_000i64) {
        let f = floor_half_hour(t);
        prop_assert!(f <= t && t - f < 1800);
        prop_assert_eq!(f.rem_euclid(1800), 0);
        prop_assert_eq!(floor_half_hour(f), f);
    }
}
