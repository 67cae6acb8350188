//! The upload history and the rejected rows in PostgreSQL, for analysts: `sku.files.v1` into
//! `skuflow.files` (one row per upload, its latest lifecycle state) and `skuflow.late_uploads`,
//! `sku.rejects.v1` into `skuflow.rejects` (one row per rejected row or refused record). Each is
//! its own consumer group on the shared consume loop, run by the warehouse loader beside its fact
//! sink, with its offsets in the same transaction as its rows: loaded exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::Client;

use skuflow_platform::backoff::AtMostEvery;
use skuflow_platform::pg::{self, classify, valid_country};
use skuflow_platform::{Consumed, Refusal, Sink, SinkError};
use skuflow_schemas::{FileEvent, FileStatus, RejectMessage, StoreCategory};

use crate::migrations::{self, FILES_TABLE, LATE_TABLE, OFFSETS_TABLE, REJECTS_TABLE};

/// The raw text kept of a rejected row, in bytes; longer rows are cut (`raw_truncated`).
pub const RAW_BYTES: usize = 8 * 1024;
/// Country of rejected rows whose country is unknown (a file refused before it was resolved).
const UNKNOWN_COUNTRY: &str = "--";

fn category(c: Option<StoreCategory>) -> Option<String> {
    c.map(|c| match c {
        StoreCategory::Individual => "individual".to_string(),
        StoreCategory::RetailChain => "retail_chain".to_string(),
    })
}

