//! The upload history and the rejected rows in Elasticsearch, beside the facts, for analysts in
//! Kibana: `sku.files.v1` into `<prefix>-files` (one document per upload with its latest
//! lifecycle state, one per late-upload notice) under the alias `skus-files`, and
//! `sku.rejects.v1` into the monthly `<prefix>-rejects-YYYY.MM` under `skus-rejects`. Each is its
//! own consumer group on the shared consume loop, run by the indexer beside its records, with the
//! same `_bulk` client: externally versioned documents, so a redelivered batch is answered 409
//! and changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::{json, Value};
use skuflow_platform::backoff::AtMostEvery;
use skuflow_platform::consume::{Consumed, Refusal, Sink, SinkError, Topic};
use skuflow_schemas::elasticsearch as es;
use skuflow_schemas::{FileEvent, RejectMessage};

use crate::bulk;
use crate::sink::Bulk;

/// The raw text kept of a rejected row, in bytes; longer rows are cut (`raw_truncated`), as in
/// PostgreSQL.
pub const RAW_BYTES: usize = 8 * 1024;

/// Where the documents go.
#[derive(Debug, Clone)]
pub struct QualityLayout {
    /// `<prefix>-files`, `<prefix>-rejects-YYYY.MM`.
    pub prefix: String,
    pub files_alias: String,
    pub rejects_alias: String,
}

/// A message kept as one document of its own index.
pub trait QualityDoc: Topic + Send + Sync + 'static {
    /// The sink's name (dead-letter stage, metrics).
    const NAME: &'static str;
    /// The template's name and body.
    fn template(layout: &QualityLayout) -> (String, Value);
    /// The document: its index, `_id`, external version and source.
    fn document(&self, layout: &QualityLayout) -> (String, String, i64, Value);
    /// The pattern of the monthly indices (`<…>-YYYY.MM`) a retention applies to, if any.
    fn monthly(layout: &QualityLayout) -> Option<String> {
        let _ = layout;
        None
    }
    /// The stage of a dead letter.
    fn stage(&self) -> Option<&str> {
        None
    }
}

/// Microseconds since the epoch, never negative (an external version must be ≥ 0).
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros().max(0)
}

/// `v` without its null fields (an absent field reads the same in a query, and is smaller).
fn without_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    v
}

impl QualityDoc for FileEvent {
    const NAME: &'static str = "search-files";

    fn template(layout: &QualityLayout) -> (String, Value) {
        (
            es::files_index(&layout.prefix),
            es::files_template(&layout.prefix, &layout.files_alias),
        )
    }

    /// One document per upload (`_id` its file id) at the version of its event's time: the
    /// newest event wins whatever order they arrive in. A late-upload notice has its own id.
    fn document(&self, layout: &QualityLayout) -> (String, String, i64, Value) {
        let mut source = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = source.as_object_mut() {
            o.remove("schema");
        }
        (
            es::files_index(&layout.prefix),
            self.file_id.clone(),
            micros(self.at),
            without_nulls(source),
        )
    }
}

impl QualityDoc for RejectMessage {
    const NAME: &'static str = "search-rejects";

    fn template(layout: &QualityLayout) -> (String, Value) {
        (
            format!("{}-rejects", layout.prefix),
            es::rejects_template(&layout.prefix, &layout.rejects_alias),
        )
    }

    fn monthly(layout: &QualityLayout) -> Option<String> {
        Some(es::rejects_index(&layout.prefix, "*"))
    }

    fn stage(&self) -> Option<&str> {
        Some(&self.stage)
    }

