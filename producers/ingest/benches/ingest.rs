//! Ingest throughput and footprint, measured against baselines in the same run on the bench's
//! own broker (`make bench`). Prints every figure and ratio:
//!   (a) a Python script doing what a user would write instead (csv.DictReader + json +
//!       confluent-kafka, idempotent producer): wall, CPU seconds, peak RSS
//!   (b) a bare rdkafka producer sending the same messages already serialized, with the ingest's
//!       producer configuration and headers (the broker's limit)
//!   (c) `skuflow-ingest` on the same CSV in a local bucket: wall until the file is in
//!       processed/, CPU seconds and peak RSS of the process
//!   and the peak RSS of (c) on a 10 MB upload (and a 1 GB one with SKUFLOW_BENCH_BIG=1).
//! Targets: (c) ≥ 0.8 × (b) rows/s; CPU per row of (c) ≤ 1/3 of (a); peak RSS < 100 MiB.
//! Rows: SKUFLOW_BENCH_ROWS (default 1,000,000). For experiments: SKUFLOW_BENCH_X passes
//! librdkafka properties (`k=v,k=v`) to both (b) and (c); SKUFLOW_BENCH_ONLY_INGEST=1 runs (c)
//! alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skuflow_e2e::bench::{proc_usage, produce_with, python_figures};
use skuflow_e2e::{render_csv, sample_rows};
use skuflow_platform::kafka::{ensure_topics, pipeline_topics};
use skuflow_platform::{KafkaArgs, TopicArgs};
use skuflow_schemas::{headers, RECORD_SCHEMA};

