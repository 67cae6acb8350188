//! Ingesting one upload: metadata, two streaming passes (validate, then produce), the file
//! lifecycle, the report beside the object, and moving the object to `processed/` or `errors/`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, GetOptions, GetResult, GetResultPayload, ObjectStore, PutPayload, WriteMultipart,
};
use tokio_util::io::{StreamReader, SyncIoBridge};

use skuflow_platform::{telemetry, TopicArgs};
pub use skuflow_schemas::{
    rejects_key, report_key, FileReport, ReportRow, REJECTS_ERRORS_COLUMN, REJECTS_LINE_COLUMN,
};
use skuflow_schemas::{
    FileEvent, FileStatus, RejectReason, Trigger, UploadRequest, FILE_SCHEMA, RECORD_SCHEMA,
    REJECT_SCHEMA,
};

use crate::csvstream::Limits;
use crate::dedup::{self, KeyTracker, Superseded};
use crate::metadata::{resolve, BucketCountries, KeyTemplate};
use crate::produce::{self, FileProgress, RecordProducer};
use crate::reader::{self, Compression, ReadLimits};
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
    /// Every valid row is acknowledged; the object is in `processed/` (or was replaced by a
    /// newer upload during the ingest, which is ingested next).
    Completed(FileEvent),
    /// The file was rejected as a whole; the object is in `errors/` beside its report.
    Failed(FileEvent),
    /// Nothing to do (already ingested and moved, or not an upload).
    Skipped(String),
    /// A request that does not match what the bucket holds (a replay whose version differs
    /// from the ingest report beside the object): nothing is produced.
    Refused(String),
}

/// A failure that retrying the same request may fix (store or broker unavailable).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Retry(pub anyhow::Error);

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub max_reject_ratio: f64,
    /// Largest object accepted, in bytes as stored (compressed).
    pub max_object_bytes: u64,
    pub read: ReadLimits,
    pub limits: Limits,
    /// Rejected rows listed in a report.
    pub report_cap: usize,
    pub processed_prefix: String,
    pub errors_prefix: String,
    /// Objects above this size are moved by a streamed multipart upload instead of one
    /// server-side copy (S3's CopyObject takes at most 5 GiB).
    pub single_copy_max_bytes: u64,
    /// Messages of an upload before it goes through the bulk lane.
    pub bulk_after_rows: u64,
    /// The bulk lane's rate per worker; 0: none.
    pub bulk_records_per_sec: u64,
}

/// The largest object S3 copies in one CopyObject request.
pub const S3_SINGLE_COPY_MAX: u64 = 5 << 30;

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_reject_ratio: 0.5,
            max_object_bytes: 4 << 30,
            read: ReadLimits {
                max_decompressed: 8 << 30,
                zstd_window_log_max: 24,
            },
            limits: Limits::default(),
            report_cap: 1000,
            processed_prefix: "processed/".into(),
            errors_prefix: "errors/".into(),
            single_copy_max_bytes: S3_SINGLE_COPY_MAX,
            bulk_after_rows: 100_000,
            bulk_records_per_sec: 0,
        }
    }
}

pub struct Ingestor {
    pub stores: Stores,
    /// The buckets every trigger may queue from (`--buckets`); empty: with the local backend,
    /// every bucket directory under the root.
    pub buckets: Vec<String>,
    pub countries: BucketCountries,
    pub template: KeyTemplate,
    pub topics: TopicArgs,
    pub settings: IngestSettings,
    pub records: Arc<RecordProducer>,
    /// File lifecycle events and upload requests: a client of their own, so that they never
    /// queue behind a file's records (sharing one also cost more CPU in the ingest bench).
    pub control: Arc<RecordProducer>,
    /// The rate the worker's large uploads share.
    pub bulk: Arc<crate::bulk::BulkLane>,
}

/// The deterministic id of an upload version.
pub fn file_id(bucket: &str, key: &str, etag: &str) -> String {
    short_hash(&[bucket.as_bytes(), key.as_bytes(), etag.as_bytes()])
}

/// `<file>.rejects.csv`: the rejected rows of a report as they were uploaded, under the
/// upload's header, with the line and the reasons in two extra columns. A store fixes the
/// values in a spreadsheet and uploads the file again: the extra columns are ignored. Rows a
/// later row of the same key superseded are left out (the later row was taken); a row too
/// large to keep keeps only its line and reason. `None` when no row is left.
pub fn rejects_csv(columns: &[String], rows: &[ReportRow]) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for r in rows.iter().filter(|r| !r.raw.is_empty()) {
        if !any {
            let header: Vec<String> = columns
                .iter()
                .map(|c| csv_field(c))
                .chain([REJECTS_LINE_COLUMN.into(), REJECTS_ERRORS_COLUMN.into()])
                .collect();
            out.push_str(&header.join(","));
            out.push('\n');
            any = true;
        }
        let why: Vec<String> = r
            .reasons
            .iter()
            .map(|x| match (&x.field, &x.value) {
                (Some(f), Some(v)) => format!("{f} ({v:?}): {}", x.message),
                (Some(f), None) => format!("{f}: {}", x.message),
                _ => x.message.clone(),
            })
            .collect();
        let mut why = why.join("; ");
        if r.raw_truncated {
            // The beginning of an oversized row is not a row: only where and why.
            why.push_str(" (the row is too large to repeat here: fix it in the uploaded file)");
            out.push_str(&",".repeat(columns.len()));
        } else {
            out.push_str(&r.raw);
            out.push(',');
        }
        out.push_str(&format!("{},{}\n", r.line, csv_field(&why)));
    }
    any.then_some(out)
}

