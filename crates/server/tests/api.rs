//! The server's integration suite: every case runs against the embedded SQLite and a real
//! PostgreSQL, through the real HTTP server on port 0.

mod common;

use common::{bucket, six, Env};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokenledger_server::usage::{self, Strategy, UsageQuery};
use tokenledger_server::ServerConfig;
use tokenledger_store::{Period, UsageFilter};

/// Declares each case once per backend: `sqlite::<case>` and `postgres::<case>`.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Env::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(env) = super::Env::postgres().await {
                        super::$case(env).await;
                    }
                }
            )*
        }
    };
}

both_backends!(
    same_batch_twice_or_out_of_order_gives_same_totals,
    new_values_replace_old_ones,
    two_devices_add_up,
    model_filter_returns_only_that_model,
    model_is_trimmed_when_stored_and_filtered,
    bad_ingest_is_rejected_with_a_stable_code_and_nothing_stored,
    bad_usage_parameters_are_400,
    rollup_and_bucket_paths_give_the_same_numbers,
    trigger_keeps_rollup_right_on_insert_update_delete,
    rollup_rebuild_repairs_the_rollup,
    rollback_script_removes_rollup_and_keeps_buckets,
    days_are_grouped_in_the_time_zone,
    users_never_see_each_others_data,
    devices_are_listed_with_last_seen_and_revoked,
    a_device_may_revoke_itself_but_no_other,
    other_usage_endpoints_report_exact_numbers,
    legacy_rows_without_model_become_unknown,
    openapi_document_lists_the_paths,
    health_and_metrics,
);

async fn summary(env: &Env, token: &str, query: &str) -> [u64; 6] {
    let (status, body) = env
        .get(&format!("/api/v1/usage/summary?{query}"), token)
        .await;
    assert_eq!(status, 200, "{body}");
    six(&body["totals"])
}

async fn same_batch_twice_or_out_of_order_gives_same_totals(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    let batch = vec![
        bucket(
            "codex",
            Some("gpt-5"),
            "2025-12-01T00:00:00.000Z",
            [100, 40, 0, 10, 2],
        ),
        bucket(
            "codex",
            Some("gpt-5"),
            "2025-12-01T00:30:00.000Z",
            [200, 0, 0, 20, 0],
        ),
        bucket(
            "claude",
            Some("claude-sonnet-4-5"),
            "2025-12-02T13:30:00Z",
            [1000, 600, 100, 50, 0],
        ),
    ];
    let (s, r) = env.ingest(&dev, &batch).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r, json!({"inserted": 3, "updated": 0, "unchanged": 0}));
    let q = "from=2025-12-01&to=2025-12-02";
    let expect = [1300, 640, 100, 80, 2, 1380];
    assert_eq!(summary(&env, &user, q).await, expect);

    let (_, r) = env.ingest(&dev, &batch).await;
    assert_eq!(r, json!({"inserted": 0, "updated": 0, "unchanged": 3}));
    let mut reversed = batch.clone();
    reversed.reverse();
    let (_, r) = env.ingest(&dev, &reversed).await;
    assert_eq!(r, json!({"inserted": 0, "updated": 0, "unchanged": 3}));
    assert_eq!(summary(&env, &user, q).await, expect);
    assert_eq!(
        env.scalar("SELECT count(*) FROM usage_buckets").await,
        Ok(3)
    );

    // Numbers as JSON integers are accepted too and mean the same.
    let mut as_numbers = batch[0].clone();
    for k in [
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "total_tokens",
    ] {
        let n: u64 = as_numbers[k].as_str().unwrap().parse().unwrap();
        as_numbers[k] = json!(n);
    }
    let (_, r) = env.ingest(&dev, &[as_numbers]).await;
    assert_eq!(r, json!({"inserted": 0, "updated": 0, "unchanged": 1}));
}

async fn new_values_replace_old_ones(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    let hs = "2025-12-01T10:00:00.000Z";
    env.ingest(
        &dev,
        &[bucket("codex", Some("gpt-5"), hs, [100, 0, 0, 10, 0])],
    )
    .await;
    let (_, r) = env
        .ingest(
            &dev,
            &[bucket("codex", Some("gpt-5"), hs, [150, 50, 0, 15, 5])],
        )
        .await;
    assert_eq!(r, json!({"inserted": 0, "updated": 1, "unchanged": 0}));
    assert_eq!(
        summary(&env, &user, "from=2025-12-01&to=2025-12-01").await,
        [150, 50, 0, 15, 5, 165]
    );
    // The same key twice in one request: the last one wins.
    let (_, r) = env
        .ingest(
            &dev,
            &[
                bucket("codex", Some("gpt-5"), hs, [1, 0, 0, 1, 0]),
                bucket("codex", Some("gpt-5"), hs, [7, 0, 0, 3, 0]),
            ],
        )
        .await;
    assert_eq!(r, json!({"inserted": 0, "updated": 1, "unchanged": 0}));
    assert_eq!(
        summary(&env, &user, "from=2025-12-01&to=2025-12-01").await,
        [7, 0, 0, 3, 0, 10]
    );
}

