//! Drains the outbox to the server in batches, with exponential backoff and jitter.
//!
//! A batch is acknowledged only after the server's 200, in one transaction, and only for rows
//! whose totals did not change since they were read ([`Outbox::ack`]). Retries are bounded; the
//! sleep is injected so that tests never wait.

use crate::client::{ApiError, Client};
use crate::failpoint;
use crate::outbox::{Outbox, OutboxError};
use rand::Rng;
use std::time::Duration;
use tokenledger_core::wire::IngestResponse;

/// The server's limit of buckets per request.
pub const MAX_BATCH: usize = 500;

/// Exponential backoff with jitter: the n-th wait (from 0) is uniform in `[d/2, d]` with
/// `d = min(max, base * 2^n)`. A 429's `Retry-After` replaces it (capped at `max_retry_after`).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Failed attempts of one batch before giving up (at least 1).
    pub max_attempts: u32,
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_attempts: 6,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th failure (from 0).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let d = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        let ms = d.as_millis() as u64;
        Duration::from_millis(rng.random_range(ms / 2..=ms))
    }
}

/// How to drain.
pub struct DrainOptions<'a> {
    /// Buckets per request (clamped to 1..=500).
    pub batch_size: usize,
    pub backoff: Backoff,
    /// Waits between attempts; tests pass one that records and returns at once.
    pub sleep: &'a dyn Fn(Duration),
    /// Told about each failed attempt and the wait before the next one.
    pub on_retry: &'a dyn Fn(&ApiError, Duration),
}

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub batches: u64,
    pub sent: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Buckets still queued at the end.
    pub remaining: u64,
}

/// Why a drain stopped before the outbox was empty.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Sends every queued bucket. On error, the report says what was done before it.
pub fn drain(
    outbox: &mut Outbox<'_>,
    client: &Client,
    device_token: &str,
    opts: &DrainOptions<'_>,
) -> Result<DrainReport, Box<(DrainReport, DrainError)>> {
    let mut report = DrainReport::default();
    let mut rng = rand::rng();
    let mut batch_size = opts.batch_size.clamp(1, MAX_BATCH);
    let fail = |report: &mut DrainReport, outbox: &Outbox<'_>, e: DrainError| {
        report.remaining = outbox.len().unwrap_or(report.remaining);
        Err(Box::new((*report, e)))
    };
    loop {
        let batch = match outbox.pending(batch_size) {
            Ok(b) => b,
            Err(e) => return fail(&mut report, outbox, e.into()),
        };
        if batch.is_empty() {
            report.remaining = 0;
            return Ok(report);
        }
        let mut attempt: u32 = 0;
        let answer: Option<IngestResponse> = loop {
            failpoint::hit("before_upload");
            let wire = batch.iter().map(|p| p.to_wire()).collect();
            match client.ingest(device_token, wire) {
                Ok(r) => break Some(r),
                Err(ApiError::Status { status: 413, .. }) if batch_size > 1 => {
                    // The server's limit is lower than ours: halve and read the batch again.
                    batch_size /= 2;
                    break None;
                }
                Err(e) if e.is_retryable() && attempt + 1 < opts.backoff.max_attempts => {
                    let wait = match &e {
                        ApiError::RateLimited {
                            retry_after: Some(d),
                        } => (*d).min(opts.backoff.max_retry_after),
                        _ => opts.backoff.delay(attempt, &mut rng),
                    };
                    (opts.on_retry)(&e, wait);
                    (opts.sleep)(wait);
                    attempt += 1;
                    report.retries += 1;
                }
                Err(e) => return fail(&mut report, outbox, e.into()),
            }
        };
        let Some(answer) = answer else {
            continue;
        };
        failpoint::hit("after_upload");
        if let Err(e) = outbox.ack(&batch) {
            return fail(&mut report, outbox, e.into());
        }
        failpoint::hit("after_ack");
        report.batches += 1;
        report.sent += batch.len() as u64;
        report.inserted += answer.inserted;
        report.updated += answer.updated;
        report.unchanged += answer.unchanged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(1),
        };
        let mut rng = rand::rng();
        for _ in 0..50 {
            let d0 = b.delay(0, &mut rng).as_millis();
            assert!((50..=100).contains(&d0), "{d0}");
            let d3 = b.delay(3, &mut rng).as_millis();
            assert!((400..=800).contains(&d3), "{d3}");
            let d9 = b.delay(9, &mut rng).as_millis();
            assert!((500..=1000).contains(&d9), "{d9}");
            assert!(b.delay(u32::MAX, &mut rng) <= Duration::from_millis(1000));
        }
    }
}
