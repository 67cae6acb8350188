//! The record producer: idempotent, asynchronous sends counted per file so that a file is
//! complete only when the broker has acknowledged every one of its messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// Delivery accounting of one file.
#[derive(Debug, Default)]
pub struct FileProgress {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Partition and offset of the last message acknowledged.
    last_position: Mutex<Option<(i32, i64)>>,
}

impl FileProgress {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    fn settled(&self) -> u64 {
        self.acked.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }
}

/// Routes delivery reports to their file, and counts acknowledged messages as they arrive
/// (`skuflow_records_sent_total{destination=<records topic>}`, `skuflow_dead_letters_total`);
/// acknowledgements of other topics (file lifecycle, upload requests) are not counted.
pub struct DeliveryCounter {
    records_topic: String,
    rejects_topic: String,
    /// The two counters every acknowledgement lands in, resolved once (not per message).
    sent: prometheus::IntCounter,
    dead_letters: prometheus::IntCounter,
}

impl DeliveryCounter {
    pub fn new(records_topic: &str, rejects_topic: &str) -> Self {
        let m = skuflow_platform::metrics::metrics();
        DeliveryCounter {
            records_topic: records_topic.to_string(),
            rejects_topic: rejects_topic.to_string(),
            sent: m.records_sent.with_label_values(&[records_topic]),
            dead_letters: m.dead_letters.with_label_values(&[rejects_topic]),
        }
    }
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = Arc<FileProgress>;

    fn delivery(&self, result: &DeliveryResult<'_>, progress: Arc<FileProgress>) {
        match result {
            Ok(msg) => {
                *progress
                    .last_position
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((msg.partition(), msg.offset()));
                progress.acked.fetch_add(1, Ordering::AcqRel);
                let topic = msg.topic();
                if topic == self.records_topic {
                    self.sent.inc();
                } else if topic == self.rejects_topic {
                    self.dead_letters.inc();
                }
            }
            Err((e, _)) => {
                let mut first = progress
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
                progress.failed.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// The ingest's producer: librdkafka's, with a thread of its own serving delivery reports.
///
/// rdkafka's `ThreadedProducer` polls in 100 ms slices that it hands to librdkafka as whole
/// milliseconds, then busy-polls through the sub-millisecond rest of every slice: about 1 % of a
/// core all the time, nine tenths of an idle ingest's CPU (perf). Here each slice carries 50 µs
/// beyond its whole milliseconds, so librdkafka's wait ends at or after the slice's deadline and
/// nothing spins.
pub struct RecordProducer {
    inner: Arc<BaseProducer<DeliveryCounter>>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

/// A message for [`RecordProducer::send`]: its delivery report goes to the file's progress.
pub type Outgoing<'a> = BaseRecord<'a, [u8], [u8], Arc<FileProgress>>;

/// One delivery-report wait: whole milliseconds plus 50 µs (see [`RecordProducer`]).
const POLL_SLICE: Duration = Duration::from_micros(100_050);

impl RecordProducer {
    pub fn new(config: &ClientConfig, context: DeliveryCounter) -> KafkaResult<Self> {
        let inner: Arc<BaseProducer<DeliveryCounter>> =
            Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (inner.clone(), stop.clone());
        let poller = std::thread::Builder::new()
            .name("delivery reports".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    p.poll(POLL_SLICE);
                }
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("starting the delivery thread: {e}"))
            })?;
        Ok(RecordProducer {
            inner,
            stop,
            poller: Some(poller),
        })
    }

    /// Enqueues one message (librdkafka's produce); the delivery report arrives on the thread.
    #[allow(clippy::result_large_err)]
    pub fn send<'a>(&self, record: Outgoing<'a>) -> Result<(), (KafkaError, Outgoing<'a>)> {
        self.inner.send(record)
    }
}

impl Drop for RecordProducer {
    fn drop(&mut self) {
        // As ThreadedProducer: stop the thread; the client's own drop then purges what is
        // still queued (an upload whose records were not all acknowledged is redone anyway).
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}

/// `skuflow_bytes_total{direction="out"}`: keys and payloads handed to the producer.
static BYTES_OUT: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    skuflow_platform::metrics::metrics()
        .bytes
        .with_label_values(&["out"])
});

/// Enqueues one message, waiting while librdkafka's queue is full.
pub fn send(
    producer: &RecordProducer,
    progress: &Arc<FileProgress>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::with_opaque_to(topic, progress.clone())
        .key(key)
        .payload(payload)
        .headers(headers);
    loop {
        match producer.send(record) {
            Ok(()) => {
                progress.sent.fetch_add(1, Ordering::AcqRel);
                BYTES_OUT.inc_by((key.len() + payload.len()) as u64);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Sends one message and waits for the broker's acknowledgement (file lifecycle events, upload
/// requests, on the control producer); where the broker put it (partition, offset).
pub async fn send_acknowledged(
    producer: &Arc<RecordProducer>,
    topic: &str,
    key: &[u8],
    payload: Vec<u8>,
    headers: OwnedHeaders,
    timeout: Duration,
) -> anyhow::Result<(i32, i64)> {
    let (producer, topic, key) = (producer.clone(), topic.to_string(), key.to_vec());
    tokio::task::spawn_blocking(move || {
        let progress = Arc::new(FileProgress::default());
        send(&producer, &progress, &topic, &key, &payload, headers)?;
        wait_settled(&progress, timeout).map_err(anyhow::Error::msg)?;
        let position = *progress
            .last_position
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        position.ok_or_else(|| anyhow::anyhow!("acknowledged without a position"))
    })
    .await?
}

/// Waits until every message of the file is acknowledged or failed; returns the first failure.
pub fn wait_settled(progress: &FileProgress, timeout: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    while progress.settled() < progress.sent() {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{} of {} messages not acknowledged by the broker within {:?}",
                progress.sent() - progress.settled(),
                progress.sent(),
                timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    match progress
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        Some(e) => Err(format!(
            "{} of {} messages failed: {e}",
            progress.failed.load(Ordering::Acquire),
            progress.sent()
        )),
        None => Ok(()),
    }
}