/// Text PostgreSQL takes: no NUL characters.
fn clean(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// `s` cut to at most `max` bytes on a character boundary, and whether it was cut.
fn capped(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (clean(s), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (clean(&s[..end]), true)
}

/// `skuflow.files` and `skuflow.late_uploads` from the file lifecycle.
pub struct FilesSink {
    conn: pg::SinkConnection,
    group: String,
    upsert: String,
    late: String,
}

impl FilesSink {
    pub fn new(url: &str, group: &str) -> Self {
        const COLS: &[(&str, &str)] = &[
            ("file_id", "text"),
            ("status", "text"),
            ("bucket", "text"),
            ("key", "text"),
            ("etag", "text"),
            ("size", "bigint"),
            ("country", "text"),
            ("store_id", "text"),
            ("store_category", "text"),
            ("chain", "text"),
            ("business_date", "date"),
            ("last_modified", "timestamptz"),
            ("rows_total", "bigint"),
            ("rows_valid", "bigint"),
            ("rows_rejected", "bigint"),
            ("bytes", "bigint"),
            ("duration_ms", "bigint"),
            ("reason", "text"),
            ("warnings", "text"),
            ("moved_to", "text"),
            ("accepted_at", "timestamptz"),
            ("finished_at", "timestamptz"),
            ("updated_at", "timestamptz"),
        ];
        let names: Vec<&str> = COLS.iter().map(|(n, _)| *n).collect();
        let arrays: Vec<String> = COLS
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("${}::{t}[]", i + 1))
            .collect();
        let select: Vec<String> = names
            .iter()
            .map(|n| match *n {
                "warnings" => "ARRAY(SELECT jsonb_array_elements_text(u.warnings::jsonb))".into(),
                n => format!("u.{n}"),
            })
            .collect();
        let updates: Vec<String> = names
            .iter()
            .filter(|n| **n != "file_id")
            .map(|n| match *n {
                // A final event keeps the time its upload was accepted; a new acceptance (a
                // replay) starts the upload again.
                "accepted_at" => format!(
                    "accepted_at = coalesce(EXCLUDED.accepted_at, {FILES_TABLE}.accepted_at)"
                ),
                n => format!("{n} = EXCLUDED.{n}"),
            })
            .collect();
        FilesSink {
            conn: pg::SinkConnection::new(url, migrations::all(), String::new()),
            group: group.to_string(),
            upsert: format!(
                "INSERT INTO {FILES_TABLE} ({cols}) SELECT {select} FROM unnest({arrays}) AS u({cols}) \
                 ON CONFLICT (file_id) DO UPDATE SET {updates} WHERE {FILES_TABLE}.updated_at <= EXCLUDED.updated_at",
                cols = names.join(", "),
                select = select.join(", "),
                arrays = arrays.join(", "),
                updates = updates.join(", "),
            ),
            late: format!(
                "INSERT INTO {LATE_TABLE} (event_id, country, store_id, store_category, chain, missed_day, last_upload, late_at, reason) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::timestamptz[], $8::timestamptz[], $9::text[]) \
                 ON CONFLICT (event_id) DO NOTHING"
            ),
        }
    }

    pub async fn connect(&mut self) -> Result<&mut Client, SinkError> {
        Ok(self.conn.open().await?.0)
    }

    async fn write_tx(
        &mut self,
        topic: &str,
        batch: &[Consumed<FileEvent>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), tokio_postgres::Error> {
        // The newest event per upload (an upsert touches a row once per statement), with the
        // time its acceptance was seen in the batch.
        let mut latest: BTreeMap<&str, (&FileEvent, Option<DateTime<Utc>>)> = BTreeMap::new();
        let mut lates: Vec<&FileEvent> = Vec::new();
        for ev in batch.iter().map(|c| &c.value) {
            if ev.status == FileStatus::Late {
                lates.push(ev);
                continue;
            }
            let accepted = (ev.status == FileStatus::Accepted).then_some(ev.at);
            let e = latest.entry(ev.file_id.as_str()).or_insert((ev, None));
            e.1 = match (e.1, accepted) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if ev.at >= e.0.at {
                e.0 = ev;
            }
        }
        let rows: Vec<(&FileEvent, Option<DateTime<Utc>>)> = latest.into_values().collect();
        let text = |f: &dyn Fn(&FileEvent) -> Option<String>| -> Vec<Option<String>> {
            rows.iter().map(|(e, _)| f(e).map(|s| clean(&s))).collect()
        };
        let long = |f: &dyn Fn(&FileEvent) -> Option<u64>| -> Vec<Option<i64>> {
            rows.iter()
                .map(|(e, _)| f(e).map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
                .collect()
        };
        let file_id = text(&|e| Some(e.file_id.clone()));
        let status = text(&|e| Some(format!("{:?}", e.status).to_lowercase()));
        let bucket = text(&|e| Some(e.bucket.clone()));
        let key = text(&|e| Some(e.key.clone()));
        let etag = text(&|e| e.etag.clone());
        let size = long(&|e| e.size);
        let country = text(&|e| e.country.clone());
        let store_id = text(&|e| e.store_id.clone());
        let store_category = text(&|e| category(e.store_category));
        let chain = text(&|e| e.chain.clone());
        let business_date: Vec<Option<NaiveDate>> =
            rows.iter().map(|(e, _)| e.business_date).collect();
        let last_modified: Vec<Option<DateTime<Utc>>> =
            rows.iter().map(|(e, _)| e.last_modified).collect();
        let rows_total = long(&|e| e.rows_total);
        let rows_valid = long(&|e| e.rows_valid);
        let rows_rejected = long(&|e| e.rows_rejected);
        let bytes = long(&|e| e.bytes);
        let duration_ms = long(&|e| e.duration_ms);
        let reason = text(&|e| e.reason.clone());
        let warnings = text(&|e| serde_json::to_string(&e.warnings).ok());
        let moved_to = text(&|e| e.moved_to.clone());
        let accepted_at: Vec<Option<DateTime<Utc>>> = rows.iter().map(|(_, a)| *a).collect();
        let finished_at: Vec<Option<DateTime<Utc>>> = rows
            .iter()
            .map(|(e, _)| (e.status != FileStatus::Accepted).then_some(e.at))
            .collect();
        let updated_at: Vec<DateTime<Utc>> = rows.iter().map(|(e, _)| e.at).collect();

        let late_text = |f: &dyn Fn(&FileEvent) -> Option<String>| -> Vec<Option<String>> {
            lates.iter().map(|e| f(e).map(|s| clean(&s))).collect()
        };
        let late_id = late_text(&|e| Some(e.file_id.clone()));
        let late_country = late_text(&|e| e.country.clone());
        let late_store = late_text(&|e| e.store_id.clone());
        let late_category = late_text(&|e| category(e.store_category));
        let late_chain = late_text(&|e| e.chain.clone());
        let late_day: Vec<Option<NaiveDate>> = lates.iter().map(|e| e.business_date).collect();
        let late_last: Vec<Option<DateTime<Utc>>> = lates.iter().map(|e| e.last_modified).collect();
        let late_at: Vec<DateTime<Utc>> = lates.iter().map(|e| e.at).collect();
        let late_reason = late_text(&|e| e.reason.clone());

        let (upsert, late, group) = (&self.upsert, &self.late, &self.group);
        let tx = self.conn.client().transaction().await?;
        if !rows.is_empty() {
            tx.execute(
                upsert.as_str(),
                &[
                    &file_id,
                    &status,
                    &bucket,
                    &key,
                    &etag,
                    &size,
                    &country,
                    &store_id,
                    &store_category,
                    &chain,
                    &business_date,
                    &last_modified,
                    &rows_total,
                    &rows_valid,
                    &rows_rejected,
                    &bytes,
                    &duration_ms,
                    &reason,
                    &warnings,
                    &moved_to,
                    &accepted_at,
                    &finished_at,
                    &updated_at,
                ],
            )
            .await?;
        }
        if !lates.is_empty() {
            tx.execute(
                late.as_str(),
                &[
                    &late_id,
                    &late_country,
                    &late_store,
                    &late_category,
                    &late_chain,
                    &late_day,
                    &late_last,
                    &late_at,
                    &late_reason,
                ],
            )
            .await?;
        }
        pg::store_offsets(&tx, OFFSETS_TABLE, group, topic, offsets).await?;
        tx.commit().await
    }
}

#[async_trait]
impl Sink for FilesSink {
    type Message = FileEvent;

    fn name(&self) -> &'static str {
        "warehouse-files"
    }

    async fn write(
        &mut self,
        topic: &str,
        batch: &[Consumed<FileEvent>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        self.connect().await?;
        let written = self.write_tx(topic, batch, offsets).await;
        failed(&mut self.conn, written, "loading file events").map(|()| Vec::new())
    }

    async fn ping(&mut self) -> Result<(), SinkError> {
        self.connect().await?;
        self.conn.ping().await
    }

    async fn durable_offsets(
        &mut self,
        topic: &str,
        _partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, SinkError> {
        self.connect().await?;
        let group = &self.group;
        self.conn.durable_offsets(OFFSETS_TABLE, group, topic).await
    }
}

/// `Err` classified, after dropping a connection a retriable error may have left broken.
fn failed(
    conn: &mut pg::SinkConnection,
    result: Result<(), tokio_postgres::Error>,
    what: &str,
) -> Result<(), SinkError> {
    result.map_err(|e| {
        if pg::is_retriable(&e) {
            conn.reset();
        }
        classify(e, what)
    })
}

/// `skuflow.rejects` from the dead-letter topic. It refuses nothing (a refusal would be a dead
/// letter on the topic it reads): text PostgreSQL cannot hold is mended, and a row too long is
/// cut.
pub struct RejectsSink {
    conn: pg::SinkConnection,
    group: String,
    partitions: HashSet<String>,
    insert: String,
    retention_days: u32,
    purges: AtMostEvery,
}

impl RejectsSink {
    pub fn new(url: &str, group: &str, retention_days: u32) -> Self {
        RejectsSink {
            conn: pg::SinkConnection::new(url, migrations::all(), String::new()),
            group: group.to_string(),
            partitions: HashSet::new(),
            insert: format!(
                "INSERT INTO {REJECTS_TABLE} (country, file_id, stage, line, reasons_digest, bucket, key, record_id, field, rule, message, reasons, raw, raw_truncated, rejected_at) \
                 SELECT u.country, u.file_id, u.stage, u.line, u.reasons_digest, u.bucket, u.key, u.record_id, u.field, u.rule, u.message, u.reasons::jsonb, u.raw, u.raw_truncated, u.rejected_at \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bool[], $15::timestamptz[]) \
                 AS u(country, file_id, stage, line, reasons_digest, bucket, key, record_id, field, rule, message, reasons, raw, raw_truncated, rejected_at) \
                 ON CONFLICT DO NOTHING"
            ),
            retention_days,
            purges: AtMostEvery::new(Duration::from_secs(3600)),
        }
    }

    pub async fn connect(&mut self) -> Result<&mut Client, SinkError> {
        let (client, fresh) = self.conn.open().await?;
        if fresh {
            self.partitions.clear();
        }
        Ok(client)
    }

    /// Deletes the rows older than the retention, at most once an hour.
    async fn purge(&mut self) {
        if self.retention_days == 0 || !self.purges.due() {
            return;
        }
        let sql = format!(
            "DELETE FROM {REJECTS_TABLE} WHERE rejected_at < now() - make_interval(days => $1)"
        );
        let days = self.retention_days as i32;
        match self.conn.client().execute(sql.as_str(), &[&days]).await {
            Ok(n) if n > 0 => {
                tracing::info!(
                    rows = n,
                    days,
                    "Rejected rows past their retention deleted."
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %pg::describe(&e), "Deleting rejected rows past their retention failed; trying again in an hour.")
            }
        }
    }

    async fn write_tx(
        &mut self,
        topic: &str,
        batch: &[Consumed<RejectMessage>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut c = RejectColumns::default();
        for m in batch.iter().map(|c| &c.value) {
            let reasons = serde_json::to_string(&m.reasons).unwrap_or_else(|_| "[]".into());
            let first = m.reasons.first();
            let (raw, cut) = capped(&m.raw, RAW_BYTES);
            c.country.push(reject_country(m).to_string());
            c.file_id.push(clean(&m.file_id));
            c.stage.push(clean(&m.stage));
            c.line.push(i64::try_from(m.line).unwrap_or(i64::MAX));
            c.digest.push(digest(&reasons));
            c.bucket.push(clean(&m.bucket));
            c.key.push(clean(&m.key));
            c.record_id.push(m.record_id.as_deref().map(clean));
            c.field
                .push(first.and_then(|r| r.field.as_deref()).map(clean));
            c.rule
                .push(first.map_or_else(|| "unknown".into(), |r| clean(&r.rule)));
            c.message
                .push(first.map_or_else(String::new, |r| clean(&r.message)));
            c.reasons.push(clean(&reasons));
            c.raw.push(raw);
            c.raw_truncated.push(m.raw_truncated || cut);
            c.rejected_at.push(m.rejected_at);
        }
        let (insert, group) = (&self.insert, &self.group);
        let tx = self.conn.client().transaction().await?;
        if !batch.is_empty() {
            tx.execute(
                insert.as_str(),
                &[
                    &c.country,
                    &c.file_id,
                    &c.stage,
                    &c.line,
                    &c.digest,
                    &c.bucket,
                    &c.key,
                    &c.record_id,
                    &c.field,
                    &c.rule,
                    &c.message,
                    &c.reasons,
                    &c.raw,
                    &c.raw_truncated,
                    &c.rejected_at,
                ],
            )
            .await?;
        }
        pg::store_offsets(&tx, OFFSETS_TABLE, group, topic, offsets).await?;
        tx.commit().await
    }
}

/// The columns of a batch of dead letters, one array each for `unnest`.
#[derive(Default)]
struct RejectColumns {
    country: Vec<String>,
    file_id: Vec<String>,
    stage: Vec<String>,
    line: Vec<i64>,
    digest: Vec<String>,
    bucket: Vec<String>,
    key: Vec<String>,
    record_id: Vec<Option<String>>,
    field: Vec<Option<String>>,
    rule: Vec<String>,
    message: Vec<String>,
    reasons: Vec<String>,
    raw: Vec<String>,
    raw_truncated: Vec<bool>,
    rejected_at: Vec<DateTime<Utc>>,
}

/// The partition a dead letter goes to: its country, or `--` when it has none.
fn reject_country(m: &RejectMessage) -> &str {
    m.country
        .as_deref()
        .filter(|c| valid_country(c))
        .unwrap_or(UNKNOWN_COUNTRY)
}

/// 16 hex digits of SHA-256 over the reasons: tells apart two dead letters of one line and
/// stage (a record refused by two routes), and makes a repeated one the same row.
fn digest(reasons: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(reasons.as_bytes())[..8])
}

#[async_trait]
impl Sink for RejectsSink {
    type Message = RejectMessage;

    fn name(&self) -> &'static str {
        "warehouse-rejects"
    }

    async fn write(
        &mut self,
        topic: &str,
        batch: &[Consumed<RejectMessage>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        let countries: HashSet<&str> = batch
            .iter()
            .map(|c| reject_country(&c.value))
            .filter(|c| *c != UNKNOWN_COUNTRY)
            .collect();
        let missing: Vec<&str> = countries
            .into_iter()
            .filter(|c| !self.partitions.contains(*c))
            .collect();
        if !missing.is_empty() {
            let client = self.connect().await?;
            crate::sink::ensure_country_partitions(client, REJECTS_TABLE, &missing).await?;
            self.partitions
                .extend(missing.iter().map(|c| c.to_string()));
        }
        self.connect().await?;
        let written = self.write_tx(topic, batch, offsets).await;
        failed(&mut self.conn, written, "loading rejected rows")?;
        self.purge().await;
        Ok(Vec::new())
    }

    async fn ping(&mut self) -> Result<(), SinkError> {
        self.connect().await?;
        self.conn.ping().await
    }

    async fn durable_offsets(
        &mut self,
        topic: &str,
        _partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, SinkError> {
        self.connect().await?;
        let group = &self.group;
        self.conn.durable_offsets(OFFSETS_TABLE, group, topic).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_mended_and_cut_on_a_character_boundary() {
        assert_eq!(clean("a\0b"), "a\u{FFFD}b");
        let (s, cut) = capped("ääää", 5);
        assert_eq!((s.as_str(), cut), ("ää", true));
        let (s, cut) = capped("abc", 5);
        assert_eq!((s.as_str(), cut), ("abc", false));
    }
}