async fn two_devices_add_up(env: Env) {
    let user = env.user("ada").await;
    let (_, a) = env.device(&user, "laptop").await;
    let (_, b) = env.device(&user, "desktop").await;
    let hs = "2025-12-01T10:00:00.000Z";
    env.ingest(
        &a,
        &[bucket("codex", Some("gpt-5"), hs, [100, 10, 0, 10, 1])],
    )
    .await;
    env.ingest(
        &b,
        &[bucket("codex", Some("gpt-5"), hs, [300, 30, 0, 30, 3])],
    )
    .await;
    assert_eq!(
        summary(&env, &user, "from=2025-12-01&to=2025-12-01").await,
        [400, 40, 0, 40, 4, 440]
    );
    // Resending one device's bucket does not double it.
    env.ingest(
        &a,
        &[bucket("codex", Some("gpt-5"), hs, [100, 10, 0, 10, 1])],
    )
    .await;
    assert_eq!(
        summary(&env, &user, "from=2025-12-01&to=2025-12-01").await,
        [400, 40, 0, 40, 4, 440]
    );
}

async fn model_filter_returns_only_that_model(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    let hs = "2025-12-01T10:00:00.000Z";
    env.ingest(
        &dev,
        &[
            bucket("claude", Some("claude-3-5-sonnet"), hs, [100, 0, 0, 10, 0]),
            bucket("claude", Some("claude-opus-4"), hs, [1000, 0, 0, 100, 0]),
            bucket("codex", Some("claude-3-5-sonnet"), hs, [5, 0, 0, 5, 0]),
        ],
    )
    .await;
    let base = "from=2025-12-01&to=2025-12-01";
    assert_eq!(
        summary(&env, &user, &format!("{base}&model=claude-3-5-sonnet")).await,
        [105, 0, 0, 15, 0, 120]
    );
    assert_eq!(
        summary(
            &env,
            &user,
            &format!("{base}&model=claude-3-5-sonnet&source=claude")
        )
        .await,
        [100, 0, 0, 10, 0, 110]
    );
    assert_eq!(summary(&env, &user, base).await, [1105, 0, 0, 115, 0, 1220]);
    let (_, daily) = env
        .get(
            &format!("/api/v1/usage/daily?{base}&model=claude-opus-4"),
            &user,
        )
        .await;
    assert_eq!(daily["data"].as_array().unwrap().len(), 1);
    assert_eq!(six(&daily["data"][0])[5], 1100);
    assert_eq!(six(&daily["summary"]["totals"])[5], 1100);
    let (_, models) = env
        .get(&format!("/api/v1/usage/models?{base}"), &user)
        .await;
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["claude-opus-4", "claude-3-5-sonnet"]);
}

async fn model_is_trimmed_when_stored_and_filtered(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    let hs = "2025-12-01T10:00:00.000Z";
    let (_, r) = env
        .ingest(
            &dev,
            &[
                bucket(
                    "opencode",
                    Some("  MoonshotAI/Kimi-K2-Thinking  "),
                    hs,
                    [10, 0, 0, 1, 0],
                ),
                bucket("opencode", None, hs, [20, 0, 0, 2, 0]),
                bucket("codex", Some("   "), hs, [30, 0, 0, 3, 0]),
            ],
        )
        .await;
    assert_eq!(r["inserted"], 3);
    // The trimmed name is the same key.
    let (_, r) = env
        .ingest(
            &dev,
            &[bucket(
                "opencode",
                Some("MoonshotAI/Kimi-K2-Thinking"),
                hs,
                [10, 0, 0, 1, 0],
            )],
        )
        .await;
    assert_eq!(r, json!({"inserted": 0, "updated": 0, "unchanged": 1}));
    let base = "from=2025-12-01&to=2025-12-01";
    assert_eq!(
        summary(
            &env,
            &user,
            &format!("{base}&model=MoonshotAI/Kimi-K2-Thinking")
        )
        .await[5],
        11
    );
    assert_eq!(
        summary(
            &env,
            &user,
            &format!("{base}&model=%20%20MoonshotAI/Kimi-K2-Thinking%20")
        )
        .await[5],
        11
    );
    assert_eq!(
        summary(
            &env,
            &user,
            &format!("{base}&model=moonshotai/kimi-k2-thinking")
        )
        .await[5],
        0
    );
    assert_eq!(
        summary(&env, &user, &format!("{base}&model=unknown")).await[5],
        55
    );
    let (_, models) = env
        .get(&format!("/api/v1/usage/models?{base}"), &user)
        .await;
    let mut names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["MoonshotAI/Kimi-K2-Thinking", "unknown"]);
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM usage_buckets WHERE model = 'MoonshotAI/Kimi-K2-Thinking'"
        )
        .await,
        Ok(1)
    );
}

