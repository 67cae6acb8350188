//! One partition's rows (a country and a business day): the newest record per (store_id, sku),
//! and the derived features computed over the whole partition.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use hashbrown::HashTable;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use skuflow_schemas::{SkuRecord, StoreCategory};

/// A hash of a natural key (store_id, sku) that is the same in every [`FileRows`] and every
/// process run (the index of which file of a day holds a key).
pub fn key_hash(store_id: &str, sku: &str) -> u64 {
    static KEYS: std::sync::LazyLock<ahash::RandomState> = std::sync::LazyLock::new(|| {
        ahash::RandomState::with_seeds(
            0x736b_7566_6c6f_7721,
            0x6b65_7973_2d69_6478,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
        )
    });
    KEYS.hash_one((store_id, sku))
}

/// Train/validation/test ratios, in ten-thousandths of the SKU hash space, and the cut-off
/// dates of the split by time (when given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub train: u32,
    pub validation: u32,
    pub test: u32,
    /// Business days from the first date are `validation`, from the second `test`, earlier ones
    /// `train`: train on the past, test on the future.
    pub time_cutoffs: Option<(NaiveDate, NaiveDate)>,
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
            time_cutoffs: None,
        })
    }

    /// With the split by time `2026-11-01,2026-11-15` (validation from the first date, test
    /// from the second).
    pub fn with_time_split(mut self, s: &str) -> Result<Self, String> {
        let (v, t) = s.split_once(',').ok_or_else(|| {
            format!("time split {s:?}: want validation_from,test_from, e.g. 2026-11-01,2026-11-15")
        })?;
        let day = |d: &str| {
            NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d")
                .map_err(|e| format!("time split {s:?}: {:?} is not a date ({e})", d.trim()))
        };
        let (v, t) = (day(v)?, day(t)?);
        if t < v {
            return Err(format!(
                "time split {s:?}: the test cut-off comes before the validation cut-off"
            ));
        }
        self.time_cutoffs = Some((v, t));
        Ok(self)
    }

    /// The split by time of a business day; `None` without cut-offs.
    pub fn of_day(&self, day: NaiveDate) -> Option<&'static str> {
        let (v, t) = self.time_cutoffs?;
        Some(if day >= t {
            "test"
        } else if day >= v {
            "validation"
        } else {
            "train"
        })
    }

    /// The split of a SKU: stable across runs, countries, days and machines (SHA-256 of the SKU).
    pub fn of(&self, sku: &str) -> &'static str {
        self.of_bucket(Self::bucket(sku))
    }

    /// A SKU's place in the hash space, 0..10,000 (the first 8 bytes of its SHA-256, big-endian,
    /// modulo 10,000).
    pub fn bucket(sku: &str) -> u16 {
        let h = Sha256::digest(sku.as_bytes());
        let mut first = [0; 8];
        first.copy_from_slice(&h[..8]);
        (u64::from_be_bytes(first) % 10_000) as u16
    }

    /// The split of a bucket from [`Split::bucket`].
    pub fn of_bucket(&self, bucket: u16) -> &'static str {
        let bucket = u32::from(bucket);
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

/// Low-cardinality strings of a partition (country, store, category, chain, brand, currency,
/// lineage), each stored once and referred to by index.
#[derive(Debug, Default, Clone)]
struct Dictionary {
    strings: Vec<Box<str>>,
    index: HashTable<u32>,
    /// The last index each field slot resolved to: the fields of one upload repeat row after
    /// row, so most lookups end with one comparison.
    recent: [u32; SLOTS],
}

/// Dictionary fields of a row, as slots of [`Dictionary::recent`].
const SLOTS: usize = 10;
const NONE: u32 = u32::MAX;

