//! `skuflow demo` never touches data it did not make: pointed at a database holding a
//! deployment's `skuflow` schema it refuses and leaves the data as it was.

mod common;

use std::process::Command;

use common::{bin, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_a_database_holding_skuflow_data_it_did_not_create() {
    let p = Pipeline::new().await;
    let db = p.db().await;
    db.batch_execute(
        "CREATE SCHEMA skuflow; CREATE TABLE skuflow.sku_facts (id int); \
         INSERT INTO skuflow.sku_facts VALUES (1), (2)",
    )
    .await
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(bin("skuflow"))
        .args(["demo", "--countries=DE", "--rows-per-file=10"])
        .arg(format!("--out={}", out.path().display()))
        // A loader pod's environment: the demo must not take its database from it.
        .env("SKUFLOW_PG_URL", &p.db_url)
        .env("SKUFLOW_DEMO_PG_URL", &p.db_url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "the demo ran on a deployment's database"
    );
    assert!(
        stderr.contains("did not create") && stderr.contains("SKUFLOW_DEMO_PG_URL"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("skuflow-local-pw"),
        "the password was printed: {stderr}"
    );
    let rows: i64 = db
        .query_one("SELECT count(*) FROM skuflow.sku_facts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "the data is untouched");

    // Without SKUFLOW_DEMO_PG_URL the demo does not fall back to SKUFLOW_PG_URL.
    let run = Command::new(bin("skuflow"))
        .args(["demo", "--countries=DE", "--rows-per-file=10"])
        .arg(format!("--out={}", out.path().display()))
        .env("SKUFLOW_PG_URL", &p.db_url)
        .env_remove("SKUFLOW_DEMO_PG_URL")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("--pg-url"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The demo as a new user runs it (smaller): history enough for projections in every country, the
/// walkthrough (rejects file, the fix winning in every sink, a replay that duplicates nothing,
/// every upload complete) and where to look next, on the in-process broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tells_the_whole_story_with_projections_for_every_country() {
    let p = Pipeline::new().await;
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(bin("skuflow"))
        .args([
            "demo",
            "--countries=DE,US",
            "--rows-per-file=50",
            "--history-days=35",
        ])
        .arg(format!("--out={}", out.path().display()))
        .env("SKUFLOW_DEMO_PG_URL", &p.db_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for want in [
        "rejects.csv, e.g.",
        "the newer upload wins",
        "nothing duplicated",
        "1 failed (refused as a whole), 0 otherwise",
        "where to look next:",
        "status --from=table",
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
    for cc in ["DE", "US"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(cc) && l.contains("backtest sMAPE"))
            .unwrap_or_else(|| panic!("no projection for {cc}:\n{stdout}"));
        assert!(!line.contains("too little history"), "{line}");
    }
    // US is converted with the generated rates: no day without a rate.
    let html = std::fs::read_to_string(out.path().join("finance/report.html")).unwrap();
    assert!(!html.contains("Missing rates"), "a day without a rate");
}
