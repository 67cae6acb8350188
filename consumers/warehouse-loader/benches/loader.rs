//! Warehouse loader throughput, measured against baselines in the same run on the local stack
//! (`make bench`). Prints every figure and ratio:
//!   (a) `psql \copy` of the same rows from CSV into an identical partitioned table, same key
//!   (b) the loader's write path alone: decoded records → COPY → merge → offsets, no broker
//!   (c) a bare rdkafka consumer draining the topic (the broker's limit here)
//!   (d) the loader end to end from the topic
//! Targets: (b) ≥ 0.8 × (a); (d) ≥ 0.8 × min(b, c).
//! Records: SKUFLOW_BENCH_RECORDS (default 1,000,000). SKUFLOW_BENCH_ONLY_WRITE=1 runs (a) and
//! (b) alone (no broker), for work on the write path.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use chrono::Utc;
use skuflow_e2e::bench::{
    consume_until_stored, drain_bare, fresh_databases, load_records_topic, pg, rate,
    records_wanted, required_env,
};
use skuflow_platform::{ConsumeArgs, Consumed, KafkaArgs, Sink, TopicArgs};
use skuflow_schemas::SkuRecord;
use skuflow_warehouse_loader::PgSink;

use skuflow_e2e::synthetic_record as record;

fn csv_value(rec: &SkuRecord, name: &str) -> String {
    let v = serde_json::to_value(rec).unwrap();
    match &v[name] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => format!("\"{}\"", s.replace('"', "\"\"")),
        other => other.to_string(),
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = records_wanted();
    let brokers = required_env("SKUFLOW_TEST_BROKERS");
    let admin_url = required_env("SKUFLOW_TEST_PG_URL");
    let id = format!("{:x}", Utc::now().timestamp_micros());
    let admin = pg(&admin_url).await;
    let [url_a, url_b, url_d]: [String; 3] =
        fresh_databases(&admin, &admin_url, &format!("bench_{id}"), &["a", "b", "d"])
            .await
            .try_into()
            .unwrap();
    println!("generating {n} records");
    let records: Vec<SkuRecord> = (0..n).map(record).collect();

    // (a) psql \copy into an identical partitioned table with the same primary key.
    let mut sink_a = PgSink::new(&url_a, "bench");
    sink_a.connect().await.unwrap();
    let ca = pg(&url_a).await;
    ca.batch_execute(
        "CREATE TABLE skuflow.copy_target (LIKE skuflow.sku_facts INCLUDING ALL) PARTITION BY LIST (country);
         CREATE TABLE skuflow.copy_target_de PARTITION OF skuflow.copy_target FOR VALUES IN ('DE');",
    )
    .await
    .unwrap();
    let cols = skuflow_schemas::postgres::column_names();
    let mut csv = tempfile::NamedTempFile::new().unwrap();
    {
        let mut w = std::io::BufWriter::new(csv.as_file_mut());
        for r in &records {
            let line: Vec<String> = cols.iter().map(|c| csv_value(r, c)).collect();
            writeln!(w, "{}", line.join(",")).unwrap();
        }
    }
    let t = Instant::now();
    let status = std::process::Command::new("psql")
        .arg(&url_a)
        .arg("-qc")
        .arg(format!(
            "\\copy skuflow.copy_target ({}) FROM '{}' WITH (FORMAT csv)",
            cols.join(","),
            csv.path().display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "psql \\copy failed");
    let a = t.elapsed();

    // (b) the loader's write path alone.
    let mut sink_b = PgSink::new(&url_b, "bench");
    sink_b.connect().await.unwrap();
    let consumed: Vec<Consumed<SkuRecord>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Consumed {
            partition: 0,
            offset: i as i64,
            value: r.clone(),
        })
        .collect();
    let batch = ConsumeArgs::default().batch_size as usize;
    let t = Instant::now();
    for chunk in consumed.chunks(batch) {
        let offsets = BTreeMap::from([(0, chunk.last().unwrap().offset + 1)]);
        sink_b.write("bench", chunk, &offsets).await.unwrap();
    }
    let b = t.elapsed();
    let (ra, rb) = (rate(n, a), rate(n, b));
    let write_ratio = |ra: f64, rb: f64| {
        println!(
            "  ratio (b)/(a)          = {:.2}  (target ≥ 0.80) {}",
            rb / ra,
            if rb / ra >= 0.8 { "ok" } else { "MISSED" }
        );
    };
    let drop_dbs = || async {
        for db in ["a", "b", "d"] {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS bench_{db}_{id} WITH (FORCE)"
                ))
                .await;
        }
    };
    if std::env::var("SKUFLOW_BENCH_ONLY_WRITE").is_ok_and(|v| v == "1") {
        println!("\nwarehouse loader write path, {n} records");
        println!(
            "  (a) psql \\copy CSV → same table      {:>8.2} s  {ra:>10.0} rows/s",
            a.as_secs_f64()
        );
        println!(
            "  (b) loader write path (no broker)     {:>8.2} s  {rb:>10.0} rows/s",
            b.as_secs_f64()
        );
        write_ratio(ra, rb);
        drop_dbs().await;
        return;
    }

    // Load the topic (not timed as a stage).
    let topics = TopicArgs::with_suffix(&format!(".bench{id}"));
    let kafka = KafkaArgs::new(&brokers);
    let took = load_records_topic(&kafka, &topics, &records).await;
    println!("loaded the topic in {:.1} s", took.as_secs_f64());
    let (c, bytes) = drain_bare(&kafka, &format!("bench-bare-{id}"), &topics.records, n);

    let d = consume_until_stored(
        &kafka,
        &topics,
        &format!("bench-loader-{id}"),
        PgSink::new(&url_d, "bench-loader"),
        (&url_d, "skuflow.consumer_offsets"),
        n,
    )
    .await;
    let cd = pg(&url_d).await;
    let loaded: i64 = cd
        .query_one("SELECT count(*) FROM skuflow.sku_facts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(loaded as u64, n, "end-to-end load lost or duplicated rows");

    let (rc, rd) = (rate(n, c), rate(n, d));
    println!();
    println!(
        "warehouse loader, {n} records ({:.0} MB of JSON on the topic)",
        bytes as f64 / 1e6
    );
    println!(
        "  (a) psql \\copy CSV → same table      {:>8.2} s  {:>10.0} rows/s",
        a.as_secs_f64(),
        ra
    );
    println!(
        "  (b) loader write path (no broker)     {:>8.2} s  {:>10.0} rows/s",
        b.as_secs_f64(),
        rb
    );
    println!(
        "  (c) bare consumer draining the topic  {:>8.2} s  {:>10.0} rows/s",
        c.as_secs_f64(),
        rc
    );
    println!(
        "  (d) loader end to end from the topic  {:>8.2} s  {:>10.0} rows/s",
        d.as_secs_f64(),
        rd
    );
    write_ratio(ra, rb);
    let floor = rb.min(rc);
    println!(
        "  ratio (d)/min((b),(c)) = {:.2}  (target ≥ 0.80) {}",
        rd / floor,
        if rd / floor >= 0.8 { "ok" } else { "MISSED" }
    );
    drop_dbs().await;
}
