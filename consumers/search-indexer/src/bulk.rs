//! The `_bulk` wire format: NDJSON request bodies bounded by documents and bytes, and the
//! per-item outcomes read from every response.
//!
//! Each record becomes an `index` action with `_id` = its natural key and external versioning
//! (`version` = the record version: the upload's last-modified second and line), so a replayed
//! older file can never overwrite a newer document, and a redelivered batch answers 409 for what
//! is already there, which counts as done.

use serde::Deserialize;
use skuflow_schemas::SkuRecord;

/// Where a batch goes: index `<prefix>-<cc>` per country.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: String,
}

impl Layout {
    pub fn index_of(&self, country: &str) -> String {
        format!("{}-{}", self.prefix, country.to_ascii_lowercase())
    }
}

/// The document `_id`: the natural key (country, store, SKU, business date). Printable, well
/// under Elasticsearch's 512-byte limit (SKU ≤ 64 chars, store id ≤ 128).
pub fn document_id(r: &SkuRecord) -> String {
    format!("{}:{}:{}:{}", r.country, r.store_id, r.sku, r.business_date)
}

/// Bounds of one bulk request.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_docs: usize,
    pub max_bytes: usize,
}

/// One `_bulk` request body and, per action in order, the index of its record in the batch.
#[derive(Debug, Clone, Default)]
pub struct BulkRequest {
    pub body: Vec<u8>,
    pub items: Vec<usize>,
}

/// Appends an `index` action line for `_id` `id` in `index` at external version `version`.
pub fn encode_action(
    index: &str,
    id: &str,
    version: i64,
    out: &mut Vec<u8>,
) -> serde_json::Result<()> {
    #[derive(serde::Serialize)]
    struct Meta<'a> {
        _index: &'a str,
        _id: &'a str,
        version: i64,
        version_type: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Action<'a> {
        index: Meta<'a>,
    }
    serde_json::to_writer(
        &mut *out,
        &Action {
            index: Meta {
                _index: index,
                _id: id,
                version,
                version_type: "external",
            },
        },
    )?;
    out.push(b'\n');
    Ok(())
}

/// Appends the action and source lines of `r` to `out`.
pub fn encode_one(layout: &Layout, r: &SkuRecord, out: &mut Vec<u8>) -> serde_json::Result<()> {
    encode_action(
        &layout.index_of(&r.country),
        &document_id(r),
        r.record_version,
        out,
    )?;
    // The source is the record without its envelope field `schema` (the index mapping is
    // strict and holds the record fields only). Serde writes fields in declaration order, so
    // the record's JSON starts with exactly `{"schema":<string>,`.
    let start = out.len();
    serde_json::to_writer(&mut *out, r)?;
    let envelope = format!("{{\"schema\":{},", serde_json::to_string(&r.schema)?);
    if out[start..].starts_with(envelope.as_bytes()) {
        out.drain(start + 1..start + envelope.len());
    } else {
        // Defensive: never send a document the mapping would refuse for a field it lacks.
        out.truncate(start);
        let mut v = serde_json::to_value(r)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("schema");
        }
        serde_json::to_writer(&mut *out, &v)?;
    }
    out.push(b'\n');
    Ok(())
}

/// Encodes the records at `which` (indices into `batch`) into requests within `bounds`. A single
/// document larger than `max_bytes` travels alone.
pub fn encode(
    layout: &Layout,
    batch: &[&SkuRecord],
    which: &[usize],
    bounds: Bounds,
) -> serde_json::Result<Vec<BulkRequest>> {
    encode_with(batch, which, bounds, |r, out| encode_one(layout, r, out))
}