impl Dictionary {
    fn get(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    fn intern(&mut self, hasher: &ahash::RandomState, slot: usize, s: &str) -> u32 {
        let last = self.recent[slot];
        if let Some(known) = self.strings.get(last as usize) {
            if **known == *s {
                return last;
            }
        }
        let Dictionary { strings, index, .. } = self;
        let h = hasher.hash_one(s);
        let id = match index.find(h, |&i| *strings[i as usize] == *s) {
            Some(&i) => i,
            None => {
                let i = u32::try_from(strings.len()).expect("under 2^32 distinct strings");
                strings.push(s.into());
                index.insert_unique(h, i, |&j| hasher.hash_one(&*strings[j as usize]));
                i
            }
        };
        self.recent[slot] = id;
        id
    }

    /// The index of `s`, if the dictionary has it.
    fn lookup(&self, hasher: &ahash::RandomState, s: &str) -> Option<u32> {
        let h = hasher.hash_one(s);
        self.index
            .find(h, |&i| *self.strings[i as usize] == *s)
            .copied()
    }

    fn intern_opt(&mut self, hasher: &ahash::RandomState, slot: usize, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.intern(hasher, slot, s))
    }

    /// Rank of every string in byte order, by index.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.strings.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.get(a).cmp(self.get(b)));
        let mut rank = vec![0; order.len()];
        for (r, id) in order.into_iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        rank
    }
}

/// One stored row: numbers inline, low-cardinality strings by dictionary index, and the
/// per-row strings (record_id, sku, product_name, barcode) one after another in the
/// partition's text.
#[derive(Debug, Clone)]
struct Slot {
    record_version: i64,
    source_line: i64,
    /// Start of the row's strings in [`FileRows::text`].
    text: usize,
    /// Lengths of record_id, sku, product_name and barcode.
    lens: [u32; 4],
    unit_price: Decimal,
    unit_cost: Option<Decimal>,
    source_last_modified: DateTime<Utc>,
    ingested_at: DateTime<Utc>,
    business_date: NaiveDate,
    quantity_on_hand: i32,
    units_sold: i32,
    /// Dictionary indices; chain and brand are [`NONE`] when absent.
    country: u32,
    store_id: u32,
    chain: u32,
    category: u32,
    brand: u32,
    currency: u32,
    file_id: u32,
    source_bucket: u32,
    source_key: u32,
    source_etag: u32,
    store_category: StoreCategory,
    has_barcode: bool,
    /// The SKU's split bucket ([`Split::bucket`]); [`NO_BUCKET`] until
    /// [`FileRows::fill_buckets`] computes it.
    bucket: u16,
}

const NO_BUCKET: u16 = u16::MAX;

impl Slot {
    fn text_len(&self) -> usize {
        self.lens.iter().map(|&l| l as usize).sum()
    }

    /// The row's `i`th own string (record_id, sku, product_name, barcode) in the partition's
    /// `text`.
    fn own<'t>(&self, text: &'t str, i: usize) -> &'t str {
        let start = self.text + self.lens[..i].iter().map(|&l| l as usize).sum::<usize>();
        &text[start..start + self.lens[i] as usize]
    }

    /// All of the row's own strings, one after another.
    fn all_own<'t>(&self, text: &'t str) -> &'t str {
        &text[self.text..self.text + self.text_len()]
    }
}

/// The rows of one Parquet file of the dataset (a country's day, or one of its files): the newest
/// record per (store_id, sku), stored compactly: a row is one fixed-size slot plus its own strings
/// in one shared text, with no allocation per field (a million rows take a few hundred MB rather
/// than several GB of small strings).
#[derive(Debug, Default, Clone)]
pub struct FileRows {
    slots: Vec<Slot>,
    text: String,
    /// Bytes of `text` no slot refers to any more (left by replaced rows).
    garbage: usize,
    dict: Dictionary,
    /// (hash of the key, slot index): the hash kept so that growing the table or reordering
    /// the slots never re-reads a row.
    index: HashTable<(u64, u32)>,
    hasher: ahash::RandomState,
    /// Whether the slots are in (store, SKU) order (see [`FileRows::settle`]).
    ordered: bool,
}

/// A view of one row of a [`FileRows`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    part: &'a FileRows,
    slot: &'a Slot,
}

