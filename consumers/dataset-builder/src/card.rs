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

/// How the card's line naming the table version it describes starts.
const VERSION_LINE: &str = "Describes version ";

/// `country=<CC>/_dataset_card.md`, describing the table's `version`.
pub fn dataset_card(country: &str, split: Split, version: i64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# skuflow SKU dataset: {country}\n");
    let _ = writeln!(s, "{VERSION_LINE}{version} of the Delta Lake table.\n");
    let _ = writeln!(
        s,
        "One row per (store_id, sku, business_date): the latest uploaded version, never a \
         duplicate. The dataset is a Delta Lake table at the dataset root (partitioned by country \
         and business_date): every batch is one version, earlier versions stay readable. Files: \
         `business_date=<YYYY-MM-DD>/part-p<k>-<n>-<id>.parquet` (zstd; each natural key in \
         exactly one file of a version). Row counts per day and split, the offsets covered and \
         the table version described are in `_manifest.json`.\n"
    );
    let _ = writeln!(
        s,
        "Split ratios (train/validation/test, by SHA-256 of the SKU, so one SKU is in the same \
         split on every day and in every country): {:.1}/{:.1}/{:.1} %.\n",
        f64::from(split.train) / 100.0,
        f64::from(split.validation) / 100.0,
        f64::from(split.test) / 100.0
    );
    let _ = match split.time_cutoffs {
        Some((v, t)) => writeln!(
            s,
            "Split by time (`time_split`): train before {v}, validation from {v}, test from {t} \
             (by business_date: train on the past, test on the future).\n"
        ),
        None => writeln!(
            s,
            "Split by time (`time_split`): no cut-offs configured (`--time-split`), so the \
             column is null.\n"
        ),
    };
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
        "\n`price_rel_prev_day_category_median` compares a row's price with the median of its \
         category over every row of the country on the business day before (point in time, like \
         the history features): a batch of today's rows never changes another row of today, and \
         a change to a day rewrites the next day's files whose categories' medians moved.\n\nRead it through the table, never with a `*.parquet` glob (the directory \
         also holds files of older versions): `deltalake.DeltaTable(root, version=N)`, \
         `polars.read_delta(root, version=N)`, pyarrow `dataset(DeltaTable(root).file_uris())`, \
         DuckDB `read_parquet($files)` with those files. `skuflow dataset versions` lists the \
         versions, `skuflow dataset export --version N --to DIR` copies one for a training run."
    );
    s
}

/// A card describing another version (an export of that version): its version line replaced.
pub fn for_version(card: &str, version: i64) -> String {
    card.lines()
        .map(|l| {
            if l.starts_with(VERSION_LINE) {
                format!("{VERSION_LINE}{version} of the Delta Lake table (an export of it).")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
