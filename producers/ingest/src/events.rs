//! The S3 event-notification trigger: AWS S3 event JSON (as MinIO publishes straight to Kafka,
//! and AWS sends through EventBridge/SQS) read from a Kafka topic. Only `ObjectCreated:*` events
//! start an ingest; keys arrive URL-encoded.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use skuflow_platform::backoff::Backoff;
use skuflow_platform::KafkaArgs;
use skuflow_schemas::{Trigger, UploadRequest};

use crate::discovery::request_upload;
use crate::worker::Ingestor;

#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "Records", default)]
    records: Vec<EventRecord>,
}

#[derive(Debug, Deserialize)]
struct EventRecord {
    #[serde(rename = "eventName", default)]
    event_name: String,
    s3: S3Entity,
}

#[derive(Debug, Deserialize)]
struct S3Entity {
    bucket: BucketEntity,
    object: ObjectEntity,
}

#[derive(Debug, Deserialize)]
struct BucketEntity {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ObjectEntity {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "eTag", default)]
    etag: Option<String>,
}

/// What one notification asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Objects created: (bucket, decoded key, size, etag).
    pub created: Vec<(String, String, Option<u64>, Option<String>)>,
    /// Events of other kinds (removals, ACL changes...), counted and ignored.
    pub ignored: usize,
}

/// Decodes an S3 event key: `%XX` escapes, and `+` for a space.
pub fn decode_key(key: &str) -> Result<String, String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = key
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("key {key:?} ends inside a %-escape"))?;
                let b = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("key {key:?} has a bad %-escape %{hex}"))?;
                out.push(b);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("key {key:?} does not decode to UTF-8"))
}

/// Parses one notification message.
pub fn parse(payload: &[u8]) -> Result<Parsed, String> {
    let n: Notification = serde_json::from_slice(payload)
        .map_err(|e| format!("not an S3 event notification: {e}"))?;
    let mut parsed = Parsed::default();
    for r in n.records {
        // AWS: `ObjectCreated:Put`; MinIO: `s3:ObjectCreated:Put`.
        if r.event_name
            .trim_start_matches("s3:")
            .starts_with("ObjectCreated:")
        {
            let key = decode_key(&r.s3.object.key)?;
            let etag = r.s3.object.etag.filter(|e| !e.is_empty());
            parsed
                .created
                .push((r.s3.bucket.name, key, r.s3.object.size, etag));
        } else {
            parsed.ignored += 1;
        }
    }
    Ok(parsed)
}

/// Consumes notifications from `topic` and queues an upload request per created object.
pub async fn event_loop(
    ingestor: &Ingestor,
    kafka: &KafkaArgs,
    topic: &str,
    group: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = kafka
        .consumer_config(group)
        .create()
        .context("creating the S3 event consumer")?;
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    tracing::info!(%topic, %group, "Listening for S3 event notifications.");
    let (mut created, mut ignored) = (0u64, 0u64);
    let mut watch = skuflow_platform::kafka::StallWatch::new(
        topic,
        kafka
            .rejoin_stalled_secs
            .unwrap_or(skuflow_platform::kafka::SINK_REJOIN_STALLED_SECS),
    );
    loop {
        let Some(msg) =
            skuflow_platform::kafka::next_message(&consumer, &shutdown, &mut watch).await
        else {
            return Ok(());
        };
        match msg.payload().map(parse) {
            Some(Ok(p)) => {
                ignored += p.ignored as u64;
                for (bucket, key, size, etag) in p.created {
                    if !ingestor.bucket_allowed(&bucket) {
                        tracing::warn!(%bucket, %key, "S3 event for a bucket outside --buckets; ignored.");
                        ignored += 1;
                        continue;
                    }
                    let req = UploadRequest::new(&bucket, &key, etag, size, Trigger::Event);
                    let mut backoff =
                        Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
                    while let Err(e) = request_upload(ingestor, &req).await {
                        tracing::warn!(%bucket, %key, cause = %format!("{e:#}"), "Queueing an upload request failed; retrying.");
                        if !Backoff::sleep(backoff.next_pause(), &shutdown).await {
                            return Ok(());
                        }
                    }
                    created += 1;
                }
                tracing::debug!(created, ignored, "S3 event notification handled.");
            }
            Some(Err(reason)) => {
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), %reason, "Skipping an S3 event message.");
            }
            None => {}
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            msg.topic(),
            msg.partition(),
            Offset::Offset(msg.offset() + 1),
        )?;
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "Committing the event offset failed; it may be redelivered (harmless).");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIO: &str = r#"{"EventName":"s3:ObjectCreated:Put","Key":"skus-de/incoming/x",
      "Records":[{"eventVersion":"2.0","eventSource":"minio:s3","eventName":"s3:ObjectCreated:Put",
      "s3":{"bucket":{"name":"skus-de"},"object":{"key":"incoming%2Findividual%2Fcorner+shop%2F2026-11-01%2Fsk%C3%BCs.csv","size":120,"eTag":"abc"}}}]}"#;

    #[test]
    fn minio_and_aws_created_events_start_ingests() {
        let p = parse(MINIO.as_bytes()).unwrap();
        assert_eq!(
            p.created,
            vec![(
                "skus-de".into(),
                "incoming/individual/corner shop/2026-11-01/sküs.csv".into(),
                Some(120),
                Some("abc".into())
            )]
        );
        let aws = r#"{"Records":[{"eventName":"ObjectCreated:CompleteMultipartUpload","s3":{"bucket":{"name":"b"},"object":{"key":"incoming/a.csv"}}},
                                 {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"incoming/a.csv"}}}]}"#;
        let p = parse(aws.as_bytes()).unwrap();
        assert_eq!(p.created.len(), 1);
        assert_eq!(p.ignored, 1);
    }

    #[test]
    fn bad_events_are_reported_not_panicked_on() {
        assert!(parse(b"not json").is_err());
        assert!(decode_key("a%2").is_err());
        assert!(decode_key("a%zz").is_err());
        assert!(decode_key("%ff").is_err());
        assert_eq!(decode_key("a%20b+c").unwrap(), "a b c");
    }
}