    /// One document per rejected row and stage (`_id`: file, stage, line and a digest of the
    /// reasons, the key of `skuflow.rejects` in PostgreSQL) in the index of the month it was
    /// rejected; a repeat of the same dead letter is the same document.
    fn document(&self, layout: &QualityLayout) -> (String, String, i64, Value) {
        let reasons = serde_json::to_value(&self.reasons).unwrap_or(Value::Array(Vec::new()));
        let first = self.reasons.first();
        let raw = skuflow_platform::text::prefix_within(&self.raw, RAW_BYTES);
        let mut rules: Vec<&str> = self.reasons.iter().map(|r| r.rule.as_str()).collect();
        rules.dedup();
        let fields: Vec<&str> = self
            .reasons
            .iter()
            .filter_map(|r| r.field.as_deref())
            .collect();
        let source = json!({
            "country": self.country,
            "file_id": self.file_id,
            "stage": self.stage,
            "bucket": self.bucket,
            "key": self.key,
            "line": i64::try_from(self.line).unwrap_or(i64::MAX),
            "record_id": self.record_id,
            "field": first.and_then(|r| r.field.as_deref()),
            "column": first.and_then(|r| r.column),
            "value": first.and_then(|r| r.value.as_deref()),
            "rule": first.map_or("unknown", |r| r.rule.as_str()),
            "message": first.map_or("", |r| r.message.as_str()),
            "rules": rules,
            "fields": fields,
            "reasons": reasons,
            "raw": raw,
            "raw_truncated": self.raw_truncated || raw.len() < self.raw.len(),
            "rejected_at": self.rejected_at,
        });
        let id = format!(
            "{}:{}:{}:{}",
            self.file_id,
            self.stage,
            self.line,
            reasons_digest(&self.reasons)
        );
        let month = format!(
            "{:04}.{:02}",
            self.rejected_at.year(),
            self.rejected_at.month()
        );
        (
            es::rejects_index(&layout.prefix, &month),
            id,
            0,
            without_nulls(source),
        )
    }
}

