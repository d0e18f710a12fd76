//! The bucket `(source, model, hour_start)` and the unknown-model reassignment (SPEC section 1,
//! origin/05).

use crate::model::{is_known, UNKNOWN_MODEL};
use crate::source::Source;
use crate::tokens::TokenCounts;
use serde::{Deserialize, Serialize};

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

/// Index of the known model with the largest `total_tokens` in one group (sorted by model
/// name, names unique); ties go to the smallest name.
fn dominant_known(group: &[Bucket]) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    // Names ascend within a group, so a strict `>` keeps the smallest on ties.
    for (i, b) in group.iter().enumerate() {
        if !is_known(&b.key.model) {
            continue;
        }
        match best {
            Some((_, total)) if b.tokens.total_tokens <= total => {}
            _ => best = Some((i, b.tokens.total_tokens)),
        }
    }
    best.map(|(i, _)| i)
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
///
/// Reports run this over the whole ledger on every call, so it works on one sorted vector
/// (groups are runs of it) rather than on maps of strings.
pub fn reassign_unknown(buckets: impl IntoIterator<Item = Bucket>) -> Vec<Bucket> {
    let mut v: Vec<Bucket> = buckets.into_iter().collect();
    let group_order = |b: &Bucket| (b.key.source, b.key.hour_start);
    let order = |a: &Bucket, b: &Bucket| {
        group_order(a)
            .cmp(&group_order(b))
            .then_with(|| a.key.model.cmp(&b.key.model))
    };
    // The ledger hands its rollup over in key order (half hour, source, model): sorted by
    // source alone, stably (cheap: no names compared), it is then in this order, and the full
    // sort, which compared model names all the way, is skipped.
    v.sort_by_key(|b| b.key.source);
    if !v.is_sorted_by(|a, b| order(a, b).is_le()) {
        v.sort_unstable_by(order);
    }
    // Same key: one bucket.
    v.dedup_by(|later, kept| {
        let same = later.key == kept.key;
        if same {
            kept.tokens += later.tokens;
        }
        same
    });

    // Groups: runs of one source and half hour.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for i in 1..=v.len() {
        if i == v.len() || group_order(&v[i]) != group_order(&v[start]) {
            groups.push(start..i);
            start = i;
        }
    }

    // Step 1: within each source + half hour. A bucket whose totals moved is marked gone.
    let mut gone = vec![false; v.len()];
    let mut dominant: Vec<Option<usize>> = Vec::with_capacity(groups.len());
    for g in &groups {
        let best = dominant_known(&v[g.clone()]).map(|i| g.start + i);
        if let Some(best) = best {
            if let Some(u) = v[g.clone()].iter().position(|b| !is_known(&b.key.model)) {
                let unknown = v[g.start + u].tokens;
                v[best].tokens += unknown;
                gone[g.start + u] = true;
            }
        }
        dominant.push(best);
    }

    // Step 2: every-code unknown -> nearest codex half hour's dominant known model.
    let codex: Vec<(i64, Option<usize>)> = groups
        .iter()
        .zip(&dominant)
        .filter(|(g, _)| v[g.start].key.source == Source::Codex)
        .map(|(g, d)| (v[g.start].key.hour_start, *d))
        .collect();
    if !codex.is_empty() {
        for (g, d) in groups.iter().zip(&dominant) {
            if v[g.start].key.source != Source::EveryCode || d.is_some() {
                continue;
            }
            // No known model in the group: its only bucket left is `unknown`.
            let Some(u) = v[g.clone()]
                .iter()
                .position(|b| b.key.model == UNKNOWN_MODEL)
            else {
                continue;
            };
            let hour = v[g.start].key.hour_start;
            // `codex` is sorted by hour: find the first at or after `hour` and compare it with the
            // one before; the earlier wins a tie.
            let idx = codex.partition_point(|(h, _)| *h < hour);
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
            if let Some(model) = nearest.1 {
                v[g.start + u].key.model = v[model].key.model.clone();
            }
        }
    }

    let mut gone = gone.into_iter();
    v.retain(|_| !gone.next().unwrap_or(false));
    v.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    v
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
