//! The stored shape of provider usage: dimensions, counters, daily windows, and UTC day math.

use jiff::civil::Date;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Number of counters kept per result.
pub const N_COUNTERS: usize = 15;

/// The counters of a usage result, named exactly as the OpenAI API names them. Anthropic's
/// report is mapped onto the same names.
pub const COUNTER_NAMES: [&str; N_COUNTERS] = [
    "input_tokens",
    "input_cached_tokens",
    "input_cache_write_tokens",
    "input_uncached_tokens",
    "output_tokens",
    "input_text_tokens",
    "output_text_tokens",
    "input_cached_text_tokens",
    "input_audio_tokens",
    "input_cached_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "input_cached_image_tokens",
    "output_image_tokens",
    "num_model_requests",
];

/// Largest counter value a database column (signed 64-bit) can hold.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// Counter values in [`COUNTER_NAMES`] order; an absent field counts 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; N_COUNTERS]);

impl Counters {
    /// Position of a counter name.
    pub fn index(name: &str) -> Option<usize> {
        COUNTER_NAMES.iter().position(|n| *n == name)
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        Self::index(name).map(|i| self.0[i])
    }

    pub fn set(&mut self, name: &str, value: u64) {
        if let Some(i) = Self::index(name) {
            self.0[i] = value;
        }
    }

    /// Adds `other` field by field, saturating at [`MAX_COUNTER`].
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b).min(MAX_COUNTER);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }
}

/// The grouping dimensions of a result; `None` when the answer was not grouped by it (or the
/// provider reported null). `None` and `Some("")` are different keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Dimensions {
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    pub model: Option<String>,
    pub batch: Option<bool>,
    pub service_tier: Option<String>,
}

impl Dimensions {
    /// A digest of every dimension, nulls included, so that a unique index on it treats two
    /// null dimensions as equal (plain SQL unique keys do not).
    pub fn key_hash(&self) -> String {
        let canonical = serde_json::to_string(&(
            &self.project_id,
            &self.user_id,
            &self.api_key_id,
            &self.model,
            self.batch,
            &self.service_tier,
        ))
        .unwrap_or_default();
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// One result of one window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRecord {
    pub dims: Dimensions,
    pub counters: Counters,
}

/// One time bucket `[start, end)` (unix seconds) with its results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageWindow {
    pub start: i64,
    pub end: i64,
    pub records: Vec<UsageRecord>,
}

/// A stored result, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub provider_key_id: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub dims: Dimensions,
    pub counters: Counters,
}

/// Seconds in a UTC day.
pub const DAY: i64 = 86_400;

/// Unix seconds of the UTC midnight starting `day`.
pub fn day_start(day: Date) -> i64 {
    day.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .unwrap_or(0)
}

/// The UTC day containing unix second `ts`.
pub fn day_of(ts: i64) -> Date {
    jiff::Timestamp::from_second(ts)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date())
        .unwrap_or(Date::MIN)
}

/// `day` plus `n` days (saturating at the calendar's ends).
pub fn add_days(day: Date, n: i64) -> Date {
    day.checked_add(jiff::Span::new().days(n))
        .unwrap_or(if n < 0 { Date::MIN } else { Date::MAX })
}

/// Whole days from `a` to `b` (negative when `b` is earlier).
pub fn days_between(a: Date, b: Date) -> i64 {
    (day_start(b) - day_start(a)) / DAY
}

/// Today's UTC date.
pub fn today_utc() -> Date {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty_dimensions_differ() {
        let a = Dimensions::default();
        let b = Dimensions {
            project_id: Some(String::new()),
            ..Default::default()
        };
        assert_ne!(a.key_hash(), b.key_hash());
        assert_eq!(a.key_hash(), Dimensions::default().key_hash());
    }

    #[test]
    fn day_math() {
        let d = jiff::civil::date(2024, 11, 1);
        assert_eq!(day_start(d), 1_730_419_200);
        assert_eq!(day_of(1_730_419_200 + DAY - 1), d);
        assert_eq!(add_days(d, 30), jiff::civil::date(2024, 12, 1));
        assert_eq!(days_between(d, jiff::civil::date(2024, 12, 1)), 30);
    }
}
