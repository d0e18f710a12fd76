//! Parity against hand-made OpenAI usage CSV exports.

mod common;

use common::*;
use jiff::civil::date;
use std::path::PathBuf;
use tokenledger_provider::model::{day_start, Counters, Dimensions, UsageRecord, UsageWindow};
use tokenledger_provider::parity::{run, ParityOptions};
use tokenledger_provider::Error;

const HEADER: &str = "start_time,end_time,start_time_iso,end_time_iso,project_id,num_model_requests,user_id,api_key_id,model,batch,service_tier,input_tokens,output_tokens,input_cached_tokens,input_uncached_tokens,input_text_tokens,output_text_tokens,input_cached_text_tokens,input_audio_tokens,input_cached_audio_tokens,output_audio_tokens,input_image_tokens,input_cached_image_tokens,output_image_tokens";

fn rec(project: &str, key: &str, model: &str, input: u64, output: u64, reqs: u64) -> UsageRecord {
    let mut c = Counters::default();
    c.set("input_tokens", input);
    c.set("output_tokens", output);
    c.set("input_cached_tokens", input / 2);
    c.set("num_model_requests", reqs);
    UsageRecord {
        dims: Dimensions {
            project_id: Some(project.into()),
            api_key_id: Some(key.into()),
            model: Some(model.into()),
            service_tier: Some("default".into()),
            batch: Some(false),
            ..Default::default()
        },
        counters: c,
    }
}

async fn seeded() -> TestStore {
    let ts = sqlite_store();
    let ing = ingestor(ts.store.clone(), Default::default(), 1);
    let key = add_key(&ing, ts.user_id, "http://127.0.0.1:9").await;
    let day = |d| (day_start(d), day_start(d) + 86_400);
    let w = |d, records| {
        let (start, end) = day(d);
        UsageWindow {
            start,
            end,
            records,
        }
    };
    let windows = vec![
        w(
            date(2025, 9, 1),
            vec![
                rec("proj_a", "key_1", "gpt-4o", 1000, 100, 4),
                rec("proj_a", "key_2", "gpt-4o", 100_000, 10, 1),
            ],
        ),
        // Two service tiers of one group: summed before comparison.
        w(
            date(2025, 9, 2),
            vec![rec("proj_b", "key_1", "o3", 300, 30, 2), {
                let mut r = rec("proj_b", "key_1", "o3", 200, 20, 1);
                r.dims.service_tier = Some("flex".into());
                r
            }],
        ),
        w(
            date(2025, 9, 3),
            vec![rec("proj_a", "key_1", "gpt-4o", 50, 5, 1)],
        ),
    ];
    ts.store
        .replace_windows(ts.user_id, key, &windows, 0)
        .await
        .unwrap();
    ts
}

/// A CSV row: (start epoch or "", iso or "", project, key, model, input, output, requests).
#[allow(clippy::too_many_arguments)]
fn row(
    start: &str,
    iso: &str,
    p: &str,
    k: &str,
    m: &str,
    input: u64,
    output: u64,
    reqs: u64,
) -> String {
    format!(
        "{start},,{iso},,{p},{reqs},,{k},{m},false,default,{input},{output},{},0,0,0,0,0,0,0,0,0,0",
        input / 2
    )
}

fn write_csv(dir: &tempfile::TempDir, name: &str, rows: &[String]) -> PathBuf {
    let path = dir.path().join(name);
    let mut s = format!("{HEADER}\n");
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    std::fs::write(&path, s).unwrap();
    path
}

fn epoch(y: i16, m: i8, d: i8, h: i64) -> String {
    (day_start(date(y, m, d)) + h * 3600).to_string()
}

fn matching_rows() -> Vec<String> {
    vec![
        row(
            &epoch(2025, 9, 1, 0),
            "",
            "proj_a",
            "key_1",
            "gpt-4o",
            1000,
            100,
            4,
        ),
        row(
            &epoch(2025, 9, 1, 0),
            "",
            "proj_a",
            "key_2",
            "gpt-4o",
            100_000,
            10,
            1,
        ),
        // Hourly rows of Sept 2, one given only as a +02:00 ISO time (23:00 UTC).
        row(
            &epoch(2025, 9, 2, 10),
            "",
            "proj_b",
            "key_1",
            "o3",
            400,
            40,
            2,
        ),
        row(
            "",
            "2025-09-03T01:00:00+02:00",
            "proj_b",
            "key_1",
            "o3",
            100,
            10,
            1,
        ),
        row(
            &epoch(2025, 9, 3, 0),
            "",
            "proj_a",
            "key_1",
            "gpt-4o",
            50,
            5,
            1,
        ),
        // Zero tokens, no metadata: ignored.
        row(&epoch(2025, 9, 3, 0), "", "", "", "", 0, 0, 0),
    ]
}

