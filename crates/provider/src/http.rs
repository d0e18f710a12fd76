//! The HTTP side of provider usage, as a router the server merges into its own:
//!
//! - `POST /api/v1/cron/daily-usage`: the daily pull of every enabled key, for a scheduler.
//!   Requires `Authorization: Bearer <CRON_SECRET>` (compared in constant time); refuses every
//!   call when no secret is configured; logs each rejected call with its source address.
//! - `GET /api/v1/provider-usage`: daily rows and a summary, counters as decimal strings named
//!   as the OpenAI API names them; `format=csv` exports the rows, paginated by `limit`/`offset`.
//! - `POST|GET /api/v1/provider-keys`, `DELETE /api/v1/provider-keys/{id}`,
//!   `POST /api/v1/provider-keys/{id}/enable|disable`: key management with a user token.
//!
//! Source addresses come from axum's `ConnectInfo<SocketAddr>`; serve the app with
//! `into_make_service_with_connect_info::<SocketAddr>()` to have them.

use crate::crypto::{mask, SecretString};
use crate::ingest::Ingestor;
use crate::model::{add_days, day_of, day_start, days_between, today_utc, Counters, COUNTER_NAMES};
use crate::store::{NewProviderKey, ProviderKind, UsageQuery, UserId};
use crate::Error;
use async_trait::async_trait;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use jiff::civil::Date;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Resolves a user token to its user. The server plugs its own authentication in.
#[async_trait]
pub trait UserAuth: Send + Sync {
    async fn user_from_token(&self, token: &str) -> Option<UserId>;
}

/// User tokens checked against the server's `users.token_hash` (SHA-256 hex of the token),
/// through the provider store's connection.
pub struct StoreTokenAuth(pub Arc<dyn crate::ProviderStore>);

#[async_trait]
impl UserAuth for StoreTokenAuth {
    async fn user_from_token(&self, token: &str) -> Option<UserId> {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        self.0.user_id_by_token_hash(&hash).await.ok().flatten()
    }
}

/// Environment variable holding the cron secret.
pub const CRON_SECRET_ENV: &str = "CRON_SECRET";

/// The cron secret of `CRON_SECRET`, if set and not empty.
pub fn cron_secret_from_env() -> Option<SecretString> {
    std::env::var(CRON_SECRET_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| SecretString::new(s.trim()))
}

/// Everything the routes need.
#[derive(Clone)]
pub struct ProviderHttpState {
    pub ingestor: Ingestor,
    pub auth: Arc<dyn UserAuth>,
    /// `None`: every cron call is refused.
    pub cron_secret: Option<Arc<SecretString>>,
    /// One cron run at a time.
    pub cron_lock: Arc<tokio::sync::Mutex<()>>,
    /// Today's UTC date (injectable for tests).
    pub today: Arc<dyn Fn() -> Date + Send + Sync>,
}

impl ProviderHttpState {
    pub fn new(
        ingestor: Ingestor,
        auth: Arc<dyn UserAuth>,
        cron_secret: Option<SecretString>,
    ) -> Self {
        ProviderHttpState {
            ingestor,
            auth,
            cron_secret: cron_secret.map(Arc::new),
            cron_lock: Arc::new(tokio::sync::Mutex::new(())),
            today: Arc::new(today_utc),
        }
    }
}

/// The provider routes, state applied, ready to merge into the server's router.
pub fn router(state: ProviderHttpState) -> Router {
    Router::new()
        .route("/api/v1/cron/daily-usage", post(cron_daily_usage))
        .route("/api/v1/provider-usage", get(provider_usage))
        .route("/api/v1/provider-keys", post(add_key).get(list_keys))
        .route("/api/v1/provider-keys/{id}", delete(remove_key))
        .route("/api/v1/provider-keys/{id}/enable", post(enable_key))
        .route("/api/v1/provider-keys/{id}/disable", post(disable_key))
        .with_state(state)
}

