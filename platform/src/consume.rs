//! The one consume → sink → store-offset loop every consumer binary runs.
//!
//! Offsets are stored (and then committed in the background) only after the sink has durably
//! accepted the batch and every refused record has been acknowledged on the dead-letter topic.
//! Messages that are not records are dead-lettered before the batch is written; a sink that
//! stores its offsets itself keeps the dead letters of the records it refuses in an outbox in
//! the same transaction, which the loop relays after the write and again when it starts.
//! Sinks write idempotently, so a redelivery after a crash or rebalance changes nothing. A sink
//! that keeps its own offsets (in the same transaction as the data) reports them through
//! [`Sink::durable_offsets`], and messages below them are skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::Utc;
use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use serde::Serialize;
use skuflow_schemas::{
    headers, FileEvent, RejectMessage, RejectReason, SkuRecord, FILE_SCHEMA, RECORD_SCHEMA,
    REJECT_SCHEMA,
};

use crate::health::health;
use crate::kafka::{KafkaArgs, ObservedContext, TopicArgs};
use crate::metrics::metrics;

/// One decoded message with its position.
#[derive(Debug, Clone)]
pub struct Consumed<T> {
    pub partition: i32,
    pub offset: i64,
    pub value: T,
}

/// A record the sink refused for good (retrying cannot fix it): it goes to the dead-letter
/// topic with the reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Index into the batch given to [`Sink::write`].
    pub index: usize,
    pub rule: String,
    pub message: String,
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink is unavailable (down, restarting, timed out): retry the same batch later.
    #[error("sink unavailable: {0:#}")]
    Retriable(anyhow::Error),
    /// Retrying cannot help and no record can be singled out: stop the consumer.
    #[error("sink failed: {0:#}")]
    Fatal(anyhow::Error),
}

/// A message type the consume loop reads: which topic carries it, how it is decoded, and what
/// its dead letter says of where it came from.
pub trait Topic: Serialize + Send + Sync + Sized + 'static {
    /// Its topic among the pipeline's.
    fn topic(topics: &TopicArgs) -> &str;
    /// The message, or why the payload is not one.
    fn decode(payload: &[u8]) -> Result<Self, String>;
    /// The upload it belongs to, for its dead letter.
    fn lineage(&self) -> Lineage;
}

/// Where a message came from, as its dead letter names it.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    pub file_id: String,
    pub bucket: String,
    pub key: String,
    pub country: Option<String>,
    pub line: u64,
    pub record_id: Option<String>,
}

/// A JSON message whose `schema` field must be `schema`, or why the payload is not one.
fn decode_envelope<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    schema: &str,
    what: &str,
    schema_of: impl Fn(&T) -> &String,
) -> Result<T, String> {
    let m: T = serde_json::from_slice(bytes).map_err(|e| format!("not a {schema} {what}: {e}"))?;
    if schema_of(&m) != schema {
        return Err(format!("schema is {}, expected {schema}", schema_of(&m)));
    }
    Ok(m)
}

impl Topic for SkuRecord {
    fn topic(topics: &TopicArgs) -> &str {
        &topics.records
    }

    fn decode(bytes: &[u8]) -> Result<SkuRecord, String> {
        decode_envelope(bytes, RECORD_SCHEMA, "record", |r: &SkuRecord| &r.schema)
    }

    fn lineage(&self) -> Lineage {
        Lineage {
            file_id: self.file_id.clone(),
            bucket: self.source_bucket.clone(),
            key: self.source_key.clone(),
            country: Some(self.country.clone()),
            line: self.source_line.max(1) as u64,
            record_id: Some(self.record_id.clone()),
        }
    }
}

impl Topic for FileEvent {
    fn topic(topics: &TopicArgs) -> &str {
        &topics.files
    }

    fn decode(bytes: &[u8]) -> Result<FileEvent, String> {
        decode_envelope(bytes, FILE_SCHEMA, "event", |e: &FileEvent| &e.schema)
    }

    fn lineage(&self) -> Lineage {
        Lineage {
            file_id: self.file_id.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            country: self.country.clone(),
            line: 1,
            record_id: None,
        }
    }
}

impl Topic for RejectMessage {
    fn topic(topics: &TopicArgs) -> &str {
        &topics.rejects
    }

