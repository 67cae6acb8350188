//! The Arrow schema derived from the record fields.

use std::sync::Arc;

use arrow_schema::{DataType, Field as ArrowField, Schema, TimeUnit};

use crate::fields::{record_fields, FieldType, DECIMAL_PRECISION, DECIMAL_SCALE};

/// The Arrow type of a field.
pub fn arrow_type(field_type: FieldType) -> DataType {
    match field_type {
        FieldType::Keyword | FieldType::Text => DataType::Utf8,
        FieldType::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8),
        FieldType::Integer => DataType::Int32,
        FieldType::Long => DataType::Int64,
        FieldType::Date => DataType::Date32,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The Arrow schema of a record batch of `sku-record/v1` rows.
pub fn record_schema() -> Arc<Schema> {
    let fields: Vec<ArrowField> = record_fields()
        .iter()
        .map(|f| ArrowField::new(&f.name, arrow_type(f.field_type), f.nullable))
        .collect();
    Arc::new(Schema::new(fields))
}
