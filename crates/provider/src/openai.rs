//! The OpenAI organization usage API: `GET {base}/v1/organization/usage/completions`, daily
//! buckets grouped by every dimension, with the documented `page`/`bucket`/`result` envelope.

use crate::crypto::SecretString;
use crate::model::{Counters, Dimensions, UsageRecord, UsageWindow, COUNTER_NAMES, MAX_COUNTER};
use crate::retry::HttpGate;
use crate::{Error, Result, UsagePage, UsageProvider};
use async_trait::async_trait;
use serde_json::{Map, Value};

/// Cursor namespace of this endpoint.
pub const ENDPOINT: &str = "usage/completions";
/// Every dimension the endpoint groups by.
pub const GROUP_BY: [&str; 6] = [
    "project_id",
    "user_id",
    "api_key_id",
    "model",
    "batch",
    "service_tier",
];
/// Counters the API always returns.
const REQUIRED: [&str; 3] = ["input_tokens", "output_tokens", "num_model_requests"];
const RESULT_OBJECT: &str = "organization.usage.completions.result";

/// The completions usage endpoint of one organisation admin key.
pub struct OpenAiUsage {
    gate: HttpGate,
    base_url: String,
    key: SecretString,
}

impl OpenAiUsage {
    /// `base_url` without the `/v1` suffix (`https://api.openai.com`).
    pub fn new(gate: HttpGate, base_url: &str, key: SecretString) -> Self {
        OpenAiUsage {
            gate,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        }
    }
}

#[async_trait]
impl UsageProvider for OpenAiUsage {
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
        let url = format!("{}/v1/organization/usage/completions", self.base_url);
        let mut query: Vec<(&str, String)> = vec![
            ("start_time", start.to_string()),
            ("end_time", end.to_string()),
            ("bucket_width", "1d".into()),
            ("limit", limit.clamp(1, 31).to_string()),
        ];
        query.extend(GROUP_BY.iter().map(|g| ("group_by", (*g).to_owned())));
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
                    .bearer_auth(self.key.expose())
            })
            .await?;
        parse_page(&body)
    }
}

/// Parses a `UsageResponse` body of the completions endpoint.
pub fn parse_page(body: &str) -> Result<UsagePage> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| Error::Malformed(format!("the body is not JSON ({e})")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Malformed("the body is not a JSON object".into()))?;
    let (data, next_page) = envelope(obj)?;
    let mut windows = Vec::with_capacity(data.len());
    for (i, bucket) in data.iter().enumerate() {
        let b = bucket
            .as_object()
            .ok_or_else(|| Error::Malformed(format!("data[{i}] is not an object")))?;
        let start = int_field(b, "start_time", &format!("data[{i}]"))?;
        let end = int_field(b, "end_time", &format!("data[{i}]"))?;
        if end <= start {
            return Err(Error::Malformed(format!(
                "data[{i}] ends ({end}) before it starts ({start})"
            )));
        }
        let results = b
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Malformed(format!("data[{i}] has no `results` array")))?;
        let mut records = Vec::with_capacity(results.len());
        for (j, r) in results.iter().enumerate() {
            let at = format!("data[{i}].results[{j}]");
            let r = r
                .as_object()
                .ok_or_else(|| Error::Malformed(format!("{at} is not an object")))?;
            if let Some(o) = r.get("object").and_then(Value::as_str) {
                if o != RESULT_OBJECT {
                    return Err(Error::Malformed(format!(
                        "{at} is a {o:?}, expected {RESULT_OBJECT:?}"
                    )));
                }
            }
            for name in REQUIRED {
                if r.get(name).is_none_or(Value::is_null) {
                    return Err(Error::Malformed(format!("{at} has no `{name}`")));
                }
            }
            let mut counters = Counters::default();
            for (k, name) in COUNTER_NAMES.iter().enumerate() {
                counters.0[k] = counter(r, name, &at)?;
            }
            let dims = Dimensions {
                project_id: dim(r, "project_id", &at)?,
                user_id: dim(r, "user_id", &at)?,
                api_key_id: dim(r, "api_key_id", &at)?,
                model: dim(r, "model", &at)?,
                batch: match r.get("batch") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => {
                        return Err(Error::Malformed(format!("{at}.batch is not a boolean")))
                    }
                },
                service_tier: dim(r, "service_tier", &at)?,
            };
            records.push(UsageRecord { dims, counters });
        }
        windows.push(UsageWindow {
            start,
            end,
            records,
        });
    }
    Ok(UsagePage { windows, next_page })
}