    fn decode(bytes: &[u8]) -> Result<RejectMessage, String> {
        decode_envelope(bytes, REJECT_SCHEMA, "message", |m: &RejectMessage| {
            &m.schema
        })
    }

    fn lineage(&self) -> Lineage {
        Lineage {
            file_id: self.file_id.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            country: self.country.clone(),
            line: self.line.max(1),
            record_id: self.record_id.clone(),
        }
    }
}

/// A destination for one topic's messages (`sku.records.v1` for the data sinks).
#[async_trait]
pub trait Sink: Send {
    /// What it consumes.
    type Message: Topic;

    /// Short name, used as the dead-letter stage and in logs.
    fn name(&self) -> &'static str;

    /// Writes the batch durably and idempotently. `offsets` are the next offsets to consume per
    /// partition once the batch is durable; a sink that stores offsets keeps them in the same
    /// transaction as the data. Returns the records refused for good.
    async fn write(
        &mut self,
        topic: &str,
        batch: &[Consumed<Self::Message>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError>;

    /// Next offsets per partition (of `partitions`, those this member is assigned) that the
    /// sink already holds durably, if it stores them.
    async fn durable_offsets(
        &mut self,
        _topic: &str,
        _partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, SinkError> {
        Ok(HashMap::new())
    }

    /// A cheap round trip to the sink, made when no batch has been written for a while, so that
    /// readiness reflects a sink that went away while idle.
    async fn ping(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Called once when the loop stops, after the last batch (e.g. to release a lease).
    async fn close(&mut self) {}

    /// Whether the sink keeps the dead letters of the records it refuses in an outbox written
    /// in the same transaction as its offsets ([`crate::pg::store_dead_letters`]). A sink that
    /// stores its offsets itself needs one: the offsets that skip a refused record are durable
    /// before its dead letter is acknowledged, so the loop relays the outbox instead.
    fn has_dead_letter_outbox(&self) -> bool {
        false
    }

    /// The dead letters in the outbox, oldest first, with their ids.
    async fn pending_dead_letters(&mut self) -> Result<Vec<(i64, RejectMessage)>, SinkError> {
        Ok(Vec::new())
    }

    /// Removes dead letters from the outbox once the topic has acknowledged them.
    async fn dead_letters_sent(&mut self, _ids: &[i64]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Batching flags shared by consumer binaries.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Consumer group id (one per sink).
    #[arg(long = "group", env = "SKUFLOW_GROUP")]
    pub group: Option<String>,
    /// Records per batch written to the sink.
    #[arg(long = "batch-size", env = "SKUFLOW_BATCH_SIZE", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,
    /// Longest time a partial batch waits before it is written, in milliseconds.
    #[arg(
        long = "flush-interval-ms",
        env = "SKUFLOW_FLUSH_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub flush_interval_ms: u64,
    /// Longest backoff between retries of an unavailable sink, in milliseconds.
    #[arg(
        long = "max-backoff-ms",
        env = "SKUFLOW_MAX_BACKOFF_MS",
        default_value_t = 30_000
    )]
    pub max_backoff_ms: u64,
}

impl Default for ConsumeArgs {
    fn default() -> Self {
        ConsumeArgs {
            group: None,
            batch_size: 5000,
            flush_interval_ms: 1000,
            max_backoff_ms: 30_000,
        }
    }
}

/// How long a sink may stay silent before the loop pings it for readiness.
const PING_AFTER: Duration = Duration::from_secs(15);

/// Statistics of one run, returned when the loop stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub received: u64,
    pub written: u64,
    pub refused: u64,
    pub undecodable: u64,
    pub skipped_durable: u64,
    pub batches: u64,
}

/// Runs `sink` as consumer group `group` on its topic until `shutdown` is cancelled.
///
/// The loop: after each rebalance, learn what the sink already holds ([`Consuming::resume`]);
/// take messages into the pending batch ([`Consuming::take`]); when the batch is full, due or
/// the process stops, make it durable ([`Consuming::flush`]); at the end, commit and leave.
pub async fn run_sink<S: Sink>(
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    args: &ConsumeArgs,
    default_group: &str,
    sink: S,
    shutdown: CancellationToken,
) -> anyhow::Result<RunStats> {
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| default_group.to_string());
    let rebalanced = Arc::new(AtomicBool::new(true));
    let consumer: StreamConsumer<ObservedContext> = kafka
        .consumer_config(&group)
        .create_with_context(ObservedContext::new(&group, Some(rebalanced.clone())))
        .context("creating the Kafka consumer")?;
    let topic = S::Message::topic(topics);
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    tracing::info!(sink = sink.name(), %group, %topic, "Consuming.");
    health().expect("sink");
    let mut run = Consuming {
        dlq: kafka.producer()?,
        sink,
        topics,
        args,
        shutdown,
        stats: RunStats::default(),
        durable: HashMap::new(),
        raw: RawBatch::default(),
        next_offsets: BTreeMap::new(),
        parents: Vec::new(),
        last_contact: Instant::now(),
        received: metrics().records_received.with_label_values(&[topic]),
        bytes_in: metrics().bytes.with_label_values(&["in"]),
    };
    let flush_every = Duration::from_millis(args.flush_interval_ms.max(1));
    let mut deadline = Instant::now() + flush_every;
    let mut watch = crate::kafka::StallWatch::new(
        topic,
        kafka
            .rejoin_stalled_secs
            .unwrap_or(crate::kafka::SINK_REJOIN_STALLED_SECS),
    );
    loop {
        watch.check(&consumer);
        if rebalanced.swap(false, Ordering::SeqCst) && !run.resume(&consumer).await? {
            return Ok(run.stats);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::select! {
            _ = run.shutdown.cancelled() => None,
            m = tokio::time::timeout(wait, consumer.recv()) => Some(m),
        };
        let stop = msg.is_none();
        match msg {
            Some(Ok(Ok(m))) => run.take(&m),
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "Kafka consumer error; continuing.");
            }
            Some(Err(_elapsed))
                if run.raw.is_empty() && run.last_contact.elapsed() > PING_AFTER =>
            {
                let r = run.sink.ping().await;
                health().report("sink", r.map_err(|e| e.to_string()));
                run.last_contact = Instant::now();
            }
            Some(Err(_)) | None => {}
        }
        let full = run.raw.len() >= args.batch_size as usize;
        let due = Instant::now() >= deadline;
        if (full || due || stop) && !run.raw.is_empty() && !run.flush(&consumer).await? {
            break;
        }
        if full || due || Instant::now() >= deadline {
            deadline = Instant::now() + flush_every;
        }
        if stop {
            break;
        }
    }
    run.finish(&consumer).await
}

