//! End to end: the provider commands of the real `tokenledger` binary (`admin create-user`,
//! `provider add|pull|backfill|parity`, `serve` with the provider routes and the cron endpoint)
//! against a fake OpenAI organization usage API started in this process on 127.0.0.1:0. The fake
//! serves the documented `page`/`bucket`/`result` shapes; ground truth is the data it serves.
//! Each test runs in a fresh TOKENLEDGER_HOME with a cleared environment.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::civil::Date;
use jiff::ToSpan;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tokenledger");
/// The organisation admin key; it must never appear in any output, log or database byte.
const ADMIN_KEY: &str = "sk-admin-E2Eplaintext0123456789abcdefSECRET";
/// A part of the key that is distinctive on its own.
const KEY_CORE: &str = "E2Eplaintext0123456789abcdef";
/// The documented counters, in the order of the API's schema.
const COUNTERS: [&str; 15] = [
    "input_tokens",
    "input_cached_tokens",
    "input_cache_write_tokens",
    "input_uncached_tokens",
    "output_tokens",
    "input_text_tokens",
    "output_text_tokens",
    "input_cached_text_tokens",
    "input_audio_tokens",
    "input_cached_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "input_cached_image_tokens",
    "output_image_tokens",
    "num_model_requests",
];
/// The columns of an OpenAI dashboard usage export, in the documented order.
const EXPORT_COLUMNS: &str = "start_time,end_time,start_time_iso,end_time_iso,project_id,\
num_model_requests,user_id,api_key_id,model,batch,service_tier,input_tokens,output_tokens,\
input_cached_tokens,input_uncached_tokens,input_text_tokens,output_text_tokens,\
input_cached_text_tokens,input_audio_tokens,input_cached_audio_tokens,output_audio_tokens,\
input_image_tokens,input_cached_image_tokens,output_image_tokens";
const DAY: i64 = 86_400;

/// Which fake results a filter keeps.
type Pred<'a> = &'a dyn Fn(&Res) -> bool;

// ---------------------------------------------------------------- days

fn today() -> Date {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
}

fn day_start(d: Date) -> i64 {
    d.to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_second()
}

fn plus(d: Date, n: i64) -> Date {
    d.checked_add(n.days()).unwrap()
}

fn iso(secs: i64) -> String {
    let t = jiff::Timestamp::from_second(secs).unwrap();
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

// ---------------------------------------------------------------- the fake OpenAI API

/// One grouped result of a daily bucket.
#[derive(Clone, Debug)]
struct Res {
    project: Option<&'static str>,
    user: Option<&'static str>,
    key: Option<&'static str>,
    model: Option<&'static str>,
    batch: Option<bool>,
    tier: Option<&'static str>,
    /// The 15 counters, in [`COUNTERS`] order.
    c: [u64; 15],
}

impl Res {
    /// A result whose 15 counters derive from input, cached, output and requests.
    #[allow(clippy::too_many_arguments)]
    fn new(
        project: Option<&'static str>,
        key: Option<&'static str>,
        model: Option<&'static str>,
        tier: Option<&'static str>,
        batch: Option<bool>,
        input: u64,
        cached: u64,
        output: u64,
        reqs: u64,
    ) -> Res {
        let write = input / 10;
        let uncached = input - cached - write;
        let c = [
            input, cached, write, uncached, output, uncached, output, cached, 0, 0, 0, 0, 0, 0,
            reqs,
        ];
        Res {
            project,
            user: project.map(|_| "user-abc"),
            key,
            model,
            batch,
            tier,
            c,
        }
    }

    fn get(&self, name: &str) -> u64 {
        self.c[COUNTERS.iter().position(|n| *n == name).unwrap()]
    }

    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert(
            "object".into(),
            json!("organization.usage.completions.result"),
        );
        for (i, n) in COUNTERS.iter().enumerate() {
            m.insert((*n).into(), json!(self.c[i]));
        }
        m.insert("project_id".into(), json!(self.project));
        m.insert("user_id".into(), json!(self.user));
        m.insert("api_key_id".into(), json!(self.key));
        m.insert("model".into(), json!(self.model));
        m.insert("batch".into(), json!(self.batch));
        m.insert("service_tier".into(), json!(self.tier));
        Value::Object(m)
    }
}

#[derive(Default)]
struct FakeState {
    /// Day start (unix seconds) -> the results of that bucket.
    data: Mutex<BTreeMap<i64, Vec<Res>>>,
    /// Query pairs of every request, in order.
    requests: Mutex<Vec<Vec<(String, String)>>>,
    /// Requests answered normally; every later one gets a 500.
    fail_after: Mutex<Option<usize>>,
    /// Buckets per page at most (the fake ignores a larger `limit`).
    page_size: usize,
}

struct Fake {
    /// Runs the fake; dropping it stops the server.
    _rt: tokio::runtime::Runtime,
    state: Arc<FakeState>,
    base_url: String,
}