/// librdkafka properties (`k=v`, comma-separated in SKUFLOW_BENCH_X) given to both (b) and (c).
fn extra_options() -> Vec<String> {
    std::env::var("SKUFLOW_BENCH_X")
        .map(|v| {
            v.split(',')
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// (CPU seconds, peak RSS in KiB) of a running process.
fn usage(pid: u32) -> Option<(f64, u64)> {
    proc_usage(&pid.to_string())
}

/// Runs skuflow-ingest over one CSV of `rows` rows; returns (wall, CPU s, peak RSS KiB, bytes).
async fn run_ingest(brokers: &str, rows: u64, tag: &str) -> (Duration, f64, u64, u64) {
    let dir = tempfile::Builder::new()
        .prefix("skuflow-bench-ingest-")
        .tempdir()
        .unwrap();
    let key = "incoming/individual/bench-1/2026-11-06/skus.csv";
    let file = dir.path().join("skus-de").join(key);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        // Render in chunks so that a 1 GB upload does not need 1 GB here either.
        let chunk = 100_000;
        let mut first = true;
        let mut done = 0;
        while done < rows {
            let n = chunk.min(rows - done);
            let text = render_csv(&sample_rows(done, n, 0, "EUR", "2026-11-06"), false, false);
            let text = if first {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |(_, b)| b)
            };
            w.write_all(text.as_bytes()).unwrap();
            first = false;
            done += n;
        }
    }
    let bytes = std::fs::metadata(&file).unwrap().len();
    let topics = TopicArgs::with_suffix(&format!(".bench{tag}"));
    ensure_topics(&KafkaArgs::new(brokers), &pipeline_topics(&topics, 3))
        .await
        .unwrap();
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_skuflow-ingest"))
        .arg(format!("--brokers={brokers}"))
        .arg(format!("--bucket-root={}", dir.path().display()))
        .arg(format!("--uploads-topic={}", topics.uploads))
        .arg(format!("--records-topic={}", topics.records))
        .arg(format!("--rejects-topic={}", topics.rejects))
        .arg(format!("--files-topic={}", topics.files))
        .arg(format!("--group=bench-ingest-{tag}"))
        .arg("--scan-interval-secs=1")
        .args(extra_options().iter().map(|o| format!("-X{o}")))
        .env("SKUFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = dir
        .path()
        .join("skus-de")
        .join(key.replace("incoming/", "processed/"));
    let mut last = (0.0, 0);
    while !done.exists() {
        if let Some(u) = usage(child.id()) {
            last = u;
        }
        assert!(child.try_wait().unwrap().is_none(), "skuflow-ingest exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = t.elapsed();
    if let Some(u) = usage(child.id()) {
        last = u;
    }
    let _ = child.kill();
    let _ = child.wait();
    (wall, last.0, last.1, bytes)
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("SKUFLOW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let brokers = std::env::var("SKUFLOW_TEST_BROKERS")
        .unwrap_or_else(|_| panic!("SKUFLOW_TEST_BROKERS is not set: run `make bench`"));
    let id = format!("{:x}", chrono::Utc::now().timestamp_micros());

    // (c) first, on its own CSV.
    let (c_wall, c_cpu, c_rss, c_bytes) = run_ingest(&brokers, rows, &format!("{id}c")).await;

    if std::env::var_os("SKUFLOW_BENCH_ONLY_INGEST").is_some() {
        let w = c_wall.as_secs_f64();
        println!("(c) skuflow-ingest {rows} rows: {w:.2} s, {:.0} rows/s, CPU {c_cpu:.2} s, peak RSS {:.0} MiB",
            rows as f64 / w, c_rss as f64 / 1024.0);
        return;
    }

    // (a) the Python baseline on a CSV of the same rows.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("skus.csv");
    std::fs::write(
        &csv,
        render_csv(&sample_rows(0, rows, 0, "EUR", "2026-11-06"), false, false),
    )
    .unwrap();
    let topics = TopicArgs::with_suffix(&format!(".bench{id}a"));
    let mut kafka = KafkaArgs::new(&brokers);
    kafka.options = extra_options()
        .iter()
        .filter_map(|o| o.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    ensure_topics(&kafka, &pipeline_topics(&topics, 3))
        .await
        .unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/ingest_baseline.py");
    let figures = python_figures(
        Command::new("python3")
            .arg(&script)
            .arg(&csv)
            .arg(&brokers)
            .arg(&topics.records),
    );
    let field = |k: &str| figures.get(k).copied().unwrap_or(f64::NAN);
    let (a_wall, a_cpu, a_rss) = (field("wall"), field("cpu"), field("maxrss_kib"));

    // (b) a bare producer, the same messages already serialized: the ingest's producer
    // configuration, key, payload and headers (schema id, file id), nothing else to do.
    let payloads: Vec<(String, Vec<u8>)> = (0..rows)
        .map(|i| {
            let r = skuflow_e2e::synthetic_record(i);
            (r.kafka_key(), serde_json::to_vec(&r).unwrap())
        })
        .collect();
    let topics_b = TopicArgs::with_suffix(&format!(".bench{id}b"));
    ensure_topics(&kafka, &pipeline_topics(&topics_b, 3))
        .await
        .unwrap();
    let cpu_before = usage(std::process::id()).map_or(f64::NAN, |u| u.0);
    let b_wall = produce_with(
        skuflow_ingest::worker::record_producer_config(&kafka),
        &topics_b.records,
        &payloads,
        &[
            (headers::SCHEMA, RECORD_SCHEMA),
            (headers::FILE_ID, "0123456789abcdef0123456789abcdef"),
        ],
    )
    .as_secs_f64();
    let b_cpu = usage(std::process::id()).map_or(f64::NAN, |u| u.0) - cpu_before;

    // Peak RSS on a 10 MB upload (and 1 GB on request).
    let ten_mb_rows = 10_000_000 / (c_bytes / rows).max(1);
    let (_, _, rss_10mb, bytes_10mb) = run_ingest(&brokers, ten_mb_rows, &format!("{id}s")).await;
    let big = if std::env::var_os("SKUFLOW_BENCH_BIG").is_some() {
        let gb_rows = 1_000_000_000 / (c_bytes / rows).max(1);
        Some(run_ingest(&brokers, gb_rows, &format!("{id}g")).await)
    } else {
        None
    };

    let rate = |wall: f64| rows as f64 / wall.max(1e-9);
    let c_wall = c_wall.as_secs_f64();
    println!();
    println!("ingest, {rows} rows ({:.0} MB CSV)", c_bytes as f64 / 1e6);
    println!("  (a) Python csv + json + confluent-kafka  {a_wall:>8.2} s  {:>10.0} rows/s  CPU {a_cpu:.2} s  peak RSS {:.0} MiB", rate(a_wall), a_rss / 1024.0);
    println!(
        "  (b) bare rdkafka producer (serialized)   {b_wall:>8.2} s  {:>10.0} rows/s  CPU {b_cpu:.2} s",
        rate(b_wall)
    );
    println!("  (c) skuflow-ingest                       {c_wall:>8.2} s  {:>10.0} rows/s  CPU {c_cpu:.2} s  peak RSS {:.0} MiB", rate(c_wall), c_rss as f64 / 1024.0);
    println!(
        "  peak RSS of (c) on a {:.0} MB upload: {:.0} MiB",
        bytes_10mb as f64 / 1e6,
        rss_10mb as f64 / 1024.0
    );
    if let Some((w, cpu, rss, bytes)) = big {
        println!(
            "  peak RSS of (c) on a {:.0} MB upload: {:.0} MiB ({:.1} s, CPU {cpu:.1} s)",
            bytes as f64 / 1e6,
            rss as f64 / 1024.0,
            w.as_secs_f64()
        );
    }
    let r1 = rate(c_wall) / rate(b_wall);
    println!(
        "  ratio (c)/(b) rows/s        = {r1:.2}  (target ≥ 0.80) {}",
        if r1 >= 0.8 { "ok" } else { "MISSED" }
    );
    let r2 = c_cpu / a_cpu;
    println!(
        "  ratio CPU (c)/(a)           = {r2:.2}  (target ≤ 0.33) {}",
        if r2 <= 1.0 / 3.0 { "ok" } else { "MISSED" }
    );
    let rss_ok = c_rss < 100 * 1024 && rss_10mb < 100 * 1024;
    println!(
        "  peak RSS < 100 MiB          {}",
        if rss_ok { "ok" } else { "MISSED" }
    );
}
