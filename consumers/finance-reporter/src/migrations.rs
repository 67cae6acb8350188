//! The finance reporter's own schema `skuflow_finance`: one deduplicated line per natural key,
//! the daily aggregates kept from them, the rate table and the consumed offsets.

use skuflow_platform::pg::{dead_letter_outbox_ddl, offsets_table_ddl, Migration, Migrations};
use tokio_postgres::Client;

const MIGRATION_LOCK: i64 = 0x736b_7566_6c6f_7711;

pub const SCHEMA: &str = "skuflow_finance";
pub const LINES: &str = "skuflow_finance.lines";
pub const DAILY: &str = "skuflow_finance.daily";
pub const RATES: &str = "skuflow_finance.fx_rates";
pub const OFFSETS_TABLE: &str = "skuflow_finance.consumer_offsets";
/// Dead letters of refused records, until they are acknowledged on the dead-letter topic.
pub const OUTBOX_TABLE: &str = "skuflow_finance.dead_letter_outbox";

/// Dimensions of one daily aggregate row.
pub const DIMENSIONS: [&str; 7] = [
    "business_date",
    "country",
    "store_id",
    "store_category",
    "chain",
    "category",
    "currency",
];

/// Additive measures of a daily aggregate row (a line contributes one of each).
pub const MEASURES: [&str; 8] = [
    "skus",
    "skus_with_cost",
    "units",
    "revenue",
    "revenue_with_cost",
    "cost",
    "stock_value_retail",
    "stock_value_cost",
];

pub fn migrations() -> Vec<Migration> {
    vec![
        Migration {
        version: 1,
        name: "lines, daily aggregates, rates, offsets",
        sql: format!(
            "CREATE TABLE IF NOT EXISTS {LINES} (\n\
                 country text NOT NULL,\n\
                 store_id text NOT NULL,\n\
                 sku text NOT NULL,\n\
                 business_date date NOT NULL,\n\
                 record_version bigint NOT NULL,\n\
                 record_id text NOT NULL,\n\
                 store_category text NOT NULL,\n\
                 chain text NOT NULL,\n\
                 category text NOT NULL,\n\
                 currency text NOT NULL,\n\
                 unit_price numeric NOT NULL,\n\
                 unit_cost numeric,\n\
                 units_sold integer NOT NULL,\n\
                 quantity_on_hand integer NOT NULL,\n\
                 file_id text NOT NULL,\n\
                 PRIMARY KEY (country, store_id, sku, business_date)\n\
             );\n\
             CREATE INDEX IF NOT EXISTS lines_file_id ON {LINES} (file_id);\n\
             CREATE TABLE IF NOT EXISTS {DAILY} (\n\
                 business_date date NOT NULL,\n\
                 country text NOT NULL,\n\
                 store_id text NOT NULL,\n\
                 store_category text NOT NULL,\n\
                 chain text NOT NULL,\n\
                 category text NOT NULL,\n\
                 currency text NOT NULL,\n\
                 skus bigint NOT NULL,\n\
                 skus_with_cost bigint NOT NULL,\n\
                 units bigint NOT NULL,\n\
                 revenue numeric NOT NULL,\n\
                 revenue_with_cost numeric NOT NULL,\n\
                 cost numeric NOT NULL,\n\
                 gross_margin numeric GENERATED ALWAYS AS (revenue_with_cost - cost) STORED,\n\
                 stock_value_retail numeric NOT NULL,\n\
                 stock_value_cost numeric NOT NULL,\n\
                 updated_at timestamp with time zone NOT NULL DEFAULT now(),\n\
                 PRIMARY KEY (business_date, country, store_id, store_category, chain, category, currency)\n\
             );\n\
             CREATE TABLE IF NOT EXISTS {RATES} (\n\
                 rate_date date NOT NULL,\n\
                 currency text NOT NULL,\n\
                 reporting_currency text NOT NULL,\n\
                 rate numeric NOT NULL CHECK (rate > 0),\n\
                 source text NOT NULL,\n\
                 loaded_at timestamp with time zone NOT NULL DEFAULT now(),\n\
                 PRIMARY KEY (rate_date, currency, reporting_currency)\n\
             );\n\
             {}",
            offsets_table_ddl(OFFSETS_TABLE)
        ),
    },
        Migration {
            version: 2,
            name: "dead-letter outbox",
            sql: dead_letter_outbox_ddl(OUTBOX_TABLE),
        },
    ]
}

/// This schema's migrations.
pub fn all() -> Migrations {
    Migrations {
        schema: SCHEMA,
        lock: MIGRATION_LOCK,
        list: migrations(),
    }
}

/// Applies the migrations that are not applied yet. Returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    all().apply(client).await
}
