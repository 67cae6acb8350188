//! One partition's rows (a country and a business day): the newest record per (store_id, sku),
//! and the derived features computed over the whole partition.

use std::collections::{BTreeMap, HashMap};

use hashbrown::HashTable;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use skuflow_schemas::SkuRecord;

/// Train/validation/test ratios, in ten-thousandths of the SKU hash space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub train: u32,
    pub validation: u32,
    pub test: u32,
}

impl Split {
    /// Parses `80/10/10` (percentages or any positive weights).
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 3 {
            return Err(format!(
                "split {s:?}: want train/validation/test, e.g. 80/10/10"
            ));
        }
        let n: Vec<u32> = parts
            .iter()
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("split {s:?}: {e}"))?;
        let total: u32 = n.iter().sum();
        if total == 0 {
            return Err(format!("split {s:?}: weights sum to zero"));
        }
        let scale = |w: u32| (u64::from(w) * 10_000 / u64::from(total)) as u32;
        let train = scale(n[0]);
        let validation = scale(n[1]);
        Ok(Split {
            train,
            validation,
            test: 10_000 - train - validation,
        })
    }

    /// The split of a SKU: stable across runs, countries, days and machines (SHA-256 of the SKU).
    pub fn of(&self, sku: &str) -> &'static str {
        let h = Sha256::digest(sku.as_bytes());
        let bucket = (u64::from_be_bytes(h[..8].try_into().unwrap()) % 10_000) as u32;
        if bucket < self.train {
            "train"
        } else if bucket < self.train + self.validation {
            "validation"
        } else {
            "test"
        }
    }
}

impl Default for Split {
    fn default() -> Self {
        Split::parse("80/10/10").unwrap()
    }
}

/// The newest record per (store_id, sku) of one partition: the records in one vector (no
/// per-key copies of the key strings), found through a table of their indices.
#[derive(Debug, Default, Clone)]
pub struct Partition {
    records: Vec<SkuRecord>,
    index: HashTable<u32>,
    hasher: ahash::RandomState,
}

impl Partition {
    /// Room for `n` records without growing.
    pub fn with_capacity(n: usize) -> Self {
        Partition {
            records: Vec::with_capacity(n),
            index: HashTable::with_capacity(n),
            hasher: ahash::RandomState::new(),
        }
    }

    fn hash(hasher: &ahash::RandomState, store_id: &str, sku: &str) -> u64 {
        hasher.hash_one((store_id, sku))
    }

    /// Keeps `r` when it is newer than what the partition holds for its key. Returns whether it
    /// changed anything.
    pub fn upsert(&mut self, r: SkuRecord) -> bool {
        let Partition {
            records,
            index,
            hasher,
        } = self;
        let h = Self::hash(hasher, &r.store_id, &r.sku);
        let found = index.find(h, |&i| {
            let o = &records[i as usize];
            o.sku == r.sku && o.store_id == r.store_id
        });
        match found {
            Some(&i) => {
                let old = &mut records[i as usize];
                if old.record_version >= r.record_version {
                    return false;
                }
                *old = r;
                true
            }
            None => {
                let i = u32::try_from(records.len()).expect("a partition holds under 2^32 rows");
                records.push(r);
                index.insert_unique(h, i, |&j| {
                    let o = &records[j as usize];
                    Self::hash(hasher, &o.store_id, &o.sku)
                });
                true
            }
        }
    }

    /// The records, one per key, in no particular order.
    pub fn records(&self) -> &[SkuRecord] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Rows in a stable order (store, SKU), with their features; medians over this partition.
    pub fn featured(&self, split: Split) -> Vec<Featured<'_>> {
        let medians = category_medians(self.records.iter());
        self.featured_with(|category| medians.get(category).copied(), split)
    }

    /// Rows in a stable order (store, SKU), with their features; `median_of` gives a
    /// category's median unit price (over whatever rows the caller chose, e.g. a whole day).
    pub fn featured_with<'a>(
        &'a self,
        median_of: impl Fn(&str) -> Option<Decimal> + Sync,
        split: Split,
    ) -> Vec<Featured<'a>> {
        // Features on every core (a SHA-256 and a few divisions per row), then one order.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.records.len().div_ceil(threads).max(1024);
        let median_of = &median_of;
        let feature = |chunk: &'a [SkuRecord]| -> Vec<Featured<'a>> {
            chunk
                .iter()
                .map(|r| Featured::of(r, median_of(&r.category), split))
                .collect()
        };
        let mut out: Vec<Featured<'a>> = if self.records.len() <= per {
            // One chunk: no thread for it.
            feature(&self.records)
        } else {
            std::thread::scope(|scope| {
                let parts: Vec<_> = self
                    .records
                    .chunks(per)
                    .map(|chunk| scope.spawn(move || feature(chunk)))
                    .collect();
                let mut all = Vec::with_capacity(self.records.len());
                for p in parts {
                    all.extend(p.join().expect("a feature thread panicked"));
                }
                all
            })
        };
        // Keys are unique within a partition, so an unstable sort gives one order.
        out.sort_unstable_by(|a, b| {
            (&a.record.store_id, &a.record.sku).cmp(&(&b.record.store_id, &b.record.sku))
        });
        out
    }
}

/// A row and its derived features.
#[derive(Debug, Clone)]
pub struct Featured<'a> {
    pub record: &'a SkuRecord,
    /// unit_price − unit_cost, when the cost is known.
    pub gross_margin: Option<Decimal>,
    /// gross_margin / unit_price, when both are known and the price is not zero.
    pub margin_pct: Option<f64>,
    /// quantity_on_hand / units_sold, when something sold.
    pub days_of_cover: Option<f64>,
    /// unit_price / the median unit_price of the category in this country and day.
    pub price_rel_category_median: Option<f64>,
    pub split: &'static str,
}

