//! The dataset builder's CPU per record as one business day grows: the day is filled to each
//! size (100k, 1M, 5M records by default; SKUFLOW_BENCH_DAY_SIZES) in one write, then after one
//! unmeasured batch, SKUFLOW_BENCH_DAY_BATCHES (default 10) more batches of new keys of that
//! day, each the consume loop's default batch size, are written and their CPU time per record
//! is measured. Target: the
//! cost per record at the largest size at most 1.5 × the cost at the smallest (a batch costs the
//! same however large its day already is). No broker: the sink on a local root. Compaction is
//! scheduled maintenance, off during the batches; one OPTIMIZE round after them is printed.

use std::collections::BTreeMap;

use skuflow_dataset_builder::columns::Encoding;
use skuflow_dataset_builder::rows::Split;
use skuflow_dataset_builder::sink::Maintenance;
use skuflow_dataset_builder::table::Location;
use skuflow_dataset_builder::DatasetSink;
use skuflow_e2e::bench::proc_usage;
use skuflow_platform::{ConsumeArgs, Consumed, Sink};
use skuflow_samples::synthetic_record;
use skuflow_schemas::SkuRecord;

fn cpu_seconds() -> f64 {
    proc_usage("self").map_or(0.0, |(cpu, _)| cpu)
}

fn consumed(from: u64, to: u64, offset: &mut i64) -> Vec<Consumed<SkuRecord>> {
    (from..to)
        .map(|i| {
            *offset += 1;
            Consumed {
                partition: 0,
                offset: *offset,
                value: synthetic_record(i),
            }
        })
        .collect()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u64> = std::env::var("SKUFLOW_BENCH_DAY_SIZES")
        .unwrap_or_else(|_| "100000,1000000,5000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SKUFLOW_BENCH_DAY_SIZES: numbers"))
        .collect();
    let batches: u64 = std::env::var("SKUFLOW_BENCH_DAY_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let batch = u64::from(ConsumeArgs::default().batch_size);
    println!(
        "dataset builder, CPU per record as one day grows: {batches} batches of {batch} new keys at each size"
    );
    let mut rows = Vec::new();
    for &size in &sizes {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap(), "--dataset-root").unwrap();
        let mut sink = DatasetSink::new(
            location,
            Split::default(),
            Encoding {
                row_group_rows: 128 * 1024,
                zstd_level: 3,
            },
            10_000_000,
        )
        // Compaction is scheduled maintenance, measured on its own below.
        .with_maintenance(Maintenance {
            optimize_every: std::time::Duration::ZERO,
            vacuum_every: std::time::Duration::ZERO,
            ..Maintenance::default()
        });
        let mut offset = -1;
        let fill = consumed(0, size, &mut offset);
        sink.write("bench", &fill, &BTreeMap::from([(0, offset + 1)]))
            .await
            .unwrap();
        drop(fill);
        // One batch first, not measured: the first after a fill of millions of records also
        // pays for freeing what the fill left (seen here: up to 0.8 s of CPU).
        let warm = consumed(size, size + batch, &mut offset);
        sink.write("bench", &warm, &BTreeMap::from([(0, offset + 1)]))
            .await
            .unwrap();
        let (cpu0, mut n) = (cpu_seconds(), 0u64);
        for b in 1..=batches {
            let from = size + b * batch;
            let next = consumed(from, from + batch, &mut offset);
            n += next.len() as u64;
            sink.write("bench", &next, &BTreeMap::from([(0, offset + 1)]))
                .await
                .unwrap();
        }
        let per = (cpu_seconds() - cpu0) / n as f64;
        // Then one OPTIMIZE round joins the batches' small files.
        let cpu1 = cpu_seconds();
        let done = sink.optimize().await.unwrap();
        let optimize = cpu_seconds() - cpu1;
        println!(
            "  day of {size:>9} records: {:>10.1} µs CPU per record of the next batches; \
             OPTIMIZE joined {} files ({} rows) in {:.2} s CPU",
            per * 1e6,
            done.replaced,
            done.rows,
            optimize
        );
        rows.push((size, per));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let growth = last.1 / first.1;
        println!(
            "  growth {} → {} records: {growth:.2}× (target ≤ 1.50) {}",
            first.0,
            last.0,
            if growth <= 1.5 { "ok" } else { "MISSED" }
        );
    }
}
