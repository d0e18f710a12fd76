//! The bucket `(source, model, hour_start)` and the unknown-model reassignment (SPEC section 1,
//! origin/05).

use crate::model::{is_known, UNKNOWN_MODEL};
use crate::source::Source;
use crate::tokens::TokenCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The identity of a bucket: one source, one model, one UTC half hour (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    pub source: Source,
    pub model: String,
    pub hour_start: i64,
}

/// Absolute totals of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub key: BucketKey,
    pub tokens: TokenCounts,
}

/// The known model with the largest `total_tokens`; ties go to the smallest name.
fn dominant_known(models: &BTreeMap<String, TokenCounts>) -> Option<&str> {
    let mut best: Option<(&str, u64)> = None;
    // BTreeMap iterates names in ascending order, so a strict `>` keeps the smallest on ties.
    for (model, t) in models {
        if !is_known(model) {
            continue;
        }
        match best {
            Some((_, total)) if t.total_tokens <= total => {}
            _ => best = Some((model.as_str(), t.total_tokens)),
        }
    }
    best.map(|(m, _)| m)
}

/// Applies the unknown-model reassignment to a set of buckets and returns them sorted by key.
///
/// 1. Per source and half hour: when a known model exists, the `unknown` totals are added to the
///    dominant known model and no `unknown` bucket is emitted.
/// 2. `every-code` buckets still `unknown` take the dominant known model of the nearest `codex`
///    half hour (past or future, ties to the earlier); when that half hour has no known model
///    the bucket stays `unknown`.
///
/// Buckets with the same key are merged first. Totals are conserved, the output is
/// deterministic, and applying it to its own output changes nothing.
pub fn reassign_unknown(buckets: impl IntoIterator<Item = Bucket>) -> Vec<Bucket> {
    // (source, hour_start) -> model -> totals
    let mut groups: BTreeMap<(Source, i64), BTreeMap<String, TokenCounts>> = BTreeMap::new();
    for b in buckets {
        *groups
            .entry((b.key.source, b.key.hour_start))
            .or_default()
            .entry(b.key.model)
            .or_default() += b.tokens;
    }

    // Step 1: within each source + half hour.
    for models in groups.values_mut() {
        if let Some(dominant) = dominant_known(models).map(str::to_string) {
            if let Some(unknown) = models.remove(UNKNOWN_MODEL) {
                *models.get_mut(&dominant).expect("dominant exists") += unknown;
            }
        }
    }

    // Step 2: every-code unknown -> nearest codex half hour's dominant known model.
    let codex: Vec<(i64, Option<String>)> = groups
        .iter()
        .filter(|((s, _), _)| *s == Source::Codex)
        .map(|((_, h), models)| (*h, dominant_known(models).map(str::to_string)))
        .collect();
    if !codex.is_empty() {
        for ((source, hour), models) in groups.iter_mut() {
            if *source != Source::EveryCode || dominant_known(models).is_some() {
                continue;
            }
            let Some(unknown) = models.get(UNKNOWN_MODEL).copied() else {
                continue;
            };
            // `codex` is sorted by hour: find the first at or after `hour` and compare it with the
            // one before; the earlier wins a tie.
            let idx = codex.partition_point(|(h, _)| *h < *hour);
            let after = codex.get(idx);
            let before = idx.checked_sub(1).and_then(|i| codex.get(i));
            let nearest = match (before, after) {
                (Some(b), Some(a)) => {
                    if (hour - b.0) <= (a.0 - hour) {
                        b
                    } else {
                        a
                    }
                }
                (Some(b), None) => b,
                (None, Some(a)) => a,
                (None, None) => continue,
            };
            if let Some(model) = &nearest.1 {
                models.remove(UNKNOWN_MODEL);
                *models.entry(model.clone()).or_default() += unknown;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn b(source: Source, model: &str, hour: i64, total: u64) -> Bucket {
        Bucket {
            key: BucketKey {
                source,
                model: model.to_string(),
                hour_start: hour * 1800,
            },
            tokens: TokenCounts::new(total, 0, 0, 0, 0),
        }
    }

    fn models_at(out: &[Bucket], source: Source, hour: i64) -> Vec<(String, u64)> {
        out.iter()
            .filter(|x| x.key.source == source && x.key.hour_start == hour * 1800)
            .map(|x| (x.key.model.clone(), x.tokens.total_tokens))
            .collect()
    }

    #[test]
    fn unknown_goes_to_dominant_known_model() {
        let out = reassign_unknown(vec![
            b(Source::Codex, "gpt-5", 0, 100),
            b(Source::Codex, "gpt-5-mini", 0, 50),
            b(Source::Codex, "unknown", 0, 7),
        ]);
        assert_eq!(
            models_at(&out, Source::Codex, 0),
            vec![("gpt-5".into(), 107), ("gpt-5-mini".into(), 50)]
        );
    }

    #[test]
    fn ties_go_to_smallest_name() {
        let out = reassign_unknown(vec![
            b(Source::Claude, "zeta", 0, 10),
            b(Source::Claude, "alpha", 0, 10),
            b(Source::Claude, "unknown", 0, 1),
        ]);
        assert_eq!(
            models_at(&out, Source::Claude, 0),
            vec![("alpha".into(), 11), ("zeta".into(), 10)]
        );
    }

    #[test]
    fn only_unknown_stays_unknown() {
        let out = reassign_unknown(vec![b(Source::Claude, "unknown", 3, 9)]);
        assert_eq!(
            models_at(&out, Source::Claude, 3),
            vec![("unknown".into(), 9)]
        );
    }

    #[test]
    fn other_sources_are_not_borrowed_from() {
        let out = reassign_unknown(vec![
            b(Source::Claude, "unknown", 0, 9),
            b(Source::Codex, "gpt-5", 0, 1),
        ]);
        assert_eq!(
            models_at(&out, Source::Claude, 0),
            vec![("unknown".into(), 9)]
        );
    }

    #[test]
    fn every_code_takes_nearest_codex_model() {
        let out = reassign_unknown(vec![
            b(Source::EveryCode, "unknown", 10, 5),
            b(Source::Codex, "gpt-past", 7, 1),
            b(Source::Codex, "gpt-future", 12, 1),
        ]);
        assert_eq!(
            models_at(&out, Source::EveryCode, 10),
            vec![("gpt-future".into(), 5)]
        );
    }

    #[test]
    fn every_code_tie_goes_to_earlier_codex() {
        let out = reassign_unknown(vec![
            b(Source::EveryCode, "unknown", 10, 5),
            b(Source::Codex, "gpt-past", 8, 1),
            b(Source::Codex, "gpt-future", 12, 1),
        ]);
        assert_eq!(
            models_at(&out, Source::EveryCode, 10),
            vec![("gpt-past".into(), 5)]
        );
    }

    #[test]
    fn every_code_keeps_unknown_when_nearest_codex_has_no_known_model() {
        let out = reassign_unknown(vec![
            b(Source::EveryCode, "unknown", 10, 5),
            b(Source::Codex, "unknown", 10, 3),
            b(Source::Codex, "gpt-far", 20, 1),
        ]);
        assert_eq!(
            models_at(&out, Source::EveryCode, 10),
            vec![("unknown".into(), 5)]
        );
    }

    #[test]
    fn every_code_with_known_model_uses_its_own() {
        let out = reassign_unknown(vec![
            b(Source::EveryCode, "unknown", 10, 5),
            b(Source::EveryCode, "code-model", 10, 6),
            b(Source::Codex, "gpt-5", 10, 1),
        ]);
        assert_eq!(
            models_at(&out, Source::EveryCode, 10),
            vec![("code-model".into(), 11)]
        );
    }

    #[test]
    fn every_code_without_any_codex_stays_unknown() {
        let out = reassign_unknown(vec![b(Source::EveryCode, "unknown", 10, 5)]);
        assert_eq!(
            models_at(&out, Source::EveryCode, 10),
            vec![("unknown".into(), 5)]
        );
    }
}
