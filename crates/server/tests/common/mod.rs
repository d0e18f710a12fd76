//! The test harness: a real server on port 0 over either backend, a reqwest client, raw SQL
//! access for checks, and a throwaway PostgreSQL cluster shared by the test binary.

#![allow(dead_code)]

use serde_json::Value;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokenledger_server::{AppState, ServerConfig};
use tokenledger_store::{generate_token, hash_token, Store};
use tokenledger_store_postgres::PgStore;
use tokenledger_store_sqlite::SqliteStore;

/// Which database a test runs on.
pub enum Db {
    Sqlite { path: PathBuf },
    Postgres { url: String },
}

/// One running server and its database.
pub struct Env {
    pub base: String,
    pub client: reqwest::Client,
    pub db: Db,
    pub store: Arc<dyn Store>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn start(
    store: Arc<dyn Store>,
    config: ServerConfig,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(store, config);
    tokio::spawn(async move {
        tokenledger_server::serve(listener, state, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (format!("http://{addr}"), tx)
}

impl Env {
    pub async fn sqlite() -> Env {
        Self::sqlite_with(ServerConfig::default()).await
    }

    pub async fn sqlite_with(config: ServerConfig) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("server.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let (base, tx) = start(store.clone(), config).await;
        Env {
            base,
            client: reqwest::Client::new(),
            db: Db::Sqlite { path },
            store,
            shutdown: Some(tx),
            _tmp: Some(tmp),
        }
    }

    /// `None` (with a loud message) when PostgreSQL cannot be had outside CI.
    pub async fn postgres() -> Option<Env> {
        Self::postgres_with(ServerConfig::default()).await
    }

    pub async fn postgres_with(config: ServerConfig) -> Option<Env> {
        let url = fresh_pg_database().await?;
        let store: Arc<dyn Store> =
            Arc::new(PgStore::connect_with_pool_size(&url, 4).await.unwrap());
        let (base, tx) = start(store.clone(), config).await;
        Some(Env {
            base,
            client: reqwest::Client::new(),
            db: Db::Postgres { url },
            store,
            shutdown: Some(tx),
            _tmp: None,
        })
    }

    /// Creates a user the way `tokenledger admin create-user` does; returns the token.
    pub async fn user(&self, name: &str) -> String {
        let token = generate_token(tokenledger_server::auth::USER_TOKEN_PREFIX);
        self.store
            .create_user(name, &hash_token(&token))
            .await
            .unwrap();
        token
    }

    /// Registers a device through the API; returns (device_id, device_token).
    pub async fn device(&self, user_token: &str, name: &str) -> (String, String) {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "/api/v1/devices",
                Some(user_token),
                Some(serde_json::json!({"name": name, "platform": "linux"}).to_string()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["device_id"].as_str().unwrap().to_string(),
            body["device_token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn ingest_raw(&self, device_token: &str, body: String) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/api/v1/ingest",
            Some(device_token),
            Some(body),
        )
        .await
    }

    pub async fn ingest(&self, device_token: &str, buckets: &[Value]) -> (u16, Value) {
        self.ingest_raw(
            device_token,
            serde_json::json!({ "buckets": buckets }).to_string(),
        )
        .await
    }

    /// Runs a SQL script directly on the database.
    pub async fn exec(&self, sql: &str) {
        match &self.db {
            Db::Sqlite { path } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Db::Postgres { url } => {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                    .await
                    .unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// One integer from a query, or the error text.
    pub async fn scalar(&self, sql: &str) -> Result<i64, String> {
        match &self.db {
            Db::Sqlite { path } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map_err(|e| e.to_string())
            }
            Db::Postgres { url } => {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                    .await
                    .unwrap();
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub fn rollback_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite { .. } => tokenledger_store_sqlite::ROLLUP_ROLLBACK_SQL,
            Db::Postgres { .. } => tokenledger_store_postgres::ROLLUP_ROLLBACK_SQL,
        }
    }
}

/// A bucket as JSON, tokens as decimal strings; total is input + output.
pub fn bucket(source: &str, model: Option<&str>, hour_start: &str, t: [u64; 5]) -> Value {
    let mut v = serde_json::json!({
        "source": source,
        "hour_start": hour_start,
        "input_tokens": t[0].to_string(),
        "cached_input_tokens": t[1].to_string(),
        "cache_creation_input_tokens": t[2].to_string(),
        "output_tokens": t[3].to_string(),
        "reasoning_output_tokens": t[4].to_string(),
        "total_tokens": (t[0] + t[3]).to_string(),
    });
    if let Some(m) = model {
        v["model"] = Value::String(m.to_string());
    }
    v
}

/// The six token totals of a usage answer's `totals` object, as numbers.
pub fn six(v: &Value) -> [u64; 6] {
    let f = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} missing or not a string in {v}"))
            .parse::<u64>()
            .unwrap()
    };
    [
        f("input_tokens"),
        f("cached_input_tokens"),
        f("cache_creation_input_tokens"),
        f("output_tokens"),
        f("reasoning_output_tokens"),
        f("total_tokens"),
    ]
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: TOKENLEDGER_TEST_DATABASE_URL, or a throwaway cluster started here.

struct Cluster {
    admin_url: String,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DB_SEQ: AtomicUsize = AtomicUsize::new(0);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn unavailable(why: &str) -> Option<Cluster> {
    if in_ci() {
        panic!("PostgreSQL is required in CI but unavailable: {why}");
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPING the PostgreSQL half of the suite: {why}\n\
         !!! Set TOKENLEDGER_TEST_DATABASE_URL or install PostgreSQL server binaries.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    None
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `program args` as the postgres user when we are root (initdb refuses root).
fn as_pg(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn start_cluster() -> Option<Cluster> {
    if let Ok(url) = std::env::var("TOKENLEDGER_TEST_DATABASE_URL") {
        if !url.is_empty() {
            return Some(Cluster { admin_url: url });
        }
    }
    let Some(bin) = find_bin_dir() else {
        return unavailable("no /usr/lib/postgresql/*/bin/initdb");
    };
    let base = std::env::temp_dir().join(format!(
        "tokenledger-pg-{}-{}",
        std::process::id(),
        generate_token("").get(..8).unwrap_or("x")
    ));
    let data = base.join("data");
    let sock = base.join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&base)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return unavailable("cannot chown the cluster folder to the postgres user");
        }
    }
    let data_s = data.to_str().unwrap();
    let out = as_pg(
        &bin.join("initdb"),
        &[
            "-D",
            data_s,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return unavailable(&format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
        Err(e) => return unavailable(&format!("cannot run initdb: {e}")),
    }
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A watchdog shell owns the server: when this test process is gone, it stops PostgreSQL
    // and deletes the cluster, whatever way the process ended.
    let script = format!(
        "{pg} -D {data} -p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
         > {base}/log 2>&1 &
         pid=$!
         while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 0.5; done
         kill -QUIT $pid 2>/dev/null; wait $pid 2>/dev/null
         rm -rf {base}",
        pg = bin.join("postgres").display(),
        data = data_s,
        sock = sock.display(),
        base = base.display(),
        parent = std::process::id(),
    );
    let spawned = as_pg(Path::new("/bin/sh"), &["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        return unavailable(&format!("cannot start postgres: {e}"));
    }
    let pg_isready = bin.join("pg_isready");
    // Bounded wait for the server to accept connections (about 30 s).
    for _ in 0..300 {
        let ready = Command::new(&pg_isready)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Some(Cluster {
                admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(base.join("log")).unwrap_or_default();
    unavailable(&format!("postgres did not accept connections: {log}"))
}

/// A fresh, empty database on the shared cluster; its URL.
pub async fn fresh_pg_database() -> Option<String> {
    let cluster = CLUSTER.get_or_init(start_cluster).as_ref().or_else(|| {
        if in_ci() {
            panic!("PostgreSQL is required in CI");
        }
        None
    })?;
    let name = format!(
        "tl_test_{}_{}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.admin_url)
        .await
        .expect("connect to the PostgreSQL admin database");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (path, query) = match cluster.admin_url.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (cluster.admin_url.as_str(), String::new()),
    };
    let (head, _) = path.rsplit_once('/').unwrap();
    let url = format!("{head}/{name}{query}");
    Some(url)
}
