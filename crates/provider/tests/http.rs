//! The provider routes served for real: cron authentication, the usage API, key management,
//! and no plaintext key in the database file or the logs.

mod common;

use common::*;
use jiff::civil::{date, Date};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokenledger_provider::http::{router, ProviderHttpState, StoreTokenAuth};
use tokenledger_provider::retry::RecordingSleeper;
use tokenledger_provider::SecretString;

const TODAY: Date = date(2025, 10, 10);

async fn serve(ts: &TestStore, secret: Option<&str>) -> (String, tokenledger_provider::Ingestor) {
    let ing = ingestor(ts.store.clone(), Arc::new(RecordingSleeper::default()), 2);
    let mut state = ProviderHttpState::new(
        ing.clone(),
        Arc::new(StoreTokenAuth(ts.store.clone())),
        secret.map(SecretString::new),
    );
    state.today = Arc::new(|| TODAY);
    let app = router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (format!("http://{addr}"), ing)
}

fn seed(fake: &Fake) {
    fake.set_day(
        date(2025, 10, 7),
        vec![
            result(Some("proj_a"), Some("key_1"), Some("gpt-4o"), 1000, 200, 5),
            result(
                Some("proj_a"),
                Some("key_2"),
                Some("gpt-4o-mini"),
                400,
                40,
                2,
            ),
            result(None, None, None, 10, 1, 1),
        ],
    );
    fake.set_day(
        date(2025, 10, 8),
        vec![result(
            Some("proj_b"),
            Some("key_1"),
            Some("gpt-4o"),
            2000,
            300,
            9,
        )],
    );
    fake.set_day(
        date(2025, 10, 9),
        vec![result(Some("proj_b"), Some("key_3"), Some("o3"), 50, 5, 1)],
    );
}