impl<'a> Row<'a> {
    fn own(&self, i: usize) -> &'a str {
        self.slot.own(&self.part.text, i)
    }

    fn dict(&self, id: u32) -> &'a str {
        self.part.dict.get(id)
    }

    fn dict_opt(&self, id: u32) -> Option<&'a str> {
        (id != NONE).then(|| self.part.dict.get(id))
    }

    pub fn record_id(&self) -> &'a str {
        self.own(0)
    }
    pub fn sku(&self) -> &'a str {
        self.own(1)
    }
    pub fn product_name(&self) -> &'a str {
        self.own(2)
    }
    pub fn barcode(&self) -> Option<&'a str> {
        self.slot.has_barcode.then(|| self.own(3))
    }
    pub fn country(&self) -> &'a str {
        self.dict(self.slot.country)
    }
    pub fn store_id(&self) -> &'a str {
        self.dict(self.slot.store_id)
    }
    pub fn store_category(&self) -> StoreCategory {
        self.slot.store_category
    }
    pub fn chain(&self) -> Option<&'a str> {
        self.dict_opt(self.slot.chain)
    }
    pub fn category(&self) -> &'a str {
        self.dict(self.slot.category)
    }
    pub fn brand(&self) -> Option<&'a str> {
        self.dict_opt(self.slot.brand)
    }
    pub fn currency(&self) -> &'a str {
        self.dict(self.slot.currency)
    }
    pub fn file_id(&self) -> &'a str {
        self.dict(self.slot.file_id)
    }
    pub fn source_bucket(&self) -> &'a str {
        self.dict(self.slot.source_bucket)
    }
    pub fn source_key(&self) -> &'a str {
        self.dict(self.slot.source_key)
    }
    pub fn source_etag(&self) -> &'a str {
        self.dict(self.slot.source_etag)
    }
    pub fn record_version(&self) -> i64 {
        self.slot.record_version
    }
    pub fn unit_price(&self) -> Decimal {
        self.slot.unit_price
    }
    pub fn unit_cost(&self) -> Option<Decimal> {
        self.slot.unit_cost
    }
    pub fn quantity_on_hand(&self) -> i32 {
        self.slot.quantity_on_hand
    }
    pub fn units_sold(&self) -> i32 {
        self.slot.units_sold
    }
    pub fn business_date(&self) -> NaiveDate {
        self.slot.business_date
    }
    pub fn source_line(&self) -> i64 {
        self.slot.source_line
    }
    pub fn source_last_modified(&self) -> DateTime<Utc> {
        self.slot.source_last_modified
    }
    pub fn ingested_at(&self) -> DateTime<Utc> {
        self.slot.ingested_at
    }
    /// The SKU's split bucket ([`Split::bucket`]).
    pub fn bucket(&self) -> u16 {
        match self.slot.bucket {
            NO_BUCKET => Split::bucket(self.sku()),
            b => b,
        }
    }

    /// The row as the record it was built from.
    pub fn to_record(&self) -> SkuRecord {
        SkuRecord {
            schema: skuflow_schemas::RECORD_SCHEMA.to_string(),
            record_id: self.record_id().to_string(),
            record_version: self.record_version(),
            country: self.country().to_string(),
            store_id: self.store_id().to_string(),
            store_category: self.store_category(),
            chain: self.chain().map(str::to_string),
            sku: self.sku().to_string(),
            product_name: self.product_name().to_string(),
            category: self.category().to_string(),
            brand: self.brand().map(str::to_string),
            unit_price: self.unit_price(),
            unit_cost: self.unit_cost(),
            currency: self.currency().to_string(),
            quantity_on_hand: self.quantity_on_hand(),
            units_sold: self.units_sold(),
            business_date: self.business_date(),
            barcode: self.barcode().map(str::to_string),
            file_id: self.file_id().to_string(),
            source_bucket: self.source_bucket().to_string(),
            source_key: self.source_key().to_string(),
            source_etag: self.source_etag().to_string(),
            source_line: self.source_line(),
            source_last_modified: self.source_last_modified(),
            ingested_at: self.ingested_at(),
        }
    }
}

impl FileRows {
    /// Room for `n` records without growing.
    pub fn with_capacity(n: usize) -> Self {
        FileRows {
            slots: Vec::with_capacity(n),
            index: HashTable::with_capacity(n),
            ..FileRows::default()
        }
    }

    fn hash(hasher: &ahash::RandomState, store_id: u32, sku: &str) -> u64 {
        hasher.hash_one((store_id, sku))
    }

