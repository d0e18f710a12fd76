//! Cost in USD from a price table per model.
//!
//! The table is data (`data/prices.json`), embedded in the binary and refreshable from a file
//! (see README.md). Prices are USD per token. Unknown models have no price: callers report them
//! as unpriced instead of guessing.

use crate::tokens::TokenCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The embedded snapshot.
pub const EMBEDDED_PRICES: &str = include_str!("../data/prices.json");

/// Prices of one model, USD per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Prompt size above which the `*_above` prices apply to the whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_above: Option<f64>,
}

impl ModelPrice {
    /// Cost of `t`. When `t` is one request whose prompt exceeds the threshold, the tiered
    /// prices apply; for aggregates, callers pass the above-threshold part separately.
    pub fn cost(&self, t: &TokenCounts, above_threshold: bool) -> f64 {
        let pick = |base: f64, above: Option<f64>| {
            if above_threshold {
                above.unwrap_or(base)
            } else {
                base
            }
        };
        let input = pick(self.input, self.input_above);
        let output = pick(self.output, self.output_above);
        let cache_read = if above_threshold {
            self.cache_read_above.or(self.cache_read)
        } else {
            self.cache_read
        }
        .unwrap_or(input);
        let cache_write = if above_threshold {
            self.cache_write_above.or(self.cache_write)
        } else {
            self.cache_write
        }
        .unwrap_or(input);
        t.uncached_input_tokens() as f64 * input
            + t.cached_input_tokens as f64 * cache_read
            + t.cache_creation_input_tokens as f64 * cache_write
            + t.output_tokens as f64 * output
    }

    /// Whether a single request with this prompt size is billed at the tiered prices.
    pub fn is_above(&self, input_tokens: u64) -> bool {
        matches!(self.threshold, Some(th) if input_tokens > th)
    }
}

/// A named set of model prices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Name of this profile, reported with every cost.
    pub profile: String,
    /// Where the snapshot was taken from.
    pub source: String,
    /// When the snapshot was taken (`YYYY-MM-DD`).
    pub fetched_at: String,
    pub models: BTreeMap<String, ModelPrice>,
}

/// Errors of loading a price table.
#[derive(Debug, thiserror::Error)]
#[error("invalid price table: {0}")]
pub struct PriceTableError(#[from] serde_json::Error);

impl PriceTable {
    /// The table embedded in this binary.
    pub fn embedded() -> PriceTable {
        PriceTable::from_json(EMBEDDED_PRICES).expect("embedded price table is valid")
    }

    pub fn from_json(s: &str) -> Result<PriceTable, PriceTableError> {
        Ok(serde_json::from_str(s)?)
    }

    /// Finds the price of a model: exact name, then without a `provider/` prefix, then without
    /// a trailing date (`-20250514`, `@20250514`), then lower-cased.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        let mut candidates: Vec<String> = Vec::with_capacity(6);
        let m = model.trim();
        candidates.push(m.to_string());
        let base = m.rsplit('/').next().unwrap_or(m);
        candidates.push(base.to_string());
        let undated = strip_date_suffix(base);
        candidates.push(undated.to_string());
        candidates.push(base.to_ascii_lowercase());
        candidates.push(undated.to_ascii_lowercase());
        candidates.into_iter().find_map(|c| self.models.get(&c))
    }

    /// Cost of aggregated tokens of `model`, or `None` when the model is unpriced.
    pub fn cost(&self, model: &str, tokens: &TokenCounts) -> Option<f64> {
        self.lookup(model).map(|p| p.cost(tokens, false))
    }
}

fn strip_date_suffix(s: &str) -> &str {
    for sep in ['-', '@'] {
        if let Some(idx) = s.rfind(sep) {
            let tail = &s[idx + 1..];
            let is_date = (tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit()))
                || (tail.len() == 10
                    && tail.as_bytes()[4] == b'-'
                    && tail.bytes().filter(|b| b.is_ascii_digit()).count() == 8);
            if is_date {
                return &s[..idx];
            }
        }
    }
    // `-2025-04-14` style: a date with dashes is three segments.
    let parts: Vec<&str> = s.rsplitn(4, '-').collect();
    if parts.len() == 4
        && parts[0].len() == 2
        && parts[1].len() == 2
        && parts[2].len() == 4
        && parts[..3]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return parts[3];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        let mut models = BTreeMap::new();
        models.insert(
            "claude-sonnet-4-5".to_string(),
            ModelPrice {
                input: 3e-6,
                output: 15e-6,
                cache_read: Some(0.3e-6),
                cache_write: Some(3.75e-6),
                threshold: Some(200_000),
                input_above: Some(6e-6),
                output_above: Some(22.5e-6),
                ..Default::default()
            },
        );
        PriceTable {
            profile: "test".into(),
            models,
            ..Default::default()
        }
    }

    #[test]
    fn lookup_strips_prefix_and_date() {
        let t = table();
        assert!(t.lookup("anthropic/claude-sonnet-4-5-20250929").is_some());
        assert!(t.lookup("claude-sonnet-4-5").is_some());
        assert!(t.lookup("gpt-unknown").is_none());
    }

    #[test]
    fn cost_uses_each_rate() {
        let t = table();
        // 1000 input of which 600 cached and 100 written; 10 output.
        let tokens = TokenCounts::new(1000, 600, 100, 10, 0);
        let c = t.cost("claude-sonnet-4-5", &tokens).unwrap();
        let expect = 300.0 * 3e-6 + 600.0 * 0.3e-6 + 100.0 * 3.75e-6 + 10.0 * 15e-6;
        assert!((c - expect).abs() < 1e-12, "{c} vs {expect}");
        let p = t.lookup("claude-sonnet-4-5").unwrap();
        assert!(p.is_above(200_001) && !p.is_above(200_000));
        assert!(p.cost(&tokens, true) > c);
    }

    /// Models Claude Code wrote through 2025 that LiteLLM keeps only under Bedrock's names are
    /// priced under the names in the logs (at Anthropic's list prices).
    #[test]
    fn embedded_table_prices_older_claude_models_by_their_api_names() {
        let t = PriceTable::embedded();
        for (model, input, output) in [
            ("claude-opus-4-1-20250805", 15e-6, 75e-6),
            ("claude-opus-4-20250514", 15e-6, 75e-6),
            ("claude-sonnet-4-20250514", 3e-6, 15e-6),
            ("claude-3-7-sonnet-20250219", 3e-6, 15e-6),
            ("claude-3-5-haiku-20241022", 0.8e-6, 4e-6),
        ] {
            let p = t
                .lookup(model)
                .unwrap_or_else(|| panic!("{model} unpriced"));
            assert_eq!((p.input, p.output), (input, output), "{model}");
            assert_eq!(p.cache_read, Some(input / 10.0), "{model}");
        }
        // A tier above 200k prompt tokens, as Anthropic prices Sonnet 4.
        let sonnet = t.lookup("claude-sonnet-4-20250514").unwrap();
        assert!(sonnet.is_above(200_001) && !sonnet.is_above(200_000));
    }

    #[test]
    fn embedded_table_loads() {
        let t = PriceTable::embedded();
        assert!(!t.models.is_empty());
        assert!(!t.fetched_at.is_empty());
    }
}
