//! Search indexer throughput, measured against a baseline in the same run (`make bench`). Prints
//! every figure and ratio:
//!   (a) serde_json serialisation of the same records (the floor: the JSON of every document)
//!   (b) the indexer's encode path alone on one core: action + source lines, bounded requests
//!   (c) the sink end to end against the `_bulk` double: encode, send with 4 requests in flight,
//!       read every item's result; reported per wall second and per CPU second of the process
//!       (which includes the double's own parsing, so it under-states the indexer)
//! Target: (b) ≥ 50,000 documents/s on one core, so that encoding and batching are never the
//! bottleneck. Records: SKUFLOW_BENCH_RECORDS (default 200,000).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skuflow_e2e::bench::proc_usage;
use skuflow_e2e::es_double::EsDouble;
use skuflow_e2e::synthetic_record;
use skuflow_platform::{Consumed, Sink};
use skuflow_schemas::SkuRecord;
use skuflow_search_indexer::bulk::{self, Bounds, Layout};
use skuflow_search_indexer::{EsSink, Tuning};

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    proc_usage("self").map_or(0.0, |(cpu, _)| cpu)
}

fn main() {
    let n: u64 = std::env::var("SKUFLOW_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!("search indexer bench: {n} records");
    let records: Vec<SkuRecord> = (0..n).map(synthetic_record).collect();
    let refs: Vec<&SkuRecord> = records.iter().collect();
    let layout = Layout {
        prefix: "skus".into(),
    };
    let bounds = Bounds {
        max_docs: 1000,
        max_bytes: 5_000_000,
    };

    // (a) serde_json of every record.
    let t = Instant::now();
    let mut bytes = 0usize;
    let mut buf = Vec::with_capacity(1024);
    for r in &records {
        buf.clear();
        serde_json::to_writer(&mut buf, r).unwrap();
        bytes += buf.len();
    }
    let a = n as f64 / t.elapsed().as_secs_f64();
    println!("(a) serde_json of the records:        {a:>12.0} docs/s  ({bytes} bytes)");

    // (b) the encode path, the same records, one core.
    let all: Vec<usize> = (0..refs.len()).collect();
    let t = Instant::now();
    let mut requests = 0;
    for chunk in all.chunks(5000) {
        requests += bulk::encode(&layout, &refs, chunk, bounds).unwrap().len();
    }
    let b = n as f64 / t.elapsed().as_secs_f64();
    println!("(b) encode path (one core):           {b:>12.0} docs/s  ({requests} requests)");

    // (c) the sink end to end against the double (the double on its own runtime thread).
    let double_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let es = double_rt.block_on(EsDouble::start());
    es.with(|s| {
        s.templates.insert(
            "skus".into(),
            skuflow_schemas::elasticsearch::index_template("skus", "skus"),
        );
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let transport =
        elasticsearch::http::transport::Transport::single_node(&es.url).expect("transport");
    let mut sink = EsSink::new(
        transport,
        layout.clone(),
        Tuning {
            bounds,
            max_in_flight: 4,
            item_retries: 3,
            request_timeout: Duration::from_secs(30),
        },
    );
    let consumed: Vec<Consumed<SkuRecord>> = records
        .into_iter()
        .enumerate()
        .map(|(i, value)| Consumed {
            partition: 0,
            offset: i as i64,
            value,
        })
        .collect();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    rt.block_on(async {
        for batch in consumed.chunks(5000) {
            let refused = sink
                .write("bench", batch, &BTreeMap::new())
                .await
                .expect("the double accepts the batch");
            assert!(refused.is_empty());
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let held = es.with(|s| s.docs.len());
    assert_eq!(held as u64, n, "the double holds every document");
    let c = n as f64 / wall;
    let c_cpu = n as f64 / cpu.max(0.01);
    println!("(c) sink → double, end to end:        {c:>12.0} docs/s wall, {c_cpu:.0} docs per CPU-second (indexer + double)");
    println!();
    println!("(b)/(a) encode vs bare serde_json:    {:.2}", b / a);
    println!("(c)/(b) end to end vs encode alone:   {:.2}", c / b);
    println!(
        "target (b) ≥ 50,000 docs/s on one core: {}",
        if b >= 50_000.0 { "met" } else { "NOT met" }
    );
}
