//! The dataset's Arrow schema and its Parquet encoding: every record field (money as
//! DECIMAL(18,4), dates as DATE, timestamps in microseconds UTC) plus the derived features, and
//! the way back from a file to records (to merge a partition with new uploads).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _};
use arrow_array::builder::{
    Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, Date32Array, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::{
    compute_leaves, get_column_writers, ArrowColumnChunk, ArrowColumnWriter,
};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::format::KeyValue;
use parquet::schema::types::ColumnPath;
use rust_decimal::Decimal;
use skuflow_schemas::fields::{DECIMAL_PRECISION, DECIMAL_SCALE};
use skuflow_schemas::{SkuRecord, StoreCategory};

use crate::rows::{Featured, Row};

/// Derived feature columns, after the record's own.
pub const FEATURES: [(&str, &str); 11] = [
    (
        "gross_margin",
        "unit_price − unit_cost, DECIMAL(18,4); null when the cost is unknown",
    ),
    (
        "margin_pct",
        "gross_margin / unit_price (0.25 = 25 %); null without a cost or at price 0",
    ),
    (
        "days_of_cover",
        "quantity_on_hand / units_sold; null when nothing sold",
    ),
    (
        "price_rel_prev_day_category_median",
        "unit_price / the median unit_price of the same category and country on the day before; null when that day has no row of the category",
    ),
    (
        "split",
        "train, validation or test, by SHA-256 of the SKU (stable across days and countries)",
    ),
    (
        "time_split",
        "train, validation or test by business_date and the cut-offs of --time-split (train on \
         the past, test on the future); null when no cut-offs are configured",
    ),
    (
        "units_sold_prev_day",
        "units_sold of the same country, store and SKU on the day before; null without a row then",
    ),
    (
        "units_sold_prev_week",
        "units_sold of the same key on the same weekday a week before; null without a row then",
    ),
    (
        "units_sold_mean_7d",
        "mean units_sold over the key's rows of the 7 days before (not the row's day); null without one",
    ),
    (
        "units_sold_mean_28d",
        "mean units_sold over the key's rows of the 28 days before; null without one",
    ),
    (
        "days_since_price_change",
        "days since the key's unit_price last changed (0: on this day), looking back 28 days; null \
         when it did not change in them",
    ),
];

/// Columns with few distinct values: dictionary-encoded.
const DICTIONARY: [&str; 13] = [
    "country",
    "store_id",
    "store_category",
    "chain",
    "category",
    "brand",
    "currency",
    "split",
    "time_split",
    "file_id",
    "source_bucket",
    "source_key",
    "source_etag",
];

fn money() -> DataType {
    DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
}

/// The dataset schema: the record schema without its envelope, then the features.
pub fn dataset_schema() -> SchemaRef {
    let mut fields: Vec<Field> = skuflow_schemas::arrow::record_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("gross_margin", money(), true));
    fields.push(Field::new("margin_pct", DataType::Float64, true));
    fields.push(Field::new("days_of_cover", DataType::Float64, true));
    fields.push(Field::new(
        "price_rel_prev_day_category_median",
        DataType::Float64,
        true,
    ));
    fields.push(Field::new("split", DataType::Utf8, false));
    fields.push(Field::new("time_split", DataType::Utf8, true));
    fields.push(Field::new("units_sold_prev_day", DataType::Int32, true));
    fields.push(Field::new("units_sold_prev_week", DataType::Int32, true));
    fields.push(Field::new("units_sold_mean_7d", DataType::Float64, true));
    fields.push(Field::new("units_sold_mean_28d", DataType::Float64, true));
    fields.push(Field::new("days_since_price_change", DataType::Int32, true));
    Arc::new(Schema::new(fields))
}

/// Parquet writer settings.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

/// The value's mantissa at the dataset's scale (rounded when it has more decimals).
fn mantissa(d: Decimal) -> i128 {
    match DECIMAL_SCALE.checked_sub(d.scale()) {
        // Widening is exact: at most 96 bits times 10^4 fit in an i128.
        Some(widen) => d.mantissa() * 10i128.pow(widen),
        None => {
            let mut d = d;
            d.rescale(DECIMAL_SCALE);
            d.mantissa()
        }
    }
}

