//! The ingest worker: consumes upload requests and ingests several uploads at once, so that a
//! large upload does not hold back the small ones queued behind it.
//!
//! A request's offset is committed only once its file's outcome is final (or the file has been
//! given up on); with several in flight, each partition's committed offset is its oldest request
//! still open, so a restart redoes exactly the unfinished ones. Two requests for the same object
//! never run at once: the later waits for the earlier (and then usually finds the object moved).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use skuflow_platform::kafka::ObservedContext;
use skuflow_platform::KafkaArgs;
use skuflow_schemas::{FileEvent, UploadRequest};

use crate::worker::{IngestSettings, Ingestor, Outcome};

/// Memory the process needs besides its uploads in flight: librdkafka's record queue (capped at
/// 64 MiB, see `record_producer_config`), the runtime and the clients.
const BASE_MEMORY: u64 = 96 << 20;

/// Most uploads one worker ingests at once when the flag does not say.
const MAX_AUTO_CONCURRENCY: usize = 16;

/// Uploads per core when the flag does not say: an upload spends most of its time waiting for
/// the broker's acknowledgements (a 100-row file: 30 ms alone, 1-4 s while a large upload keeps
/// the broker busy), so slots are cheap in CPU; the latency bench queued small files for up to
/// 30 s behind four slots.
const UPLOADS_PER_CORE: usize = 4;

/// The most memory one upload in flight can hold with these settings: the zstd window, the
/// first pass's key tracker (16 bytes per distinct key in a table at most half full, which holds
/// its old and new tables while it grows: 48 bytes per row at worst), the record buffers and the
/// report's rejected rows (each cut to 1 KiB of raw row).
pub fn memory_per_upload(settings: &IngestSettings) -> u64 {
    (1u64 << settings.read.zstd_window_log_max)
        + 48 * settings.limits.max_rows
        + 4 * settings.limits.max_record_bytes as u64
        + 2048 * settings.report_cap as u64
        + (4 << 20)
}

/// The container's memory limit (cgroup v2, then v1), when it has one.
fn memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // cgroup v1 says "no limit" with a number near 2^63.
    .find(|&n| n < 1 << 60)
}

/// How many uploads to ingest at once: [`UPLOADS_PER_CORE`] per core, no more than `memory`
/// holds at the worst case of [`memory_per_upload`] each, at least one.
pub fn auto_concurrency(cores: usize, memory: Option<u64>, settings: &IngestSettings) -> usize {
    let by_cores = (UPLOADS_PER_CORE * cores).clamp(1, MAX_AUTO_CONCURRENCY);
    let by_memory = memory.map_or(usize::MAX, |m| {
        (m.saturating_sub(BASE_MEMORY) / memory_per_upload(settings)) as usize
    });
    by_cores.min(by_memory).max(1)
}

/// `--concurrency`, or [`auto_concurrency`] for this machine or container when not given.
pub fn concurrency(flag: Option<usize>, settings: &IngestSettings) -> usize {
    flag.filter(|&n| n > 0).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        auto_concurrency(cores, memory_limit(), settings)
    })
}

/// Each partition's requests taken and not yet final, and the position to commit.
#[derive(Debug, Default)]
pub struct OpenRequests {
    open: HashMap<i32, BTreeSet<i64>>,
    /// Partition → one past the highest offset taken.
    next: HashMap<i32, i64>,
    /// Partition → the position last committed.
    committed: HashMap<i32, i64>,
}

impl OpenRequests {
    /// A request was taken from the queue.
    pub fn taken(&mut self, partition: i32, offset: i64) {
        self.open.entry(partition).or_default().insert(offset);
        let next = self.next.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// A request's outcome is final; the partition's new position to commit, when it moved:
    /// its oldest open request, or past everything taken.
    pub fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let open = self.open.entry(partition).or_default();
        open.remove(&offset);
        let position = open
            .first()
            .copied()
            .unwrap_or_else(|| self.next.get(&partition).copied().unwrap_or(offset + 1));
        let last = self.committed.entry(partition).or_insert(i64::MIN);
        (position > *last).then(|| {
            *last = position;
            position
        })
    }