/// One CSV field, quoted when it must be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Moves `key` from the incoming prefix to `prefix`.
fn moved_key(key: &str, incoming: &str, prefix: &str) -> String {
    format!("{prefix}{}", key.strip_prefix(incoming).unwrap_or(key))
}

/// What reading an object through once came to.
enum Pass<S> {
    /// Read to the end: the counts and what the row callback gathered.
    Read(ScanSummary, S),
    /// Not readable as an upload of the contract (encoding, compression, header, a limit): the
    /// file fails as a whole, for this reason.
    Unreadable(String),
}

/// What the first pass learns besides the counts.
#[derive(Default)]
struct FirstPass {
    report: Vec<ReportRow>,
    keys: KeyTracker,
}

/// How a conditional move ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// The ingested version is at the target and no longer at the source.
    Done,
    /// The source holds another version now (a correction uploaded during the ingest): it is
    /// left where it is, for its own ingest.
    Replaced,
}

/// What a replay request is checked against: the ingest report beside the object.
struct ReplayOf {
    etag: String,
    last_modified: DateTime<Utc>,
}

/// When each step of a completed ingest ended, in milliseconds from its start: accepted (its
/// event acknowledged), validated (first pass), produced (every message acknowledged); the
/// rest is the report, the completed event and the move.
#[derive(Debug, Clone, Copy)]
struct Steps {
    accepted_ms: u64,
    validated_ms: u64,
    produced_ms: u64,
}

/// A step of the ingest either goes on with its result or ends the request with an outcome.
/// (One per step of a file: its size does not matter.)
#[allow(clippy::large_enum_variant)]
enum Step<T> {
    Go(T),
    Done(Outcome),
}

/// The object version a request means, and the upload it is.
struct Located {
    bucket: String,
    key: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    head: object_store::ObjectMeta,
    /// The version read (pinned by both passes): ETag, or size and modification time.
    etag: String,
    /// The version the upload is known by (a replay keeps its first ingest's).
    identity_etag: String,
    /// The key it arrived under in `incoming/`.
    source_key: String,
    fid: String,
    replay: bool,
    last_modified: DateTime<Utc>,
}

impl Located {
    /// The lifecycle event that accepts this upload.
    fn accepted_event(&self) -> FileEvent {
        let mut event = FileEvent::new(
            &self.fid,
            FileStatus::Accepted,
            &self.bucket,
            &self.source_key,
        );
        event.etag = Some(self.identity_etag.clone());
        event.size = Some(self.head.size);
        event.last_modified = Some(self.last_modified);
        if self.replay {
            event.moved_to = Some(self.key.clone());
        }
        event
    }
}

impl Ingestor {
    /// Whether requests for `bucket` are taken: it is in `--buckets`, or (local backend without
    /// a list) a bucket directory under the root.
    pub fn bucket_allowed(&self, bucket: &str) -> bool {
        if self.buckets.is_empty() {
            self.stores.args().backend == crate::store::Backend::Local
                && self.stores.bucket(bucket).is_ok()
        } else {
            self.buckets.iter().any(|b| b == bucket)
        }
    }

    async fn emit_file_event(&self, ev: &FileEvent) -> Result<(), Retry> {
        let payload = serde_json::to_vec(ev).map_err(|e| Retry(e.into()))?;
        produce::send_acknowledged(
            &self.control,
            &self.topics.files,
            ev.file_id.as_bytes(),
            payload,
            skuflow_platform::kafka::message_headers(
                FILE_SCHEMA,
                &ev.file_id,
                &telemetry::trace_headers(),
            ),
            Duration::from_secs(300),
        )
        .await
        .map(|_| ())
        .map_err(|e| Retry(e.context("file event not acknowledged")))
    }

