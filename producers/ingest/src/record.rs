//! What the rows of one file share, and writing a valid row as its `sku-record/v1` message.
//!
//! Every record of a file repeats the file's metadata (country, store, file id, source object,
//! timestamps). [`RecordEncoder`] serializes those parts once per file and writes each row's own
//! fields between them, straight from the borrowed CSV fields: the bytes are exactly those
//! `serde_json` writes for the equivalent [`SkuRecord`] (tested below), without building one.

use std::io::Write as _;

use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use skuflow_schemas::{RejectMessage, RejectReason, SkuRecord, RECORD_SCHEMA, REJECT_SCHEMA};

use crate::contract::ValidRow;
use crate::metadata::KeyMetadata;

/// Hex of the first 16 bytes of SHA-256 over the parts, separated by NUL.
pub fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Everything the rows of one file share.
pub(crate) struct FileContext {
    pub(crate) file_id: String,
    pub(crate) bucket: String,
    pub(crate) key: String,
    pub(crate) etag: String,
    pub(crate) last_modified: DateTime<Utc>,
    pub(crate) country: String,
    pub(crate) meta: KeyMetadata,
    pub(crate) ingested_at: DateTime<Utc>,
}

impl FileContext {
    /// The deterministic id of the record from line `line` (the encoder computes the same from
    /// a hash state it keeps).
    #[cfg(test)]
    fn record_id(&self, line: u64) -> String {
        short_hash(&[
            self.bucket.as_bytes(),
            self.key.as_bytes(),
            self.etag.as_bytes(),
            line.to_string().as_bytes(),
        ])
    }

    /// The record of a valid row as a value: what the encoder's bytes must deserialize to.
    #[cfg(test)]
    fn record(&self, line: u64, row: &ValidRow<'_>) -> SkuRecord {
        SkuRecord {
            schema: RECORD_SCHEMA.to_string(),
            record_id: self.record_id(line),
            record_version: SkuRecord::version_of(self.last_modified, line),
            country: self.country.clone(),
            store_id: self.meta.store_id.clone(),
            store_category: self.meta.store_category,
            chain: self.meta.chain.clone(),
            sku: row.sku.to_string(),
            product_name: row.product_name.to_string(),
            category: row.category.to_string(),
            brand: row.brand.map(str::to_string),
            unit_price: row.unit_price,
            unit_cost: row.unit_cost,
            currency: row.currency.to_string(),
            quantity_on_hand: row.quantity_on_hand,
            units_sold: row.units_sold,
            business_date: row.business_date,
            barcode: row.barcode.map(str::to_string),
            file_id: self.file_id.clone(),
            source_bucket: self.bucket.clone(),
            source_key: self.key.clone(),
            source_etag: self.etag.clone(),
            source_line: line as i64,
            source_last_modified: self.last_modified,
            ingested_at: self.ingested_at,
        }
    }

    pub(crate) fn reject(
        &self,
        line: u64,
        raw: &[u8],
        raw_truncated: bool,
        reasons: Vec<RejectReason>,
    ) -> RejectMessage {
        RejectMessage {
            schema: REJECT_SCHEMA.to_string(),
            stage: "ingest".into(),
            file_id: self.file_id.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            country: Some(self.country.clone()),
            line,
            raw: String::from_utf8_lossy(raw).into_owned(),
            raw_truncated,
            record_id: None,
            reasons,
            rejected_at: Utc::now(),
        }
    }
}

/// Appends `value` as serde_json writes it. Writing into a `Vec` cannot fail, and every value
/// written here (strings, numbers, decimals, enums) serializes.
fn json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("writing JSON into memory");
}

/// Appends `,"name":<value>`.
fn field(out: &mut Vec<u8>, name: &str, value: &(impl Serialize + ?Sized)) {
    out.push(b',');
    json(out, name);
    out.push(b':');
    json(out, value);
}

