//! Ingesting one upload: metadata, two streaming passes (validate, then produce), the file
//! lifecycle, and moving the object to `processed/` or `errors/`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::TryStreamExt;
use object_store::{Attribute, GetOptions, GetResult, GetResultPayload, ObjectStore, PutPayload};
use rdkafka::message::{Header, OwnedHeaders};
use serde::Serialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use skuflow_platform::TopicArgs;
use skuflow_schemas::{
    headers, FileEvent, FileStatus, RejectReason, Trigger, UploadRequest, FILE_SCHEMA,
    RECORD_SCHEMA, REJECT_SCHEMA,
};

use crate::csvstream::Limits;
use crate::metadata::{resolve, BucketCountries, KeyTemplate};
use crate::produce::{self, FileProgress, RecordProducer};
use crate::reader::{self, Compression};
use crate::record::{short_hash, FileContext, RecordEncoder};
use crate::scan::{scan, RowEvent, ScanError, ScanSummary};
use crate::store::Stores;

/// Where a pass reads an object from: its local file, or a stream.
enum Body {
    File(std::fs::File),
    Stream(Box<dyn std::io::Read + Send>),
}

/// How the ingest of one request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every valid row is acknowledged; the object is in `processed/`.
    Completed(FileEvent),
    /// The file was rejected as a whole; the object is in `errors/` beside its report.
    Failed(FileEvent),
    /// Nothing to do (already ingested and moved, or not an upload).
    Skipped(String),
}

/// A failure that retrying the same request may fix (store or broker unavailable).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Retry(pub anyhow::Error);

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub max_reject_ratio: f64,
    pub max_decompressed_bytes: u64,
    pub limits: Limits,
    /// Rejected rows listed in an error report.
    pub report_cap: usize,
    pub processed_prefix: String,
    pub errors_prefix: String,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_reject_ratio: 0.5,
            max_decompressed_bytes: 64 << 30,
            limits: Limits::default(),
            report_cap: 1000,
            processed_prefix: "processed/".into(),
            errors_prefix: "errors/".into(),
        }
    }
}

pub struct Ingestor {
    pub stores: Stores,
    pub countries: BucketCountries,
    pub template: KeyTemplate,
    pub topics: TopicArgs,
    pub settings: IngestSettings,
    pub records: Arc<RecordProducer>,
    /// File lifecycle events and upload requests: a client of their own, so that they never
    /// queue behind a file's records (sharing one also cost more CPU in the ingest bench).
    pub control: Arc<RecordProducer>,
}

/// The deterministic id of an upload version.
pub fn file_id(bucket: &str, key: &str, etag: &str) -> String {
    short_hash(&[bucket.as_bytes(), key.as_bytes(), etag.as_bytes()])
}

/// The machine-readable report written beside a rejected file.
#[derive(Debug, Serialize)]
struct ErrorReport<'a> {
    file_id: &'a str,
    bucket: &'a str,
    key: &'a str,
    reason: &'a str,
    rows_total: Option<u64>,
    rows_valid: Option<u64>,
    rows_rejected: Option<u64>,
    rejected_rows: &'a [ReportRow],
    rejected_rows_truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
struct ReportRow {
    line: u64,
    raw: String,
    reasons: Vec<RejectReason>,
}

/// Moves `key` from the incoming prefix to `prefix`.
fn moved_key(key: &str, incoming: &str, prefix: &str) -> String {
    format!("{prefix}{}", key.strip_prefix(incoming).unwrap_or(key))
}

fn file_headers(schema: &str, file_id: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: headers::SCHEMA,
            value: Some(schema),
        })
        .insert(Header {
            key: headers::FILE_ID,
            value: Some(file_id),
        })
}

impl Ingestor {
    async fn emit_file_event(&self, ev: &FileEvent) -> Result<(), Retry> {
        let payload = serde_json::to_vec(ev).map_err(|e| Retry(e.into()))?;
        produce::send_acknowledged(
            &self.control,
            &self.topics.files,
            ev.file_id.as_bytes(),
            payload,
            file_headers(FILE_SCHEMA, &ev.file_id),
            Duration::from_secs(300),
        )
        .await
        .map_err(|e| Retry(e.context("file event not acknowledged")))
    }

