//! Daily pulls and backfills: walking UTC days per key, cursors, retention and telemetry.
//!
//! Each key has a cursor named `<endpoint>:key_<providerKeyId>` (`usage/completions:key_7`)
//! holding the last complete day, the next page of an unfinished request, and an error count.
//! A backfill keeps its own cursor under the same prefix, `...:backfill_<label>`, so that an
//! interrupted backfill resumes where it stopped without moving the daily cursor.

use crate::crypto::KeyCipher;
use crate::model::{add_days, day_of, day_start, days_between};
use crate::retry::{HttpGate, RetryPolicy, Sleeper, TokioSleeper};
use crate::store::{Cursor, ProviderKeyId, ProviderKeyInfo, ProviderKind, ProviderStore, UserId};
use crate::{anthropic, openai, Error, Result, UsageProvider};
use jiff::civil::Date;
use serde::Serialize;
use std::sync::Arc;

/// Rolling retention window, in days, by default (30 days of dashboard plus a 5-day buffer).
pub const DEFAULT_RETENTION_DAYS: u32 = 35;
/// Requests per minute by default (about what the admin endpoints sustain).
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 60;

/// Tunables of ingestion.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Days kept, today included; older windows are pruned after each run.
    pub retention_days: u32,
    /// Recent complete days a daily pull fetches again, since providers still correct them.
    pub reconcile_days: u32,
    /// Days per request of a daily pull (at most 31, the API's bucket limit).
    pub pull_chunk_days: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            retention_days: DEFAULT_RETENTION_DAYS,
            reconcile_days: 2,
            pull_chunk_days: 31,
        }
    }
}

impl IngestConfig {
    /// The oldest day kept on `today`.
    pub fn oldest_kept(&self, today: Date) -> Date {
        add_days(today, -(i64::from(self.retention_days.max(1)) - 1))
    }
}

/// Builds the real HTTP clients of each provider, sharing one throttle.
#[derive(Clone)]
pub struct ClientFactory {
    gate: HttpGate,
}

impl ClientFactory {
    /// Clients that really wait, at most `requests_per_minute` requests per minute (0: no cap).
    pub fn new(requests_per_minute: u32) -> Self {
        Self::with_sleeper(
            Arc::new(TokioSleeper),
            RetryPolicy::default(),
            requests_per_minute,
        )
    }

    /// Clients whose waits (throttle, `Retry-After`, backoff) go through `sleeper`.
    pub fn with_sleeper(
        sleeper: Arc<dyn Sleeper>,
        retry: RetryPolicy,
        requests_per_minute: u32,
    ) -> Self {
        ClientFactory {
            gate: HttpGate::new(sleeper, retry, requests_per_minute),
        }
    }

    /// The usage endpoint of this key.
    pub fn provider(
        &self,
        kind: ProviderKind,
        base_url: &str,
        key: crate::SecretString,
    ) -> Box<dyn UsageProvider> {
        match kind {
            ProviderKind::OpenAi => {
                Box::new(openai::OpenAiUsage::new(self.gate.clone(), base_url, key))
            }
            ProviderKind::Anthropic => Box::new(anthropic::AnthropicUsage::new(
                self.gate.clone(),
                base_url,
                key,
            )),
        }
    }
}

/// A failure reported in telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TelemetryError {
    pub user_id: UserId,
    pub provider_key_id: ProviderKeyId,
    pub code: String,
    pub message: String,
}

/// What a run did, summed over keys and chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Telemetry {
    pub keys_processed: u64,
    pub windows_processed: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Results a corrected window no longer reports.
    pub deleted: u64,
    /// Days requested but not stored because a request failed.
    pub failed: u64,
    /// Results removed by retention.
    pub pruned: u64,
    /// Days of a backfill that fall before the retention window (stored; the next pull prunes them).
    pub days_outside_retention: u64,
    pub errors: Vec<TelemetryError>,
}

impl Telemetry {
    fn add_chunk(&mut self, c: &ChunkReport) {
        self.windows_processed += c.windows_processed;
        self.inserted += c.inserted;
        self.updated += c.updated;
        self.unchanged += c.unchanged;
        self.deleted += c.deleted;
        self.failed += c.failed;
    }

