//! The storage of the tokenledger server: one trait, [`Store`], and the plain types its
//! backends (`tokenledger-store-sqlite`, `tokenledger-store-postgres`) exchange with the server.
//!
//! Backends keep the same behaviour: users, devices with hashed tokens, usage buckets upserted on
//! `user_id + device_id + source + model + hour_start`, and a daily rollup keyed
//! `user_id + day + source + model` that a database trigger keeps in step with the buckets.
//! Every table is keyed by `user_id` first so the schema can later be distributed by user.

use async_trait::async_trait;
use jiff::civil::Date;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokenledger_core::{Source, TokenCounts};

/// A user's internal id.
pub type UserId = i64;
/// A device's internal id (unique across users).
pub type DeviceId = i64;

/// Largest token count a bucket field may hold: the databases store signed 64-bit integers.
pub const MAX_TOKEN_VALUE: u64 = i64::MAX as u64;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A registered machine of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub user_id: UserId,
    pub name: String,
    pub platform: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last accepted ingest, if any.
    pub last_seen_at: Option<i64>,
    /// Unix seconds of the revocation, if revoked.
    pub revoked_at: Option<i64>,
}

/// A validated bucket ready to store: the source is known, the model normalised, `hour_start`
/// on a half-hour boundary, every field at most [`MAX_TOKEN_VALUE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBucket {
    pub source: Source,
    pub model: String,
    /// Unix seconds of the half hour's UTC start.
    pub hour_start: i64,
    pub tokens: TokenCounts,
}

/// What an ingest did, counted over the distinct keys of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// Optional filters of every usage query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub source: Option<Source>,
    /// A normalised model name.
    pub model: Option<String>,
}

/// How usage rows are grouped in time (always also by source and model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One row per source and model for the whole range (`period` is 0).
    All,
    /// One row per UTC day (`period` is the unix seconds of its midnight).
    Day,
    /// One row per half hour (`period` is the bucket's `hour_start`); buckets only.
    HalfHour,
}

/// Summed usage of one source and model in one period, across the user's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub period: i64,
    pub source: String,
    pub model: String,
    pub tokens: TokenCounts,
}

/// A dashboard session (see [`Store::web_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    pub user: User,
    /// The session's anti-CSRF token, echoed by the dashboard in `X-CSRF-Token`.
    pub csrf_token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Summed usage of one device over a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUsage {
    pub device_id: DeviceId,
    pub tokens: TokenCounts,
}

fn unsupported<T>(what: &str) -> Result<T> {
    Err(StoreError::Config(format!(
        "{what} is not supported by this backend"
    )))
}

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid database URL or path: {0}")]
    Config(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn db(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Database(Box::new(e))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One embedded migration. Migrations are only ever appended, never edited.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The storage of the server. Implementations run each method as one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Name of the backend, for logs ("sqlite", "postgres").
    fn backend(&self) -> &'static str;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    async fn create_user(&self, name: &str, token_hash: &str) -> Result<User>;
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>>;

    async fn create_device(
        &self,
        user_id: UserId,
        name: &str,
        platform: &str,
        token_hash: &str,
    ) -> Result<Device>;
    /// The device of this token, unless it was revoked.
    async fn device_by_token_hash(&self, token_hash: &str) -> Result<Option<Device>>;
    async fn list_devices(&self, user_id: UserId) -> Result<Vec<Device>>;
    /// Revokes one device of this user; `false` when the user has no such active device.
    async fn revoke_device(&self, user_id: UserId, device_id: DeviceId) -> Result<bool>;

    /// Upserts the buckets (distinct keys) of one device in one transaction, values replaced,
    /// and records the device as seen at `now` (unix seconds).
    async fn ingest(
        &self,
        user_id: UserId,
        device_id: DeviceId,
        buckets: &[NewBucket],
        now: i64,
    ) -> Result<IngestCounts>;

    /// Sums buckets with `from_ts <= hour_start < to_ts` (unix seconds).
    async fn bucket_rows(
        &self,
        user_id: UserId,
        from_ts: i64,
        to_ts: i64,
        filter: &UsageFilter,
        period: Period,
    ) -> Result<Vec<UsageRow>>;

    /// Sums the daily rollup over the UTC days `from..=to`. `Period::HalfHour` is not served
    /// by the rollup and is treated as `Period::Day`.
    async fn rollup_rows(
        &self,
        user_id: UserId,
        from: Date,
        to: Date,
        filter: &UsageFilter,
        period: Period,
    ) -> Result<Vec<UsageRow>>;

    /// Recomputes the rollup of the UTC days `from..=to` from the buckets, for every user;
    /// returns the number of rollup rows written.
    async fn rebuild_rollup(&self, from: Date, to: Date) -> Result<u64>;

    // --- Dashboard (login links, sessions, per-device usage). Defaults refuse, so other
    // implementations keep compiling; both shipped backends implement them.

    /// Stores a one-time login code (its hash) for a user, valid until `expires_at`.
    async fn create_login_code(
        &self,
        _user_id: UserId,
        _code_hash: &str,
        _expires_at: i64,
    ) -> Result<()> {
        unsupported("login links")
    }

    /// Marks a login code used and returns its user, if it exists, is unused and has not
    /// expired at `now`; a second redemption returns `None`.
    async fn redeem_login_code(&self, _code_hash: &str, _now: i64) -> Result<Option<User>> {
        unsupported("login links")
    }

    /// Stores a dashboard session (its token's hash) and drops expired ones.
    async fn create_web_session(
        &self,
        _user_id: UserId,
        _token_hash: &str,
        _csrf_token: &str,
        _expires_at: i64,
    ) -> Result<()> {
        unsupported("dashboard sessions")
    }

    /// The session of this token hash, unless it expired at `now`.
    async fn web_session(&self, _token_hash: &str, _now: i64) -> Result<Option<WebSession>> {
        unsupported("dashboard sessions")
    }

    /// Ends a session (logout); a missing session is not an error.
    async fn delete_web_session(&self, _token_hash: &str) -> Result<()> {
        unsupported("dashboard sessions")
    }

    /// Sums a user's buckets with `from_ts <= hour_start < to_ts` by device.
    async fn device_usage(
        &self,
        _user_id: UserId,
        _from_ts: i64,
        _to_ts: i64,
    ) -> Result<Vec<DeviceUsage>> {
        unsupported("usage by device")
    }
}

/// A fresh bearer token: `prefix` then 32 random bytes in hex.
pub fn generate_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a token. Tokens carry 256 random bits, so a plain SHA-256 suffices.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Unix seconds of the UTC midnight starting `day`.
pub fn day_start_utc(day: Date) -> i64 {
    day.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .unwrap_or(0)
}

/// Reads a stored token count (a signed 64-bit integer) back as `u64`.
pub fn stored_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative token count {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token("tld_");
        let b = generate_token("tld_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(hash_token("abc").len(), 64);
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn day_start() {
        assert_eq!(day_start_utc(jiff::civil::date(1970, 1, 2)), 86_400);
    }
}
