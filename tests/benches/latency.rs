//! Upload-to-sink latency on the local stack (`make bench`): what a store, an analyst and finance
//! wait for. A steady stream of uploads of mixed sizes lands in a local bucket while the ingest
//! and every sink run as they ship (release binaries, default flush intervals, the scan every
//! second); for each file and each stage, the time from the object landing in `incoming/` to:
//!   ingest:   its `completed` event on the file lifecycle topic;
//!   <sink>:   the sink's consumer group having committed past the file's last record on every
//!             partition (each sink commits only what it has made durable, so the file's rows are
//!             readable there by then).
//! Two phases of SKUFLOW_BENCH_LATENCY_SECS (default 60) each: the stream alone, then the same
//! stream while one very large upload (SKUFLOW_BENCH_LARGE_ROWS rows, default 100,000) is
//! being ingested. The ingest's bulk lane is sized to the spare capacity of the bench's broker
//! (tansu on sqlite, which saturates one core at about 3,000 records a second here): records past
//! an upload's first SKUFLOW_BENCH_BULK_AFTER_ROWS (default 10,000) at most
//! SKUFLOW_BENCH_BULK_RECORDS_PER_SEC (default 500; 0 turns the lane off). Prints p50, p95, p99 and max per phase, size class and stage, and each
//! stage's ratio of a small file's p99 with the large upload to without. Target: at most 2×.
//! Then the CPU each stage's process spent per record over the whole run (ingest: rows read;
//! sinks: records consumed), as records per CPU-second, and the cores each stage needs for
//! SKUFLOW_BENCH_DAILY_RECORDS records a day (default 500,000,000: 10,000 stores × 50,000 SKUs)
//! at the average rate and at 3× it (a peak hour). The broker, PostgreSQL and Elasticsearch are
//! not in these figures: they are sized by their own vendors' rules.
//! Never pass/fail on time: the figures are printed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{bin, Pipeline};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use skuflow_e2e::es_double::EsDouble;
use skuflow_e2e::{render_csv, sample_rows};

const PARTITIONS: i32 = 3;
/// How often the sinks' committed offsets are read: the resolution of every figure (each read
/// is one OffsetFetch per sink, which the broker answers besides the pipeline's work).
const POLL: Duration = Duration::from_millis(200);
const DATE: &str = "2026-11-30";

/// A size class of the stream: rows per file and seconds between two of its files.
struct Class {
    name: &'static str,
    rows: u64,
    every: Duration,
}

const CLASSES: [Class; 2] = [
    Class {
        name: "small (100 rows)",
        rows: 100,
        every: Duration::from_secs(1),
    },
    Class {
        name: "medium (10k rows)",
        rows: 10_000,
        every: Duration::from_secs(10),
    },
];

/// One uploaded file.
struct Upload {
    phase: usize,
    class: usize,
    key: String,
    landed: SystemTime,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `rows` rows (in chunks) beside the bucket and renames the file into place, so the
/// scan never sees half a file; when it landed.
fn land(buckets: &Path, key: &str, seed: u64, rows: u64) -> SystemTime {
    use std::io::Write;
    let staging = buckets.join(format!(".staging-{seed}"));
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&staging).unwrap());
        let mut done = 0;
        while done < rows {
            let n = (rows - done).min(100_000);
            let text = render_csv(
                &sample_rows(seed * 10_000_000 + done, n, 0, "EUR", DATE),
                false,
                false,
            );
            let body = if done == 0 {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |(_, rest)| rest)
            };
            w.write_all(body.as_bytes()).unwrap();
            done += n;
        }
    }
    let target = buckets.join("skus-de").join(key);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(&staging, &target).unwrap();
    SystemTime::now()
}