/// An error answer: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            Error::Invalid(m) => ApiError::bad_request(m),
            other => {
                tracing::error!(code = other.code(), "provider request failed: {other}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A user already authenticated by the embedding server (a dashboard session cookie whose
/// CSRF check passed). The server inserts it as a request extension; clients cannot forge it.
#[derive(Debug, Clone, Copy)]
pub struct SessionUser(pub UserId);

async fn user(
    state: &ProviderHttpState,
    headers: &HeaderMap,
    session: Option<Extension<SessionUser>>,
) -> Result<UserId, ApiError> {
    if headers.get(header::AUTHORIZATION).is_none() {
        if let Some(Extension(SessionUser(id))) = session {
            return Ok(id);
        }
    }
    let token = bearer(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "expected Authorization: Bearer <user token>",
        )
    })?;
    state.auth.user_from_token(token).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown user token",
        )
    })
}

/// Constant-time equality that does not leak the secret's length either.
fn secret_matches(given: &str, secret: &SecretString) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.expose().as_bytes());
    a.ct_eq(&b).into()
}

async fn cron_daily_usage(
    State(state): State<ProviderHttpState>,
    req: Request,
) -> Result<Response, ApiError> {
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let reject = |status, code, reason: &str| {
        tracing::warn!(source = %source, forwarded_for = %forwarded, reason, "rejected cron call");
        Err(ApiError::new(status, code, reason.to_owned()))
    };
    let Some(secret) = state.cron_secret.as_deref() else {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "cron_not_configured",
            "no CRON_SECRET is configured; cron calls are refused",
        );
    };
    match bearer(req.headers()) {
        None => {
            return reject(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing Authorization: Bearer <CRON_SECRET>",
            )
        }
        Some(given) if !secret_matches(given, secret) => {
            return reject(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong cron secret",
            )
        }
        Some(_) => {}
    }
    let Ok(_guard) = state.cron_lock.try_lock() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cron_running",
            "a daily pull is already running",
        ));
    };
    let today = (state.today)();
    let tel = state.ingestor.pull_all(today, &|_| {}).await?;
    tracing::info!(
        source = %source,
        keys = tel.keys_processed,
        windows = tel.windows_processed,
        inserted = tel.inserted,
        updated = tel.updated,
        unchanged = tel.unchanged,
        failed = tel.failed,
        "cron daily usage done"
    );
    Ok(Json(tel).into_response())
}

/// Query of `GET /api/v1/provider-usage`.
#[derive(Debug, Deserialize, Default)]
pub struct UsageParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub project_id: Option<String>,
    pub api_key_id: Option<String>,
    pub service_tier: Option<String>,
    pub model: Option<String>,
    pub batch: Option<String>,
    pub provider_key_id: Option<i64>,
    /// Extra row dimensions, comma separated: project_id,user_id,api_key_id,model,batch,service_tier.
    pub group_by: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

const GROUPABLE: [&str; 6] = [
    "project_id",
    "user_id",
    "api_key_id",
    "model",
    "batch",
    "service_tier",
];
const MAX_RANGE_DAYS: i64 = 400;
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

fn parse_day(s: &str, what: &str) -> Result<Date, ApiError> {
    s.trim()
        .parse::<Date>()
        .map_err(|_| ApiError::bad_request(format!("`{what}` must be a YYYY-MM-DD date")))
}

fn counters_json(c: &Counters, into: &mut Map<String, Value>) {
    for (i, name) in COUNTER_NAMES.iter().enumerate() {
        into.insert((*name).to_owned(), Value::String(c.0[i].to_string()));
    }
}

