//! End to end: the real `tokenledger` binary syncing to the real server, started in this
//! process on port 0 over a SQLite store. Corpora are small Codex rollouts written here, with
//! their ground truth computed from what was written.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use tokenledger_core::TokenCounts;
use tokenledger_store::{generate_token, hash_token, Store};

const BIN: &str = env!("CARGO_BIN_EXE_tokenledger");
/// 2025-10-01T00:00:00Z
const DAY0: i64 = 1_759_276_800;

// ---------------------------------------------------------------- server

struct Server {
    rt: tokio::runtime::Runtime,
    store: Arc<tokenledger_store_sqlite::SqliteStore>,
    db: PathBuf,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(db: &Path) -> Server {
        Server::start_on(db, "127.0.0.1:0".parse().unwrap())
    }

    fn start_on(db: &Path, addr: SocketAddr) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Arc::new(
            rt.block_on(tokenledger_store_sqlite::SqliteStore::open(db))
                .unwrap(),
        );
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = tokenledger_server::AppState::new(
            store.clone(),
            tokenledger_server::ServerConfig::default(),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(tokenledger_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Server {
            rt,
            store,
            db: db.to_path_buf(),
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn shutdown(mut self) -> (PathBuf, SocketAddr) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(t);
        }
        (self.db.clone(), self.addr)
    }

    fn create_user(&self, name: &str) -> String {
        let token = generate_token(tokenledger_server::auth::USER_TOKEN_PREFIX);
        self.rt
            .block_on(self.store.create_user(name, &hash_token(&token)))
            .unwrap();
        token
    }

    fn get(&self, token: &str, path: &str) -> Value {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.url()))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    }

    /// The user's totals over October 2025 as six numbers.
    fn totals(&self, token: &str) -> TokenCounts {
        let v = self.get(token, "/api/v1/usage/summary?from=2025-09-25&to=2025-10-31");
        counts(&v["totals"])
    }
}

fn counts(v: &Value) -> TokenCounts {
    let f = |k: &str| -> u64 {
        match &v[k] {
            Value::String(s) => s.parse().unwrap(),
            Value::Number(n) => n.as_u64().unwrap(),
            other => panic!("{k}: {other}"),
        }
    };
    TokenCounts {
        input_tokens: f("input_tokens"),
        cached_input_tokens: f("cached_input_tokens"),
        cache_creation_input_tokens: f("cache_creation_input_tokens"),
        output_tokens: f("output_tokens"),
        reasoning_output_tokens: f("reasoning_output_tokens"),
        total_tokens: f("total_tokens"),
    }
}

// ---------------------------------------------------------------- corpus

/// A tiny deterministic generator (no dependency needed for a test corpus).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn iso(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S.000Z")
        .to_string()
}

fn usage_json(t: &TokenCounts) -> String {
    format!(
        r#"{{"input_tokens":{},"cached_input_tokens":{},"cache_write_input_tokens":{},"output_tokens":{},"reasoning_output_tokens":{},"total_tokens":{}}}"#,
        t.input_tokens,
        t.cached_input_tokens,
        t.cache_creation_input_tokens,
        t.output_tokens,
        t.reasoning_output_tokens,
        t.total_tokens
    )
}

/// One Codex rollout: `turns` responses from `start`, one every 7 minutes, under `model`
/// (`codex-auto-review` is a label, which the collector leaves `unknown`).
struct Rollout {
    rel: PathBuf,
    lines: Vec<String>,
    total: TokenCounts,
}

fn rollout(id: u64, start: i64, model: &str, turns: usize, rng: &mut Lcg) -> Rollout {
    let uuid = format!("0199a000-0000-7000-8000-{id:012x}");
    let stamp = jiff::Timestamp::from_second(start)
        .unwrap()
        .strftime("%Y-%m-%dT%H-%M-%S")
        .to_string();
    let rel = PathBuf::from(format!("sessions/2025/10/01/rollout-{stamp}-{uuid}.jsonl"));
    let mut lines = vec![
        format!(
            r#"{{"timestamp":"{}","type":"session_meta","payload":{{"id":"{uuid}","timestamp":"{}","cwd":"/home/u/p{id}","originator":"codex_cli_rs","cli_version":"0.50.0"}}}}"#,
            iso(start),
            iso(start)
        ),
        format!(
            r#"{{"timestamp":"{}","type":"turn_context","payload":{{"cwd":"/home/u/p{id}","model":"{model}"}}}}"#,
            iso(start)
        ),
    ];
    let mut total = TokenCounts::default();
    for i in 0..turns {
        let cached = rng.below(500);
        let last = TokenCounts::new(
            cached + 1 + rng.below(3000),
            cached,
            0,
            1 + rng.below(400),
            rng.below(50),
        );
        let last = TokenCounts {
            reasoning_output_tokens: last.reasoning_output_tokens.min(last.output_tokens),
            ..last
        };
        total += last;
        lines.push(format!(
            r#"{{"timestamp":"{}","type":"event_msg","payload":{{"type":"token_count","info":{{"total_token_usage":{},"last_token_usage":{},"model_context_window":272000}}}}}}"#,
            iso(start + 10 + i as i64 * 420),
            usage_json(&total),
            usage_json(&last)
        ));
    }
    Rollout { rel, lines, total }
}