/// The `data` array and the next page of a page envelope (shared with Anthropic's report).
pub(crate) fn envelope(obj: &Map<String, Value>) -> Result<(&Vec<Value>, Option<String>)> {
    let data = obj
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Malformed("no `data` array".into()))?;
    let has_more = obj
        .get("has_more")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::Malformed("no boolean `has_more`".into()))?;
    let next_page = match obj.get("next_page") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) => None,
        Some(_) => return Err(Error::Malformed("`next_page` is not a string".into())),
    };
    match (has_more, next_page) {
        (true, None) => Err(Error::Malformed(
            "`has_more` is true but there is no `next_page`".into(),
        )),
        (true, p) => Ok((data, p)),
        (false, _) => Ok((data, None)),
    }
}

fn int_field(o: &Map<String, Value>, name: &str, at: &str) -> Result<i64> {
    o.get(name)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::Malformed(format!("{at} has no integer `{name}`")))
}

/// A counter: absent or null is 0; anything but a non-negative integer is malformed.
pub(crate) fn counter(o: &Map<String, Value>, name: &str, at: &str) -> Result<u64> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= MAX_COUNTER as f64)
                    .map(|f| f as u64)
            })
            .filter(|n| *n <= MAX_COUNTER)
            .ok_or_else(|| {
                Error::Malformed(format!("{at}.{name} is not a non-negative integer: {v}"))
            }),
    }
}

/// A string dimension: absent or null is `None`.
pub(crate) fn dim(o: &Map<String, Value>, name: &str, at: &str) -> Result<Option<String>> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Error::Malformed(format!(
            "{at}.{name} is not a string: {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{"object":"page","data":[{"object":"bucket","start_time":1730419200,"end_time":1730505600,"results":[{"object":"organization.usage.completions.result","input_tokens":1000,"input_cached_tokens":400,"input_cache_write_tokens":100,"input_uncached_tokens":500,"output_tokens":500,"input_text_tokens":400,"output_text_tokens":400,"input_cached_text_tokens":300,"input_audio_tokens":50,"input_cached_audio_tokens":50,"output_audio_tokens":50,"input_image_tokens":50,"input_cached_image_tokens":50,"output_image_tokens":50,"num_model_requests":5,"project_id":null,"user_id":null,"api_key_id":null,"model":null,"batch":null,"service_tier":null}]}],"has_more":true,"next_page":"page_AAAAAGdGxdEiJdKOAAAAAGcqsYA="}"#;

    #[test]
    fn parses_the_documented_example() {
        let p = parse_page(DOC_EXAMPLE).unwrap();
        assert_eq!(
            p.next_page.as_deref(),
            Some("page_AAAAAGdGxdEiJdKOAAAAAGcqsYA=")
        );
        assert_eq!(p.windows.len(), 1);
        let w = &p.windows[0];
        assert_eq!((w.start, w.end), (1_730_419_200, 1_730_505_600));
        let c = &w.records[0].counters;
        assert_eq!(
            c.0,
            [1000, 400, 100, 500, 500, 400, 400, 300, 50, 50, 50, 50, 50, 50, 5]
        );
        assert_eq!(w.records[0].dims, Dimensions::default());
    }

    #[test]
    fn rejects_malformed_bodies_with_a_reason() {
        for (body, needle) in [
            ("<html>", "not JSON"),
            (r#"{"data":[],"next_page":null}"#, "has_more"),
            (
                r#"{"data":[{"start_time":1,"end_time":2}],"has_more":false}"#,
                "results",
            ),
            (
                r#"{"data":[{"start_time":1,"end_time":2,"results":[{"input_tokens":-1,"output_tokens":0,"num_model_requests":0}]}],"has_more":false}"#,
                "input_tokens",
            ),
            (
                r#"{"data":[{"start_time":1,"end_time":2,"results":[{"output_tokens":0,"num_model_requests":0}]}],"has_more":false}"#,
                "no `input_tokens`",
            ),
        ] {
            let e = parse_page(body).unwrap_err();
            assert_eq!(e.code(), "malformed_response");
            assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle}"
            );
        }
    }
}
