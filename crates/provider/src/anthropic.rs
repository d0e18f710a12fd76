//! Anthropic's Admin API usage report: `GET {base}/v1/organizations/usage_report/messages`,
//! mapped onto the OpenAI counter names so both providers share storage, API and parity.
//!
//! Mapping: `workspace_id` is stored as `project_id`; `uncached_input_tokens` as
//! `input_uncached_tokens`; `cache_read_input_tokens` as `input_cached_tokens`; the 5-minute
//! and 1-hour cache creation as `input_cache_write_tokens`; `input_tokens` is the sum of the
//! three (Anthropic reports no total). The report has no request count (`num_model_requests`
//! stays 0) and no user or batch dimension.

use crate::crypto::SecretString;
use crate::model::{Counters, Dimensions, UsageRecord, UsageWindow};
use crate::openai::{counter, dim, envelope};
use crate::retry::HttpGate;
use crate::{Error, Result, UsagePage, UsageProvider};
use async_trait::async_trait;
use serde_json::Value;

/// Cursor namespace of this endpoint.
pub const ENDPOINT: &str = "usage_report/messages";
/// The API version header value.
pub const API_VERSION: &str = "2023-06-01";
const GROUP_BY: [&str; 4] = ["api_key_id", "workspace_id", "model", "service_tier"];

/// The messages usage report of one Anthropic admin key.
pub struct AnthropicUsage {
    gate: HttpGate,
    base_url: String,
    key: SecretString,
}

impl AnthropicUsage {
    pub fn new(gate: HttpGate, base_url: &str, key: SecretString) -> Self {
        AnthropicUsage {
            gate,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        }
    }
}

fn rfc3339(ts: i64) -> String {
    jiff::Timestamp::from_second(ts)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[async_trait]
impl UsageProvider for AnthropicUsage {
    fn endpoint(&self) -> &'static str {
        ENDPOINT
    }

    async fn fetch_page(
        &self,
        start: i64,
        end: i64,
        limit: u32,
        page: Option<&str>,
    ) -> Result<UsagePage> {
        let url = format!("{}/v1/organizations/usage_report/messages", self.base_url);
        let mut query: Vec<(&str, String)> = vec![
            ("starting_at", rfc3339(start)),
            ("ending_at", rfc3339(end)),
            ("bucket_width", "1d".into()),
            ("limit", limit.clamp(1, 31).to_string()),
        ];
        query.extend(GROUP_BY.iter().map(|g| ("group_by[]", (*g).to_owned())));
        if let Some(p) = page {
            query.push(("page", p.to_owned()));
        }
        let body = self
            .gate
            .get_text(|| {
                self.gate
                    .http
                    .get(&url)
                    .query(&query)
                    .header("x-api-key", self.key.expose())
                    .header("anthropic-version", API_VERSION)
            })
            .await?;
        parse_page(&body)
    }
}

fn time_field(o: &serde_json::Map<String, Value>, name: &str, at: &str) -> Result<i64> {
    o.get(name)
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .ok_or_else(|| Error::Malformed(format!("{at} has no RFC 3339 `{name}`")))
}

/// Parses a usage report page.
pub fn parse_page(body: &str) -> Result<UsagePage> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| Error::Malformed(format!("the body is not JSON ({e})")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Malformed("the body is not a JSON object".into()))?;
    let (data, next_page) = envelope(obj)?;
    let mut windows = Vec::with_capacity(data.len());
    for (i, bucket) in data.iter().enumerate() {
        let at = format!("data[{i}]");
        let b = bucket
            .as_object()
            .ok_or_else(|| Error::Malformed(format!("{at} is not an object")))?;
        let start = time_field(b, "starting_at", &at)?;
        let end = time_field(b, "ending_at", &at)?;
        let results = b
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Malformed(format!("{at} has no `results` array")))?;
        let mut records = Vec::with_capacity(results.len());
        for (j, r) in results.iter().enumerate() {
            let at = format!("{at}.results[{j}]");
            let r = r
                .as_object()
                .ok_or_else(|| Error::Malformed(format!("{at} is not an object")))?;
            let uncached = counter(r, "uncached_input_tokens", &at)?;
            let cache_read = counter(r, "cache_read_input_tokens", &at)?;
            let cache_write = match r.get("cache_creation") {
                None | Some(Value::Null) => 0,
                Some(Value::Object(cc)) => counter(cc, "ephemeral_1h_input_tokens", &at)?
                    .saturating_add(counter(cc, "ephemeral_5m_input_tokens", &at)?),
                Some(_) => {
                    return Err(Error::Malformed(format!(
                        "{at}.cache_creation is not an object"
                    )))
                }
            };
            let mut c = Counters::default();
            c.set("input_uncached_tokens", uncached);
            c.set("input_cached_tokens", cache_read);
            c.set("input_cache_write_tokens", cache_write);
            c.set(
                "input_tokens",
                uncached
                    .saturating_add(cache_read)
                    .saturating_add(cache_write),
            );
            c.set("output_tokens", counter(r, "output_tokens", &at)?);
            records.push(UsageRecord {
                dims: Dimensions {
                    project_id: dim(r, "workspace_id", &at)?,
                    user_id: None,
                    api_key_id: dim(r, "api_key_id", &at)?,
                    model: dim(r, "model", &at)?,
                    batch: None,
                    service_tier: dim(r, "service_tier", &at)?,
                },
                counters: c,
            });
        }
        windows.push(UsageWindow {
            start,
            end,
            records,
        });
    }
    Ok(UsagePage { windows, next_page })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_report_onto_openai_counters() {
        let body = r#"{"data":[{"starting_at":"2025-08-01T00:00:00Z","ending_at":"2025-08-02T00:00:00Z","results":[{"uncached_input_tokens":100,"cache_creation":{"ephemeral_1h_input_tokens":5,"ephemeral_5m_input_tokens":20},"cache_read_input_tokens":300,"output_tokens":40,"server_tool_use":{"web_search_requests":0},"api_key_id":"apikey_1","workspace_id":null,"model":"claude-sonnet-4-20250514","service_tier":"standard","context_window":"0-200k"}]}],"has_more":false,"next_page":null}"#;
        let p = parse_page(body).unwrap();
        let w = &p.windows[0];
        assert_eq!(w.end - w.start, 86_400);
        let r = &w.records[0];
        assert_eq!(r.counters.get("input_tokens"), Some(425));
        assert_eq!(r.counters.get("input_cached_tokens"), Some(300));
        assert_eq!(r.counters.get("input_cache_write_tokens"), Some(25));
        assert_eq!(r.counters.get("input_uncached_tokens"), Some(100));
        assert_eq!(r.counters.get("output_tokens"), Some(40));
        assert_eq!(r.dims.api_key_id.as_deref(), Some("apikey_1"));
        assert_eq!(r.dims.project_id, None);
        assert!(p.next_page.is_none());
    }
}