/// 16 hex digits of SHA-256 over the reasons' JSON: tells apart two dead letters of one line and
/// stage (a record refused by two routes).
fn reasons_digest(reasons: &[skuflow_schemas::RejectReason]) -> String {
    use sha2::Digest;
    let text = serde_json::to_string(reasons).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// The sink of one of the two topics.
pub struct QualitySink<M> {
    bulk: Bulk,
    layout: QualityLayout,
    template_put: bool,
    /// Rejected rows: monthly indices whose month ended more than this many days ago are
    /// deleted (0 keeps them).
    retention_days: u32,
    purges: AtMostEvery,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M: QualityDoc> QualitySink<M> {
    pub fn new(bulk: Bulk, layout: QualityLayout, retention_days: u32) -> Self {
        QualitySink {
            bulk,
            layout,
            template_put: false,
            retention_days,
            purges: AtMostEvery::new(Duration::from_secs(3600)),
            _message: std::marker::PhantomData,
        }
    }

    async fn put_template(&mut self) -> Result<(), SinkError> {
        if !self.template_put {
            let (name, template) = M::template(&self.layout);
            self.bulk.put_template(&name, &template).await?;
            self.template_put = true;
        }
        Ok(())
    }

    /// Deletes the monthly indices past the retention, at most once an hour.
    async fn purge(&mut self) {
        let Some(pattern) = M::monthly(&self.layout) else {
            return;
        };
        if self.retention_days == 0 || !self.purges.due() {
            return;
        }
        let cut = Utc::now().date_naive() - chrono::Days::new(self.retention_days.into());
        match self.expired(&pattern, cut).await {
            Ok(expired) => {
                for index in expired {
                    match self.bulk.delete_index(&index).await {
                        Ok(()) => tracing::info!(%index, days = self.retention_days,
                            "Rejected rows past their retention deleted (their month's index)."),
                        Err(e) => tracing::warn!(%index, cause = %e,
                            "Deleting an index of rejected rows past their retention failed; trying again in an hour."),
                    }
                }
            }
            Err(e) => tracing::warn!(cause = %e,
                "Listing the indices of rejected rows failed; trying again in an hour."),
        }
    }

    /// The indices matching `pattern` whose month ended before `cut`.
    async fn expired(&self, pattern: &str, cut: NaiveDate) -> Result<Vec<String>, SinkError> {
        let prefix = pattern.trim_end_matches('*');
        Ok(self
            .bulk
            .list_indices(pattern)
            .await?
            .into_iter()
            .filter(|index| {
                index
                    .strip_prefix(prefix)
                    .and_then(month_end)
                    .is_some_and(|end| end < cut)
            })
            .collect())
    }
}

/// The last day of month `YYYY.MM`.
fn month_end(month: &str) -> Option<NaiveDate> {
    let (y, m) = month.split_once('.')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    let first = NaiveDate::from_ymd_opt(y, m, 1)?;
    first.checked_add_months(chrono::Months::new(1))?.pred_opt()
}

#[async_trait]
impl<M: QualityDoc> Sink for QualitySink<M> {
    type Message = M;

    fn name(&self) -> &'static str {
        M::NAME
    }

    async fn ping(&mut self) -> Result<(), SinkError> {
        self.bulk.ping().await
    }

    async fn write(
        &mut self,
        _topic: &str,
        batch: &[Consumed<M>],
        _offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        self.put_template().await?;
        let layout = &self.layout;
        let refused = self
            .bulk
            .index(batch, |c, out| {
                let (index, id, version, source) = c.value.document(layout);
                bulk::encode_action(&index, &id, version, out)?;
                serde_json::to_writer(&mut *out, &source)?;
                out.push(b'\n');
                Ok(())
            })
            .await?;
        // A rejected row's document refused again would come back as a dead letter of itself:
        // the second time it is logged, not sent round again.
        let refused = refused
            .into_iter()
            .filter(|r| {
                let again = QualityDoc::stage(&batch[r.index].value) == Some(M::NAME);
                if again {
                    tracing::error!(rule = %r.rule, message = %r.message,
                        "Elasticsearch refused the document of a dead letter of this indexer; it stays on the topic and in PostgreSQL.");
                }
                !again
            })
            .collect();
        self.purge().await;
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skuflow_schemas::{FileStatus, RejectReason};

    fn layout() -> QualityLayout {
        QualityLayout {
            prefix: "skuflow".into(),
            files_alias: "skus-files".into(),
            rejects_alias: "skus-rejects".into(),
        }
    }

    #[test]
    fn an_upload_is_one_document_versioned_by_its_event_time() {
        let mut e = FileEvent::new("f1", FileStatus::Completed, "skus-de", "incoming/x.csv");
        e.rows_valid = Some(2);
        e.at = "2026-11-21T08:00:00.000123Z".parse().unwrap();
        let (index, id, version, source) = e.document(&layout());
        assert_eq!((index.as_str(), id.as_str()), ("skuflow-files", "f1"));
        assert_eq!(version, 1_795_248_000_000_123);
        assert_eq!(source["status"], "completed");
        assert_eq!(source["rows_valid"], 2);
        assert!(source.get("schema").is_none() && source.get("etag").is_none());
        let props =
            &es::files_template("skuflow", "skus-files")["template"]["mappings"]["properties"];
        for field in source.as_object().unwrap().keys() {
            assert!(props.get(field).is_some(), "{field} is not mapped");
        }
    }

    #[test]
    fn a_rejected_row_goes_to_its_months_index_cut_and_keyed_like_postgresql() {
        let reason = |rule: &str, field: &str| RejectReason {
            field: Some(field.into()),
            column: Some(4),
            value: Some("abc".into()),
            rule: rule.into(),
            message: "not a decimal".into(),
        };
        let m = RejectMessage {
            schema: skuflow_schemas::REJECT_SCHEMA.into(),
            stage: "ingest".into(),
            file_id: "f1".into(),
            bucket: "skus-de".into(),
            key: "incoming/x.csv".into(),
            country: None,
            line: 3,
            raw: "é".repeat(5000),
            raw_truncated: false,
            record_id: None,
            reasons: vec![reason("decimal", "unit_price"), reason("required", "sku")],
            rejected_at: "2026-02-28T23:59:59Z".parse().unwrap(),
        };
        let (index, id, version, source) = m.document(&layout());
        assert_eq!(index, "skuflow-rejects-2026.02");
        assert!(id.starts_with("f1:ingest:3:") && id.len() == "f1:ingest:3:".len() + 16);
        assert_eq!(version, 0);
        assert_eq!(
            (&source["rule"], &source["field"]),
            (&"decimal".into(), &"unit_price".into())
        );
        assert_eq!(source["rules"], json!(["decimal", "required"]));
        assert_eq!(source["fields"], json!(["unit_price", "sku"]));
        assert_eq!(source["raw_truncated"], true);
        assert!(source["raw"].as_str().unwrap().len() <= RAW_BYTES);
        assert!(source.get("country").is_none(), "unknown country left out");
        let mut again = m.clone();
        again.rejected_at = m.rejected_at;
        assert_eq!(
            again.document(&layout()).1,
            id,
            "a repeat is the same document"
        );
        let props =
            &es::rejects_template("skuflow", "skus-rejects")["template"]["mappings"]["properties"];
        for field in source.as_object().unwrap().keys() {
            assert!(props.get(field).is_some(), "{field} is not mapped");
        }
    }

    #[test]
    fn months_end_on_their_last_day() {
        assert_eq!(month_end("2026.02"), NaiveDate::from_ymd_opt(2026, 2, 28));
        assert_eq!(month_end("2024.12"), NaiveDate::from_ymd_opt(2024, 12, 31));
        assert_eq!(month_end("2024.13"), None);
        assert_eq!(month_end("monthly"), None);
    }
}
