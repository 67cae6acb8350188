//! Discovery: scanning buckets for new uploads and queueing one request per object version.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::path::Path;
use rdkafka::message::{Header, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use skuflow_schemas::{headers, Trigger, UploadRequest, UPLOAD_SCHEMA};
use tracing::Instrument as _;

use crate::worker::Ingestor;

/// How long a queued object is not queued again by the scanner; after that, it is queued again
/// only if its request is final on the work queue (the ingest group committed past it) and the
/// object is still in the incoming prefix.
pub const REQUEUE_AFTER: Duration = Duration::from_secs(600);

/// An object the scanner queued: when, and where its request landed on the work queue.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    at: Instant,
    partition: i32,
    offset: i64,
}

/// What the scanner knows of the objects it queued, and the ingest group's progress on the work
/// queue: a request is open while the group's committed offset on its partition is not past it
/// (queued, or being ingested: workers commit a request only once its outcome is final).
pub struct Seen {
    queued: HashMap<(String, String, String), Queued>,
    requeue_after: Duration,
    /// A client of the ingest group that only reads its committed offsets (it never joins).
    group: Option<rdkafka::consumer::BaseConsumer>,
    topic: String,
}

impl Seen {
    /// `group`: the ingest workers' consumer group; without it (tests), a request counts as
    /// final after `requeue_after`.
    pub fn new(
        kafka: Option<(&skuflow_platform::KafkaArgs, &str)>,
        topic: &str,
        requeue_after: Duration,
    ) -> anyhow::Result<Self> {
        let group = match kafka {
            Some((k, g)) => Some(
                k.consumer_config(g)
                    .create()
                    .map_err(|e| anyhow::anyhow!("creating the work queue reader: {e}"))?,
            ),
            None => None,
        };
        Ok(Seen {
            queued: HashMap::new(),
            requeue_after,
            group,
            topic: topic.to_string(),
        })
    }

    /// Queues `req` for the object `id` and notes where its request landed.
    async fn queue(
        &mut self,
        ingestor: &Ingestor,
        id: (String, String, String),
        req: &UploadRequest,
    ) -> anyhow::Result<()> {
        let (partition, offset) = request_upload(ingestor, req).await?;
        self.queued.insert(
            id,
            Queued {
                at: Instant::now(),
                partition,
                offset,
            },
        );
        Ok(())
    }

    /// The ingest group's committed offsets on `partitions`; `None` when they cannot be read.
    fn committed(&self, partitions: &[i32]) -> Option<HashMap<i32, i64>> {
        use rdkafka::consumer::Consumer as _;
        let group = self.group.as_ref()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        match group.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(c) => Some(
                c.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the ingest group's progress; queueing old objects again.");
                None
            }
        }
    }
}

/// An upload request as its message on the work queue: key, JSON payload and schema header.
pub fn upload_message(req: &UploadRequest) -> anyhow::Result<(String, Vec<u8>, OwnedHeaders)> {
    let headers = OwnedHeaders::new().insert(Header {
        key: headers::SCHEMA,
        value: Some(UPLOAD_SCHEMA),
    });
    Ok((req.kafka_key(), serde_json::to_vec(req)?, headers))
}

/// Puts one upload request on the work queue and waits for the broker's acknowledgement.
/// With traces exported, the request starts its upload's trace (`upload.queued`), whose
/// context the message carries to the worker.
pub async fn request_upload(
    ingestor: &Ingestor,
    req: &UploadRequest,
) -> anyhow::Result<(i32, i64)> {
    let span = tracing::info_span!(
        "upload.queued",
        bucket = %req.bucket,
        key = %req.key,
        trigger = ?req.trigger
    );
    let (key, payload, headers) = upload_message(req)?;
    let headers = span.in_scope(|| {
        skuflow_platform::telemetry::with_trace_headers(
            headers,
            &skuflow_platform::telemetry::trace_headers(),
        )
    });
    crate::produce::send_acknowledged(
        &ingestor.control,
        &ingestor.topics.uploads,
        key.as_bytes(),
        payload,
        headers,
        Duration::from_secs(60),
    )
    .instrument(span)
    .await
    .map_err(|e| e.context("upload request not acknowledged"))
}

/// Lists each bucket's incoming prefix once; returns the requests queued. An object queued
/// before is queued again only after `requeue_after`, and only when its request is final and
/// it is still here: never while it waits on the queue or is being ingested.
pub async fn scan_once(
    ingestor: &Ingestor,
    buckets: &[String],
    seen: &mut Seen,
) -> anyhow::Result<usize> {
    let buckets: Vec<String> = if buckets.is_empty() {
        ingestor.stores.local_buckets()
    } else {
        buckets.to_vec()
    };
    let mut listed = std::collections::HashSet::new();
    let mut due = Vec::new();
    let mut queued = 0;
    for bucket in &buckets {
        let store = match ingestor.stores.bucket(bucket) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%bucket, cause = %format!("{e:#}"), "Cannot scan bucket.");
                continue;
            }
        };
        let prefix = Path::from(ingestor.template.incoming_prefix.trim_end_matches('/'));
        let mut list = store.list(Some(&prefix));
        while let Some(item) = list.next().await {
            let meta = match item {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%bucket, cause = %e, "Listing failed; will scan again.");
                    break;
                }
            };
            let key = meta.location.to_string();
            let etag = meta.e_tag.clone().unwrap_or_default();
            let id = (bucket.clone(), key.clone(), etag.clone());
            listed.insert(id.clone());
            let req = UploadRequest::new(
                bucket,
                &key,
                meta.e_tag.clone(),
                Some(meta.size),
                Trigger::Scan,
            );
            match seen.queued.get(&id) {
                None => {}
                Some(q) if q.at.elapsed() < seen.requeue_after => continue,
                Some(q) => {
                    due.push((id, req, *q));
                    continue;
                }
            }
            seen.queue(ingestor, id, &req).await?;
            queued += 1;
        }
    }
    // Objects queued a while ago and still here: their requests are open (waiting or being
    // ingested) unless the group committed past them.
    if !due.is_empty() {
        let mut partitions: Vec<i32> = due.iter().map(|(_, _, q)| q.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let committed = seen.committed(&partitions);
        for (id, req, q) in due {
            let open = committed
                .as_ref()
                .is_some_and(|c| c.get(&q.partition).is_none_or(|&c| c <= q.offset));
            if open {
                tracing::debug!(bucket = %req.bucket, key = %req.key, partition = q.partition, offset = q.offset,
                    "Object still queued or being ingested; not queued again.");
                continue;
            }
            seen.queue(ingestor, id, &req).await?;
            queued += 1;
        }
    }
    // Objects gone from the incoming prefix (ingested and moved) are forgotten.
    seen.queued.retain(|id, _| listed.contains(id));
    Ok(queued)
}

/// Scans every `every` until shutdown.
pub async fn scan_loop(
    ingestor: &Ingestor,
    buckets: &[String],
    every: Duration,
    mut seen: Seen,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let result = scan_once(ingestor, buckets, &mut seen).await;
        match &result {
            Ok(0) => {}
            Ok(n) => tracing::info!(queued = n, "Queued uploads found by the bucket scan."),
            Err(e) => {
                tracing::warn!(cause = %format!("{e:#}"), "Bucket scan failed; will scan again.")
            }
        }
        skuflow_platform::ops::health().report(
            "store",
            result
                .map(|_| ())
                .map_err(|e| format!("bucket scan failed: {e:#}")),
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