async fn bad_ingest_is_rejected_with_a_stable_code_and_nothing_stored(env: Env) {
    let user = env.user("ada").await;
    let (dev_id, dev) = env.device(&user, "laptop").await;
    let good = bucket(
        "codex",
        Some("gpt-5"),
        "2025-12-01T00:00:00.000Z",
        [10, 0, 0, 1, 0],
    );
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        json!({ "buckets": [good.clone(), b] }).to_string()
    };
    let many: Vec<Value> = (0..501)
        .map(|i| {
            bucket(
                "codex",
                Some("gpt-5"),
                &tokenledger_core::format_hour_start(1_764_547_200 + i * 1800),
                [1, 0, 0, 1, 0],
            )
        })
        .collect();
    let cases: Vec<(&str, String, u16, &str, Option<u64>)> = vec![
        (
            "malformed json",
            "{\"buckets\": [".to_string(),
            400,
            "malformed_json",
            None,
        ),
        ("not json", "hello".to_string(), 400, "malformed_json", None),
        (
            "no buckets field",
            "{}".to_string(),
            400,
            "invalid_body",
            None,
        ),
        (
            "buckets not a list",
            "{\"buckets\": 3}".to_string(),
            400,
            "invalid_body",
            None,
        ),
        (
            "wrong type",
            with("input_tokens", json!(true)),
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "float",
            with("input_tokens", json!(1.5)),
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "negative",
            with("output_tokens", json!(-1)),
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "negative string",
            with("output_tokens", json!("-1")),
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "past u64 string",
            with("input_tokens", json!("18446744073709551616")),
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "past u64 number",
            format!(
                "{{\"buckets\":[{good},{}]}}",
                good.to_string().replace(
                    "\"input_tokens\":\"10\"",
                    "\"input_tokens\":18446744073709551616"
                )
            ),
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "past i64",
            with("input_tokens", json!("9223372036854775808")),
            400,
            "number_out_of_range",
            Some(1),
        ),
        (
            "hour_start off boundary",
            with("hour_start", json!("2025-12-01T00:15:00.000Z")),
            400,
            "invalid_hour_start",
            Some(1),
        ),
        (
            "hour_start garbage",
            with("hour_start", json!("yesterday")),
            400,
            "invalid_hour_start",
            Some(1),
        ),
        (
            "unknown source",
            with("source", json!("cursor")),
            400,
            "unknown_source",
            Some(1),
        ),
        (
            "total mismatch",
            with("total_tokens", json!("12")),
            400,
            "total_mismatch",
            Some(1),
        ),
        (
            "missing field",
            {
                let mut b = good.clone();
                b.as_object_mut().unwrap().remove("output_tokens");
                json!({ "buckets": [good.clone(), b] }).to_string()
            },
            400,
            "invalid_bucket",
            Some(1),
        ),
        (
            "501 buckets",
            json!({ "buckets": many }).to_string(),
            413,
            "too_many_buckets",
            None,
        ),
        (
            "10 MiB body",
            format!(
                "{{\"buckets\":[],\"pad\":\"{}\"}}",
                "x".repeat(10 * 1024 * 1024)
            ),
            413,
            "payload_too_large",
            None,
        ),
    ];
    for (what, body, status, code, index) in cases {
        let (s, r) = env.ingest_raw(&dev, body).await;
        assert_eq!(s, status, "{what}: {r}");
        assert_eq!(r["error"]["code"], code, "{what}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        match index {
            Some(i) => assert_eq!(r["error"]["index"], i, "{what}: {r}"),
            None => assert!(r["error"].get("index").is_none(), "{what}: {r}"),
        }
    }
    // Tokens: missing, unknown, a user token where a device token is needed, revoked.
    let body = json!({ "buckets": [good.clone()] }).to_string();
    let (s, r) = env
        .send(Method::POST, "/api/v1/ingest", None, Some(body.clone()))
        .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = env.ingest_raw("tld_nope", body.clone()).await;
    assert_eq!(s, 401);
    let (s, _) = env.ingest_raw(&user, body.clone()).await;
    assert_eq!(s, 401);
    let (s, _) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{dev_id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, r) = env.ingest_raw(&dev, body).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    assert_eq!(
        env.scalar("SELECT count(*) FROM usage_buckets").await,
        Ok(0)
    );
    assert_eq!(
        summary(&env, &user, "from=2025-11-01&to=2026-01-31").await,
        [0; 6]
    );
}

async fn bad_usage_parameters_are_400(env: Env) {
    let user = env.user("ada").await;
    let cases = [
        ("summary?to=2025-12-01", "missing_parameter"),
        ("summary?from=2025-12-01", "missing_parameter"),
        ("summary?from=2025-12-02&to=2025-12-01", "invalid_range"),
        ("daily?from=2025-12-02&to=2025-12-01", "invalid_range"),
        (
            "summary?from=2025-12-01&to=2025-12-01&tz=Mars/Olympus",
            "invalid_timezone",
        ),
        (
            "daily?from=2025-12-01&to=2025-12-01&tz=Not/AZone",
            "invalid_timezone",
        ),
        ("summary?from=2024-01-01&to=2026-03-11", "range_too_large"),
        ("daily?from=2020-01-01&to=2025-01-01", "range_too_large"),
        ("summary?from=2025-13-01&to=2025-12-01", "invalid_date"),
        ("summary?from=yesterday&to=2025-12-01", "invalid_date"),
        (
            "summary?from=2025-12-01&to=2025-12-01&source=cursor",
            "unknown_source",
        ),
        ("hourly?from=2025-12-01&to=2025-12-02", "invalid_range"),
        ("hourly?day=2025-02-30", "invalid_date"),
        ("heatmap?year=99999", "invalid_parameter"),
        ("summary?from=9999-12-31&to=9999-12-31", "invalid_date"),
    ];
    for (q, code) in cases {
        let (s, r) = env.get(&format!("/api/v1/usage/{q}"), &user).await;
        assert_eq!(s, 400, "{q}: {r}");
        assert_eq!(r["error"]["code"], code, "{q}: {r}");
    }
    // 800 days exactly is allowed; no token is 401.
    let (s, _) = env
        .get("/api/v1/usage/summary?from=2024-01-01&to=2026-03-10", &user)
        .await;
    assert_eq!(s, 200);
    let (s, r) = env
        .send(
            Method::GET,
            "/api/v1/usage/summary?from=2025-12-01&to=2025-12-01",
            None,
            None,
        )
        .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
}

