//! skuflow ingest: discovers uploads, streams and validates their CSV, and produces one record
//! per valid row to `sku.records.v1`, dead letters to `sku.rejects.v1` and the file lifecycle to
//! `sku.files.v1`.

pub mod api;
pub mod apikeys;
pub mod bulk;
pub mod codes;
pub mod contract;
pub mod csvstream;
pub mod dedup;
pub mod discovery;
pub mod events;
pub mod metadata;
pub mod produce;
pub mod reader;
pub mod record;
pub mod scan;
pub use skuflow_platform::buckets as store;
pub mod work;
pub mod worker;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use skuflow_platform::{KafkaArgs, TopicArgs};

use crate::metadata::{BucketCountries, KeyTemplate};
use crate::store::{StoreArgs, Stores};
use crate::worker::{IngestSettings, Ingestor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Scan buckets and ingest files.
    All,
    /// Only scan buckets and queue upload requests.
    Scan,
    /// Only ingest queued upload requests.
    Worker,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .ok_or_else(|| format!("`{s}` is not bucket=COUNTRY (e.g. legacy-uk=GB)"))
}

/// Bucket names to scan, and explicit bucket → country pairs.
type BucketList = (Vec<String>, Vec<(String, String)>);

/// Flags of `skuflow-ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// What this process does.
    #[arg(long = "mode", env = "SKUFLOW_INGEST_MODE", value_enum, default_value_t = Mode::All)]
    pub mode: Mode,
    /// Bucket name template; `{country}` is the lower-case ISO 3166-1 alpha-2 code.
    #[arg(
        long = "bucket-template",
        env = "SKUFLOW_BUCKET_TEMPLATE",
        default_value = "skus-{country}"
    )]
    pub bucket_template: String,
    /// Buckets to read, comma-separated; `bucket=CC` also sets a bucket's country. An allowlist
    /// for every trigger (scan, S3 events, HTTP API, queued requests); required with the S3
    /// backend. Default with the local backend: every bucket directory under --bucket-root.
    #[arg(long = "buckets", env = "SKUFLOW_BUCKETS", value_delimiter = ',')]
    pub buckets: Vec<String>,
    /// Key template; `[...]` is optional (the chain of retail_chain stores).
    #[arg(long = "key-template", env = "SKUFLOW_KEY_TEMPLATE", default_value = KeyTemplate::DEFAULT)]
    pub key_template: String,
    /// Topic of S3 event notifications (AWS S3 event JSON, e.g. from MinIO's Kafka target);
    /// when set, created objects are queued as they arrive.
    #[arg(long = "events-topic", env = "SKUFLOW_S3_EVENTS_TOPIC")]
    pub events_topic: Option<String>,
    /// Address of the HTTP API (`POST /v1/uploads`, `GET /v1/uploads/{file_id}`), e.g.
    /// `0.0.0.0:8080`; off when not set. Needs --api-keys-file.
    #[arg(long = "http-listen", env = "SKUFLOW_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// The HTTP API's keys: a JSON file of SHA-256 hashes of bearer tokens, each scoped to
    /// buckets and a key prefix (`skuflow api-key new` makes one). Read again when it changes.
    #[arg(long = "api-keys-file", env = "SKUFLOW_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Seconds between bucket scans.
    #[arg(
        long = "scan-interval-secs",
        env = "SKUFLOW_SCAN_INTERVAL_SECS",
        default_value_t = 10
    )]
    pub scan_interval_secs: u64,
    /// Uploads one worker ingests at once, so a large upload does not hold back the small ones
    /// queued behind it. Default: four per core (an upload mostly waits for the broker), no more
    /// than the container's memory limit holds at the worst case per upload (about 113 MiB with
    /// the default limits: the zstd window and 48 bytes per row of --max-rows-per-file), at most
    /// 16.
    #[arg(long = "concurrency", env = "SKUFLOW_INGEST_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Messages of one upload produced at full speed; past them, the upload is large and its
    /// messages go through the bulk lane (--bulk-records-per-sec).
    #[arg(
        long = "bulk-after-rows",
        env = "SKUFLOW_BULK_AFTER_ROWS",
        default_value_t = 100_000
    )]
    pub bulk_after_rows: u64,
    /// Messages per second that all of a worker's large uploads together may produce past their
    /// first --bulk-after-rows, so that the broker and the sinks keep room for the small uploads
    /// that land meanwhile (every sink reads a partition in order: a small file's records wait
    /// behind what a large upload produced before them). 0: large uploads are not held back.
    #[arg(
        long = "bulk-records-per-sec",
        env = "SKUFLOW_BULK_RECORDS_PER_SEC",
        default_value_t = 0
    )]
    pub bulk_records_per_sec: u64,
    /// Seconds before the scan queues an object again that is still in the incoming prefix; it
    /// does only when the object's request is final on the work queue (never while the request
    /// waits or its upload is being ingested).
    #[arg(long = "requeue-after-secs", env = "SKUFLOW_REQUEUE_AFTER_SECS", default_value_t = discovery::REQUEUE_AFTER.as_secs())]
    pub requeue_after_secs: u64,
    /// Consumer group of the ingest workers.
    #[arg(
        long = "group",
        env = "SKUFLOW_INGEST_GROUP",
        default_value = "skuflow-ingest"
    )]
    pub group: String,
    /// A file fails as a whole when more than this share of its rows is rejected (0.0-1.0).
    #[arg(
        long = "max-reject-ratio",
        env = "SKUFLOW_MAX_REJECT_RATIO",
        default_value_t = 0.5
    )]
    pub max_reject_ratio: f64,
    /// Largest object accepted, in bytes as stored (compressed or not); a larger upload fails
    /// as a whole with a report naming this limit.
    #[arg(long = "max-object-bytes", env = "SKUFLOW_MAX_OBJECT_BYTES", default_value_t = 4 << 30)]
    pub max_object_bytes: u64,
    /// Largest decompressed size of one upload, in bytes (guards against compression bombs).
    #[arg(long = "max-decompressed-bytes", env = "SKUFLOW_MAX_DECOMPRESSED_BYTES", default_value_t = 8 << 30)]
    pub max_decompressed_bytes: u64,
    /// Largest zstd window a compressed upload may ask for, as a power of two (24: 16 MiB; the
    /// decoder allocates the window, so this bounds a worker's memory). zstd levels up to 19
    /// without --long stay within 2^23.
    #[arg(long = "max-zstd-window-log", env = "SKUFLOW_MAX_ZSTD_WINDOW_LOG", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(10..=31))]
    pub max_zstd_window_log: u32,
    /// Most data rows in one upload. Memory for spotting a SKU repeated within a file grows
    /// with its rows (about 40 bytes a row), so this bounds a worker's memory.
    #[arg(
        long = "max-rows-per-file",
        env = "SKUFLOW_MAX_ROWS_PER_FILE",
        default_value_t = 2_000_000
    )]
    pub max_rows_per_file: u64,
    /// Largest CSV record, in bytes; longer records are rejected.
    #[arg(long = "max-record-bytes", env = "SKUFLOW_MAX_RECORD_BYTES", default_value_t = 64 * 1024)]
    pub max_record_bytes: usize,
    /// Earliest business date a row may carry (YYYY-MM-DD); earlier rows are rejected.
    #[arg(long = "earliest-business-date", env = "SKUFLOW_EARLIEST_BUSINESS_DATE", default_value_t = csvstream::EARLIEST_DATE)]
    pub earliest_business_date: chrono::NaiveDate,
    /// Latest business date a row may carry, in days after today; later rows are rejected.
    #[arg(
        long = "max-days-ahead",
        env = "SKUFLOW_MAX_DAYS_AHEAD",
        default_value_t = 31
    )]
    pub max_days_ahead: u32,
    /// Attempts at one upload before giving up on it: it ends `failed` with the reason, its
    /// report is written where possible and the work queue moves on.
    #[arg(long = "max-attempts", env = "SKUFLOW_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Objects above this size are moved by a streamed multipart upload instead of one
    /// server-side copy (S3 copies at most 5 GiB at once).
    #[arg(long = "single-copy-max-bytes", env = "SKUFLOW_SINGLE_COPY_MAX_BYTES", default_value_t = worker::S3_SINGLE_COPY_MAX, hide = true)]
    pub single_copy_max_bytes: u64,
    /// Rejected rows listed in an upload's report and its `.rejects.csv`; the report says when
    /// there were more.
    #[arg(
        long = "report-max-rows",
        env = "SKUFLOW_REPORT_MAX_ROWS",
        default_value_t = 1000
    )]
    pub report_max_rows: usize,
}