    /// Ingests the object a request names. `Err(Retry)` leaves everything to be redone.
    ///
    /// The steps: find the version to ingest ([`Self::locate`]); accept it, reading its
    /// metadata with the first open ([`Self::accept`]); validate every row (first pass); produce
    /// the valid rows and the dead letters (second pass, [`Self::produce`]); then write the
    /// report, announce the outcome and move the object ([`Self::complete`]). Any step may end
    /// the file as failed, with its reason.
    pub async fn ingest(&self, req: &UploadRequest) -> Result<Outcome, Retry> {
        let started = Instant::now();
        let up = match self.locate(req).await? {
            Step::Go(up) => up,
            Step::Done(outcome) => return Ok(outcome),
        };
        let mut event = up.accepted_event();
        if up.head.size > self.settings.max_object_bytes {
            self.emit_file_event(&event).await?;
            let reason = format!(
                "the object is {} bytes, above the limit of {} bytes per upload (--max-object-bytes); split it into several uploads",
                up.head.size, self.settings.max_object_bytes
            );
            return self
                .finish_failed(&up.store, event, up.replay, reason, None, &[], started)
                .await;
        }
        // Both passes read the version located, pinned by its ETag.
        let first = self.open(&up, "opening the object").await?;
        let (ctx, hint, first) = match self.accept(req, &up, &mut event, first, started).await? {
            Step::Go(accepted) => accepted,
            Step::Done(outcome) => return Ok(outcome),
        };
        let accepted_ms = started.elapsed().as_millis() as u64;
        let (summary, report, superseded) = match self.validate(first, hint).await? {
            Pass::Read(summary, (report, superseded)) => (summary, report, superseded),
            Pass::Unreadable(reason) => {
                return self
                    .finish_failed(&up.store, event, up.replay, reason, None, &[], started)
                    .await
            }
        };
        let summary = match self.judge(summary, &superseded) {
            Ok(summary) => summary,
            Err((summary, reason)) => {
                return self
                    .finish_failed(
                        &up.store,
                        event,
                        up.replay,
                        reason,
                        Some(&summary),
                        &report,
                        started,
                    )
                    .await
            }
        };
        let validated_ms = started.elapsed().as_millis() as u64;
        let second = self.open(&up, "reopening the object").await?;
        self.produce(second, hint, &ctx, superseded, summary.rows_total)
            .await?;
        let steps = Steps {
            accepted_ms,
            validated_ms,
            produced_ms: started.elapsed().as_millis() as u64,
        };
        self.complete(&up, event, &summary, &report, started, steps)
            .await
    }