/// The state of one consumer's run.
struct Consuming<'a, S: Sink> {
    dlq: FutureProducer,
    sink: S,
    topics: &'a TopicArgs,
    args: &'a ConsumeArgs,
    shutdown: CancellationToken,
    stats: RunStats,
    /// Next offset per partition the sink holds durably.
    durable: HashMap<i32, i64>,
    /// The pending batch.
    raw: RawBatch,
    /// Next offset per partition of the pending batch.
    next_offsets: BTreeMap<i32, i64>,
    /// The distinct trace contexts of the batch's messages (traces exported only): its write is
    /// a span in each of those traces.
    parents: Vec<String>,
    last_contact: Instant,
    /// `skuflow_records_received_total` and `skuflow_bytes_total{direction="in"}` of this run,
    /// looked up once rather than per message.
    received: prometheus::IntCounter,
    bytes_in: prometheus::IntCounter,
}

impl<S: Sink> Consuming<'_, S> {
    fn topic(&self) -> &str {
        S::Message::topic(self.topics)
    }

    /// After a rebalance: what the sink holds (waiting for it while it is unavailable), the
    /// partitions moved past it, and the dead letters an earlier run left in its outbox sent.
    /// `false`: shutdown came first.
    async fn resume(&mut self, consumer: &StreamConsumer<ObservedContext>) -> anyhow::Result<bool> {
        let mut backoff = Backoff::new(self.args);
        let partitions: Vec<i32> = consumer
            .assignment()
            .map(|a| {
                a.elements_for_topic(self.topic())
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        self.durable = loop {
            match self
                .sink
                .durable_offsets(S::Message::topic(self.topics), &partitions)
                .await
            {
                Ok(d) => break d,
                Err(e) => {
                    if !backoff.wait(e, self.sink.name(), &self.shutdown).await? {
                        return Ok(false);
                    }
                }
            }
        };
        backoff.recovered(self.sink.name());
        health().report("sink", Ok(()));
        self.last_contact = Instant::now();
        seek_past_done(
            consumer,
            self.topic(),
            &partitions,
            &self.durable,
            &self.next_offsets,
        );
        // The group's committed offsets catch up with what the sink holds, even when nothing
        // is left to consume (lag is measured on them).
        let held: BTreeMap<i32, i64> = partitions
            .iter()
            .filter_map(|p| self.durable.get(p).map(|o| (*p, *o)))
            .collect();
        if !held.is_empty() {
            store_offsets(consumer, self.topic(), &held);
        }
        relay_outbox(
            &mut self.sink,
            &self.dlq,
            &self.topics.rejects,
            self.args,
            &self.shutdown,
        )
        .await
    }

    /// Adds a message to the pending batch, unless the sink or the batch holds it already.
    fn take(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        self.stats.received += 1;
        self.received.inc();
        self.bytes_in.inc_by(m.payload_len() as u64);
        let (partition, offset) = (m.partition(), m.offset());
        if offset < resume_at(&self.durable, &self.next_offsets, partition).unwrap_or(0) {
            // Durable already, or in the pending batch (redelivered after a rebalance).
            self.stats.skipped_durable += 1;
            return;
        }
        self.next_offsets.insert(partition, offset + 1);
        self.raw.push(partition, offset, m.payload());
        if let Some(tp) = crate::telemetry::traceparent(m) {
            if self.parents.len() < MAX_TRACES_PER_BATCH && !self.parents.contains(&tp) {
                self.parents.push(tp);
            }
        }
    }

    /// Makes the pending batch durable: its undecodable messages dead-lettered, the records
    /// written (retried while the sink is unavailable, fetching nothing meanwhile), the records
    /// the sink refused dead-lettered, then the offsets stored. `false`: shutdown came first and
    /// nothing of the batch is stored (it is redelivered).
    async fn flush(&mut self, consumer: &StreamConsumer<ObservedContext>) -> anyhow::Result<bool> {
        let started = Instant::now();
        let name = self.sink.name();
        let m = metrics();
        let (batch, undecodable) = self.raw.decode::<S::Message>();
        let undecodable: Vec<RejectMessage> = undecodable
            .into_iter()
            .map(|u| undecodable_dead_letter(name, u.payload, u.partition, u.offset, u.reason))
            .collect();
        // Before the write: a sink that stores its offsets skips these messages for good
        // once the batch is durable.
        if !send_until_acknowledged(
            &self.dlq,
            &self.topics.rejects,
            &undecodable,
            name,
            self.args,
            &self.shutdown,
        )
        .await?
        {
            tracing::info!("Shutdown while sending dead letters; the batch will be redelivered.");
            return Ok(false);
        }
        self.stats.undecodable += undecodable.len() as u64;
        m.records_failed
            .with_label_values(&["undecodable"])
            .inc_by(undecodable.len() as u64);
        let n = batch.len();
        let spans: Vec<tracing::Span> = self
            .parents
            .iter()
            .map(|tp| {
                let span = tracing::info_span!(
                    "sink.write",
                    otel.name = %format!("{name} write"),
                    sink = name,
                    batch_records = n
                );
                crate::telemetry::set_parent(&span, Some(tp));
                span
            })
            .collect();
        let write = self.write_until_durable(consumer, &batch).await?;
        drop(spans); // the write spans end with the write
        let Some(refusals) = write else {
            tracing::info!(
                records = n,
                "Shutdown during retries; the batch is not stored and will be redelivered."
            );
            return Ok(false);
        };
        self.stats.refused += refusals.len() as u64;
        m.records_failed
            .with_label_values(&["refused"])
            .inc_by(refusals.len() as u64);
        let relayed = if self.sink.has_dead_letter_outbox() {
            // The outbox gains letters only with refusals; what an earlier run left there
            // was relayed when this one started.
            refusals.is_empty()
                || relay_outbox(
                    &mut self.sink,
                    &self.dlq,
                    &self.topics.rejects,
                    self.args,
                    &self.shutdown,
                )
                .await?
        } else {
            let letters = dead_letters(name, &batch, &refusals);
            send_until_acknowledged(
                &self.dlq,
                &self.topics.rejects,
                &letters,
                name,
                self.args,
                &self.shutdown,
            )
            .await?
        };
        if !relayed {
            tracing::info!(
                "Shutdown while sending dead letters; what is not stored is redelivered."
            );
            return Ok(false);
        }
        store_offsets(consumer, S::Message::topic(self.topics), &self.next_offsets);
        let written = (n - refusals.len()) as u64;
        self.stats.written += written;
        self.stats.batches += 1;
        m.records_sent.with_label_values(&[name]).inc_by(written);
        m.batch_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        m.batch_records.observe(n as f64);
        tracing::debug!(
            sink = name,
            records = n,
            refused = refusals.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Batch durable; offsets stored."
        );
        for (p, o) in &self.next_offsets {
            self.durable.insert(*p, *o);
        }
        self.raw.clear();
        self.next_offsets.clear();
        self.parents.clear();
        Ok(true)
    }

    /// Writes `batch`, retrying with backoff while the sink is unavailable and pausing the
    /// consumer meanwhile (backpressure). The refusals, or `None` when shutdown came first.
    async fn write_until_durable(
        &mut self,
        consumer: &StreamConsumer<ObservedContext>,
        batch: &[Consumed<S::Message>],
    ) -> anyhow::Result<Option<Vec<Refusal>>> {
        let mut backoff = Backoff::new(self.args);
        let mut paused = false;
        let write = loop {
            match self
                .sink
                .write(S::Message::topic(self.topics), batch, &self.next_offsets)
                .await
            {
                Ok(r) => break Some(r),
                Err(e) => {
                    if !paused {
                        // Backpressure: fetch nothing more while the sink is down.
                        if let Ok(assigned) = consumer.assignment() {
                            let _ = consumer.pause(&assigned);
                        }
                        paused = true;
                    }
                    if !backoff.wait(e, self.sink.name(), &self.shutdown).await? {
                        break None;
                    }
                }
            }
        };
        backoff.recovered(self.sink.name());
        if write.is_some() {
            health().report("sink", Ok(()));
            self.last_contact = Instant::now();
        }
        if paused {
            if let Ok(assigned) = consumer.assignment() {
                let _ = consumer.resume(&assigned);
            }
        }
        Ok(write)
    }

    /// Commits what has been stored, closes the sink and leaves the group.
    async fn finish(
        mut self,
        consumer: &StreamConsumer<ObservedContext>,
    ) -> anyhow::Result<RunStats> {
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "Final offset commit had nothing to commit.");
        }
        self.sink.close().await;
        tracing::info!(
            sink = self.sink.name(),
            received = self.stats.received,
            written = self.stats.written,
            refused = self.stats.refused,
            "Consumer stopped."
        );
        Ok(self.stats)
    }
}