impl IngestArgs {
    /// Explicit `bucket=CC` pairs and plain bucket names.
    fn bucket_list(&self) -> Result<BucketList, String> {
        let mut names = Vec::new();
        let mut pairs = Vec::new();
        for b in self
            .buckets
            .iter()
            .map(|b| b.trim())
            .filter(|b| !b.is_empty())
        {
            if b.contains('=') {
                let p = parse_pair(b)?;
                names.push(p.0.clone());
                pairs.push(p);
            } else {
                names.push(b.to_string());
            }
        }
        Ok((names, pairs))
    }

    /// Checks the flags and builds the ingestor.
    pub fn build(
        &self,
        kafka: &KafkaArgs,
        topics: &TopicArgs,
    ) -> anyhow::Result<(Ingestor, Vec<String>)> {
        if !(0.0..=1.0).contains(&self.max_reject_ratio) {
            anyhow::bail!(
                "--max-reject-ratio must be between 0.0 and 1.0, got {}",
                self.max_reject_ratio
            );
        }
        let (names, pairs) = self
            .bucket_list()
            .map_err(anyhow::Error::msg)
            .context("--buckets")?;
        let countries = BucketCountries::new(&self.bucket_template, &pairs)
            .map_err(anyhow::Error::msg)
            .context("--bucket-template / --buckets")?;
        let template = KeyTemplate::parse(&self.key_template)
            .map_err(anyhow::Error::msg)
            .context("--key-template")?;
        if template.incoming_prefix.is_empty() {
            anyhow::bail!("--key-template must start with a literal prefix such as incoming/");
        }
        if names.is_empty() && self.store.backend == store::Backend::S3 {
            anyhow::bail!(
                "--buckets is required with --object-store=s3: list the buckets this ingest may read \
                 (e.g. --buckets skus-de,skus-fr); it is the allowlist of every trigger"
            );
        }
        if self.http_listen.is_some() && self.api_keys_file.is_none() {
            anyhow::bail!(
                "--http-listen needs --api-keys-file: the API queues uploads from your buckets, so \
                 every caller needs a key (make one with `skuflow api-key new`)"
            );
        }
        let (records, control) = worker::producers(kafka, topics)?;
        let mut settings = IngestSettings {
            max_reject_ratio: self.max_reject_ratio,
            max_object_bytes: self.max_object_bytes,
            read: reader::ReadLimits {
                max_decompressed: self.max_decompressed_bytes,
                zstd_window_log_max: self.max_zstd_window_log,
            },
            single_copy_max_bytes: self.single_copy_max_bytes.min(worker::S3_SINGLE_COPY_MAX),
            report_cap: self.report_max_rows,
            bulk_after_rows: self.bulk_after_rows,
            bulk_records_per_sec: self.bulk_records_per_sec,
            ..IngestSettings::default()
        };
        settings.limits.max_record_bytes = self.max_record_bytes.max(1024);
        settings.limits.max_rows = self.max_rows_per_file;
        settings.limits.earliest_date = self.earliest_business_date;
        settings.limits.max_days_ahead = self.max_days_ahead;
        Ok((
            Ingestor {
                stores: Stores::new(self.store.clone()),
                buckets: names.clone(),
                countries,
                template,
                topics: topics.clone(),
                bulk: std::sync::Arc::new(bulk::BulkLane::new(
                    settings.bulk_after_rows,
                    settings.bulk_records_per_sec,
                )),
                settings,
                records,
                control,
            },
            names,
        ))
    }
}