    /// Which object version the request means and who it is, or why there is nothing to do.
    async fn locate(&self, req: &UploadRequest) -> Result<Step<Located>, Retry> {
        let done = |o: Outcome| Ok(Step::Done(o));
        if !self.bucket_allowed(&req.bucket) {
            return done(Outcome::Refused(format!(
                "bucket {:?} is not one this ingest reads (--buckets)",
                req.bucket
            )));
        }
        let store = match self.stores.bucket(&req.bucket) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .fail_unreadable(req, format!("{e:#}"))
                    .await
                    .map(Step::Done)
            }
        };
        if let Err(reason) = crate::metadata::check_key(&req.key) {
            return self.fail_unreadable(req, reason).await.map(Step::Done);
        }
        // A replay reads an object in processed/ as the upload it was: the key it arrived under
        // gives its metadata, file id and record ids, and its version is the original's (from
        // the report the ingest wrote beside it, never from the request), so every sink finds
        // the same records again and duplicates nothing.
        let replay = req.trigger == Trigger::Replay;
        let source_key = if replay {
            match req.key.strip_prefix(&self.settings.processed_prefix) {
                Some(rest) => format!("{}{rest}", self.template.incoming_prefix),
                None => {
                    return done(Outcome::Skipped(format!(
                        "a replay reads only {}: {} is not under it",
                        self.settings.processed_prefix, req.key
                    )))
                }
            }
        } else {
            req.key.clone()
        };
        if !source_key.starts_with(&self.template.incoming_prefix) {
            return done(Outcome::Skipped(format!(
                "{} is not under {}",
                req.key, self.template.incoming_prefix
            )));
        }
        let path = match crate::store::object_path(&req.key) {
            Ok(p) => p,
            Err(reason) => return self.fail_unreadable(req, reason).await.map(Step::Done),
        };
        let head = match store.head(&path).await {
            Ok(h) => h,
            Err(object_store::Error::NotFound { .. }) => {
                return done(Outcome::Skipped(format!(
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
        let etag = version_tag(&head);
        let replay_of = if replay {
            match self.replay_version(&store, req, &source_key).await? {
                Ok(v) => Some(v),
                Err(why) => return done(Outcome::Refused(why)),
            }
        } else {
            None
        };
        // The upload's identity: a replay keeps the ETag it was first ingested with (a copy to
        // processed/ may have given the object another), so its file and record ids are the
        // same as then. Reads are still pinned to the object's current ETag.
        let identity_etag = replay_of
            .as_ref()
            .map_or_else(|| etag.clone(), |r| r.etag.clone());
        if !replay && req.etag.as_deref().is_some_and(|e| e != etag) {
            tracing::info!(bucket = %req.bucket, key = %req.key, "Object changed since the request; ingesting the current version.");
        }
        let fid = file_id(&req.bucket, &source_key, &identity_etag);
        if !replay {
            if let Some(reason) = self.abandoned_earlier(&store, &source_key, &fid).await? {
                return done(Outcome::Skipped(format!(
                    "{}/{} was given up on earlier ({reason}); upload it again to retry",
                    req.bucket, req.key
                )));
            }
        }
        let last_modified = replay_of
            .as_ref()
            .map_or(head.last_modified, |r| r.last_modified);
        Ok(Step::Go(Located {
            bucket: req.bucket.clone(),
            key: req.key.clone(),
            store,
            path,
            head,
            etag,
            identity_etag,
            source_key,
            fid,
            replay,
            last_modified,
        }))
    }

    /// Opens the located version (pinned by its ETag).
    async fn open(&self, up: &Located, what: &'static str) -> Result<GetResult, Retry> {
        let opts = GetOptions {
            if_match: Some(up.etag.clone()),
            ..GetOptions::default()
        };
        up.store
            .get_opts(&up.path, opts)
            .await
            .map_err(|e| Retry(anyhow::Error::new(e).context(what)))
    }

    /// Reads who uploaded the file (country from the bucket, store and day from the key or the
    /// object's metadata) and announces it as accepted; the file fails here when they cannot be
    /// read. Gives the records' shared fields, the compression hint and the opened object back.
    async fn accept(
        &self,
        req: &UploadRequest,
        up: &Located,
        event: &mut FileEvent,
        first: GetResult,
        started: Instant,
    ) -> Result<Step<(Arc<FileContext>, Option<Compression>, GetResult)>, Retry> {
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
        let meta = resolve(&self.template, &up.source_key, &user_meta);
        event.country = country.as_ref().ok().cloned();
        if let Ok(m) = &meta {
            event.store_id = Some(m.store_id.clone());
            event.store_category = Some(m.store_category);
            event.chain = m.chain.clone();
            event.business_date = Some(m.business_date);
        }
        self.emit_file_event(event).await?;
        let (country, meta) = match (country, meta) {
            (Ok(c), Ok(m)) => (c, m),
            (Err(e), _) | (_, Err(e)) => {
                drop(first);
                let failed = self
                    .finish_failed(&up.store, event.clone(), up.replay, e, None, &[], started)
                    .await?;
                return Ok(Step::Done(failed));
            }
        };
        let ctx = Arc::new(FileContext {
            file_id: up.fid.clone(),
            bucket: req.bucket.clone(),
            key: up.source_key.clone(),
            etag: up.identity_etag.clone(),
            last_modified: up.last_modified,
            country,
            meta,
            ingested_at: Utc::now(),
        });
        let hint = Compression::from_hint(&req.key, content_encoding.as_deref());
        Ok(Step::Go((ctx, hint, first)))
    }

    /// Whether the file as a whole passes the reject-ratio limit; `Err` with the reason when not.
    fn judge(
        &self,
        mut summary: ScanSummary,
        superseded: &Superseded,
    ) -> Result<ScanSummary, (ScanSummary, String)> {
        let ratio = summary.rows_rejected as f64 / summary.rows_total as f64;
        if ratio > self.settings.max_reject_ratio {
            let reason = format!(
                "{} of {} rows ({:.1}%) were rejected, above the {:.1}% limit; see the rejected rows",
                summary.rows_rejected,
                summary.rows_total,
                ratio * 100.0,
                self.settings.max_reject_ratio * 100.0
            );
            return Err((summary, reason));
        }
        if !superseded.is_empty() {
            summary.warnings.push(format!(
                "{} row(s) repeat the SKU and date of a later row and were rejected (duplicate_key)",
                superseded.len()
            ));
        }
        Ok(summary)
    }

    /// The rows are produced and acknowledged: writes the report beside the object, announces
    /// the file completed and moves it to `processed/` if it still holds the version ingested.
    async fn complete(
        &self,
        up: &Located,
        mut event: FileEvent,
        summary: &ScanSummary,
        report: &[ReportRow],
        started: Instant,
        steps: Steps,
    ) -> Result<Outcome, Retry> {
        let target = moved_key(
            &up.source_key,
            &self.template.incoming_prefix,
            &self.settings.processed_prefix,
        );
        event.status = FileStatus::Completed;
        fill_counts(&mut event, summary, started);
        event.moved_to = Some(target.clone());
        event.at = Utc::now();
        if !up.replay {
            self.write_report(&up.store, &event, &target, report, &summary.columns, None)
                .await?;
        }
        self.emit_file_event(&event).await?;
        if !up.replay
            && self
                .move_version(&up.store, &up.path, &up.etag, up.head.size, &target)
                .await?
                == Moved::Replaced
        {
            // The bytes ingested are gone from the bucket (overwritten); the newer upload stays
            // in incoming/ and its own request ingests it next.
            event.moved_to = None;
            event.warnings.push(
                "a newer upload replaced the object during the ingest; it is ingested next".into(),
            );
            event.at = Utc::now();
            self.emit_file_event(&event).await?;
            tracing::info!(file_id = %up.fid, bucket = %up.bucket, key = %up.key,
                "Object replaced during the ingest; left in place for its own ingest.");
        }
        tracing::info!(file_id = %up.fid, bucket = %up.bucket, key = %up.key, replay = up.replay, rows_valid = summary.rows_valid,
            rows_rejected = summary.rows_rejected, accepted_ms = steps.accepted_ms, validated_ms = steps.validated_ms,
            produced_ms = steps.produced_ms, elapsed_ms = started.elapsed().as_millis() as u64, "Ingested file.");
        Ok(Outcome::Completed(event))
    }

    /// The version a replay request may re-ingest: the one in the report the ingest wrote beside
    /// the object in `processed/`. `Ok(Err(why))`: the request is refused.
    async fn replay_version(
        &self,
        store: &Arc<dyn ObjectStore>,
        req: &UploadRequest,
        source_key: &str,
    ) -> Result<Result<ReplayOf, String>, Retry> {
        let report_key = report_key(&req.key, FileStatus::Completed);
        let report = match read_report(store, &report_key).await? {
            Some(r) => r,
            None => {
                return Ok(Err(format!(
                    "no ingest report {report_key} beside the object: only uploads this version of skuflow moved to {} can be replayed",
                    self.settings.processed_prefix
                )))
            }
        };
        let (Some(etag), Some(last_modified)) = (report.etag, report.last_modified) else {
            return Ok(Err(format!("{report_key} names no version")));
        };
        if report.bucket != req.bucket || report.key != source_key {
            return Ok(Err(format!(
                "{report_key} is the report of {}/{}, not of {}/{source_key}",
                report.bucket, report.key, req.bucket
            )));
        }
        if req.etag.as_ref().is_some_and(|e| *e != etag)
            || req.last_modified.is_some_and(|t| t != last_modified)
        {
            return Ok(Err(format!(
                "the request's version (ETag {:?}, last modified {:?}) is not the one ingested (ETag {etag}, last modified {last_modified})",
                req.etag, req.last_modified
            )));
        }
        Ok(Ok(ReplayOf {
            etag,
            last_modified,
        }))
    }

    /// The reason this version was given up on, when an earlier ingest abandoned it (its
    /// errors report names the same file id while the object is still in `incoming/`).
    async fn abandoned_earlier(
        &self,
        store: &Arc<dyn ObjectStore>,
        source_key: &str,
        fid: &str,
    ) -> Result<Option<String>, Retry> {
        let target = moved_key(
            source_key,
            &self.template.incoming_prefix,
            &self.settings.errors_prefix,
        );
        let report = read_report(store, &report_key(&target, FileStatus::Failed)).await?;
        Ok(report
            .filter(|r| r.file_id == fid && r.gave_up_after_attempts.is_some())
            .map(|r| r.reason.unwrap_or_default()))
    }

    /// First pass: counts, the rejected rows for the report, and the rows a later row of the
    /// same key supersedes.
    async fn validate(
        &self,
        object: GetResult,
        hint: Option<Compression>,
    ) -> Result<Pass<(Vec<ReportRow>, Superseded)>, Retry> {
        let cap = self.settings.report_cap;
        let pass = self
            .run_pass(object, hint, FirstPass::default(), move |ev, st| {
                match ev {
                    RowEvent::Rejected {
                        line,
                        raw,
                        raw_truncated,
                        reasons,
                    } => {
                        if st.report.len() < cap {
                            st.report.push(ReportRow {
                                line,
                                raw: String::from_utf8_lossy(raw).into_owned(),
                                raw_truncated,
                                reasons,
                            });
                        }
                    }
                    RowEvent::Valid { line, row, .. } => {
                        if let Some(earlier) = st.keys.observe(line, row.sku, row.business_date) {
                            if st.report.len() < cap {
                                st.report.push(ReportRow {
                                    line: earlier,
                                    raw: String::new(),
                                    raw_truncated: false,
                                    reasons: vec![dedup::reason(row.sku, row.business_date, line)],
                                });
                            }
                        }
                    }
                }
                Ok(())
            })
            .await?;
        Ok(match pass {
            Pass::Read(mut summary, st) => {
                let duplicates = st.keys.duplicates();
                summary.rows_valid -= duplicates;
                summary.rows_rejected += duplicates;
                let mut report = st.report;
                report.sort_by_key(|r| r.line);
                Pass::Read(summary, (report, st.keys.finish()))
            }
            Pass::Unreadable(reason) => Pass::Unreadable(reason),
        })
    }

    /// Second pass: produces every valid row, and every rejected or superseded one as a dead
    /// letter, then waits until the broker has acknowledged them all.
    async fn produce(
        &self,
        object: GetResult,
        hint: Option<Compression>,
        ctx: &Arc<FileContext>,
        superseded: Superseded,
        rows_total: u64,
    ) -> Result<(), Retry> {
        let progress = Arc::new(FileProgress::default());
        let trace = Arc::new(telemetry::trace_headers());
        let (records, topics, p, c, t) = (
            self.records.clone(),
            self.topics.clone(),
            progress.clone(),
            ctx.clone(),
            trace.clone(),
        );
        let encoder = RecordEncoder::new(ctx);
        let (mut buf, mut key) = (Vec::with_capacity(1024), Vec::with_capacity(128));
        let reject = move |line: u64,
                           raw: &[u8],
                           raw_truncated: bool,
                           reasons: Vec<RejectReason>,
                           buf: &mut Vec<u8>|
              -> anyhow::Result<()> {
            let rej = c.reject(line, raw, raw_truncated, reasons);
            buf.clear();
            serde_json::to_writer(&mut *buf, &rej)?;
            produce::send(
                &records,
                &p,
                &topics.rejects,
                c.file_id.as_bytes(),
                buf,
                skuflow_platform::kafka::message_headers(REJECT_SCHEMA, &c.file_id, &t),
            )?;
            Ok(())
        };
        let (records, topics, p, file_id) = (
            self.records.clone(),
            self.topics.clone(),
            progress.clone(),
            ctx.file_id.clone(),
        );
        let (bulk, mut sent) = (self.bulk.clone(), 0u64);
        let pass = self
            .run_pass(object, hint, (), move |ev, _| {
                sent += 1;
                if bulk.enters(sent) {
                    tracing::info!(file_id = %file_id, after_rows = bulk.after_rows(),
                        "Large upload: its further records go through the worker's bulk lane.");
                }
                let waited = bulk.pace(sent);
                if !waited.is_zero() {
                    skuflow_platform::metrics::metrics()
                        .bulk_lane_wait
                        .inc_by(waited.as_secs_f64());
                }
                match ev {
                    RowEvent::Valid {
                        line,
                        row,
                        raw,
                        raw_truncated,
                    } => {
                        if let Some(by) = superseded.by(line, row.sku, row.business_date) {
                            let reason = dedup::reason(row.sku, row.business_date, by);
                            return reject(line, raw, raw_truncated, vec![reason], &mut buf);
                        }
                        encoder.encode(line, &row, &mut key, &mut buf);
                        produce::send(
                            &records,
                            &p,
                            &topics.records,
                            &key,
                            &buf,
                            skuflow_platform::kafka::message_headers(
                                RECORD_SCHEMA,
                                &file_id,
                                &trace,
                            ),
                        )?;
                    }
                    RowEvent::Rejected {
                        line,
                        raw,
                        raw_truncated,
                        reasons,
                    } => reject(line, raw, raw_truncated, reasons, &mut buf)?,
                }
                Ok(())
            })
            .await?;
        let summary = match pass {
            Pass::Read(summary, ()) => summary,
            Pass::Unreadable(reason) => {
                return Err(Retry(anyhow::anyhow!(
                    "second pass differs from the first: {reason}"
                )))
            }
        };
        if summary.rows_total != rows_total {
            return Err(Retry(anyhow::anyhow!(
                "second pass read {} rows, the first {rows_total}",
                summary.rows_total
            )));
        }
        tokio::task::spawn_blocking(move || {
            produce::wait_settled(&progress, Duration::from_secs(600))
        })
        .await
        .map_err(|e| Retry(e.into()))?
        .map_err(|e| Retry(anyhow::anyhow!(e)))
    }

    /// Streams the object through decompression and the CSV scan on a blocking thread; `state`
    /// goes to every row's callback and comes back with the counts.
    ///
    /// An object in a local directory is read straight from its file on that thread: as a
    /// stream, object_store hands a file over in 8 KiB chunks, each read by a blocking task of
    /// its own (about 11,000 thread hand-offs per 100 MB and pass).
    async fn run_pass<S, F>(
        &self,
        object: GetResult,
        hint: Option<Compression>,
        mut state: S,
        mut on_row: F,
    ) -> Result<Pass<S>, Retry>
    where
        S: Send + 'static,
        F: FnMut(RowEvent<'_>, &mut S) -> anyhow::Result<()> + Send + 'static,
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
            let (input, _) = match reader::open(reader, hint, settings.read) {
                Ok(x) => x,
                Err(e) if reader::is_source_error(&e) => return Err(ScanError::Source(e)),
                Err(e) => return Err(ScanError::File(e.to_string())),
            };
            let s = scan(input, settings.limits, |ev| on_row(ev, &mut state))?;
            Ok((s, state))
        })
        .await
        .map_err(|e| Retry(e.into()))?;
        match res {
            Ok((summary, state)) => Ok(Pass::Read(summary, state)),
            Err(ScanError::File(reason)) => Ok(Pass::Unreadable(reason)),
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

    /// Writes the report of `event` beside the object's destination `moved_key`.
    async fn write_report(
        &self,
        store: &Arc<dyn ObjectStore>,
        event: &FileEvent,
        moved_key: &str,
        rows: &[ReportRow],
        columns: &[String],
        gave_up_after_attempts: Option<u32>,
    ) -> Result<(), Retry> {
        let body = FileReport {
            file_id: event.file_id.clone(),
            status: event.status,
            bucket: event.bucket.clone(),
            key: event.key.clone(),
            etag: event.etag.clone(),
            last_modified: event.last_modified,
            reason: event.reason.clone(),
            rows_total: event.rows_total,
            rows_valid: event.rows_valid,
            rows_rejected: event.rows_rejected,
            warnings: event.warnings.clone(),
            rejected_rows: rows.to_vec(),
            rejected_rows_cap: self.settings.report_cap,
            rejected_rows_truncated: event.rows_rejected.is_some_and(|n| n as usize > rows.len()),
            gave_up_after_attempts,
        };
        let json = serde_json::to_vec_pretty(&body).map_err(|e| Retry(e.into()))?;
        store
            .put(
                &retry_path(&report_key(moved_key, event.status))?,
                PutPayload::from(json),
            )
            .await
            .map_err(|e| Retry(anyhow::Error::new(e).context("writing the file's report")))?;
        // The rejects file of an earlier version of the same key must not outlive its report.
        let rejects = retry_path(&rejects_key(moved_key))?;
        let written = match rejects_csv(columns, rows) {
            Some(csv) => store.put(&rejects, PutPayload::from(csv)).await.map(|_| ()),
            None => match store.delete(&rejects).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            },
        };
        written.map_err(|e| Retry(anyhow::Error::new(e).context("writing the rejected rows")))
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
        event.status = FileStatus::Failed;
        if let Some(s) = summary {
            fill_counts(&mut event, s, started);
        }
        event.reason = Some(reason.clone());
        event.moved_to = target.clone();
        event.at = Utc::now();
        if let Some(target) = &target {
            let columns = summary.map(|s| s.columns.as_slice()).unwrap_or_default();
            self.write_report(store, &event, target, report, columns, None)
                .await?;
        }
        self.emit_file_event(&event).await?;
        if let (Some(target), Some(etag)) = (&target, &event.etag) {
            let size = event.size.unwrap_or(0);
            if self
                .move_version(store, &retry_path(&event.key)?, etag, size, target)
                .await?
                == Moved::Replaced
            {
                event.moved_to = None;
                event.at = Utc::now();
                self.emit_file_event(&event).await?;
            }
        }
        tracing::warn!(file_id = %event.file_id, bucket = %event.bucket, key = %event.key, replay, %reason, "File rejected as a whole.");
        Ok(Outcome::Failed(event))
    }

    /// Ends a file that failed to finish too many times: `failed` with the reason, the errors
    /// report written where the store allows it, and the object left where it is. A later
    /// request for the same version is skipped; a new upload is ingested as usual.
    pub async fn abandon(
        &self,
        req: &UploadRequest,
        attempts: u32,
        cause: &str,
    ) -> Result<FileEvent, Retry> {
        let reason = format!("gave up after {attempts} attempts: {cause}");
        let store = self.stores.bucket(&req.bucket).map_err(Retry)?;
        let path = retry_path(&req.key)?;
        let head = store.head(&path).await.ok();
        let etag = head
            .as_ref()
            .map(version_tag)
            .or_else(|| req.etag.clone())
            .unwrap_or_default();
        let fid = file_id(&req.bucket, &req.key, &etag);
        let mut event = FileEvent::new(&fid, FileStatus::Failed, &req.bucket, &req.key);
        event.etag = Some(etag);
        event.size = head.as_ref().map(|h| h.size);
        event.last_modified = head.as_ref().map(|h| h.last_modified);
        event.reason = Some(reason.clone());
        // The event first: a report without its event would make a redelivered request skip
        // the file before the event was ever sent.
        self.emit_file_event(&event).await?;
        if req.trigger != Trigger::Replay && req.key.starts_with(&self.template.incoming_prefix) {
            let target = moved_key(
                &req.key,
                &self.template.incoming_prefix,
                &self.settings.errors_prefix,
            );
            if let Err(e) = self
                .write_report(&store, &event, &target, &[], &[], Some(attempts))
                .await
            {
                tracing::warn!(file_id = %fid, bucket = %req.bucket, key = %req.key, cause = %e,
                    "Could not write the report of an abandoned file.");
            }
        }
        tracing::error!(file_id = %fid, bucket = %req.bucket, key = %req.key, attempts, %reason,
            "Gave up on a file; the partition moves on. The object stays where it is.");
        Ok(event)
    }

    /// Moves the version `etag` of the object at `from` to `to`, only if `from` still holds that
    /// version: checked before the copy and again before the delete. When it changed in
    /// between, the copy may hold the newer bytes and is removed; the newer upload stays.
    async fn move_version(
        &self,
        store: &Arc<dyn ObjectStore>,
        from: &Path,
        etag: &str,
        size: u64,
        to: &str,
    ) -> Result<Moved, Retry> {
        let to_path = retry_path(to)?;
        let what = || format!("moving the object to {to}");
        let holds = |h: Result<object_store::ObjectMeta, object_store::Error>| match h {
            Ok(m) => Ok(Some(version_tag(&m) == etag)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Retry(anyhow::Error::new(e).context(what()))),
        };
        match holds(store.head(from).await)? {
            Some(true) => {}
            Some(false) => return Ok(Moved::Replaced),
            // Moved by an earlier attempt of this ingest.
            None => return Ok(Moved::Done),
        }
        if size > self.settings.single_copy_max_bytes {
            streamed_copy(store, from, etag, &to_path)
                .await
                .map_err(|e| Retry(e.context(what())))?;
        } else {
            store
                .copy(from, &to_path)
                .await
                .map_err(|e| Retry(anyhow::Error::new(e).context(what())))?;
        }
        match holds(store.head(from).await)? {
            Some(true) => match store.delete(from).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Moved::Done),
                Err(e) => Err(Retry(anyhow::Error::new(e).context(what()))),
            },
            Some(false) => {
                store
                    .delete(&to_path)
                    .await
                    .map_err(|e| Retry(anyhow::Error::new(e).context(what())))?;
                Ok(Moved::Replaced)
            }
            None => Ok(Moved::Done),
        }
    }
}

