//! The Elasticsearch index template derived from the record fields.

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
