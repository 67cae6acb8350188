//! The Rust types of the four message kinds.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub const RECORD_SCHEMA: &str = "sku-record/v1";
pub const UPLOAD_SCHEMA: &str = "sku-upload/v1";
pub const REJECT_SCHEMA: &str = "sku-reject/v1";
pub const FILE_SCHEMA: &str = "sku-file/v1";

/// Whether a store trades alone or belongs to a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreCategory {
    Individual,
    RetailChain,
}

impl StoreCategory {
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreCategory::Individual => "individual",
            StoreCategory::RetailChain => "retail_chain",
        }
    }

    /// Parses `individual` or `retail_chain` (case-insensitive, `-` accepted for `_`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "individual" => Some(StoreCategory::Individual),
            "retail_chain" => Some(StoreCategory::RetailChain),
            _ => None,
        }
    }
}

/// `sku-record/v1`: one valid row. Field order and names follow `sku-record.schema.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkuRecord {
    pub schema: String,
    pub record_id: String,
    pub record_version: i64,
    pub country: String,
    pub store_id: String,
    pub store_category: StoreCategory,
    pub chain: Option<String>,
    pub sku: String,
    pub product_name: String,
    pub category: String,
    pub brand: Option<String>,
    pub unit_price: Decimal,
    pub unit_cost: Option<Decimal>,
    pub currency: String,
    pub quantity_on_hand: i32,
    pub units_sold: i32,
    #[serde(deserialize_with = "crate::wire_time::date")]
    pub business_date: NaiveDate,
    pub barcode: Option<String>,
    pub file_id: String,
    pub source_bucket: String,
    pub source_key: String,
    pub source_etag: String,
    pub source_line: i64,
    #[serde(deserialize_with = "crate::wire_time::timestamp")]
    pub source_last_modified: DateTime<Utc>,
    #[serde(deserialize_with = "crate::wire_time::timestamp")]
    pub ingested_at: DateTime<Utc>,
}

impl SkuRecord {
    /// The Kafka message key: `country:store_id:sku`.
    pub fn kafka_key(&self) -> String {
        format!("{}:{}:{}", self.country, self.store_id, self.sku)
    }

    /// Version ordering of one natural key: the upload's last-modified second in the high 32
    /// bits and the line in the low 32 bits. A later upload wins; within one file a later line
    /// wins.
    pub fn version_of(last_modified: DateTime<Utc>, line: u64) -> i64 {
        let secs = last_modified.timestamp().clamp(0, i64::from(i32::MAX));
        (secs << 32) | (line.min(u64::from(u32::MAX)) as i64)
    }
}

/// What started an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Scan,
    Event,
    Api,
    Replay,
}

/// `sku-upload/v1`: one object to ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    pub schema: String,
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    pub trigger: Trigger,
    pub requested_at: DateTime<Utc>,
    /// For a replay: the last-modified time of the upload as first ingested (its records'
    /// version), which a move to `processed/` may have changed on the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<DateTime<Utc>>,
}

impl UploadRequest {
    pub fn new(
        bucket: &str,
        key: &str,
        etag: Option<String>,
        size: Option<u64>,
        trigger: Trigger,
    ) -> Self {
        UploadRequest {
            schema: UPLOAD_SCHEMA.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag,
            size,
            trigger,
            requested_at: Utc::now(),
            last_modified: None,
        }
    }

    /// The Kafka message key: `bucket/key`, so one object's requests stay in order.
    pub fn kafka_key(&self) -> String {
        format!("{}/{}", self.bucket, self.key)
    }
}

/// One reason a row (or record) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectReason {
    /// The contract field, when the reason is about one.
    pub field: Option<String>,
    /// 1-based column of the field in the file, when known.
    #[serde(default)]
    pub column: Option<u32>,
    /// The offending value (capped), when there is one.
    #[serde(default)]
    pub value: Option<String>,
    /// A stable rule name, e.g. `required`, `decimal_places`, `gtin_check_digit`.
    pub rule: String,
    /// A sentence for people.
    pub message: String,
}