/// The consumer groups whose progress is polled, by stage name.
struct Watch {
    stages: Vec<(&'static str, String)>,
    readers: Vec<BaseConsumer>,
    topic: String,
    /// (when, stage, committed offset per partition).
    timeline: Vec<(SystemTime, usize, Vec<i64>)>,
}

impl Watch {
    fn new(brokers: &str, topic: &str, stages: Vec<(&'static str, String)>) -> Self {
        let readers = stages
            .iter()
            .map(|(_, group)| {
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("group.id", group)
                    .set("enable.auto.commit", "false")
                    .create()
                    .unwrap()
            })
            .collect();
        Watch {
            stages,
            readers,
            topic: topic.to_string(),
            timeline: Vec::new(),
        }
    }

    fn poll(&mut self) {
        for (i, r) in self.readers.iter().enumerate() {
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition(&self.topic, p);
            }
            if let Ok(c) = r.committed_offsets(tpl, Duration::from_secs(5)) {
                let mut at = vec![-1; PARTITIONS as usize];
                for e in c.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        at[e.partition() as usize] = o;
                    }
                }
                self.timeline.push((SystemTime::now(), i, at));
            }
        }
    }

    /// When stage `stage` first covered every offset in `last` (partition → last offset).
    fn covered(&self, stage: usize, last: &BTreeMap<i32, i64>) -> Option<SystemTime> {
        self.timeline
            .iter()
            .filter(|(_, s, _)| *s == stage)
            .find(|(_, _, at)| last.iter().all(|(p, o)| at[*p as usize] > *o))
            .map(|(t, _, _)| *t)
    }
}

/// The fields of a message the bench reads: a record's source key, an event's key, status and
/// time.
#[derive(serde::Deserialize)]
struct Seen {
    #[serde(default)]
    source_key: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every message of `topic` from the start, as (partition, offset, the fields read).
fn read_all(brokers: &str, topic: &str) -> Vec<(i32, i64, Seen)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("latency-reader-{}", common::unique_id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.push(high);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::with_capacity(ends.iter().sum::<i64>() as usize);
    // Each partition is done when a message at or past its end offset - 1 has been read (the
    // log may have gaps in its offsets, so counting messages would wait for ones that are not
    // there).
    let mut next = vec![0i64; PARTITIONS as usize];
    let start = Instant::now();
    while next.iter().zip(&ends).any(|(n, e)| n < e) && start.elapsed() < Duration::from_secs(1800)
    {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            next[m.partition() as usize] = m.offset() + 1;
            if let Some(v) = m.payload().and_then(|b| serde_json::from_slice(b).ok()) {
                out.push((m.partition(), m.offset(), v));
            }
        }
    }
    out
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let phase_secs = env_u64("SKUFLOW_BENCH_LATENCY_SECS", 60);
    let large_rows = env_u64("SKUFLOW_BENCH_LARGE_ROWS", 100_000);
    let bulk_rate = env_u64("SKUFLOW_BENCH_BULK_RECORDS_PER_SEC", 500);
    let bulk_after = env_u64("SKUFLOW_BENCH_BULK_AFTER_ROWS", 10_000);
    let mut p = Pipeline::new().await;
    let root = tempfile::Builder::new()
        .prefix("skuflow-bench-latency-")
        .tempdir()
        .unwrap();
    let buckets = root.path().join("buckets");
    std::fs::create_dir_all(buckets.join("skus-de/incoming")).unwrap();
    let dataset = root.path().join("datasets");
    let es = EsDouble::start().await;
    let group = |name: &str| format!("latency-{name}-{}", p.id);
    let stages = vec![
        ("warehouse-loader", group("loader")),
        ("search-indexer", group("indexer")),
        ("dataset-builder", group("builder")),
        ("finance-reporter", group("reporter")),
    ];
    let command = |binary: &str, group: &str| {
        let mut cmd = Command::new(bin(binary));
        cmd.args(p.topic_args()).arg(format!("--group={group}"));
        cmd
    };
    let mut children = vec![{
        let mut c = command("skuflow-ingest", &group("ingest"));
        c.arg(format!("--bucket-root={}", buckets.display()))
            .arg("--buckets=skus-de")
            .arg("--scan-interval-secs=1")
            .arg(format!("--bulk-records-per-sec={bulk_rate}"))
            .arg(format!("--bulk-after-rows={bulk_after}"));
        (c, "ingest")
    }];
    for (name, g) in &stages {
        let mut c = command(&format!("skuflow-{name}"), g);
        match *name {
            "warehouse-loader" | "finance-reporter" => {
                c.env("SKUFLOW_PG_URL", &p.db_url)
                    .env("SKUFLOW_REPORT_EVERY_SECS", "0");
            }
            "search-indexer" => {
                c.arg(format!("--es-url={}", es.url));
            }
            _ => {
                c.arg(format!("--dataset-root={}", dataset.display()));
            }
        }
        children.push((c, name));
    }
    let mut pids = Vec::new();
    for (cmd, name) in children {
        let i = p.spawn(cmd, name);
        pids.push((name, p.children[i].id()));
    }
    let mut watch = Watch::new(&p.stack.brokers, &p.topics.records, stages.clone());
    println!(
        "Upload-to-sink latency: phases of {phase_secs} s; every {} s a {} file, every {} s a {} \
         file; phase 2 with one upload of {large_rows} rows in progress",
        CLASSES[0].every.as_secs(),
        CLASSES[0].name,
        CLASSES[1].every.as_secs(),
        CLASSES[1].name
    );
    println!("Ingest bulk lane: --bulk-records-per-sec={bulk_rate} --bulk-after-rows={bulk_after}");

