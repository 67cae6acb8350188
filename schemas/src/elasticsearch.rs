//! The Elasticsearch index templates: the records' derived from the record fields, and those of
//! the upload history and the rejected rows.

use serde_json::{json, Map, Value};

use crate::fields::{record_fields, FieldType, DECIMAL_SCALE};

/// The mapping of one field.
pub fn field_mapping(field_type: FieldType) -> Value {
    match field_type {
        FieldType::Keyword => json!({ "type": "keyword" }),
        FieldType::Text => json!({
            "type": "text",
            "fields": { "keyword": { "type": "keyword", "ignore_above": 256 } }
        }),
        FieldType::Decimal => json!({
            "type": "scaled_float",
            "scaling_factor": 10u64.pow(DECIMAL_SCALE)
        }),
        FieldType::Integer => json!({ "type": "integer" }),
        FieldType::Long => json!({ "type": "long" }),
        FieldType::Date => json!({ "type": "date", "format": "strict_date" }),
        FieldType::Timestamp => json!({ "type": "date", "format": "strict_date_optional_time" }),
    }
}

/// `properties` of the record mapping.
pub fn mapping_properties() -> Map<String, Value> {
    record_fields()
        .iter()
        .map(|f| (f.name.clone(), field_mapping(f.field_type)))
        .collect()
}

/// The composable index template for indices `<prefix>-*` with alias `alias`.
pub fn index_template(prefix: &str, alias: &str) -> Value {
    json!({
        "index_patterns": [format!("{prefix}-*")],
        "priority": 200,
        "template": {
            "settings": { "number_of_shards": 1 },
            "aliases": { alias: {} },
            "mappings": {
                "dynamic": "strict",
                "properties": Value::Object(mapping_properties())
            }
        },
        "_meta": { "schema": crate::RECORD_SCHEMA, "managed_by": "skuflow" }
    })
}

/// Priority of the upload-history and rejected-row templates: above the records' template, so
/// that an index prefix shared with the records (`--index-prefix=skuflow`) never lets the records'
/// mapping take these indices.
pub const QUALITY_PRIORITY: u32 = 210;

fn keyword() -> Value {
    json!({ "type": "keyword" })
}

fn long() -> Value {
    json!({ "type": "long" })
}

fn timestamp() -> Value {
    field_mapping(FieldType::Timestamp)
}

fn quality_template(pattern: String, alias: &str, schema: &str, properties: Value) -> Value {
    json!({
        "index_patterns": [pattern],
        "priority": QUALITY_PRIORITY,
        "template": {
            "settings": { "number_of_shards": 1 },
            "aliases": { alias: {} },
            "mappings": { "dynamic": "strict", "properties": properties }
        },
        "_meta": { "schema": schema, "managed_by": "skuflow" }
    })
}

/// The index of the upload history (`sku.files.v1`): one document per upload with its latest
/// lifecycle state, and one per late-upload notice (`status: late`).
pub fn files_index(prefix: &str) -> String {
    format!("{prefix}-files")
}

/// The template of [`files_index`], with alias `alias`.
pub fn files_template(prefix: &str, alias: &str) -> Value {
    let text = field_mapping(FieldType::Text);
    quality_template(
        files_index(prefix),
        alias,
        crate::FILE_SCHEMA,
        json!({
            "file_id": keyword(), "status": keyword(), "bucket": keyword(), "key": keyword(),
            "etag": keyword(), "size": long(), "country": keyword(), "store_id": keyword(),
            "store_category": keyword(), "chain": keyword(),
            "business_date": field_mapping(FieldType::Date), "last_modified": timestamp(),
            "rows_total": long(), "rows_valid": long(), "rows_rejected": long(), "bytes": long(),
            "duration_ms": long(), "reason": text, "warnings": keyword(), "moved_to": keyword(),
            "at": timestamp()
        }),
    )
}

/// The monthly index of the rejected rows (`sku.rejects.v1`) rejected in `month` (`YYYY.MM`).
pub fn rejects_index(prefix: &str, month: &str) -> String {
    format!("{prefix}-rejects-{month}")
}

/// The template of the monthly [`rejects_index`] indices, with alias `alias`.
pub fn rejects_template(prefix: &str, alias: &str) -> Value {
    quality_template(
        rejects_index(prefix, "*"),
        alias,
        crate::REJECT_SCHEMA,
        json!({
            "country": keyword(), "file_id": keyword(), "stage": keyword(), "bucket": keyword(),
            "key": keyword(), "line": long(), "record_id": keyword(),
            "field": keyword(), "column": { "type": "integer" },
            "value": { "type": "keyword", "ignore_above": 256 },
            "rule": keyword(), "message": field_mapping(FieldType::Text),
            "rules": keyword(), "fields": keyword(),
            "reasons": { "type": "object", "enabled": false },
            "raw": { "type": "text", "index": false }, "raw_truncated": { "type": "boolean" },
            "rejected_at": timestamp()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_maps_money_exactly() {
        let t = index_template("skus", "skus");
        let props = &t["template"]["mappings"]["properties"];
        assert_eq!(props["unit_price"]["type"], "scaled_float");
        assert_eq!(props["unit_price"]["scaling_factor"], 10000);
        assert_eq!(
            props["product_name"]["fields"]["keyword"]["type"],
            "keyword"
        );
        assert_eq!(props["business_date"]["type"], "date");
    }
}
