//! The dataset card written beside each country's manifest.

use std::fmt::Write as _;

use crate::columns::{dataset_schema, FEATURES};
use crate::rows::Split;

/// What each record column means, for the card.
fn describe(name: &str) -> &'static str {
    match name {
        "record_id" => "deterministic id of the source row (hash of bucket, key, ETag, line)",
        "record_version" => "upload last-modified second × 2^32 + line; the newest wins",
        "country" => "ISO 3166-1 alpha-2, from the bucket (also the `country=` directory)",
        "store_id" => "store id from the object key or S3 metadata",
        "store_category" => "individual or retail_chain",
        "chain" => "retail chain name; null for individual stores",
        "sku" => "store SKU, 1–64 chars of A-Z a-z 0-9 . _ -",
        "product_name" => "product name, ≤ 256 chars",
        "category" => "product category as uploaded",
        "brand" => "brand; null when not given",
        "unit_price" => "price per unit, DECIMAL(18,4), in `currency`",
        "unit_cost" => "cost per unit, DECIMAL(18,4); null when not given",
        "currency" => "ISO 4217 code",
        "quantity_on_hand" => "units in stock at the end of the business day",
        "units_sold" => "units sold on the business day",
        "business_date" => "DATE the figures are for (also the `business_date=` directory)",
        "barcode" => "GTIN-8/12/13/14 with a valid check digit; null when not given",
        "file_id" => "id of the uploaded file (lineage)",
        "source_bucket" => "bucket of the upload (lineage)",
        "source_key" => "object key of the upload (lineage)",
        "source_etag" => "ETag of the upload (lineage)",
        "source_line" => "line of the row in the upload, header = 1 (lineage)",
        "source_last_modified" => "last-modified time of the upload, UTC",
        "ingested_at" => "when skuflow read the row, UTC",
        _ => "",
    }
}

/// `country=<CC>/_dataset_card.md`.
pub fn dataset_card(country: &str, split: Split) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# skuflow SKU dataset: {country}\n");
    let _ = writeln!(
        s,
        "One row per (store_id, sku, business_date): the latest uploaded version, never a \
         duplicate. Files: `business_date=<YYYY-MM-DD>/part-p<k>.parquet` (zstd; one file per \
         Kafka partition of the records topic, each natural key in exactly one). Row counts per \
         day and split, the offsets covered and the build time are in `_manifest.json`.\n"
    );
    let _ = writeln!(
        s,
        "Split ratios (train/validation/test, by SHA-256 of the SKU, so one SKU is in the same \
         split on every day and in every country): {:.1}/{:.1}/{:.1} %.\n",
        f64::from(split.train) / 100.0,
        f64::from(split.validation) / 100.0,
        f64::from(split.test) / 100.0
    );
    let _ = writeln!(
        s,
        "| column | type | nullable | meaning |\n|---|---|---|---|"
    );
    for f in dataset_schema().fields() {
        let meaning = FEATURES
            .iter()
            .find(|(n, _)| n == f.name())
            .map_or_else(|| describe(f.name()), |(_, d)| d);
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} |",
            f.name(),
            f.data_type(),
            if f.is_nullable() { "yes" } else { "no" },
            meaning
        );
    }
    let _ = writeln!(
        s,
        "\n`price_rel_category_median` uses the median over every row of the country and day, \
         across the day's files; when new rows move a median, every file of the day is \
         rewritten.\n\nRead it with pandas/pyarrow: \
         `pyarrow.dataset.dataset(root, partitioning=\"hive\")`, or DuckDB: \
         `SELECT * FROM read_parquet('root/country=*/business_date=*/*.parquet', hive_partitioning = true)`."
    );
    s
}
