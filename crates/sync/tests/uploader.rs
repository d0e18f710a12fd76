//! The uploader against a scripted server: 429 with Retry-After, outages, garbage answers,
//! revoked tokens, and batches of at most 500. Sleeps are recorded, never slept.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenledger_core::wire::IngestRequest;
use tokenledger_core::{Bucket, BucketKey, Source, TokenCounts};
use tokenledger_ledger::Ledger;
use tokenledger_sync::outbox::Outbox;
use tokenledger_sync::uploader::{drain, Backoff, DrainError, DrainOptions};
use tokenledger_sync::{ApiError, Client};

/// A scripted answer; when the script is empty the server accepts.
#[derive(Clone)]
enum Answer {
    Status(u16, &'static str, Vec<(&'static str, &'static str)>),
}

#[derive(Default)]
struct Fake {
    script: VecDeque<Answer>,
    /// Sizes of the accepted batches.
    accepted: Vec<usize>,
    auth: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

async fn ingest(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut f = s.lock().unwrap();
    f.auth.push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    if let Some(Answer::Status(code, body, hdrs)) = f.script.pop_front() {
        let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
        for (k, v) in hdrs {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        return r;
    }
    let req: IngestRequest = serde_json::from_str(&body).unwrap();
    f.accepted.push(req.buckets.len());
    let n = req.buckets.len();
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        format!(r#"{{"inserted":{n},"updated":0,"unchanged":0}}"#),
    )
        .into_response()
}

/// Starts the fake on a port of its own; returns its URL and state.
fn start(script: Vec<Answer>) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Fake {
        script: script.into(),
        ..Default::default()
    }));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v1/ingest", post(ingest))
        .with_state(shared.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (format!("http://{addr}"), shared)
}

fn queue(n: i64) -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::open_in(dir.path()).unwrap();
    let buckets = (0..n)
        .map(|i| Bucket {
            key: BucketKey {
                source: Source::Codex,
                model: "gpt-5".into(),
                hour_start: 1_759_276_800 + i * 1800,
            },
            tokens: TokenCounts::new(10, 0, 0, 1, 0),
        })
        .collect();
    Outbox::open(&mut l)
        .unwrap()
        .emit_from(buckets, "dev")
        .unwrap();
    (dir, l)
}

fn backoff(max_attempts: u32) -> Backoff {
    Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
        max_attempts,
        max_retry_after: Duration::from_secs(60),
    }
}

#[test]
fn batches_of_at_most_500_and_retry_after_is_honoured() {
    let (url, fake) = start(vec![
        Answer::Status(429, "slow down", vec![("retry-after", "7")]),
        Answer::Status(503, "", vec![]),
    ]);
    let (_d, mut l) = queue(1203);
    let slept = RefCell::new(Vec::new());
    let sleep = |d: Duration| slept.borrow_mut().push(d);
    let opts = DrainOptions {
        batch_size: 10_000,
        backoff: backoff(5),
        sleep: &sleep,
        on_retry: &|_, _| {},
    };
    let client = Client::new(&url).unwrap();
    let mut ob = Outbox::open(&mut l).unwrap();
    let r = drain(&mut ob, &client, "tok-1", &opts).unwrap();
    assert_eq!((r.sent, r.batches, r.retries, r.remaining), (1203, 3, 2, 0));
    assert_eq!(r.inserted, 1203);
    let s = slept.borrow();
    assert_eq!(s[0], Duration::from_secs(7), "Retry-After is used as is");
    // The 503 is the second failure of the batch: base * 2 with jitter in [d/2, d].
    assert!(
        (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&s[1]),
        "{s:?}"
    );
    let f = fake.lock().unwrap();
    assert_eq!(f.accepted, [500, 500, 203]);
    assert!(f.auth.iter().all(|a| a == "Bearer tok-1"));
    assert!(ob.is_empty().unwrap());
}