/// The pause between retries of an unavailable sink, with its log line, metric and readiness.
struct Backoff {
    pauses: crate::backoff::Backoff,
}

impl Backoff {
    fn new(args: &ConsumeArgs) -> Self {
        Backoff {
            pauses: crate::backoff::Backoff::new(
                Duration::from_millis(200),
                Duration::from_millis(args.max_backoff_ms.max(200)),
            ),
        }
    }

    /// Waits before the next attempt. `Ok(false)`: shutdown requested; `Err`: fatal.
    async fn wait(
        &mut self,
        err: SinkError,
        sink: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let e = match err {
            SinkError::Fatal(e) => return Err(e.context(format!("{sink} failed for good"))),
            SinkError::Retriable(e) => e,
        };
        metrics().sink_retries.with_label_values(&[sink]).inc();
        crate::health::health().report("sink", Err(format!("{sink} unavailable: {e:#}")));
        let sleep = self.pauses.next_pause();
        tracing::warn!(sink, attempt = self.pauses.attempts(), retry_in_ms = sleep.as_millis() as u64, cause = %format!("{e:#}"),
            "Sink unavailable; holding the batch and retrying.");
        Ok(crate::backoff::Backoff::sleep(sleep, shutdown).await)
    }

    fn recovered(&self, sink: &str) {
        if self.pauses.attempts() > 0 {
            tracing::info!(
                sink,
                attempts = self.pauses.attempts() + 1,
                "Sink available again; resuming."
            );
        }
    }
}

