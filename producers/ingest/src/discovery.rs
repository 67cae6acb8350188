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

/// How long a queued object is not queued again by the scanner.
const REQUEUE_AFTER: Duration = Duration::from_secs(600);

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
pub async fn request_upload(ingestor: &Ingestor, req: &UploadRequest) -> anyhow::Result<()> {
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

/// Lists each bucket's incoming prefix once; returns the requests queued.
pub async fn scan_once(
    ingestor: &Ingestor,
    buckets: &[String],
    seen: &mut HashMap<(String, String, String), Instant>,
) -> anyhow::Result<usize> {
    let buckets: Vec<String> = if buckets.is_empty() {
        ingestor.stores.local_buckets()
    } else {
        buckets.to_vec()
    };
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
            if seen.get(&id).is_some_and(|t| t.elapsed() < REQUEUE_AFTER) {
                continue;
            }
            let req = UploadRequest::new(
                bucket,
                &key,
                meta.e_tag.clone(),
                Some(meta.size),
                Trigger::Scan,
            );
            request_upload(ingestor, &req).await?;
            seen.insert(id, Instant::now());
            queued += 1;
        }
    }
    seen.retain(|_, t| t.elapsed() < REQUEUE_AFTER);
    Ok(queued)
}

/// Scans every `every` until shutdown.
pub async fn scan_loop(
    ingestor: &Ingestor,
    buckets: &[String],
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut seen = HashMap::new();
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