    /// Ingests the object a request names. `Err(Retry)` leaves everything to be redone.
    pub async fn ingest(&self, req: &UploadRequest) -> Result<Outcome, Retry> {
        let started = Instant::now();
        let store = match self.stores.bucket(&req.bucket) {
            Ok(s) => s,
            Err(e) => return self.fail_unreadable(req, format!("{e:#}")).await,
        };
        if let Err(reason) = crate::metadata::check_key(&req.key) {
            return self.fail_unreadable(req, reason).await;
        }
        // A replay reads an object in processed/ as the upload it was: the key it arrived under
        // gives its metadata, file id and record ids, and its version is the original's, so
        // every sink finds the same records again and duplicates nothing.
        let replay = req.trigger == Trigger::Replay;
        let source_key = if replay {
            match req.key.strip_prefix(&self.settings.processed_prefix) {
                Some(rest) => format!("{}{rest}", self.template.incoming_prefix),
                None => {
                    return Ok(Outcome::Skipped(format!(
                        "a replay reads only {}: {} is not under it",
                        self.settings.processed_prefix, req.key
                    )))
                }
            }
        } else {
            req.key.clone()
        };
        if !source_key.starts_with(&self.template.incoming_prefix) {
            return Ok(Outcome::Skipped(format!(
                "{} is not under {}",
                req.key, self.template.incoming_prefix
            )));
        }
        let path = match crate::store::object_path(&req.key) {
            Ok(p) => p,
            Err(reason) => return self.fail_unreadable(req, reason).await,
        };
        let head = match store.head(&path).await {
            Ok(h) => h,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Outcome::Skipped(format!(
                    "{}/{} is gone (already ingested and moved)",
                    req.bucket, req.key
                )))
            }
            Err(e) => {
                return Err(Retry(
                    anyhow::Error::new(e).context("reading object metadata"),
                ))
            }
        };
        let etag = head
            .e_tag
            .clone()
            .unwrap_or_else(|| format!("{}-{}", head.size, head.last_modified.timestamp_micros()));
        // The upload's identity: a replay keeps the ETag it was first ingested with (a copy to
        // processed/ may have given the object another), so its file and record ids are the
        // same as then. Reads are still pinned to the object's current ETag.
        let identity_etag = match (&req.etag, replay) {
            (Some(e), true) => e.clone(),
            _ => etag.clone(),
        };
        if !replay && req.etag.as_deref().is_some_and(|e| e != etag) {
            tracing::info!(bucket = %req.bucket, key = %req.key, "Object changed since the request; ingesting the current version.");
        }
        let fid = file_id(&req.bucket, &source_key, &identity_etag);
        let mut event = FileEvent::new(&fid, FileStatus::Accepted, &req.bucket, &source_key);
        let last_modified = match (replay, req.last_modified) {
            (true, Some(t)) => t,
            _ => head.last_modified,
        };
        event.etag = Some(identity_etag.clone());
        event.size = Some(head.size);
        event.last_modified = Some(last_modified);
        if replay {
            event.moved_to = Some(req.key.clone());
        }

        // First pass: validate only. The object is pinned to this ETag for both passes.
        let opts = || GetOptions {
            if_match: Some(etag.clone()),
            ..GetOptions::default()
        };
        let first = store
            .get_opts(&path, opts())
            .await
            .map_err(|e| Retry(anyhow::Error::new(e).context("opening the object")))?;
        let user_meta: HashMap<String, String> = first
            .attributes
            .iter()
            .filter_map(|(k, v)| match k {
                Attribute::Metadata(name) => {
                    Some((name.to_ascii_lowercase(), v.as_ref().to_string()))
                }
                _ => None,
            })
            .collect();
        let content_encoding = first
            .attributes
            .get(&Attribute::ContentEncoding)
            .map(|v| v.as_ref().to_string());
        let country = self.countries.country(&req.bucket);
        let meta = resolve(&self.template, &source_key, &user_meta);
        event.country = country.as_ref().ok().cloned();
        if let Ok(m) = &meta {
            event.store_id = Some(m.store_id.clone());
            event.store_category = Some(m.store_category);
            event.chain = m.chain.clone();
            event.business_date = Some(m.business_date);
        }
        self.emit_file_event(&event).await?;
        let (country, meta) = match (country, meta) {
            (Ok(c), Ok(m)) => (c, m),
            (Err(e), _) | (_, Err(e)) => {
                drop(first);
                return self
                    .finish_failed(&store, event, replay, e, None, &[], started)
                    .await;
            }
        };
        let ctx = Arc::new(FileContext {
            file_id: fid.clone(),
            bucket: req.bucket.clone(),
            key: source_key.clone(),
            etag: identity_etag,
            last_modified,
            country,
            meta,
            ingested_at: Utc::now(),
        });
        let hint = Compression::from_hint(&req.key, content_encoding.as_deref());
        let cap = self.settings.report_cap;
        let pass1 = self
            .run_pass(first, hint, move |ev, report: &mut Vec<ReportRow>| {
                if let RowEvent::Rejected {
                    line, raw, reasons, ..
                } = ev
                {
                    if report.len() < cap {
                        report.push(ReportRow {
                            line,
                            raw: String::from_utf8_lossy(raw).into_owned(),
                            reasons,
                        });
                    }
                }
                Ok(())
            })
            .await?;
        let (summary, report) = match pass1 {
            Ok(ok) => ok,
            Err(reason) => {
                return self
                    .finish_failed(&store, event, replay, reason, None, &[], started)
                    .await
            }
        };
        let ratio = summary.rows_rejected as f64 / summary.rows_total as f64;
        if ratio > self.settings.max_reject_ratio {
            let reason = format!(
                "{} of {} rows ({:.1}%) were rejected, above the {:.1}% limit; see the rejected rows",
                summary.rows_rejected,
                summary.rows_total,
                ratio * 100.0,
                self.settings.max_reject_ratio * 100.0
            );
            return self
                .finish_failed(
                    &store,
                    event,
                    replay,
                    reason,
                    Some(&summary),
                    &report,
                    started,
                )
                .await;
        }

        // Second pass: produce every valid row and every rejected one, then wait for the acks.
        let second = store
            .get_opts(&path, opts())
            .await
            .map_err(|e| Retry(anyhow::Error::new(e).context("reopening the object")))?;
        let progress = Arc::new(FileProgress::default());
        let (records, topics, p, c) = (
            self.records.clone(),
            self.topics.clone(),
            progress.clone(),
            ctx.clone(),
        );
        let encoder = RecordEncoder::new(&ctx);
        let (mut buf, mut key) = (Vec::with_capacity(1024), Vec::with_capacity(128));
        let pass2 = self
            .run_pass(second, hint, move |ev, _: &mut Vec<ReportRow>| {
                match ev {
                    RowEvent::Valid { line, row } => {
                        encoder.encode(line, &row, &mut key, &mut buf);
                        produce::send(
                            &records,
                            &p,
                            &topics.records,
                            &key,
                            &buf,
                            file_headers(RECORD_SCHEMA, &c.file_id),
                        )?;
                    }
                    RowEvent::Rejected {
                        line,
                        raw,
                        raw_truncated,
                        reasons,
                    } => {
                        let rej = c.reject(line, raw, raw_truncated, reasons);
                        buf.clear();
                        serde_json::to_writer(&mut buf, &rej)?;
                        produce::send(
                            &records,
                            &p,
                            &topics.rejects,
                            c.file_id.as_bytes(),
                            &buf,
                            file_headers(REJECT_SCHEMA, &c.file_id),
                        )?;
                    }
                }
                Ok(())
            })
            .await?;
        let summary2 = match pass2 {
            Ok((s, _)) => s,
            Err(reason) => {
                return Err(Retry(anyhow::anyhow!(
                    "second pass differs from the first: {reason}"
                )))
            }
        };
        if summary2.rows_total != summary.rows_total {
            return Err(Retry(anyhow::anyhow!(
                "second pass read {} rows, the first {}",
                summary2.rows_total,
                summary.rows_total
            )));
        }
        let settle = progress.clone();
        tokio::task::spawn_blocking(move || {
            produce::wait_settled(&settle, Duration::from_secs(600))
        })
        .await
        .map_err(|e| Retry(e.into()))?
        .map_err(|e| Retry(anyhow::anyhow!(e)))?;

        let target = moved_key(
            &source_key,
            &self.template.incoming_prefix,
            &self.settings.processed_prefix,
        );
        event.status = FileStatus::Completed;
        fill_counts(&mut event, &summary, started);
        event.moved_to = Some(target.clone());
        event.at = Utc::now();
        self.emit_file_event(&event).await?;
        if !replay {
            move_object(&store, &path, &target, "processed/").await?;
        }
        tracing::info!(file_id = %fid, bucket = %req.bucket, key = %req.key, replay, rows_valid = summary.rows_valid,
            rows_rejected = summary.rows_rejected, elapsed_ms = started.elapsed().as_millis() as u64, "Ingested file.");
        Ok(Outcome::Completed(event))
    }

    /// Streams the object through decompression and the CSV scan on a blocking thread.
    ///
    /// An object in a local directory is read straight from its file on that thread: as a
    /// stream, object_store hands a file over in 8 KiB chunks, each read by a blocking task of
    /// its own (about 11,000 thread hand-offs per 100 MB and pass).
    async fn run_pass<F>(
        &self,
        object: GetResult,
        hint: Option<Compression>,
        mut on_row: F,
    ) -> Result<Result<(ScanSummary, Vec<ReportRow>), String>, Retry>
    where
        F: FnMut(RowEvent<'_>, &mut Vec<ReportRow>) -> anyhow::Result<()> + Send + 'static,
    {
        let range = object.range.clone();
        let source = match object.payload {
            GetResultPayload::File(file, _) => Body::File(file),
            GetResultPayload::Stream(stream) => Body::Stream(Box::new(SyncIoBridge::new(
                StreamReader::new(stream.map_err(std::io::Error::other)),
            ))),
        };
        let settings = self.settings.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut report = Vec::new();
            let reader: Box<dyn std::io::Read> = match source {
                Body::File(mut file) => {
                    use std::io::{Read as _, Seek as _};
                    if let Err(e) = file.seek(std::io::SeekFrom::Start(range.start)) {
                        return Err(ScanError::Source(e));
                    }
                    Box::new(file.take(range.end - range.start))
                }
                Body::Stream(s) => Box::new(s),
            };
            let (input, _) = match reader::open(reader, hint, settings.max_decompressed_bytes) {
                Ok(x) => x,
                Err(e) if reader::is_source_error(&e) => return Err(ScanError::Source(e)),
                Err(e) => return Err(ScanError::File(e.to_string())),
            };
            let s = scan(input, settings.limits, |ev| on_row(ev, &mut report))?;
            Ok((s, report))
        })
        .await
        .map_err(|e| Retry(e.into()))?;
        match res {
            Ok(ok) => Ok(Ok(ok)),
            Err(ScanError::File(reason)) => Ok(Err(reason)),
            Err(ScanError::Source(e)) => {
                Err(Retry(anyhow::Error::new(e).context("reading the object")))
            }
            Err(ScanError::Emit(e)) => Err(Retry(e.context("producing records"))),
        }
    }

    /// A request that cannot even be opened (bad bucket or key): report it on the lifecycle topic.
    async fn fail_unreadable(&self, req: &UploadRequest, reason: String) -> Result<Outcome, Retry> {
        let fid = file_id(
            &req.bucket,
            &req.key,
            req.etag.as_deref().unwrap_or_default(),
        );
        let mut event = FileEvent::new(&fid, FileStatus::Failed, &req.bucket, &req.key);
        event.reason = Some(reason.clone());
        self.emit_file_event(&event).await?;
        tracing::warn!(file_id = %fid, bucket = %req.bucket, key = %req.key, %reason, "Upload refused.");
        Ok(Outcome::Failed(event))
    }

    /// Ends a file rejected as a whole: the error report and the object go to `errors/`, and the
    /// reason onto the lifecycle topic. A replayed object stays in `processed/` (no report).
    #[allow(clippy::too_many_arguments)]
    async fn finish_failed(
        &self,
        store: &Arc<dyn ObjectStore>,
        mut event: FileEvent,
        replay: bool,
        reason: String,
        summary: Option<&ScanSummary>,
        report: &[ReportRow],
        started: Instant,
    ) -> Result<Outcome, Retry> {
        let target = (!replay).then(|| {
            moved_key(
                &event.key,
                &self.template.incoming_prefix,
                &self.settings.errors_prefix,
            )
        });
        if let Some(target) = &target {
            let report_key = format!("{target}.errors.json");
            let body = ErrorReport {
                file_id: &event.file_id,
                bucket: &event.bucket,
                key: &event.key,
                reason: &reason,
                rows_total: summary.map(|s| s.rows_total),
                rows_valid: summary.map(|s| s.rows_valid),
                rows_rejected: summary.map(|s| s.rows_rejected),
                rejected_rows: report,
                rejected_rows_truncated: summary
                    .is_some_and(|s| s.rows_rejected as usize > report.len()),
            };
            let json = serde_json::to_vec_pretty(&body).map_err(|e| Retry(e.into()))?;
            store
                .put(&retry_path(&report_key)?, PutPayload::from(json))
                .await
                .map_err(|e| Retry(anyhow::Error::new(e).context("writing the error report")))?;
            event.moved_to = Some(target.clone());
        }
        event.status = FileStatus::Failed;
        if let Some(s) = summary {
            fill_counts(&mut event, s, started);
        }
        event.reason = Some(reason.clone());
        event.at = Utc::now();
        self.emit_file_event(&event).await?;
        if let Some(target) = &target {
            move_object(store, &retry_path(&event.key)?, target, "errors/").await?;
        }
        tracing::warn!(file_id = %event.file_id, bucket = %event.bucket, key = %event.key, replay, %reason, "File rejected as a whole.");
        Ok(Outcome::Failed(event))
    }
}

