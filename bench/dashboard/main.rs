//! Dashboard overview benchmark (not a test): a heavy user with two years of half-hour buckets
//! on the embedded SQLite backend; times every request the overview makes and weighs the page.
//!
//! Run: `cargo bench -p tokenledger-server --bench dashboard`. Figures: bench/dashboard/RESULTS.md.

use std::sync::Arc;
use std::time::Instant;
use tokenledger_core::{Source, TokenCounts};
use tokenledger_server::{dashboard, AppState, ServerConfig};
use tokenledger_store::{generate_token, hash_token, now_unix, NewBucket, Store};
use tokenledger_store_sqlite::SqliteStore;

const MODELS: [(Source, &str); 6] = [
    (Source::Codex, "gpt-5"),
    (Source::Codex, "gpt-5-codex"),
    (Source::Claude, "claude-sonnet-4-5"),
    (Source::Claude, "claude-opus-4-1"),
    (Source::Gemini, "gemini-2.5-pro"),
    (Source::OpenCode, "gpt-5-mini"),
];

fn day(ts: i64) -> String {
    jiff::Timestamp::from_second(ts)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(tmp.path().join("b.db")).await.unwrap());
    let token = generate_token("tlu_");
    let user = store
        .create_user("heavy", &hash_token(&token))
        .await
        .unwrap();
    let dev = store
        .create_device(user.id, "m", "linux", &hash_token(&generate_token("tld_")))
        .await
        .unwrap();
    let today = now_unix() - now_unix().rem_euclid(86_400);
    let mut buckets = Vec::new();
    let t0 = Instant::now();
    for d in 0..730i64 {
        for slot in 16..40i64 {
            for (i, (source, model)) in MODELS.iter().enumerate() {
                if (d + slot + i as i64) % 3 == 0 {
                    continue;
                }
                let n = 1000 + ((d * 7 + slot * 13 + i as i64) % 997) as u64 * 100;
                buckets.push(NewBucket {
                    source: *source,
                    model: model.to_string(),
                    hour_start: today - d * 86_400 + slot * 1800,
                    tokens: TokenCounts {
                        input_tokens: n * 10,
                        cached_input_tokens: n * 4,
                        cache_creation_input_tokens: 0,
                        output_tokens: n,
                        reasoning_output_tokens: n / 2,
                        total_tokens: n * 11,
                    },
                });
            }
        }
        if buckets.len() >= 5000 {
            store
                .ingest(user.id, dev.id, &buckets, now_unix())
                .await
                .unwrap();
            buckets.clear();
        }
    }
    store
        .ingest(user.id, dev.id, &buckets, now_unix())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(store.clone(), ServerConfig::default());
    tokio::spawn(async move {
        tokenledger_server::serve(listener, state, std::future::pending()).await
    });
    println!("seeded 730 days in {:.1}s", t0.elapsed().as_secs_f64());

    // A browser session, as the page has.
    let code = dashboard::create_login_code(store.as_ref(), user.id)
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(dashboard::login_url(&base, &code))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let (from30, to) = (day(today - 29 * 86_400), day(today));
    let from365 = day(today - 364 * 86_400);
    let mut report = String::new();
    for (label, from) in [("30 days (default)", &from30), ("a year", &from365)] {
        let f = format!("from={from}&to={to}&tz=Europe/Berlin");
        let mut urls = vec![
            "/".to_string(),
            "/assets/app.js".to_string(),
            "/assets/app.css".to_string(),
            format!("/api/v1/usage/daily?{f}"),
            format!("/api/v1/usage/models?{f}"),
            format!("/api/v1/usage/sources?{f}"),
            "/api/v1/usage/heatmap?tz=Europe/Berlin".to_string(),
        ];
        for (_, m) in MODELS {
            urls.push(format!("/api/v1/usage/daily?{f}&model={m}"));
        }
        let mut best_total = f64::MAX;
        let mut bytes = 0usize;
        let mut per: Vec<(String, f64)> = Vec::new();
        for round in 0..15 {
            let mut total = 0.0;
            let mut b = 0;
            let mut this = Vec::new();
            for u in &urls {
                let t = Instant::now();
                let body = client
                    .get(format!("{base}{u}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                total += ms;
                b += body.len();
                this.push((u.clone(), ms));
            }
            if round > 2 && total < best_total {
                best_total = total;
                bytes = b;
                per = this;
            }
        }
        report.push_str(&format!("\n### Overview, {label}\n\nsequential sum of all {} requests (best of 12 warm rounds): **{best_total:.1} ms**; page weight (HTML+JS+CSS+JSON, uncompressed): **{:.1} KiB**\n\n| request | ms |\n| --- | ---: |\n", urls.len(), bytes as f64 / 1024.0));
        for (u, ms) in per {
            report.push_str(&format!("| `{u}` | {ms:.1} |\n"));
        }
    }
    println!("{report}");
}
