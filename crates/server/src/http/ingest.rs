//! `POST /api/v1/ingest`: a device uploads absolute half-hour buckets (SPEC section 4).
//!
//! A request is validated whole before anything is written, then applied in one transaction:
//! applied entirely or not at all.

use crate::auth::DeviceAuth;
use crate::{ApiError, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Duration;
use tokenledger_core::wire::WireBucket;
use tokenledger_core::{normalize_model, parse_hour_start, Source};
use tokenledger_store::{now_unix, NewBucket, MAX_TOKEN_VALUE};
use utoipa::ToSchema;

/// One bucket of an ingest request (schema of `tokenledger_core::wire::WireBucket`).
/// Token fields are decimal strings or JSON integers.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct IngestBucket {
    /// `codex`, `every-code`, `claude`, `gemini`, `opencode` or `qwen`.
    source: String,
    /// Trimmed by the server; missing or blank is stored as `unknown`.
    model: Option<String>,
    /// UTC start of the half hour, e.g. `2025-12-01T00:30:00.000Z`.
    hour_start: String,
    #[schema(value_type = String, example = "500")]
    input_tokens: String,
    #[schema(value_type = String)]
    cached_input_tokens: String,
    #[schema(value_type = String)]
    cache_creation_input_tokens: Option<String>,
    #[schema(value_type = String)]
    output_tokens: String,
    #[schema(value_type = String)]
    reasoning_output_tokens: String,
    /// Must equal `input_tokens + output_tokens`.
    #[schema(value_type = String)]
    total_tokens: String,
}

/// The body of an ingest request: at most 500 buckets.
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct IngestBody {
    buckets: Vec<IngestBucket>,
}

/// What the ingest did, over the distinct bucket keys of the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
}

#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(borrow)]
    buckets: Vec<&'a RawValue>,
}

/// Parses and validates a request body into buckets with distinct keys (the last wins).
pub fn parse_body(body: &[u8], max_buckets: usize) -> Result<Vec<NewBucket>, ApiError> {
    let raw: RawBody<'_> = serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request(
                "invalid_body",
                format!("expected {{\"buckets\":[...]}}: {e}"),
            ),
            _ => ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")),
        }
    })?;
    if raw.buckets.len() > max_buckets {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_buckets",
            format!(
                "{} buckets in one request; at most {max_buckets} are accepted",
                raw.buckets.len()
            ),
        ));
    }
    let mut out: Vec<NewBucket> = Vec::with_capacity(raw.buckets.len());
    let mut seen: HashMap<(Source, String, i64), usize> = HashMap::new();
    for (i, raw) in raw.buckets.iter().enumerate() {
        let b: WireBucket = serde_json::from_str(raw.get())
            .map_err(|e| ApiError::bucket(i, "invalid_bucket", e))?;
        let source: Source = b
            .source
            .parse()
            .map_err(|e| ApiError::bucket(i, "unknown_source", e))?;
        let hour_start = parse_hour_start(&b.hour_start)
            .map_err(|e| ApiError::bucket(i, "invalid_hour_start", e))?;
        let tokens = b.tokens();
        if tokens.as_array().iter().any(|v| *v > MAX_TOKEN_VALUE) {
            return Err(ApiError::bucket(
                i,
                "number_out_of_range",
                format!("token counts above {MAX_TOKEN_VALUE} cannot be stored"),
            ));
        }
        if !tokens.is_consistent() {
            return Err(ApiError::bucket(
                i,
                "total_mismatch",
                format!(
                    "total_tokens {} is not input_tokens {} + output_tokens {}",
                    tokens.total_tokens, tokens.input_tokens, tokens.output_tokens
                ),
            ));
        }
        let model = normalize_model(b.model.as_deref());
        let bucket = NewBucket {
            source,
            model: model.clone(),
            hour_start,
            tokens,
        };
        match seen.get(&(source, model.clone(), hour_start)) {
            Some(&at) => out[at] = bucket,
            None => {
                seen.insert((source, model, hour_start), out.len());
                out.push(bucket);
            }
        }
    }
    Ok(out)
}

/// Stores a device's buckets: upsert on `user + device + source + model + hour_start`, values
/// replaced, all or nothing.
#[utoipa::path(post, path = "/api/v1/ingest", tag = "ingest",
    security(("bearer" = [])),
    request_body = IngestBody,
    responses((status = 200, body = IngestResult),
        (status = 400, description = "malformed JSON or an invalid bucket (with its index)", body = crate::error::ErrorBody),
        (status = 401, description = "missing, unknown or revoked device token", body = crate::error::ErrorBody),
        (status = 413, description = "more than 500 buckets or a body over the limit", body = crate::error::ErrorBody),
        (status = 429, description = "overloaded; see Retry-After", body = crate::error::ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    body: Body,
) -> Result<Json<IngestResult>, ApiError> {
    let body = read_body(body, state.config().max_body_bytes).await?;
    let buckets = parse_body(&body, state.config().max_buckets)?;
    let wait = state.config().ingest_queue_wait;
    let permits = state.ingest_permits();
    let _permit = if wait.is_zero() {
        permits.try_acquire().ok()
    } else {
        tokio::time::timeout(wait, permits.acquire())
            .await
            .ok()
            .and_then(Result::ok)
    }
    .ok_or_else(|| ApiError::overloaded(retry_after(wait)))?;
    let counts = state
        .store()
        .ingest(device.user_id, device.id, &buckets, now_unix())
        .await?;
    state
        .metrics()
        .record_ingest(counts.inserted, counts.updated, counts.unchanged);
    Ok(Json(IngestResult {
        inserted: counts.inserted,
        updated: counts.updated,
        unchanged: counts.unchanged,
    }))
}

/// Reads the body up to `max` bytes. A larger body is read to its end (up to a bound) and
/// discarded before the 413 goes out, so that the client, still writing, sees the answer
/// rather than a reset connection.
async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= max {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body over {max} bytes"),
        ));
    }
    Ok(buf)
}

fn retry_after(wait: Duration) -> u64 {
    wait.as_secs().clamp(1, 60)
}