/// Runs scanning and/or ingesting until `shutdown`.
pub async fn run(
    args: &IngestArgs,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (ingestor, buckets) = args.build(kafka, topics)?;
    let ingestor = std::sync::Arc::new(ingestor);
    let mut tasks = tokio::task::JoinSet::new();
    if matches!(args.mode, Mode::All | Mode::Scan) {
        let (i, s, b) = (ingestor.clone(), shutdown.clone(), buckets.clone());
        let every = Duration::from_secs(args.scan_interval_secs.max(1));
        let seen = discovery::Seen::new(
            Some((kafka, &args.group)),
            &ingestor.topics.uploads,
            Duration::from_secs(args.requeue_after_secs.max(1)),
        )?;
        tasks.spawn(async move { discovery::scan_loop(&i, &b, every, seen, s).await });
    }
    if let Some(topic) = args.events_topic.clone() {
        let (i, s, k, g) = (
            ingestor.clone(),
            shutdown.clone(),
            kafka.clone(),
            format!("{}-events", args.group),
        );
        tasks.spawn(async move { events::event_loop(&i, &k, &topic, &g, s).await });
    }
    if let Some(addr) = args.http_listen {
        let keys = match &args.api_keys_file {
            Some(path) => apikeys::ApiKeys::load(path).context("--api-keys-file")?,
            None => anyhow::bail!("--http-listen needs --api-keys-file"),
        };
        let (i, s, k) = (ingestor.clone(), shutdown.clone(), kafka.clone());
        tasks.spawn(async move { api::serve(i, keys, k, addr, s).await });
    }
    if matches!(args.mode, Mode::All | Mode::Worker) {
        let (i, s, k, g) = (
            ingestor.clone(),
            shutdown.clone(),
            kafka.clone(),
            args.group.clone(),
        );
        let attempts = args.max_attempts;
        let concurrency = work::concurrency(args.concurrency, &ingestor.settings);
        tasks.spawn(async move { work::work_loop(i, &k, &g, attempts, concurrency, s).await });
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.context("ingest task panicked").and_then(|r| r);
        if r.is_err() {
            shutdown.cancel();
            if result.is_ok() {
                result = r;
            }
        }
    }
    result
}