/// Two weeks of buckets at awkward hours, several sources and models.
async fn load_fortnight(env: &Env, dev: &str) {
    let mut buckets = Vec::new();
    let start = 1_764_547_200; // 2025-12-01T00:00:00Z
    for i in 0..(14 * 48) {
        if i % 7 != 0 && i % 11 != 0 {
            continue;
        }
        let ts = start + i * 1800;
        let hs = tokenledger_core::format_hour_start(ts);
        let n = (i as u64 % 13) + 1;
        buckets.push(bucket(
            "codex",
            Some("gpt-5"),
            &hs,
            [100 * n, 10 * n, 0, 7 * n, n],
        ));
        if i % 3 == 0 {
            buckets.push(bucket(
                "claude",
                Some("claude-sonnet-4-5"),
                &hs,
                [1000 * n, 800 * n, 50 * n, 30 * n, 0],
            ));
        }
    }
    for chunk in buckets.chunks(500) {
        let (s, r) = env.ingest(dev, chunk).await;
        assert_eq!(s, 200, "{r}");
    }
}

async fn rollup_and_bucket_paths_give_the_same_numbers(env: Env) {
    let user_token = env.user("ada").await;
    let (_, dev) = env.device(&user_token, "laptop").await;
    load_fortnight(&env, &dev).await;
    let user_id = env.store.list_users().await.unwrap()[0].id;
    for (from, to, tz) in [
        ("2025-12-01", "2025-12-14", "UTC"),
        ("2025-12-02", "2025-12-09", "UTC"),
        ("2025-12-02", "2025-12-09", "Asia/Kathmandu"),
        ("2025-12-01", "2025-12-14", "America/Los_Angeles"),
        ("2025-12-03", "2025-12-03", "Asia/Calcutta"),
    ] {
        let tzv = jiff::tz::TimeZone::get(tz).unwrap();
        let (f, t): (jiff::civil::Date, jiff::civil::Date) =
            (from.parse().unwrap(), to.parse().unwrap());
        let q = UsageQuery {
            user_id,
            from: f,
            to: t,
            start_ts: f.to_zoned(tzv.clone()).unwrap().timestamp().as_second(),
            end_ts: t
                .tomorrow()
                .unwrap()
                .to_zoned(tzv.clone())
                .unwrap()
                .timestamp()
                .as_second(),
            tz: tzv,
            tz_name: tz.to_string(),
            filter: UsageFilter::default(),
        };
        let auto = usage::series_totals(env.store.as_ref(), &q, Strategy::Auto)
            .await
            .unwrap();
        let scan = usage::series_totals(env.store.as_ref(), &q, Strategy::BucketsOnly)
            .await
            .unwrap();
        assert_eq!(auto, scan, "{from}..{to} {tz}");
        let total: u64 = scan.iter().map(|r| r.tokens.total_tokens).sum();
        assert!(total > 0);
        let http = summary(&env, &user_token, &format!("from={from}&to={to}&tz={tz}")).await;
        assert_eq!(http[5], total, "{from}..{to} {tz}");
        let daily_auto = usage::daily_rows(env.store.as_ref(), &q, Strategy::Auto)
            .await
            .unwrap();
        let daily_scan = usage::daily_rows(env.store.as_ref(), &q, Strategy::BucketsOnly)
            .await
            .unwrap();
        assert_eq!(daily_auto, daily_scan);
    }
    // Ground truth for the whole fortnight, computed independently of the server.
    let mut expect = [0u64; 6];
    for i in 0..(14 * 48u64) {
        if i % 7 != 0 && i % 11 != 0 {
            continue;
        }
        let n = (i % 13) + 1;
        let mut add = |a: [u64; 5]| {
            for k in 0..5 {
                expect[k] += a[k];
            }
            expect[5] += a[0] + a[3];
        };
        add([100 * n, 10 * n, 0, 7 * n, n]);
        if i % 3 == 0 {
            add([1000 * n, 800 * n, 50 * n, 30 * n, 0]);
        }
    }
    assert_eq!(
        summary(&env, &user_token, "from=2025-12-01&to=2025-12-14").await,
        expect
    );
}