    /// Requests taken and not final.
    pub fn len(&self) -> usize {
        self.open.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request taken from the queue.
struct Job {
    partition: i32,
    offset: i64,
    req: UploadRequest,
    traceparent: Option<String>,
}

impl Job {
    /// Requests naming the same object run one after the other.
    fn object(&self) -> (String, String) {
        (self.req.bucket.clone(), self.req.key.clone())
    }
}

/// How one request's ingest ended.
struct Ended {
    partition: i32,
    offset: i64,
    object: (String, String),
    /// False when shutdown interrupted its retries: it stays open (redone after a restart).
    final_: bool,
}

/// Consumes upload requests and ingests up to `concurrency` of them at once until shutdown;
/// then waits for the uploads in flight.
pub async fn work_loop(
    ingestor: Arc<Ingestor>,
    kafka: &KafkaArgs,
    group: &str,
    max_attempts: u32,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A worker with every slot busy on large files does not poll for a while.
    let cfg = kafka.with_defaults(
        kafka.consumer_config(group),
        &[("max.poll.interval.ms", "3600000")],
    );
    let consumer: StreamConsumer<ObservedContext> = cfg
        .create_with_context(ObservedContext::new(group, None))
        .context("creating the upload consumer")?;
    let topic = ingestor.topics.uploads.clone();
    consumer
        .subscribe(&[&topic])
        .context("subscribing to uploads")?;
    tracing::info!(%topic, %group, concurrency, "Ingest worker waiting for uploads.");
    let mut watch = skuflow_platform::kafka::StallWatch::new(
        &topic,
        kafka
            .rejoin_stalled_secs
            .unwrap_or(skuflow_platform::kafka::INGEST_REJOIN_STALLED_SECS),
    );
    let in_flight_gauge = &skuflow_platform::metrics::metrics().uploads_in_flight;
    let mut open = OpenRequests::default();
    // Objects being ingested → the later requests for them, in order.
    let mut busy: HashMap<(String, String), VecDeque<Job>> = HashMap::new();
    let mut running: tokio::task::JoinSet<Ended> = tokio::task::JoinSet::new();
    let start = |job: Job, running: &mut tokio::task::JoinSet<Ended>| {
        let (i, s) = (ingestor.clone(), shutdown.clone());
        running.spawn(async move { ingest_one(&i, job, max_attempts, &s).await });
    };
    let mut stopping = false;
    loop {
        in_flight_gauge.set(running.len() as i64);
        if stopping && running.is_empty() {
            break;
        }
        let room = !stopping && running.len() < concurrency;
        tokio::select! {
            ended = running.join_next(), if !running.is_empty() => {
                let ended = ended.expect("a running ingest").context("ingest task panicked")?;
                if ended.final_ {
                    commit(&consumer, &topic, &mut open, ended.partition, ended.offset);
                }
                let waiting = busy.get_mut(&ended.object).and_then(VecDeque::pop_front);
                match waiting {
                    Some(next) if !stopping => start(next, &mut running),
                    _ => {
                        busy.remove(&ended.object);
                    }
                }
            }
            msg = skuflow_platform::kafka::next_message(&consumer, &shutdown, &mut watch), if room => {
                let Some(msg) = msg else {
                    stopping = true;
                    continue;
                };
                let (partition, offset) = (msg.partition(), msg.offset());
                open.taken(partition, offset);
                let req = match msg.payload().map(serde_json::from_slice::<UploadRequest>) {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        tracing::error!(partition, offset, error = %e, "Upload request is not sku-upload/v1; skipping it.");
                        commit(&consumer, &topic, &mut open, partition, offset);
                        continue;
                    }
                    None => {
                        commit(&consumer, &topic, &mut open, partition, offset);
                        continue;
                    }
                };
                let job = Job {
                    partition,
                    offset,
                    req,
                    traceparent: skuflow_platform::telemetry::traceparent(&msg),
                };
                match busy.get_mut(&job.object()) {
                    Some(waiting) => {
                        tracing::debug!(bucket = %job.req.bucket, key = %job.req.key,
                            "Upload request for an object being ingested; it waits for that ingest.");
                        waiting.push_back(job);
                    }
                    None => {
                        busy.insert(job.object(), VecDeque::new());
                        start(job, &mut running);
                    }
                }
            }
        }
    }
    in_flight_gauge.set(0);
    if !open.is_empty() {
        tracing::info!(
            open = open.len(),
            "Stopped with upload requests unfinished; they are ingested again after a restart."
        );
    }
    Ok(())
}

/// Records that a request is final and commits its partition's new position, if it moved.
fn commit(
    consumer: &StreamConsumer<ObservedContext>,
    topic: &str,
    open: &mut OpenRequests,
    partition: i32,
    offset: i64,
) {
    let Some(position) = open.finished(partition, offset) else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(position)) {
        tracing::warn!(error = %e, "Cannot name the upload offset to commit.");
        return;
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(error = %e, "Committing the upload offset failed; the request may be redelivered (harmless).");
    }
}