/// The messages of a batch as received: payloads one after another in one buffer, decoded
/// together (on every core when there are many) when the batch is written.
#[derive(Debug, Default)]
pub struct RawBatch {
    bytes: Vec<u8>,
    entries: Vec<RawEntry>,
}

#[derive(Debug)]
struct RawEntry {
    partition: i32,
    offset: i64,
    /// Where the payload is in [`RawBatch::bytes`]; none for a message without one.
    payload: Option<std::ops::Range<usize>>,
}

/// A message of a batch that is not a record.
#[derive(Debug)]
pub struct Undecodable<'a> {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
    pub reason: String,
}

/// Most traces one batch's write is recorded in (a batch mixes the records of a few uploads).
const MAX_TRACES_PER_BATCH: usize = 64;

/// Fewest messages one decoding thread takes.
const DECODE_CHUNK: usize = 2048;

impl RawBatch {
    pub fn push(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        let payload = payload.map(|p| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(p);
            start..self.bytes.len()
        });
        self.entries.push(RawEntry {
            partition,
            offset,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    fn payload(&self, e: &RawEntry) -> Option<&[u8]> {
        e.payload.clone().map(|r| &self.bytes[r])
    }

    /// The messages in order, and those that do not decode with the reason.
    pub fn decode<T: Topic>(&self) -> (Vec<Consumed<T>>, Vec<Undecodable<'_>>) {
        let decode = |entries: &[RawEntry]| {
            let mut records = Vec::with_capacity(entries.len());
            let mut bad = Vec::new();
            for e in entries {
                let payload = self.payload(e);
                match payload
                    .ok_or_else(|| "empty message".to_string())
                    .and_then(T::decode)
                {
                    Ok(value) => records.push(Consumed {
                        partition: e.partition,
                        offset: e.offset,
                        value,
                    }),
                    Err(reason) => bad.push(Undecodable {
                        partition: e.partition,
                        offset: e.offset,
                        payload,
                        reason,
                    }),
                }
            }
            (records, bad)
        };
        // The last chunk runs on this thread: the records it allocates are then mostly freed
        // by the thread that allocated them.
        let mut records = Vec::with_capacity(self.entries.len());
        let mut bad = Vec::new();
        for (r, b) in crate::parallel::map_chunks(&self.entries, DECODE_CHUNK, decode) {
            records.extend(r);
            bad.extend(b);
        }
        (records, bad)
    }
}

const RAW_CAP: usize = 4096;

fn capped(raw: &str) -> (String, bool) {
    let kept = crate::text::prefix_within(raw, RAW_CAP);
    (kept.to_string(), kept.len() < raw.len())
}

fn undecodable_dead_letter(
    stage: &str,
    payload: Option<&[u8]>,
    partition: i32,
    offset: i64,
    reason: String,
) -> RejectMessage {
    let raw = String::from_utf8_lossy(payload.unwrap_or_default());
    let (raw, raw_truncated) = capped(&raw);
    RejectMessage {
        schema: REJECT_SCHEMA.into(),
        stage: stage.into(),
        file_id: String::new(),
        bucket: String::new(),
        key: format!("partition {partition} offset {offset}"),
        country: None,
        line: 1,
        raw,
        raw_truncated,
        record_id: None,
        reasons: vec![RejectReason {
            field: None,
            column: None,
            value: None,
            rule: "decode".into(),
            message: reason,
        }],
        rejected_at: Utc::now(),
    }
}

/// The dead letters of the messages of `batch` a sink refused.
pub fn dead_letters<T: Topic>(
    stage: &str,
    batch: &[Consumed<T>],
    refusals: &[Refusal],
) -> Vec<RejectMessage> {
    refusals
        .iter()
        .filter_map(|r| batch.get(r.index).map(|c| refusal_dead_letter(stage, c, r)))
        .collect()
}

/// Sends `letters` until the topic acknowledges them all, pausing between attempts like an
/// unavailable sink. `Ok(false)`: shutdown came first.
async fn send_until_acknowledged(
    producer: &FutureProducer,
    topic: &str,
    letters: &[RejectMessage],
    sink: &str,
    args: &ConsumeArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    if letters.is_empty() {
        return Ok(true);
    }
    let mut backoff = Backoff::new(args);
    loop {
        match send_dead_letters(producer, topic, letters).await {
            Ok(()) => {
                backoff.recovered(sink);
                return Ok(true);
            }
            Err(e) => {
                let e = SinkError::Retriable(e.context("dead-letter topic"));
                if !backoff.wait(e, sink, shutdown).await? {
                    return Ok(false);
                }
            }
        }
    }
}

/// Sends what is in the sink's dead-letter outbox and clears it. `Ok(false)`: shutdown came
/// first (the outbox keeps what was not acknowledged).
async fn relay_outbox<S: Sink>(
    sink: &mut S,
    producer: &FutureProducer,
    topic: &str,
    args: &ConsumeArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    if !sink.has_dead_letter_outbox() {
        return Ok(true);
    }
    let mut backoff = Backoff::new(args);
    let pending = loop {
        match sink.pending_dead_letters().await {
            Ok(p) => break p,
            Err(e) => {
                if !backoff.wait(e, sink.name(), shutdown).await? {
                    return Ok(false);
                }
            }
        }
    };
    if pending.is_empty() {
        return Ok(true);
    }
    let (ids, letters): (Vec<i64>, Vec<RejectMessage>) = pending.into_iter().unzip();
    if !send_until_acknowledged(producer, topic, &letters, sink.name(), args, shutdown).await? {
        return Ok(false);
    }
    loop {
        match sink.dead_letters_sent(&ids).await {
            Ok(()) => break,
            Err(e) => {
                if !backoff.wait(e, sink.name(), shutdown).await? {
                    // Sent but not cleared: relayed once more at the next start (a duplicate
                    // dead letter, never a lost one).
                    return Ok(false);
                }
            }
        }
    }
    tracing::debug!(
        sink = sink.name(),
        letters = ids.len(),
        "Dead-letter outbox relayed."
    );
    Ok(true)
}

fn refusal_dead_letter<T: Topic>(stage: &str, c: &Consumed<T>, r: &Refusal) -> RejectMessage {
    let json = serde_json::to_string(&c.value).unwrap_or_default();
    let (raw, raw_truncated) = capped(&json);
    let from = c.value.lineage();
    RejectMessage {
        schema: REJECT_SCHEMA.into(),
        stage: stage.into(),
        file_id: from.file_id,
        bucket: from.bucket,
        key: from.key,
        country: from.country,
        line: from.line,
        raw,
        raw_truncated,
        record_id: from.record_id,
        reasons: vec![RejectReason {
            field: None,
            column: None,
            value: None,
            rule: r.rule.clone(),
            message: r.message.clone(),
        }],
        rejected_at: Utc::now(),
    }
}

/// Produces dead letters and waits for every acknowledgement.
pub async fn send_dead_letters(
    producer: &FutureProducer,
    topic: &str,
    letters: &[RejectMessage],
) -> anyhow::Result<()> {
    let payloads: Vec<Vec<u8>> = letters
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;
    let mut pending = Vec::with_capacity(letters.len());
    for (l, payload) in letters.iter().zip(&payloads) {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::SCHEMA,
                value: Some(REJECT_SCHEMA),
            })
            .insert(Header {
                key: headers::FILE_ID,
                value: Some(l.file_id.as_str()),
            });
        let mut rec = FutureRecord::to(topic)
            .payload(payload)
            .key(l.file_id.as_str())
            .headers(headers);
        // Enqueue every letter first (send_result does not wait), then await the acks together.
        loop {
            match producer.send_result(rec) {
                Ok(f) => break pending.push(f),
                Err((e, back)) => {
                    tracing::debug!(error = %e, "Producer queue full; waiting.");
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for p in pending {
        p.await
            .map_err(|_| anyhow::anyhow!("dead letter producer went away"))?
            .map_err(|(e, _)| anyhow::anyhow!("dead letter not acknowledged: {e}"))?;
    }
    metrics()
        .dead_letters
        .with_label_values(&[topic])
        .inc_by(letters.len() as u64);
    metrics()
        .bytes
        .with_label_values(&["out"])
        .inc_by(payloads.iter().map(|p| p.len() as u64).sum());
    Ok(())
}

/// The first offset of `partition` not yet durable in the sink nor in the pending batch.
fn resume_at(
    durable: &HashMap<i32, i64>,
    pending: &BTreeMap<i32, i64>,
    partition: i32,
) -> Option<i64> {
    match (durable.get(&partition), pending.get(&partition)) {
        (Some(&d), Some(&p)) => Some(d.max(p)),
        (d, p) => d.or(p).copied(),
    }
}

/// After a rebalance, moves each assigned partition whose fetch position is behind what the sink
/// already holds (its offsets in the same transaction as the data, or the pending batch) forward
/// to that point, so a restarted consumer resumes from the sink's offsets rather than re-reading
/// from the group's last commit. Never moves backwards; where a seek is not possible yet (the
/// partition has not started fetching), the skip in the loop does the same job.
fn seek_past_done<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    assigned: &[i32],
    durable: &HashMap<i32, i64>,
    pending: &BTreeMap<i32, i64>,
) {
    let positions = consumer.position().ok();
    for &partition in assigned {
        let Some(target) = resume_at(durable, pending, partition) else {
            continue;
        };
        let at = positions
            .as_ref()
            .and_then(|t| t.find_partition(topic, partition))
            .map(|e| e.offset());
        if let Some(Offset::Offset(at)) = at {
            if at >= target {
                continue;
            }
        }
        match consumer.seek(
            topic,
            partition,
            Offset::Offset(target),
            Duration::from_secs(1),
        ) {
            Ok(()) => tracing::info!(
                partition,
                offset = target,
                "Resuming from the offset the sink holds."
            ),
            Err(e) => {
                tracing::debug!(partition, error = %e, "Seek deferred; skipping up to the sink's offset instead.")
            }
        }
    }
}

fn store_offsets<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(*o)) {
            tracing::warn!(partition = p, error = %e, "Could not stage offset.");
        }
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A partition revoked mid-batch: the new owner redelivers, the sink stays idempotent.
        tracing::debug!(error = %e, "Offsets not stored (partition no longer assigned).");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_decodes_in_order_on_several_threads_and_keeps_what_is_not_a_record() {
        let record = |i: i64| {
            serde_json::to_vec(&serde_json::json!({
                "schema": RECORD_SCHEMA,
                "record_id": "0123456789abcdef0123456789abcdef", "record_version": 1,
                "country": "SE", "store_id": "s1", "store_category": "individual", "chain": null,
                "sku": format!("SKU-{i}"), "product_name": "p", "category": "c", "brand": null,
                "unit_price": "2.5000", "unit_cost": null, "currency": "SEK",
                "quantity_on_hand": 1, "units_sold": 1, "business_date": "2026-11-01",
                "barcode": null, "file_id": "f", "source_bucket": "b", "source_key": "k",
                "source_etag": "e", "source_line": 2,
                "source_last_modified": "2026-11-01T00:00:00Z",
                "ingested_at": "2026-11-01T00:00:00Z"
            }))
            .unwrap()
        };
        let mut raw = RawBatch::default();
        let n = 4 * DECODE_CHUNK as i64 + 17;
        for offset in 0..n {
            let payload = match offset {
                5 => Some(b"{not json".to_vec()),
                8000 => None,
                _ => Some(record(offset)),
            };
            raw.push((offset % 3) as i32, offset, payload.as_deref());
        }
        let (records, bad) = raw.decode::<SkuRecord>();
        let offsets: Vec<i64> = records.iter().map(|c| c.offset).collect();
        let want: Vec<i64> = (0..n).filter(|o| *o != 5 && *o != 8000).collect();
        assert_eq!(
            offsets, want,
            "records keep the order they were received in"
        );
        for c in &records {
            assert_eq!(c.value.sku, format!("SKU-{}", c.offset));
            assert_eq!(i64::from(c.partition), c.offset % 3);
        }
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].partition, bad[0].offset), (2, 5));
        assert_eq!(bad[0].payload, Some(&b"{not json"[..]));
        assert!(
            bad[0].reason.starts_with("not a sku-record/v1 record"),
            "{}",
            bad[0].reason
        );
        assert_eq!(
            (bad[1].offset, bad[1].payload, bad[1].reason.as_str()),
            (8000, None, "empty message")
        );
        raw.clear();
        assert!(raw.is_empty());
        assert!(raw.decode::<SkuRecord>().0.is_empty());
    }
}
