//! PostgreSQL types and DDL derived from the record fields.

use crate::fields::{record_fields, Field, FieldType, DECIMAL_PRECISION, DECIMAL_SCALE};

/// The PostgreSQL type of a field, as `format_type()` prints it.
pub fn pg_type(field_type: FieldType) -> String {
    match field_type {
        FieldType::Keyword | FieldType::Text => "text".to_string(),
        FieldType::Decimal => format!("numeric({DECIMAL_PRECISION},{DECIMAL_SCALE})"),
        FieldType::Integer => "integer".to_string(),
        FieldType::Long => "bigint".to_string(),
        FieldType::Date => "date".to_string(),
        FieldType::Timestamp => "timestamp with time zone".to_string(),
    }
}

/// The natural key of a row; the primary key of the fact table.
pub const NATURAL_KEY: [&str; 4] = ["country", "store_id", "sku", "business_date"];

/// Column definitions (`name type [NOT NULL]`) of the SKU fact table, in field order.
pub fn column_definitions() -> Vec<String> {
    record_fields().iter().map(column_definition).collect()
}

fn column_definition(f: &Field) -> String {
    let null = if f.nullable { "" } else { " NOT NULL" };
    let check = if f.non_negative {
        format!(" CHECK ({} >= 0)", f.name)
    } else {
        String::new()
    };
    format!("{} {}{}{}", f.name, pg_type(f.field_type), null, check)
}

/// Column names of the fact table, in field order.
pub fn column_names() -> Vec<&'static str> {
    record_fields().iter().map(|f| f.name.as_str()).collect()
}

/// `CREATE TABLE` for the LIST-partitioned (by country) fact table `table`.
pub fn create_fact_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    {},\n    PRIMARY KEY ({})\n) PARTITION BY LIST (country)",
        column_definitions().join(",\n    "),
        NATURAL_KEY.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_has_every_field_and_the_natural_key() {
        let ddl = create_fact_table("skuflow.sku_facts");
        for f in record_fields() {
            assert!(
                ddl.contains(&format!("\n    {} ", f.name)),
                "{} missing",
                f.name
            );
        }
        assert!(ddl.contains("unit_price numeric(18,4) NOT NULL CHECK (unit_price >= 0)"));
        assert!(ddl.contains("unit_cost numeric(18,4) CHECK (unit_cost >= 0),"));
        assert!(ddl.contains("units_sold integer NOT NULL CHECK (units_sold >= 0)"));
        assert!(ddl.contains("PRIMARY KEY (country, store_id, sku, business_date)"));
    }
}
