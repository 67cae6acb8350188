//! Natural keys repeated within one upload.
//!
//! Every sink keeps one row per (country, store, SKU, business date). When a file holds the same
//! SKU and date more than once, the last such row wins; the earlier rows are rejected with the
//! rule `duplicate_key`, naming a later line with the same key, instead of being produced only to
//! be overwritten in every sink.
//!
//! The first pass keeps, per distinct key, its last line: one 16-byte entry (a 64-bit hash of the
//! key, and the line packed with 24 more bits of a second hash that tell two keys apart should
//! their first hashes collide). Memory grows with the distinct keys only, so a file of millions
//! of copies of one row costs one entry; the rows-per-file limit bounds the rest.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::NaiveDate;
use skuflow_schemas::RejectReason;

/// The rule of a row superseded by a later row of the same file.
pub const DUPLICATE_KEY: &str = "duplicate_key";

const LINE_BITS: u32 = 40;
const LINE_MASK: u64 = (1 << LINE_BITS) - 1;

/// The first pass's view of the file's keys.
#[derive(Debug, Default)]
pub struct KeyTracker {
    hasher: RandomState,
    /// Key hash → the key's last line (low 40 bits) and check bits (high 24).
    last: HashMap<u64, u64>,
    duplicates: u64,
}

impl KeyTracker {
    fn slot(&self, sku: &str, date: NaiveDate) -> (u64, u64) {
        let key = self.hasher.hash_one((sku, date));
        let check = self.hasher.hash_one((date, sku)) >> LINE_BITS;
        (key, check << LINE_BITS)
    }

    /// Notes a valid row; returns the earlier line with the same key, if any.
    pub fn observe(&mut self, line: u64, sku: &str, date: NaiveDate) -> Option<u64> {
        let (key, check) = self.slot(sku, date);
        let packed = check | (line & LINE_MASK);
        match self.last.insert(key, packed) {
            Some(prev) if prev & !LINE_MASK == check => {
                self.duplicates += 1;
                Some(prev & LINE_MASK)
            }
            // Another key with the same 64-bit hash (about one file in 10^7 with a million
            // distinct keys): both are kept, the later one takes the slot.
            _ => None,
        }
    }

    /// Rows superseded by a later row so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// What the second pass needs.
    pub fn finish(self) -> Superseded {
        Superseded(self)
    }
}

/// The last line of every key of a file: any other row with that key is superseded.
#[derive(Debug, Default)]
pub struct Superseded(KeyTracker);

impl Superseded {
    /// The last line with the key of row `line`, when that is another row.
    pub fn by(&self, line: u64, sku: &str, date: NaiveDate) -> Option<u64> {
        let (key, check) = self.0.slot(sku, date);
        match self.0.last.get(&key) {
            Some(&packed) if packed & !LINE_MASK == check && packed & LINE_MASK != line => {
                Some(packed & LINE_MASK)
            }
            _ => None,
        }
    }

    /// Rows superseded.
    pub fn len(&self) -> u64 {
        self.0.duplicates
    }

    pub fn is_empty(&self) -> bool {
        self.0.duplicates == 0
    }
}

/// The reason given for a superseded row.
pub fn reason(sku: &str, date: NaiveDate, by_line: u64) -> RejectReason {
    RejectReason {
        field: Some("sku".into()),
        column: None,
        value: Some(sku.to_string()),
        rule: DUPLICATE_KEY.into(),
        message: format!(
            "SKU {sku} on {date} appears again at line {by_line} of this file; only the last such row is kept"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, day).unwrap()
    }

    #[test]
    fn a_repeated_key_supersedes_every_earlier_line() {
        let mut t = KeyTracker::default();
        assert_eq!(t.observe(2, "A", d(1)), None);
        assert_eq!(t.observe(3, "B", d(1)), None);
        assert_eq!(t.observe(4, "A", d(2)), None, "another day is another key");
        assert_eq!(t.observe(5, "A", d(1)), Some(2));
        assert_eq!(t.observe(9, "A", d(1)), Some(5));
        assert_eq!(t.duplicates(), 2);
        let s = t.finish();
        assert_eq!(s.len(), 2);
        assert_eq!(s.by(2, "A", d(1)), Some(9));
        assert_eq!(s.by(5, "A", d(1)), Some(9));
        assert_eq!(s.by(9, "A", d(1)), None, "the last row is kept");
        assert_eq!(s.by(3, "B", d(1)), None);
        assert_eq!(s.by(4, "A", d(2)), None);
    }

    #[test]
    fn a_million_copies_of_one_row_take_one_entry() {
        let mut t = KeyTracker::default();
        for line in 2..1_000_002 {
            t.observe(line, "SKU-1", d(1));
        }
        assert_eq!(t.duplicates(), 999_999);
        assert_eq!(t.last.len(), 1);
        let s = t.finish();
        assert_eq!(s.by(2, "SKU-1", d(1)), Some(1_000_001));
        assert_eq!(s.by(1_000_001, "SKU-1", d(1)), None);
    }

    #[test]
    fn the_reason_names_the_superseding_line() {
        let r = reason("A-1", d(1), 17);
        assert_eq!(r.rule, DUPLICATE_KEY);
        assert!(r.message.contains("line 17"), "{}", r.message);
    }
}
