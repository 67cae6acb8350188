//! The sample generator and the CSV contract agree: rows generated as valid pass the scan and
//! rows generated as invalid are rejected (no stack needed).

use skuflow_e2e::{render_csv, sample_rows};
use skuflow_ingest::csvstream::Limits;
use skuflow_ingest::scan::{scan, RowEvent};

#[test]
fn generated_rows_are_what_they_claim() {
    for (seed, n, every, crlf) in [
        (7, 500, 9, true),
        (11, 60, 10, true),
        (12, 40, 8, false),
        (100, 2000, 25, true),
    ] {
        check(seed, n, every, crlf);
    }
}

fn check(seed: u64, n: u64, every: u64, crlf: bool) {
    let rows = sample_rows(seed, n, every, "EUR", "2026-11-01");
    let csv = render_csv(&rows, crlf, crlf);
    let mut verdicts = Vec::new();
    let summary = scan(csv.as_bytes(), Limits::default(), |e| {
        verdicts.push(match e {
            RowEvent::Valid { .. } => (true, String::new()),
            RowEvent::Rejected { reasons, .. } => (false, format!("{reasons:?}")),
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(summary.rows_total, n);
    for (i, (r, (ok, why))) in rows.iter().zip(&verdicts).enumerate() {
        assert_eq!(r.valid, *ok, "row {i} {:?}: {why}", r.to_csv_line());
    }
}
