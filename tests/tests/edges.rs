//! Nothing lost at the edges, on the real stack: a correction uploaded while its key is being
//! ingested, dead letters when their topic fails after the offsets are stored, a file that can
//! never be moved, uploads over a limit, hostile values (dates, repeated keys) and a forged
//! replay request.

mod common;

use std::time::Duration;

use common::{metric, produce, upload_local, wait_until, Pipeline};
use object_store::{ObjectStore, PutPayload};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;
use skuflow_e2e::{corrected_rows, record_messages, render_csv, sample_rows, SampleRow};
use skuflow_schemas::{Trigger, UploadRequest};

const WAIT: Duration = Duration::from_secs(180);

/// Messages on `topic` so far (the sum of its partitions' end offsets).
fn topic_end(p: &Pipeline, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &p.stack.brokers)
        .set("group.id", "watermarks")
        .create()
        .unwrap();
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return 0;
    };
    (0..md.topics()[0].partitions().len() as i32)
        .map(|part| {
            c.fetch_watermarks(topic, part, Duration::from_secs(10))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

/// The lifecycle events of `key`, in the order they were read.
fn events_of(p: &Pipeline, key: &str) -> Vec<Value> {
    p.read_topic(&p.topics.files)
        .into_iter()
        .filter(|e| e["key"] == key)
        .collect()
}

/// The last lifecycle event of `key` with `status`, once there is one.
fn wait_event(p: &Pipeline, key: &str, status: &str) -> Value {
    let mut found = None;
    let ok = wait_until(WAIT, || {
        found = events_of(p, key)
            .into_iter()
            .rev()
            .find(|e| e["status"] == status);
        found.is_some()
    });
    assert!(ok, "no {status} event for {key}\n{}", p.logs());
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_uploaded_mid_ingest_is_ingested_after_it_and_wins() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let rows = sample_rows(61, 300_000, 0, "SEK", "2026-11-25");
    let key = "incoming/individual/store-9/2026-11-25/skus.csv";
    let object = upload_local(&buckets, "skus-se", key, &rows);
    // units_sold is below 60 in every sample row: 77 marks the correction's rows.
    let correction = corrected_rows(&rows, 1000, "77");
    let corrected_csv = render_csv(&correction, false, false);

    p.start_loader(&[]);
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    // The first version's records are being produced (its second pass has the object open):
    // the store uploads its correction now, replacing the object whole as a PUT does.
    assert!(
        wait_until(WAIT, || topic_end(&p, &p.topics.records) > 0),
        "{}",
        p.logs()
    );
    let staged = buckets.join("skus-se/.upload");
    std::fs::write(&staged, &corrected_csv).unwrap();
    std::fs::rename(&staged, &object).unwrap();

    p.expect_count(
        "SELECT count(*) FROM skuflow.sku_facts WHERE units_sold = 77",
        1000,
        WAIT,
    )
    .await;
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", 300_000, WAIT)
        .await;
    let processed = buckets.join("skus-se/processed/individual/store-9/2026-11-25/skus.csv");
    assert!(
        wait_until(WAIT, || std::fs::read(&processed)
            .is_ok_and(|b| b == corrected_csv.as_bytes())),
        "processed/ does not hold the correction\n{}",
        p.logs()
    );
    assert!(!object.exists(), "the correction was left in incoming/");
    // The first version says what happened to its object; the correction completed after it.
    let events = events_of(&p, key);
    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e["status"] == "completed")
        .collect();
    let replaced = completed.iter().any(|e| {
        e["rows_total"] == 300_000
            && e["moved_to"].is_null()
            && e["warnings"].to_string().contains("newer upload replaced")
    });
    assert!(
        replaced,
        "the first version's move did not notice the correction: {events:#?}"
    );
    // Events of two file ids sit on different partitions: found by content, not read order.
    let correction = completed
        .iter()
        .find(|e| e["rows_total"] == 1000)
        .unwrap_or_else(|| panic!("the correction did not complete: {events:#?}"));
    assert_eq!(correction["moved_to"], processed_key(key), "{events:#?}");
}

fn processed_key(key: &str) -> String {
    key.replacen("incoming/", "processed/", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_above_the_single_copy_limit_move_by_a_streamed_multipart_copy() {
    let mut p = Pipeline::new().await;
    let bucket = format!("t{}-dk", p.id);
    let s3 = p.s3(&bucket);
    let csv = render_csv(&sample_rows(62, 3000, 0, "DKK", "2026-11-25"), false, false);
    let key = "incoming/individual/store-3/2026-11-25/skus.csv";
    s3.put(&key.into(), PutPayload::from(csv.clone()))
        .await
        .unwrap();
    p.start_ingest(&[
        "--object-store=s3".into(),
        format!("--s3-endpoint={}", p.stack.s3_endpoint),
        format!("--buckets={bucket}=DK"),
        // Every object is "too large" for one CopyObject here.
        "--single-copy-max-bytes=1".into(),
    ]);
    wait_event(&p, key, "completed");
    let moved = s3
        .get(&processed_key(key).as_str().into())
        .await
        .expect("moved to processed/")
        .bytes()
        .await
        .unwrap();
    assert_eq!(moved, csv.as_bytes(), "the copy holds the object's bytes");
    assert!(s3.head(&key.into()).await.is_err(), "left in incoming/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_refused_by_the_loader_survive_a_dead_letter_topic_failure() {
    let mut p = Pipeline::new().await;
    // Two records, one of which the loader refuses (its country names no partition).
    let mut bad = common::record("DE", 2, 5);
    bad.country = "de".into();
    let records = [common::record("DE", 1, 5), bad];
    produce(
        &p.stack.brokers,
        &p.topics.records,
        &record_messages(&records),
    )
    .await;
    // The dead-letter topic is unreachable (it does not exist): sending the letter fails after
    // the batch and its offsets are durable in PostgreSQL.
    let rejects = std::mem::replace(
        &mut p.topics.rejects,
        format!("sku.rejects.missing.t{}", p.id),
    );
    // A short session lets the group drop the killed loader quickly; the replacement starts
    // after that session has run out, as a restarted pod would, and rejoins if tansu still hands
    // it no partition (docs/tansu.md, "Groups left without a consumer").
    let group = [
        "-Xsession.timeout.ms=6000".to_string(),
        "-Xmax.poll.interval.ms=15000".to_string(),
        "--rejoin-stalled-secs=20".to_string(),
    ];
    let mut flags = group.to_vec();
    flags.push("-Xmessage.timeout.ms=2000".into());
    let first = p.start_loader(&flags);
    p.topics.rejects = rejects;
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", 1, WAIT)
        .await;
    assert!(
        wait_until(WAIT, || p.logs().contains("dead-letter topic")),
        "{}",
        p.logs()
    );
    p.kill(first);
    // Then a message that is not a record, and one more good record.
    produce(
        &p.stack.brokers,
        &p.topics.records,
        &[("k".to_string(), b"{not json".to_vec())],
    )
    .await;
    produce(
        &p.stack.brokers,
        &p.topics.records,
        &record_messages(&[common::record("DE", 3, 5)]),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    p.start_loader(&group);
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", 2, WAIT)
        .await;
    let mut rules = Vec::new();
    assert!(
        wait_until(WAIT, || {
            rules = p
                .read_topic(&p.topics.rejects)
                .iter()
                .map(|l| l["reasons"][0]["rule"].as_str().unwrap_or("").to_string())
                .collect();
            rules.len() >= 2
        }),
        "{rules:?}\n{}",
        p.logs()
    );
    rules.sort();
    assert_eq!(
        rules,
        ["country", "decode"],
        "each dead letter exactly once"
    );
    let db = p.db().await;
    let left: i64 = db
        .query_one("SELECT count(*) FROM skuflow.dead_letter_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "the outbox is emptied once the letters are acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_cannot_be_moved_is_given_up_on_and_the_work_queue_moves_on() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let stuck_key = "incoming/individual/store-1/2026-11-24/skus.csv";
    upload_local(
        &buckets,
        "skus-de",
        stuck_key,
        &sample_rows(71, 40, 0, "EUR", "2026-11-24"),
    );
    // processed/ cannot be created in this bucket: a file stands where the directory would be.
    std::fs::write(buckets.join("skus-de/processed"), b"in the way").unwrap();
    let args = [
        format!("--bucket-root={}", buckets.display()),
        "--max-attempts=3".to_string(),
    ];
    let ingest = p.start_ingest(&args);
    let failed = wait_event(&p, stuck_key, "failed");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("gave up after 3 attempts") && reason.contains("processed"),
        "{reason}"
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(
            buckets.join("skus-de/errors/individual/store-1/2026-11-24/skus.csv.errors.json"),
        )
        .expect("the report of the abandoned file"),
    )
    .unwrap();
    assert_eq!(report["gave_up_after_attempts"], 3);
    assert_eq!(report["file_id"], failed["file_id"]);
    let (_, m) = p.ops_get(ingest, "/metrics");
    assert_eq!(
        metric(&m, "skuflow_files_total", &[("outcome", "abandoned")]),
        Some(1.0),
        "{m}"
    );
    // The queue moves on: a later upload to another bucket lands.
    let next_key = "incoming/individual/store-2/2026-11-24/skus.csv";
    upload_local(
        &buckets,
        "skus-at",
        next_key,
        &sample_rows(72, 10, 0, "EUR", "2026-11-24"),
    );
    wait_event(&p, next_key, "completed");
    assert!(buckets
        .join("skus-at/processed/individual/store-2/2026-11-24/skus.csv")
        .exists());
    // A new worker's scan queues the stuck file again: it is skipped, nothing is produced.
    p.kill(ingest);
    let records_before = topic_end(&p, &p.topics.records);
    p.start_ingest(&args);
    assert!(
        wait_until(WAIT, || p
            .logs()
            .matches("Queued uploads found by the bucket scan")
            .count()
            >= 3),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        topic_end(&p, &p.topics.records),
        records_before,
        "the abandoned file was ingested again"
    );
    assert!(
        buckets.join("skus-de").join(stuck_key).exists(),
        "the object stays where it was"
    );
}

fn csv_of(lines: &[&str]) -> String {
    let mut s = skuflow_e2e::HEADER.to_string();
    for l in lines {
        s.push('\n');
        s.push_str(l);
    }
    s.push('\n');
    s
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hostile_values_and_repeated_keys_are_reported_and_memory_stays_bounded() {
    use std::io::Write;
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let dir = buckets.join("skus-nl");
    let put = |key: &str, bytes: &[u8]| {
        let f = dir.join(key);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, bytes).unwrap();
    };
    let row = |sku: &str, units: u32, date: &str| {
        format!("{sku},Milk,dairy,,1.00,,EUR,5,{units},{date},")
    };
    // Over the object size limit.
    let big: Vec<String> = (0..6000)
        .map(|i| row(&format!("B-{i}"), 1, "2026-11-20"))
        .collect();
    put(
        "incoming/individual/s1/2026-11-20/big.csv",
        csv_of(&big.iter().map(String::as_str).collect::<Vec<_>>()).as_bytes(),
    );
    // Over the rows limit, compressed small enough to pass the size limit.
    let many: Vec<String> = (0..1500)
        .map(|i| row(&format!("M-{i}"), 1, "2026-11-20"))
        .collect();
    put(
        "incoming/individual/s2/2026-11-20/many.csv.gz",
        &skuflow_e2e::gzip(csv_of(&many.iter().map(String::as_str).collect::<Vec<_>>()).as_bytes()),
    );
    // A zstd frame that asks for a 64 MiB window.
    let window: Vec<u8> = {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(26).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(csv_of(&[&row("W-1", 1, "2026-11-20")]).as_bytes())
            .unwrap();
        let filler: String = (0..100_000)
            .map(|i| format!("{}\n", row(&format!("W-{i}"), 1, "2026-11-20")))
            .collect();
        enc.write_all(filler.as_bytes()).unwrap();
        enc.finish().unwrap()
    };
    put("incoming/individual/s3/2026-11-20/window.csv.zst", &window);
    let limits = p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        "--buckets=skus-nl".into(),
        "--max-object-bytes=150000".into(),
        "--max-rows-per-file=1000".into(),
        "--max-zstd-window-log=20".into(),
    ]);
    for (key, limit) in [
        (
            "incoming/individual/s1/2026-11-20/big.csv",
            "--max-object-bytes",
        ),
        (
            "incoming/individual/s2/2026-11-20/many.csv.gz",
            "--max-rows-per-file",
        ),
        (
            "incoming/individual/s3/2026-11-20/window.csv.zst",
            "--max-zstd-window-log",
        ),
    ] {
        let ev = wait_event(&p, key, "failed");
        let reason = ev["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(limit), "{key}: {reason}");
        let report = dir.join(format!(
            "{}.errors.json",
            key.replacen("incoming/", "errors/", 1)
        ));
        let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert!(
            report["reason"].as_str().unwrap().contains(limit),
            "{report}"
        );
    }
    p.kill(limits);

    // With the default limits, in another bucket: one row a million times over (the
    // adversarial upload). Every copy but the last repeats its key, so the file fails as a
    // whole after the first pass and produces nothing.
    let dir = buckets.join("skus-be");
    let put = |key: &str, bytes: &[u8]| {
        let f = dir.join(key);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, bytes).unwrap();
    };
    let copies: Vec<u8> = {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(skuflow_e2e::HEADER.as_bytes()).unwrap();
        enc.write_all(b"\n").unwrap();
        let line = format!("{}\n", row("SAME-1", 3, "2026-11-20"));
        for _ in 0..1_000_000 {
            enc.write_all(line.as_bytes()).unwrap();
        }
        enc.finish().unwrap()
    };
    let copies_key = "incoming/individual/s4/2026-11-20/copies.csv.zst";
    put(copies_key, &copies);
    // Dates out of the window and a key repeated within an otherwise good file.
    put(
        "incoming/individual/s5/2026-11-20/mixed.csv",
        csv_of(&[
            &row("A-1", 1, "2026-11-20"),
            &row("A-2", 1, "0001-01-01"),
            &row("A-3", 1, "9999-12-31"),
            &row("A-1", 2, "2026-11-20"),
            &row("A-4", 1, "2026-11-20"),
            &row("A-5", 1, "2026-11-20"),
            &row("A-1", 3, "2026-11-20"),
            &row("A-6", 1, "2026-11-20"),
        ])
        .as_bytes(),
    );
    // It joins the group of the worker just SIGKILLed: once that member's session expires,
    // tansu may leave every partition unassigned (docs/tansu.md). The stall watch rejoins after
    // 20 s instead of the ingest's default 900.
    let ingest = p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        "--buckets=skus-be".into(),
        "--rejoin-stalled-secs=20".into(),
    ]);
    let pid = p.children[ingest].id();
    let failed = wait_event(&p, copies_key, "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("999999 of 1000000 rows"), "{reason}");
    assert!(
        p.read_topic(&p.topics.records)
            .iter()
            .all(|r| r["sku"] != "SAME-1"),
        "the copies were produced"
    );
    let mixed = "incoming/individual/s5/2026-11-20/mixed.csv";
    let done = wait_event(&p, mixed, "completed");
    assert_eq!(
        (
            &done["rows_total"],
            &done["rows_valid"],
            &done["rows_rejected"]
        ),
        (&Value::from(8), &Value::from(4), &Value::from(4)),
        "{done}"
    );
    let rejects: Vec<Value> = p
        .read_topic(&p.topics.rejects)
        .into_iter()
        .filter(|r| r["key"] == mixed)
        .collect();
    let mut seen: Vec<(u64, String, Option<u64>)> = rejects
        .iter()
        .map(|r| {
            let reason = &r["reasons"][0];
            (
                r["line"].as_u64().unwrap(),
                reason["rule"].as_str().unwrap().to_string(),
                reason["column"].as_u64(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (2, "duplicate_key".to_string(), None),
            (3, "date_range".to_string(), Some(10)),
            (4, "date_range".to_string(), Some(10)),
            (5, "duplicate_key".to_string(), None),
        ]
    );
    for r in &rejects {
        let msg = r["reasons"][0]["message"].as_str().unwrap();
        match r["reasons"][0]["rule"].as_str().unwrap() {
            "duplicate_key" => assert!(msg.contains("line 8"), "{msg}"),
            _ => assert!(msg.contains("between 2000-01-01 and"), "{msg}"),
        }
        assert!(r["raw"].as_str().unwrap().starts_with("A-"), "{r}");
    }
    // Only the last A-1 is produced.
    let a1: Vec<Value> = p
        .read_topic(&p.topics.records)
        .into_iter()
        .filter(|r| r["sku"] == "A-1")
        .collect();
    assert_eq!(a1.len(), 1);
    assert_eq!(a1[0]["units_sold"], 3);
    let report: Value = serde_json::from_slice(
        &std::fs::read(dir.join("processed/individual/s5/2026-11-20/mixed.csv.report.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(
        report["rejected_rows"].as_array().unwrap().len(),
        4,
        "{report}"
    );
    let rss = peak_rss_kib(pid);
    eprintln!("ingest peak RSS: {} MiB", rss / 1024);
    assert!(rss > 0 && rss < 128 * 1024, "ingest peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_request_that_does_not_match_the_ingested_version_is_refused() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let key = "incoming/individual/store-5/2026-11-23/skus.csv";
    let rows: Vec<SampleRow> = sample_rows(81, 20, 0, "EUR", "2026-11-23");
    upload_local(&buckets, "skus-fi", key, &rows);
    let ingest = p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    let done = wait_event(&p, key, "completed");
    let processed = done["moved_to"].as_str().unwrap().to_string();
    let records = topic_end(&p, &p.topics.records);
    let queue = |req: UploadRequest| {
        let (k, payload, _) = skuflow_ingest::discovery::upload_message(&req).unwrap();
        let brokers = p.stack.brokers.clone();
        let topic = p.topics.uploads.clone();
        async move { produce(&brokers, &topic, &[(k, payload)]).await }
    };
    let replay = |last_modified: &str| {
        let mut r = UploadRequest::new(
            "skus-fi",
            &processed,
            done["etag"].as_str().map(str::to_string),
            None,
            Trigger::Replay,
        );
        r.last_modified = Some(last_modified.parse().unwrap());
        r
    };
    // A forged version (years ahead) would outrank every later correction: refused.
    queue(replay("2031-01-01T00:00:00Z")).await;
    assert!(
        wait_until(WAIT, || p.logs().contains("Upload request refused")),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        topic_end(&p, &p.topics.records),
        records,
        "a refused replay produced records"
    );
    let (_, m) = p.ops_get(ingest, "/metrics");
    assert_eq!(
        metric(&m, "skuflow_files_total", &[("outcome", "refused")]),
        Some(1.0)
    );
    // The version the ingest wrote beside the object replays.
    queue(replay(done["last_modified"].as_str().unwrap())).await;
    assert!(
        wait_until(WAIT, || topic_end(&p, &p.topics.records) == records + 20),
        "{}",
        p.logs()
    );
    let replayed: Vec<Value> = p.read_topic(&p.topics.records);
    let versions: std::collections::HashSet<String> = replayed
        .iter()
        .map(|r| format!("{}:{}", r["record_id"], r["record_version"]))
        .collect();
    assert_eq!(
        versions.len(),
        20,
        "a replay reproduces the same ids and versions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_money_and_dates_never_stop_the_scheduled_finance_report() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("reports");
    let rates = root.path().join("rates.csv");
    std::fs::write(
        &rates,
        "date,currency,reporting_currency,rate\n2026-11-01,VND,EUR,1000000\n",
    )
    .unwrap();
    // The largest price and units the contract accepts, in a currency with a large rate: the
    // converted revenue (about 2 × 10^29) is beyond exact decimal arithmetic.
    let mut huge = common::record("VN", 1, 5);
    huge.currency = "VND".into();
    huge.unit_price = "99999999999999.9999".parse().unwrap();
    huge.units_sold = i32::MAX;
    // A business date in year 1 (sent straight to the topic, past the ingest's date window).
    let mut ancient = common::record("DE", 2, 5);
    ancient.business_date = chrono::NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
    let normal = common::record("DE", 3, 5);
    produce(
        &p.stack.brokers,
        &p.topics.records,
        &record_messages(&[huge, ancient, normal]),
    )
    .await;
    let reporter = p.start_reporter(&[
        "--report-every-secs=2".into(),
        format!("--report-out={}", out.display()),
        format!("--rates={}", rates.display()),
    ]);
    p.expect_count("SELECT count(*) FROM skuflow_finance.lines", 3, WAIT)
        .await;
    let mut summary = Value::Null;
    assert!(
        wait_until(WAIT, || {
            summary = std::fs::read(out.join("summary.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            summary["rows"] == 2
        }),
        "{summary}\n{}",
        p.logs()
    );
    let excluded = summary["excluded_rows"].as_array().unwrap();
    assert_eq!(excluded.len(), 1, "{summary}");
    assert_eq!(excluded[0]["currency"], "VND");
    assert!(excluded[0]["reason"]
        .as_str()
        .unwrap()
        .contains("overflows"));
    // The reporter keeps running its schedule.
    assert!(
        wait_until(WAIT, || {
            let (_, m) = p.ops_get(reporter, "/metrics");
            metric(&m, "skuflow_reports_total", &[("outcome", "written")]).unwrap_or(0.0) >= 2.0
        }),
        "{}",
        p.logs()
    );
}

/// A worker ingests several uploads at once: small uploads that arrive while two large ones are
/// being ingested finish first. The scan does not queue a large upload again while it is being
/// ingested (its request is still open on the work queue), a second request for it waits for
/// the first and then finds it moved, nothing is produced twice, every request is committed,
/// and the worker's peak RSS stays within the memory its concurrency was sized for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_uploads_do_not_wait_behind_large_ones_and_nothing_is_queued_twice() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let (rows_large, rows_small) = (120_000u64, 20u64);
    let large: Vec<String> = (1..=2)
        .map(|i| format!("incoming/individual/big-{i}/2026-11-24/skus.csv.zst"))
        .collect();
    for (i, key) in large.iter().enumerate() {
        let rows = sample_rows(100 + i as u64, rows_large, 0, "EUR", "2026-11-24");
        let csv = render_csv(&rows, false, false);
        let file = buckets.join("skus-at").join(key);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, zstd::encode_all(csv.as_bytes(), 3).unwrap()).unwrap();
    }
    let (concurrency, max_rows) = (3u64, 200_000u64);
    let group = format!("skuflow-ingest-{}", p.id);
    let ingest = p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        format!("--concurrency={concurrency}"),
        format!("--max-rows-per-file={max_rows}"),
        "--requeue-after-secs=2".into(),
    ]);
    let pid = p.children[ingest].id();
    for key in &large {
        wait_event(&p, key, "accepted");
    }
    let small: Vec<String> = (1..=4)
        .map(|i| format!("incoming/individual/small-{i}/2026-11-24/skus.csv"))
        .collect();
    for (i, key) in small.iter().enumerate() {
        let rows = sample_rows(500 + i as u64, rows_small, 0, "EUR", "2026-11-24");
        upload_local(&buckets, "skus-at", key, &rows);
    }
    // A second request for the first large upload while it is being ingested.
    let (k, payload, _) = skuflow_ingest::discovery::upload_message(&UploadRequest::new(
        "skus-at",
        &large[0],
        None,
        None,
        Trigger::Api,
    ))
    .unwrap();
    produce(&p.stack.brokers, &p.topics.uploads, &[(k, payload)]).await;
    for key in &small {
        wait_event(&p, key, "completed");
    }
    for key in &large {
        assert!(
            !events_of(&p, key)
                .iter()
                .any(|e| e["status"] == "completed"),
            "{key} was done before the small uploads: they waited behind it (or it was too small \
             to show anything)"
        );
    }
    let mut elapsed = Vec::new();
    for key in &large {
        elapsed.push(wait_event(&p, key, "completed")["duration_ms"].clone());
    }
    eprintln!("large uploads took {elapsed:?} ms each");
    // Scans every second, and 2 s before an object may be queued again: had a scan queued a
    // large upload again while it was ingested, its request would be on the queue.
    std::thread::sleep(Duration::from_secs(3));
    let requests = p.read_topic(&p.topics.uploads);
    for (i, key) in large.iter().enumerate() {
        let queued = requests.iter().filter(|r| r["key"] == *key).count();
        assert_eq!(queued, 1 + usize::from(i == 0), "requests for {key}");
        let accepted = events_of(&p, key)
            .iter()
            .filter(|e| e["status"] == "accepted")
            .count();
        assert_eq!(accepted, 1, "{key} was ingested more than once");
    }
    assert_eq!(
        topic_end(&p, &p.topics.records),
        (2 * rows_large + small.len() as u64 * rows_small) as i64,
        "records produced"
    );
    let end = topic_end(&p, &p.topics.uploads);
    let committed = wait_until(WAIT, || {
        p.committed(&group, &p.topics.uploads, 3)
            .iter()
            .map(|&o| o.max(0))
            .sum::<i64>()
            == end
    });
    assert!(
        committed,
        "not every upload request was committed\n{}",
        p.logs()
    );
    let mut settings = skuflow_ingest::worker::IngestSettings::default();
    settings.limits.max_rows = max_rows;
    let budget = (96 << 20) + concurrency * skuflow_ingest::work::memory_per_upload(&settings);
    let rss = peak_rss_kib(pid) * 1024;
    eprintln!(
        "ingest peak RSS {} MiB, sized for {} MiB",
        rss >> 20,
        budget >> 20
    );
    assert!(rss > 0 && rss <= budget, "peak RSS {rss} above {budget}");
}

/// The bulk lane: past its first `--bulk-after-rows` records, a large upload produces at most
/// `--bulk-records-per-sec`; it still produces every row, and a small upload landing meanwhile
/// is not held back with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_upload_is_paced_past_its_first_rows_and_loses_nothing() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let (rows_large, rows_small, after, rate) = (11_000u64, 20u64, 1_000u64, 1_000u64);
    let large = "incoming/individual/big-1/2026-11-24/skus.csv";
    upload_local(
        &buckets,
        "skus-at",
        large,
        &sample_rows(7, rows_large, 0, "EUR", "2026-11-24"),
    );
    p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        format!("--bulk-after-rows={after}"),
        format!("--bulk-records-per-sec={rate}"),
    ]);
    wait_event(&p, large, "accepted");
    let small = "incoming/individual/small-1/2026-11-24/skus.csv";
    upload_local(
        &buckets,
        "skus-at",
        small,
        &sample_rows(8, rows_small, 0, "EUR", "2026-11-24"),
    );
    wait_event(&p, small, "completed");
    assert!(
        !events_of(&p, large)
            .iter()
            .any(|e| e["status"] == "completed"),
        "the large upload was done before the small one: nothing was paced"
    );
    let done = wait_event(&p, large, "completed");
    // 10,000 paced records at 1,000 a second, less the tenth of a second the lane may hold.
    let took = done["duration_ms"].as_u64().unwrap();
    let least = (rows_large - after) * 1000 / rate - 100;
    assert!(
        took >= least,
        "the large upload took {took} ms, less than the lane allows ({least} ms)"
    );
    assert_eq!(
        topic_end(&p, &p.topics.records),
        (rows_large + rows_small) as i64,
        "records produced"
    );
    let logs = p.logs();
    assert!(
        logs.contains("Large upload: its further records go through the worker's bulk lane")
            && logs.contains(done["file_id"].as_str().unwrap()),
        "no log line says the upload went through the bulk lane\n{logs}"
    );
}