/// Writes the records of one file: the parts every record repeats are serialized once.
pub(crate) struct RecordEncoder {
    /// `{"schema":…,"record_id":` — the id and `,"record_version":<n>` follow.
    head: Vec<u8>,
    /// `,"country":…,"sku":` — the row's own fields follow.
    file_meta: Vec<u8>,
    /// `,"file_id":…,"source_line":` — the line follows.
    source: Vec<u8>,
    /// `,"source_last_modified":…,"ingested_at":…}`.
    tail: Vec<u8>,
    /// SHA-256 state after the bucket, key and ETag of the record id (see `record_id`).
    id_prefix: Sha256,
    /// `country:store_id:` of the message key.
    key_prefix: String,
    last_modified: DateTime<Utc>,
}

impl RecordEncoder {
    pub(crate) fn new(ctx: &FileContext) -> Self {
        let mut head = br#"{"schema":"#.to_vec();
        json(&mut head, RECORD_SCHEMA);
        head.extend_from_slice(br#","record_id":"#);
        let mut file_meta = Vec::new();
        field(&mut file_meta, "country", &ctx.country);
        field(&mut file_meta, "store_id", &ctx.meta.store_id);
        field(&mut file_meta, "store_category", &ctx.meta.store_category);
        field(&mut file_meta, "chain", &ctx.meta.chain);
        file_meta.extend_from_slice(br#","sku":"#);
        let mut source = Vec::new();
        field(&mut source, "file_id", &ctx.file_id);
        field(&mut source, "source_bucket", &ctx.bucket);
        field(&mut source, "source_key", &ctx.key);
        field(&mut source, "source_etag", &ctx.etag);
        source.extend_from_slice(br#","source_line":"#);
        let mut tail = Vec::new();
        field(&mut tail, "source_last_modified", &ctx.last_modified);
        field(&mut tail, "ingested_at", &ctx.ingested_at);
        tail.push(b'}');
        let mut id_prefix = Sha256::new();
        for p in [&ctx.bucket, &ctx.key, &ctx.etag] {
            id_prefix.update(p.as_bytes());
            id_prefix.update([0u8]);
        }
        RecordEncoder {
            head,
            file_meta,
            source,
            tail,
            id_prefix,
            key_prefix: format!("{}:{}:", ctx.country, ctx.meta.store_id),
            last_modified: ctx.last_modified,
        }
    }

    /// Writes the message key (`country:store_id:sku`) and the JSON record of `row` from line
    /// `line` into `key` and `out` (both cleared first).
    pub(crate) fn encode(
        &self,
        line: u64,
        row: &ValidRow<'_>,
        key: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        key.clear();
        key.extend_from_slice(self.key_prefix.as_bytes());
        key.extend_from_slice(row.sku.as_bytes());

        out.clear();
        out.extend_from_slice(&self.head);
        let mut id = self.id_prefix.clone();
        let mut digits = itoa::Buffer::new();
        id.update(digits.format(line).as_bytes());
        id.update([0u8]);
        let mut hex = [0u8; 32];
        hex::encode_to_slice(&id.finalize()[..16], &mut hex).expect("32 hex digits for 16 bytes");
        out.push(b'"');
        out.extend_from_slice(&hex);
        out.extend_from_slice(br#"","record_version":"#);
        out.extend_from_slice(
            digits
                .format(SkuRecord::version_of(self.last_modified, line))
                .as_bytes(),
        );
        out.extend_from_slice(&self.file_meta);
        json(out, row.sku);
        out.extend_from_slice(br#","product_name":"#);
        json(out, row.product_name);
        out.extend_from_slice(br#","category":"#);
        json(out, row.category);
        out.extend_from_slice(br#","brand":"#);
        json(out, &row.brand);
        out.extend_from_slice(br#","unit_price":"#);
        json(out, &row.unit_price);
        out.extend_from_slice(br#","unit_cost":"#);
        json(out, &row.unit_cost);
        out.extend_from_slice(br#","currency":"#);
        json(out, row.currency);
        out.extend_from_slice(br#","quantity_on_hand":"#);
        out.extend_from_slice(digits.format(row.quantity_on_hand).as_bytes());
        out.extend_from_slice(br#","units_sold":"#);
        out.extend_from_slice(digits.format(row.units_sold).as_bytes());
        out.extend_from_slice(br#","business_date":"#);
        write_date(out, row.business_date);
        out.extend_from_slice(br#","barcode":"#);
        json(out, &row.barcode);
        out.extend_from_slice(&self.source);
        out.extend_from_slice(digits.format(line as i64).as_bytes());
        out.extend_from_slice(&self.tail);
    }
}

/// `"YYYY-MM-DD"` as chrono serializes a date of years 0–9999; other years through chrono.
fn write_date(out: &mut Vec<u8>, d: NaiveDate) {
    let y = d.year();
    if (0..=9999).contains(&y) {
        let _ = write!(out, "\"{y:04}-{:02}-{:02}\"", d.month(), d.day());
    } else {
        json(out, &d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use skuflow_schemas::StoreCategory;

    fn ctx(chain: Option<&str>, key: &str) -> FileContext {
        FileContext {
            file_id: "f1d".into(),
            bucket: "skus-de".into(),
            key: key.into(),
            etag: "\"9b2cf535f27731c974343645a3985328\"".into(),
            last_modified: "2026-11-06T10:15:30.123456Z".parse().unwrap(),
            country: "DE".into(),
            meta: KeyMetadata {
                store_category: if chain.is_some() {
                    StoreCategory::RetailChain
                } else {
                    StoreCategory::Individual
                },
                chain: chain.map(str::to_string),
                store_id: "berlin-01".into(),
                business_date: NaiveDate::from_ymd_opt(2026, 11, 6).unwrap(),
                file_name: "skus.csv".into(),
            },
            ingested_at: "2026-11-06T10:16:00Z".parse().unwrap(),
        }
    }

    fn row<'a>(name: &'a str, brand: Option<&'a str>, date: NaiveDate) -> ValidRow<'a> {
        ValidRow {
            sku: "SKU-1_a.b",
            product_name: name,
            category: "Home & Garden",
            brand,
            unit_price: "1234.5000".parse().unwrap(),
            unit_cost: brand.map(|_| Decimal::ZERO),
            currency: "EUR",
            quantity_on_hand: 0,
            units_sold: i32::MAX,
            business_date: date,
            barcode: brand.map(|_| "4006381333931"),
        }
    }

    /// The encoder's bytes are serde_json's for the same record, whatever the text holds.
    #[test]
    fn encoder_writes_what_serde_writes() {
        let names = [
            "plain",
            "quote \" backslash \\ slash /",
            "tab\tnew\nline\r",
            "ünïcödé — 商品 🚀",
            "",
        ];
        let dates = [
            NaiveDate::from_ymd_opt(2026, 11, 6).unwrap(),
            NaiveDate::from_ymd_opt(1, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(9999, 12, 31).unwrap(),
            NaiveDate::from_ymd_opt(-44, 3, 15).unwrap(),
            NaiveDate::from_ymd_opt(12345, 6, 7).unwrap(),
        ];
        let (mut key, mut out) = (Vec::new(), Vec::new());
        for c in [
            ctx(None, "incoming/individual/berlin-01/2026-11-06/skus.csv"),
            ctx(
                Some("ikea"),
                "incoming/retail_chain/ikea/berlin-01/2026-11-06/a \"b\".csv",
            ),
        ] {
            let enc = RecordEncoder::new(&c);
            for (i, name) in names.iter().enumerate() {
                for (j, date) in dates.iter().enumerate() {
                    let brand = (j % 2 == 0).then_some("Brand \"X\"");
                    let r = row(name, brand, *date);
                    for line in [2u64, 10, 99_999, u64::from(u32::MAX) + 7] {
                        let line = line + i as u64;
                        enc.encode(line, &r, &mut key, &mut out);
                        let want = c.record(line, &r);
                        assert_eq!(
                            String::from_utf8(out.clone()).unwrap(),
                            serde_json::to_string(&want).unwrap()
                        );
                        assert_eq!(key, want.kafka_key().into_bytes());
                        let back: SkuRecord = serde_json::from_slice(&out).unwrap();
                        assert_eq!(back, want);
                    }
                }
            }
        }
    }
}