async fn provider_usage(
    State(state): State<ProviderHttpState>,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
    Query(p): Query<UsageParams>,
) -> Result<Response, ApiError> {
    let user_id = user(&state, &headers, session).await?;
    let today = (state.today)();
    let to =
        p.to.as_deref()
            .map(|s| parse_day(s, "to"))
            .transpose()?
            .unwrap_or(today);
    let from = p
        .from
        .as_deref()
        .map(|s| parse_day(s, "from"))
        .transpose()?
        .unwrap_or_else(|| add_days(to, -29));
    if from > to {
        return Err(ApiError::bad_request("`from` is after `to`"));
    }
    if days_between(from, to) >= MAX_RANGE_DAYS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "range_too_large",
            format!("at most {MAX_RANGE_DAYS} days per request"),
        ));
    }
    let batch = match p.batch.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::bad_request("`batch` must be true or false")),
    };
    let group: Vec<&str> = match p.group_by.as_deref() {
        None | Some("") => Vec::new(),
        Some(g) => {
            let dims: Vec<&str> = g.split(',').map(str::trim).collect();
            if let Some(bad) = dims.iter().find(|d| !GROUPABLE.contains(d)) {
                return Err(ApiError::bad_request(format!("cannot group by `{bad}`")));
            }
            dims
        }
    };
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("`format` must be json or csv")),
    };
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let offset = p.offset.unwrap_or(0);
    let q = UsageQuery {
        from: day_start(from),
        to: day_start(add_days(to, 1)),
        provider_key_id: p.provider_key_id,
        project_id: p.project_id.filter(|s| !s.is_empty()),
        api_key_id: p.api_key_id.filter(|s| !s.is_empty()),
        model: p.model.filter(|s| !s.is_empty()),
        service_tier: p.service_tier.filter(|s| !s.is_empty()),
        batch,
    };
    let rows = state.ingestor.store.usage_rows(user_id, &q).await?;

    let mut total = Counters::default();
    let mut grouped: BTreeMap<(Date, Vec<Option<String>>), Counters> = BTreeMap::new();
    for r in &rows {
        let key: Vec<Option<String>> = group
            .iter()
            .map(|d| match *d {
                "project_id" => r.dims.project_id.clone(),
                "user_id" => r.dims.user_id.clone(),
                "api_key_id" => r.dims.api_key_id.clone(),
                "model" => r.dims.model.clone(),
                "batch" => r.dims.batch.map(|b| b.to_string()),
                _ => r.dims.service_tier.clone(),
            })
            .collect();
        grouped
            .entry((day_of(r.window_start), key))
            .or_default()
            .add(&r.counters);
        total.add(&r.counters);
    }
    let total_rows = grouped.len();
    let next_offset = (offset + limit < total_rows).then_some(offset + limit);
    let page = grouped.iter().skip(offset).take(limit);

    if csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<&str> = vec!["day"];
        header.extend(group.iter().copied());
        header.extend(COUNTER_NAMES.iter().copied());
        let write_err = |e: csv::Error| Error::Invalid(e.to_string());
        w.write_record(&header).map_err(write_err)?;
        for ((day, dims), c) in page {
            let mut rec: Vec<String> = vec![day.to_string()];
            rec.extend(dims.iter().map(|d| d.clone().unwrap_or_default()));
            rec.extend(c.0.iter().map(u64::to_string));
            w.write_record(&rec).map_err(write_err)?;
        }
        let body = w.into_inner().map_err(|e| Error::Invalid(e.to_string()))?;
        let mut resp = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
        let h = resp.headers_mut();
        h.insert("x-total-rows", HeaderValue::from(total_rows));
        if let Some(n) = next_offset {
            h.insert("x-next-offset", HeaderValue::from(n));
        }
        return Ok(resp);
    }

    let data: Vec<Value> = page
        .map(|((day, dims), c)| {
            let mut m = Map::new();
            m.insert("day".into(), Value::String(day.to_string()));
            for (name, v) in group.iter().zip(dims) {
                m.insert((*name).into(), v.clone().map_or(Value::Null, Value::String));
            }
            counters_json(c, &mut m);
            Value::Object(m)
        })
        .collect();
    let mut summary = Map::new();
    summary.insert("from".into(), Value::String(from.to_string()));
    summary.insert("to".into(), Value::String(to.to_string()));
    summary.insert("rows".into(), json!(total_rows));
    counters_json(&total, &mut summary);
    Ok(Json(json!({
        "data": data,
        "summary": summary,
        "next_offset": next_offset,
    }))
    .into_response())
}