fn write_rollout(codex_home: &Path, r: &Rollout, upto: usize) {
    let path = codex_home.join(&r.rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut text = r.lines[..upto].join("\n");
    text.push('\n');
    // Written whole then renamed: the scan sees the file before or after, never half a line.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

// ---------------------------------------------------------------- client

struct Machine {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    data: PathBuf,
    codex: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let data = tmp.path().join("data");
        let codex = home.join(".codex");
        std::fs::create_dir_all(&codex).unwrap();
        Machine {
            _tmp: tmp,
            home,
            data,
            codex,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("TOKENLEDGER_HOME", &self.data)
            .env("CODEX_HOME", &self.codex)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env("TOKENLEDGER_BACKOFF_MS", "0")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn login(&self, server: &Server, user_token: &str) {
        let out = self.run(&["login", "--server", &server.url(), "--token", user_token]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn sync_json(&self) -> (i32, Value, String) {
        let out = self.run(&["sync", "--json", "--max-attempts", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let v: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        (
            out.status.code().unwrap_or(-1),
            v,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

// ---------------------------------------------------------------- tests

#[test]
fn sigkill_at_random_points_loses_nothing_and_doubles_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("ada");
    let m = Machine::new();
    m.login(&server, &user);

    let mut rng = Lcg(7);
    // 16 rollouts over five half hours. Rollout 0 is `unknown` in half hour 0 and appears
    // first; rollouts 5 and 10 bring known models to that half hour after 20 runs, so the
    // `unknown` bucket the server already holds must be zeroed.
    let rollouts: Vec<Rollout> = (0..16u64)
        .map(|i| {
            let model = match i {
                0 | 3 => "codex-auto-review",
                i if i % 2 == 0 => "gpt-5",
                _ => "gpt-5-codex",
            };
            let start = DAY0 + (i as i64 % 5) * 1800 + 60 + (i as i64 % 3) * 300;
            rollout(i + 1, start, model, 6 + (i as usize % 5), &mut rng)
        })
        .collect();
    let truth: TokenCounts = rollouts.iter().map(|r| r.total).sum();
    // Reveal the corpus in steps: a file appears with part of its lines, then grows.
    let mut shown = vec![0usize; rollouts.len()];
    let points = [
        "scan:1",
        "scan:2",
        "emit:1",
        "before_upload:1",
        "before_upload:2",
        "after_upload:1",
        "after_upload:2",
        "after_upload:3",
        "after_ack:1",
    ];
    let mut paused = 0;
    let mut kills = 0;
    let mut iter = 0;
    // Bounded: at least 50 kills at a failpoint, at most 200 runs.
    while kills < 55 && iter < 200 {
        iter += 1;
        // Grow one file that is not complete yet.
        let open: Vec<usize> = (0..rollouts.len())
            .filter(|&i| shown[i] < rollouts[i].lines.len())
            .filter(|&i| {
                if iter == 1 {
                    i == 0
                } else {
                    i % 5 != 0 || i == 0 || iter > 20
                }
            })
            .collect();
        if !open.is_empty() {
            let i = open[rng.below(open.len() as u64) as usize];
            let r = &rollouts[i];
            shown[i] = (shown[i] + 1 + rng.below(2) as usize)
                .max(3)
                .min(r.lines.len());
            write_rollout(&m.codex, r, shown[i]);
        }
        let point = points[rng.below(points.len() as u64) as usize];
        let mut child = m
            .cmd(&["sync", "--quiet", "--batch-size", "2"])
            .env("TOKENLEDGER_FAILPOINT", format!("{point}:pause"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let mut hit = false;
        // Until the failpoint reports it paused, or the sync ends without reaching it.
        while reader.read_line(&mut line).unwrap() > 0 {
            if line.contains("failpoint") && line.contains("paused") {
                hit = true;
                break;
            }
            line.clear();
        }
        if hit {
            paused += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if hit {
            assert!(
                status.code().is_none(),
                "iteration {iter}: killed by a signal"
            );
            kills += 1;
        }
    }
    assert!(
        kills >= 50,
        "only {kills} kills reached a failpoint ({paused} paused)"
    );

    // Show everything, then a final sync without failpoints.
    for (i, r) in rollouts.iter().enumerate() {
        if shown[i] < r.lines.len() {
            write_rollout(&m.codex, r, r.lines.len());
        }
    }
    let (code, v, err) = m.sync_json();
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["remaining"], 0);
    assert_eq!(server.totals(&user), truth);
    // No `unknown` tokens remain: half hour 0 has a known model.
    let models = server.get(&user, "/api/v1/usage/models?from=2025-09-25&to=2025-10-31");
    let unknown: u64 = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == "unknown")
        .map(|r| counts(r).total_tokens)
        .sum();
    assert_eq!(unknown, 0, "{models}");
    // Nothing left: a re-sync sends nothing and the totals stay.
    let (code, v, _) = m.sync_json();
    assert_eq!((code, v["sent"].as_u64()), (0, Some(0)));
    assert_eq!(server.totals(&user), truth);
    assert_eq!(m.status()["pending_buckets"], 0);
}

#[test]
fn outage_and_restart_back_off_keep_the_outbox_and_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("bo");
    let m = Machine::new();
    m.login(&server, &user);
    let mut rng = Lcg(11);
    let a = rollout(1, DAY0 + 100, "gpt-5", 4, &mut rng);
    let b = rollout(2, DAY0 + 4000, "gpt-5-codex", 3, &mut rng);
    write_rollout(&m.codex, &a, a.lines.len());
    assert_eq!(m.sync_json().0, 0);

    // The server goes away; new usage arrives.
    let (db, addr) = server.shutdown();
    write_rollout(&m.codex, &b, b.lines.len());
    let out = m.run(&["sync", "--max-attempts", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("retrying in").count(), 2, "{err}");
    assert!(err.contains("cannot reach the server"), "{err}");
    assert!(err.contains("still queued"), "{err}");
    let st = m.status();
    assert_eq!(st["pending_buckets"], 1, "{st}");
    assert!(st["last_error"].as_str().unwrap().contains("cannot reach"));

    // Back on the same address: the next sync converges.
    let server = Server::start_on(&db, addr);
    let (code, v, err) = m.sync_json();
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["sent"], 1);
    assert_eq!(server.totals(&user), a.total + b.total);
    let st = m.status();
    assert_eq!(st["pending_buckets"], 0);
    assert!(st["last_error"].is_null());
    assert!(st["last_success"].is_string());
}

#[test]
fn two_devices_are_summed_and_a_resend_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("cy");
    let (m1, m2) = (Machine::new(), Machine::new());
    m1.login(&server, &user);
    m2.login(&server, &user);
    let mut rng = Lcg(5);
    // Same half hours, same model, on both machines.
    let r1 = rollout(1, DAY0 + 60, "gpt-5", 5, &mut rng);
    let r2 = rollout(2, DAY0 + 120, "gpt-5", 5, &mut rng);
    write_rollout(&m1.codex, &r1, r1.lines.len());
    write_rollout(&m2.codex, &r2, r2.lines.len());
    let (c1, v1, e1) = m1.sync_json();
    let (c2, v2, e2) = m2.sync_json();
    assert_eq!((c1, c2), (0, 0), "{e1}{e2}");
    assert_eq!(v1["inserted"], v1["sent"]);
    assert_eq!(v2["inserted"], v2["sent"]);
    assert_eq!(server.totals(&user), r1.total + r2.total);

    // Device 1 resends everything (a crash after the upload, before the acknowledgement, then
    // a new device state): the server reports every bucket unchanged and the totals stay.
    let out = m1
        .cmd(&["sync", "--json"])
        .env("TOKENLEDGER_FAILPOINT", "after_upload:exit")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing new: no upload, no failpoint"
    );
    let ledger_db = m1.data.join("ledger.db");
    let conn = rusqlite::Connection::open(&ledger_db).unwrap();
    conn.execute("DELETE FROM sync_acked", []).unwrap();
    drop(conn);
    let out = m1
        .cmd(&["sync", "--json"])
        .env("TOKENLEDGER_FAILPOINT", "after_upload:exit")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(86), "{}", stderr(&out));
    let (c, v, e) = m1.sync_json();
    assert_eq!(c, 0, "{e}");
    assert_eq!(v["sent"], v1["sent"]);
    assert_eq!(
        (v["inserted"].as_u64(), v["updated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(v["unchanged"], v1["sent"]);
    assert_eq!(server.totals(&user), r1.total + r2.total);
}

#[test]
fn a_payload_without_model_is_stored_as_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("old");
    let m = Machine::new();
    m.login(&server, &user);
    let cfg = std::fs::read_to_string(m.data.join("config.toml")).unwrap();
    let doc: toml_edit::DocumentMut = cfg.parse().unwrap();
    let device_token = doc["device_token"].as_str().unwrap().to_string();
    let body = r#"{"buckets":[{"source":"codex","hour_start":"2025-10-01T00:30:00.000Z",
        "input_tokens":"100","cached_input_tokens":"40","output_tokens":"7",
        "reasoning_output_tokens":"2","total_tokens":"107"}]}"#;
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/ingest", server.url()))
        .bearer_auth(&device_token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let models = server.get(&user, "/api/v1/usage/models?from=2025-10-01&to=2025-10-01");
    let rows = models["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{models}");
    assert_eq!(rows[0]["model"], "unknown");
    assert_eq!(counts(&rows[0]), TokenCounts::new(100, 40, 0, 7, 2));
}

#[test]
fn revoked_token_unreachable_and_garbage_servers_fail_clearly_and_keep_the_outbox() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("di");
    let m = Machine::new();
    m.login(&server, &user);
    let mut rng = Lcg(3);
    let r = rollout(1, DAY0, "gpt-5", 3, &mut rng);
    write_rollout(&m.codex, &r, r.lines.len());

    // Unreachable: a port nothing listens on.
    let cfg_path = m.data.join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace(&server.url(), &format!("http://{dead}")),
    )
    .unwrap();
    let out = m.run(&["sync", "--max-attempts", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the server"),
        "{}",
        stderr(&out)
    );
    assert_eq!(m.status()["pending_buckets"], 1);

    // Garbage: something that answers HTTP but is not tokenledger.
    let junk = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let junk_addr = junk.local_addr().unwrap();
    let junk_thread = std::thread::spawn(move || {
        if let Ok((mut s, _)) = junk.accept() {
            let mut buf = [0u8; 65536];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let body = "<html>proxy error</html>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    std::fs::write(
        &cfg_path,
        cfg.replace(&server.url(), &format!("http://{junk_addr}")),
    )
    .unwrap();
    let out = m.run(&["sync", "--max-attempts", "1"]);
    junk_thread.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a tokenledger answer"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("proxy error"), "{}", stderr(&out));
    assert_eq!(m.status()["pending_buckets"], 1);

    // Revoked: the user revokes the device from elsewhere.
    std::fs::write(&cfg_path, &cfg).unwrap();
    let device_id = m.status()["device_id"].as_str().unwrap().to_string();
    let resp = reqwest::blocking::Client::new()
        .delete(format!("{}/api/v1/devices/{device_id}", server.url()))
        .bearer_auth(&user)
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    let out = m.run(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("run `tokenledger login` again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(m.status()["pending_buckets"], 1);
    assert_eq!(server.totals(&user), TokenCounts::default());

    // Logging in again (a new device) sends it.
    m.login(&server, &user);
    assert_eq!(m.sync_json().0, 0);
    assert_eq!(server.totals(&user), r.total);
}

#[test]
fn login_stores_owner_only_credentials_and_logout_forgets_them() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("eve");
    let m = Machine::new();

    // A wrong user token.
    let out = m.run(&["login", "--server", &server.url(), "--token", "tlu_nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refused the user token"),
        "{}",
        stderr(&out)
    );

    // The token on stdin.
    let mut child = m
        .cmd(&["login", "--server", &server.url(), "--name", "laptop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{user}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = m.data.join("config.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let st = m.status();
    assert_eq!(st["device_name"], "laptop");
    assert_eq!(st["server"], server.url());

    let out = m.run(&["logout", "--token", &user]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(m.status()["server"].is_null());
    let out = m.run(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not logged in"), "{}", stderr(&out));
    // The device is revoked on the server.
    let devices = server.get(&user, "/api/v1/devices");
    assert!(
        devices.to_string().contains("\"revoked\":true"),
        "{devices}"
    );
}

#[test]
fn a_second_sync_waits_for_none_and_dry_run_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server.db"));
    let user = server.create_user("fay");
    let m = Machine::new();
    m.login(&server, &user);
    let mut rng = Lcg(9);
    let r = rollout(1, DAY0 + 30, "gpt-5", 2, &mut rng);
    write_rollout(&m.codex, &r, r.lines.len());

    let out = m.run(&["sync", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(v["buckets"][0]["model"], "gpt-5");
    assert_eq!(
        v["buckets"][0]["total_tokens"],
        r.total.total_tokens.to_string()
    );
    assert_eq!(m.status()["pending_buckets"], 0);
    assert_eq!(server.totals(&user), TokenCounts::default());

    // One sync holds the lock (paused before its upload); another one does nothing.
    let mut first = m
        .cmd(&["sync"])
        .env("TOKENLEDGER_FAILPOINT", "before_upload:pause")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("paused"), "{line}");
    let out = m.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("another sync is running"));
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(m.sync_json().0, 0);
    assert_eq!(server.totals(&user), r.total);
}
