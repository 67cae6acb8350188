//! End to end on the real stack: uploads in a bucket (local directory and the S3 API) are
//! discovered, validated, produced to Kafka and loaded into PostgreSQL exactly once, with the
//! exact values of the CSV; invalid rows are dead-lettered and never loaded.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::Pipeline;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use rust_decimal::Decimal;
use serde_json::Value;
use skuflow_e2e::{gzip, render_csv, sample_rows, SampleRow};
use skuflow_schemas::json_schemas;

const WAIT: Duration = Duration::from_secs(120);

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn dec(s: &str) -> Option<Decimal> {
    (!s.is_empty()).then(|| s.parse().unwrap())
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The expected location of a row: country, store, category, chain, line.
struct Expect<'a> {
    row: &'a SampleRow,
    country: &'a str,
    store_id: &'a str,
    store_category: &'a str,
    chain: Option<&'a str>,
    line: i64,
}

/// Lines of each row in a rendered file (the header is line 1; embedded newlines count).
fn lines_of(rows: &[SampleRow]) -> Vec<i64> {
    let mut line = 2;
    rows.iter()
        .map(|r| {
            let l = line;
            line += 1 + r.product_name.matches('\n').count() as i64;
            l
        })
        .collect()
}

/// Checks every loaded row against what the CSV said, and that nothing else was loaded.
async fn assert_exact(p: &Pipeline, expected: &[Expect<'_>]) {
    let db = p.db().await;
    let rows = db
        .query(
            "SELECT sku, product_name, category, brand, unit_price, unit_cost, currency, quantity_on_hand,
                    units_sold, business_date::text, barcode, country, store_id, store_category, chain, source_line
             FROM skuflow.sku_facts",
            &[],
        )
        .await
        .unwrap();
    let mut by_key: HashMap<(String, String, String), tokio_postgres::Row> = HashMap::new();
    for r in rows {
        let key = (
            r.get::<_, String>(11),
            r.get::<_, String>(12),
            r.get::<_, String>(0),
        );
        assert!(
            by_key.insert(key.clone(), r).is_none(),
            "natural key {key:?} loaded twice"
        );
    }
    assert_eq!(
        by_key.len(),
        expected.len(),
        "rows loaded vs valid rows uploaded"
    );
    for e in expected {
        let r = by_key
            .get(&(
                e.country.to_string(),
                e.store_id.to_string(),
                e.row.sku.clone(),
            ))
            .unwrap_or_else(|| panic!("row {} of {} was lost", e.row.sku, e.store_id));
        let s = e.row;
        assert_eq!(r.get::<_, String>(1), s.product_name, "{}", s.sku);
        assert_eq!(r.get::<_, String>(2), s.category);
        assert_eq!(r.get::<_, Option<String>>(3), opt(&s.brand));
        assert_eq!(
            r.get::<_, Decimal>(4),
            dec(&s.unit_price).unwrap(),
            "unit_price of {}",
            s.sku
        );
        assert_eq!(
            r.get::<_, Option<Decimal>>(5),
            dec(&s.unit_cost),
            "unit_cost of {}",
            s.sku
        );
        assert_eq!(r.get::<_, String>(6), s.currency);
        assert_eq!(r.get::<_, i32>(7).to_string(), s.quantity_on_hand);
        assert_eq!(r.get::<_, i32>(8).to_string(), s.units_sold);
        assert_eq!(r.get::<_, String>(9), s.business_date);
        assert_eq!(r.get::<_, Option<String>>(10), opt(&s.barcode));
        assert_eq!(r.get::<_, String>(13), e.store_category);
        assert_eq!(r.get::<_, Option<String>>(14).as_deref(), e.chain);
        assert_eq!(r.get::<_, i64>(15), e.line, "source line of {}", s.sku);
    }
}

/// Waits until the warehouse holds as many rows as expected, gives a duplicate the chance to
/// show up, then checks every row exactly.
async fn converge_exactly(p: &Pipeline, expected: &[Expect<'_>]) {
    let want = expected.len() as i64;
    let got = p
        .wait_for_count("SELECT count(*) FROM skuflow.sku_facts", want, WAIT)
        .await;
    assert_eq!(got, want, "loader did not converge; logs:\n{}", p.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exact(p, expected).await;
}

fn validate_all(schema_doc: &str, messages: &[Value]) {
    let schema: Value = serde_json::from_str(schema_doc).unwrap();
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    for m in messages {
        let errors: Vec<String> = v
            .iter_errors(m)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "produced message fails its JSON Schema: {errors:?}\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_bucket_to_postgres_exactly_once() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let de = buckets.join("skus-de");

    let chain_rows = sample_rows(11, 60, 10, "EUR", "2026-11-01");
    let shop_rows = sample_rows(12, 40, 8, "eur", "2026-11-01");
    write(
        &de.join("incoming/retail_chain/ikea/berlin-1/2026-11-01/skus.csv"),
        render_csv(&chain_rows, true, true).as_bytes(),
    );
    write(
        &de.join("incoming/individual/corner-7/2026-11-01/skus.csv.gz"),
        &gzip(render_csv(&shop_rows, false, false).as_bytes()),
    );
    write(
        &de.join("incoming/individual/corner-7/2026-11-01/broken.csv"),
        b"sku,product_name,category\nA,b,c\n",
    );
    write(
        &de.join("incoming/wholesale/x/2026-11-01/a.csv"),
        render_csv(&shop_rows[..2], false, false).as_bytes(),
    );

    p.start_loader(&[]);
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);

    let mut expected = Vec::new();
    let chain_lines = lines_of(&chain_rows);
    for (r, l) in chain_rows.iter().zip(&chain_lines) {
        if r.valid {
            expected.push(Expect {
                row: r,
                country: "DE",
                store_id: "berlin-1",
                store_category: "retail_chain",
                chain: Some("ikea"),
                line: *l,
            });
        }
    }
    let shop_lines = lines_of(&shop_rows);
    let upper: Vec<SampleRow> = shop_rows
        .iter()
        .map(|r| SampleRow {
            currency: r.currency.to_uppercase(),
            ..r.clone()
        })
        .collect();
    for (r, l) in upper.iter().zip(&shop_lines) {
        if r.valid {
            expected.push(Expect {
                row: r,
                country: "DE",
                store_id: "corner-7",
                store_category: "individual",
                chain: None,
                line: *l,
            });
        }
    }
    let invalid = chain_rows
        .iter()
        .chain(&shop_rows)
        .filter(|r| !r.valid)
        .count();
    converge_exactly(&p, &expected).await;

    // Objects moved: good files to processed/, the broken ones to errors/ with a report.
    assert!(de
        .join("processed/retail_chain/ikea/berlin-1/2026-11-01/skus.csv")
        .exists());
    assert!(de
        .join("processed/individual/corner-7/2026-11-01/skus.csv.gz")
        .exists());
    let report = std::fs::read_to_string(
        de.join("errors/individual/corner-7/2026-11-01/broken.csv.errors.json"),
    )
    .unwrap();
    assert!(report.contains("missing required column"), "{report}");
    let report =
        std::fs::read_to_string(de.join("errors/wholesale/x/2026-11-01/a.csv.errors.json"))
            .unwrap();
    assert!(report.contains("wholesale"), "{report}");

    // Every produced message validates against its JSON Schema; rejects carry every reason.
    let records = p.read_topic(&p.topics.records);
    validate_all(json_schemas::RECORD, &records);
    assert_eq!(records.len(), expected.len(), "records on the topic");
    let rejects = p.read_topic(&p.topics.rejects);
    validate_all(json_schemas::REJECT, &rejects);
    assert_eq!(rejects.len(), invalid);
    let first_bad = chain_rows.iter().position(|r| !r.valid).unwrap();
    let bad_line = chain_lines[first_bad];
    let first = rejects
        .iter()
        .find(|r| r["line"] == bad_line && r["key"].as_str().unwrap().contains("ikea"))
        .unwrap_or_else(|| panic!("no reject for line {bad_line}: {rejects:?}"));
    assert!(first["raw"]
        .as_str()
        .unwrap()
        .starts_with(&chain_rows[first_bad].sku));
    assert_eq!(first["reasons"][0]["field"], "unit_price");
    assert_eq!(first["reasons"][0]["rule"], "non_negative");
    let files = p.read_topic(&p.topics.files);
    validate_all(json_schemas::FILE, &files);
    let completed: Vec<&Value> = files
        .iter()
        .filter(|f| f["status"] == "completed")
        .collect();
    assert_eq!(completed.len(), 2);
    assert_eq!(files.iter().filter(|f| f["status"] == "failed").count(), 2);

    // A correction: the chain store uploads the same day again with a new price for one SKU.
    let mut fixed = chain_rows.clone();
    fixed[0].unit_price = "999.9900".into();
    write(
        &de.join("incoming/retail_chain/ikea/berlin-1/2026-11-01/skus-v2.csv"),
        render_csv(&fixed, false, false).as_bytes(),
    );
    let sql = format!(
        "SELECT count(*) FROM skuflow.sku_facts WHERE sku = '{}' AND unit_price = 999.99",
        fixed[0].sku
    );
    assert_eq!(
        p.wait_for_count(&sql, 1, WAIT).await,
        1,
        "correction not applied; logs:\n{}",
        p.logs()
    );

    // An older file replayed later (earlier last-modified) never overwrites newer data.
    let mut stale = chain_rows.clone();
    stale[0].unit_price = "0.0100".into();
    let stale_path = de.join("incoming/retail_chain/ikea/berlin-1/2026-11-01/skus-old.csv");
    write(&stale_path, render_csv(&stale, false, false).as_bytes());
    let f = std::fs::File::options()
        .write(true)
        .open(&stale_path)
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400))
        .unwrap();
    drop(f);
    let moved = de.join("processed/retail_chain/ikea/berlin-1/2026-11-01/skus-old.csv");
    let start = std::time::Instant::now();
    while !moved.exists() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        moved.exists(),
        "stale file not ingested; logs:\n{}",
        p.logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = p.db().await;
    let price: Decimal = db
        .query_one(
            "SELECT unit_price FROM skuflow.sku_facts WHERE sku = $1",
            &[&fixed[0].sku],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        price,
        "999.99".parse::<Decimal>().unwrap(),
        "an older upload overwrote newer data"
    );
    let total: i64 = db
        .query_one("SELECT count(*) FROM skuflow.sku_facts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, expected.len() as i64, "re-uploads must not add rows");
    // The secret in the connection string never reaches a log line.
    let secret = p
        .db_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !p.logs().contains(&secret),
        "a log line contains the PostgreSQL password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_to_postgres_with_metadata_override() {
    let mut p = Pipeline::new().await;
    let bucket = format!("t{}-fr", p.id);
    let s3 = p.s3(&bucket);
    let rows = sample_rows(21, 50, 7, "EUR", "2026-11-02");
    let key = "incoming/retail_chain/carrefour/paris-2/2026-11-02/skus.csv";
    s3.put(
        &key.into(),
        PutPayload::from(render_csv(&rows, false, false)),
    )
    .await
    .unwrap();
    let other = sample_rows(22, 20, 0, "EUR", "2026-11-02");
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::Metadata("store-id".into()), "lyon-9".into());
    s3.put_opts(
        &"incoming/individual/placeholder/2026-11-02/skus.csv".into(),
        PutPayload::from(render_csv(&other, false, false)),
        PutOptions {
            attributes: attrs,
            ..PutOptions::default()
        },
    )
    .await
    .unwrap();

    p.start_loader(&[]);
    p.start_ingest(&[
        "--object-store=s3".into(),
        format!("--s3-endpoint={}", p.stack.s3_endpoint),
        format!("--buckets={bucket}=FR"),
    ]);
    // Credentials go through the environment, as in a deployment.
    let mut expected = Vec::new();
    for (r, l) in rows.iter().zip(lines_of(&rows)) {
        if r.valid {
            expected.push(Expect {
                row: r,
                country: "FR",
                store_id: "paris-2",
                store_category: "retail_chain",
                chain: Some("carrefour"),
                line: l,
            });
        }
    }
    for (r, l) in other.iter().zip(lines_of(&other)) {
        expected.push(Expect {
            row: r,
            country: "FR",
            store_id: "lyon-9",
            store_category: "individual",
            chain: None,
            line: l,
        });
    }
    converge_exactly(&p, &expected).await;
    s3.head(&"processed/retail_chain/carrefour/paris-2/2026-11-02/skus.csv".into())
        .await
        .expect("object moved to processed/");
    assert!(
        s3.head(&key.into()).await.is_err(),
        "object left in incoming/"
    );
    let db = p.db().await;
    let parts: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'skuflow.sku_facts'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 1, "one partition for FR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_event_notifications_trigger_ingest_once() {
    let mut p = Pipeline::new().await;
    let events_topic = format!("sku.s3events.v1.t{}", p.id);
    skuflow_platform::kafka::ensure_topics(
        &skuflow_platform::KafkaArgs::new(&p.stack.brokers),
        &[skuflow_platform::kafka::TopicSpec::new(
            events_topic.clone(),
            1,
            false,
        )],
    )
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let rows = sample_rows(31, 25, 0, "EUR", "2026-11-03");
    let key = "incoming/individual/corner-shop/2026-11-03/sküs list.csv";
    write(
        &buckets.join("skus-at").join(key),
        render_csv(&rows, false, false).as_bytes(),
    );
    // No scan: only the notifications start the ingest.
    p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        "--mode=worker".into(),
        format!("--events-topic={events_topic}"),
    ]);
    // tansu stalls when several groups join at the same instant; let the ingest's join first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.start_loader(&[]);
    let event = serde_json::json!({
        "EventName": "s3:ObjectCreated:Put",
        "Key": format!("skus-at/{key}"),
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "skus-at"},
                   "object": {"key": "incoming%2Findividual%2Fcorner-shop%2F2026-11-03%2Fsk%C3%BCs+list.csv", "size": 1}}
        }]
    });
    let removed = serde_json::json!({"Records": [{"eventName": "s3:ObjectRemoved:Delete",
        "s3": {"bucket": {"name": "skus-at"}, "object": {"key": "incoming%2Fgone.csv"}}}]});
    let payload = serde_json::to_vec(&event).unwrap();
    // The same notification twice (and one removal): the object is ingested once.
    let msgs = vec![
        ("a".to_string(), payload.clone()),
        ("b".to_string(), serde_json::to_vec(&removed).unwrap()),
        ("a".to_string(), payload),
    ];
    common::produce(&p.stack.brokers, &events_topic, &msgs).await;
    let got = p
        .wait_for_count("SELECT count(*) FROM skuflow.sku_facts", 25, WAIT)
        .await;
    assert_eq!(got, 25, "logs:\n{}", p.logs());
    assert!(buckets
        .join("skus-at/processed/individual/corner-shop/2026-11-03/sküs list.csv")
        .exists());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let files = p.read_topic(&p.topics.files);
    assert_eq!(
        files.iter().filter(|f| f["status"] == "completed").count(),
        1,
        "{files:?}"
    );
    let uploads = p.read_topic(&p.topics.uploads);
    assert!(uploads.iter().all(|u| u["trigger"] == "event"));
}