#[tokio::test]
async fn cron_fails_closed_rejects_wrong_secrets_and_runs_with_the_right_one() {
    let (logs, _guard) = capture_logs();
    let ts = sqlite_store();
    let fake = Fake::start(31).await;
    seed(&fake);
    let http = reqwest::Client::new();

    // No secret configured: every call is refused, even one with a bearer token.
    let (base, ing) = serve(&ts, None).await;
    add_key(&ing, ts.user_id, &fake.base_url).await;
    let r = http
        .post(format!("{base}/api/v1/cron/daily-usage"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cron_not_configured");
    assert_eq!(fake.requests().len(), 0);
    let text = logs.text();
    assert!(text.contains("rejected cron call"), "{text}");
    assert!(text.contains("source=127.0.0.1:"), "{text}");
    assert!(!text.contains("anything"));

    // A wrong secret, and none at all.
    let (base, _) = serve(&ts, Some("s3cret-cron")).await;
    let r = http
        .post(format!("{base}/api/v1/cron/daily-usage"))
        .bearer_auth("s3cret-cro")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{base}/api/v1/cron/daily-usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(fake.requests().len(), 0);
    assert_eq!(logs.text().matches("rejected cron call").count(), 3);
    assert_eq!(totals(ts.store.as_ref(), ts.user_id).await.1, 0);

    // The right secret runs the pull and answers telemetry.
    let r = http
        .post(format!("{base}/api/v1/cron/daily-usage"))
        .bearer_auth("s3cret-cron")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tel: Value = r.json().await.unwrap();
    assert_eq!(tel["keys_processed"], 1);
    assert_eq!(tel["windows_processed"], 35);
    assert_eq!(tel["inserted"], 5);
    assert_eq!(tel["updated"], 0);
    assert_eq!(tel["unchanged"], 0);
    assert_eq!(tel["failed"], 0);
    assert_eq!(tel["errors"], json!([]));
    assert!(!logs.text().contains("s3cret-cron"));
}

#[tokio::test]
async fn usage_api_answers_daily_rows_filters_and_paginated_csv() {
    let ts = sqlite_store();
    let fake = Fake::start(31).await;
    seed(&fake);
    let (base, ing) = serve(&ts, Some("c")).await;
    add_key(&ing, ts.user_id, &fake.base_url).await;
    ing.pull_user(ts.user_id, TODAY, &|_| {}).await.unwrap();
    let http = reqwest::Client::new();
    let get = |q: &str| {
        http.get(format!("{base}/api/v1/provider-usage?{q}"))
            .bearer_auth(USER_TOKEN)
            .send()
    };

    let r = http
        .get(format!(
            "{base}/api/v1/provider-usage?from=2025-10-07&to=2025-10-09"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let v: Value = get("from=2025-10-07&to=2025-10-09")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["day"], "2025-10-07");
    assert_eq!(data[0]["input_tokens"], "1410");
    assert_eq!(data[0]["input_cached_tokens"], "352"); // 250 + 100 + 2
    assert_eq!(data[0]["output_tokens"], "241");
    assert_eq!(data[0]["num_model_requests"], "8");
    assert_eq!(data[2]["input_tokens"], "50");
    assert_eq!(v["summary"]["input_tokens"], "3460");
    assert_eq!(v["summary"]["num_model_requests"], "18");
    assert_eq!(v["summary"]["rows"], 3);

    let v: Value = get("from=2025-10-01&to=2025-10-09&project_id=proj_b&model=gpt-4o")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["day"], "2025-10-08");
    assert_eq!(v["summary"]["input_tokens"], "2000");

    let v: Value = get("from=2025-10-07&to=2025-10-07&batch=false&group_by=api_key_id")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["api_key_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["key_1", "key_2"]);
    let v: Value = get("from=2025-10-07&to=2025-10-09&service_tier=default&api_key_id=key_1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["summary"]["input_tokens"], "3000");

    let r = get("from=2025-10-07&to=2025-10-09&format=csv&limit=2")
        .await
        .unwrap();
    assert_eq!(r.headers()["x-next-offset"], "2");
    assert_eq!(r.headers()["x-total-rows"], "3");
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("day,input_tokens,input_cached_tokens,"));
    assert!(lines[1].starts_with("2025-10-07,1410,352,"));
    let r = get("from=2025-10-07&to=2025-10-09&format=csv&limit=2&offset=2")
        .await
        .unwrap();
    assert!(r.headers().get("x-next-offset").is_none());
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.lines().nth(1).unwrap().starts_with("2025-10-09,50,"));

    let r = get("from=2025-10-09&to=2025-10-01").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = get("from=yesterday").await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn keys_are_managed_masked_and_never_stored_or_logged_in_plaintext() {
    let (logs, _guard) = capture_logs();
    let ts = sqlite_store();
    let fake = Fake::start(31).await;
    seed(&fake);
    let (base, ing) = serve(&ts, Some("c")).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/provider-keys");

    let r = http
        .post(&url)
        .bearer_auth(USER_TOKEN)
        .json(&json!({"provider":"openai","name":"org","admin_key":ADMIN_KEY,"base_url":fake.base_url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let text = r.text().await.unwrap();
    assert!(!text.contains(ADMIN_KEY));
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["masked_key"], "sk-admin-…CRET");
    assert_eq!(created["enabled"], true);
    let id = created["id"].as_i64().unwrap();

    let r = http
        .post(&url)
        .bearer_auth("tlu_wrong")
        .json(&json!({"provider":"openai","name":"x","admin_key":"sk-admin-zzzzzzzzzzzzzzzzzzzz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The key works: the pull decrypts it and the fake accepts it.
    let tel = ing.pull_user(ts.user_id, TODAY, &|_| {}).await.unwrap();
    assert!(tel.errors.is_empty(), "{:?}", tel.errors);
    assert_eq!(tel.inserted, 5);

    let list: Value = http
        .get(&url)
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["masked_key"], "sk-admin-…CRET");
    assert!(!list.to_string().contains(ADMIN_KEY));

    // Disabled keys are not pulled.
    let r = http
        .post(format!("{url}/{id}/disable"))
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let tel = ing.pull_user(ts.user_id, TODAY, &|_| {}).await.unwrap();
    assert_eq!(tel.keys_processed, 0);
    let r = http
        .post(format!("{url}/{id}/enable"))
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let tel = ing.pull_user(ts.user_id, TODAY, &|_| {}).await.unwrap();
    assert_eq!(tel.keys_processed, 1);

    // Nothing on disk or in the logs holds the key.
    let db = ts.db_path.clone().unwrap();
    let mut bytes = std::fs::read(&db).unwrap();
    if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    let needle = b"TESTKEY0123456789";
    assert!(bytes.len() > 4096);
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    assert!(bytes.windows(b"sk-admin-".len()).any(|w| w == b"sk-admin-")); // the masked form
    let text = logs.text();
    assert!(text.contains("provider key added"), "{text}");
    assert!(!text.contains("TESTKEY0123456789"), "{text}");

    let r = http
        .delete(format!("{url}/{id}"))
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .delete(format!("{url}/{id}"))
        .bearer_auth(USER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(totals(ts.store.as_ref(), ts.user_id).await.1, 0);
}
