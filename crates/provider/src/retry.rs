//! The HTTP discipline shared by provider clients: a requests-per-minute throttle, `429` with
//! `Retry-After` honoured, `5xx` and network errors retried with exponential backoff. Waiting
//! goes through a [`Sleeper`] so that tests run without real time passing.

use crate::{Error, Result};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Something that waits.
pub trait Sleeper: Send + Sync {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// Real waiting on the tokio timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Does not wait; records what it was asked to wait (for tests).
#[derive(Debug, Default)]
pub struct RecordingSleeper {
    slept: Mutex<Vec<Duration>>,
}

impl RecordingSleeper {
    /// Every wait requested so far.
    pub fn slept(&self) -> Vec<Duration> {
        self.slept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.slept.lock().unwrap_or_else(|p| p.into_inner()).push(d);
        Box::pin(async {})
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff after a `5xx` or network error; doubled each time.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Wait used when a `429` has no usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Longest `Retry-After` honoured as given.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            default_retry_after: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Spaces requests out to at most `n` per minute (virtual slots, so bursts are smoothed).
#[derive(Debug)]
pub struct Throttle {
    interval: Option<Duration>,
    next_slot: Mutex<Option<Instant>>,
}

impl Throttle {
    /// `0` means unthrottled.
    pub fn per_minute(n: u32) -> Self {
        Throttle {
            interval: (n > 0).then(|| Duration::from_secs(60) / n),
            next_slot: Mutex::new(None),
        }
    }

    async fn wait(&self, sleeper: &dyn Sleeper) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + interval);
            slot
        };
        if slot > now {
            sleeper.sleep(slot - now).await;
        }
    }
}

/// An HTTP client with the throttle and retry rules applied to every request.
#[derive(Clone)]
pub struct HttpGate {
    pub http: reqwest::Client,
    pub sleeper: Arc<dyn Sleeper>,
    pub retry: RetryPolicy,
    pub throttle: Arc<Throttle>,
}

impl HttpGate {
    /// A gate with a fresh rustls client.
    pub fn new(sleeper: Arc<dyn Sleeper>, retry: RetryPolicy, requests_per_minute: u32) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("tokenledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        HttpGate {
            http,
            sleeper,
            retry,
            throttle: Arc::new(Throttle::per_minute(requests_per_minute)),
        }
    }

    /// Sends the request `build` makes (rebuilt for each attempt) and returns the body of the
    /// first successful answer.
    pub async fn get_text(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<String> {
        let attempts = self.retry.max_attempts.max(1);
        let mut backoff = self.retry.base_backoff;
        let mut last_err = Error::Network("no attempt made".into());
        for attempt in 1..=attempts {
            self.throttle.wait(self.sleeper.as_ref()).await;
            let wait = match build().send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return resp
                            .text()
                            .await
                            .map_err(|e| Error::Network(format!("reading the body: {e}")));
                    }
                    if status.as_u16() == 429 {
                        let after = retry_after(resp.headers())
                            .map(|d| d.min(self.retry.max_retry_after))
                            .unwrap_or(self.retry.default_retry_after);
                        tracing::warn!(
                            attempt,
                            wait_s = after.as_secs_f64(),
                            "provider rate limit (429)"
                        );
                        last_err = Error::RateLimited { attempts: attempt };
                        after
                    } else if status.is_server_error() {
                        let message = snippet(resp.text().await.unwrap_or_default());
                        tracing::warn!(attempt, status = status.as_u16(), "provider server error");
                        last_err = Error::Http {
                            status: status.as_u16(),
                            message,
                        };
                        next_backoff(&mut backoff, self.retry.max_backoff)
                    } else {
                        let message = snippet(resp.text().await.unwrap_or_default());
                        return Err(Error::Http {
                            status: status.as_u16(),
                            message,
                        });
                    }
                }
                Err(e) => {
                    // reqwest errors carry the URL, which holds no secret (keys go in headers).
                    tracing::warn!(attempt, error = %e, "provider request failed");
                    last_err = Error::Network(e.to_string());
                    next_backoff(&mut backoff, self.retry.max_backoff)
                }
            };
            if attempt < attempts {
                self.sleeper.sleep(wait).await;
            }
        }
        Err(last_err)
    }
}

fn next_backoff(backoff: &mut Duration, max: Duration) -> Duration {
    let now = *backoff;
    *backoff = (*backoff * 2).min(max);
    now
}

/// `Retry-After` as delay-seconds (HTTP dates are not honoured; the default wait applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn snippet(body: String) -> String {
    let t = body.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}