impl<'a> Featured<'a> {
    pub fn of(r: &'a SkuRecord, category_median: Option<Decimal>, split: Split) -> Self {
        let gross_margin = r.unit_cost.map(|c| r.unit_price - c);
        // Ratios are float features: divide the exact values' nearest doubles (a relative
        // error near 1e-16) rather than paying for a 96-bit decimal division per row.
        let ratio = |num: Decimal, den: Decimal| {
            (!den.is_zero())
                .then(|| Some(num.to_f64()? / den.to_f64()?))
                .flatten()
        };
        let margin_pct = gross_margin.and_then(|m| ratio(m, r.unit_price));
        let days_of_cover =
            (r.units_sold > 0).then(|| f64::from(r.quantity_on_hand) / f64::from(r.units_sold));
        let price_rel_category_median = category_median.and_then(|m| ratio(r.unit_price, m));
        Featured {
            record: r,
            gross_margin,
            margin_pct,
            days_of_cover,
            price_rel_category_median,
            split: split.of(&r.sku),
        }
    }
}

/// Median unit price per category (the mean of the two middle prices for an even count).
pub fn category_medians<'a>(
    rows: impl Iterator<Item = &'a SkuRecord>,
) -> HashMap<&'a str, Decimal> {
    let mut by: BTreeMap<&str, Vec<Decimal>> = BTreeMap::new();
    for r in rows {
        by.entry(r.category.as_str())
            .or_default()
            .push(r.unit_price);
    }
    by.into_iter()
        .map(|(c, mut v)| {
            v.sort_unstable();
            let n = v.len();
            let m = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / Decimal::TWO
            };
            (c, m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        store: &str,
        sku: &str,
        version: i64,
        price: &str,
        cost: Option<&str>,
        cat: &str,
    ) -> SkuRecord {
        let v = serde_json::json!({
            "schema": skuflow_schemas::RECORD_SCHEMA,
            "record_id": "0123456789abcdef0123456789abcdef", "record_version": version,
            "country": "SE", "store_id": store, "store_category": "individual", "chain": null,
            "sku": sku, "product_name": "p", "category": cat, "brand": null,
            "unit_price": price, "unit_cost": cost, "currency": "SEK",
            "quantity_on_hand": 9, "units_sold": 2, "business_date": "2026-11-01",
            "barcode": null, "file_id": "f", "source_bucket": "b", "source_key": "k",
            "source_etag": "e", "source_line": 2,
            "source_last_modified": "2026-11-01T00:00:00Z", "ingested_at": "2026-11-01T00:00:00Z"
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn newest_version_wins_either_order() {
        let mut p = Partition::default();
        assert!(p.upsert(rec("s", "A", 2, "2.00", None, "x")));
        assert!(
            !p.upsert(rec("s", "A", 1, "1.00", None, "x")),
            "older loses"
        );
        assert!(
            !p.upsert(rec("s", "A", 2, "9.00", None, "x")),
            "a replay changes nothing"
        );
        assert!(p.upsert(rec("s", "A", 3, "3.00", None, "x")));
        assert_eq!(p.len(), 1);
        assert_eq!(p.records()[0].unit_price, Decimal::new(300, 2));
    }

    #[test]
    fn features_are_exact_where_money_and_defined_where_not() {
        let mut p = Partition::default();
        p.upsert(rec("s", "A", 1, "10.00", Some("6.00"), "dairy"));
        p.upsert(rec("s", "B", 1, "20.00", None, "dairy"));
        p.upsert(rec("s", "C", 1, "40.00", None, "dairy"));
        p.upsert(rec("s", "D", 1, "0", Some("1"), "toys"));
        let f = p.featured(Split::default());
        let a = &f[0];
        assert_eq!(a.record.sku, "A");
        assert_eq!(a.gross_margin, Some(Decimal::new(400, 2)));
        assert_eq!(a.margin_pct, Some(0.4));
        assert_eq!(a.days_of_cover, Some(4.5));
        assert_eq!(
            a.price_rel_category_median,
            Some(0.5),
            "median of 10, 20, 40 is 20"
        );
        assert_eq!(f[1].gross_margin, None);
        assert_eq!(f[1].margin_pct, None);
        let d = &f[3];
        assert_eq!(d.gross_margin, Some(Decimal::from(-1)));
        assert_eq!(d.margin_pct, None, "no ratio over a zero price");
        assert_eq!(d.price_rel_category_median, None, "median price zero");
    }

    #[test]
    fn splits_are_stable_and_near_their_ratios() {
        let s = Split::default();
        assert_eq!(
            s,
            Split {
                train: 8000,
                validation: 1000,
                test: 1000
            }
        );
        assert_eq!(s.of("SKU-1"), s.of("SKU-1"));
        let mut n: HashMap<&str, u32> = HashMap::new();
        for i in 0..20_000 {
            *n.entry(s.of(&format!("SKU-{i}"))).or_default() += 1;
        }
        assert!((15_600..16_400).contains(&n["train"]), "{n:?}");
        assert!((1_800..2_200).contains(&n["validation"]), "{n:?}");
        assert!((1_800..2_200).contains(&n["test"]), "{n:?}");
        assert_eq!(Split::parse("70/20/10").unwrap().validation, 2000);
        assert!(Split::parse("80/20").is_err());
        assert!(Split::parse("0/0/0").is_err());
        assert!(Split::parse("a/b/c").is_err());
    }
}
