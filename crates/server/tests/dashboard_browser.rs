//! The dashboard end to end: security over plain HTTP, and the real page in headless Chromium
//! driven through the Chrome DevTools Protocol.
//!
//! The browser test needs Debian's `chromium` (`scripts/install-chromium.sh`); without it the
//! test fails when `CI` is set and skips otherwise. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/dashboard-*.png`.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokenledger_core::{Source, TokenCounts};
use tokenledger_server::{dashboard, AppState, ServerConfig};
use tokenledger_store::{generate_token, hash_token, now_unix, NewBucket, Store};
use tokenledger_store_sqlite::SqliteStore;

struct Server {
    base: String,
    store: Arc<dyn Store>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _tmp: tempfile::TempDir,
}

async fn start() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(tmp.path().join("s.db")).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(store.clone(), ServerConfig::default());
    tokio::spawn(async move {
        let _ = tokenledger_server::serve(listener, state, async {
            let _ = rx.await;
        })
        .await;
    });
    Server {
        base,
        store,
        _shutdown: tx,
        _tmp: tmp,
    }
}

/// A user with a token and one device.
struct Account {
    id: i64,
    token: String,
    device_id: i64,
}

async fn account(store: &dyn Store, name: &str) -> Account {
    let token = generate_token("tlu_");
    let user = store.create_user(name, &hash_token(&token)).await.unwrap();
    let device = store
        .create_device(
            user.id,
            &format!("{name}-laptop"),
            "linux",
            &hash_token(&generate_token("tld_")),
        )
        .await
        .unwrap();
    Account {
        id: user.id,
        token,
        device_id: device.id,
    }
}

fn tokens(input: u64, cached: u64, output: u64) -> TokenCounts {
    TokenCounts {
        input_tokens: input,
        cached_input_tokens: cached,
        cache_creation_input_tokens: 0,
        output_tokens: output,
        reasoning_output_tokens: 0,
        total_tokens: input + output,
    }
}

/// Today's UTC midnight (the browser runs with TZ=UTC).
fn today_start() -> i64 {
    let now = now_unix();
    now - now.rem_euclid(86_400)
}

