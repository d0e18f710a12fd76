//! The canonical token fields (SPEC section 1).

use serde::{Deserialize, Serialize};

/// Token counts in the canonical shape every layer uses.
///
/// `cached_input_tokens` and `cache_creation_input_tokens` are parts of `input_tokens`;
/// `reasoning_output_tokens` is part of `output_tokens`; `total_tokens = input + output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenCounts {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_output_tokens: u64,
    pub total_tokens: u64,
}

/// The six field names, in the order used by tables and JSON output.
pub const FIELD_NAMES: [&str; 6] = [
    "input_tokens",
    "cached_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "total_tokens",
];

impl TokenCounts {
    /// Builds counts from the parts; `total_tokens` is derived as `input + output`.
    pub fn new(input: u64, cached: u64, cache_creation: u64, output: u64, reasoning: u64) -> Self {
        TokenCounts {
            input_tokens: input,
            cached_input_tokens: cached,
            cache_creation_input_tokens: cache_creation,
            output_tokens: output,
            reasoning_output_tokens: reasoning,
            total_tokens: input.saturating_add(output),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.as_array().iter().all(|v| *v == 0)
    }

    pub fn as_array(&self) -> [u64; 6] {
        [
            self.input_tokens,
            self.cached_input_tokens,
            self.cache_creation_input_tokens,
            self.output_tokens,
            self.reasoning_output_tokens,
            self.total_tokens,
        ]
    }

    pub fn from_array(a: [u64; 6]) -> Self {
        TokenCounts {
            input_tokens: a[0],
            cached_input_tokens: a[1],
            cache_creation_input_tokens: a[2],
            output_tokens: a[3],
            reasoning_output_tokens: a[4],
            total_tokens: a[5],
        }
    }

    /// Field-wise saturating addition.
    pub fn add(&mut self, other: &TokenCounts) {
        let mut a = self.as_array();
        for (x, y) in a.iter_mut().zip(other.as_array()) {
            *x = x.saturating_add(y);
        }
        *self = Self::from_array(a);
    }

    /// Field-wise `self - other`, or `None` when any field would go below zero.
    pub fn checked_sub(&self, other: &TokenCounts) -> Option<TokenCounts> {
        let a = self.as_array();
        let b = other.as_array();
        let mut out = [0u64; 6];
        for i in 0..6 {
            out[i] = a[i].checked_sub(b[i])?;
        }
        Some(Self::from_array(out))
    }

    /// Whether the parts agree with the total and the sub-fields fit in their parents.
    pub fn is_consistent(&self) -> bool {
        self.input_tokens.checked_add(self.output_tokens) == Some(self.total_tokens)
    }

    /// Uncached, unwritten prompt tokens: `input - cached - cache_creation` (never below zero).
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens)
            .saturating_sub(self.cache_creation_input_tokens)
    }
}

impl std::ops::Add for TokenCounts {
    type Output = TokenCounts;
    fn add(mut self, rhs: TokenCounts) -> TokenCounts {
        TokenCounts::add(&mut self, &rhs);
        self
    }
}

impl std::ops::AddAssign for TokenCounts {
    fn add_assign(&mut self, rhs: TokenCounts) {
        TokenCounts::add(self, &rhs);
    }
}

impl std::iter::Sum for TokenCounts {
    fn sum<I: Iterator<Item = TokenCounts>>(iter: I) -> Self {
        iter.fold(TokenCounts::default(), |a, b| a + b)
    }
}