#[test]
fn outage_keeps_the_outbox_then_converges() {
    // Nothing listens on this port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_d, mut l) = queue(3);
    let slept = RefCell::new(Vec::new());
    let sleep = |d: Duration| slept.borrow_mut().push(d);
    let opts = DrainOptions {
        batch_size: 500,
        backoff: backoff(4),
        sleep: &sleep,
        on_retry: &|_, _| {},
    };
    let mut ob = Outbox::open(&mut l).unwrap();
    let client = Client::new(&format!("http://{dead}")).unwrap();
    let (r, e) = *drain(&mut ob, &client, "t", &opts).unwrap_err();
    assert!(
        matches!(e, DrainError::Api(ApiError::Unreachable { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("cannot reach the server"), "{e}");
    assert_eq!((r.sent, r.retries, r.remaining), (0, 3, 3));
    // Exponential: each wait within [d/2, d] of 100, 200, 400 ms.
    let s = slept.borrow();
    assert_eq!(s.len(), 3);
    for (i, d) in s.iter().enumerate() {
        let full = 100u64 << i;
        assert!(
            (full / 2..=full).contains(&(d.as_millis() as u64)),
            "{i}: {d:?}"
        );
    }
    assert_eq!(ob.len().unwrap(), 3);

    let (url, fake) = start(vec![]);
    let r = drain(&mut ob, &Client::new(&url).unwrap(), "t", &opts).unwrap();
    assert_eq!((r.sent, r.remaining), (3, 0));
    assert_eq!(fake.lock().unwrap().accepted, [3]);
}

#[test]
fn revoked_token_stops_at_once_with_a_clear_message() {
    let (url, fake) = start(vec![Answer::Status(
        401,
        r#"{"error":{"code":"unauthorized","message":"unknown or revoked device token"}}"#,
        vec![("content-type", "application/json")],
    )]);
    let (_d, mut l) = queue(2);
    let opts = DrainOptions {
        batch_size: 500,
        backoff: backoff(5),
        sleep: &|_| panic!("no retry on 401"),
        on_retry: &|_, _| {},
    };
    let mut ob = Outbox::open(&mut l).unwrap();
    let (r, e) = *drain(&mut ob, &Client::new(&url).unwrap(), "t", &opts).unwrap_err();
    assert_eq!(r.remaining, 2);
    let msg = e.to_string();
    assert!(msg.contains("unknown or revoked device token"), "{msg}");
    assert!(msg.contains("run `tokenledger login` again"), "{msg}");
    assert_eq!(fake.lock().unwrap().auth.len(), 1);
}

#[test]
fn garbage_answers_are_errors_and_nothing_is_acknowledged() {
    // A 200 that is not an ingest answer (a captive portal, a wrong URL), three times.
    let html = "<html><body>Welcome to the hotel wifi</body></html>";
    let (url, _fake) = start(vec![
        Answer::Status(200, html, vec![("content-type", "text/html")]),
        Answer::Status(200, html, vec![]),
        Answer::Status(200, "{\"inserted\":", vec![]),
    ]);
    let (_d, mut l) = queue(4);
    let opts = DrainOptions {
        batch_size: 500,
        backoff: backoff(3),
        sleep: &|_| {},
        on_retry: &|_, _| {},
    };
    let mut ob = Outbox::open(&mut l).unwrap();
    let (r, e) = *drain(&mut ob, &Client::new(&url).unwrap(), "t", &opts).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("not a tokenledger answer") && msg.contains("{\\\"inserted\\\":"),
        "{msg}"
    );
    assert_eq!((r.sent, r.retries, r.remaining), (0, 2, 4));
    assert!(ob.acked().unwrap().is_empty());

    // A 400 with the server's error shape is reported with its code and not retried.
    let (url, _f) = start(vec![Answer::Status(
        400,
        r#"{"error":{"code":"invalid_bucket","message":"bucket 0: hour_start is not on a half hour"}}"#,
        vec![],
    )]);
    let (r, e) = *drain(&mut ob, &Client::new(&url).unwrap(), "t", &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the server answered 400 invalid_bucket: bucket 0: hour_start is not on a half hour"
    );
    assert_eq!((r.retries, r.remaining), (0, 4));
}

#[test]
fn a_lower_server_limit_halves_the_batch() {
    let (url, fake) = start(vec![Answer::Status(
        413,
        r#"{"error":{"code":"too_many_buckets","message":"at most 300"}}"#,
        vec![],
    )]);
    let (_d, mut l) = queue(600);
    let opts = DrainOptions {
        batch_size: 500,
        backoff: backoff(3),
        sleep: &|_| {},
        on_retry: &|_, _| {},
    };
    let mut ob = Outbox::open(&mut l).unwrap();
    let r = drain(&mut ob, &Client::new(&url).unwrap(), "t", &opts).unwrap();
    assert_eq!(r.sent, 600);
    assert_eq!(fake.lock().unwrap().accepted, [250, 250, 100]);
}

#[test]
fn bad_server_urls_are_refused() {
    assert!(Client::new("ftp://example.com").is_err());
    assert!(Client::new("not a url").is_err());
    assert_eq!(
        Client::new("http://example.com/").unwrap().base(),
        "http://example.com"
    );
}