/// `skuflow-ingest` SIGKILLed mid-file three times: the restarted worker re-ingests the file
/// (same record ids and versions), and PostgreSQL ends with every valid row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sigkilled_mid_file_loses_and_duplicates_nothing() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let mut valid = 0usize;
    for (n, store) in ["north-1", "south-2", "east-3"].iter().enumerate() {
        let rows = sample_rows(40 + n as u64, 6000, 200, "EUR", "2026-11-04");
        valid += rows.iter().filter(|r| r.valid).count();
        write(
            &buckets
                .join("skus-nl")
                .join(format!("incoming/individual/{store}/2026-11-04/skus.csv")),
            render_csv(&rows, false, false).as_bytes(),
        );
    }
    p.start_loader(&[]);
    let args = [
        format!("--bucket-root={}", buckets.display()),
        "-Xsession.timeout.ms=6000".to_string(),
        "-Xmax.poll.interval.ms=15000".to_string(),
    ];
    let mut x: u64 = 0x5851_f42d_4c95_7f2d;
    for _ in 0..3 {
        let child = p.start_ingest(&args);
        // Kill once records are flowing, at a random point.
        let start = std::time::Instant::now();
        while p
            .wait_for_count(
                "SELECT count(*) FROM skuflow.sku_facts",
                i64::MAX,
                Duration::from_millis(100),
            )
            .await
            < 1
            && start.elapsed() < Duration::from_secs(120)
        {}
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(x % 1500)).await;
        p.kill(child);
    }
    // Drain. Should tansu give the last worker no partition while it still counts a killed
    // one (seen in a clean-clone CI run: "partitions=0", then nothing for 240 s), replace the
    // worker after 30 s without progress, as the loader's kill test does.
    let mut last = p.start_ingest(&args);
    let sql = "SELECT count(*) FROM skuflow.sku_facts";
    let want = valid as i64;
    let mut got = p.wait_for_count(sql, want, Duration::ZERO).await;
    let mut at = (std::time::Instant::now(), got);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(300) {
        got = p.wait_for_count(sql, want, Duration::from_secs(2)).await;
        if got == want {
            break;
        }
        if got > at.1 {
            at = (std::time::Instant::now(), got);
        } else if at.0.elapsed() > Duration::from_secs(30) {
            p.kill(last);
            last = p.start_ingest(&args);
            at = (std::time::Instant::now(), got);
        }
    }
    assert_eq!(got, want, "logs:\n{}", p.logs());
    // Every file ends in processed/ with its report of rejects, none left in incoming/.
    let start = std::time::Instant::now();
    let incoming = buckets.join("skus-nl/incoming/individual");
    let left = || {
        common::files_under(&incoming)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "csv"))
            .count()
    };
    while left() > 0 && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left(), 0, "files left in incoming/; logs:\n{}", p.logs());
    let db = p.db().await;
    let dup: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT record_id FROM skuflow.sku_facts GROUP BY record_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
}