async fn trigger_keeps_rollup_right_on_insert_update_delete(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    let uid = env.store.list_users().await.unwrap()[0].id;
    let day = jiff::civil::date(2025, 12, 1);
    let all = UsageFilter::default();
    let rollup_total = || async {
        let rows = env
            .store
            .rollup_rows(uid, day, day, &all, Period::All)
            .await
            .unwrap();
        let buckets = env
            .store
            .bucket_rows(
                uid,
                1_764_547_200,
                1_764_547_200 + 86_400,
                &all,
                Period::All,
            )
            .await
            .unwrap();
        let nonzero: Vec<_> = rows.into_iter().filter(|r| !r.tokens.is_zero()).collect();
        assert_eq!(nonzero, buckets, "rollup differs from buckets");
        nonzero.iter().map(|r| r.tokens.total_tokens).sum::<u64>()
    };
    // insert
    env.ingest(
        &dev,
        &[
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-12-01T01:00:00Z",
                [100, 0, 0, 10, 0],
            ),
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-12-01T23:30:00Z",
                [200, 0, 0, 20, 0],
            ),
            bucket(
                "codex",
                Some("m-del"),
                "2025-12-01T05:00:00Z",
                [1000, 0, 0, 0, 0],
            ),
        ],
    )
    .await;
    assert_eq!(rollup_total().await, 1330);
    // update through ingest
    env.ingest(
        &dev,
        &[bucket(
            "codex",
            Some("gpt-5"),
            "2025-12-01T01:00:00Z",
            [50, 0, 0, 5, 0],
        )],
    )
    .await;
    assert_eq!(rollup_total().await, 1275);
    // delete
    env.exec("DELETE FROM usage_buckets WHERE model = 'm-del'")
        .await;
    assert_eq!(rollup_total().await, 275);
    // an update that moves a bucket to another key
    env.exec("UPDATE usage_buckets SET model = 'gpt-5-mini' WHERE total_tokens = 220")
        .await;
    assert_eq!(rollup_total().await, 275);
    let by_model = env
        .store
        .rollup_rows(
            uid,
            day,
            day,
            &UsageFilter {
                source: None,
                model: Some("gpt-5-mini".into()),
            },
            Period::Day,
        )
        .await
        .unwrap();
    assert_eq!(by_model.len(), 1);
    assert_eq!(by_model[0].tokens.total_tokens, 220);
    assert_eq!(by_model[0].period, 1_764_547_200);
}

async fn rollup_rebuild_repairs_the_rollup(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    load_fortnight(&env, &dev).await;
    let q = "from=2025-12-01&to=2025-12-14";
    let before = summary(&env, &user, q).await;
    env.exec("UPDATE usage_daily_rollup SET total_tokens = 0, input_tokens = 0")
        .await;
    assert_ne!(summary(&env, &user, q).await, before);
    let n = env
        .store
        .rebuild_rollup(
            jiff::civil::date(2025, 12, 1),
            jiff::civil::date(2025, 12, 14),
        )
        .await
        .unwrap();
    assert!(n >= 14, "{n}");
    assert_eq!(summary(&env, &user, q).await, before);
}

async fn rollback_script_removes_rollup_and_keeps_buckets(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    load_fortnight(&env, &dev).await;
    let buckets = env
        .scalar("SELECT count(*) FROM usage_buckets")
        .await
        .unwrap();
    assert!(buckets > 100);
    assert!(
        env.scalar("SELECT count(*) FROM usage_daily_rollup")
            .await
            .unwrap()
            > 0
    );
    let q = "from=2025-12-01&to=2025-12-14";
    let before = summary(&env, &user, q).await;
    let (_, daily_before) = env.get(&format!("/api/v1/usage/daily?{q}"), &user).await;

    env.exec(env.rollback_sql()).await;

    let err = env.scalar("SELECT count(*) FROM usage_daily_rollup").await;
    assert!(err.is_err(), "rollup table still there: {err:?}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM usage_buckets").await,
        Ok(buckets)
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM schema_migrations WHERE version = 4")
            .await,
        Ok(0)
    );
    // Reads fall back to buckets with the same numbers; writes still work without triggers.
    assert_eq!(summary(&env, &user, q).await, before);
    let (_, daily_after) = env.get(&format!("/api/v1/usage/daily?{q}"), &user).await;
    assert_eq!(daily_after, daily_before);
    let (s, _) = env
        .ingest(
            &dev,
            &[bucket(
                "codex",
                Some("gpt-5"),
                "2025-12-20T00:00:00Z",
                [1, 0, 0, 1, 0],
            )],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        summary(&env, &user, "from=2025-12-20&to=2025-12-20").await[5],
        2
    );
}

async fn days_are_grouped_in_the_time_zone(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    env.ingest(
        &dev,
        &[
            // Kathmandu +05:45: 23:45 on the 10th; Calcutta +05:30: 23:30 on the 10th.
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-03-10T18:00:00Z",
                [100, 0, 0, 0, 0],
            ),
            // Kathmandu 00:15 on the 11th; Calcutta 00:00 on the 11th.
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-03-10T18:30:00Z",
                [10, 0, 0, 0, 0],
            ),
            // Los Angeles (PDT after 2025-03-09) 17:00 on the 10th.
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-03-11T00:00:00Z",
                [1, 0, 0, 0, 0],
            ),
        ],
    )
    .await;
    let days = |body: &Value| -> Vec<(String, u64)> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["day"].as_str().unwrap().to_string(), six(d)[5]))
            .collect()
    };
    let q = "from=2025-03-10&to=2025-03-11";
    for (tz, expect) in [
        ("UTC", vec![("2025-03-10", 110), ("2025-03-11", 1)]),
        (
            "Asia/Katmandu",
            vec![("2025-03-10", 100), ("2025-03-11", 11)],
        ),
        (
            "Asia/Kathmandu",
            vec![("2025-03-10", 100), ("2025-03-11", 11)],
        ),
        (
            "Asia/Calcutta",
            vec![("2025-03-10", 100), ("2025-03-11", 11)],
        ),
        ("America/Los_Angeles", vec![("2025-03-10", 111)]),
        ("Europe/Kiev", vec![("2025-03-10", 110), ("2025-03-11", 1)]),
    ] {
        let (s, body) = env
            .get(&format!("/api/v1/usage/daily?{q}&tz={tz}"), &user)
            .await;
        assert_eq!(s, 200, "{tz}: {body}");
        let expect: Vec<(String, u64)> = expect
            .into_iter()
            .map(|(d, n)| (d.to_string(), n))
            .collect();
        assert_eq!(days(&body), expect, "{tz}");
        assert_eq!(body["tz"], tz);
        let total: u64 = expect.iter().map(|(_, n)| n).sum();
        assert_eq!(six(&body["summary"]["totals"])[5], total, "{tz}");
        assert_eq!(
            summary(&env, &user, &format!("{q}&tz={tz}")).await[5],
            total,
            "{tz}"
        );
    }
    // One local day in Kathmandu holds only the first bucket.
    assert_eq!(
        summary(
            &env,
            &user,
            "from=2025-03-10&to=2025-03-10&tz=Asia/Katmandu"
        )
        .await[5],
        100
    );
    let (_, hourly) = env
        .get("/api/v1/usage/hourly?day=2025-03-11&tz=Asia/Kolkata", &user)
        .await;
    let rows = hourly["data"].as_array().unwrap();
    assert_eq!(rows.len(), 48);
    assert_eq!(rows[0]["hour_start"], "2025-03-10T18:30:00.000Z");
    assert_eq!(rows[0]["local_start"], "2025-03-11T00:00:00+05:30");
    assert_eq!(six(&rows[0])[5], 10);
    assert_eq!(six(&rows[11])[5], 1);
}