/// The store path of `key`, for keys already checked (a failure here is retried).
fn retry_path(key: &str) -> Result<object_store::path::Path, Retry> {
    crate::store::object_path(key).map_err(|e| Retry(anyhow::anyhow!(e)))
}

/// Moves the object at `from` to the key `to`; `prefix` names the destination in the error.
async fn move_object(
    store: &Arc<dyn ObjectStore>,
    from: &object_store::path::Path,
    to: &str,
    prefix: &str,
) -> Result<(), Retry> {
    store
        .rename(from, &retry_path(to)?)
        .await
        .map_err(|e| Retry(anyhow::Error::new(e).context(format!("moving the object to {prefix}"))))
}

fn fill_counts(event: &mut FileEvent, s: &ScanSummary, started: Instant) {
    event.rows_total = Some(s.rows_total);
    event.rows_valid = Some(s.rows_valid);
    event.rows_rejected = Some(s.rows_rejected);
    event.bytes = Some(s.bytes);
    event.duration_ms = Some(started.elapsed().as_millis() as u64);
    event.warnings = s.warnings.clone();
}

/// The record producer's librdkafka configuration: skuflow's producer defaults plus the ingest's
/// own, each of which a `-X` option overrides.
pub fn record_producer_config(kafka: &skuflow_platform::KafkaArgs) -> rdkafka::ClientConfig {
    let mut cfg = kafka.producer_config();
    for (k, v) in [
        // Memory stays flat whatever the file size: at most this many records wait in
        // librdkafka's queue (the send loop waits while it is full). Without a cap the queue held
        // a whole 100k-row file (129 MiB peak RSS in the ingest bench). A short queue also costs
        // less CPU while the broker is the limit (200k rows: 20,000 queued, 1.7-2.5 s; 4,000,
        // 1.6 s; 2,000, 1.5 s), and 4,000 still holds more than two full batches (batch.size
        // 1 MB is about 1,400 records) for one request in flight.
        ("queue.buffering.max.messages", "4000"),
        ("queue.buffering.max.kbytes", "65536"),
        // An idempotent producer keeps one ProduceRequest per partition in flight anyway (its
        // in-flight check counts the partition's messages against a limit of five requests).
        // With more than one allowed per connection, librdkafka's broker thread finds a full
        // batch it may not send and wakes itself at once, over and over, until the broker
        // answers: 13.5 s of CPU for 200k rows in the ingest bench against 2.3 s with one, at
        // the same wall time.
        ("max.in.flight.requests.per.connection", "1"),
    ] {
        if !kafka.options.iter().any(|(o, _)| o == k) {
            cfg.set(k, v);
        }
    }
    cfg
}

/// Builds the record producer and the control producer.
pub fn producers(
    kafka: &skuflow_platform::KafkaArgs,
    topics: &skuflow_platform::TopicArgs,
) -> anyhow::Result<(Arc<RecordProducer>, Arc<RecordProducer>)> {
    let counter = || produce::DeliveryCounter::new(&topics.records, &topics.rejects);
    let records = RecordProducer::new(&record_producer_config(kafka), counter())
        .context("creating the record producer (check --brokers and -X options)")?;
    let control = RecordProducer::new(&kafka.producer_config(), counter())
        .context("creating the control producer (check --brokers and -X options)")?;
    Ok((Arc::new(records), Arc::new(control)))
}
