//! The sample generator and the CSV contract agree: rows generated as valid pass the scan and
//! rows generated as invalid are rejected (no stack needed).

use skuflow_e2e::{render_csv, sample_rows};
use skuflow_ingest::csvstream::Limits;
use skuflow_ingest::scan::{scan, RowEvent};

#[test]
fn generated_rows_are_what_they_claim() {
    let rows = sample_rows(7, 500, 9, "EUR", "2026-11-01");
    let csv = render_csv(&rows, true, true);
    let mut verdicts = Vec::new();
    let summary = scan(csv.as_bytes(), Limits::default(), |e| {
        verdicts.push(match e {
            RowEvent::Valid { .. } => (true, String::new()),
            RowEvent::Rejected { reasons, .. } => (false, format!("{reasons:?}")),
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(summary.rows_total, 500);
    for (i, (r, (ok, why))) in rows.iter().zip(&verdicts).enumerate() {
        assert_eq!(r.valid, *ok, "row {i} {:?}: {why}", r.to_csv_line());
    }
}