async fn users_never_see_each_others_data(env: Env) {
    let alice = env.user("alice").await;
    let bob = env.user("bob").await;
    let (a_dev_id, a_dev) = env.device(&alice, "a").await;
    let (b_dev_id, b_dev) = env.device(&bob, "b").await;
    let hs = "2025-12-01T10:00:00Z";
    env.ingest(
        &a_dev,
        &[bucket("codex", Some("gpt-5"), hs, [1, 0, 0, 1, 0])],
    )
    .await;
    env.ingest(
        &b_dev,
        &[bucket("codex", Some("gpt-5"), hs, [1000, 0, 0, 1000, 0])],
    )
    .await;
    let q = "from=2025-12-01&to=2025-12-01";
    assert_eq!(summary(&env, &alice, q).await[5], 2);
    assert_eq!(summary(&env, &bob, q).await[5], 2000);
    for ep in ["daily", "models", "sources", "monthly"] {
        let (_, body) = env.get(&format!("/api/v1/usage/{ep}?{q}"), &alice).await;
        assert_eq!(six(&body["summary"]["totals"])[5], 2, "{ep}");
    }
    // A device token reads its own user's usage only.
    assert_eq!(summary(&env, &b_dev, q).await[5], 2000);
    let (_, list) = env.get("/api/v1/devices", &alice).await;
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a_dev_id.as_str()]);
    let (s, r) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{b_dev_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!((s, r["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = env
        .ingest(
            &b_dev,
            &[bucket("codex", Some("gpt-5"), hs, [1000, 0, 0, 1000, 0])],
        )
        .await;
    assert_eq!(s, 200, "bob's device must survive alice's attempt");
    // A device token cannot manage devices.
    let (s, _) = env.get("/api/v1/devices", &a_dev).await;
    assert_eq!(s, 401);
}

async fn devices_are_listed_with_last_seen_and_revoked(env: Env) {
    let user = env.user("ada").await;
    let (id, dev) = env.device(&user, "laptop").await;
    let (_, list) = env.get("/api/v1/devices", &user).await;
    assert_eq!(list["devices"][0]["name"], "laptop");
    assert_eq!(list["devices"][0]["platform"], "linux");
    assert!(list["devices"][0]["last_seen"].is_null());
    env.ingest(
        &dev,
        &[bucket(
            "codex",
            None,
            "2025-12-01T10:00:00Z",
            [1, 0, 0, 1, 0],
        )],
    )
    .await;
    let (_, list) = env.get("/api/v1/devices", &user).await;
    assert!(list["devices"][0]["last_seen"].is_string(), "{list}");
    assert_eq!(list["devices"][0]["revoked"], false);
    let (s, _) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (_, list) = env.get("/api/v1/devices", &user).await;
    assert_eq!(list["devices"][0]["revoked"], true);
    let (s, r) = env
        .send(
            Method::POST,
            "/api/v1/devices",
            Some(&user),
            Some("{\"platform\":\"x\"}".into()),
        )
        .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let (s, _) = env
        .send(
            Method::POST,
            "/api/v1/devices",
            Some("tlu_wrong"),
            Some("{\"name\":\"x\"}".into()),
        )
        .await;
    assert_eq!(s, 401);
}

async fn other_usage_endpoints_report_exact_numbers(env: Env) {
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    env.ingest(
        &dev,
        &[
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-11-30T23:30:00Z",
                [1_000_000, 0, 0, 0, 0],
            ),
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-12-01T00:00:00Z",
                [100, 0, 0, 10, 0],
            ),
            bucket(
                "claude",
                Some("no-such-model"),
                "2025-12-01T00:30:00Z",
                [40, 0, 0, 4, 0],
            ),
            bucket(
                "codex",
                Some("gpt-5"),
                "2025-12-31T12:00:00Z",
                [400, 0, 0, 40, 0],
            ),
        ],
    )
    .await;
    let (_, m) = env
        .get("/api/v1/usage/monthly?from=2025-11-01&to=2025-12-31", &user)
        .await;
    let months: Vec<(&str, u64)> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["month"].as_str().unwrap(), six(r)[5]))
        .collect();
    assert_eq!(months, [("2025-11", 1_000_000), ("2025-12", 594)]);
    let (_, s) = env
        .get("/api/v1/usage/sources?from=2025-12-01&to=2025-12-31", &user)
        .await;
    assert_eq!(s["data"][0]["source"], "codex");
    assert_eq!(six(&s["data"][0])[5], 550);
    assert_eq!(s["data"][1]["source"], "claude");
    assert_eq!(six(&s["data"][1])[5], 44);
    // Cost: gpt-5 is priced by the embedded table; the unknown model costs 0 and is listed.
    let (_, sum) = env
        .get("/api/v1/usage/summary?from=2025-11-30&to=2025-11-30", &user)
        .await;
    let cost: f64 = sum["totals"]["total_cost_usd"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let price = tokenledger_core::PriceTable::embedded();
    let want = price.lookup("gpt-5").unwrap().input * 1_000_000.0;
    assert!((cost - want).abs() < 1e-6, "{cost} vs {want}");
    assert_eq!(sum["pricing"]["profile"], price.profile);
    let (_, sum) = env
        .get("/api/v1/usage/summary?from=2025-12-01&to=2025-12-01", &user)
        .await;
    assert_eq!(sum["pricing"]["unpriced_models"], json!(["no-such-model"]));
    let (_, models) = env
        .get("/api/v1/usage/models?from=2025-12-01&to=2025-12-01", &user)
        .await;
    assert_eq!(models["data"][1]["model"], "no-such-model");
    assert_eq!(models["data"][1]["priced"], false);
    assert_eq!(models["data"][1]["total_cost_usd"], "0.000000");
    let (_, h) = env.get("/api/v1/usage/heatmap?year=2025", &user).await;
    let data = h["data"].as_array().unwrap();
    assert_eq!(data.len(), 365);
    assert_eq!(h["active_days"], 3);
    assert_eq!(h["max_day_total_tokens"], "1000000");
    let level = |d: &str| {
        data.iter().find(|x| x["day"] == d).unwrap()["level"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(level("2025-11-30"), 4);
    assert_eq!(level("2025-12-01"), 1);
    assert_eq!(level("2025-06-01"), 0);
    let (_, h) = env
        .get("/api/v1/usage/hourly?from=2025-12-01&to=2025-12-01", &user)
        .await;
    assert_eq!(h["data"].as_array().unwrap().len(), 48);
    assert_eq!(six(&h["data"][1])[5], 44);
    assert_eq!(six(&h["summary"]["totals"])[5], 154);
}

async fn legacy_rows_without_model_become_unknown(env: Env) {
    // A database of its own, built migration by migration.
    match &env.db {
        common::Db::Sqlite { .. } => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("legacy.db");
            assert_eq!(
                tokenledger_store_sqlite::migrate_path(&path, Some(1)).unwrap(),
                [1]
            );
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "INSERT INTO users (id, name, token_hash, created_at) VALUES (1, 'old', 'h', 0);
                 INSERT INTO devices (id, user_id, name, platform, token_hash, created_at)
                     VALUES (1, 1, 'd', 'linux', 'dh', 0);
                 INSERT INTO usage_buckets (user_id, device_id, source, hour_start, input_tokens,
                     output_tokens, total_tokens, updated_at)
                     VALUES (1, 1, 'codex', 1764547200, 10, 1, 11, 0);",
            )
            .unwrap();
            assert_eq!(
                tokenledger_store_sqlite::migrate_path(&path, Some(2)).unwrap(),
                [2]
            );
            conn.execute_batch(
                "INSERT INTO usage_buckets (user_id, device_id, source, hour_start, model,
                     input_tokens, output_tokens, total_tokens, updated_at) VALUES
                     (1, 1, 'codex', 1764549000, NULL, 20, 2, 22, 0),
                     (1, 1, 'codex', 1764550800, '', 30, 3, 33, 0),
                     (1, 1, 'codex', 1764552600, '   ', 40, 4, 44, 0),
                     (1, 1, 'codex', 1764554400, 'gpt-5', 50, 5, 55, 0);",
            )
            .unwrap();
            // The model migrations run first; later ones (added since) may follow.
            let applied = tokenledger_store_sqlite::migrate_path(&path, None).unwrap();
            assert_eq!(applied[..2], [3, 4], "{applied:?}");
            assert!(applied.windows(2).all(|w| w[0] < w[1]), "{applied:?}");
            let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
            assert_eq!(
                count("SELECT count(*) FROM usage_buckets WHERE model = 'unknown'"),
                4
            );
            assert_eq!(
                count("SELECT count(*) FROM usage_buckets WHERE model = 'gpt-5'"),
                1
            );
            assert_eq!(
                count("SELECT total_tokens FROM usage_daily_rollup WHERE model = 'unknown'"),
                110
            );
            let err = conn.execute(
                "INSERT INTO usage_buckets (user_id, device_id, source, hour_start, model,
                     updated_at) VALUES (1, 1, 'codex', 0, NULL, 0)",
                [],
            );
            assert!(err.is_err(), "model must be NOT NULL");
        }
        common::Db::Postgres { .. } => {
            let url = common::fresh_pg_database().await.unwrap();
            assert_eq!(
                tokenledger_store_postgres::migrate_url(&url, Some(1))
                    .await
                    .unwrap(),
                [1]
            );
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::raw_sql(
                "INSERT INTO users (name, token_hash) VALUES ('old', 'h');
                 INSERT INTO devices (user_id, name, platform, token_hash)
                     VALUES (1, 'd', 'linux', 'dh');
                 INSERT INTO usage_buckets (user_id, device_id, source, hour_start, input_tokens,
                     output_tokens, total_tokens)
                     VALUES (1, 1, 'codex', '2025-12-01T00:00:00Z', 10, 1, 11);",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            assert_eq!(
                tokenledger_store_postgres::migrate_url(&url, Some(2))
                    .await
                    .unwrap(),
                [2]
            );
            sqlx::raw_sql(
                "INSERT INTO usage_buckets (user_id, device_id, source, hour_start, model,
                     input_tokens, output_tokens, total_tokens) VALUES
                     (1, 1, 'codex', '2025-12-01T00:30:00Z', NULL, 20, 2, 22),
                     (1, 1, 'codex', '2025-12-01T01:00:00Z', '', 30, 3, 33),
                     (1, 1, 'codex', '2025-12-01T01:30:00Z', '   ', 40, 4, 44),
                     (1, 1, 'codex', '2025-12-01T02:00:00Z', 'gpt-5', 50, 5, 55);",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            // The model migrations run first; later ones (added since) may follow.
            let applied = tokenledger_store_postgres::migrate_url(&url, None)
                .await
                .unwrap();
            assert_eq!(applied[..2], [3, 4], "{applied:?}");
            assert!(applied.windows(2).all(|w| w[0] < w[1]), "{applied:?}");
            let count = |sql: &'static str| {
                let url = url.clone();
                async move {
                    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                        .await
                        .unwrap();
                    sqlx::query_scalar::<_, i64>(sql)
                        .fetch_one(&mut c)
                        .await
                        .unwrap()
                }
            };
            assert_eq!(
                count("SELECT count(*) FROM usage_buckets WHERE model = 'unknown'").await,
                4
            );
            assert_eq!(
                count("SELECT count(*) FROM usage_buckets WHERE model = 'gpt-5'").await,
                1
            );
            assert_eq!(
                count("SELECT total_tokens FROM usage_daily_rollup WHERE model = 'unknown'").await,
                110
            );
            let err = sqlx::query(
                "INSERT INTO usage_buckets (user_id, device_id, source, hour_start, model)
                 VALUES (1, 1, 'codex', now(), NULL)",
            )
            .execute(&mut conn)
            .await;
            assert!(err.is_err(), "model must be NOT NULL");
        }
    }
}