fn days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

fn text<'a>(rows: &[Featured<'a>], f: impl Fn(Row<'a>) -> Option<&'a str>) -> ArrayRef {
    let bytes = rows.iter().map(|r| f(r.row).map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(rows.len(), bytes);
    for r in rows {
        b.append_option(f(r.row));
    }
    Arc::new(b.finish())
}

fn decimal(values: impl Iterator<Item = Option<Decimal>>) -> anyhow::Result<ArrayRef> {
    let mut b = Decimal128Builder::new();
    for v in values {
        b.append_option(v.map(mantissa));
    }
    Ok(Arc::new(b.finish().with_precision_and_scale(
        DECIMAL_PRECISION,
        DECIMAL_SCALE as i8,
    )?))
}

fn float(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    let mut b = Float64Builder::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

fn int32(values: impl Iterator<Item = i32>) -> ArrayRef {
    let mut b = Int32Builder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn int64(values: impl Iterator<Item = i64>) -> ArrayRef {
    let mut b = Int64Builder::new();
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn timestamps(values: impl Iterator<Item = DateTime<Utc>>) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::new();
    for v in values {
        b.append_value(v.timestamp_micros());
    }
    Arc::new(b.finish().with_timezone("UTC"))
}

/// The column `name` of `rows`.
fn column(name: &str, rows: &[Featured<'_>]) -> anyhow::Result<ArrayRef> {
    let recs = || rows.iter().map(|f| f.row);
    Ok(match name {
        "record_id" => text(rows, |r| Some(r.record_id())),
        "record_version" => int64(recs().map(|r| r.record_version())),
        "country" => text(rows, |r| Some(r.country())),
        "store_id" => text(rows, |r| Some(r.store_id())),
        "store_category" => text(rows, |r| Some(r.store_category().as_str())),
        "chain" => text(rows, |r| r.chain()),
        "sku" => text(rows, |r| Some(r.sku())),
        "product_name" => text(rows, |r| Some(r.product_name())),
        "category" => text(rows, |r| Some(r.category())),
        "brand" => text(rows, |r| r.brand()),
        "unit_price" => decimal(recs().map(|r| Some(r.unit_price())))?,
        "unit_cost" => decimal(recs().map(|r| r.unit_cost()))?,
        "currency" => text(rows, |r| Some(r.currency())),
        "quantity_on_hand" => int32(recs().map(|r| r.quantity_on_hand())),
        "units_sold" => int32(recs().map(|r| r.units_sold())),
        "business_date" => {
            let mut b = Date32Builder::new();
            for r in recs() {
                b.append_value(days(r.business_date()));
            }
            Arc::new(b.finish())
        }
        "barcode" => text(rows, |r| r.barcode()),
        "file_id" => text(rows, |r| Some(r.file_id())),
        "source_bucket" => text(rows, |r| Some(r.source_bucket())),
        "source_key" => text(rows, |r| Some(r.source_key())),
        "source_etag" => text(rows, |r| Some(r.source_etag())),
        "source_line" => int64(recs().map(|r| r.source_line())),
        "source_last_modified" => timestamps(recs().map(|r| r.source_last_modified())),
        "ingested_at" => timestamps(recs().map(|r| r.ingested_at())),
        "gross_margin" => decimal(rows.iter().map(|f| f.gross_margin))?,
        "margin_pct" => float(rows.iter().map(|f| f.margin_pct)),
        "days_of_cover" => float(rows.iter().map(|f| f.days_of_cover)),
        "price_rel_prev_day_category_median" => {
            float(rows.iter().map(|f| f.price_rel_prev_day_category_median))
        }
        "split" => {
            let mut b = StringBuilder::new();
            for f in rows {
                b.append_value(f.split);
            }
            Arc::new(b.finish())
        }
        "units_sold_prev_day" => {
            Arc::new(Int32Array::from_iter(rows.iter().map(|f| f.history.units_sold_prev_day)))
        }
        "units_sold_prev_week" => {
            Arc::new(Int32Array::from_iter(rows.iter().map(|f| f.history.units_sold_prev_week)))
        }
        "units_sold_mean_7d" => float(rows.iter().map(|f| f.history.units_sold_mean_7d)),
        "units_sold_mean_28d" => float(rows.iter().map(|f| f.history.units_sold_mean_28d)),
        "days_since_price_change" => Arc::new(Int32Array::from_iter(
            rows.iter().map(|f| f.history.days_since_price_change),
        )),
        "time_split" => {
            let mut b = StringBuilder::new();
            for f in rows {
                b.append_option(f.time_split);
            }
            Arc::new(b.finish())
        }
        other => bail!("the dataset builder has no column {other:?}: a field was added to the record schema without a column here"),
    })
}

/// Category → median unit price, as recorded in a file.
pub type Medians = HashMap<String, Decimal>;

/// Key of the file metadata holding the category medians a file's features were computed with.
const MEDIANS_KEY: &str = "skuflow.category_medians";

/// One Parquet file of `rows` (zstd, dictionary for low-cardinality strings).
pub fn encode(rows: &[Featured<'_>], enc: Encoding) -> anyhow::Result<Vec<u8>> {
    encode_with_medians(rows, enc, &HashMap::new())
}

/// The writer properties of every data file: zstd, row groups, dictionaries for the
/// low-cardinality strings, and the medians the file's rows were computed with.
fn writer_properties(
    enc: Encoding,
    medians: &HashMap<String, Decimal>,
) -> anyhow::Result<WriterProperties> {
    let sorted: std::collections::BTreeMap<&String, String> =
        medians.iter().map(|(k, v)| (k, v.to_string())).collect();
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(enc.zstd_level)?))
        .set_max_row_group_size(enc.row_group_rows.max(1))
        .set_dictionary_enabled(false)
        .set_created_by("skuflow-dataset-builder".into())
        .set_key_value_metadata(Some(vec![
            KeyValue::new(
                "skuflow.record_schema".to_string(),
                skuflow_schemas::RECORD_SCHEMA.to_string(),
            ),
            KeyValue::new(MEDIANS_KEY.to_string(), serde_json::to_string(&sorted)?),
        ]));
    for c in DICTIONARY {
        props = props.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    Ok(props.build())
}

/// One data file holding the rows of `files` (data files of one day, written by [`encode`]) one
/// after another, their features as they are: what compaction writes. `medians` are those the
/// files were written with.
pub fn concat(
    files: &[Bytes],
    enc: Encoding,
    medians: &HashMap<String, Decimal>,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let props = writer_properties(enc, medians)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, dataset_schema(), Some(props))?;
    for f in files {
        for batch in ParquetRecordBatchReaderBuilder::try_new(f.clone())?.build()? {
            writer.write(&batch?)?;
        }
    }
    writer.close()?;
    Ok(out)
}

/// [`encode`], recording in the file's metadata the category medians its
/// `price_rel_prev_day_category_median` column was computed with (the day before's: so that a
/// builder knows which files of a day still carry an older median when that day changes).
pub fn encode_with_medians(
    rows: &[Featured<'_>],
    enc: Encoding,
    medians: &HashMap<String, Decimal>,
) -> anyhow::Result<Vec<u8>> {
    // What ArrowWriter does, with the columns of each row group built and encoded on every
    // core: they are independent until they are appended to the row group in order.
    let schema = dataset_schema();
    let mut props = writer_properties(enc, medians)?;
    let parquet_schema = ArrowSchemaConverter::new()
        .with_coerce_types(props.coerce_types())
        .convert(&schema)?;
    add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let props = Arc::new(props);
    let mut out = Vec::new();
    let mut file =
        SerializedFileWriter::new(&mut out, parquet_schema.root_schema_ptr(), props.clone())?;
    let threads = skuflow_platform::parallel::cores().min(schema.fields().len());
    for chunk in rows.chunks(enc.row_group_rows.max(1)) {
        let writers: Vec<Mutex<Option<ArrowColumnWriter>>> =
            get_column_writers(&parquet_schema, &props, &schema)?
                .into_iter()
                .map(|w| Mutex::new(Some(w)))
                .collect();
        anyhow::ensure!(
            writers.len() == schema.fields().len(),
            "the dataset schema is flat: one Parquet column per field"
        );
        let next = AtomicUsize::new(0);
        let done: Vec<Mutex<Option<anyhow::Result<ArrowColumnChunk>>>> =
            (0..writers.len()).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = writers.get(i) else { break };
                    let field = &schema.fields()[i];
                    let writer = slot.lock().unwrap().take();
                    let encoded = (|| {
                        let mut w = writer.context("column writer taken twice")?;
                        let array = column(field.name(), chunk)?;
                        for leaf in compute_leaves(field, &array)? {
                            w.write(&leaf)?;
                        }
                        Ok(w.close()?)
                    })();
                    *done[i].lock().unwrap() = Some(encoded);
                });
            }
        });
        let mut group = file.next_row_group()?;
        for slot in done {
            let encoded = slot
                .into_inner()
                .unwrap()
                .context("a column was not encoded")??;
            encoded.append_to_row_group(&mut group)?;
        }
        group.close()?;
    }
    file.close()?;
    Ok(out)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> anyhow::Result<&'a T> {
    b.column_by_name(name)
        .ok_or_else(|| anyhow!("column {name} missing"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| anyhow!("column {name} has an unexpected type"))
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_string())
}