    fn row(&self, i: usize) -> Row<'_> {
        Row {
            part: self,
            slot: &self.slots[i],
        }
    }

    /// Keeps `r` when it is newer than what the partition holds for its key. Returns whether it
    /// changed anything.
    pub fn upsert(&mut self, r: &SkuRecord) -> bool {
        let store_id = self.dict.intern(&self.hasher, 0, &r.store_id);
        let h = Self::hash(&self.hasher, store_id, &r.sku);
        let replaced = match self.position(h, store_id, &r.sku) {
            Some(i) if self.slots[i].record_version >= r.record_version => return false,
            found => found,
        };
        let slot = self.slot_of(r, store_id);
        match replaced {
            Some(i) => {
                self.garbage += self.slots[i].text_len();
                self.slots[i] = slot;
                if self.garbage > (1 << 20) && self.garbage > self.text.len() / 2 {
                    self.compact_text();
                }
            }
            None => {
                let i = u32::try_from(self.slots.len()).expect("a partition holds under 2^32 rows");
                self.slots.push(slot);
                self.index.insert_unique(h, (h, i), |&(h, _)| h);
                self.ordered = false;
            }
        }
        true
    }

    /// The slot of the key (`store_id` as a dictionary index), `h` its hash.
    fn position(&self, h: u64, store_id: u32, sku: &str) -> Option<usize> {
        self.index
            .find(h, |&(_, i)| {
                let o = self.row(i as usize);
                o.slot.store_id == store_id && o.sku() == sku
            })
            .map(|&(_, i)| i as usize)
    }

    /// Whether the partition has a row (of any version) for `r`'s (store_id, sku).
    pub fn holds(&self, r: &SkuRecord) -> bool {
        self.get(&r.store_id, &r.sku).is_some()
    }

    /// The row of (store_id, sku), if the partition has one.
    pub fn get(&self, store_id: &str, sku: &str) -> Option<Row<'_>> {
        let id = self.dict.lookup(&self.hasher, store_id)?;
        let h = Self::hash(&self.hasher, id, sku);
        self.position(h, id, sku).map(|i| self.row(i))
    }

    /// A slot for `r`, its own strings appended to the text.
    fn slot_of(&mut self, r: &SkuRecord, store_id: u32) -> Slot {
        let start = self.text.len();
        let barcode = r.barcode.as_deref().unwrap_or("");
        for s in [&r.record_id, &r.sku, &r.product_name] {
            self.text.push_str(s);
        }
        self.text.push_str(barcode);
        let len = |s: &str| u32::try_from(s.len()).expect("a field under 4 GiB");
        let (d, h) = (&mut self.dict, &self.hasher);
        Slot {
            record_version: r.record_version,
            source_line: r.source_line,
            text: start,
            lens: [
                len(&r.record_id),
                len(&r.sku),
                len(&r.product_name),
                len(barcode),
            ],
            unit_price: r.unit_price,
            unit_cost: r.unit_cost,
            source_last_modified: r.source_last_modified,
            ingested_at: r.ingested_at,
            business_date: r.business_date,
            quantity_on_hand: r.quantity_on_hand,
            units_sold: r.units_sold,
            country: d.intern(h, 1, &r.country),
            store_id,
            chain: d.intern_opt(h, 2, r.chain.as_deref()),
            category: d.intern(h, 3, &r.category),
            brand: d.intern_opt(h, 4, r.brand.as_deref()),
            currency: d.intern(h, 5, &r.currency),
            file_id: d.intern(h, 6, &r.file_id),
            source_bucket: d.intern(h, 7, &r.source_bucket),
            source_key: d.intern(h, 8, &r.source_key),
            source_etag: d.intern(h, 9, &r.source_etag),
            store_category: r.store_category,
            has_barcode: r.barcode.is_some(),
            bucket: NO_BUCKET,
        }
    }

    /// Room for `n` more rows without growing.
    pub fn reserve(&mut self, n: usize) {
        self.slots.reserve(n);
        self.index.reserve(n, |&(h, _)| h);
    }

    /// Readies the partition for reading after a merge: the split buckets upserts left for
    /// later, and the rows in (store, SKU) order (moved in place), so that building the
    /// file's columns reads memory in sequence rather than one row here and one there.
    pub fn settle(&mut self) {
        self.fill_buckets();
        self.order();
    }

    fn order(&mut self) {
        if self.ordered {
            return;
        }
        // In place, one cycle of the permutation at a time: no second copy of the rows.
        let mut order = self.sorted_indices();
        let mut moved_to = vec![0u32; order.len()];
        for (to, &from) in order.iter().enumerate() {
            moved_to[from as usize] = to as u32;
        }
        const DONE: u32 = u32::MAX;
        for start in 0..order.len() {
            let mut at = start;
            while order[at] != DONE {
                let from = order[at] as usize;
                order[at] = DONE;
                if from == start {
                    break;
                }
                self.slots.swap(at, from);
                at = from;
            }
        }
        for (_, i) in self.index.iter_mut() {
            *i = moved_to[*i as usize];
        }
        self.ordered = true;
    }

    /// Slot indices in (store, SKU) order. Keys are unique within a partition, so an unstable
    /// sort gives one order; stores compare by their rank among the partition's strings.
    fn sorted_indices(&self) -> Vec<u32> {
        let rank = self.dict.ranks();
        let mut order: Vec<(u32, &str, u32)> = self
            .rows()
            .enumerate()
            .map(|(i, r)| (rank[r.slot.store_id as usize], r.sku(), i as u32))
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    /// Computes the split bucket (a SHA-256) of every row that has none yet, on every core:
    /// upserts leave it for later so that the single-threaded merge stays short.
    fn fill_buckets(&mut self) {
        let FileRows { slots, text, .. } = self;
        let text = text.as_str();
        let fill = |chunk: &mut [Slot]| {
            for s in chunk.iter_mut().filter(|s| s.bucket == NO_BUCKET) {
                s.bucket = Split::bucket(s.own(text, 1));
            }
        };
        skuflow_platform::parallel::for_each_chunk_mut(slots, 16 * 1024, fill);
    }

    /// Drops the text of replaced rows.
    fn compact_text(&mut self) {
        let mut text = String::with_capacity(self.text.len() - self.garbage);
        for s in &mut self.slots {
            let start = text.len();
            text.push_str(s.all_own(&self.text));
            s.text = start;
        }
        self.text = text;
        self.garbage = 0;
    }

    /// The rows, one per key, in no particular order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = Row<'_>> + Clone {
        self.slots.iter().map(move |slot| Row { part: self, slot })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Rows in a stable order (store, SKU), with their features; medians over this partition.
    pub fn featured(&self, split: Split) -> Vec<Featured<'_>> {
        let medians = category_medians(self.rows());
        self.featured_with(
            |category| medians.get(category).copied(),
            |_| History::default(),
            split,
        )
    }

    /// Rows in a stable order (store, SKU), with their features (on every core; in place
    /// after [`FileRows::settle`]); `median_of` gives a category's median unit price (over
    /// whatever rows the caller chose, e.g. a whole day).
    pub fn featured_with<'a>(
        &'a self,
        median_of: impl Fn(&str) -> Option<Decimal> + Sync,
        history_of: impl Fn(&Row<'_>) -> History + Sync,
        split: Split,
    ) -> Vec<Featured<'a>> {
        // The category medians, looked up once per category rather than per row.
        let medians: Vec<Option<Decimal>> =
            self.dict.strings.iter().map(|s| median_of(s)).collect();
        let order: Vec<u32> = if self.ordered {
            (0..self.slots.len() as u32).collect()
        } else {
            self.sorted_indices()
        };
        // Then the features on every core.
        let feature = |chunk: &[u32]| -> Vec<Featured<'a>> {
            chunk
                .iter()
                .map(|&i| {
                    let r = self.row(i as usize);
                    let history = history_of(&r);
                    Featured::of(r, medians[r.slot.category as usize], split).with_history(history)
                })
                .collect()
        };
        let mut parts = skuflow_platform::parallel::map_chunks(&order, 16 * 1024, feature);
        if parts.len() == 1 {
            return parts.pop().unwrap_or_default();
        }
        let mut all = Vec::with_capacity(order.len());
        for p in parts {
            all.extend(p);
        }
        all
    }
}

