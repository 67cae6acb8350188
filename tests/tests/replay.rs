//! `skuflow replay` on the real stack: the warehouse loader and the finance reporter, having
//! lost data, are moved back to the earliest offsets and rebuild exactly what they held, with no
//! duplicate. (tansu cannot describe groups, so the refusal to move a group with running members
//! is not exercised here.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, Pipeline};
use rust_decimal::Decimal;

const WAIT: Duration = Duration::from_secs(180);
const LOADER_OFFSETS: &str =
    "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
const FINANCE_OFFSETS: &str =
    "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow_finance.consumer_offsets";

/// Runs `skuflow replay` with `args` on the pipeline's broker, topics and database.
fn skuflow_replay(p: &Pipeline, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("skuflow"))
        .arg("replay")
        .args(args)
        .args([
            &format!("--brokers={}", p.stack.brokers),
            &format!("--records-topic={}", p.topics.records),
            &format!("--files-topic={}", p.topics.files),
            &format!("--uploads-topic={}", p.topics.uploads),
        ])
        .env("SKUFLOW_PG_URL", &p.db_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn replay(p: &Pipeline, sink: &str, group: &str) -> (bool, String) {
    skuflow_replay(
        p,
        &[
            &format!("--sink={sink}"),
            &format!("--group={group}"),
            "--to=earliest",
        ],
    )
}

async fn finance_sums(db: &tokio_postgres::Client) -> Vec<(String, String, i64, i64, Decimal)> {
    db.query(
        "SELECT country, store_id, sum(skus)::bigint, sum(units)::bigint, sum(revenue)
         FROM skuflow_finance.daily GROUP BY 1, 2 ORDER BY 1, 2",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_lost_sink_data_exactly_once() {
    let mut p = Pipeline::new().await;
    let mut records = Vec::new();
    for i in 0..2_500u64 {
        records.push(common::record(if i % 2 == 0 { "DE" } else { "NL" }, i, 5));
    }
    for i in 0..500u64 {
        records.push(common::record(if i % 2 == 0 { "DE" } else { "NL" }, i, 9));
    }
    let messages = skuflow_e2e::record_messages(&records);
    common::produce(&p.stack.brokers, &p.topics.records, &messages).await;
    let total = messages.len() as i64;

    let loader = p.start_loader(&[]);
    let reporter = p.start_reporter(&[]);
    p.expect_count(LOADER_OFFSETS, total, WAIT).await;
    p.expect_count(FINANCE_OFFSETS, total, WAIT).await;
    let db = p.db().await;
    let before = finance_sums(&db).await;
    assert_eq!(before.iter().map(|r| r.2).sum::<i64>(), 2_500);

    let loader_group = format!("skuflow-warehouse-loader-{}", p.id);
    let finance_group = format!("skuflow-finance-reporter-{}", p.id);
    assert!(p.terminate(loader, Duration::from_secs(20)).is_some());
    assert!(p.terminate(reporter, Duration::from_secs(20)).is_some());
    // Both sinks lose data.
    let lost = db
        .execute(
            "DELETE FROM skuflow.sku_facts WHERE store_id IN ('store-1', 'store-2')",
            &[],
        )
        .await
        .unwrap();
    assert!(lost > 0);
    db.batch_execute("TRUNCATE skuflow_finance.lines, skuflow_finance.daily")
        .await
        .unwrap();

    for (sink, group) in [
        ("warehouse-loader", &loader_group),
        ("finance-reporter", &finance_group),
    ] {
        let (ok, said) = replay(&p, sink, group);
        assert!(ok, "{said}");
        assert!(said.contains("moved back"), "{said}");
    }
    p.expect_count(LOADER_OFFSETS, 0, WAIT).await;

    p.start_loader(&[]);
    p.start_reporter(&[]);
    p.expect_count(LOADER_OFFSETS, total, WAIT).await;
    p.expect_count(FINANCE_OFFSETS, total, WAIT).await;
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", 2_500, WAIT)
        .await;
    p.expect_count(
        "SELECT count(*) FROM skuflow.sku_facts WHERE record_version = 9",
        500,
        WAIT,
    )
    .await;
    assert_eq!(finance_sums(&db).await, before);
}

type FactRow = (String, String, String, String, i64, String, String);

async fn fact_versions(db: &tokio_postgres::Client) -> Vec<FactRow> {
    db.query(
        "SELECT country, store_id, sku, business_date::text, record_version, record_id, file_id
         FROM skuflow.sku_facts ORDER BY 1, 2, 3, 4",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        )
    })
    .collect()
}

fn set_mtime(path: &std::path::Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// Re-ingesting processed uploads of one country and day: rows the warehouse lost come back,
/// nothing is doubled, a later correction stays (even when the move to `processed/` changed the
/// object's last-modified time, as an S3 copy does), and other countries and days are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reingest_from_processed_restores_lost_rows_and_keeps_corrections() {
    use skuflow_e2e::sample_rows;
    use std::time::SystemTime;
    let mut p = Pipeline::new().await;
    let dir = tempfile::tempdir().unwrap();
    let buckets = dir.path().join("buckets");
    let a = sample_rows(41, 300, 10, "EUR", "2026-11-20");
    let b = sample_rows(42, 200, 10, "EUR", "2026-11-21");
    let c = sample_rows(43, 200, 10, "EUR", "2026-11-20");
    let up = |bucket: &str, key: &str, rows| common::upload_local(&buckets, bucket, key, rows);
    up("skus-de", "incoming/individual/s1/2026-11-20/a.csv", &a);
    up("skus-de", "incoming/individual/s1/2026-11-21/b.csv", &b);
    up("skus-fr", "incoming/individual/s9/2026-11-20/c.csv", &c);
    // A correction of 5 rows of a.csv, uploaded a minute later.
    let fix = skuflow_e2e::corrected_rows(&a, 5, "777");
    let fixed = up("skus-de", "incoming/individual/s1/2026-11-20/fix.csv", &fix);
    set_mtime(&fixed, SystemTime::now() + Duration::from_secs(60));
    let valid = |rows: &[skuflow_e2e::SampleRow]| rows.iter().filter(|r| r.valid).count() as i64;
    let total = valid(&a) + valid(&b) + valid(&c);

    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_loader(&[]);
    const COUNT: &str = "SELECT count(*) FROM skuflow.sku_facts";
    const FIXED: &str = "SELECT count(*) FROM skuflow.sku_facts WHERE units_sold = 777";
    p.expect_count(COUNT, total, WAIT).await;
    p.expect_count(FIXED, 5, WAIT).await;
    let db = p.db().await;
    let before = fact_versions(&db).await;
    let processed_a = buckets.join("skus-de/processed/individual/s1/2026-11-20/a.csv");
    assert!(
        common::wait_until(Duration::from_secs(60), || processed_a.exists()),
        "a.csv never reached processed/"
    );
    // The move changed a.csv's last-modified time (as an S3 copy does): a replay that took the
    // object's time as the version would now overwrite the correction.
    set_mtime(&processed_a, SystemTime::now() + Duration::from_secs(600));

    // The warehouse loses every DE row of 2026-11-20 but the corrected ones.
    let lost = db
        .execute(
            "DELETE FROM skuflow.sku_facts WHERE country = 'DE' AND business_date = '2026-11-20' AND units_sold <> 777",
            &[],
        )
        .await
        .unwrap() as i64;
    assert_eq!(lost, valid(&a) - 5);

    let run = |args: &[&str]| skuflow_replay(&p, args);
    let (ok, text) = run(&[
        "--country=de",
        "--from=2026-11-20",
        "--until=2026-11-20",
        "--dry-run",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("2 uploads would be re-ingested"), "{text}");
    let (ok, text) = run(&["--country=xx", "--from=2026-11-20"]);
    assert!(
        !ok && text.contains("not an ISO 3166-1 alpha-2 code"),
        "{text}"
    );
    let (ok, text) = run(&["--country=de", "--sink=warehouse-loader", "--to=earliest"]);
    assert!(!ok && text.contains("one or the other"), "{text}");
    let (ok, text) = run(&["--country=de", "--from=2026-11-20", "--until=2026-11-20"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("skus-de/processed/individual/s1/2026-11-20/a.csv")
            && text.contains("skus-de/processed/individual/s1/2026-11-20/fix.csv")
            && text.contains("2 uploads queued"),
        "{text}"
    );

    p.expect_count(COUNT, total, WAIT).await;
    // The replays are complete on the lifecycle topic: a.csv and fix.csv twice each.
    let ok = common::wait_until(WAIT, || {
        p.read_topic(&p.topics.files)
            .iter()
            .filter(|e| e["status"] == "completed")
            .count()
            == 6
    });
    assert!(ok, "replays never completed:\n{}", p.logs());
    let after = fact_versions(&db).await;
    let differ: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .take(3)
        .collect();
    assert!(
        after.len() == before.len() && differ.is_empty(),
        "every row back with the same version, record id and file id: {} rows before, {} after; first differences (before, after): {differ:?}",
        before.len(),
        after.len()
    );
    assert_eq!(
        db.query_one(FIXED, &[]).await.unwrap().get::<_, i64>(0),
        5,
        "the correction stays"
    );
    // The objects stay in processed/; nothing new in incoming/ or errors/.
    assert!(processed_a.exists());
    for gone in ["skus-de/incoming", "skus-de/errors", "skus-fr/errors"] {
        let files: Vec<_> = common::files_under(&buckets.join(gone));
        assert!(files.is_empty(), "{gone}: {files:?}");
    }
    let replays: Vec<_> = p
        .read_topic(&p.topics.files)
        .into_iter()
        .filter(|e| e["status"] == "completed" && e["key"].as_str().unwrap().contains("2026-11-21"))
        .collect();
    assert_eq!(replays.len(), 1, "b.csv (another day) was not replayed");
}

/// The recovery drill of docs/operations.md: every sink loses everything (the PostgreSQL schemas
/// with their offsets, the search cluster, the dataset), `skuflow status` reports the loss, and
/// `skuflow replay` of each sink to the earliest offsets rebuilds all of it from Kafka until
/// `skuflow status` shows every file complete again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_drill_rebuilds_every_sink_from_kafka() {
    use skuflow_e2e::es_double::EsDouble;
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let (buckets, datasets) = (root.path().join("buckets"), root.path().join("datasets"));
    for (i, store) in ["s1", "s2"].iter().enumerate() {
        let rows = skuflow_e2e::sample_rows(90 + i as u64, 150, 10, "EUR", "2026-11-21");
        let key = format!("incoming/individual/{store}/2026-11-21/skus.csv");
        common::upload_local(&buckets, "skus-de", &key, &rows);
    }
    let builder_group = format!("skuflow-dataset-builder-{}", p.id);
    let start_sinks = |p: &mut Pipeline, es: &EsDouble| -> Vec<usize> {
        vec![
            p.start_loader(&[]),
            p.start_reporter(&[]),
            p.start_indexer(&es.url, &[], &[]),
            p.start_builder(&[
                format!("--group={builder_group}"),
                format!("--dataset-root={}", datasets.display()),
                "--flush-interval-ms=300".into(),
            ]),
        ]
    };
    let complete = |p: &Pipeline, es: &EsDouble| {
        let mut last = (0, serde_json::Value::Null, String::new());
        let ok = common::wait_until(WAIT, || {
            last = p.status_json(&datasets, &[&format!("--es-url={}", es.url)]);
            last.0 == 0
                && last.1.as_array().is_some_and(|a| {
                    a.len() == 2
                        && a.iter().all(|f| {
                            f["status"] == "complete"
                                && f["sinks"].as_object().is_some_and(|s| s.len() == 4)
                        })
                })
        });
        assert!(ok, "status never all complete:\n{}\n{}", last.2, p.logs());
    };

    let es = EsDouble::start().await;
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    let sinks = start_sinks(&mut p, &es);
    complete(&p, &es);

    // The disaster: every sink's store is lost, offsets included.
    for i in sinks {
        assert!(p.terminate(i, Duration::from_secs(30)).is_some());
    }
    p.db()
        .await
        .batch_execute("DROP SCHEMA skuflow CASCADE; DROP SCHEMA skuflow_finance CASCADE")
        .await
        .unwrap();
    std::fs::remove_dir_all(&datasets).unwrap();
    let es = EsDouble::start().await; // a new, empty cluster
    let (code, _, text) = p.status_json(&datasets, &[&format!("--es-url={}", es.url)]);
    assert_ne!(code, 0, "status does not report the loss:\n{text}");

    // The recovery: each sink's group back to the earliest offsets, then the sinks again.
    let started = std::time::Instant::now();
    for (sink, group) in [
        (
            "warehouse-loader",
            format!("skuflow-warehouse-loader-{}", p.id),
        ),
        (
            "finance-reporter",
            format!("skuflow-finance-reporter-{}", p.id),
        ),
        ("search-indexer", format!("skuflow-search-indexer-{}", p.id)),
        ("dataset-builder", builder_group.clone()),
    ] {
        let (ok, said) = replay(&p, sink, &group);
        assert!(ok, "{sink}: {said}");
    }
    start_sinks(&mut p, &es);
    complete(&p, &es);
    println!(
        "recovery drill: every sink rebuilt from Kafka in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