/// Copies the version `etag` of `from` to `to` through this process, as a multipart upload:
/// for objects larger than one server-side copy may be.
async fn streamed_copy(
    store: &Arc<dyn ObjectStore>,
    from: &Path,
    etag: &str,
    to: &Path,
) -> anyhow::Result<()> {
    const PART: usize = 16 << 20;
    let got = store
        .get_opts(
            from,
            GetOptions {
                if_match: Some(etag.to_string()),
                ..GetOptions::default()
            },
        )
        .await?;
    let mut stream = got.into_stream();
    let upload = store.put_multipart(to).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e.into());
            }
        };
        writer.wait_for_capacity(2).await?;
        writer.write(&chunk);
    }
    writer.finish().await?;
    Ok(())
}

/// The report at `key`, if there is one (an unreadable one counts as none).
async fn read_report(store: &Arc<dyn ObjectStore>, key: &str) -> Result<Option<FileReport>, Retry> {
    let got = match store.get(&retry_path(key)?).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => {
            return Err(Retry(
                anyhow::Error::new(e).context(format!("reading {key}")),
            ))
        }
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| Retry(anyhow::Error::new(e).context(format!("reading {key}"))))?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::warn!(key, cause = %e, "A report beside an upload is not readable; ignoring it.");
            Ok(None)
        }
    }
}