/// A row and its derived features.
#[derive(Debug, Clone)]
pub struct Featured<'a> {
    pub row: Row<'a>,
    /// unit_price − unit_cost, when the cost is known.
    pub gross_margin: Option<Decimal>,
    /// gross_margin / unit_price, when both are known and the price is not zero.
    pub margin_pct: Option<f64>,
    /// quantity_on_hand / units_sold, when something sold.
    pub days_of_cover: Option<f64>,
    /// unit_price / the median unit_price of the category in this country on the day before.
    pub price_rel_prev_day_category_median: Option<f64>,
    pub split: &'static str,
    /// The split by time of the row's business day, when cut-offs are configured.
    pub time_split: Option<&'static str>,
    /// What the key sold and cost on earlier days.
    pub history: History,
}

/// Days of history the history features look back.
pub const HISTORY_DAYS: i64 = 28;

/// What a (country, store, SKU) sold and cost on the days before a row's business day: point in
/// time, nothing from the row's day or later. Days the key has no row on are missing, not zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct History {
    /// units_sold on the day before.
    pub units_sold_prev_day: Option<i32>,
    /// units_sold on the same weekday a week before.
    pub units_sold_prev_week: Option<i32>,
    /// Mean units_sold over the rows of the 7 days before.
    pub units_sold_mean_7d: Option<f64>,
    /// Mean units_sold over the rows of the 28 days before.
    pub units_sold_mean_28d: Option<f64>,
    /// Days since unit_price last changed, over the rows of the 28 days before and the row's
    /// own price: 0 when it changed on the row's day; null when it did not change in that window.
    pub days_since_price_change: Option<i32>,
}

