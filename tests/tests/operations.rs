//! What operators rely on, on the real stack: `/metrics`, `/healthz` and `/readyz` of the
//! binaries (readiness follows the sink going away and coming back), JSON logs with no secret
//! in any line, and a SIGTERM that ends the process within its time limit without losing or
//! doubling a row.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{metric, produce, record, upload_local, wait_until, Pipeline, TempPostgres};
use skuflow_e2e::sample_rows;

const WAIT: Duration = Duration::from_secs(120);

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Every log line of every child is one JSON object with a timestamp, a level and a message,
/// and none contains any of `secrets`.
fn assert_json_logs_without(p: &Pipeline, secrets: &[&str]) {
    let all = p.logs();
    // The broker's own log comes last; it is not skuflow's.
    let logs = all.split("== broker log").next().unwrap_or_default();
    let mut lines = 0;
    for line in logs
        .lines()
        .filter(|l| !l.starts_with("== ") && !l.is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "message"] {
            assert!(v.get(field).is_some(), "no {field} in log line: {line}");
        }
        lines += 1;
    }
    assert!(lines > 5, "too few log lines:\n{logs}");
    for s in secrets {
        assert!(!logs.contains(s), "a secret appears in the logs:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_follow_the_pipeline_and_the_sink() {
    let pg = TempPostgres::start();
    let mut p = Pipeline::new().await;
    let password = format!("pw-{}-Xq7", p.id);
    // Trust authentication accepts any password: the test is that it never reaches a log.
    p.use_database(
        &pg.url()
            .replace("postgres@", &format!("postgres:{password}@")),
    );
    p.child_env
        .push(("SKUFLOW_LOG_FORMAT".into(), "json".into()));
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let rows = sample_rows(41, 300, 10, "EUR", "2026-11-20");
    let key = "incoming/individual/store-9/2026-11-20/skus.csv";
    upload_local(&buckets, "skus-nl", key, &rows);
    let valid = rows.iter().filter(|r| r.valid).count() as i64;
    let rejected = rows.len() as i64 - valid;

    let ingest = p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    let loader = p.start_loader(&["--batch-size=100".into()]);
    let sql = "SELECT count(*) FROM skuflow.sku_facts";
    p.expect_count(sql, valid, WAIT).await;

    for (i, name) in [(ingest, "ingest"), (loader, "warehouse-loader")] {
        let (status, body) = p.ops_get(i, "/healthz");
        assert_eq!(
            (status, json(&body)["status"].as_str()),
            (200, Some("alive")),
            "{name}"
        );
        assert!(
            wait_until(Duration::from_secs(30), || p.ops_get(i, "/readyz").0 == 200),
            "{name} never ready: {:?}",
            p.ops_get(i, "/readyz")
        );
        let ready = json(&p.ops_get(i, "/readyz").1);
        assert_eq!(ready["ready"], true);
        assert_eq!(ready["checks"]["broker"]["ok"], true, "{name}: {ready}");
    }
    assert_eq!(
        json(&p.ops_get(ingest, "/readyz").1)["checks"]["store"]["ok"],
        true
    );
    assert_eq!(
        json(&p.ops_get(loader, "/readyz").1)["checks"]["sink"]["ok"],
        true
    );

    let m = p.ops_get(ingest, "/metrics").1;
    let c = ("component", "ingest");
    // When the store last uploaded: the object's modification time, minutes ago at most.
    let now = chrono::Utc::now().timestamp() as f64;
    let last = metric(
        &m,
        "skuflow_store_last_upload_timestamp_seconds",
        &[c, ("country", "NL"), ("store_id", "store-9")],
    )
    .expect("the store's last upload time");
    assert!((now - 600.0..=now).contains(&last), "{last} {now}");
    assert_eq!(
        metric(&m, "skuflow_files_total", &[c, ("outcome", "completed")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "skuflow_records_received_total",
            &[c, ("source", "uploads")]
        ),
        Some(rows.len() as f64)
    );
    assert_eq!(
        metric(
            &m,
            "skuflow_records_sent_total",
            &[c, ("destination", &p.topics.records)]
        ),
        Some(valid as f64)
    );
    assert_eq!(
        metric(
            &m,
            "skuflow_records_failed_total",
            &[c, ("reason", "rejected")]
        ),
        Some(rejected as f64)
    );
    assert_eq!(
        metric(
            &m,
            "skuflow_dead_letters_total",
            &[c, ("topic", &p.topics.rejects)]
        ),
        Some(rejected as f64)
    );
    assert_eq!(
        metric(&m, "skuflow_file_duration_seconds_count", &[c]),
        Some(1.0)
    );
    assert!(
        metric(&m, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0,
        "{m}"
    );
    let file_bytes = skuflow_e2e::render_csv(&rows, false, false).len() as f64;
    let bytes_in = metric(&m, "skuflow_bytes_total", &[c, ("direction", "in")]);
    assert_eq!(bytes_in, Some(file_bytes), "{m}");
    let bytes_out = metric(&m, "skuflow_bytes_total", &[c, ("direction", "out")]);
    assert!(bytes_out.unwrap_or(0.0) > file_bytes, "{m}");

    let c = ("component", "warehouse-loader");
    let m = p.ops_get(loader, "/metrics").1;
    assert_eq!(
        metric(
            &m,
            "skuflow_records_sent_total",
            &[c, ("destination", "warehouse-loader")]
        ),
        Some(valid as f64),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "skuflow_records_received_total",
            &[c, ("source", &p.topics.records)]
        ),
        Some(valid as f64)
    );
    assert!(metric(&m, "skuflow_batch_duration_seconds_count", &[c]).unwrap_or(0.0) >= 3.0);
    assert_eq!(metric(&m, "skuflow_ready", &[c]), Some(1.0));
    // Lag per partition from librdkafka's statistics: present for every partition, and zero
    // once the committed offsets reach the end.
    let group = format!("skuflow-warehouse-loader-{}", p.id);
    let lags = |m: &str| -> HashMap<String, f64> {
        (0..3)
            .filter_map(|part| {
                let part = part.to_string();
                metric(
                    m,
                    "skuflow_consumer_lag",
                    &[
                        ("group", &group),
                        ("topic", &p.topics.records),
                        ("partition", &part),
                    ],
                )
                .map(|v| (part, v))
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(40), || {
            let l = lags(&p.ops_get(loader, "/metrics").1);
            l.len() == 3 && l.values().all(|v| *v == 0.0)
        }),
        "lag never reached 0 on all 3 partitions: {:?}",
        lags(&p.ops_get(loader, "/metrics").1)
    );

    // The sink goes away while idle: readiness says so (and names it), then recovers.
    pg.stop();
    assert!(
        wait_until(Duration::from_secs(60), || p.ops_get(loader, "/readyz").0
            == 503),
        "loader still ready with PostgreSQL down: {:?}",
        p.ops_get(loader, "/readyz")
    );
    let ready = json(&p.ops_get(loader, "/readyz").1);
    assert_eq!(ready["checks"]["sink"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["broker"]["ok"], true, "{ready}");
    assert_eq!(
        metric(
            &p.ops_get(loader, "/metrics").1,
            "skuflow_check_up",
            &[("check", "sink")]
        ),
        Some(0.0)
    );
    pg.restart();
    assert!(
        wait_until(Duration::from_secs(60), || p.ops_get(loader, "/readyz").0
            == 200),
        "loader not ready again: {:?}",
        p.ops_get(loader, "/readyz")
    );

    for i in [ingest, loader] {
        let status = p.terminate(i, Duration::from_secs(25));
        assert!(
            status.is_some_and(|s| s.success()),
            "exit after SIGTERM: {status:?}"
        );
    }
    assert_json_logs_without(&p, &[&password, &p.stack.s3_secret]);
    assert!(p.logs().contains("Shutdown requested"), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_loader_within_its_limit_and_loses_nothing() {
    let pg = TempPostgres::start();
    let mut p = Pipeline::new().await;
    p.use_database(&pg.url());
    let msgs: Vec<(String, Vec<u8>)> = (0..6000)
        .map(|i| {
            let r = record("PT", i, 1000);
            (r.kafka_key(), serde_json::to_vec(&r).unwrap())
        })
        .collect();
    produce(&p.stack.brokers, &p.topics.records, &msgs[..3000]).await;
    let args = [
        "--batch-size=500".to_string(),
        "--max-backoff-ms=1000".to_string(),
        "--shutdown-timeout-secs=5".to_string(),
    ];
    let first = p.start_loader(&args);
    let sql = "SELECT count(*) FROM skuflow.sku_facts";
    p.expect_count(sql, 3000, WAIT).await;
    // PostgreSQL goes away with a batch in flight; SIGTERM must abandon it (not store its
    // offsets) and exit within the limit rather than retry for ever.
    pg.stop();
    produce(&p.stack.brokers, &p.topics.records, &msgs[3000..]).await;
    assert!(
        wait_until(Duration::from_secs(60), || p
            .logs()
            .contains("Sink unavailable; holding the batch and retrying.")),
        "{}",
        p.logs()
    );
    let started = Instant::now();
    let status = p.terminate(first, Duration::from_secs(15));
    let took = started.elapsed();
    assert!(status.is_some(), "still running 15 s after SIGTERM");
    assert!(
        took < Duration::from_secs(7),
        "SIGTERM took {took:?} (limit 5 s)"
    );
    let logs = p.logs();
    assert!(
        logs.contains("Shutdown during retries; the batch is not stored"),
        "{logs}"
    );
    // Every row arrives once when the next loader takes over.
    pg.restart();
    p.start_loader(&args);
    let offsets = "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
    p.expect_count(offsets, 6000, WAIT).await;
    p.expect_count(sql, 6000, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_long_ingest_short_within_its_limit_and_the_file_still_lands_once() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let rows = sample_rows(43, 15_000, 0, "EUR", "2026-11-21");
    let key = "incoming/individual/store-4/2026-11-21/big.csv";
    upload_local(&buckets, "skus-be", key, &rows);
    // A short session and rebalance timeout: the cut-off worker never leaves its group, and the
    // broker waits this long before handing its partitions to the next one (tansu's group
    // coordinator stops answering every group while it waits; see docs/tansu.md).
    let args = [
        format!("--bucket-root={}", buckets.display()),
        "--shutdown-timeout-secs=1".to_string(),
        "-Xsession.timeout.ms=6000".to_string(),
        "-Xmax.poll.interval.ms=15000".to_string(),
    ];
    let first = p.start_ingest(&args);
    assert!(
        wait_until(Duration::from_secs(60), || p
            .logs()
            .contains("Queued uploads")),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = p.terminate(first, Duration::from_secs(15));
    let took = started.elapsed();
    assert!(status.is_some(), "ingest still running 15 s after SIGTERM");
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} (limit 1 s)"
    );
    let cut = p.logs().contains("Shutdown outlasted its time limit");
    eprintln!("first worker cut off mid-file: {cut} (exited after {took:?}, {status:?})");
    // A forced exit says so in its status; a clean stop exits 0.
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(if cut {
            skuflow_platform::shutdown::FORCED_EXIT_STATUS
        } else {
            0
        }),
        "{}",
        p.logs()
    );
    // The replacement starts once the broker has dropped the cut-off member (its session), as a
    // restarted pod would: tansu mishandles a join while a dead member is still counted (it can
    // hand the newcomer no partition at all; see docs/tansu.md).
    std::thread::sleep(Duration::from_secs(8));
    p.start_ingest(&args);
    p.start_loader(&[]);
    let sql = "SELECT count(*) FROM skuflow.sku_facts";
    p.expect_count(sql, 15_000, WAIT).await;
    // The rows may all be in from the cut-off worker already: the replacement still re-reads the
    // whole file (same record_ids) before it moves it, which took over 30 s in a CI run.
    assert!(
        wait_until(WAIT, || buckets
            .join("skus-be/processed/individual/store-4/2026-11-21/big.csv")
            .exists()),
        "file not moved to processed/\n{}",
        p.logs()
    );
}