/// `sku-reject/v1`: a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectMessage {
    pub schema: String,
    pub stage: String,
    pub file_id: String,
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub country: Option<String>,
    pub line: u64,
    pub raw: String,
    #[serde(default)]
    pub raw_truncated: bool,
    #[serde(default)]
    pub record_id: Option<String>,
    pub reasons: Vec<RejectReason>,
    pub rejected_at: DateTime<Utc>,
}

/// Lifecycle state of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    #[default]
    Accepted,
    Completed,
    Failed,
    /// Not an upload: a store that uploads daily has not uploaded by its usual time and the
    /// grace after it (the notifier's late-upload watch). `file_id` names the store and the day
    /// (`late-…`), `key` the store's last upload, `last_modified` when that was, `reason` when
    /// the next one was expected. Readers of uploads skip these.
    Late,
}

/// `sku-file/v1`: a file lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileEvent {
    pub schema: String,
    pub file_id: String,
    pub status: FileStatus,
    pub bucket: String,
    pub key: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub store_id: Option<String>,
    #[serde(default)]
    pub store_category: Option<StoreCategory>,
    #[serde(default)]
    pub chain: Option<String>,
    #[serde(default)]
    pub business_date: Option<NaiveDate>,
    #[serde(default)]
    pub last_modified: Option<DateTime<Utc>>,
    #[serde(default)]
    pub rows_total: Option<u64>,
    #[serde(default)]
    pub rows_valid: Option<u64>,
    #[serde(default)]
    pub rows_rejected: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub moved_to: Option<String>,
    pub at: DateTime<Utc>,
}

impl FileEvent {
    pub fn new(file_id: &str, status: FileStatus, bucket: &str, key: &str) -> Self {
        FileEvent {
            schema: FILE_SCHEMA.to_string(),
            file_id: file_id.to_string(),
            status,
            bucket: bucket.to_string(),
            key: key.to_string(),
            at: Utc::now(),
            ..FileEvent::default()
        }
    }
}

/// The machine-readable report written beside every final upload: `<key>.report.json` in
/// `processed/`, `<key>.errors.json` in `errors/`. The one in `processed/` also tells a replay
/// which version the object is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReport {
    pub file_id: String,
    pub status: FileStatus,
    pub bucket: String,
    /// The key the object was uploaded under.
    pub key: String,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub rows_total: Option<u64>,
    pub rows_valid: Option<u64>,
    pub rows_rejected: Option<u64>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Rejected rows, in line order, at most `rejected_rows_cap` of them.
    pub rejected_rows: Vec<ReportRow>,
    pub rejected_rows_cap: usize,
    pub rejected_rows_truncated: bool,
    /// Set when the ingest gave up on this version after that many attempts: a later request
    /// for the same version is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up_after_attempts: Option<u32>,
}

/// One rejected row in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRow {
    pub line: u64,
    /// The row as uploaded (empty for a row superseded by a later one: see its reason).
    pub raw: String,
    /// Set when the row was larger than the copy kept of it: `raw` is its beginning only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw_truncated: bool,
    pub reasons: Vec<RejectReason>,
}

/// The report key of an object moved to `moved_key`.
pub fn report_key(moved_key: &str, status: FileStatus) -> String {
    match status {
        FileStatus::Failed => format!("{moved_key}.errors.json"),
        _ => format!("{moved_key}.report.json"),
    }
}

/// The key of the rejected rows' CSV beside an object moved to `moved_key`.
pub fn rejects_key(moved_key: &str) -> String {
    format!("{moved_key}.rejects.csv")
}

/// Extra columns of a rejects file: not in the contract, so ignored when the fixed file is
/// uploaded again.
pub const REJECTS_LINE_COLUMN: &str = "skuflow_line";
pub const REJECTS_ERRORS_COLUMN: &str = "skuflow_errors";
