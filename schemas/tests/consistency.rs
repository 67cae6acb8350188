//! The message types and every derived sink schema agree with the JSON Schema files.

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use skuflow_schemas::*;

/// The shared test record with the optional fields a chain store fills.
fn sample_record() -> SkuRecord {
    let mut r = skuflow_samples::record("DE", 7, 2);
    r.store_category = StoreCategory::RetailChain;
    r.chain = Some("ikea".into());
    r.unit_cost = Some("41.5".parse::<Decimal>().unwrap());
    r.barcode = Some("4006381333931".into());
    r
}

fn field_names() -> Vec<String> {
    record_fields().iter().map(|f| f.name.clone()).collect()
}

fn validate(schema_doc: &str, instance: &Value) {
    let schema: Value = serde_json::from_str(schema_doc).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{instance} fails its schema: {errors:?}");
}

#[test]
fn rust_record_serializes_exactly_the_schema_properties_in_order() {
    let json = serde_json::to_value(sample_record()).unwrap();
    let keys: Vec<String> = json
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "schema")
        .cloned()
        .collect();
    let mut sorted_fields = field_names();
    sorted_fields.sort();
    let mut sorted_keys = keys.clone();
    sorted_keys.sort();
    assert_eq!(
        sorted_keys, sorted_fields,
        "SkuRecord and sku-record.schema.json differ"
    );
}

#[test]
fn every_derived_schema_has_exactly_the_record_fields() {
    let fields = field_names();
    let pg: Vec<String> = postgres::column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(pg, fields, "PostgreSQL columns drifted");

    let arrow: Vec<String> = arrow::record_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(arrow, fields, "Arrow schema drifted");

    let mut es: Vec<String> = elasticsearch::mapping_properties()
        .keys()
        .cloned()
        .collect();
    es.sort();
    let mut sorted = fields.clone();
    sorted.sort();
    assert_eq!(es, sorted, "Elasticsearch mapping drifted");

    // Nullability agrees too.
    for (f, a) in record_fields().iter().zip(arrow::record_schema().fields()) {
        assert_eq!(f.nullable, a.is_nullable(), "{} nullability", f.name);
        let ddl = postgres::column_definitions();
        let col = ddl
            .iter()
            .find(|c| c.starts_with(&format!("{} ", f.name)))
            .unwrap();
        assert_eq!(
            !f.nullable,
            col.contains(" NOT NULL"),
            "{} NOT NULL",
            f.name
        );
    }
}

#[test]
fn sample_messages_validate_against_their_schemas() {
    validate(
        json_schemas::RECORD,
        &serde_json::to_value(sample_record()).unwrap(),
    );
    let upload = UploadRequest::new("skus-de", "incoming/x.csv", None, Some(10), Trigger::Scan);
    validate(json_schemas::UPLOAD, &serde_json::to_value(upload).unwrap());
    let reject = RejectMessage {
        schema: REJECT_SCHEMA.into(),
        stage: "ingest".into(),
        file_id: "f".into(),
        bucket: "skus-de".into(),
        key: "incoming/x.csv".into(),
        country: Some("DE".into()),
        line: 3,
        raw: "a,b".into(),
        raw_truncated: false,
        record_id: None,
        reasons: vec![RejectReason {
            field: Some("unit_price".into()),
            column: Some(5),
            value: Some("-1".into()),
            rule: "non_negative".into(),
            message: "unit_price must be >= 0".into(),
        }],
        rejected_at: Utc::now(),
    };
    validate(json_schemas::REJECT, &serde_json::to_value(reject).unwrap());
    let mut file = FileEvent::new("f", FileStatus::Completed, "skus-de", "incoming/x.csv");
    file.rows_total = Some(3);
    validate(json_schemas::FILE, &serde_json::to_value(file).unwrap());
}

#[test]
fn schema_violations_are_detected() {
    let mut bad = serde_json::to_value(sample_record()).unwrap();
    bad["unit_price"] = Value::String("1.23456".into());
    let schema: Value = serde_json::from_str(json_schemas::RECORD).unwrap();
    assert!(!jsonschema::is_valid(&schema, &bad));
    let mut extra = serde_json::to_value(sample_record()).unwrap();
    extra["margin"] = Value::String("1".into());
    assert!(!jsonschema::is_valid(&schema, &extra));
}

#[test]
fn versions_order_by_upload_time_then_line() {
    let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let t2 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
    assert!(SkuRecord::version_of(t1, 9_000_000) < SkuRecord::version_of(t2, 2));
    assert!(SkuRecord::version_of(t1, 2) < SkuRecord::version_of(t1, 3));
}