impl History {
    /// The history of a row of `day` at `price` from the key's earlier rows `past`
    /// (day, units_sold, unit_price), in any order; rows of `day` or later are ignored.
    pub fn of(day: NaiveDate, price: Decimal, past: &[(NaiveDate, i32, Decimal)]) -> History {
        let mut window: Vec<&(NaiveDate, i32, Decimal)> = past
            .iter()
            .filter(|(d, _, _)| *d < day && (day - *d).num_days() <= HISTORY_DAYS)
            .collect();
        window.sort_by_key(|e| std::cmp::Reverse(e.0));
        let on = |back: i64| {
            window
                .iter()
                .find(|(d, _, _)| (day - *d).num_days() == back)
                .map(|(_, u, _)| *u)
        };
        let mean = |days: i64| {
            let sold: Vec<i32> = window
                .iter()
                .filter(|(d, _, _)| (day - *d).num_days() <= days)
                .map(|(_, u, _)| *u)
                .collect();
            (!sold.is_empty())
                .then(|| sold.iter().map(|u| f64::from(*u)).sum::<f64>() / sold.len() as f64)
        };
        // The current price's unbroken run back from the row's day: where it started.
        let mut start = day;
        let mut days_since_price_change = None;
        for (d, _, p) in &window {
            if *p != price {
                days_since_price_change = Some((day - start).num_days() as i32);
                break;
            }
            start = *d;
        }
        History {
            units_sold_prev_day: on(1),
            units_sold_prev_week: on(7),
            units_sold_mean_7d: mean(7),
            units_sold_mean_28d: mean(HISTORY_DAYS),
            days_since_price_change,
        }
    }
}

impl<'a> Featured<'a> {
    pub fn of(r: Row<'a>, category_median: Option<Decimal>, split: Split) -> Self {
        let (price, sold) = (r.unit_price(), r.units_sold());
        let gross_margin = r.unit_cost().map(|c| price - c);
        // Ratios are float features: divide the exact values' nearest doubles (a relative
        // error near 1e-16) rather than paying for a 96-bit decimal division per row.
        let ratio = |num: Decimal, den: Decimal| {
            (!den.is_zero())
                .then(|| Some(num.to_f64()? / den.to_f64()?))
                .flatten()
        };
        let margin_pct = gross_margin.and_then(|m| ratio(m, price));
        let days_of_cover = (sold > 0).then(|| f64::from(r.quantity_on_hand()) / f64::from(sold));
        let price_rel_prev_day_category_median = category_median.and_then(|m| ratio(price, m));
        Featured {
            row: r,
            gross_margin,
            margin_pct,
            days_of_cover,
            price_rel_prev_day_category_median,
            split: split.of_bucket(r.bucket()),
            time_split: split.of_day(r.business_date()),
            history: History::default(),
        }
    }