/// Body of `POST /api/v1/provider-keys`.
#[derive(Deserialize)]
pub struct AddKeyBody {
    /// `openai` or `anthropic`.
    pub provider: String,
    pub name: String,
    pub admin_key: String,
    pub base_url: Option<String>,
}

impl std::fmt::Debug for AddKeyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddKeyBody")
            .field("provider", &self.provider)
            .field("name", &self.name)
            .field("admin_key", &"[redacted]")
            .finish()
    }
}

/// Validates, encrypts and stores a key (shared by the API and the CLI).
pub async fn add_provider_key(
    ingestor: &Ingestor,
    user_id: UserId,
    provider: &str,
    name: &str,
    admin_key: SecretString,
    base_url: Option<&str>,
) -> crate::Result<crate::store::ProviderKeyInfo> {
    let kind = ProviderKind::parse(provider)
        .ok_or_else(|| Error::Invalid(format!("unknown provider {provider:?}")))?;
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "the key needs a name (1 to 200 characters)".into(),
        ));
    }
    let key = admin_key.expose().trim();
    if key.is_empty() || key.chars().any(char::is_whitespace) || key.len() > 1000 {
        return Err(Error::Invalid("the admin key is empty or malformed".into()));
    }
    let base_url = base_url
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(kind.default_base_url());
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(Error::Invalid(
            "the base URL must start with http(s)://".into(),
        ));
    }
    let secret = SecretString::new(key);
    let sealed = ingestor.cipher.seal(user_id, &secret)?;
    let info = ingestor
        .store
        .add_key(
            user_id,
            NewProviderKey {
                provider: kind,
                name: name.to_owned(),
                base_url: base_url.trim_end_matches('/').to_owned(),
                sealed_key: sealed,
                masked_key: mask(secret.expose()),
            },
            jiff::Timestamp::now().as_second(),
        )
        .await?;
    tracing::info!(user = user_id, key = info.id, provider = kind.as_str(), masked = %info.masked_key, "provider key added");
    Ok(info)
}

async fn add_key(
    State(state): State<ProviderHttpState>,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
    body: Result<Json<AddKeyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let user_id = user(&state, &headers, session).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let info = add_provider_key(
        &state.ingestor,
        user_id,
        &body.provider,
        &body.name,
        SecretString::new(body.admin_key),
        body.base_url.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list_keys(
    State(state): State<ProviderHttpState>,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
) -> Result<Response, ApiError> {
    let user_id = user(&state, &headers, session).await?;
    let keys = state.ingestor.store.list_keys(user_id).await?;
    Ok(Json(json!({ "data": keys })).into_response())
}

async fn remove_key(
    State(state): State<ProviderHttpState>,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let user_id = user(&state, &headers, session).await?;
    if state.ingestor.store.remove_key(user_id, id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such provider key",
        ))
    }
}

async fn set_enabled(
    state: ProviderHttpState,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
    id: i64,
    enabled: bool,
) -> Result<Response, ApiError> {
    let user_id = user(&state, &headers, session).await?;
    if state
        .ingestor
        .store
        .set_key_enabled(user_id, id, enabled)
        .await?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such provider key",
        ))
    }
}

async fn enable_key(
    State(state): State<ProviderHttpState>,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    set_enabled(state, headers, session, id, true).await
}

async fn disable_key(
    State(state): State<ProviderHttpState>,
    headers: HeaderMap,
    session: Option<Extension<SessionUser>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    set_enabled(state, headers, session, id, false).await
}
