//! The field list of `sku-record/v1`, read from its JSON Schema.

use std::sync::OnceLock;

use serde_json::Value;

/// The storage type of one record field; every sink maps it to its own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// An exact-match string (ids, codes, names used for facets).
    Keyword,
    /// A full-text string (also kept exact for sorting and facets).
    Text,
    /// Money: an exact decimal with at most [`DECIMAL_SCALE`] places.
    Decimal,
    /// A 32-bit signed integer.
    Integer,
    /// A 64-bit signed integer.
    Long,
    /// A calendar date.
    Date,
    /// An instant in UTC.
    Timestamp,
}

/// Decimal places kept for money everywhere (NUMERIC(18,4), DECIMAL(18,4), scaled_float 10000).
pub const DECIMAL_SCALE: u32 = 4;
/// Total decimal digits kept for money.
pub const DECIMAL_PRECISION: u8 = 18;

/// One field of `sku-record/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub field_type: FieldType,
    pub nullable: bool,
    /// Values may not be negative (JSON `minimum: 0`, or money).
    pub non_negative: bool,
    pub description: String,
}

/// Properties of the record that are envelope, not data, and are not stored by the sinks.
pub const ENVELOPE_PROPERTIES: [&str; 1] = ["schema"];

/// The data fields of `sku-record/v1`, in schema order.
pub fn record_fields() -> &'static [Field] {
    static FIELDS: OnceLock<Vec<Field>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        parse_fields(crate::json_schemas::RECORD)
            .unwrap_or_else(|e| panic!("the embedded sku-record schema is invalid: {e}"))
    })
}

/// Reads the field list out of a record JSON Schema document.
///
/// Every non-envelope property must carry `x-skuflow-type`; a property is nullable when its
/// `type` admits `null`.
pub fn parse_fields(schema_json: &str) -> Result<Vec<Field>, String> {
    // serde_json keeps object order only with preserve_order; order comes from `required`.
    let doc: Value = serde_json::from_str(schema_json).map_err(|e| e.to_string())?;
    let props = doc
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("no properties")?;
    let order = doc
        .get("required")
        .and_then(Value::as_array)
        .ok_or("no required list")?;
    if order.len() != props.len() {
        return Err(format!(
            "required lists {} properties but {} are defined: every record property is required (nullable ones admit null)",
            order.len(),
            props.len()
        ));
    }
    let mut fields = Vec::new();
    for name in order {
        let name = name.as_str().ok_or("required entry is not a string")?;
        if ENVELOPE_PROPERTIES.contains(&name) {
            continue;
        }
        let prop = props
            .get(name)
            .ok_or_else(|| format!("required property {name} is not defined"))?;
        let ty = prop
            .get("x-skuflow-type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("property {name} has no x-skuflow-type"))?;
        let field_type = match ty {
            "keyword" => FieldType::Keyword,
            "text" => FieldType::Text,
            "decimal" => FieldType::Decimal,
            "integer" => FieldType::Integer,
            "long" => FieldType::Long,
            "date" => FieldType::Date,
            "timestamp" => FieldType::Timestamp,
            other => return Err(format!("property {name}: unknown x-skuflow-type {other}")),
        };
        let json_types: Vec<&str> = match prop.get("type") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("property {name} has no type")),
        };
        let nullable = json_types.contains(&"null");
        let base: Vec<&str> = json_types
            .iter()
            .copied()
            .filter(|t| *t != "null")
            .collect();
        let expected = match field_type {
            FieldType::Integer | FieldType::Long => "integer",
            _ => "string",
        };
        if base != [expected] {
            return Err(format!(
                "property {name}: x-skuflow-type {ty} needs JSON type {expected}, found {json_types:?}"
            ));
        }
        let format = prop.get("format").and_then(Value::as_str);
        let expected_format = match field_type {
            FieldType::Date => Some("date"),
            FieldType::Timestamp => Some("date-time"),
            _ => None,
        };
        if format != expected_format {
            return Err(format!(
                "property {name}: x-skuflow-type {ty} needs format {expected_format:?}, found {format:?}"
            ));
        }
        let description = prop
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let non_negative = field_type == FieldType::Decimal
            || prop
                .get("minimum")
                .and_then(Value::as_i64)
                .is_some_and(|m| m >= 0);
        fields.push(Field {
            name: name.to_string(),
            field_type,
            nullable,
            non_negative,
            description,
        });
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_parse() {
        let fields = record_fields();
        assert_eq!(fields[0].name, "record_id");
        let price = fields.iter().find(|f| f.name == "unit_price").unwrap();
        assert_eq!(price.field_type, FieldType::Decimal);
        assert!(!price.nullable);
        let cost = fields.iter().find(|f| f.name == "unit_cost").unwrap();
        assert!(cost.nullable);
    }

    #[test]
    fn a_property_without_a_type_is_refused() {
        let doc = r#"{"required":["a"],"properties":{"a":{"type":"string"}}}"#;
        assert!(parse_fields(doc).unwrap_err().contains("x-skuflow-type"));
    }
}
