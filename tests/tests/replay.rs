//! `skuflow replay` on the real stack: the warehouse loader and the finance reporter, having
//! lost data, are moved back to the earliest offsets and rebuild exactly what they held, with no
//! duplicate. (tansu cannot describe groups, so the refusal to move a group with running members
//! is not exercised here.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, Pipeline};
use rust_decimal::Decimal;

const WAIT: Duration = Duration::from_secs(180);
const LOADER_OFFSETS: &str =
    "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets";
const FINANCE_OFFSETS: &str =
    "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow_finance.consumer_offsets";

fn replay(p: &Pipeline, sink: &str, group: &str) -> (bool, String) {
    let out = Command::new(bin("skuflow"))
        .args([
            "replay",
            &format!("--sink={sink}"),
            &format!("--group={group}"),
            "--to=earliest",
            &format!("--brokers={}", p.stack.brokers),
            &format!("--records-topic={}", p.topics.records),
        ])
        .env("SKUFLOW_PG_URL", &p.db_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn finance_sums(db: &tokio_postgres::Client) -> Vec<(String, String, i64, i64, Decimal)> {
    db.query(
        "SELECT country, store_id, sum(skus)::bigint, sum(units)::bigint, sum(revenue)
         FROM skuflow_finance.daily GROUP BY 1, 2 ORDER BY 1, 2",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_lost_sink_data_exactly_once() {
    let mut p = Pipeline::new().await;
    let mut records = Vec::new();
    for i in 0..2_500u64 {
        records.push(common::record(if i % 2 == 0 { "DE" } else { "NL" }, i, 5));
    }
    for i in 0..500u64 {
        records.push(common::record(if i % 2 == 0 { "DE" } else { "NL" }, i, 9));
    }
    let messages: Vec<(String, Vec<u8>)> = records
        .iter()
        .map(|r| (r.kafka_key(), serde_json::to_vec(r).unwrap()))
        .collect();
    common::produce(&p.stack.brokers, &p.topics.records, &messages).await;
    let total = messages.len() as i64;

    let loader = p.start_loader(&[]);
    let reporter = p.start_reporter(&[]);
    p.expect_count(LOADER_OFFSETS, total, WAIT).await;
    p.expect_count(FINANCE_OFFSETS, total, WAIT).await;
    let db = p.db().await;
    let before = finance_sums(&db).await;
    assert_eq!(before.iter().map(|r| r.2).sum::<i64>(), 2_500);

    let loader_group = format!("skuflow-warehouse-loader-{}", p.id);
    let finance_group = format!("skuflow-finance-reporter-{}", p.id);
    assert!(p.terminate(loader, Duration::from_secs(20)).is_some());
    assert!(p.terminate(reporter, Duration::from_secs(20)).is_some());
    // Both sinks lose data.
    let lost = db
        .execute(
            "DELETE FROM skuflow.sku_facts WHERE store_id IN ('store-1', 'store-2')",
            &[],
        )
        .await
        .unwrap();
    assert!(lost > 0);
    db.batch_execute("TRUNCATE skuflow_finance.lines, skuflow_finance.daily")
        .await
        .unwrap();

    for (sink, group) in [
        ("warehouse-loader", &loader_group),
        ("finance-reporter", &finance_group),
    ] {
        let (ok, said) = replay(&p, sink, group);
        assert!(ok, "{said}");
        assert!(said.contains("moved back"), "{said}");
    }
    p.expect_count(LOADER_OFFSETS, 0, WAIT).await;

    p.start_loader(&[]);
    p.start_reporter(&[]);
    p.expect_count(LOADER_OFFSETS, total, WAIT).await;
    p.expect_count(FINANCE_OFFSETS, total, WAIT).await;
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", 2_500, WAIT)
        .await;
    p.expect_count(
        "SELECT count(*) FROM skuflow.sku_facts WHERE record_version = 9",
        500,
        WAIT,
    )
    .await;
    assert_eq!(finance_sums(&db).await, before);
}
