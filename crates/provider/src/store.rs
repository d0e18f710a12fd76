//! The storage of provider keys, usage windows and cursors, behind [`ProviderStore`].
//!
//! Both backends live in the server's database next to its own tables, with their own
//! migration table (`provider_schema_migrations`). Every table is keyed by `user_id` first.

use crate::model::{StoredRow, UsageWindow};
use crate::Result;
use async_trait::async_trait;
use jiff::civil::Date;
use serde::Serialize;

/// A user's internal id (the server's `users.id`).
pub type UserId = i64;
/// A provider key's id.
pub type ProviderKeyId = i64;

/// Which provider a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Some(ProviderKind::OpenAi),
            "anthropic" => Some(ProviderKind::Anthropic),
            _ => None,
        }
    }

    /// The real API's base URL.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "https://api.openai.com",
            ProviderKind::Anthropic => "https://api.anthropic.com",
        }
    }

    /// The cursor namespace of this provider's usage endpoint.
    pub fn endpoint(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => crate::openai::ENDPOINT,
            ProviderKind::Anthropic => crate::anthropic::ENDPOINT,
        }
    }
}

/// A stored provider key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderKeyInfo {
    pub id: ProviderKeyId,
    #[serde(skip)]
    pub user_id: UserId,
    pub provider: ProviderKind,
    pub name: String,
    pub base_url: String,
    /// The masked key, e.g. `sk-admin-…abcd`.
    pub masked_key: String,
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A key to add: its secret already sealed by [`crate::KeyCipher`].
#[derive(Debug, Clone)]
pub struct NewProviderKey {
    pub provider: ProviderKind,
    pub name: String,
    pub base_url: String,
    pub sealed_key: Vec<u8>,
    pub masked_key: String,
}

/// The ingestion state of one key on one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// `usage/completions:key_<providerKeyId>` (and `...:backfill_<label>` for backfills).
    pub name: String,
    /// The last UTC day fully stored.
    pub last_complete_day: Option<Date>,
    /// The provider's next-page cursor of an unfinished request ...
    pub next_page: Option<String>,
    /// ... and that request's `[start, end)` (unix seconds).
    pub page_range: Option<(i64, i64)>,
    /// Consecutive failed requests.
    pub error_count: i64,
    pub last_error: Option<String>,
}

/// What a write did to the stored results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteCounts {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Results of a replaced window that the provider no longer reports.
    pub deleted: u64,
}

impl WriteCounts {
    pub fn add(&mut self, o: WriteCounts) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
    }
}

/// Filters of a usage read: windows starting in `[from, to)` (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: i64,
    pub to: i64,
    pub provider_key_id: Option<ProviderKeyId>,
    pub project_id: Option<String>,
    pub api_key_id: Option<String>,
    pub model: Option<String>,
    pub service_tier: Option<String>,
    pub batch: Option<bool>,
}

impl UsageQuery {
    /// Whether a row passes the dimension filters (the backends filter the time range).
    pub fn matches(&self, row: &StoredRow) -> bool {
        fn ok(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        }
        self.provider_key_id
            .is_none_or(|k| k == row.provider_key_id)
            && ok(&self.project_id, &row.dims.project_id)
            && ok(&self.api_key_id, &row.dims.api_key_id)
            && ok(&self.model, &row.dims.model)
            && ok(&self.service_tier, &row.dims.service_tier)
            && self.batch.is_none_or(|b| row.dims.batch == Some(b))
    }
}

/// The provider tables of the server's database.
#[async_trait]
pub trait ProviderStore: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    /// The id of the user with this name (the server's `users` table). An ambiguous name is an
    /// error.
    async fn user_id_by_name(&self, name: &str) -> Result<Option<UserId>>;
    /// The id of the user whose token hashes to this (the server's `users.token_hash`).
    async fn user_id_by_token_hash(&self, token_hash: &str) -> Result<Option<UserId>>;

    async fn add_key(
        &self,
        user_id: UserId,
        key: NewProviderKey,
        now: i64,
    ) -> Result<ProviderKeyInfo>;
    async fn list_keys(&self, user_id: UserId) -> Result<Vec<ProviderKeyInfo>>;
    /// Every enabled key of every user, for the cron pull.
    async fn enabled_keys(&self) -> Result<Vec<ProviderKeyInfo>>;
    /// The sealed secret of a key of this user.
    async fn sealed_key(&self, user_id: UserId, id: ProviderKeyId) -> Result<Option<Vec<u8>>>;
    /// `false` when the user has no such key.
    async fn set_key_enabled(
        &self,
        user_id: UserId,
        id: ProviderKeyId,
        enabled: bool,
    ) -> Result<bool>;
    /// Removes a key with its cursors and stored usage; `false` when the user has no such key.
    async fn remove_key(&self, user_id: UserId, id: ProviderKeyId) -> Result<bool>;

    async fn cursor(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        name: &str,
    ) -> Result<Option<Cursor>>;
    async fn put_cursor(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        cursor: &Cursor,
        now: i64,
    ) -> Result<()>;

    /// Stores these windows, each one replacing what was stored for the same window of this
    /// key: results upserted on the natural key (window plus every dimension, nulls included),
    /// results no longer reported deleted. One transaction.
    async fn replace_windows(
        &self,
        user_id: UserId,
        key: ProviderKeyId,
        windows: &[UsageWindow],
        now: i64,
    ) -> Result<WriteCounts>;

    /// Deletes this key's results of windows starting before `before` (unix seconds).
    async fn prune_before(&self, user_id: UserId, key: ProviderKeyId, before: i64) -> Result<u64>;

    /// Stored results of the user in the query's range, filtered, ordered by window then key.
    async fn usage_rows(&self, user_id: UserId, q: &UsageQuery) -> Result<Vec<StoredRow>>;
}

/// Results of one window merged by natural key (duplicates summed, as the API's results are
/// meant to be summed).
pub(crate) fn merged_records(w: &UsageWindow) -> Vec<(String, crate::model::UsageRecord)> {
    let mut out: Vec<(String, crate::model::UsageRecord)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in &w.records {
        let h = r.dims.key_hash();
        match index.get(&h) {
            Some(&i) => {
                let existing: &mut (String, crate::model::UsageRecord) = &mut out[i];
                existing.1.counters.add(&r.counters);
            }
            None => {
                index.insert(h.clone(), out.len());
                out.push((h, r.clone()));
            }
        }
    }
    out
}
