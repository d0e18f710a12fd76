//! The real OpenAI client against a local fake API: pagination, grouping, nulls, retries,
//! malformed bodies, corrected days, backfill interruption, retention.

mod common;

use common::*;
use jiff::civil::{date, Date};
use std::sync::Arc;
use std::time::Duration;
use tokenledger_provider::ingest::{cursor_name, BackfillRequest};
use tokenledger_provider::model::{day_start, Dimensions};
use tokenledger_provider::retry::RecordingSleeper;

const TODAY: Date = date(2025, 10, 10);

fn no_sink() -> impl Fn(&tokenledger_provider::ingest::ChunkReport) + Send + Sync {
    |_| {}
}

/// Three days, several groups per day, some dimensions null.
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
        vec![
            result(Some("proj_a"), Some("key_1"), Some("gpt-4o"), 100, 20, 1),
            result(Some("proj_b"), Some("key_3"), Some("o3"), 50, 5, 1),
        ],
    );
}

#[tokio::test]
async fn pull_follows_pages_and_stores_every_group_with_nulls() {
    for ts in stores().await {
        let fake = Fake::start(2).await;
        seed(&fake);
        let ing = ingestor(ts.store.clone(), Arc::new(RecordingSleeper::default()), 3);
        let key = add_key(&ing, ts.user_id, &fake.base_url).await;

        let tel = ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();
        assert!(tel.errors.is_empty(), "{}: {:?}", ts.name, tel.errors);
        // 35 retained days (today included), 2 buckets per page: 18 requests over 2 chunks.
        assert_eq!(tel.windows_processed, 35, "{}", ts.name);
        assert_eq!(tel.inserted, 6);
        assert_eq!((tel.updated, tel.unchanged, tel.failed), (0, 0, 0));
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 18);
        let first = &reqs[0];
        assert_eq!(Fake::param(first, "bucket_width").as_deref(), Some("1d"));
        assert_eq!(
            Fake::param(first, "start_time").unwrap(),
            day_start(date(2025, 9, 6)).to_string()
        );
        let groups: Vec<&str> = first
            .iter()
            .filter(|(k, _)| k == "group_by")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            groups,
            [
                "project_id",
                "user_id",
                "api_key_id",
                "model",
                "batch",
                "service_tier"
            ]
        );
        assert_eq!(Fake::param(&reqs[1], "page").as_deref(), Some("page_2"));

        let (sum, n) = totals(ts.store.as_ref(), ts.user_id).await;
        assert_eq!(n, 6);
        assert_eq!(sum[0], 1000 + 400 + 10 + 2000 + 100 + 50); // input_tokens
        assert_eq!(sum[4], 200 + 40 + 1 + 300 + 20 + 5); // output_tokens
        assert_eq!(sum[14], 5 + 2 + 1 + 9 + 1 + 1); // num_model_requests
        let rows = ts
            .store
            .usage_rows(
                ts.user_id,
                &tokenledger_provider::store::UsageQuery {
                    from: day_start(date(2025, 10, 7)),
                    to: day_start(date(2025, 10, 8)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().any(|r| r.dims == Dimensions::default()));
        assert!(rows.iter().any(|r| r.dims.batch == Some(false)
            && r.dims.service_tier.as_deref() == Some("default")
            && r.dims.api_key_id.as_deref() == Some("key_2")));

        let cur = ts
            .store
            .cursor(ts.user_id, key, &cursor_name("usage/completions", key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cur.name, format!("usage/completions:key_{key}"));
        assert_eq!(cur.last_complete_day, Some(date(2025, 10, 9)));
        assert_eq!((cur.next_page, cur.error_count), (None, 0));

        // A re-run changes nothing (the last 2 complete days and today are re-read).
        let again = ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();
        assert_eq!((again.inserted, again.updated, again.deleted), (0, 0, 0));
        assert_eq!(again.unchanged, 3);
        assert_eq!(again.windows_processed, 3);
        assert_eq!(totals(ts.store.as_ref(), ts.user_id).await, (sum, 6));
    }
}

#[tokio::test]
async fn rate_limit_and_server_error_are_retried() {
    let ts = sqlite_store();
    let fake = Fake::start(31).await;
    seed(&fake);
    fake.script(Scripted::Status(429, Some("7")));
    fake.script(Scripted::Status(500, None));
    let sleeper = Arc::new(RecordingSleeper::default());
    let ing = ingestor(ts.store.clone(), sleeper.clone(), 3);
    add_key(&ing, ts.user_id, &fake.base_url).await;
    let tel = ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();
    assert!(tel.errors.is_empty(), "{:?}", tel.errors);
    assert_eq!(tel.inserted, 6);
    // Retry-After honoured, then the first backoff step.
    assert_eq!(
        sleeper.slept(),
        [Duration::from_secs(7), Duration::from_secs(1)]
    );
    assert_eq!(fake.requests().len(), 2 + 2);
}

#[tokio::test]
async fn rate_limit_exhausted_is_reported_with_a_code() {
    let ts = sqlite_store();
    let fake = Fake::start(31).await;
    for _ in 0..3 {
        fake.script(Scripted::Status(429, Some("2")));
    }
    let sleeper = Arc::new(RecordingSleeper::default());
    let ing = ingestor(ts.store.clone(), sleeper.clone(), 3);
    add_key(&ing, ts.user_id, &fake.base_url).await;
    let tel = ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();
    assert_eq!(tel.errors.len(), 1);
    assert_eq!(tel.errors[0].code, "rate_limited");
    assert_eq!(tel.failed, 35);
    assert_eq!(
        sleeper.slept(),
        [Duration::from_secs(2), Duration::from_secs(2)]
    );
}

#[tokio::test]
async fn malformed_body_is_a_clear_error_and_the_cursor_stays() {
    for ts in stores().await {
        let fake = Fake::start(31).await;
        seed(&fake);
        let ing = ingestor(ts.store.clone(), Arc::new(RecordingSleeper::default()), 3);
        let key = add_key(&ing, ts.user_id, &fake.base_url).await;
        ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();
        let before = totals(ts.store.as_ref(), ts.user_id).await;

        fake.script(Scripted::Body(r#"{"object":"page","data":[{"object":"bucket","start_time":1,"end_time":2}],"has_more":false,"next_page":null}"#));
        let next_day = date(2025, 10, 12);
        let tel = ing
            .pull_user(ts.user_id, next_day, &no_sink())
            .await
            .unwrap();
        assert_eq!(tel.errors.len(), 1, "{}", ts.name);
        assert_eq!(tel.errors[0].code, "malformed_response");
        assert!(
            tel.errors[0].message.contains("no `results` array"),
            "{}",
            tel.errors[0].message
        );
        assert_eq!(tel.inserted + tel.updated + tel.windows_processed, 0);
        let cur = ts
            .store
            .cursor(ts.user_id, key, &cursor_name("usage/completions", key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cur.last_complete_day, Some(date(2025, 10, 9)));
        assert_eq!(cur.error_count, 1);
        assert!(cur.last_error.unwrap().starts_with("malformed_response"));
        assert_eq!(totals(ts.store.as_ref(), ts.user_id).await, before);

        // The next good pull catches up and clears the error count.
        let tel = ing
            .pull_user(ts.user_id, next_day, &no_sink())
            .await
            .unwrap();
        assert!(tel.errors.is_empty());
        let cur = ts
            .store
            .cursor(ts.user_id, key, &cursor_name("usage/completions", key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cur.last_complete_day, Some(date(2025, 10, 11)));
        assert_eq!(cur.error_count, 0);
    }
}

#[tokio::test]
async fn a_corrected_day_replaces_the_old_numbers() {
    for ts in stores().await {
        let fake = Fake::start(31).await;
        seed(&fake);
        let ing = ingestor(ts.store.clone(), Arc::new(RecordingSleeper::default()), 3);
        add_key(&ing, ts.user_id, &fake.base_url).await;
        ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();

        // The provider corrects Oct 9: one group's numbers change, the other disappears.
        fake.set_day(
            date(2025, 10, 9),
            vec![result(
                Some("proj_a"),
                Some("key_1"),
                Some("gpt-4o"),
                150,
                25,
                2,
            )],
        );
        let tel = ing.pull_user(ts.user_id, TODAY, &no_sink()).await.unwrap();
        assert_eq!(
            (tel.inserted, tel.updated, tel.deleted),
            (0, 1, 1),
            "{}",
            ts.name
        );
        let (sum, n) = totals(ts.store.as_ref(), ts.user_id).await;
        assert_eq!(n, 5);
        assert_eq!(sum[0], 1000 + 400 + 10 + 2000 + 150);
        assert_eq!(sum[14], 5 + 2 + 1 + 9 + 2);
    }
}

fn many_days(fake: &Fake, from: Date, days: i64) {
    for i in 0..days {
        let d = tokenledger_provider::model::add_days(from, i);
        fake.set_day(
            d,
            vec![
                result(
                    Some("proj_a"),
                    Some("key_1"),
                    Some("gpt-4o"),
                    100 + i as u64,
                    10,
                    1,
                ),
                result(Some("proj_b"), None, Some("o3"), 7 * i as u64, 3, 2),
            ],
        );
    }
}

#[tokio::test]
async fn backfill_interrupted_then_resumed_matches_a_clean_run() {
    let start = date(2025, 9, 10);
    let end = date(2025, 10, 1);
    let req = BackfillRequest {
        start,
        end,
        chunk_days: 5,
        label: "sept".into(),
        key: None,
    };
    // The clean run.
    let clean = sqlite_store();
    let fake = Fake::start(3).await;
    many_days(&fake, start, 22);
    let ing = ingestor(
        clean.store.clone(),
        Arc::new(RecordingSleeper::default()),
        2,
    );
    add_key(&ing, clean.user_id, &fake.base_url).await;
    let tel = ing
        .backfill(clean.user_id, &req, TODAY, &no_sink())
        .await
        .unwrap();
    assert!(tel.errors.is_empty());
    assert_eq!(tel.windows_processed, 22);
    let clean_totals = totals(clean.store.as_ref(), clean.user_id).await;
    assert_eq!(clean_totals.1, 44);

    for ts in stores().await {
        let fake = Fake::start(3).await;
        many_days(&fake, start, 22);
        // Dies in the middle of the third chunk's pages (request 6 of 10).
        *fake.state.fail_after.lock().unwrap() = Some(5);
        let ing = ingestor(ts.store.clone(), Arc::new(RecordingSleeper::default()), 2);
        let key = add_key(&ing, ts.user_id, &fake.base_url).await;
        let chunks = std::sync::Mutex::new(Vec::new());
        let sink = |c: &tokenledger_provider::ingest::ChunkReport| {
            chunks.lock().unwrap().push(c.clone());
        };
        let tel = ing.backfill(ts.user_id, &req, TODAY, &sink).await.unwrap();
        assert_eq!(tel.errors.len(), 1, "{}", ts.name);
        assert_eq!(tel.errors[0].code, "server_error");
        // Chunks 1-2 (10 days) and the first page of chunk 3 (3 days) were stored.
        assert_eq!(tel.windows_processed, 13);
        assert_eq!(tel.failed, 22 - 13);
        let reports = chunks.lock().unwrap().clone();
        assert_eq!(reports.len(), 3);
        assert_eq!(reports[2].error.as_deref(), Some("server_error"));
        assert_eq!((reports[2].windows_processed, reports[2].failed), (3, 2));
        let cur = ts
            .store
            .cursor(
                ts.user_id,
                key,
                &format!("usage/completions:key_{key}:backfill_sept"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cur.last_complete_day, Some(date(2025, 9, 22)));
        assert_eq!(cur.next_page.as_deref(), Some("page_3"));
        assert_eq!(cur.error_count, 1);

        // Restart: it continues from the recorded page, then the remaining chunks.
        *fake.state.fail_after.lock().unwrap() = None;
        let seen = fake.requests().len();
        let tel = ing
            .backfill(ts.user_id, &req, TODAY, &no_sink())
            .await
            .unwrap();
        assert!(tel.errors.is_empty(), "{:?}", tel.errors);
        assert_eq!(tel.windows_processed, 9);
        assert_eq!(tel.inserted, 18);
        let resumed = &fake.requests()[seen];
        assert_eq!(Fake::param(resumed, "page").as_deref(), Some("page_3"));
        assert_eq!(
            Fake::param(resumed, "start_time").unwrap(),
            day_start(date(2025, 9, 20)).to_string()
        );
        assert_eq!(
            totals(ts.store.as_ref(), ts.user_id).await,
            clean_totals,
            "{}",
            ts.name
        );

        // Running the finished label again fetches nothing.
        let seen = fake.requests().len();
        let tel = ing
            .backfill(ts.user_id, &req, TODAY, &no_sink())
            .await
            .unwrap();
        assert_eq!((tel.windows_processed, tel.failed), (0, 0));
        assert_eq!(fake.requests().len(), seen);
    }
}

#[tokio::test]
async fn backfill_before_the_retention_window_says_so_and_pull_prunes() {
    let ts = sqlite_store();
    let fake = Fake::start(31).await;
    many_days(&fake, date(2025, 8, 1), 70);
    let ing = ingestor(ts.store.clone(), Arc::new(RecordingSleeper::default()), 2);
    add_key(&ing, ts.user_id, &fake.base_url).await;
    let (logs, _guard) = capture_logs();
    let req = BackfillRequest {
        start: date(2025, 8, 27),
        end: date(2025, 9, 9),
        chunk_days: 7,
        label: "old".into(),
        key: None,
    };
    let tel = ing
        .backfill(ts.user_id, &req, TODAY, &no_sink())
        .await
        .unwrap();
    // The window keeps 2025-09-06..=2025-10-10: 10 of the 14 days are outside, said so, and
    // stored all the same (asked for explicitly, e.g. for parity with an old export).
    assert_eq!(tel.days_outside_retention, 10);
    assert_eq!(tel.windows_processed, 14);
    assert_eq!(tel.pruned, 0);
    assert!(logs.text().contains("retention window"), "{}", logs.text());
    let (_, n) = totals(ts.store.as_ref(), ts.user_id).await;
    assert_eq!(n, 28);

    // Ten days later, the pull prunes what fell out of the window.
    let tel = ing
        .pull_user(ts.user_id, date(2025, 10, 20), &no_sink())
        .await
        .unwrap();
    assert!(tel.errors.is_empty());
    assert_eq!(tel.pruned, 28);
    let rows = ts
        .store
        .usage_rows(
            ts.user_id,
            &tokenledger_provider::store::UsageQuery {
                from: 0,
                to: i64::MAX,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 24 * 2); // the data ends on 2025-10-09
    assert_eq!(rows[0].window_start, day_start(date(2025, 9, 16)));
}