fn day_str(ts: i64) -> String {
    jiff::Timestamp::from_second(ts)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

/// Seeds `days` days ending today: codex/gpt-5 at 09:00 and claude/claude-sonnet-4 at 14:30,
/// sizes growing with the day; returns the ground truth `(day, codex_total, claude_total)`.
async fn seed(store: &dyn Store, acc: &Account, days: i64, scale: u64) -> Vec<(String, u64, u64)> {
    let mut buckets = Vec::new();
    let mut truth = Vec::new();
    for d in 0..days {
        let day = today_start() - d * 86_400;
        let k = (d as u64 % 7) + 1;
        let codex = tokens(
            1_000_000 * k * scale,
            400_000 * k * scale,
            20_000 * k * scale,
        );
        let claude = tokens(300_000 * k * scale, 100_000 * k * scale, 50_000 * k * scale);
        buckets.push(NewBucket {
            source: Source::Codex,
            model: "gpt-5".into(),
            hour_start: day + 9 * 3600,
            tokens: codex,
        });
        buckets.push(NewBucket {
            source: Source::Claude,
            model: "claude-sonnet-4-5".into(),
            hour_start: day + 14 * 3600 + 1800,
            tokens: claude,
        });
        truth.push((day_str(day), codex.total_tokens, claude.total_tokens));
    }
    store
        .ingest(acc.id, acc.device_id, &buckets, now_unix())
        .await
        .unwrap();
    truth
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with a fresh login link; returns the session cookie (`tl_session=...`).
async fn login_cookie(s: &Server, user_id: i64) -> String {
    let code = dashboard::create_login_code(s.store.as_ref(), user_id)
        .await
        .unwrap();
    let resp = client()
        .get(dashboard::login_url(&s.base, &code))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Lax"), "{set}");
    set.split(';').next().unwrap().to_string()
}

async fn csrf_of(s: &Server, cookie: &str) -> String {
    let html = client()
        .get(format!("{}/", s.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = html.find("name=\"csrf-token\" content=\"").unwrap() + 27;
    html[at..at + 64].to_string()
}

async fn get_json(s: &Server, path: &str, auth: (&str, &str)) -> (u16, Value) {
    let resp = client()
        .get(format!("{}{path}", s.base))
        .header(auth.0, auth.1)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sessions_are_scoped_and_protected() {
    let s = start().await;
    let a = account(s.store.as_ref(), "alice").await;
    let b = account(s.store.as_ref(), "bob").await;
    let ta = seed(s.store.as_ref(), &a, 3, 1).await;
    let tb = seed(s.store.as_ref(), &b, 3, 5).await;
    let from = &ta[2].0;
    let to = &ta[0].0;
    let truth_a: u64 = ta.iter().map(|(_, x, y)| x + y).sum();
    let truth_b: u64 = tb.iter().map(|(_, x, y)| x + y).sum();
    assert_ne!(truth_a, truth_b);
    let q = format!("/api/v1/usage/summary?from={from}&to={to}&tz=UTC");

    // No cookie: the API says 401 and the page sends to the login form.
    let (st, _) = get_json(&s, &q, ("accept", "application/json")).await;
    assert_eq!(st, 401);
    let page = client().get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    let (st, _) = get_json(&s, &q, ("cookie", "tl_session=tls_forged")).await;
    assert_eq!(st, 401);

    // Alice's cookie reads Alice's usage, never Bob's.
    let cookie = login_cookie(&s, a.id).await;
    let (st, body) = get_json(&s, &q, ("cookie", &cookie)).await;
    assert_eq!(st, 200);
    assert_eq!(body["totals"]["total_tokens"], truth_a.to_string());
    let (_, devs) = get_json(&s, "/api/v1/devices", ("cookie", &cookie)).await;
    let ids: Vec<&str> = devs["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.device_id.to_string()]);
    let (_, by_dev) = get_json(
        &s,
        &format!("/api/v1/usage/devices?from={from}&to={to}&tz=UTC"),
        ("cookie", &cookie),
    )
    .await;
    assert_eq!(by_dev["data"].as_array().unwrap().len(), 1);
    assert_eq!(by_dev["data"][0]["total_tokens"], truth_a.to_string());
    assert_eq!(by_dev["data"][0]["share_percent"], "100.00");

    // State changes need the session's CSRF token.
    let csrf = csrf_of(&s, &cookie).await;
    let del = |id: i64, token: Option<&str>| {
        let mut r = client()
            .delete(format!("{}/api/v1/devices/{id}", s.base))
            .header("cookie", &cookie);
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    assert_eq!(del(a.device_id, None).await.unwrap().status(), 403);
    let forged = "0".repeat(64);
    assert_eq!(del(a.device_id, Some(&forged)).await.unwrap().status(), 403);
    // Bob's device is out of Alice's reach even with a valid token.
    assert_eq!(del(b.device_id, Some(&csrf)).await.unwrap().status(), 404);
    let bob_devices = s.store.list_devices(b.id).await.unwrap();
    assert!(bob_devices[0].revoked_at.is_none());
    assert_eq!(del(a.device_id, Some(&csrf)).await.unwrap().status(), 204);

    // Logout needs the token too, then the cookie is dead.
    let logout = |token: &str| {
        client()
            .post(format!("{}/logout", s.base))
            .header("cookie", &cookie)
            .header("x-csrf-token", token)
            .send()
    };
    assert_eq!(logout(&forged).await.unwrap().status(), 403);
    assert_eq!(logout(&csrf).await.unwrap().status(), 204);
    let (st, _) = get_json(&s, &q, ("cookie", &cookie)).await;
    assert_eq!(st, 401);

    // Bearer clients are unaffected and need no CSRF token.
    let (st, body) = get_json(&s, &q, ("authorization", &format!("Bearer {}", b.token))).await;
    assert_eq!(st, 200);
    assert_eq!(body["totals"]["total_tokens"], truth_b.to_string());
}

#[tokio::test]
async fn login_links_work_once_and_expire() {
    let s = start().await;
    let a = account(s.store.as_ref(), "alice").await;
    let code = dashboard::create_login_code(s.store.as_ref(), a.id)
        .await
        .unwrap();
    let url = dashboard::login_url(&s.base, &code);
    assert!(url.starts_with(&format!("{}/login/tll_", s.base)));
    assert_eq!(client().get(&url).send().await.unwrap().status(), 303);
    // Reused.
    let again = client().get(&url).send().await.unwrap();
    assert_eq!(again.status(), 401);
    assert!(again.headers().get("set-cookie").is_none());
    // Expired: a code whose ten minutes are over.
    let old = generate_token("tll_");
    s.store
        .create_login_code(a.id, &hash_token(&old), now_unix() - 1)
        .await
        .unwrap();
    let expired = client()
        .get(dashboard::login_url(&s.base, &old))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert!(expired
        .text()
        .await
        .unwrap()
        .contains("expired or already used"));
    // Unknown.
    let unknown = client()
        .get(format!("{}/login/tll_nothing", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);

    // The token form: a wrong token is refused, the right one opens a session.
    let post = |token: String| {
        client()
            .post(format!("{}/login", s.base))
            .form(&[("token", token)])
            .send()
    };
    assert_eq!(post("tlu_wrong".into()).await.unwrap().status(), 401);
    let ok = post(a.token.clone()).await.unwrap();
    assert_eq!(ok.status(), 303);
    assert!(ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("tl_session=tls_"));
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium over the DevTools protocol.

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A browser process and a CDP session on one page.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn launch(exe: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .env("TZ", "UTC")
            .env("LANG", "en_US.UTF-8")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ws_url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(at) = line.find("ws://") {
                        break line[at..].trim().to_string();
                    }
                }
                _ => panic!("chromium exited before printing its DevTools address"),
            }
        };
        // Keep draining stderr so the browser never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let hostport = ws_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&hostport).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).unwrap();
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s);
        }
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .unwrap();
        loop {
            let v = self.read();
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("DevTools connection") {
                tungstenite::Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                _ => continue,
            }
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(method, params, Some(s))
    }

    fn wait_event(&mut self, name: &str) {
        if let Some(i) = self.events.iter().position(|e| e["method"] == name) {
            self.events.drain(..=i);
            return;
        }
        loop {
            let v = self.read();
            if v["method"] == name {
                return;
            }
        }
    }

    /// Navigates and waits for the load event and the dashboard's first render.
    fn goto(&mut self, url: &str) {
        self.events.clear();
        self.call("Page.navigate", json!({"url": url}));
        self.wait_event("Page.loadEventFired");
        let state = self.eval("window.tokenledger ? window.tokenledger.idle().then(() => document.body.dataset.state) : 'no-app'");
        assert_eq!(state, "ready", "the dashboard did not render at {url}");
    }

    /// Evaluates an expression (awaiting a promise) and returns its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("script failed: {ex}\n{expr}");
        }
        r["result"]["value"].clone()
    }

    fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine;
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

const METRICS: &str =
    "JSON.stringify({tokens: document.querySelector('[data-metric=total_tokens]').dataset.value, \
     cost: document.querySelector('[data-metric=total_cost_usd]').dataset.value, \
     text: document.querySelector('[data-metric=total_tokens]').textContent, \
     search: location.search, state: window.tokenledger.state()})";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some(exe) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is missing; run scripts/install-chromium.sh");
        }
        eprintln!("skipping: chromium is not installed (scripts/install-chromium.sh)");
        return;
    };
    let s = start().await;
    let a = account(s.store.as_ref(), "alice").await;
    let other = account(s.store.as_ref(), "mallory").await;
    let truth = seed(s.store.as_ref(), &a, 40, 1).await;
    seed(s.store.as_ref(), &other, 40, 9).await;
    let code = dashboard::create_login_code(s.store.as_ref(), a.id)
        .await
        .unwrap();
    let base = s.base.clone();
    let login = dashboard::login_url(&base, &code);

    let (mut b, overview, filtered) = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&exe);
        b.goto(&login);
        let overview: Value =
            serde_json::from_str(b.eval(METRICS).as_str().unwrap()).unwrap();
        let shot = b.screenshot("overview");
        eprintln!("screenshot: {}", shot.display());
        // Switch a filter: the URL keeps it, the totals follow.
        let filtered: Value = serde_json::from_str(
            b.eval(&format!(
                "(async () => {{ const s = document.querySelector('#source-filter'); s.value = 'claude'; \
                 s.dispatchEvent(new Event('change')); await window.tokenledger.idle(); return {METRICS}; }})()"
            ))
            .as_str()
            .unwrap(),
        )
        .unwrap();
        (b, overview, filtered)
    })
    .await
    .unwrap();

    // The default range is the last 30 days, in the browser's zone (UTC here).
    let from = truth[29].0.clone();
    let to = truth[0].0.clone();
    assert_eq!(overview["state"]["from"], from.as_str());
    assert_eq!(overview["state"]["to"], to.as_str());
    let want_all: u64 = truth[..30].iter().map(|(_, x, y)| x + y).sum();
    let want_claude: u64 = truth[..30].iter().map(|(_, _, y)| y).sum();
    let bearer = format!("Bearer {}", a.token);
    let (_, api_all) = get_json(
        &s,
        &format!("/api/v1/usage/summary?from={from}&to={to}&tz=UTC"),
        ("authorization", &bearer),
    )
    .await;
    assert_eq!(overview["tokens"], want_all.to_string());
    assert_eq!(overview["tokens"], api_all["totals"]["total_tokens"]);
    assert_eq!(overview["cost"], api_all["totals"]["total_cost_usd"]);
    assert!(
        overview["text"].as_str().unwrap().ends_with('M'),
        "{overview}"
    );
    let (_, api_claude) = get_json(
        &s,
        &format!("/api/v1/usage/summary?from={from}&to={to}&tz=UTC&source=claude"),
        ("authorization", &bearer),
    )
    .await;
    assert_eq!(filtered["search"], "?source=claude");
    assert_eq!(filtered["tokens"], want_claude.to_string());
    assert_eq!(filtered["cost"], api_claude["totals"]["total_cost_usd"]);

    // Open a day from the chart, check its half hours, export them, then the devices page.
    let day = truth[3].0.clone();
    let day_claude = truth[3].2;
    let base = s.base.clone();
    let (day_view, csv, devices) = tokio::task::spawn_blocking(move || {
        let day_view = b.eval(&format!(
            "(async () => {{ document.querySelector('#daily-chart .bar[data-key=\"{day}\"]')\
             .dispatchEvent(new MouseEvent('click', {{bubbles: true}})); await window.tokenledger.idle(); \
             return JSON.stringify({{search: location.search, total: document.querySelector('#day-total').dataset.value, \
             rows: document.querySelectorAll('#day-table tbody tr[data-hour]').length, \
             bars: document.querySelectorAll('#day-chart .bar').length}}); }})()"
        ));
        b.screenshot("day");
        let csv = b.eval(
            "(async () => { document.querySelector('#export-csv').click(); return window.tokenledger.lastCsv; })()",
        );
        b.goto(&format!("{base}/?view=devices"));
        let devices = b.eval(
            "JSON.stringify(Array.from(document.querySelectorAll('#devices-table tbody tr[data-device]')).map(r => r.dataset.device))",
        );
        // Dark mode and a phone-sized screen, for the eye.
        b.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        );
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
        );
        b.goto(&format!("{base}/"));
        b.screenshot("phone-dark");
        (day_view, csv, devices)
    })
    .await
    .unwrap();
    let day_view: Value = serde_json::from_str(day_view.as_str().unwrap()).unwrap();
    assert_eq!(
        day_view["search"],
        format!("?view=day&source=claude&day={}", truth[3].0)
    );
    assert_eq!(day_view["total"], day_claude.to_string());
    assert_eq!(day_view["rows"], 1, "one claude half hour that day");
    assert_eq!(day_view["bars"], 48);
    let csv = csv.as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 49, "header and 48 half hours");
    assert!(lines[0].starts_with("hour_start,local_start,input_tokens"));
    let busy: Vec<&&str> = lines.iter().filter(|l| l.contains("T14:30:00")).collect();
    assert_eq!(busy.len(), 1);
    assert!(busy[0].contains(&format!(",{day_claude},")), "{}", busy[0]);
    let devices: Vec<String> = serde_json::from_str(devices.as_str().unwrap()).unwrap();
    assert_eq!(devices, vec![a.device_id.to_string()]);
}
