//! `skuflow status` on the real stack: per upload, what ingest accepted and what the warehouse,
//! the finance lines, the search indexes (the Elasticsearch double: no Elasticsearch can be
//! installed here) and the Parquet dataset hold, read from the sinks; a correction shows as
//! superseded rows, a sink that lost rows as a mismatch with a non-zero exit.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{bin, upload_local, Pipeline};
use serde_json::Value;
use skuflow_e2e::es_double::EsDouble;
use skuflow_e2e::sample_rows;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_each_upload_into_every_sink_and_flags_lost_rows() {
    let mut p = Pipeline::new().await;
    let dir = tempfile::tempdir().unwrap();
    let buckets = dir.path().join("buckets");
    let datasets = dir.path().join("datasets");
    // Two uploads of 200 rows (every 10th invalid), then a correction of 15 rows of the first.
    let first = sample_rows(31, 200, 10, "EUR", "2026-11-20");
    let second = sample_rows(32, 200, 10, "EUR", "2026-11-20");
    upload_local(
        &buckets,
        "skus-de",
        "incoming/individual/s1/2026-11-20/a.csv",
        &first,
    );
    upload_local(
        &buckets,
        "skus-de",
        "incoming/individual/s2/2026-11-20/b.csv",
        &second,
    );
    let fix = skuflow_e2e::corrected_rows(&first, 15, "1");
    let fixed = upload_local(
        &buckets,
        "skus-de",
        "incoming/individual/s1/2026-11-20/fix.csv",
        &fix,
    );
    std::fs::File::options()
        .write(true)
        .open(&fixed)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();

    let es = EsDouble::start().await;
    let es_arg = format!("--es-url={}", es.url);
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_loader(&[]);
    p.start_indexer(&es.url, &[], &[]);
    p.start_reporter(&[]);
    p.start_builder(&[
        format!("--group=skuflow-dataset-builder-{}", p.id),
        format!("--dataset-root={}", datasets.display()),
        "--flush-interval-ms=300".into(),
    ]);

    let mut last = (0, Value::Null, String::new());
    let done = common::wait_until(Duration::from_secs(180), || {
        last = p.status_json(&datasets, &[&es_arg]);
        last.0 == 0
            && last
                .1
                .as_array()
                .is_some_and(|a| {
                    a.len() == 3
                        && a.iter().all(|f| f["status"] == "complete")
                        // Sinks can agree on a count while still loading: wait for the end state.
                        && a.iter().map(|f| f["superseded"].as_u64().unwrap_or(0)).sum::<u64>() == 15
                })
    });
    assert!(done, "status never all complete:\n{}\n{}", last.2, p.logs());
    let files = last.1.as_array().unwrap();
    let by_key = |k: &str| {
        files
            .iter()
            .find(|f| f["key"].as_str().unwrap().ends_with(k))
            .unwrap()
    };
    let (a, b, fx) = (by_key("/a.csv"), by_key("/b.csv"), by_key("/fix.csv"));
    for f in [a, b] {
        assert_eq!(f["rows_valid"], 180);
        assert_eq!(f["rows_rejected"], 20);
        assert_eq!(f["lifecycle"], "completed");
    }
    // The correction replaced 15 rows of a.csv in every sink.
    assert_eq!(a["superseded"], 15);
    assert_eq!(
        a["sinks"].as_object().unwrap().len(),
        4,
        "every sink counted: {a}"
    );
    for s in ["warehouse", "finance", "search", "dataset"] {
        assert_eq!(a["sinks"][s], 165, "{s}: {a}");
        assert_eq!(b["sinks"][s], 180, "{s}: {b}");
        assert_eq!(fx["sinks"][s], 15, "{s}: {fx}");
    }
    assert_eq!(b["superseded"], 0);

    // The same answer from the loader's upload history instead of the topic (its times are
    // PostgreSQL's, to the microsecond).
    let without_time = |v: &Value| {
        let mut v = v.clone();
        for f in v.as_array_mut().unwrap() {
            f.as_object_mut().unwrap().remove("at");
        }
        v
    };
    let mut from_table = (0, Value::Null, String::new());
    let same = common::wait_until(Duration::from_secs(60), || {
        from_table = p.status_json(&datasets, &[&es_arg, "--from=table"]);
        from_table.0 == 0 && without_time(&from_table.1) == without_time(&last.1)
    });
    assert!(
        same,
        "--from=table differs:\n{}\ntopic:\n{}",
        from_table.2, last.2
    );
    for (t, k) in from_table.1.as_array().unwrap().iter().zip(files) {
        let at =
            |f: &Value| chrono::DateTime::parse_from_rfc3339(f["at"].as_str().unwrap()).unwrap();
        assert!(
            (at(t) - at(k)).num_microseconds().unwrap().abs() < 1,
            "{t} {k}"
        );
    }

    // One file only.
    let (code, one, text) = p.status_json(
        &datasets,
        &[
            &es_arg,
            "--file=skus-de/incoming/individual/s2/2026-11-20/b.csv",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{text}");

    // The warehouse loses 7 rows of b.csv: a mismatch, and a non-zero exit.
    let db = p.db().await;
    let file_b = b["file_id"].as_str().unwrap().to_string();
    let gone = db
        .execute(
            "DELETE FROM skuflow.sku_facts WHERE ctid IN (SELECT ctid FROM skuflow.sku_facts WHERE file_id = $1 LIMIT 7)",
            &[&file_b],
        )
        .await
        .unwrap();
    assert_eq!(gone, 7);
    // And the search indexes lose 4 documents of it.
    let dropped = es.with(|s| {
        let ids: Vec<_> = s
            .records()
            .filter(|(_, d)| d.source["file_id"] == file_b.as_str())
            .map(|(k, _)| k.clone())
            .take(4)
            .collect();
        for k in &ids {
            s.docs.remove(k);
        }
        ids.len()
    });
    assert_eq!(dropped, 4);
    let (code, after, text) = p.status_json(&datasets, &[&es_arg]);
    assert_eq!(code, 1, "{text}");
    let b = after
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file_id"] == file_b.as_str())
        .unwrap();
    assert_eq!(b["status"], "mismatch");
    assert_eq!(
        b["problems"],
        serde_json::json!(["search is missing 4 rows", "warehouse is missing 7 rows"])
    );
    assert_eq!(b["sinks"]["search"], 176);
    assert!(
        es.with(|s| s.violations.is_empty()),
        "{:?}",
        es.with(|s| s.violations.clone())
    );
    // The text form says the same.
    let out = Command::new(bin("skuflow"))
        .args([
            "status",
            "--grace-secs=0",
            &format!("--brokers={}", p.stack.brokers),
            &format!("--files-topic={}", p.topics.files),
            &format!("--dataset-root={}", datasets.display()),
        ])
        .env("SKUFLOW_PG_URL", &p.db_url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("! warehouse is missing 7 rows"), "{text}");
    assert!(
        text.contains("3 files: 2 complete, 0 in flight, 0 failed, 1 mismatched"),
        "{text}"
    );
}
