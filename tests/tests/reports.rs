//! What a store gets back for an upload: the report beside it in the bucket and, when rows were
//! rejected, `<file>.rejects.csv`, which the store fixes in a spreadsheet and uploads again. The
//! fixed rows are accepted and reach every sink.

mod common;

use std::time::Duration;

use common::Pipeline;
use skuflow_e2e::es_double::EsDouble;

const WAIT: Duration = Duration::from_secs(180);
const HEADER: &str =
    "sku,product_name,category,unit_price,currency,quantity_on_hand,units_sold,business_date";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fixes_its_rejected_rows_from_the_rejects_file_and_they_reach_every_sink() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let (buckets, datasets) = (root.path().join("buckets"), root.path().join("datasets"));
    let dir = "individual/s1/2026-11-21";
    let mut upload = format!("{HEADER}\n");
    for i in 0..20 {
        upload.push_str(&format!(
            "OK-{i},Item {i},grocery,1.{i:02},EUR,5,1,2026-11-21\n"
        ));
    }
    upload.push_str("BAD-1,\"Bread, rye\",bakery,abc,EUR,2,1,2026-11-21\n");
    upload.push_str("BAD-2,Tea,drinks,2.00,EUR,-4,1,2026-11-21\n");
    let first = buckets.join(format!("skus-de/incoming/{dir}/skus.csv"));
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    std::fs::write(&first, upload).unwrap();

    let es = EsDouble::start().await;
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_loader(&[]);
    p.start_reporter(&[]);
    p.start_indexer(&es.url, &[], &[]);
    p.start_builder(&[
        format!("--dataset-root={}", datasets.display()),
        "--flush-interval-ms=300".into(),
    ]);

    // The report and the rejects file beside the processed upload.
    let processed = buckets.join(format!("skus-de/processed/{dir}/skus.csv"));
    let rejects = processed.with_file_name("skus.csv.rejects.csv");
    assert!(
        common::wait_until(WAIT, || rejects.exists()),
        "no rejects file:\n{}",
        p.logs()
    );
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(processed.with_file_name("skus.csv.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["rows_valid"], 20);
    assert_eq!(report["rows_rejected"], 2);
    assert_eq!(report["rejected_rows_cap"], 1000);
    assert_eq!(report["rejected_rows"].as_array().unwrap().len(), 2);
    let csv = std::fs::read_to_string(&rejects).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(lines[0], format!("{HEADER},skuflow_line,skuflow_errors"));
    assert!(
        lines[1].starts_with("BAD-1,\"Bread, rye\",bakery,abc,EUR,2,1,2026-11-21,22,"),
        "{csv}"
    );
    assert!(lines[2].contains("quantity_on_hand"), "{csv}");

    // The store fixes the two values and uploads the file as it is.
    let fixed = csv.replace(",abc,", ",3.10,").replace(",-4,", ",4,");
    let second = buckets.join(format!("skus-de/incoming/{dir}/fixes.csv"));
    std::fs::write(&second, fixed).unwrap();

    // Both uploads complete in all four sinks, the fixed one without a rejects file.
    let mut last = (0, serde_json::Value::Null, String::new());
    let ok = common::wait_until(WAIT, || {
        last = p.status_json(&datasets, &[&format!("--es-url={}", es.url)]);
        last.0 == 0
            && last.1.as_array().is_some_and(|a| {
                a.len() == 2
                    && a.iter().all(|f| {
                        f["status"] == "complete"
                            && f["sinks"].as_object().is_some_and(|s| s.len() == 4)
                    })
            })
    });
    assert!(ok, "status never all complete:\n{}\n{}", last.2, p.logs());
    let fixes = last
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"].as_str().unwrap().ends_with("fixes.csv"))
        .unwrap()
        .clone();
    assert_eq!(fixes["rows_valid"], 2, "{fixes}");
    assert_eq!(fixes["rows_rejected"], 0, "{fixes}");
    for sink in ["warehouse", "finance", "search", "dataset"] {
        assert_eq!(fixes["sinks"][sink], 2, "{sink}: {fixes}");
    }
    let fixed_report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(processed.with_file_name("fixes.csv.report.json")).unwrap(),
    )
    .unwrap();
    assert!(
        fixed_report["warnings"][0]
            .as_str()
            .unwrap()
            .contains("skuflow_errors"),
        "{fixed_report}"
    );
    assert!(!processed.with_file_name("fixes.csv.rejects.csv").exists());

    let db = p.db().await;
    let rows = db
        .query(
            "SELECT sku, unit_price::text, quantity_on_hand FROM skuflow.sku_facts \
             WHERE sku LIKE 'BAD-%' ORDER BY sku",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("BAD-1".into(), "3.1000".into(), 2),
            ("BAD-2".into(), "2.0000".into(), 4)
        ]
    );
}