    pub fn merge(&mut self, o: Telemetry) {
        self.keys_processed += o.keys_processed;
        self.windows_processed += o.windows_processed;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.failed += o.failed;
        self.pruned += o.pruned;
        self.days_outside_retention += o.days_outside_retention;
        self.errors.extend(o.errors);
    }
}

/// One request range (a chunk) of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkReport {
    pub label: Option<String>,
    pub provider_key_id: ProviderKeyId,
    /// First and last UTC day of the chunk.
    pub first_day: Date,
    pub last_day: Date,
    pub windows_processed: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub failed: u64,
    pub error: Option<String>,
}

/// Receives each chunk as it completes (progress bars, telemetry lines).
pub type ChunkSink<'a> = &'a (dyn Fn(&ChunkReport) + Send + Sync);

/// A backfill request (both days inclusive, UTC).
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub start: Date,
    pub end: Date,
    pub chunk_days: u32,
    pub label: String,
    /// Only this key (else every enabled key of the user).
    pub key: Option<ProviderKeyId>,
}

/// Runs pulls and backfills against a store.
#[derive(Clone)]
pub struct Ingestor {
    pub store: Arc<dyn ProviderStore>,
    pub cipher: Arc<KeyCipher>,
    pub clients: ClientFactory,
    pub config: IngestConfig,
}

/// The daily cursor name of a key.
pub fn cursor_name(endpoint: &str, key: ProviderKeyId) -> String {
    format!("{endpoint}:key_{key}")
}

/// The cursor name of a labelled backfill of a key.
pub fn backfill_cursor_name(endpoint: &str, key: ProviderKeyId, label: &str) -> String {
    format!("{}:backfill_{label}", cursor_name(endpoint, key))
}

enum Mode {
    /// Start where asked; the cursor only moves forward.
    Pull,
    /// Skip what the cursor says is done (resume).
    Resume,
}

impl Ingestor {
    /// The daily pull of every enabled key of every user (the cron job).
    pub async fn pull_all(&self, today: Date, sink: ChunkSink<'_>) -> Result<Telemetry> {
        let keys = self.store.enabled_keys().await?;
        let mut tel = Telemetry::default();
        for key in &keys {
            self.pull_key(key, today, sink, &mut tel).await;
        }
        Ok(tel)
    }

    /// The daily pull of one user's enabled keys.
    pub async fn pull_user(
        &self,
        user_id: UserId,
        today: Date,
        sink: ChunkSink<'_>,
    ) -> Result<Telemetry> {
        let keys = self.store.list_keys(user_id).await?;
        let mut tel = Telemetry::default();
        for key in keys.iter().filter(|k| k.enabled) {
            self.pull_key(key, today, sink, &mut tel).await;
        }
        Ok(tel)
    }

    /// Pulls one key: from the day after its cursor (re-fetching the last
    /// [`IngestConfig::reconcile_days`] complete days) through today, then prunes.
    pub async fn pull_key(
        &self,
        key: &ProviderKeyInfo,
        today: Date,
        sink: ChunkSink<'_>,
        tel: &mut Telemetry,
    ) {
        tel.keys_processed += 1;
        let oldest = self.config.oldest_kept(today);
        let name = cursor_name(key.provider.endpoint(), key.id);
        let cursor = match self.store.cursor(key.user_id, key.id, &name).await {
            Ok(c) => c,
            Err(e) => return record_error(tel, key, &e),
        };
        let reconcile = add_days(today, -i64::from(self.config.reconcile_days));
        let start = match cursor.and_then(|c| c.last_complete_day) {
            Some(last) => add_days(last, 1).min(reconcile),
            None => oldest,
        }
        .max(oldest);
        let chunk = self.config.pull_chunk_days;
        if let Err(e) = self
            .run_range(
                key,
                &name,
                start,
                today,
                chunk,
                today,
                None,
                Mode::Pull,
                sink,
                tel,
            )
            .await
        {
            tracing::warn!(key = key.id, code = e.code(), "pull stopped: {e}");
        }
        self.prune(key, oldest, tel).await;
    }

