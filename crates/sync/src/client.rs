//! The HTTP client of the server's device and ingest endpoints.

use serde::Deserialize;
use std::time::Duration;
use tokenledger_core::wire::{IngestRequest, IngestResponse, WireBucket};

/// Why a request failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No HTTP answer: connection refused, DNS, timeout, TLS.
    #[error("cannot reach the server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// 401: the token is unknown or was revoked.
    #[error(
        "the server rejected this machine's credentials ({message}); run `tokenledger login` again"
    )]
    Unauthorized { message: String },
    /// 429: overloaded; retry after the given delay.
    #[error("the server is overloaded (429){}", retry_after.map(|d| format!("; retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// A structured error answer (`{"error":{"code","message"}}`), or any other status.
    #[error("the server answered {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that is not what the API returns (a proxy's HTML page, truncated JSON, ...).
    #[error("the server at {url} answered {status} with something that is not a tokenledger answer: {detail}")]
    Garbage {
        url: String,
        status: u16,
        detail: String,
    },
}

impl ApiError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } | ApiError::RateLimited { .. } => true,
            ApiError::Garbage { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 408,
            ApiError::Unauthorized { .. } => false,
        }
    }
}

/// A device registration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registration {
    pub device_id: String,
    pub device_token: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}
#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
}

impl Client {
    /// A client of the server at `base` (e.g. `https://ledger.example.com`).
    pub fn new(base: &str) -> Result<Client, ApiError> {
        let base = normalize_server_url(base).map_err(|detail| ApiError::Unreachable {
            url: base.to_string(),
            detail,
        })?;
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("tokenledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Unreachable {
                url: base.clone(),
                detail: e.to_string(),
            })?;
        Ok(Client { http, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `POST /api/v1/devices` with a user token.
    pub fn register_device(
        &self,
        user_token: &str,
        name: &str,
        platform: &str,
    ) -> Result<Registration, ApiError> {
        let url = self.url("/api/v1/devices");
        let resp = self
            .http
            .post(&url)
            .bearer_auth(user_token)
            .json(&serde_json::json!({ "name": name, "platform": platform }))
            .send();
        let reg: Registration = parse(&url, resp)?;
        if reg.device_token.is_empty() || reg.device_id.is_empty() {
            return Err(ApiError::Garbage {
                url,
                status: 201,
                detail: "empty device id or token".into(),
            });
        }
        Ok(reg)
    }

    /// `DELETE /api/v1/devices/{id}` with the device's own token.
    pub fn revoke_device(&self, device_token: &str, device_id: &str) -> Result<(), ApiError> {
        let url = self.url(&format!("/api/v1/devices/{device_id}"));
        let resp = self.http.delete(&url).bearer_auth(device_token).send();
        let resp = check(&url, resp)?;
        drop(resp);
        Ok(())
    }

    /// `POST /api/v1/ingest`.
    pub fn ingest(
        &self,
        device_token: &str,
        buckets: Vec<WireBucket>,
    ) -> Result<IngestResponse, ApiError> {
        let url = self.url("/api/v1/ingest");
        let resp = self
            .http
            .post(&url)
            .bearer_auth(device_token)
            .json(&IngestRequest { buckets })
            .send();
        parse(&url, resp)
    }
}

/// Checks a server URL and drops a trailing slash.
pub fn normalize_server_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    }
    Ok(s.to_string())
}

fn unreachable(url: &str, e: reqwest::Error) -> ApiError {
    // The innermost cause says the most ("Connection refused").
    let mut detail = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    ApiError::Unreachable {
        url: url.to_string(),
        detail,
    }
}

/// Turns a non-success answer into an [`ApiError`].
fn check(
    url: &str,
    resp: reqwest::Result<reqwest::blocking::Response>,
) -> Result<reqwest::blocking::Response, ApiError> {
    let resp = resp.map_err(|e| unreachable(url, e))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().unwrap_or_default();
    let parsed = serde_json::from_str::<ErrorBody>(&body).ok();
    match status {
        401 => Err(ApiError::Unauthorized {
            message: parsed
                .map(|b| b.error.message)
                .unwrap_or_else(|| "401 Unauthorized".into()),
        }),
        429 => Err(ApiError::RateLimited { retry_after }),
        _ => match parsed {
            Some(b) => Err(ApiError::Status {
                status,
                code: b.error.code,
                message: b.error.message,
            }),
            None if status >= 500 => Err(ApiError::Status {
                status,
                code: "http".into(),
                message: snippet(&body),
            }),
            None => Err(ApiError::Garbage {
                url: url.to_string(),
                status,
                detail: snippet(&body),
            }),
        },
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    url: &str,
    resp: reqwest::Result<reqwest::blocking::Response>,
) -> Result<T, ApiError> {
    let resp = check(url, resp)?;
    let status = resp.status().as_u16();
    let body = resp.bytes().map_err(|e| unreachable(url, e))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Garbage {
        url: url.to_string(),
        status,
        detail: format!("{e} in {}", snippet(&String::from_utf8_lossy(&body))),
    })
}

/// The first characters of an answer, on one line, for an error message.
fn snippet(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    if one_line.trim().is_empty() {
        "(empty body)".into()
    } else {
        format!("{:?}", one_line.trim())
    }
}