/// Encodes the items at `which` (indices into `batch`), each by `one` (its action and source
/// lines), into requests within `bounds`. A single document larger than `max_bytes` travels
/// alone.
pub fn encode_with<T>(
    batch: &[T],
    which: &[usize],
    bounds: Bounds,
    one: impl Fn(&T, &mut Vec<u8>) -> serde_json::Result<()>,
) -> serde_json::Result<Vec<BulkRequest>> {
    let mut out = Vec::new();
    let mut cur = BulkRequest::default();
    let mut buf = Vec::with_capacity(1024);
    for &i in which {
        buf.clear();
        one(&batch[i], &mut buf)?;
        let full = cur.items.len() >= bounds.max_docs.max(1)
            || (!cur.items.is_empty() && cur.body.len() + buf.len() > bounds.max_bytes);
        if full {
            out.push(std::mem::take(&mut cur));
        }
        cur.body.extend_from_slice(&buf);
        cur.items.push(i);
    }
    if !cur.items.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// What became of one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Indexed now, or already there at this or a newer version (409).
    Done,
    /// Worth retrying alone (429 or 5xx).
    Retry { status: u16, reason: String },
    /// Refused for good (a 4xx such as a mapping or parse error).
    Refused {
        status: u16,
        kind: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct BulkResponse {
    errors: bool,
    items: Vec<std::collections::HashMap<String, ItemResult>>,
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<ItemError>>,
}

impl ItemError {
    fn describe(&self) -> String {
        let mut s = format!(
            "{}: {}",
            self.kind,
            self.reason.as_deref().unwrap_or("no reason given")
        );
        if let Some(c) = &self.caused_by {
            s.push_str(" (caused by ");
            s.push_str(&c.describe());
            s.push(')');
        }
        s
    }
}

/// Reads a `_bulk` response body (HTTP 200) into one outcome per action, in order. The response
/// must answer every action: anything else is an error (the request is retried as a whole).
pub fn parse_response(body: &[u8], actions: usize) -> Result<Vec<Outcome>, String> {
    let r: BulkResponse =
        serde_json::from_slice(body).map_err(|e| format!("unreadable _bulk response: {e}"))?;
    if r.items.len() != actions {
        return Err(format!(
            "_bulk response has {} items for {actions} actions",
            r.items.len()
        ));
    }
    let mut out = Vec::with_capacity(actions);
    let mut failures = 0;
    for item in r.items {
        let Some((_, res)) = item.into_iter().next() else {
            return Err("_bulk response item without an action".into());
        };
        let outcome = match res.status {
            200..=299 => Outcome::Done,
            409 => Outcome::Done,
            429 | 500..=599 => Outcome::Retry {
                status: res.status,
                reason: res
                    .error
                    .as_ref()
                    .map_or_else(|| "no reason given".into(), ItemError::describe),
            },
            s => Outcome::Refused {
                status: s,
                kind: res
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.kind.clone()),
                reason: res
                    .error
                    .as_ref()
                    .map_or_else(|| "no reason given".into(), ItemError::describe),
            },
        };
        if res.status >= 300 {
            failures += 1;
        }
        out.push(outcome);
    }
    if failures > 0 && !r.errors {
        return Err("_bulk response says errors=false but items failed".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(country: &str, sku: &str, version: i64) -> SkuRecord {
        let mut r = skuflow_samples::record(country, 0, version);
        r.store_id = "s1".into();
        r.sku = sku.into();
        r.product_name = "Milk \"1L\"".into();
        r
    }

    #[test]
    fn actions_carry_index_id_and_external_version_and_sources_drop_the_envelope() {
        let layout = Layout {
            prefix: "skus".into(),
        };
        let r = rec("SE", "A-1", 77);
        let mut out = Vec::new();
        encode_one(&layout, &r, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2);
        let action: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            action,
            serde_json::json!({"index": {"_index": "skus-se", "_id": "SE:s1:A-1:2026-11-01",
                "version": 77, "version_type": "external"}})
        );
        let doc: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert!(doc.get("schema").is_none());
        let fields = skuflow_schemas::fields::record_fields();
        assert_eq!(doc.as_object().unwrap().len(), fields.len());
        for f in fields {
            assert!(doc.get(&f.name).is_some(), "{} missing", f.name);
        }
        assert_eq!(doc["product_name"], "Milk \"1L\"");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn requests_respect_doc_and_byte_bounds() {
        let layout = Layout {
            prefix: "skus".into(),
        };
        let recs: Vec<SkuRecord> = (0..10).map(|i| rec("DE", &format!("S{i}"), i)).collect();
        let refs: Vec<&SkuRecord> = recs.iter().collect();
        let all: Vec<usize> = (0..10).collect();
        let by_docs = encode(
            &layout,
            &refs,
            &all,
            Bounds {
                max_docs: 4,
                max_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(
            by_docs.iter().map(|r| r.items.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let one = by_docs[0].body.len() / 4;
        let by_bytes = encode(
            &layout,
            &refs,
            &all,
            Bounds {
                max_docs: 100,
                max_bytes: one * 3 + 1,
            },
        )
        .unwrap();
        assert!(by_bytes.iter().all(|r| r.body.len() <= one * 3 + 1));
        assert_eq!(by_bytes.iter().map(|r| r.items.len()).sum::<usize>(), 10);
        let tiny = encode(
            &layout,
            &refs,
            &[3, 5],
            Bounds {
                max_docs: 100,
                max_bytes: 1,
            },
        )
        .unwrap();
        assert_eq!(tiny.len(), 2, "an oversized document travels alone");
        assert_eq!(tiny[1].items, vec![5]);
    }

    #[test]
    fn item_outcomes_are_read_every_time() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"skus-se","_id":"a","status":201,"result":"created"}},
            {"index":{"_index":"skus-se","_id":"b","status":409,"error":{"type":"version_conflict_engine_exception","reason":"newer"}}},
            {"index":{"_index":"skus-se","_id":"c","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_index":"skus-se","_id":"d","status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse field [unit_price]","caused_by":{"type":"number_format_exception","reason":"x"}}}},
            {"index":{"_index":"skus-se","_id":"e","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary not active"}}}
        ]}"#;
        let o = parse_response(body, 5).unwrap();
        assert_eq!(o[0], Outcome::Done);
        assert_eq!(o[1], Outcome::Done);
        assert!(matches!(o[2], Outcome::Retry { status: 429, .. }));
        match &o[3] {
            Outcome::Refused {
                status,
                kind,
                reason,
            } => {
                assert_eq!(*status, 400);
                assert_eq!(kind, "document_parsing_exception");
                assert!(
                    reason.contains("unit_price") && reason.contains("number_format_exception")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(o[4], Outcome::Retry { status: 503, .. }));
        assert!(parse_response(body, 4).is_err(), "item count must match");
        assert!(parse_response(b"<html>", 1).is_err());
        let lying = br#"{"errors":false,"items":[{"index":{"status":429}}]}"#;
        assert!(parse_response(lying, 1).is_err());
    }
}