/// The version of an object: its ETag, or its size and modification time where the store gives
/// none. The ingest pins its reads to it and moves only an object that still has it.
fn version_tag(meta: &object_store::ObjectMeta) -> String {
    meta.e_tag
        .clone()
        .unwrap_or_else(|| format!("{}-{}", meta.size, meta.last_modified.timestamp_micros()))
}

/// The store path of `key`, for keys already checked (a failure here is retried).
fn retry_path(key: &str) -> Result<Path, Retry> {
    crate::store::object_path(key).map_err(|e| Retry(anyhow::anyhow!(e)))
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
    kafka.with_defaults(
        kafka.producer_config(),
        &[
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
        ],
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csvstream::Limits;
    use crate::scan::{scan, RowEvent};

    /// Scans `csv`; returns the summary and the rejected rows as a report lists them.
    fn rejected(csv: &str) -> (ScanSummary, Vec<ReportRow>) {
        let mut rows = Vec::new();
        let summary = scan(csv.as_bytes(), Limits::default(), |ev| {
            if let RowEvent::Rejected {
                line,
                raw,
                raw_truncated,
                reasons,
            } = ev
            {
                rows.push(ReportRow {
                    line,
                    raw: String::from_utf8_lossy(raw).into_owned(),
                    raw_truncated,
                    reasons,
                });
            }
            Ok(())
        })
        .unwrap();
        (summary, rows)
    }

    #[test]
    fn a_fixed_rejects_file_is_accepted_as_an_upload() {
        let header = "sku,product_name,category,unit_price,currency,quantity_on_hand,units_sold,business_date";
        let upload = format!(
            "{header}\r\n\
             A1,\"Milk, 1L\",dairy,1.25,EUR,3,1,2026-11-20\r\n\
             B2,\"Bread \"\"rye\"\"\",bakery,abc,EUR,2,1,2026-11-20\r\n\
             C3,Tea,drinks,2.00,EUR,-4,1,2026-11-20\r\n"
        );
        let (summary, rows) = rejected(&upload);
        assert_eq!((summary.rows_valid, summary.rows_rejected), (1, 2));
        let mut superseded = rows[0].clone();
        superseded.raw.clear();
        let mut listed = rows.clone();
        listed.push(superseded);
        let csv = rejects_csv(&summary.columns, &listed).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "header and the two rejected rows: {csv}");
        assert_eq!(
            lines[0],
            format!("{header},{REJECTS_LINE_COLUMN},{REJECTS_ERRORS_COLUMN}")
        );
        assert!(lines[1].starts_with("B2,\"Bread \"\"rye\"\"\",bakery,abc,EUR,2,1,2026-11-20,3,\"unit_price (\"\"abc\"\")"), "{}", lines[1]);
        assert!(
            lines[2].starts_with(
                "C3,Tea,drinks,2.00,EUR,-4,1,2026-11-20,4,\"quantity_on_hand (\"\"-4\"\")"
            ),
            "{}",
            lines[2]
        );

        // The store fixes the values in a spreadsheet and uploads the file as it is.
        let fixed = csv.replace(",abc,", ",3.10,").replace(",-4,", ",4,");
        let (summary, rows) = rejected(&fixed);
        assert_eq!(
            (summary.rows_valid, summary.rows_rejected),
            (2, 0),
            "{rows:?}"
        );
        assert!(
            summary
                .warnings
                .iter()
                .any(|w| w.contains(REJECTS_ERRORS_COLUMN)),
            "{:?}",
            summary.warnings
        );
    }

    #[test]
    fn an_oversized_row_keeps_its_line_and_reason_only() {
        let rows = [ReportRow {
            line: 9,
            raw: "X,\"very long".into(),
            raw_truncated: true,
            reasons: vec![RejectReason {
                field: None,
                column: None,
                value: None,
                rule: "record_too_large".into(),
                message: "the record is larger than 65536 bytes".into(),
            }],
        }];
        let csv = rejects_csv(&["sku".into(), "product_name".into()], &rows).unwrap();
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            ",,9,the record is larger than 65536 bytes (the row is too large to repeat here: fix it in the uploaded file)"
        );
        assert_eq!(rejects_csv(&["sku".into()], &[]), None);
    }
}