/// Ingests one request, retrying with backoff until its outcome is final, it has been given up
/// on after `max_attempts`, or shutdown.
async fn ingest_one(
    ingestor: &Ingestor,
    job: Job,
    max_attempts: u32,
    shutdown: &CancellationToken,
) -> Ended {
    let Job {
        partition,
        offset,
        req,
        traceparent,
    } = job;
    let mut ended = Ended {
        partition,
        offset,
        object: (req.bucket.clone(), req.key.clone()),
        final_: true,
    };
    // The file's ingest, in the trace its request started.
    let span = tracing::info_span!(
        "ingest.file",
        bucket = %req.bucket,
        key = %req.key,
        partition,
        offset,
        outcome = tracing::field::Empty,
        file_id = tracing::field::Empty
    );
    skuflow_platform::telemetry::set_parent(&span, traceparent.as_deref());
    let mut backoff = skuflow_platform::backoff::Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    let started = Instant::now();
    loop {
        match ingestor.ingest(&req).instrument(span.clone()).await {
            Ok(Outcome::Skipped(why)) => {
                tracing::debug!(bucket = %req.bucket, key = %req.key, %why, "Skipped upload request.");
                return ended;
            }
            Ok(Outcome::Refused(why)) => {
                tracing::warn!(bucket = %req.bucket, key = %req.key, trigger = ?req.trigger, %why, "Upload request refused.");
                count_refused();
                return ended;
            }
            Ok(Outcome::Completed(ev)) => {
                span.record("outcome", "completed")
                    .record("file_id", &ev.file_id);
                count_outcome(&ev, "completed", started);
                return ended;
            }
            Ok(Outcome::Failed(ev)) => {
                span.record("outcome", "failed")
                    .record("file_id", &ev.file_id);
                count_outcome(&ev, "failed", started);
                return ended;
            }
            Err(e) => {
                let attempts = backoff.attempts() + 1;
                if attempts >= max_attempts {
                    match ingestor.abandon(&req, attempts, &e.to_string()).await {
                        Ok(ev) => {
                            count_outcome(&ev, "abandoned", started);
                            return ended;
                        }
                        Err(a) => {
                            tracing::warn!(bucket = %req.bucket, key = %req.key, cause = %a,
                                "Could not record giving up on the file; retrying it.")
                        }
                    }
                }
                let pause = backoff.next_pause();
                tracing::warn!(bucket = %req.bucket, key = %req.key, cause = %e, attempt = attempts, max_attempts,
                    retry_in_ms = pause.as_millis() as u64, "Ingest interrupted; retrying the file.");
                if !skuflow_platform::backoff::Backoff::sleep(pause, shutdown).await {
                    ended.final_ = false;
                    return ended;
                }
            }
        }
    }
}

/// Exports a file's final outcome: `skuflow_files_total`, its rows read and rejected, its bytes
/// (its acknowledged messages are counted as they are acknowledged).
fn count_outcome(ev: &FileEvent, outcome: &str, started: Instant) {
    let m = skuflow_platform::metrics::metrics();
    m.files.with_label_values(&[outcome]).inc();
    m.file_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    m.records_received
        .with_label_values(&["uploads"])
        .inc_by(ev.rows_total.unwrap_or(0));
    m.records_failed
        .with_label_values(&["rejected"])
        .inc_by(ev.rows_rejected.unwrap_or(0));
    m.bytes
        .with_label_values(&["in"])
        .inc_by(ev.bytes.or(ev.size).unwrap_or(0));
    // A store was heard from (whatever became of its file); a replayed older file does not
    // move the time back.
    if let (Some(country), Some(store)) = (&ev.country, &ev.store_id) {
        let at = ev.last_modified.unwrap_or(ev.at).timestamp();
        let gauge = m.store_last_upload.with_label_values(&[country, store]);
        if at > gauge.get() {
            gauge.set(at);
        }
    }
}

/// Counts a refused request (`skuflow_files_total{outcome="refused"}`).
fn count_refused() {
    skuflow_platform::metrics::metrics()
        .files
        .with_label_values(&["refused"])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_position_is_the_oldest_open_request() {
        let mut open = OpenRequests::default();
        for o in 10..14 {
            open.taken(0, o);
        }
        open.taken(1, 3);
        // 11 and 12 end before 10: nothing past 10 may be committed yet.
        assert_eq!(open.finished(0, 11), Some(10));
        assert_eq!(open.finished(0, 12), None);
        assert_eq!(open.finished(0, 10), Some(13));
        assert_eq!(open.finished(1, 3), Some(4));
        assert_eq!(open.len(), 1);
        assert_eq!(open.finished(0, 13), Some(14));
        assert!(open.is_empty());
    }

    #[test]
    fn the_default_fits_the_cores_and_the_memory_limit() {
        let s = IngestSettings::default();
        let per = memory_per_upload(&s);
        // At the defaults an upload may hold about 113 MiB (16 MiB zstd window, 2M rows' keys).
        assert!((100 << 20..130 << 20).contains(&per), "{per}");
        assert_eq!(auto_concurrency(2, None, &s), 8);
        assert_eq!(auto_concurrency(64, None, &s), MAX_AUTO_CONCURRENCY);
        // 256 MiB holds one worst-case upload besides the base, 512 MiB (the chart's) three.
        assert_eq!(auto_concurrency(2, Some(256 << 20), &s), 1);
        assert_eq!(auto_concurrency(4, Some(512 << 20), &s), 3);
        assert_eq!(auto_concurrency(8, Some(4 << 30), &s), MAX_AUTO_CONCURRENCY);
        assert_eq!(auto_concurrency(1, Some(64 << 20), &s), 1);
    }
}
