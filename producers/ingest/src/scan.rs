//! One pass over a CSV upload: header mapping, per-row validation, file-level failures.

use std::io::{self, Read};

use skuflow_schemas::RejectReason;

use crate::contract::{validate_row, DateWindow, HeaderMap, ValidRow};
use crate::csvstream::{Limits, Oversize, RecordReader};
use crate::reader::{is_source_error, CAP_HIT, WINDOW_HIT};

/// One row's outcome.
pub enum RowEvent<'a> {
    Valid {
        line: u64,
        row: ValidRow<'a>,
        /// The row as uploaded (capped), for a row rejected later (e.g. a duplicate key).
        raw: &'a [u8],
        raw_truncated: bool,
    },
    Rejected {
        line: u64,
        raw: &'a [u8],
        raw_truncated: bool,
        reasons: Vec<RejectReason>,
    },
}

/// Counts of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSummary {
    pub rows_total: u64,
    pub rows_valid: u64,
    pub rows_rejected: u64,
    /// Decompressed bytes read.
    pub bytes: u64,
    pub warnings: Vec<String>,
    /// The header's column names, as uploaded.
    pub columns: Vec<String>,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The object store failed while reading: retry the file later.
    #[error("{0}")]
    Source(io::Error),
    /// The file fails as a whole; the message says where and why.
    #[error("{0}")]
    File(String),
    /// The row callback failed (e.g. the broker refused a record).
    #[error("{0:#}")]
    Emit(anyhow::Error),
}

fn io_error(e: io::Error, line: u64) -> ScanError {
    if is_source_error(&e) {
        ScanError::Source(e)
    } else if e.to_string().contains(CAP_HIT) || e.to_string().contains(WINDOW_HIT) {
        ScanError::File(format!("after line {line}: {e}"))
    } else {
        ScanError::File(format!("the file cannot be read after line {line}: {e} (corrupt or truncated compressed data?)"))
    }
}