    pub fn with_history(mut self, history: History) -> Self {
        self.history = history;
        self
    }
}

/// Median unit price per category (the mean of the two middle prices for an even count).
pub fn category_medians<'a>(rows: impl Iterator<Item = Row<'a>>) -> HashMap<&'a str, Decimal> {
    let mut by: BTreeMap<&str, Vec<Decimal>> = BTreeMap::new();
    for r in rows {
        by.entry(r.category()).or_default().push(r.unit_price());
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
        let mut r = skuflow_samples::record("SE", 0, version);
        r.store_id = store.into();
        r.sku = sku.into();
        r.category = cat.into();
        r.unit_price = price.parse().unwrap();
        r.unit_cost = cost.map(|c| c.parse().unwrap());
        r.currency = "SEK".into();
        (r.quantity_on_hand, r.units_sold) = (9, 2);
        r
    }

    #[test]
    fn rows_come_back_as_the_newest_records_through_replacements_and_compaction() {
        // Every field varies (absent options, escapes, multi-byte text); each key is replaced
        // several times, which leaves more than 1 MiB of replaced text and compacts it.
        let mut p = FileRows::default();
        let mut newest: HashMap<(String, String), SkuRecord> = HashMap::new();
        let mut appended = 0;
        for round in 1..=6i64 {
            for i in 0..3000u32 {
                let mut r = rec(
                    &format!("store-{}", i % 7),
                    &format!("SKU-{i}-ü"),
                    round,
                    &format!("{}.{:02}", i, round),
                    (i % 3 != 0).then_some("0.5"),
                    ["dairy", "bakery", "ä \"q\""][(i % 3) as usize],
                );
                r.product_name = format!("Product {i} round {round} {}", "x".repeat(100));
                r.chain = (i % 2 == 0).then(|| format!("chain-{round}"));
                r.brand = (i % 5 == 0).then(|| "Acme 日本".to_string());
                r.barcode = (i % 4 == 0).then(|| format!("{:013}", i));
                r.file_id = format!("file-{round}");
                r.source_line = i64::from(i) + 2;
                assert!(p.upsert(&r));
                appended += r.record_id.len()
                    + r.sku.len()
                    + r.product_name.len()
                    + r.barcode.as_ref().map_or(0, String::len);
                newest.insert((r.store_id.clone(), r.sku.clone()), r);
            }
        }
        assert_eq!(p.len(), 3000);
        let live: usize = p.slots.iter().map(Slot::text_len).sum();
        assert_eq!(p.text.len(), live + p.garbage);
        assert!(
            p.text.len() < appended / 2,
            "replaced text was dropped: {} of {appended} bytes kept",
            p.text.len()
        );
        for row in p.rows() {
            let want = &newest[&(row.store_id().to_string(), row.sku().to_string())];
            assert_eq!(&row.to_record(), want);
        }
        // An older or equal version changes nothing, including after compaction.
        let stale = rec("store-1", "SKU-1-ü", 6, "99", None, "dairy");
        assert!(!p.upsert(&stale));
        let one = p.rows().find(|r| r.sku() == "SKU-1-ü").unwrap().to_record();
        assert_eq!(one, newest[&("store-1".to_string(), "SKU-1-ü".to_string())]);
        let before = p.featured(Split::default());
        let before: Vec<SkuRecord> = before.iter().map(|f| f.row.to_record()).collect();
        p.settle();
        for row in p.rows() {
            assert_eq!(row.slot.bucket, Split::bucket(row.sku()));
        }
        let after: Vec<SkuRecord> = p.rows().map(|r| r.to_record()).collect();
        assert_eq!(after, before, "settled rows are in (store, SKU) order");
        // The index follows the rows: every key is still found, and replaced in place.
        for (i, want) in before.iter().enumerate() {
            let mut newer = want.clone();
            newer.record_version += 1;
            assert!(p.upsert(&newer));
            assert_eq!(p.len(), 3000);
            assert_eq!(p.rows().nth(i).unwrap().to_record(), newer);
        }
    }

    #[test]
    fn newest_version_wins_either_order() {
        let mut p = FileRows::default();
        assert!(p.upsert(&rec("s", "A", 2, "2.00", None, "x")));
        assert!(
            !p.upsert(&rec("s", "A", 1, "1.00", None, "x")),
            "older loses"
        );
        assert!(
            !p.upsert(&rec("s", "A", 2, "9.00", None, "x")),
            "a replay changes nothing"
        );
        assert!(p.upsert(&rec("s", "A", 3, "3.00", None, "x")));
        assert_eq!(p.len(), 1);
        assert_eq!(p.rows().next().unwrap().unit_price(), Decimal::new(300, 2));
    }

    #[test]
    fn features_are_exact_where_money_and_defined_where_not() {
        let mut p = FileRows::default();
        p.upsert(&rec("s", "A", 1, "10.00", Some("6.00"), "dairy"));
        p.upsert(&rec("s", "B", 1, "20.00", None, "dairy"));
        p.upsert(&rec("s", "C", 1, "40.00", None, "dairy"));
        p.upsert(&rec("s", "D", 1, "0", Some("1"), "toys"));
        let f = p.featured(Split::default());
        let a = &f[0];
        assert_eq!(a.row.sku(), "A");
        assert_eq!(a.gross_margin, Some(Decimal::new(400, 2)));
        assert_eq!(a.margin_pct, Some(0.4));
        assert_eq!(a.days_of_cover, Some(4.5));
        assert_eq!(
            a.price_rel_prev_day_category_median,
            Some(0.5),
            "median of 10, 20, 40 is 20"
        );
        assert_eq!(f[1].gross_margin, None);
        assert_eq!(f[1].margin_pct, None);
        let d = &f[3];
        assert_eq!(d.gross_margin, Some(Decimal::from(-1)));
        assert_eq!(d.margin_pct, None, "no ratio over a zero price");
        assert_eq!(
            d.price_rel_prev_day_category_median, None,
            "median price zero"
        );
    }

    #[test]
    fn history_looks_only_back_and_at_most_28_days() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let p = |c: i64| Decimal::new(c, 2);
        let day = d("2026-11-30");
        let past = [
            (d("2026-11-29"), 4, p(100)),
            (d("2026-11-28"), 2, p(100)),
            (d("2026-11-23"), 6, p(100)),
            (d("2026-11-20"), 9, p(90)),
            (d("2026-11-01"), 100, p(90)),
            // Not the past: the row's own day and later.
            (d("2026-11-30"), 1000, p(1)),
            (d("2026-12-01"), 1000, p(1)),
        ];
        let h = History::of(day, p(100), &past);
        assert_eq!(h.units_sold_prev_day, Some(4));
        assert_eq!(h.units_sold_prev_week, Some(6));
        assert_eq!(h.units_sold_mean_7d, Some(4.0));
        assert_eq!(
            h.units_sold_mean_28d,
            Some(21.0 / 4.0),
            "2026-11-01 is 29 days back"
        );
        // 100 since the 23rd (the 20th was 90): 7 days.
        assert_eq!(h.days_since_price_change, Some(7));
        // A new price on the row's day: 0.
        assert_eq!(
            History::of(day, p(120), &past).days_since_price_change,
            Some(0)
        );
        // No earlier row: nothing known.
        assert_eq!(History::of(day, p(100), &[]), History::default());
        // One price all along: no change in the window.
        let flat = [(d("2026-11-29"), 1, p(100))];
        assert_eq!(
            History::of(day, p(100), &flat).days_since_price_change,
            None
        );
    }

    #[test]
    fn splits_are_stable_and_near_their_ratios() {
        let s = Split::default();
        assert_eq!(
            s,
            Split {
                train: 8000,
                validation: 1000,
                test: 1000,
                time_cutoffs: None,
            }
        );
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let t = s.with_time_split("2026-11-10, 2026-11-20").unwrap();
        assert_eq!(t.of_day(d("2026-11-09")), Some("train"));
        assert_eq!(t.of_day(d("2026-11-10")), Some("validation"));
        assert_eq!(t.of_day(d("2026-11-19")), Some("validation"));
        assert_eq!(t.of_day(d("2026-11-20")), Some("test"));
        assert_eq!(s.of_day(d("2026-11-20")), None);
        for bad in ["2026-11-20", "2026-11-20,2026-11-10", "x,2026-11-10"] {
            assert!(s.with_time_split(bad).is_err(), "{bad}");
        }
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
