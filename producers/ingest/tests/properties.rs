//! Property tests (a bounded fuzz run in `make test`; `make fuzz` runs many more cases): the
//! CSV reader, the row contract, decompression and the key/metadata parser never panic on any
//! input, and accept exactly what they should.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256).

use std::collections::HashMap;
use std::io::Read;

use proptest::prelude::*;
use skuflow_ingest::contract::{validate_row, HeaderMap};
use skuflow_ingest::csvstream::{Limits, RecordReader};
use skuflow_ingest::metadata::{check_key, resolve, KeyTemplate};
use skuflow_ingest::reader;

/// The contract's columns, in the order the sample files use.
fn header() -> Vec<&'static str> {
    skuflow_e2e::HEADER.split(',').collect()
}

type Records = Vec<(u64, Vec<Vec<u8>>)>;

/// Reads every record of `bytes`: (line, fields) pairs, and the I/O error that ended it, if any.
fn read_all(bytes: &[u8], limits: Limits) -> (Records, Option<String>) {
    let mut r = RecordReader::new(bytes, limits);
    let mut out = Vec::new();
    loop {
        match r.next_record() {
            Ok(Some(info)) => {
                let fields = if info.oversized.is_none() {
                    (0..r.len()).map(|i| r.field(i).to_vec()).collect()
                } else {
                    Vec::new()
                };
                out.push((info.line, fields));
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e.to_string())),
        }
    }
}