/// Reads the whole input once, calling `on_row` for every data row.
pub fn scan<R: Read>(
    input: R,
    limits: Limits,
    mut on_row: impl FnMut(RowEvent<'_>) -> anyhow::Result<()>,
) -> Result<ScanSummary, ScanError> {
    let mut rdr = RecordReader::new(input, limits);
    let mut summary = ScanSummary::default();
    let header = match rdr.next_record() {
        Ok(Some(info)) => info,
        Ok(None) => return Err(ScanError::File("the file is empty (no header line)".into())),
        Err(e) => return Err(io_error(e, 0)),
    };
    if header.oversized.is_some() {
        return Err(ScanError::File(
            "line 1: the header line is too large or has too many columns".into(),
        ));
    }
    let mut names = Vec::with_capacity(rdr.len());
    for i in 0..rdr.len() {
        match std::str::from_utf8(rdr.field(i)) {
            Ok(s) => names.push(s.to_string()),
            Err(_) => {
                return Err(ScanError::File(format!(
                    "line {}, column {}: header bytes are not valid UTF-8 (save the file as UTF-8)",
                    header.line,
                    i + 1
                )))
            }
        }
    }
    let mut map = HeaderMap::from_names(names.iter().map(String::as_str))
        .map_err(|e| ScanError::File(format!("line {}: {e}", header.line)))?;
    map.dates = DateWindow::until_ahead(
        limits.earliest_date,
        chrono::Utc::now().date_naive(),
        limits.max_days_ahead,
    );
    summary.columns = names.clone();
    if !map.extra.is_empty() {
        summary.warnings.push(format!(
            "ignored column(s) not in the contract: {}",
            map.extra.join(", ")
        ));
    }
    let mut last_line = header.line;
    loop {
        let info = match rdr.next_record() {
            Ok(Some(info)) => info,
            Ok(None) => break,
            Err(e) => return Err(io_error(e, last_line)),
        };
        last_line = info.line;
        summary.rows_total += 1;
        if summary.rows_total > limits.max_rows {
            return Err(ScanError::File(format!(
                "line {}: the file has more than {} data rows, the limit per file (--max-rows-per-file); split it into several uploads",
                info.line, limits.max_rows
            )));
        }
        let event = if let Some(over) = info.oversized {
            let (raw, raw_truncated) = rdr.raw();
            let (rule, message) = match over {
                Oversize::Bytes => (
                    "record_too_large",
                    format!(
                        "the record is larger than {} bytes (an unbalanced quote?)",
                        limits.max_record_bytes
                    ),
                ),
                Oversize::Fields => (
                    "too_many_fields",
                    format!("the record has more than {} fields", limits.max_fields),
                ),
            };
            RowEvent::Rejected {
                line: info.line,
                raw,
                raw_truncated,
                reasons: vec![RejectReason {
                    field: None,
                    column: None,
                    value: None,
                    rule: rule.into(),
                    message,
                }],
            }
        } else {
            let mut fields: Vec<&str> = Vec::with_capacity(map.width);
            for i in 0..rdr.len() {
                match std::str::from_utf8(rdr.field(i)) {
                    Ok(s) => fields.push(s),
                    Err(e) => {
                        return Err(ScanError::File(format!(
                            "line {}, column {}: bytes are not valid UTF-8 at byte {} of the field (save the file as UTF-8)",
                            info.line,
                            i + 1,
                            e.valid_up_to()
                        )))
                    }
                }
            }
            match validate_row(&map, &fields) {
                Ok(row) => {
                    let (raw, raw_truncated) = rdr.raw();
                    RowEvent::Valid {
                        line: info.line,
                        row,
                        raw,
                        raw_truncated,
                    }
                }
                Err(reasons) => {
                    let (raw, raw_truncated) = rdr.raw();
                    RowEvent::Rejected {
                        line: info.line,
                        raw,
                        raw_truncated,
                        reasons,
                    }
                }
            }
        };
        match &event {
            RowEvent::Valid { .. } => summary.rows_valid += 1,
            RowEvent::Rejected { .. } => summary.rows_rejected += 1,
        }
        on_row(event).map_err(ScanError::Emit)?;
    }
    summary.bytes = rdr.bytes_read();
    if summary.rows_total == 0 {
        return Err(ScanError::File(
            "the file has a header but no data rows".into(),
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "sku,product_name,category,brand,unit_price,unit_cost,currency,quantity_on_hand,units_sold,business_date,barcode\n";

    fn run(input: &[u8]) -> (Result<ScanSummary, ScanError>, Vec<(u64, bool)>) {
        let mut seen = Vec::new();
        let r = scan(input, Limits::default(), |e| {
            seen.push(match e {
                RowEvent::Valid { line, .. } => (line, true),
                RowEvent::Rejected { line, .. } => (line, false),
            });
            Ok(())
        });
        (r, seen)
    }

    #[test]
    fn mixed_rows_are_split() {
        let csv =
            format!("{HEADER}A,n,c,,1.00,,EUR,1,1,2026-11-01,\nB,n,c,,-1,,EUR,1,1,2026-11-01,\n");
        let (r, seen) = run(csv.as_bytes());
        let s = r.unwrap();
        assert_eq!((s.rows_total, s.rows_valid, s.rows_rejected), (2, 1, 1));
        assert_eq!(seen, vec![(2, true), (3, false)]);
    }

    #[test]
    fn whole_file_failures_say_where() {
        let (r, _) = run(b"");
        assert!(r.unwrap_err().to_string().contains("empty"));
        let (r, _) = run(HEADER.as_bytes());
        assert!(r.unwrap_err().to_string().contains("no data rows"));
        let three = format!(
            "{HEADER}A,n,c,,1.00,,EUR,1,1,2026-11-01,\nB,n,c,,1.00,,EUR,1,1,2026-11-01,\nC,n,c,,1.00,,EUR,1,1,2026-11-01,\n"
        );
        let limits = Limits {
            max_rows: 2,
            ..Limits::default()
        };
        let e = scan(three.as_bytes(), limits, |_| Ok(())).unwrap_err();
        assert!(
            e.to_string().contains("line 4")
                && e.to_string().contains("more than 2 data rows")
                && e.to_string().contains("--max-rows-per-file"),
            "{e}"
        );
        let (r, _) = run(b"sku,category\nA,b\n");
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("missing required column"));
        let mut bytes = HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"A,caf\xe9,c,,1.00,,EUR,1,1,2026-11-01,\n");
        let (r, _) = run(&bytes);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("line 2, column 2") && msg.contains("UTF-8"),
            "{msg}"
        );
    }
}