fn ts(a: &TimestampMicrosecondArray, i: usize) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(a.value(i)).context("timestamp out of range")
}

/// The category medians recorded by [`encode_with_medians`] in a file's metadata, if any.
fn medians_in(md: &parquet::file::metadata::ParquetMetaData) -> anyhow::Result<Option<Medians>> {
    let Some(kv) = md.file_metadata().key_value_metadata() else {
        return Ok(None);
    };
    let Some(json) = kv
        .iter()
        .find(|k| k.key == MEDIANS_KEY)
        .and_then(|k| k.value.as_deref())
    else {
        return Ok(None);
    };
    let raw: HashMap<String, String> = serde_json::from_str(json)?;
    let mut out = HashMap::with_capacity(raw.len());
    for (k, v) in raw {
        out.insert(k, v.parse::<Decimal>()?);
    }
    Ok(Some(out))
}

/// The category medians recorded by [`encode_with_medians`], if the file has them.
pub fn medians_of(file: &Bytes) -> anyhow::Result<Option<Medians>> {
    medians_in(ParquetRecordBatchReaderBuilder::try_new(file.clone())?.metadata())
}

/// Rows per `file_id` of a Parquet file written by [`encode`] (reads that column only).
pub fn rows_per_file(file: Bytes) -> anyhow::Result<HashMap<String, u64>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["file_id"]);
    let mut out = HashMap::new();
    for batch in builder.with_projection(mask).build()? {
        let b = batch?;
        let ids = col::<StringArray>(&b, "file_id")?;
        for i in 0..ids.len() {
            *out.entry(ids.value(i).to_string()).or_default() += 1;
        }
    }
    Ok(out)
}