fn lossy(fields: &[Vec<u8>]) -> Vec<String> {
    fields
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// CSV-ish bytes: mostly delimiters, quotes, newlines and a few letters, some invalid UTF-8.
fn csvish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(b','),
            3 => Just(b'"'),
            3 => Just(b'\n'),
            1 => Just(b'\r'),
            6 => b'a'..=b'e',
            2 => b'0'..=b'9',
            1 => any::<u8>(),
        ],
        0..400,
    )
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A valid row as the contract describes it, with its expected price and stock.
fn valid_row() -> impl Strategy<Value = (Vec<String>, String, i32)> {
    (
        "[A-Z]{3}-[0-9]{1,8}",
        "[a-zA-Z][a-zA-Z ,\"\n]{0,40}",
        "[a-z]{3,12}",
        (0u64..10_000_000, 0u32..10_000),
        0i32..100_000,
        0i32..1000,
        (2020i32..2030, 1u32..13, 1u32..29),
    )
        .prop_map(|(sku, name, cat, (units, frac), qoh, sold, (y, m, d))| {
            let price = format!("{units}.{frac:04}");
            let fields = vec![
                sku,
                name,
                cat,
                String::new(),
                price.clone(),
                String::new(),
                "EUR".to_string(),
                qoh.to_string(),
                sold.to_string(),
                format!("{y:04}-{m:02}-{d:02}"),
                String::new(),
            ];
            (fields, price, qoh)
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any bytes: the reader ends (records, then the end or an error), lines never go back, and
    /// every record is validated without a panic.
    #[test]
    fn reader_and_contract_survive_any_bytes(bytes in csvish(), small in any::<bool>()) {
        let limits = if small {
            Limits { max_record_bytes: 16, max_fields: 4, ..Limits::default() }
        } else {
            Limits::default()
        };
        let (records, _err) = read_all(&bytes, limits);
        let map = HeaderMap::from_names(header()).unwrap();
        let mut last = 1;
        for (line, fields) in &records {
            prop_assert!(*line >= last, "line {line} after {last}");
            last = *line;
            let text = lossy(fields);
            let refs: Vec<&str> = text.iter().map(String::as_str).collect();
            let _ = validate_row(&map, &refs);
        }
        // Any first record, taken as a header, either maps the columns or says why not.
        if let Some((_, first)) = records.first() {
            let names = lossy(first);
            let _ = HeaderMap::from_names(names.iter().map(String::as_str));
        }
    }

    /// Valid rows written as CSV (names with commas, quotes and newlines; CRLF or LF) come back
    /// field for field on the right lines, and pass the contract with their values.
    #[test]
    fn valid_rows_round_trip(rows in prop::collection::vec(valid_row(), 1..20), crlf in any::<bool>()) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut csv = skuflow_e2e::HEADER.to_string() + nl;
        let mut lines = Vec::new();
        let mut line = 2u64;
        for (fields, ..) in &rows {
            lines.push(line);
            line += 1 + fields[1].matches('\n').count() as u64;
            csv += &(fields.iter().map(|f| quote(f)).collect::<Vec<_>>().join(",") + nl);
        }
        let (records, err) = read_all(csv.as_bytes(), Limits::default());
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(records.len(), rows.len() + 1);
        let map = HeaderMap::from_names(header()).unwrap();
        for (((fields, price, qoh), (got_line, got)), want_line) in
            rows.iter().zip(&records[1..]).zip(&lines)
        {
            prop_assert_eq!(got_line, want_line);
            let text = lossy(got);
            prop_assert_eq!(&text, fields);
            let refs: Vec<&str> = text.iter().map(String::as_str).collect();
            match validate_row(&map, &refs) {
                Ok(row) => {
                    prop_assert_eq!(row.unit_price.to_string(), price.clone());
                    prop_assert_eq!(row.quantity_on_hand, *qoh);
                }
                Err(reasons) => prop_assert!(false, "{:?} rejected: {:?}", fields, reasons),
            }
        }
    }

    /// Decompressing arbitrary bytes (gzip or zstd magic, or sniffed) fails or yields at most
    /// the cap; it never panics.
    #[test]
    fn decompression_survives_any_bytes(
        mut bytes in prop::collection::vec(any::<u8>(), 0..2000),
        magic in 0u8..3,
    ) {
        match magic {
            0 => { bytes.splice(0..0, [0x1f, 0x8b, 8, 0]); }
            1 => { bytes.splice(0..0, [0x28, 0xb5, 0x2f, 0xfd]); }
            _ => {}
        }
        if let Ok((mut r, _)) = reader::open(&bytes[..], None, reader::ReadLimits { max_decompressed: 10_000, zstd_window_log_max: 24 }) {
            let mut out = Vec::new();
            if r.read_to_end(&mut out).is_ok() {
                prop_assert!(out.len() <= 10_000);
            }
        }
    }

    /// Any key: checked and resolved without a panic; keys that climb (`..`) or carry control
    /// characters are never accepted.
    #[test]
    fn key_parsing_survives_any_key(
        key in "\\PC{0,80}|[a-z/.{}\\[\\]_-]{0,60}|incoming/[a-z_]{0,14}/[a-z./-]{0,30}",
        meta in prop::collection::hash_map("store-id|store-category|chain|x", "\\PC{0,20}", 0..3),
    ) {
        let t = KeyTemplate::parse(KeyTemplate::DEFAULT).unwrap();
        let checked = check_key(&key);
        if key.split('/').any(|s| s == "..") || key.chars().any(char::is_control) {
            prop_assert!(checked.is_err(), "{:?} accepted", key);
        }
        let _ = resolve(&t, &key, &meta);
        let _ = KeyTemplate::parse(&key);
    }

    /// Keys built from valid parts resolve to exactly those parts.
    #[test]
    fn keys_from_the_template_resolve_to_their_parts(
        chain in prop::option::of("[a-z][a-z0-9_-]{0,20}"),
        store in "[A-Za-z0-9][A-Za-z0-9_-]{0,30}",
        (y, m, d) in (2000i32..2100, 1u32..13, 1u32..29),
        file in "[a-z0-9_-]{1,20}\\.csv(\\.gz)?",
    ) {
        let t = KeyTemplate::parse(KeyTemplate::DEFAULT).unwrap();
        let key = match &chain {
            Some(c) => format!("incoming/retail_chain/{c}/{store}/{y:04}-{m:02}-{d:02}/{file}"),
            None => format!("incoming/individual/{store}/{y:04}-{m:02}-{d:02}/{file}"),
        };
        prop_assert!(check_key(&key).is_ok(), "{}: {:?}", key, check_key(&key));
        match resolve(&t, &key, &HashMap::new()) {
            Ok(got) => {
                prop_assert_eq!(got.chain, chain);
                prop_assert_eq!(got.store_id, store);
                prop_assert_eq!(got.business_date.to_string(), format!("{y:04}-{m:02}-{d:02}"));
                prop_assert_eq!(got.file_name, file);
            }
            Err(e) => prop_assert!(false, "{} refused: {}", key, e),
        }
    }
}