#[tokio::test]
async fn equal_data_passes() {
    let ts = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = write_csv(
        &dir,
        "completions_usage_2025-09-01_2025-09-04.csv",
        &matching_rows(),
    );
    let rep = run(
        ts.store.as_ref(),
        ts.user_id,
        &[csv],
        &ParityOptions::default(),
    )
    .await
    .unwrap();
    assert!(rep.is_match(), "{}", rep.render());
    assert_eq!(rep.csv_rows, 6);
    assert_eq!(rep.csv_rows_ignored, 1);
    assert_eq!(rep.windows_compared, 4);
    assert_eq!(
        (rep.from, rep.to),
        (Some(date(2025, 9, 1)), Some(date(2025, 9, 3)))
    );
    assert_eq!(rep.grouped_by, ["project_id", "api_key_id", "model"]);
    assert_eq!(rep.metrics.len(), 14); // every counter but input_cache_write_tokens
}

#[tokio::test]
async fn a_missing_day_is_reported() {
    let ts = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let mut rows = matching_rows();
    rows.retain(|r| !r.starts_with(&epoch(2025, 9, 3, 0)));
    let csv = write_csv(&dir, "a.csv", &rows);
    let opts = ParityOptions {
        from: Some(date(2025, 9, 1)),
        to: Some(date(2025, 9, 3)),
        ..Default::default()
    };
    let rep = run(ts.store.as_ref(), ts.user_id, &[csv], &opts)
        .await
        .unwrap();
    assert!(!rep.is_match());
    assert_eq!(rep.missing_in_csv.len(), 1);
    assert_eq!(rep.missing_in_csv[0].day, date(2025, 9, 3));
    assert!(rep.missing_in_store.is_empty());
    assert!(rep.variances.is_empty());
    assert!(rep
        .render()
        .contains("2025-09-03 project=proj_a key=key_1 model=gpt-4o"));
}

#[tokio::test]
async fn an_extra_key_in_the_export_is_reported() {
    let ts = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let mut rows = matching_rows();
    rows.push(row(
        &epoch(2025, 9, 2, 0),
        "",
        "proj_b",
        "key_9",
        "o3",
        70,
        7,
        1,
    ));
    let csv = write_csv(&dir, "a.csv", &rows);
    let rep = run(
        ts.store.as_ref(),
        ts.user_id,
        &[csv],
        &ParityOptions::default(),
    )
    .await
    .unwrap();
    assert!(!rep.is_match());
    assert_eq!(rep.missing_in_store.len(), 1);
    assert_eq!(rep.missing_in_store[0].api_key_id.as_deref(), Some("key_9"));
    // The day's totals differ too.
    assert!(rep.day_variances.iter().any(|v| v.day == date(2025, 9, 2)
        && v.metric == "input_tokens"
        && v.csv == 570
        && v.stored == 500));
}

#[tokio::test]
async fn variances_above_the_threshold_are_reported_and_below_are_not() {
    let ts = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let mut rows = matching_rows();
    // 1001 vs 1000 (0.1 %) is over; 100001 vs 100000 (0.001 %) is under 0.01 %.
    rows[0] = row(
        &epoch(2025, 9, 1, 0),
        "",
        "proj_a",
        "key_1",
        "gpt-4o",
        1001,
        100,
        4,
    );
    rows[1] = row(
        &epoch(2025, 9, 1, 0),
        "",
        "proj_a",
        "key_2",
        "gpt-4o",
        100_001,
        10,
        1,
    );
    let csv = write_csv(&dir, "a.csv", &rows);
    let json_path = dir.path().join("report.json");
    let rep = run(
        ts.store.as_ref(),
        ts.user_id,
        &[csv],
        &ParityOptions::default(),
    )
    .await
    .unwrap();
    assert!(!rep.is_match());
    assert_eq!(rep.variances.len(), 1, "{}", rep.render());
    let v = &rep.variances[0];
    assert_eq!((v.metric, v.csv, v.stored), ("input_tokens", 1001, 1000));
    assert_eq!(v.key.api_key_id.as_deref(), Some("key_1"));
    assert!(rep.missing_in_csv.is_empty() && rep.missing_in_store.is_empty());
    std::fs::write(&json_path, serde_json::to_string_pretty(&rep).unwrap()).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(j["status"], "mismatch");
    assert_eq!(j["variances"][0]["day"], "2025-09-01");
    assert_eq!(j["variances"][0]["metric"], "input_tokens");

    // A looser threshold accepts it.
    let loose = ParityOptions {
        threshold: 0.01,
        ..Default::default()
    };
    let csv = dir.path().join("a.csv");
    let rep = run(ts.store.as_ref(), ts.user_id, &[csv], &loose)
        .await
        .unwrap();
    assert!(rep.is_match(), "{}", rep.render());
}

#[tokio::test]
async fn bad_input_is_an_invalid_error() {
    let ts = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    let e = run(
        ts.store.as_ref(),
        ts.user_id,
        &[missing],
        &ParityOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "a,b\n1,2\n").unwrap();
    let e = run(
        ts.store.as_ref(),
        ts.user_id,
        &[other],
        &ParityOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no start_time"), "{e}");
    // An empty export (header only) over a stored range lists the stored days as missing.
    let empty = dir
        .path()
        .join("completions_usage_2025-09-01_2025-09-04.csv");
    std::fs::write(&empty, "start_time,end_time,start_time_iso,end_time_iso\n").unwrap();
    let rep = run(
        ts.store.as_ref(),
        ts.user_id,
        &[empty],
        &ParityOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(rep.missing_in_csv.len(), 3);
    assert_eq!(rep.missing_in_csv[2].day, date(2025, 9, 3));
}