async fn openapi_document_lists_the_paths(env: Env) {
    let resp = env
        .client
        .get(format!("{}/api/v1/openapi.json", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/healthz",
        "/metrics",
        "/api/v1/devices",
        "/api/v1/devices/{id}",
        "/api/v1/ingest",
        "/api/v1/usage/summary",
        "/api/v1/usage/daily",
        "/api/v1/usage/hourly",
        "/api/v1/usage/monthly",
        "/api/v1/usage/heatmap",
        "/api/v1/usage/models",
        "/api/v1/usage/sources",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(paths["/api/v1/devices"]["post"].is_object());
    assert!(paths["/api/v1/devices/{id}"]["delete"].is_object());
    assert!(doc["components"]["schemas"]["DailyResponse"].is_object());
}

async fn health_and_metrics(env: Env) {
    let (s, h) = env.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(h["status"], "ok");
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    env.ingest(
        &dev,
        &[
            bucket("codex", None, "2025-12-01T10:00:00Z", [1, 0, 0, 1, 0]),
            bucket("codex", None, "2025-12-01T10:30:00Z", [1, 0, 0, 1, 0]),
        ],
    )
    .await;
    let text = env
        .client
        .get(format!("{}/metrics", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("tokenledger_ingest_buckets_total{outcome=\"inserted\"} 2"),
        "{text}"
    );
    assert!(text.contains("tokenledger_http_requests_total{method=\"POST\",route=\"/api/v1/ingest\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains("tokenledger_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_429_with_retry_after() {
    let config = ServerConfig {
        ingest_concurrency: 0,
        ingest_queue_wait: Duration::ZERO,
        ..ServerConfig::default()
    };
    let env = Env::sqlite_with(config).await;
    let user = env.user("ada").await;
    let (_, dev) = env.device(&user, "laptop").await;
    let resp = env
        .client
        .post(format!("{}/api/v1/ingest", env.base))
        .bearer_auth(&dev)
        .body(
            json!({"buckets": [bucket("codex", None, "2025-12-01T10:00:00Z", [1, 0, 0, 1, 0])]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(
        env.scalar("SELECT count(*) FROM usage_buckets").await,
        Ok(0)
    );
}

async fn a_device_may_revoke_itself_but_no_other(env: Env) {
    let user = env.user("ada").await;
    let (id_a, dev_a) = env.device(&user, "laptop").await;
    let (id_b, dev_b) = env.device(&user, "desktop").await;
    // Another device of the same user cannot be revoked with a device token.
    let (s, _) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{id_b}"),
            Some(&dev_a),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{id_a}"),
            Some(&dev_a),
            None,
        )
        .await;
    assert_eq!(s, 204);
    // Its token stops working at once; the other device's still works.
    let (s, _) = env
        .send(
            Method::DELETE,
            &format!("/api/v1/devices/{id_a}"),
            Some(&dev_a),
            None,
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = env
        .send(
            Method::POST,
            "/api/v1/ingest",
            Some(&dev_b),
            Some("{\"buckets\":[]}".into()),
        )
        .await;
    assert_eq!(s, 200);
}