impl Fake {
    fn start(page_size: usize) -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(FakeState {
            page_size,
            ..FakeState::default()
        });
        let app = axum::Router::new()
            .route("/v1/organization/usage/completions", get(completions))
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake {
            _rt: rt,
            state,
            base_url: format!("http://{addr}"),
        }
    }

    fn set_day(&self, day: Date, results: Vec<Res>) {
        self.state
            .data
            .lock()
            .unwrap()
            .insert(day_start(day), results);
    }

    fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.state.requests.lock().unwrap().clone()
    }

    fn fail_after(&self, n: Option<usize>) {
        *self.state.fail_after.lock().unwrap() = n;
    }

    /// Every result served for days in `[from, to]`.
    fn results(&self, from: Date, to: Date) -> Vec<(Date, Res)> {
        let data = self.state.data.lock().unwrap();
        data.range(day_start(from)..day_start(plus(to, 1)))
            .flat_map(|(t, rs)| {
                let d = jiff::Timestamp::from_second(*t)
                    .unwrap()
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .date();
                rs.iter().map(move |r| (d, r.clone()))
            })
            .collect()
    }
}

fn param(req: &[(String, String)], name: &str) -> Option<String> {
    req.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
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
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {ADMIN_KEY}")) {
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
        )
            .into_response();
    }
    if st.fail_after.lock().unwrap().is_some_and(|f| n > f) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/json")],
            r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
        )
            .into_response();
    }
    let (Some(start), Some(end)) = (
        param(&params, "start_time").and_then(|s| s.parse::<i64>().ok()),
        param(&params, "end_time").and_then(|s| s.parse::<i64>().ok()),
    ) else {
        return (StatusCode::BAD_REQUEST, "start_time and end_time").into_response();
    };
    let limit: usize = param(&params, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(7);
    let offset: usize = match param(&params, "page") {
        None => 0,
        Some(p) => match p.strip_prefix("page_").and_then(|o| o.parse().ok()) {
            Some(o) => o,
            None => return (StatusCode::BAD_REQUEST, "bad page").into_response(),
        },
    };
    let data = st.data.lock().unwrap();
    let mut buckets = Vec::new();
    let mut t = start;
    while t < end {
        let results: Vec<Value> = data
            .get(&t)
            .map(|rs| rs.iter().map(Res::json).collect())
            .unwrap_or_default();
        buckets.push(json!({
            "object": "bucket",
            "start_time": t,
            "end_time": t + DAY,
            "results": results,
        }));
        t += DAY;
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
        "next_page": has_more.then(|| format!("page_{}", offset + per_page)),
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

// ---------------------------------------------------------------- the binary

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir_all(dir.path().join("tl")).unwrap();
        Env { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("tl")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("TOKENLEDGER_HOME", self.home())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `admin create-user NAME`: the user token.
    fn create_user(&self, name: &str) -> String {
        let o = self.run(&["admin", "create-user", name]);
        assert!(o.status.success(), "create-user: {}", text(&o.stderr));
        let out = text(&o.stdout);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "create-user stdout: {out:?}");
        lines[0].trim().to_owned()
    }

    /// `provider add openai` with the admin key on stdin: the key id.
    fn add_key(&self, user: &str, base_url: &str) -> i64 {
        let o = self.run_stdin(
            &[
                "provider",
                "add",
                "openai",
                "--user",
                user,
                "--name",
                "org",
                "--base-url",
                base_url,
            ],
            &format!("{ADMIN_KEY}\n"),
        );
        assert!(o.status.success(), "provider add: {}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(!out.contains(KEY_CORE) && !text(&o.stderr).contains(KEY_CORE));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "provider add stdout: {out:?}");
        assert_eq!(lines[0], lines[0].trim(), "{out:?}");
        lines[0]
            .parse()
            .unwrap_or_else(|_| panic!("not an id: {out:?}"))
    }

    /// Runs a provider command that prints telemetry JSON on stdout.
    fn telemetry(&self, args: &[&str]) -> (i32, Value, String) {
        let o = self.run(args);
        let err = text(&o.stderr);
        assert!(!err.contains(KEY_CORE), "the key leaked to stderr: {err}");
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {}", text(&o.stdout)));
        (o.status.code().unwrap_or(-1), v, err)
    }

    /// Per-day sums of the stored usage, straight from server.db.
    fn stored(&self) -> BTreeMap<i64, [u64; 15]> {
        let db = rusqlite::Connection::open(self.home().join("server.db")).unwrap();
        let cols = COUNTERS
            .iter()
            .map(|c| format!("SUM({c})"))
            .collect::<Vec<_>>()
            .join(",");
        let mut st = db
            .prepare(&format!(
                "SELECT window_start, {cols} FROM provider_usage_windows \
                 GROUP BY window_start ORDER BY window_start"
            ))
            .unwrap();
        let rows = st
            .query_map([], |r| {
                let mut c = [0u64; 15];
                for (i, v) in c.iter_mut().enumerate() {
                    *v = r.get::<_, i64>(i + 1)? as u64;
                }
                Ok((r.get::<_, i64>(0)?, c))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn stored_rows(&self) -> i64 {
        let db = rusqlite::Connection::open(self.home().join("server.db")).unwrap();
        db.query_row("SELECT COUNT(*) FROM provider_usage_windows", [], |r| {
            r.get(0)
        })
        .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Per-day sums of fake results, as [`Env::stored`] gives them.
fn expected(results: &[(Date, Res)]) -> BTreeMap<i64, [u64; 15]> {
    let mut m: BTreeMap<i64, [u64; 15]> = BTreeMap::new();
    for (d, r) in results {
        let e = m.entry(day_start(*d)).or_default();
        for (i, v) in r.c.iter().enumerate() {
            e[i] += v;
        }
    }
    m
}

/// A running `tokenledger serve`, killed when dropped.
struct Serve {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Serve {
    fn start(env: &Env, cron_secret: Option<&str>) -> Serve {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bind = format!("127.0.0.1:{port}");
        let log = env.path(&format!("serve-{port}.log"));
        let mut cmd = env.cmd(&["serve", "--bind", &bind, "--no-local-sync"]);
        if let Some(s) = cron_secret {
            cmd.env("CRON_SECRET", s);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Serve {
            child,
            url: format!("http://{bind}"),
            log,
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("serve exited with {st}: {}", s.log());
            }
            if let Ok(r) = client.get(format!("{}/healthz", s.url)).send() {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve never became healthy: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, token: &str, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .unwrap()
    }

    fn get_json(&self, token: &str, path: &str) -> Value {
        let r = self.get(token, path);
        assert_eq!(r.status(), 200, "{path}");
        r.json().unwrap()
    }

    fn cron(&self, auth: Option<&str>) -> (u16, Value) {
        let mut req =
            reqwest::blocking::Client::new().post(format!("{}/api/v1/cron/daily-usage", self.url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        let body = r.text().unwrap();
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("cron answer is not JSON ({e}): {body:?}"));
        (status, v)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- data

/// Several groups per day, null dimensions, batch and tiers, over `days` ending two days ago.
/// Returns the days in order.
fn seed(fake: &Fake, days: i64) -> Vec<Date> {
    let first = plus(today(), -(days + 1));
    let out: Vec<Date> = (0..days).map(|i| plus(first, i)).collect();
    for (i, d) in out.iter().enumerate() {
        let k = i as u64 + 1;
        let mut rs = vec![
            Res::new(
                Some("proj_a"),
                Some("key_1"),
                Some("gpt-4o-2024-08-06"),
                Some("default"),
                Some(false),
                1000 * k,
                200 * k,
                300 * k,
                5 * k,
            ),
            Res::new(
                Some("proj_a"),
                Some("key_2"),
                Some("gpt-4o-mini-2024-07-18"),
                Some("flex"),
                Some(true),
                400 + k,
                40,
                70 + k,
                2,
            ),
            Res::new(None, None, None, None, None, 10 * k, 0, k, 1),
        ];
        if i % 2 == 1 {
            rs.push(Res::new(
                Some("proj_b"),
                Some("key_1"),
                Some("o3-2025-04-16"),
                Some("default"),
                Some(false),
                7777,
                1111,
                2222,
                3,
            ));
        }
        fake.set_day(*d, rs);
    }
    out
}

fn counter(v: &Value, name: &str) -> u64 {
    let s = v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a decimal string in {v}"));
    s.parse()
        .unwrap_or_else(|_| panic!("{name}={s:?} is not a decimal"))
}

/// An export row of one result.
fn export_row(d: Date, r: &Res) -> String {
    let s = day_start(d);
    let o = |v: Option<&str>| v.unwrap_or("").to_owned();
    let mut cols = vec![
        s.to_string(),
        (s + DAY).to_string(),
        iso(s),
        iso(s + DAY),
        o(r.project),
        r.get("num_model_requests").to_string(),
        o(r.user),
        o(r.key),
        o(r.model),
        r.batch.map(|b| b.to_string()).unwrap_or_default(),
        o(r.tier),
    ];
    for n in EXPORT_COLUMNS.split(',').skip(11) {
        cols.push(r.get(n).to_string());
    }
    cols.join(",")
}

fn write_export(env: &Env, name: &str, rows: &[String]) -> PathBuf {
    let p = env.path(name);
    let mut s = format!("{EXPORT_COLUMNS}\n");
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    std::fs::write(&p, s).unwrap();
    p
}

fn scan_for_key(path: &Path) {
    if let Ok(bytes) = std::fs::read(path) {
        for needle in [ADMIN_KEY, KEY_CORE] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds the plaintext key",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn add_prints_only_the_key_id_and_the_key_is_never_in_plaintext() {
    let env = Env::new();
    let fake = Fake::start(31);
    seed(&fake, 3);
    let token = env.create_user("alice");
    assert!(token.starts_with("tlu_") && !token.contains(char::is_whitespace));
    let id = env.add_key("alice", &fake.base_url);
    assert!(id > 0);
    // A second key gets another id, alone on stdout as well.
    let id2 = env.add_key("alice", &fake.base_url);
    assert_ne!(id, id2);

    // An empty stdin is an error, and so is an unknown user; neither prints an id.
    let o = env.run_stdin(
        &[
            "provider", "add", "openai", "--user", "alice", "--name", "x",
        ],
        "\n",
    );
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    let o = env.run_stdin(
        &["provider", "add", "openai", "--user", "bob", "--name", "x"],
        ADMIN_KEY,
    );
    assert!(!o.status.success(), "unknown user accepted");
    assert!(!text(&o.stderr).contains(KEY_CORE));

    // Listing shows a masked key.
    for args in [
        &["provider", "list", "--user", "alice"][..],
        &["provider", "list", "--user", "alice", "--json"][..],
    ] {
        let o = env.run(args);
        assert!(o.status.success());
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(
            out.contains(&id.to_string()) && out.contains("CRET"),
            "{out}"
        );
        assert!(
            !out.contains(KEY_CORE) && !err.contains(KEY_CORE),
            "{out}{err}"
        );
    }

    // The stored key decrypts to the real one: the fake only answers the right bearer.
    let o = env.run(&["provider", "disable", "--user", "alice", &id2.to_string()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (code, tel, _) = env.telemetry(&[
        "provider",
        "pull",
        "--user",
        "alice",
        "--requests-per-minute",
        "0",
    ]);
    assert_eq!(code, 0, "{tel}");
    assert_eq!(tel["keys_processed"], 1, "{tel}");
    assert_eq!(tel["inserted"], 10, "{tel}");

    // Through serve as well: the key list API and the logs.
    let serve = Serve::start(&env, Some("cron-secret-1"));
    let keys = serve.get_json(&token, "/api/v1/provider-keys");
    assert!(!keys.to_string().contains(KEY_CORE), "{keys}");
    assert!(keys.to_string().contains(&format!("\"id\":{id}")), "{keys}");
    let (status, v) = serve.cron(Some("Bearer cron-secret-1"));
    assert_eq!(status, 200, "{v}");
    // The second pull re-reads the reconciled days only: the last seeded day has 3 results.
    assert_eq!(
        (&v["inserted"], &v["unchanged"]),
        (&json!(0), &json!(3)),
        "{v}"
    );
    let log = serve.log();
    assert!(log.contains("cron daily usage done"), "{log}");
    assert!(!log.contains(KEY_CORE), "the key is in the server log");
    drop(serve);

    // No byte of any file of the data directory holds the key (database, WAL, logs).
    let mut scanned = 0;
    for dir in [env.home(), env.dir.path().to_path_buf()] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                scan_for_key(&p);
                scanned += 1;
            }
        }
    }
    assert!(env.home().join("server.db").exists());
    assert!(scanned >= 3, "{scanned} files scanned");
}

#[test]
fn pull_stores_the_days_and_serve_answers_provider_usage_with_filters_and_csv() {
    let env = Env::new();
    let fake = Fake::start(31);
    let days = seed(&fake, 4);
    let token = env.create_user("alice");
    env.add_key("alice", &fake.base_url);

    // Exactly the documented interface (default throttle: two requests).
    let (code, tel, _) = env.telemetry(&["provider", "pull", "--user", "alice"]);
    assert_eq!(code, 0, "{tel}");
    let all = fake.results(days[0], days[3]);
    assert_eq!(all.len(), 14);
    assert_eq!(tel["keys_processed"], 1);
    assert_eq!(
        tel["windows_processed"], 35,
        "35 retained days, today included: {tel}"
    );
    assert_eq!(tel["inserted"], 14, "{tel}");
    assert_eq!(
        (tel["updated"].as_u64(), tel["failed"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(tel["errors"], json!([]));
    // Every request asked for daily buckets grouped by every dimension.
    let reqs = fake.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(param(r, "bucket_width").as_deref(), Some("1d"));
        let groups: Vec<&str> = r
            .iter()
            .filter(|(k, _)| k == "group_by" || k == "group_by[]")
            .map(|(_, v)| v.as_str())
            .collect();
        let mut groups: Vec<&str> = groups.iter().flat_map(|g| g.split(',')).collect();
        groups.sort_unstable();
        assert_eq!(
            groups,
            [
                "api_key_id",
                "batch",
                "model",
                "project_id",
                "service_tier",
                "user_id"
            ]
        );
    }
    assert_eq!(env.stored(), expected(&all));

    let serve = Serve::start(&env, None);
    let (from, to) = (days[0], days[3]);
    let q = format!("/api/v1/provider-usage?from={from}&to={to}");
    assert_eq!(serve.get("wrong-token", &q).status(), 401);
    let v = serve.get_json(&token, &q);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 4, "{v}");
    let exp = expected(&all);
    for (row, (start, c)) in data.iter().zip(&exp) {
        let day = jiff::Timestamp::from_second(*start)
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        assert_eq!(row["day"], day.to_string());
        for (i, n) in COUNTERS.iter().enumerate() {
            assert_eq!(counter(row, n), c[i], "{day} {n}");
        }
    }
    let sum = |f: &dyn Fn(&Res) -> bool, n: &str| -> u64 {
        all.iter()
            .filter(|(_, r)| f(r))
            .map(|(_, r)| r.get(n))
            .sum()
    };
    let everything = |_: &Res| true;
    for n in [
        "input_tokens",
        "input_cached_tokens",
        "output_tokens",
        "num_model_requests",
    ] {
        assert_eq!(
            counter(&v["summary"], n),
            sum(&everything, n),
            "summary {n}"
        );
    }
    // Known numbers: day k has 1000k + 400+k + 10k input tokens, days 2 and 4 add 7777.
    assert_eq!(
        counter(&v["summary"], "input_tokens"),
        10_000 + 1610 + 100 + 2 * 7777
    );

    // Each filter narrows the rows to its results.
    let filters: [(&str, Pred); 5] = [
        ("project_id=proj_b", &|r| r.project == Some("proj_b")),
        ("api_key_id=key_1", &|r| r.key == Some("key_1")),
        ("model=gpt-4o-mini-2024-07-18", &|r| {
            r.model == Some("gpt-4o-mini-2024-07-18")
        }),
        ("service_tier=flex", &|r| r.tier == Some("flex")),
        ("project_id=proj_a&service_tier=default", &|r| {
            r.project == Some("proj_a") && r.tier == Some("default")
        }),
    ];
    for (f, pred) in filters {
        let v = serve.get_json(&token, &format!("{q}&{f}"));
        let days_with: usize = exp
            .keys()
            .filter(|s| all.iter().any(|(d, r)| day_start(*d) == **s && pred(r)))
            .count();
        assert_eq!(v["data"].as_array().unwrap().len(), days_with, "{f}: {v}");
        for n in ["input_tokens", "output_tokens", "num_model_requests"] {
            assert_eq!(counter(&v["summary"], n), sum(pred, n), "{f} {n}");
            let rows: u64 = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| counter(r, n))
                .sum();
            assert_eq!(rows, sum(pred, n), "{f} rows {n}");
        }
    }
    let none = serve.get_json(&token, &format!("{q}&project_id=proj_zzz"));
    assert_eq!(none["data"], json!([]));
    assert_eq!(counter(&none["summary"], "input_tokens"), 0);

    // CSV export: a header with the API's names, one line per day, the same numbers.
    let r = serve.get(&token, &format!("{q}&format=csv"));
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let body = r.text().unwrap();
    let mut lines = body.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "day");
    let lines: Vec<&str> = lines.collect();
    assert_eq!(lines.len(), 4, "{body}");
    for n in COUNTERS {
        let c = header
            .iter()
            .position(|h| *h == n)
            .unwrap_or_else(|| panic!("{n}: {body}"));
        let total: u64 = lines
            .iter()
            .map(|l| l.split(',').nth(c).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, sum(&everything, n), "csv {n}");
    }
    assert!(lines[0].starts_with(&from.to_string()), "{body}");
    // Paginated.
    let r = serve.get(&token, &format!("{q}&format=csv&limit=3"));
    assert_eq!(r.headers()["x-next-offset"], "3");
    assert_eq!(r.text().unwrap().lines().count(), 4);
    let r = serve.get(&token, &format!("{q}&format=csv&limit=3&offset=3"));
    let page2 = r.text().unwrap();
    assert_eq!(page2.lines().count(), 2, "{page2}");
    assert!(page2.lines().nth(1).unwrap().starts_with(&to.to_string()));
    // Bad queries are 400 JSON.
    let r = serve.get(&token, "/api/v1/provider-usage?from=yesterday");
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().is_ok());
}

/// The request windows (start_time, end_time) of first pages, sorted, and a check that every
/// follow-up page repeats its first page's window.
fn windows(reqs: &[Vec<(String, String)>]) -> Vec<(i64, i64)> {
    let mut w: Vec<(i64, i64)> = Vec::new();
    let mut current: Option<(i64, i64)> = None;
    for r in reqs {
        let s: i64 = param(r, "start_time").unwrap().parse().unwrap();
        let e: i64 = param(r, "end_time").unwrap().parse().unwrap();
        assert!(s < e && (e - s) % DAY == 0 && s % DAY == 0, "{r:?}");
        if let (Some(_), Some(c)) = (param(r, "page"), current) {
            assert_eq!(c, (s, e), "a next page asked for another window");
        } else {
            w.push((s, e));
        }
        current = Some((s, e));
    }
    w.sort_unstable();
    w
}

fn backfill_args<'a>(start: &'a str, end: &'a str, label: &'a str) -> Vec<&'a str> {
    vec![
        "provider",
        "backfill",
        "--user",
        "alice",
        "--start",
        start,
        "--end",
        end,
        "--chunk-days",
        "2",
        "--label",
        label,
        "--requests-per-minute",
        "0",
    ]
}

#[test]
fn backfill_covers_every_day_once_reruns_change_nothing_and_interruptions_resume() {
    let fake = Fake::start(1); // one bucket per page: every chunk of 2 days has 2 pages
    let days = seed(&fake, 7);
    let (d1, d7) = (days[0], days[6]);
    let all = fake.results(d1, d7);
    assert_eq!(all.len(), 24);
    let (s, e) = (d1.to_string(), d7.to_string());

    // A clean run.
    let clean = Env::new();
    clean.create_user("alice");
    clean.add_key("alice", &fake.base_url);
    let (code, tel, err) = clean.telemetry(&backfill_args(&s, &e, "L"));
    assert_eq!(code, 0, "{tel} {err}");
    assert_eq!(tel["windows_processed"], 7, "{tel}");
    assert_eq!(tel["inserted"], 24, "{tel}");
    assert_eq!(tel["failed"], 0);
    // Per-chunk telemetry lines: 4 chunks (2+2+2+1 days).
    assert_eq!(
        err.lines().filter(|l| l.starts_with("chunk ")).count(),
        4,
        "{err}"
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 7, "one page per day");
    let w = windows(&reqs);
    assert_eq!(w.len(), 4);
    assert_eq!(w[0].0, day_start(d1));
    assert_eq!(w[3].1, day_start(plus(d7, 1)), "the end day is included");
    for pair in w.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "gap or overlap between chunks: {w:?}");
    }
    let truth = expected(&all);
    assert_eq!(clean.stored(), truth);
    assert_eq!(clean.stored_rows(), 24);

    // The same label again: done already, nothing asked, nothing changed.
    let before = fake.requests().len();
    let (code, tel, _) = clean.telemetry(&backfill_args(&s, &e, "L"));
    assert_eq!(code, 0, "{tel}");
    assert_eq!(
        fake.requests().len(),
        before,
        "a finished backfill was fetched again"
    );
    assert_eq!(
        (tel["inserted"].as_u64(), tel["updated"].as_u64()),
        (Some(0), Some(0))
    );
    // Another label fetches the range again and finds every result unchanged.
    let (code, tel, _) = clean.telemetry(&backfill_args(&s, &e, "again"));
    assert_eq!(code, 0, "{tel}");
    assert_eq!(tel["inserted"], 0, "{tel}");
    assert_eq!(tel["updated"], 0, "{tel}");
    assert_eq!(tel["unchanged"], 24, "{tel}");
    assert_eq!(clean.stored(), truth);
    assert_eq!(clean.stored_rows(), 24);

    // Interrupted: the API answers 3 requests, then 500s forever; the command fails.
    let broken = Env::new();
    broken.create_user("alice");
    broken.add_key("alice", &fake.base_url);
    let base = fake.requests().len();
    fake.fail_after(Some(base + 3));
    let mut args = backfill_args(&s, &e, "L");
    args.extend(["--max-attempts", "2"]);
    let (code, tel, err) = broken.telemetry(&args);
    assert_ne!(code, 0, "an interrupted backfill exited 0: {tel}");
    assert_eq!(tel["errors"][0]["code"], "server_error", "{tel}");
    assert!(tel["failed"].as_u64().unwrap() > 0, "{tel}");
    assert!(err.contains("error=server_error"), "{err}");
    let partial = broken.stored();
    assert!(partial.len() < 7 && !partial.is_empty(), "{partial:?}");
    // The API is healthy again: the same command resumes and ends as the clean run did.
    fake.fail_after(None);
    let resumed_from = fake.requests().len();
    let (code, tel, _) = broken.telemetry(&backfill_args(&s, &e, "L"));
    assert_eq!(code, 0, "{tel}");
    assert_eq!(broken.stored(), truth);
    assert_eq!(broken.stored_rows(), 24, "a duplicate after the resume");
    // The resumed run did not start over: the first complete chunk was not asked again.
    let after: Vec<_> = fake.requests()[resumed_from..].to_vec();
    assert!(
        windows(&after).iter().all(|(s, _)| *s > day_start(d1)),
        "the resume fetched the first chunk again: {:?}",
        windows(&after)
    );
    // Together the two runs covered the range without gaps.
    let both = windows(&fake.requests()[base..]);
    let mut covered = day_start(d1);
    for (s, e) in &both {
        assert!(*s <= covered, "gap before {s}: {both:?}");
        covered = covered.max(*e);
    }
    assert_eq!(covered, day_start(plus(d7, 1)));
}

#[test]
fn parity_exits_0_on_match_1_on_differences_2_on_bad_input() {
    let env = Env::new();
    let fake = Fake::start(31);
    let days = seed(&fake, 4);
    env.create_user("alice");
    env.add_key("alice", &fake.base_url);
    let (code, tel, _) = env.telemetry(&[
        "provider",
        "pull",
        "--user",
        "alice",
        "--requests-per-minute",
        "0",
    ]);
    assert_eq!(code, 0, "{tel}");
    let all = fake.results(days[0], days[3]);
    let rows: Vec<String> = all.iter().map(|(d, r)| export_row(*d, r)).collect();
    let (from, to) = (days[0].to_string(), days[3].to_string());
    let parity = |files: &[&Path], extra: &[&str]| -> (i32, String) {
        let mut args = vec!["provider", "parity", "--user", "alice"];
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        for n in &names {
            args.extend(["--csv", n.as_str()]);
        }
        args.extend(extra);
        let o = env.run(&args);
        (
            o.status.code().unwrap_or(-1),
            format!("{}{}", text(&o.stdout), text(&o.stderr)),
        )
    };
    let range = ["--from", from.as_str(), "--to", to.as_str()];

    // Equal data passes, with and without a range, and with a zero-token row without metadata.
    let mut with_blank = rows.clone();
    let s = day_start(days[1]);
    with_blank.push(format!(
        "{s},{},{},{},,0,,,,,,0,0,0,0,0,0,0,0,0,0,0,0,0",
        s + DAY,
        iso(s),
        iso(s + DAY)
    ));
    let good = write_export(&env, "good.csv", &with_blank);
    let (code, out) = parity(&[&good], &range);
    assert_eq!(code, 0, "{out}");
    let (code, out) = parity(&[&good], &[]);
    assert_eq!(code, 0, "{out}");
    // The documented export file name carries the range (end exclusive).
    let named = write_export(
        &env,
        &format!("completions_usage_{}_{}.csv", days[0], plus(days[3], 1)),
        &rows,
    );
    let (code, out) = parity(&[&named], &["--threshold", "0"]);
    assert_eq!(code, 0, "{out}");
    // Two exports splitting the rows add up.
    let half = rows.len() / 2;
    let a = write_export(&env, "a.csv", &rows[..half]);
    let b = write_export(&env, "b.csv", &rows[half..]);
    let (code, out) = parity(&[&a, &b], &range);
    assert_eq!(code, 0, "{out}");

    // A stored day missing from the export.
    let day3 = day_start(days[2]).to_string();
    let no_day3: Vec<String> = rows
        .iter()
        .filter(|r| !r.starts_with(&day3))
        .cloned()
        .collect();
    let f = write_export(&env, "missing_day.csv", &no_day3);
    let (code, out) = parity(&[&f], &range);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&days[2].to_string()), "{out}");
    // A day in the export that is not stored.
    let mut extra_day = rows.clone();
    extra_day.push(export_row(plus(days[3], 1), &all[0].1));
    let f = write_export(&env, "extra_day.csv", &extra_day);
    let (code, out) = parity(&[&f], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&plus(days[3], 1).to_string()), "{out}");

    // An extra key.
    let mut extra_key = rows.clone();
    let mut r = all[0].1.clone();
    r.key = Some("key_999");
    extra_key.push(export_row(all[0].0, &r));
    let f = write_export(&env, "extra_key.csv", &extra_key);
    let (code, out) = parity(&[&f], &range);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("key_999"), "{out}");

    // A variance: one result's input tokens 1 % higher in the export.
    let mut varied = all.clone();
    varied[0].1.c[0] += varied[0].1.c[0] / 100;
    let vrows: Vec<String> = varied.iter().map(|(d, r)| export_row(*d, r)).collect();
    let f = write_export(&env, "variance.csv", &vrows);
    let (code, out) = parity(&[&f], &range);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("input_tokens"), "{out}");
    let (code, out) = parity(&[&f], &["--threshold", "0.0001"]);
    assert_eq!(code, 1, "{out}");
    // Under a looser threshold the same variance passes.
    let (code, out) = parity(&[&f], &["--threshold", "0.05"]);
    assert_eq!(code, 0, "{out}");

    // Bad input: a missing file, files that are not exports, a bad threshold or range.
    let (code, out) = parity(&[&env.path("nope.csv")], &[]);
    assert_eq!(code, 2, "{out}");
    let junk = env.path("junk.csv");
    std::fs::write(&junk, "hello,world\n\"unterminated,1\n").unwrap();
    let (code, out) = parity(&[&junk], &[]);
    assert_eq!(code, 2, "{out}");
    let bin = env.path("binary.csv");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255, 0, 1]).unwrap();
    let (code, out) = parity(&[&bin], &[]);
    assert_eq!(code, 2, "{out}");
    let empty = env.path("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let (code, out) = parity(&[&empty], &[]);
    assert_eq!(code, 2, "{out}");
    let mut bad_rows = rows.clone();
    bad_rows[0] = bad_rows[0].replacen(",gpt-4o-2024-08-06,", ",gpt-4o-2024-08-06,x,", 1);
    bad_rows.push("not-a-time,,,,proj_a,abc".into());
    let f = write_export(&env, "bad_rows.csv", &bad_rows);
    let (code, out) = parity(&[&f], &range);
    assert_eq!(code, 2, "rows that cannot be read are bad input: {out}");
    let (code, out) = parity(&[&good], &["--threshold", "-1"]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = parity(&[&good], &["--from", &to, "--to", &from]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = parity(&[&good], &["--from", "2025-13-45"]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn cron_through_serve_fails_closed_rejects_wrong_secrets_and_pulls_with_the_right_one() {
    let env = Env::new();
    let fake = Fake::start(31);
    let days = seed(&fake, 3);
    env.create_user("alice");
    env.add_key("alice", &fake.base_url);

    // No CRON_SECRET: every call refused, nothing pulled, each refusal logged.
    let serve = Serve::start(&env, None);
    for auth in [None, Some("Bearer "), Some("Bearer anything")] {
        let (status, v) = serve.cron(auth);
        assert!(
            (400..600).contains(&status) && status != 200,
            "{status} {v}"
        );
        assert!(v["error"].is_object() || v["error"].is_string(), "{v}");
    }
    assert_eq!(
        fake.requests().len(),
        0,
        "a refused cron call reached the provider"
    );
    assert_eq!(
        serve.log().matches("rejected cron call").count(),
        3,
        "{}",
        serve.log()
    );
    assert!(
        serve.log().contains("127.0.0.1"),
        "no source address logged"
    );
    drop(serve);

    // A secret configured: a wrong or missing one is 401, nothing pulled.
    let serve = Serve::start(&env, Some("s3cret-cron"));
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-cro"),
        Some("Bearer s3cret-cronX"),
        Some("Basic s3cret-cron"),
        Some("s3cret-cron"),
    ] {
        let (status, v) = serve.cron(auth);
        assert_eq!(status, 401, "{auth:?}: {v}");
    }
    assert_eq!(
        fake.requests().len(),
        0,
        "a rejected cron call reached the provider"
    );
    assert_eq!(env.stored_rows(), 0);

    // The right one: the daily pull, with telemetry.
    let (status, v) = serve.cron(Some("Bearer s3cret-cron"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["keys_processed"], 1, "{v}");
    assert_eq!(v["windows_processed"], 35, "{v}");
    assert_eq!(v["inserted"], 10, "{v}");
    assert_eq!(v["updated"], 0, "{v}");
    assert_eq!(v["unchanged"], 0, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert!(!fake.requests().is_empty());
    assert_eq!(env.stored(), expected(&fake.results(days[0], days[2])));

    // A day corrected by the provider is replaced on the next call, not added.
    let mut corrected = fake.state.data.lock().unwrap()[&day_start(days[2])].clone();
    corrected[0].c[0] += 5;
    fake.set_day(days[2], corrected);
    let (status, v) = serve.cron(Some("Bearer s3cret-cron"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["inserted"], 0, "{v}");
    assert_eq!(v["updated"], 1, "{v}");
    assert_eq!(env.stored(), expected(&fake.results(days[0], days[2])));
    assert_eq!(env.stored_rows(), 10);

    let log = serve.log();
    assert!(!log.contains(KEY_CORE), "the key is in the server log");
    drop(serve);
}

#[test]
fn a_backfill_of_old_days_says_so_keeps_them_for_parity_and_the_next_pull_prunes_them() {
    let env = Env::new();
    let fake = Fake::start(31);
    let (d1, d2) = (
        jiff::civil::date(2025, 9, 15),
        jiff::civil::date(2025, 9, 16),
    );
    fake.set_day(
        d1,
        vec![Res::new(
            Some("proj_a"),
            Some("key_1"),
            Some("gpt-4o"),
            Some("default"),
            Some(false),
            1000,
            100,
            200,
            4,
        )],
    );
    fake.set_day(
        d2,
        vec![
            Res::new(
                Some("proj_a"),
                Some("key_1"),
                Some("gpt-4o"),
                Some("default"),
                Some(false),
                3000,
                0,
                50,
                2,
            ),
            Res::new(None, None, None, None, None, 5, 0, 1, 1),
        ],
    );
    env.create_user("alice");
    env.add_key("alice", &fake.base_url);
    let (code, tel, err) = env.telemetry(&[
        "provider",
        "backfill",
        "--user",
        "alice",
        "--start",
        "2025-09-15",
        "--end",
        "2025-09-16",
        "--chunk-days",
        "1",
        "--label",
        "debug-admin",
    ]);
    assert_eq!(code, 0, "{tel} {err}");
    assert_eq!(tel["days_outside_retention"], 2, "{tel}");
    assert!(err.contains("retention window"), "{err}");
    assert_eq!(tel["inserted"], 3, "{tel}");
    assert_eq!(env.stored(), expected(&fake.results(d1, d2)));
    let w = windows(&fake.requests());
    assert_eq!(
        w,
        [
            (day_start(d1), day_start(d2)),
            (day_start(d2), day_start(plus(d2, 1)))
        ]
    );

    // Parity with the September export of those days.
    let rows: Vec<String> = fake
        .results(d1, d2)
        .iter()
        .map(|(d, r)| export_row(*d, r))
        .collect();
    let f = write_export(&env, "completions_usage_2025-09-15_2025-09-17.csv", &rows);
    let o = env.run(&[
        "provider",
        "parity",
        "--user",
        "alice",
        "--csv",
        &f.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));

    // The next pull keeps the retention window.
    let (code, tel, _) = env.telemetry(&[
        "provider",
        "pull",
        "--user",
        "alice",
        "--requests-per-minute",
        "0",
    ]);
    assert_eq!(code, 0, "{tel}");
    assert_eq!(tel["pruned"], 3, "{tel}");
    assert_eq!(env.stored_rows(), 0);
}
