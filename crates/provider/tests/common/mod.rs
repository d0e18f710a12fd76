//! Shared test support: a fake OpenAI usage API on 127.0.0.1:0 serving the documented shapes,
//! stores (SQLite always, PostgreSQL when TOKENLEDGER_TEST_DATABASE_URL is set), log capture.
#![allow(dead_code)]

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use jiff::civil::Date;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokenledger_provider::crypto::KeyCipher;
use tokenledger_provider::ingest::{ClientFactory, IngestConfig, Ingestor};
use tokenledger_provider::model::day_start;
use tokenledger_provider::postgres::PgProviderStore;
use tokenledger_provider::retry::{RecordingSleeper, RetryPolicy};
use tokenledger_provider::sqlite::SqliteProviderStore;
use tokenledger_provider::{ProviderStore, SecretString};

pub const ADMIN_KEY: &str = "sk-admin-TESTKEY0123456789abcdefSECRET";
pub const USER_TOKEN: &str = "tlu_usertoken_alice";

/// A scripted answer served before the normal ones.
#[derive(Clone)]
pub enum Scripted {
    Status(u16, Option<&'static str>),
    Body(&'static str),
}

#[derive(Default)]
pub struct FakeState {
    /// Day start (unix seconds) -> results of that bucket.
    pub data: Mutex<BTreeMap<i64, Vec<Value>>>,
    pub script: Mutex<VecDeque<Scripted>>,
    /// After this many requests every request fails with a 500.
    pub fail_after: Mutex<Option<usize>>,
    pub requests: Mutex<Vec<Vec<(String, String)>>>,
    /// Buckets per page (the fake ignores a larger `limit`).
    pub page_size: usize,
}

pub struct Fake {
    pub state: Arc<FakeState>,
    pub base_url: String,
}

impl Fake {
    pub async fn start(page_size: usize) -> Fake {
        let state = Arc::new(FakeState {
            page_size,
            ..FakeState::default()
        });
        let app = Router::new()
            .route("/v1/organization/usage/completions", get(completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake {
            state,
            base_url: format!("http://{addr}"),
        }
    }

    pub fn set_day(&self, day: Date, results: Vec<Value>) {
        self.state
            .data
            .lock()
            .unwrap()
            .insert(day_start(day), results);
    }

    pub fn script(&self, s: Scripted) {
        self.state.script.lock().unwrap().push_back(s);
    }

    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn param(req: &[(String, String)], name: &str) -> Option<String> {
        req.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

async fn completions(
    State(st): State<Arc<FakeState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let url = reqwest::Url::parse(&format!("http://x/?{}", q.unwrap_or_default())).unwrap();
    let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let n = {
        let mut r = st.requests.lock().unwrap();
        r.push(params.clone());
        r.len()
    };
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {ADMIN_KEY}"))
    {
        return (StatusCode::UNAUTHORIZED, "bad key").into_response();
    }
    if let Some(s) = st.script.lock().unwrap().pop_front() {
        return match s {
            Scripted::Status(code, retry_after) => {
                let mut resp = (StatusCode::from_u16(code).unwrap(), "scripted").into_response();
                if let Some(ra) = retry_after {
                    resp.headers_mut()
                        .insert("retry-after", ra.parse().unwrap());
                }
                resp
            }
            Scripted::Body(b) => ([("content-type", "application/json")], b).into_response(),
        };
    }
    if st.fail_after.lock().unwrap().is_some_and(|f| n > f) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let get = |k: &str| Fake::param(&params, k);
    let start: i64 = get("start_time").unwrap().parse().unwrap();
    let end: i64 = get("end_time").unwrap().parse().unwrap();
    let limit: usize = get("limit").unwrap_or("7".into()).parse().unwrap();
    let offset: usize = get("page")
        .map(|p| p.trim_start_matches("page_").parse().unwrap())
        .unwrap_or(0);
    let data = st.data.lock().unwrap();
    let mut buckets = Vec::new();
    let mut t = start;
    while t < end {
        let results = data.get(&t).cloned().unwrap_or_default();
        buckets
            .push(json!({"object":"bucket","start_time":t,"end_time":t+86_400,"results":results}));
        t += 86_400;
    }
    let per_page = limit.min(st.page_size).max(1);
    let page: Vec<Value> = buckets
        .iter()
        .skip(offset)
        .take(per_page)
        .cloned()
        .collect();
    let has_more = offset + per_page < buckets.len();
    let body = json!({
        "object": "page",
        "data": page,
        "has_more": has_more,
        "next_page": if has_more { Value::String(format!("page_{}", offset + per_page)) } else { Value::Null },
    });
    axum::Json(body).into_response()
}

/// A grouped completions result; `None` dimensions are null.
pub fn result(
    project: Option<&str>,
    key: Option<&str>,
    model: Option<&str>,
    input: u64,
    output: u64,
    requests: u64,
) -> Value {
    json!({
        "object": "organization.usage.completions.result",
        "input_tokens": input,
        "input_cached_tokens": input / 4,
        "input_cache_write_tokens": input / 10,
        "input_uncached_tokens": input - input / 4,
        "output_tokens": output,
        "input_text_tokens": input / 2,
        "output_text_tokens": output,
        "input_cached_text_tokens": 0,
        "input_audio_tokens": 3,
        "input_cached_audio_tokens": 0,
        "output_audio_tokens": 1,
        "input_image_tokens": 0,
        "input_cached_image_tokens": 0,
        "output_image_tokens": 0,
        "num_model_requests": requests,
        "project_id": project,
        "user_id": null,
        "api_key_id": key,
        "model": model,
        "batch": if project.is_some() { json!(false) } else { Value::Null },
        "service_tier": if project.is_some() { json!("default") } else { Value::Null },
    })
}

/// A store under test with a user "alice" (token [`USER_TOKEN`]).
pub struct TestStore {
    pub name: &'static str,
    pub store: Arc<dyn ProviderStore>,
    pub user_id: i64,
    pub db_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

fn token_hash(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

pub fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.db");
    {
        // The server's users table, as crates/store-sqlite creates it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                 token_hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO users (id, name, token_hash, created_at) VALUES (7, 'alice', ?1, 0)",
            [token_hash(USER_TOKEN)],
        )
        .unwrap();
    }
    let store = SqliteProviderStore::open(&path).unwrap();
    TestStore {
        name: "sqlite",
        store: Arc::new(store),
        user_id: 7,
        db_path: Some(path),
        _dir: Some(dir),
    }
}

/// A PostgreSQL store in a fresh schema, when TOKENLEDGER_TEST_DATABASE_URL is set.
pub async fn pg_store() -> Option<TestStore> {
    let url = std::env::var("TOKENLEDGER_TEST_DATABASE_URL").ok()?;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    let schema = format!(
        "provider_test_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let opts = PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE users (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
             name text NOT NULL, token_hash text NOT NULL UNIQUE,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO users (id, name, token_hash) VALUES (7, 'alice', $1)")
        .bind(token_hash(USER_TOKEN))
        .execute(&pool)
        .await
        .unwrap();
    let store = PgProviderStore::from_pool(pool).await.unwrap();
    Some(TestStore {
        name: "postgres",
        store: Arc::new(store),
        user_id: 7,
        db_path: None,
        _dir: None,
    })
}

/// SQLite, plus PostgreSQL when configured.
pub async fn stores() -> Vec<TestStore> {
    let mut v = vec![sqlite_store()];
    if let Some(pg) = pg_store().await {
        v.push(pg);
    }
    v
}

pub fn cipher() -> Arc<KeyCipher> {
    Arc::new(KeyCipher::from_bytes(&[42u8; 32]))
}

/// An ingestor whose waits are recorded, not slept; `attempts` per request.
pub fn ingestor(
    store: Arc<dyn ProviderStore>,
    sleeper: Arc<RecordingSleeper>,
    attempts: u32,
) -> Ingestor {
    let retry = RetryPolicy {
        max_attempts: attempts,
        ..RetryPolicy::default()
    };
    Ingestor {
        store,
        cipher: cipher(),
        clients: ClientFactory::with_sleeper(sleeper, retry, 0),
        config: IngestConfig::default(),
    }
}

pub async fn add_key(ing: &Ingestor, user_id: i64, base_url: &str) -> i64 {
    tokenledger_provider::http::add_provider_key(
        ing,
        user_id,
        "openai",
        "org main",
        SecretString::new(ADMIN_KEY),
        Some(base_url),
    )
    .await
    .unwrap()
    .id
}

/// Sum of every stored counter of the user, and the number of stored rows.
pub async fn totals(store: &dyn ProviderStore, user_id: i64) -> (Vec<u64>, usize) {
    let rows = store
        .usage_rows(
            user_id,
            &tokenledger_provider::store::UsageQuery {
                from: 0,
                to: i64::MAX,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut t = tokenledger_provider::Counters::default();
    for r in &rows {
        t.add(&r.counters);
    }
    (t.0.to_vec(), rows.len())
}

/// Captured log output.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log event of this thread (use a current-thread runtime) until dropped.
pub fn capture_logs() -> (LogBuf, tracing::subscriber::DefaultGuard) {
    let buf = LogBuf::default();
    let b2 = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || b2.clone())
        .finish();
    (buf, tracing::subscriber::set_default(sub))
}