    /// A labelled backfill of one user's keys, resumable: running it again with the same label
    /// continues after the last complete day it stored.
    pub async fn backfill(
        &self,
        user_id: UserId,
        req: &BackfillRequest,
        today: Date,
        sink: ChunkSink<'_>,
    ) -> Result<Telemetry> {
        if req.end < req.start {
            return Err(Error::Invalid("--end is before --start".into()));
        }
        if req.chunk_days == 0 {
            return Err(Error::Invalid("--chunk-days must be at least 1".into()));
        }
        if req.label.is_empty()
            || !req
                .label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::Invalid(
                "--label must be letters, digits, '-', '_' or '.'".into(),
            ));
        }
        let keys: Vec<ProviderKeyInfo> = self
            .store
            .list_keys(user_id)
            .await?
            .into_iter()
            .filter(|k| match req.key {
                Some(id) => k.id == id,
                None => k.enabled,
            })
            .collect();
        if let Some(id) = req.key {
            if keys.is_empty() {
                return Err(Error::NotFound(format!("provider key {id}")));
            }
        }
        let mut tel = Telemetry::default();
        let oldest = self.config.oldest_kept(today);
        let end = req.end.min(today);
        let start = req.start;
        // Days asked for explicitly are fetched and kept even before the retention window (a
        // backfill feeds parity with old exports); the run says so, and the next pull prunes
        // them unless the retention is raised.
        if start < oldest {
            let outside = days_between(start, end.min(add_days(oldest, -1))) + 1;
            tel.days_outside_retention = outside.max(0) as u64;
            tracing::warn!(
                days = tel.days_outside_retention,
                oldest_kept = %oldest,
                retention_days = self.config.retention_days,
                "backfill starts before the retention window; those days are stored now and \
                 pruned by the next pull (raise the retention to keep them)"
            );
        }
        let prune_before = oldest.min(start);
        for key in &keys {
            tel.keys_processed += 1;
            if start > end {
                continue;
            }
            let name = backfill_cursor_name(key.provider.endpoint(), key.id, &req.label);
            if let Err(e) = self
                .run_range(
                    key,
                    &name,
                    start,
                    end,
                    req.chunk_days,
                    today,
                    Some(&req.label),
                    Mode::Resume,
                    sink,
                    &mut tel,
                )
                .await
            {
                tracing::warn!(key = key.id, code = e.code(), "backfill stopped: {e}");
            }
            self.prune(key, prune_before, &mut tel).await;
        }
        Ok(tel)
    }

    async fn prune(&self, key: &ProviderKeyInfo, oldest: Date, tel: &mut Telemetry) {
        match self
            .store
            .prune_before(key.user_id, key.id, day_start(oldest))
            .await
        {
            Ok(n) => tel.pruned += n,
            Err(e) => record_error(tel, key, &e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_range(
        &self,
        key: &ProviderKeyInfo,
        name: &str,
        start: Date,
        end: Date,
        chunk_days: u32,
        today: Date,
        label: Option<&str>,
        mode: Mode,
        sink: ChunkSink<'_>,
        tel: &mut Telemetry,
    ) -> Result<()> {
        let store = &self.store;
        let fail_all = |tel: &mut Telemetry, e: &Error, from: Date| {
            tel.failed += (days_between(from, end) + 1).max(0) as u64;
            record_error(tel, key, e);
        };
        let mut cursor = match store.cursor(key.user_id, key.id, name).await {
            Ok(c) => c.unwrap_or_else(|| Cursor {
                name: name.to_owned(),
                ..Cursor::default()
            }),
            Err(e) => {
                fail_all(tel, &e, start);
                return Err(e);
            }
        };
        let secret = match store.sealed_key(key.user_id, key.id).await {
            Ok(Some(sealed)) => self.cipher.open(key.user_id, &sealed),
            Ok(None) => Err(Error::NotFound(format!("provider key {}", key.id))),
            Err(e) => Err(e),
        };
        let secret = match secret {
            Ok(s) => s,
            Err(e) => {
                fail_all(tel, &e, start);
                return Err(e);
            }
        };
        let provider = self.clients.provider(key.provider, &key.base_url, secret);
        let chunk_days = i64::from(chunk_days.max(1));
        let limit = chunk_days.min(31) as u32;
        let yesterday = add_days(today, -1);

        let mut day = start;
        let mut resume_page = None;
        if let Mode::Resume = mode {
            if let Some(last) = cursor.last_complete_day {
                day = day.max(add_days(last, 1));
            }
            if let (Some(p), Some((ps, pe))) = (&cursor.next_page, cursor.page_range) {
                if ps >= day_start(start) && pe <= day_start(add_days(end, 1)) && ps < pe {
                    resume_page = Some((ps, pe, p.clone()));
                }
            }
        }

        loop {
            let (s, e, mut page) = match resume_page.take() {
                Some((ps, pe, p)) => (ps, pe, Some(p)),
                None => {
                    if day > end {
                        break;
                    }
                    let last = add_days(day, chunk_days - 1).min(end);
                    (day_start(day), day_start(add_days(last, 1)), None)
                }
            };
            let first_day = day_of(s);
            let last_day = day_of(e - 1);
            let mut rep = ChunkReport {
                label: label.map(str::to_owned),
                provider_key_id: key.id,
                first_day,
                last_day,
                windows_processed: 0,
                inserted: 0,
                updated: 0,
                unchanged: 0,
                deleted: 0,
                failed: 0,
                error: None,
            };
            loop {
                let outcome = match provider.fetch_page(s, e, limit, page.as_deref()).await {
                    Ok(p) => {
                        let windows: Vec<_> = p
                            .windows
                            .into_iter()
                            .filter(|w| w.start >= s && w.start < e)
                            .collect();
                        let now = jiff::Timestamp::now().as_second();
                        match store
                            .replace_windows(key.user_id, key.id, &windows, now)
                            .await
                        {
                            Ok(counts) => Ok((windows, counts, p.next_page)),
                            Err(err) => Err(err),
                        }
                    }
                    Err(err) => Err(err),
                };
                match outcome {
                    Ok((windows, counts, next)) => {
                        rep.windows_processed += windows.len() as u64;
                        rep.inserted += counts.inserted;
                        rep.updated += counts.updated;
                        rep.unchanged += counts.unchanged;
                        rep.deleted += counts.deleted;
                        let done_through = match &next {
                            // Buckets come whole and in order: the page's days are complete.
                            Some(_) => windows.iter().map(|w| day_of(w.end - 1)).max(),
                            None => Some(last_day),
                        };
                        if let Some(d) = done_through.map(|d| d.min(yesterday)) {
                            if cursor.last_complete_day.is_none_or(|l| l < d) {
                                cursor.last_complete_day = Some(d);
                            }
                        }
                        cursor.next_page = next.clone();
                        cursor.page_range = next.as_ref().map(|_| (s, e));
                        cursor.error_count = 0;
                        cursor.last_error = None;
                        let now = jiff::Timestamp::now().as_second();
                        if let Err(err) = store.put_cursor(key.user_id, key.id, &cursor, now).await
                        {
                            fail_all(tel, &err, first_day);
                            return Err(err);
                        }
                        match next {
                            Some(n) => page = Some(n),
                            None => break,
                        }
                    }
                    Err(err) => {
                        cursor.error_count += 1;
                        cursor.last_error = Some(format!("{}: {err}", err.code()));
                        let now = jiff::Timestamp::now().as_second();
                        if let Err(e2) = store.put_cursor(key.user_id, key.id, &cursor, now).await {
                            tracing::warn!(key = key.id, "cannot record the failure: {e2}");
                        }
                        let done = cursor
                            .last_complete_day
                            .filter(|d| *d >= first_day)
                            .map_or(first_day, |d| add_days(d, 1));
                        rep.failed = (days_between(done, last_day) + 1).max(0) as u64;
                        rep.error = Some(err.code().to_owned());
                        tel.add_chunk(&rep);
                        // The days after this chunk were not attempted either.
                        tel.failed += days_between(last_day, end).max(0) as u64;
                        record_error(tel, key, &err);
                        tracing::info!(
                            key = key.id,
                            first = %first_day,
                            last = %last_day,
                            code = err.code(),
                            failed = rep.failed,
                            "chunk failed"
                        );
                        sink(&rep);
                        return Err(err);
                    }
                }
            }
            tel.add_chunk(&rep);
            tracing::info!(
                key = key.id,
                first = %first_day,
                last = %last_day,
                windows = rep.windows_processed,
                inserted = rep.inserted,
                updated = rep.updated,
                unchanged = rep.unchanged,
                deleted = rep.deleted,
                "chunk stored"
            );
            sink(&rep);
            day = add_days(last_day, 1);
        }
        Ok(())
    }
}

fn record_error(tel: &mut Telemetry, key: &ProviderKeyInfo, e: &Error) {
    tel.errors.push(TelemetryError {
        user_id: key.user_id,
        provider_key_id: key.id,
        code: e.code().to_owned(),
        message: e.to_string(),
    });
}
