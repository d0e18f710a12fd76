//! Provider usage: what the AI providers themselves bill, per day, project, key, model and tier.
//!
//! An organisation admin key (stored encrypted, see [`crypto`]) lets the server walk UTC days of
//! the OpenAI organization usage API ([`openai`]) or Anthropic's usage report ([`anthropic`]),
//! both behind the [`UsageProvider`] trait. Every result is stored with all its dimensions and
//! counters in the server's database through [`ProviderStore`] ([`sqlite`] or [`postgres`], each
//! with its own migrations), upserted on the window's natural key. [`ingest`] drives daily pulls
//! and backfills with per-key cursors and retention, [`parity`] reconciles stored days with the
//! provider's CSV exports, and [`http`] serves the cron endpoint, the usage API and key management.

pub mod anthropic;
pub mod crypto;
pub mod http;
pub mod ingest;
pub mod model;
pub mod openai;
pub mod parity;
pub mod postgres;
pub mod retry;
pub mod sqlite;
pub mod store;

pub use crypto::{KeyCipher, SecretString};
pub use ingest::{ClientFactory, IngestConfig, Ingestor, Telemetry};
pub use model::{Counters, Dimensions, UsageRecord, UsageWindow, COUNTER_NAMES};
pub use store::{ProviderKind, ProviderStore, UserId};

use async_trait::async_trait;

/// Errors of the provider layer. [`Error::code`] gives the stable code reported in telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Store(String),
    #[error("provider answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("provider rate limit still exceeded after {attempts} attempts")]
    RateLimited { attempts: u32 },
    #[error("network error talking to the provider: {0}")]
    Network(String),
    #[error("malformed provider response: {0}")]
    Malformed(String),
    #[error("key encryption: {0}")]
    Crypto(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid input: {0}")]
    Invalid(String),
}

impl Error {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Store(_) => "store_error",
            Error::Http { status: 401, .. } | Error::Http { status: 403, .. } => "unauthorized",
            Error::Http { status, .. } if *status >= 500 => "server_error",
            Error::Http { .. } => "http_error",
            Error::RateLimited { .. } => "rate_limited",
            Error::Network(_) => "network_error",
            Error::Malformed(_) => "malformed_response",
            Error::Crypto(_) => "crypto_error",
            Error::Config(_) => "config_error",
            Error::NotFound(_) => "not_found",
            Error::Invalid(_) => "invalid_input",
        }
    }

    pub(crate) fn store(e: impl std::fmt::Display) -> Self {
        Error::Store(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One page of a provider's usage answer, already mapped to our dimensions and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsagePage {
    pub windows: Vec<UsageWindow>,
    /// The cursor of the next page when the provider says there is more.
    pub next_page: Option<String>,
}

/// A provider's daily usage endpoint. Implementations do one HTTP exchange per call (retries
/// included) and never store anything: cursors, upserts and retention are [`ingest`]'s job.
#[async_trait]
pub trait UsageProvider: Send + Sync {
    /// Cursor namespace of this endpoint (`usage/completions` for OpenAI).
    fn endpoint(&self) -> &'static str;

    /// Daily buckets of `[start, end)` (unix seconds on UTC midnights), at most `limit` buckets,
    /// continuing at `page` when given.
    async fn fetch_page(
        &self,
        start: i64,
        end: i64,
        limit: u32,
        page: Option<&str>,
    ) -> Result<UsagePage>;
}

/// Opens the provider tables of the server's database, found as `serve` finds it: a
/// `postgres://` URL, else a SQLite path (`sqlite://` prefix optional), else
/// `<data_dir>/server.db`.
pub async fn open_store(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn ProviderStore>> {
    match database_url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(
            std::sync::Arc::new(postgres::PgProviderStore::connect(u).await?),
        ),
        Some(u) => {
            let path = u.strip_prefix("sqlite://").unwrap_or(u).to_owned();
            let store = tokio::task::spawn_blocking(move || {
                sqlite::SqliteProviderStore::open(path.as_ref())
            })
            .await
            .map_err(Error::store)??;
            Ok(std::sync::Arc::new(store))
        }
        None => {
            let path = data_dir.join("server.db");
            let store =
                tokio::task::spawn_blocking(move || sqlite::SqliteProviderStore::open(&path))
                    .await
                    .map_err(Error::store)??;
            Ok(std::sync::Arc::new(store))
        }
    }
}
