//! Sample SKU uploads with known outcomes: rows whose validity is known in advance, rendered as
//! CSV text, and synthetic records. The demo (`skuflow demo`), the end-to-end tests and the
//! benchmarks generate their data here.

use std::fmt::Write as _;

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use skuflow_schemas::{SkuRecord, StoreCategory, RECORD_SCHEMA};

/// One generated row and whether the contract accepts it.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub sku: String,
    pub product_name: String,
    pub category: String,
    pub brand: String,
    pub unit_price: String,
    pub unit_cost: String,
    pub currency: String,
    pub quantity_on_hand: String,
    pub units_sold: String,
    pub business_date: String,
    pub barcode: String,
    pub valid: bool,
}

pub const HEADER: &str = "sku,product_name,category,brand,unit_price,unit_cost,currency,quantity_on_hand,units_sold,business_date,barcode";

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// GTIN-13 with a correct check digit from a 12-digit body.
pub fn gtin13(body: u64) -> String {
    let digits = format!("{:012}", body % 1_000_000_000_000);
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

const CATEGORIES: [&str; 5] = ["dairy", "bakery", "produce", "household", "furniture"];
const BRANDS: [&str; 4] = ["Nordic", "Acme", "", "Öko & Co"];

impl SampleRow {
    /// A valid row, deterministic in `(seed, i)`.
    pub fn valid(seed: u64, i: u64, currency: &str, date: &str) -> Self {
        let x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(i.wrapping_mul(1442695040888963407))
            ^ (i << 17);
        let price_cents = 50 + (x >> 20) % 20_000;
        let with_cost = !i.is_multiple_of(3);
        let name = match i % 7 {
            0 => format!("Oat drink, barista \"{i}\""),
            1 => format!("Shelf unit\nmodel {i}"),
            2 => format!("Crème brûlée {i} — 2×100 g"),
            _ => format!("Product {i}"),
        };
        SampleRow {
            sku: format!("SKU-{seed}.{i:05}"),
            product_name: name,
            category: CATEGORIES[(i % 5) as usize].to_string(),
            brand: BRANDS[(i % 4) as usize].to_string(),
            unit_price: format!("{}.{:02}", price_cents / 100, price_cents % 100),
            unit_cost: if with_cost {
                format!("{}.{:04}", price_cents / 200, (x >> 7) % 10_000)
            } else {
                String::new()
            },
            currency: currency.to_string(),
            quantity_on_hand: ((x >> 33) % 500).to_string(),
            units_sold: ((x >> 41) % 60).to_string(),
            business_date: date.to_string(),
            barcode: if i.is_multiple_of(2) {
                gtin13(seed * 1_000_000 + i)
            } else {
                String::new()
            },
            valid: true,
        }
    }

    /// An invalid row; `kind` picks which rule it breaks.
    pub fn invalid(seed: u64, i: u64, currency: &str, date: &str, kind: u64) -> Self {
        let mut r = SampleRow::valid(seed, i, currency, date);
        r.valid = false;
        match kind % 6 {
            0 => r.unit_price = "-3.50".into(),
            1 => r.currency = "EURO".into(),
            2 => r.business_date = "2026-02-30".into(),
            3 => r.barcode = "4006381333932".into(),
            4 => r.unit_price = "12.34567".into(),
            _ => r.sku = "bad sku!".into(),
        }
        r
    }

    pub fn to_csv_line(&self) -> String {
        [
            &self.sku,
            &self.product_name,
            &self.category,
            &self.brand,
            &self.unit_price,
            &self.unit_cost,
            &self.currency,
            &self.quantity_on_hand,
            &self.units_sold,
            &self.business_date,
            &self.barcode,
        ]
        .iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// `n` rows with every `invalid_every`-th row invalid (0: none).
pub fn sample_rows(
    seed: u64,
    n: u64,
    invalid_every: u64,
    currency: &str,
    date: &str,
) -> Vec<SampleRow> {
    (0..n)
        .map(|i| {
            if invalid_every > 0 && i % invalid_every == invalid_every - 1 {
                SampleRow::invalid(seed, i, currency, date, i / invalid_every)
            } else {
                SampleRow::valid(seed, i, currency, date)
            }
        })
        .collect()
}

/// A correction upload: the first `n` valid rows of `rows` with `units_sold` set to `units_sold`.
pub fn corrected_rows(rows: &[SampleRow], n: usize, units_sold: &str) -> Vec<SampleRow> {
    rows.iter()
        .filter(|r| r.valid)
        .take(n)
        .cloned()
        .map(|mut r| {
            r.units_sold = units_sold.into();
            r
        })
        .collect()
}

/// Renders rows as a CSV file; `crlf` picks the line ending, `bom` adds a UTF-8 byte-order mark.
pub fn render_csv(rows: &[SampleRow], crlf: bool, bom: bool) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut out = String::new();
    if bom {
        out.push('\u{feff}');
    }
    out.push_str(HEADER);
    out.push_str(nl);
    for r in rows {
        let _ = write!(out, "{}{nl}", r.to_csv_line());
    }
    out
}

/// Gzips `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// Records as (Kafka key, JSON payload) pairs, as ingest produces them.
pub fn record_messages(records: &[SkuRecord]) -> Vec<(String, Vec<u8>)> {
    records
        .iter()
        .map(|r| (r.kafka_key(), serde_json::to_vec(r).expect("record JSON")))
        .collect()
}

/// The test record: key `i` in `country`, version `version` (its `file_id` too), price derived
/// from both; every optional field empty. Tests change the fields they are about.
pub fn record(country: &str, i: u64, version: i64) -> SkuRecord {
    let modified = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    SkuRecord {
        schema: RECORD_SCHEMA.into(),
        record_id: format!("{:032x}", (i << 20) ^ version as u64),
        record_version: version,
        country: country.into(),
        store_id: format!("store-{}", i % 17),
        store_category: StoreCategory::Individual,
        chain: None,
        sku: format!("SKU-{i}"),
        product_name: format!("Product {i}"),
        category: "grocery".into(),
        brand: None,
        unit_price: Decimal::new((i as i64 % 10_000) * 100 + version % 100, 4),
        unit_cost: None,
        currency: "EUR".into(),
        quantity_on_hand: (i % 100) as i32,
        units_sold: (version % 50) as i32,
        business_date: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        barcode: None,
        file_id: format!("{:032x}", version),
        source_bucket: "skus-test".into(),
        source_key: "incoming/individual/x/2026-11-01/a.csv".into(),
        source_etag: "etag".into(),
        source_line: 2,
        source_last_modified: modified,
        ingested_at: modified,
    }
}

/// A synthetic record for benchmarks: key `i` (distinct SKU per `i`), one country, realistic
/// field lengths, a mix of chains, brands and missing costs.
pub fn synthetic_record(i: u64) -> SkuRecord {
    let t = Utc.with_ymd_and_hms(2026, 11, 1, 6, 0, 0).unwrap();
    SkuRecord {
        schema: RECORD_SCHEMA.into(),
        record_id: format!("{:032x}", i),
        record_version: SkuRecord::version_of(t, i + 2),
        country: "DE".into(),
        store_id: format!("store-{:04}", i % 500),
        store_category: if i.is_multiple_of(3) {
            StoreCategory::Individual
        } else {
            StoreCategory::RetailChain
        },
        chain: (!i.is_multiple_of(3)).then(|| "walmart".to_string()),
        sku: format!("SKU-{i:08}"),
        product_name: format!("Product number {i} in a realistic length name"),
        category: ["dairy", "bakery", "produce", "household"][(i % 4) as usize].into(),
        brand: (i.is_multiple_of(2)).then(|| "Acme".to_string()),
        unit_price: Decimal::new((i % 100_000) as i64 + 99, 2),
        unit_cost: (!i.is_multiple_of(5)).then(|| Decimal::new((i % 50_000) as i64 + 10, 2)),
        currency: "EUR".into(),
        quantity_on_hand: (i % 1000) as i32,
        units_sold: (i % 40) as i32,
        business_date: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        barcode: None,
        file_id: format!("{:032x}", i / 100_000),
        source_bucket: "skus-de".into(),
        source_key: format!("incoming/individual/store-{}/2026-11-01/skus.csv", i % 500),
        source_etag: "\"0123456789abcdef\"".into(),
        source_line: (i + 2) as i64,
        source_last_modified: t,
        ingested_at: t,
    }
}