    let mut uploads: Vec<Upload> = Vec::new();
    let mut seed = 1u64;
    let mut large_key = None;
    for phase in 0..2 {
        if phase == 1 {
            let key = format!("incoming/individual/large-1/{DATE}/skus.csv");
            land(&buckets, &key, 999, large_rows);
            large_key = Some(key);
        }
        let start = Instant::now();
        let mut next: Vec<Duration> = vec![Duration::ZERO; CLASSES.len()];
        while start.elapsed() < Duration::from_secs(phase_secs) {
            for (c, class) in CLASSES.iter().enumerate() {
                if start.elapsed() >= next[c] {
                    let key = format!("incoming/individual/p{phase}-s{seed}/{DATE}/skus.csv");
                    let landed = land(&buckets, &key, seed, class.rows);
                    uploads.push(Upload {
                        phase,
                        class: c,
                        key,
                        landed,
                    });
                    seed += 1;
                    next[c] += class.every;
                }
            }
            watch.poll();
            tokio::time::sleep(POLL).await;
        }
        // Drain: every file of the phase visible in every sink (the large one too).
        let drain = Instant::now();
        let mut last_check = Instant::now();
        loop {
            watch.poll();
            if last_check.elapsed() >= Duration::from_secs(2) {
                last_check = Instant::now();
                if common::files_under(&buckets.join("skus-de/incoming")).is_empty()
                    && drained(&p, &watch)
                {
                    break;
                }
            }
            if drain.elapsed() > Duration::from_secs(3600) {
                panic!("the pipeline did not drain in an hour\n{}", p.logs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // CPU per record: every stage has handled every record by now.
    let cpu: Vec<(&str, f64)> = pids
        .iter()
        .map(|(name, pid)| {
            let (secs, _) = skuflow_e2e::bench::proc_usage(&pid.to_string()).unwrap_or_default();
            (*name, secs)
        })
        .collect();
    // Where each file's records are, and when the ingest completed it.
    let records = read_all(&p.stack.brokers, &p.topics.records);
    let n_records = records.len() as f64;
    let mut last: HashMap<String, BTreeMap<i32, i64>> = HashMap::new();
    for (partition, offset, rec) in records {
        let key = rec.source_key.unwrap_or_default();
        let e = last
            .entry(key)
            .or_default()
            .entry(partition)
            .or_insert(offset);
        *e = (*e).max(offset);
    }
    let mut completed: HashMap<String, SystemTime> = HashMap::new();
    for (_, _, ev) in read_all(&p.stack.brokers, &p.topics.files) {
        if let (Some("completed"), Some(key), Some(at)) = (ev.status.as_deref(), ev.key, ev.at) {
            completed.insert(key, at.into());
        }
    }
    let large_done = large_key.as_ref().and_then(|k| completed.get(k)).copied();
    let phase2_end = uploads
        .iter()
        .filter(|u| u.phase == 1)
        .map(|u| u.landed)
        .max();
    if let (Some(done), Some(end)) = (large_done, phase2_end) {
        println!(
            "large upload: {} in progress for the whole of phase 2",
            if done > end {
                "was"
            } else {
                "was NOT (it finished early; raise SKUFLOW_BENCH_LARGE_ROWS)"
            }
        );
    }

    // Latencies: [phase][class][stage] → seconds.
    let stage_names: Vec<&str> = std::iter::once("ingest")
        .chain(stages.iter().map(|(n, _)| *n))
        .collect();
    let mut lat = vec![vec![vec![Vec::<f64>::new(); stage_names.len()]; CLASSES.len()]; 2];
    for u in &uploads {
        let secs = |t: SystemTime| t.duration_since(u.landed).unwrap_or_default().as_secs_f64();
        if let Some(t) = completed.get(&u.key) {
            lat[u.phase][u.class][0].push(secs(*t));
        }
        if let Some(offsets) = last.get(&u.key) {
            for s in 0..stages.len() {
                if let Some(t) = watch.covered(s, offsets) {
                    lat[u.phase][u.class][s + 1].push(secs(t));
                }
            }
        }
    }
    println!(
        "\n| phase | files | stage | n | p50 s | p95 s | p99 s | max s |\n|---|---|---|---|---|---|---|---|"
    );
    let mut p99 = vec![vec![0.0; stage_names.len()]; 2];
    for (phase, by_class) in lat.iter_mut().enumerate() {
        let phase_name = ["stream alone", "with a large upload"][phase];
        for (c, by_stage) in by_class.iter_mut().enumerate() {
            for (s, v) in by_stage.iter_mut().enumerate() {
                if v.is_empty() {
                    println!(
                        "| {phase_name} | {} | {} | 0 | – | – | – | – |",
                        CLASSES[c].name, stage_names[s]
                    );
                    continue;
                }
                v.sort_by(f64::total_cmp);
                if c == 0 {
                    p99[phase][s] = percentile(v, 0.99);
                }
                println!(
                    "| {phase_name} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    CLASSES[c].name,
                    stage_names[s],
                    v.len(),
                    percentile(v, 0.5),
                    percentile(v, 0.95),
                    percentile(v, 0.99),
                    v[v.len() - 1]
                );
            }
        }
    }
    println!("\nSmall files' p99 with a large upload in progress / without (target ≤ 2.00):");
    for (s, name) in stage_names.iter().enumerate() {
        let ratio = p99[1][s] / p99[0][s];
        println!(
            "  {name:<17} {:.2} s / {:.2} s = {ratio:.2} {}",
            p99[1][s],
            p99[0][s],
            if ratio <= 2.0 { "ok" } else { "MISSED" }
        );
    }
    let daily = env_u64("SKUFLOW_BENCH_DAILY_RECORDS", 500_000_000) as f64;
    let average = daily / 86_400.0;
    println!(
        "\nCPU per record over the run ({n_records} records; this machine's cores), and cores for \
         {daily} records a day ({average:.0}/s on average, {:.0}/s at a 3× peak):\n\n\
         | stage | CPU s | µs per record | records per CPU-second | cores at average | cores at peak |\n\
         |---|---|---|---|---|---|",
        3.0 * average
    );
    for (name, secs) in &cpu {
        let per_core = n_records / secs.max(1e-9);
        println!(
            "| {name} | {secs:.1} | {:.1} | {per_core:.0} | {:.2} | {:.2} |",
            1e6 * secs / n_records.max(1.0),
            average / per_core,
            3.0 * average / per_core
        );
    }
    let uploaded: usize = uploads.len() + usize::from(large_key.is_some());
    let n_completed = completed.len();
    println!(
        "\n{uploaded} uploads, {n_completed} completed; logs in {}",
        std::env::temp_dir()
            .join(format!("skuflow-test-{}", p.id))
            .display()
    );
    drop(root);
}

/// Whether every stage has committed the records topic's end.
fn drained(p: &Pipeline, watch: &Watch) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &p.stack.brokers)
        .set("group.id", "latency-watermarks")
        .create()
        .unwrap();
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|part| {
            c.fetch_watermarks(&p.topics.records, part, Duration::from_secs(10))
                .map_or(-1, |(_, high)| high)
        })
        .collect();
    (0..watch.stages.len()).all(|s| {
        watch
            .timeline
            .iter()
            .rev()
            .find(|(_, st, _)| *st == s)
            .is_some_and(|(_, _, at)| *at == ends)
    })
}