/// The records of a Parquet file written by [`encode`].
pub fn decode(file: Bytes) -> anyhow::Result<Vec<SkuRecord>> {
    decode_with_medians(file).map(|(records, _)| records)
}

/// The records of a Parquet file written by [`encode_with_medians`] and the medians it records,
/// reading the footer once.
pub fn decode_with_medians(file: Bytes) -> anyhow::Result<(Vec<SkuRecord>, Option<Medians>)> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let medians = medians_in(builder.metadata())?;
    let reader = builder.build()?;
    let mut out = Vec::new();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    for batch in reader {
        let b = batch?;
        let s = |n: &str| col::<StringArray>(&b, n);
        let (record_id, country, store_id, store_category, chain, sku) = (
            s("record_id")?,
            s("country")?,
            s("store_id")?,
            s("store_category")?,
            s("chain")?,
            s("sku")?,
        );
        let (product_name, category, brand, currency, barcode) = (
            s("product_name")?,
            s("category")?,
            s("brand")?,
            s("currency")?,
            s("barcode")?,
        );
        let (file_id, source_bucket, source_key, source_etag) = (
            s("file_id")?,
            s("source_bucket")?,
            s("source_key")?,
            s("source_etag")?,
        );
        let record_version = col::<Int64Array>(&b, "record_version")?;
        let source_line = col::<Int64Array>(&b, "source_line")?;
        let unit_price = col::<Decimal128Array>(&b, "unit_price")?;
        let unit_cost = col::<Decimal128Array>(&b, "unit_cost")?;
        let qoh = col::<Int32Array>(&b, "quantity_on_hand")?;
        let sold = col::<Int32Array>(&b, "units_sold")?;
        let date = col::<Date32Array>(&b, "business_date")?;
        let modified = col::<TimestampMicrosecondArray>(&b, "source_last_modified")?;
        let ingested = col::<TimestampMicrosecondArray>(&b, "ingested_at")?;
        let dec = |a: &Decimal128Array, i: usize| {
            (!a.is_null(i)).then(|| Decimal::from_i128_with_scale(a.value(i), DECIMAL_SCALE))
        };
        for i in 0..b.num_rows() {
            out.push(SkuRecord {
                schema: skuflow_schemas::RECORD_SCHEMA.to_string(),
                record_id: record_id.value(i).to_string(),
                record_version: record_version.value(i),
                country: country.value(i).to_string(),
                store_id: store_id.value(i).to_string(),
                store_category: match store_category.value(i) {
                    "retail_chain" => StoreCategory::RetailChain,
                    _ => StoreCategory::Individual,
                },
                chain: opt_str(chain, i),
                sku: sku.value(i).to_string(),
                product_name: product_name.value(i).to_string(),
                category: category.value(i).to_string(),
                brand: opt_str(brand, i),
                unit_price: dec(unit_price, i).context("unit_price is null")?,
                unit_cost: dec(unit_cost, i),
                currency: currency.value(i).to_string(),
                quantity_on_hand: qoh.value(i),
                units_sold: sold.value(i),
                business_date: epoch + chrono::Duration::days(i64::from(date.value(i))),
                barcode: opt_str(barcode, i),
                file_id: file_id.value(i).to_string(),
                source_bucket: source_bucket.value(i).to_string(),
                source_key: source_key.value(i).to_string(),
                source_etag: source_etag.value(i).to_string(),
                source_line: source_line.value(i),
                source_last_modified: ts(modified, i)?,
                ingested_at: ts(ingested, i)?,
            });
        }
    }
    Ok((out, medians))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{FileRows, Split};

    #[test]
    fn every_record_field_has_a_column_and_survives_a_round_trip() {
        let mut p = FileRows::default();
        for i in 0..50u64 {
            let mut v = serde_json::json!({
                "schema": skuflow_schemas::RECORD_SCHEMA,
                "record_id": format!("{i:032x}"), "record_version": 1000 + i,
                "country": "FI", "store_id": format!("s{}", i % 3), "store_category": "retail_chain",
                "chain": "ikea", "sku": format!("SKU-{i}"), "product_name": "Sohva \"3\"",
                "category": if i % 2 == 0 { "a" } else { "b" }, "brand": null,
                "unit_price": format!("{}.1234", i), "unit_cost": null, "currency": "EUR",
                "quantity_on_hand": i, "units_sold": i % 4, "business_date": "2026-02-28",
                "barcode": "4006381333931", "file_id": "f", "source_bucket": "skus-fi",
                "source_key": "incoming/x.csv", "source_etag": "\"e\"", "source_line": i + 2,
                "source_last_modified": "2026-02-28T10:11:12.345678Z",
                "ingested_at": "2026-02-28T10:11:13Z"
            });
            if i % 5 == 0 {
                v["unit_cost"] = "0.5000".into();
            }
            p.upsert(&serde_json::from_value(v).unwrap());
        }
        let rows = p.featured(Split::default());
        let file = encode(
            &rows,
            Encoding {
                row_group_rows: 16,
                zstd_level: 3,
            },
        )
        .unwrap();
        let back = decode(Bytes::from(file)).unwrap();
        assert_eq!(back.len(), 50);
        for (want, got) in rows.iter().map(|f| f.row.to_record()).zip(&back) {
            assert_eq!(&want, got);
        }
        let names: Vec<String> = dataset_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for f in skuflow_schemas::fields::record_fields() {
            assert!(names.contains(&f.name), "{} has no column", f.name);
        }
        for (f, _) in FEATURES {
            assert!(names.iter().any(|n| n == f), "{f} has no column");
        }
    }
}
