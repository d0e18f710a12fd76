//! Wire types shared by the sync client and the server's ingest endpoint.
//!
//! Over HTTP, token counts are decimal strings so that no client loses precision; the server
//! also accepts JSON numbers from older clients.

use crate::tokens::{TokenCounts, FIELD_NAMES};
use serde::{Deserialize, Serialize};

/// One bucket as sent to `POST /api/v1/ingest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBucket {
    pub source: String,
    /// Older clients send no model; the server stores `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub hour_start: String,
    #[serde(with = "decimal_u64")]
    pub input_tokens: u64,
    #[serde(with = "decimal_u64")]
    pub cached_input_tokens: u64,
    #[serde(with = "decimal_u64", default)]
    pub cache_creation_input_tokens: u64,
    #[serde(with = "decimal_u64")]
    pub output_tokens: u64,
    #[serde(with = "decimal_u64")]
    pub reasoning_output_tokens: u64,
    #[serde(with = "decimal_u64")]
    pub total_tokens: u64,
}

impl WireBucket {
    pub fn tokens(&self) -> TokenCounts {
        TokenCounts {
            input_tokens: self.input_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens,
            output_tokens: self.output_tokens,
            reasoning_output_tokens: self.reasoning_output_tokens,
            total_tokens: self.total_tokens,
        }
    }
}

/// The body of `POST /api/v1/ingest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub buckets: Vec<WireBucket>,
}

/// The answer of `POST /api/v1/ingest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// Token counts as a JSON object of decimal strings, for HTTP answers.
pub fn tokens_to_json(t: &TokenCounts) -> serde_json::Map<String, serde_json::Value> {
    FIELD_NAMES
        .iter()
        .zip(t.as_array())
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect()
}

/// Serialises a `u64` as a decimal string; deserialises a decimal string or a JSON integer.
pub mod decimal_u64 {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer or a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom("negative number"))
            }
            fn visit_f64<E: de::Error>(self, _v: f64) -> Result<u64, E> {
                Err(E::custom("not an integer"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom("not a non-negative decimal integer"));
                }
                v.parse().map_err(|_| E::custom("number out of range"))
            }
        }
        d.deserialize_any(V)
    }
}
