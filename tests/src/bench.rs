//! Pieces the consumer benchmarks share: their size and settings, fresh databases, a records
//! topic loaded with synthetic records, the bare-consumer baseline (the broker's own limit here)
//! and a sink run from the topic until it has stored every offset.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use skuflow_platform::kafka::{ensure_topics, TopicSpec};
use skuflow_platform::{KafkaArgs, TopicArgs};
use skuflow_schemas::SkuRecord;

/// Records per consumer benchmark: `SKUFLOW_BENCH_RECORDS`, 1,000,000 by default.
pub fn records_wanted() -> u64 {
    std::env::var("SKUFLOW_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// A setting `make bench` gives the benchmarks.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make bench`"))
}

/// A client of `url`, its connection driven in the background.
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// Creates a fresh database `<prefix>_<name>` per name on the server of `admin_url`, through
/// `admin`; their URLs in the same order.
pub async fn fresh_databases(
    admin: &tokio_postgres::Client,
    admin_url: &str,
    prefix: &str,
    names: &[&str],
) -> Vec<String> {
    let server = admin_url.rsplit_once('/').unwrap().0;
    let mut urls = Vec::new();
    for name in names {
        admin
            .batch_execute(&format!("CREATE DATABASE {prefix}_{name}"))
            .await
            .unwrap();
        urls.push(format!("{server}/{prefix}_{name}"));
    }
    urls
}

/// Runs `sink` as consumer group `group` on the records topic of `topics` until the offsets it
/// keeps in `offsets_table` of `db_url` add up to `n`; how long that took. The sink stops after.
pub async fn consume_until_stored<S: skuflow_platform::Sink + 'static>(
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    group: &str,
    sink: S,
    (db_url, offsets_table): (&str, &str),
    n: u64,
) -> Duration {
    let stop = skuflow_platform::shutdown::CancellationToken::new();
    let args = skuflow_platform::ConsumeArgs {
        group: Some(group.to_string()),
        ..skuflow_platform::ConsumeArgs::default()
    };
    let t = Instant::now();
    let (k, tp, s) = (kafka.clone(), topics.clone(), stop.clone());
    let task =
        tokio::spawn(async move { skuflow_platform::run_sink(&k, &tp, &args, "x", sink, s).await });
    let db = pg(db_url).await;
    let stored = format!("SELECT coalesce(sum(next_offset),0)::bigint FROM {offsets_table}");
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = db.query_one(stored.as_str(), &[]).await;
        if row.is_ok_and(|r| r.get::<_, i64>(0) as u64 >= n) {
            break;
        }
    }
    let took = t.elapsed();
    stop.cancel();
    task.await.unwrap().unwrap();
    took
}

/// Creates the records (3 partitions) and rejects topics of `topics` and produces `records` to
/// the records topic; returns how long producing took.
pub async fn load_records_topic(
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    records: &[SkuRecord],
) -> Duration {
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(topics.records.clone(), 3, false),
            TopicSpec::new(topics.rejects.clone(), 1, false),
        ],
    )
    .await
    .expect("creating the bench topics");
    produce_serialized(kafka, &topics.records, &crate::record_messages(records))
}

/// Produces already serialized (key, payload) pairs to `topic` with a bare rdkafka producer,
/// waiting while its queue is full; returns how long it took until every one was acknowledged.
pub fn produce_serialized(
    kafka: &KafkaArgs,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
) -> Duration {
    produce_with(kafka.producer_config(), topic, payloads, &[])
}

/// [`produce_serialized`] with the producer configuration `config` and the same `headers` on
/// every message.
pub fn produce_with(
    config: ClientConfig,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
    headers: &[(&str, &str)],
) -> Duration {
    let producer: ThreadedProducer<DefaultProducerContext> = config.create().expect("producer");
    let t = Instant::now();
    for (key, payload) in payloads {
        let mut rec = BaseRecord::to(topic).key(key).payload(payload);
        if !headers.is_empty() {
            rec = rec.headers(headers.iter().fold(
                OwnedHeaders::new_with_capacity(headers.len()),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(*value),
                    })
                },
            ));
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .expect("every record acknowledged");
    t.elapsed()
}

/// A bare rdkafka consumer reading `n` messages of the 3-partition `topic` from the beginning:
/// how long it took and how many payload bytes it read.
pub fn drain_bare(kafka: &KafkaArgs, group: &str, topic: &str, n: u64) -> (Duration, usize) {
    let consumer: BaseConsumer = kafka.consumer_config(group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let t = Instant::now();
    let mut got = 0u64;
    let mut bytes = 0usize;
    while got < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            got += 1;
            bytes += m.payload().map_or(0, <[u8]>::len);
        }
    }
    (t.elapsed(), bytes)
}

/// (CPU seconds, user + system; peak RSS in KiB) of process `pid` (`"self"` for this one),
/// from /proc.
pub fn proc_usage(pid: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, may hold spaces): utime and stime are
    // fields 14 and 15 of the line, 12 and 13 after the name, in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((cpu, hwm))
}

/// Records per second.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs a Python baseline and returns the `name=number` figures it prints on stdout; panics
/// with its output when it fails.
pub fn python_figures(cmd: &mut std::process::Command) -> std::collections::HashMap<String, f64> {
    let out = cmd
        .output()
        .expect("python3 with the bench's packages (scripts/install-stack.sh python)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}
