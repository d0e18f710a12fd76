//! Server benchmark (not a test): run with
//! `cargo bench -p tokenledger-server --bench server`.
//!
//! For each backend (SQLite file; PostgreSQL from `TOKENLEDGER_BENCH_DATABASE_URL` or a
//! throwaway cluster started like the test suite's):
//! 1. ingest throughput in buckets/s through the HTTP API, from concurrent loopback clients,
//!    loading two years of a heavy user (5 sources x 6 models x every half hour);
//! 2. `summary` over those two years from the rollup versus forced to scan buckets;
//! 3. `summary` throughput and p50/p99 latency under a concurrent loopback load generator.
//!
//! Knobs (environment): BENCH_DAYS (730), BENCH_CLIENTS (8), BENCH_LOAD_SECS (10),
//! BENCH_LOAD_CONCURRENCY (32), BENCH_BACKENDS ("sqlite,postgres").

#[path = "../../crates/server/tests/common/mod.rs"]
#[allow(dead_code, clippy::all)]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenledger_server::usage::{self, Strategy, UsageQuery};
use tokenledger_server::ServerConfig;
use tokenledger_store::{generate_token, hash_token, Store, UsageFilter};

const SOURCES: [&str; 5] = ["codex", "claude", "gemini", "opencode", "every-code"];
const MODELS: [&str; 6] = [
    "gpt-5",
    "gpt-5-codex",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "gemini-2.5-pro",
    "MoonshotAI/Kimi-K2-Thinking",
];
const START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Request bodies of 500 buckets each, covering `days` days for one heavy user.
fn bodies(days: i64) -> (Vec<String>, u64) {
    let mut all = Vec::new();
    let mut n = 0u64;
    let mut batch = String::new();
    let mut in_batch = 0;
    for slot in 0..days * 48 {
        let hs = tokenledger_core::format_hour_start(START + slot * 1800);
        for (si, s) in SOURCES.iter().enumerate() {
            for (mi, m) in MODELS.iter().enumerate() {
                let input = 1000 + (slot as u64 % 97) * 10 + si as u64 * 3 + mi as u64;
                let output = 100 + (slot as u64 % 13);
                if in_batch > 0 {
                    batch.push(',');
                }
                batch.push_str(&format!(
                    "{{\"source\":\"{s}\",\"model\":\"{m}\",\"hour_start\":\"{hs}\",\
                     \"input_tokens\":\"{input}\",\"cached_input_tokens\":\"{}\",\
                     \"cache_creation_input_tokens\":\"0\",\"output_tokens\":\"{output}\",\
                     \"reasoning_output_tokens\":\"{}\",\"total_tokens\":\"{}\"}}",
                    input / 2,
                    output / 4,
                    input + output
                ));
                in_batch += 1;
                n += 1;
                if in_batch == 500 {
                    all.push(format!("{{\"buckets\":[{batch}]}}"));
                    batch.clear();
                    in_batch = 0;
                }
            }
        }
    }
    if in_batch > 0 {
        all.push(format!("{{\"buckets\":[{batch}]}}"));
    }
    (all, n)
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn run_backend(
    name: &str,
    store: Arc<dyn Store>,
    bodies: &Arc<Vec<String>>,
    n_buckets: u64,
    days: i64,
    report: &mut Report,
) {
    let config = ServerConfig {
        ingest_concurrency: 64,
        ..ServerConfig::default()
    };
    let (base, _shutdown) = common::start(store.clone(), config).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let user_token = generate_token("tlu_");
    let user = store
        .create_user("heavy", &hash_token(&user_token))
        .await
        .unwrap();

    // 1. Ingest.
    let clients = env_num("BENCH_CLIENTS", 8) as usize;
    let mut devices = Vec::new();
    for i in 0..clients {
        let t = generate_token("tld_");
        store
            .create_device(user.id, &format!("m{i}"), "linux", &hash_token(&t))
            .await
            .unwrap();
        devices.push(t);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for dev in devices {
        let (client, base, bodies, next) =
            (client.clone(), base.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let resp = client
                    .post(format!("{base}/api/v1/ingest"))
                    .bearer_auth(&dev)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    report.line(format!(
        "| {name} | ingest via HTTP, {clients} concurrent clients, 500 buckets/request | {n_buckets} buckets in {secs:.1} s | **{:.0} buckets/s** |",
        n_buckets as f64 / secs
    ));

    // 2. Summary over the whole range: rollup versus bucket scan.
    let from = usage::utc_date(START);
    let to = usage::utc_date(START + (days - 1) * 86_400);
    let q = UsageQuery {
        user_id: user.id,
        from,
        to,
        tz: jiff::tz::TimeZone::UTC,
        tz_name: "UTC".into(),
        start_ts: START,
        end_ts: START + days * 86_400,
        filter: UsageFilter::default(),
    };
    let time = |strategy: Strategy, runs: usize| {
        let (store, q) = (store.clone(), q.clone());
        async move {
            let mut v = Vec::new();
            let mut total = 0;
            for _ in 0..runs {
                let t = Instant::now();
                let rows = usage::series_totals(store.as_ref(), &q, strategy)
                    .await
                    .unwrap();
                v.push(t.elapsed());
                total = rows.iter().map(|r| r.tokens.total_tokens).sum::<u64>();
            }
            v.sort();
            (v[v.len() / 2], total)
        }
    };
    let (rollup, t1) = time(Strategy::Auto, 21).await;
    let (scan, t2) = time(Strategy::BucketsOnly, 5).await;
    assert_eq!(t1, t2, "rollup and bucket scan disagree");
    report.line(format!(
        "| {name} | summary over {days} days ({n_buckets} buckets): rollup vs forced bucket scan (median) | {} vs {} | **{:.0}x** |",
        ms(rollup),
        ms(scan),
        scan.as_secs_f64() / rollup.as_secs_f64()
    ));

    // 3. Summary under load.
    let secs = env_num("BENCH_LOAD_SECS", 10);
    let conc = env_num("BENCH_LOAD_CONCURRENCY", 32) as usize;
    let url = format!("{base}/api/v1/usage/summary?from={from}&to={to}");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, url, token) = (client.clone(), url.clone(), user_token.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    report.line(format!(
        "| {name} | summary ({days}-day range) under load, {conc} concurrent connections, {secs} s | {} requests, p50 {}, p99 {} | **{:.0} req/s** |",
        all.len(),
        ms(pct(&all, 0.50)),
        ms(pct(&all, 0.99)),
        all.len() as f64 / elapsed
    ));
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let days = env_num("BENCH_DAYS", 730) as i64;
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (bodies, n) = bodies(days);
    let bodies = Arc::new(bodies);
    println!("{n} buckets in {} requests", bodies.len());
    let mut report = Report { lines: Vec::new() };
    rt.block_on(async {
        for b in backends.split(',') {
            match b.trim() {
                "sqlite" => {
                    let tmp = tempfile::tempdir().unwrap();
                    let store: Arc<dyn Store> = Arc::new(
                        tokenledger_store_sqlite::SqliteStore::open(tmp.path().join("bench.db"))
                            .await
                            .unwrap(),
                    );
                    run_backend("SQLite", store, &bodies, n, days, &mut report).await;
                }
                "postgres" => {
                    let url = match std::env::var("TOKENLEDGER_BENCH_DATABASE_URL") {
                        Ok(u) if !u.is_empty() => u,
                        _ => match common::fresh_pg_database().await {
                            Some(u) => u,
                            None => {
                                eprintln!("no PostgreSQL; skipping");
                                continue;
                            }
                        },
                    };
                    let store: Arc<dyn Store> = Arc::new(
                        tokenledger_store_postgres::PgStore::connect_with_pool_size(&url, 16)
                            .await
                            .unwrap(),
                    );
                    run_backend("PostgreSQL", store, &bodies, n, days, &mut report).await;
                }
                other => eprintln!("unknown backend {other}"),
            }
        }
    });
    println!("\n{}", report.lines.join("\n"));
}
