//! Finance reporter throughput, measured against baselines in the same run on the local stack
//! (`make bench`). Prints every figure and ratio:
//!   (a) what a user would write instead: the daily aggregates recomputed with one
//!       `INSERT … SELECT … GROUP BY` from the facts the warehouse loader holds
//!   (a') the same with the loading of those facts (the same records and corrections through
//!       the warehouse loader's write path) counted: the deduplication (a) starts from
//!   (b) the reporter's write path alone: decoded records → lines and aggregates, offsets, no
//!       broker, with 10 % of the keys sent again as corrections after the first load
//!   (b) again in upload order: the same records a store's day after another, as files deliver
//!       them (the order above interleaves 500 stores and 28 days record by record)
//!   (c) the reporter end to end from the topic
//! Targets: (b) ≥ 1 × (a) records per second; a batch costs the same whatever the tables already
//! hold: the last tenth of (b)'s first-load batches against its first tenth, ≤ 1.5 ×.
//! Records: SKUFLOW_BENCH_RECORDS (default 1,000,000). SKUFLOW_BENCH_ONLY_WRITE=1 runs (a) and
//! (b) alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use rust_decimal::Decimal;
use skuflow_e2e::bench::{
    consume_until_stored, fresh_databases, load_records_topic, pg, rate, records_wanted,
    required_env,
};
use skuflow_finance_reporter::FinanceSink;
use skuflow_platform::{ConsumeArgs, Consumed, KafkaArgs, Sink, TopicArgs};
use skuflow_schemas::SkuRecord;
use skuflow_warehouse_loader::PgSink;

/// Record `i` spread over 28 business days (the synthetic records share one).
fn record(i: u64) -> SkuRecord {
    let mut r = skuflow_e2e::synthetic_record(i);
    r.business_date = r.business_date + chrono::Days::new(i % 28);
    r
}

/// A correction of `r`: a newer version with other units sold and price.
fn corrected(r: &SkuRecord) -> SkuRecord {
    let mut c = r.clone();
    c.record_version += 1_000_000_000;
    c.units_sold = (c.units_sold + 7) % 40;
    c.unit_price += Decimal::new(10, 2);
    c
}

fn consumed(records: &[SkuRecord], first_offset: i64) -> Vec<Consumed<SkuRecord>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| Consumed {
            partition: 0,
            offset: first_offset + i as i64,
            value: r.clone(),
        })
        .collect()
}

/// Writes `batch` through `sink` in consume-loop batches; the time of each.
async fn write_all(sink: &mut FinanceSink, batch: &[Consumed<SkuRecord>]) -> Vec<Duration> {
    let size = ConsumeArgs::default().batch_size as usize;
    let mut times = Vec::new();
    for chunk in batch.chunks(size) {
        let offsets = BTreeMap::from([(0, chunk.last().unwrap().offset + 1)]);
        let t = Instant::now();
        let refused = sink.write("bench", chunk, &offsets).await.unwrap();
        assert!(refused.is_empty(), "the reporter refused bench records");
        times.push(t.elapsed());
    }
    times
}

/// The daily table's totals, to check that every way of computing it agrees.
async fn totals(c: &tokio_postgres::Client, table: &str) -> (i64, i64, Decimal) {
    let r = c
        .query_one(
            &format!("SELECT count(*), sum(units)::bigint, sum(revenue) FROM {table}"),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// (c): the records and corrections through a topic and the reporter's consume loop; the time
/// and the number of records.
async fn end_to_end(
    brokers: &str,
    id: &str,
    url_c: &str,
    records: &[SkuRecord],
    corrections: &[SkuRecord],
    want: (i64, i64, Decimal),
) -> (Duration, u64) {
    let topics = TopicArgs::with_suffix(&format!(".benchfin{id}"));
    let kafka = KafkaArgs::new(brokers);
    let mut all = records.to_vec();
    all.extend(corrections.iter().cloned());
    let took = load_records_topic(&kafka, &topics, &all).await;
    println!("loaded the topic in {:.1} s", took.as_secs_f64());
    let total = all.len() as u64;
    let c = consume_until_stored(
        &kafka,
        &topics,
        &format!("bench-reporter-{id}"),
        FinanceSink::new(url_c, "bench-reporter"),
        (url_c, "skuflow_finance.consumer_offsets"),
        total,
    )
    .await;
    let cc = pg(url_c).await;
    assert_eq!(
        totals(&cc, "skuflow_finance.daily").await,
        want,
        "end to end the aggregates differ"
    );

    (c, total)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = records_wanted();
    let brokers = required_env("SKUFLOW_TEST_BROKERS");
    let admin_url = required_env("SKUFLOW_TEST_PG_URL");
    let id = format!("{:x}", Utc::now().timestamp_micros());
    let admin = pg(&admin_url).await;
    let prefix = format!("bench_fin_{id}");
    let [url_a, url_b, url_c, url_u]: [String; 4] =
        fresh_databases(&admin, &admin_url, &prefix, &["a", "b", "c", "u"])
            .await
            .try_into()
            .unwrap();
    println!("generating {n} records and {} corrections", n / 10);
    let records: Vec<SkuRecord> = (0..n).map(record).collect();
    let corrections: Vec<SkuRecord> = records.iter().step_by(10).map(corrected).collect();
    // (a) the facts in the warehouse (the same records and corrections through the warehouse
    // loader, timed apart), then one INSERT … SELECT … GROUP BY.
    let first = consumed(&records, 0);
    let again = consumed(&corrections, n as i64);
    let size = ConsumeArgs::default().batch_size as usize;
    let mut loader = PgSink::new(&url_a, "bench");
    loader.connect().await.unwrap();
    let t = Instant::now();
    for chunk in first.chunks(size).chain(again.chunks(size)) {
        let offsets = BTreeMap::from([(0, chunk.last().unwrap().offset + 1)]);
        loader.write("bench", chunk, &offsets).await.unwrap();
    }
    let loaded = t.elapsed();
    let mut finance_a = FinanceSink::new(&url_a, "bench");
    finance_a.connect().await.unwrap();
    let ca = pg(&url_a).await;
    let t = Instant::now();
    ca.batch_execute(
        "INSERT INTO skuflow_finance.daily (business_date, country, store_id, store_category, chain, \
           category, currency, skus, skus_with_cost, units, revenue, revenue_with_cost, cost, \
           stock_value_retail, stock_value_cost) \
         SELECT business_date, country, store_id, store_category, coalesce(chain, ''), category, currency, \
           count(*), count(unit_cost), sum(units_sold), sum(unit_price * units_sold), \
           sum(CASE WHEN unit_cost IS NULL THEN 0 ELSE unit_price * units_sold END), \
           coalesce(sum(unit_cost * units_sold), 0), sum(unit_price * quantity_on_hand), \
           coalesce(sum(unit_cost * quantity_on_hand), 0) \
         FROM skuflow.sku_facts GROUP BY 1, 2, 3, 4, 5, 6, 7",
    )
    .await
    .unwrap();
    let a = t.elapsed();

    // (b) the reporter's write path: the first load, then the corrections.
    let mut sink_b = FinanceSink::new(&url_b, "bench");
    sink_b.connect().await.unwrap();
    let total_b = (first.len() + again.len()) as u64;
    let t = Instant::now();
    let load_times = write_all(&mut sink_b, &first).await;
    write_all(&mut sink_b, &again).await;
    let b = t.elapsed();
    let cb = pg(&url_b).await;
    let (want, got) = (
        totals(&ca, "skuflow_finance.daily").await,
        totals(&cb, "skuflow_finance.daily").await,
    );
    assert_eq!(
        got, want,
        "the write path's aggregates differ from the GROUP BY's"
    );
    let tenth = (load_times.len() / 10).max(1);
    let mean = |d: &[Duration]| d.iter().sum::<Duration>().as_secs_f64() / d.len() as f64;
    let (early, late) = (
        mean(&load_times[..tenth]),
        mean(&load_times[load_times.len() - tenth..]),
    );

    // (b) again with the records in upload order: a store's day after another, as files
    // deliver them, so that a batch touches a few aggregate rows instead of thousands.
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| {
        let r = &records[i];
        (&r.store_id, r.business_date, &r.sku)
    });
    let in_order: Vec<Consumed<SkuRecord>> = order
        .iter()
        .enumerate()
        .map(|(offset, &i)| Consumed {
            partition: 0,
            offset: offset as i64,
            value: records[i].clone(),
        })
        .collect();
    drop(order);
    let mut sink_u = FinanceSink::new(&url_u, "bench");
    sink_u.connect().await.unwrap();
    let t = Instant::now();
    write_all(&mut sink_u, &in_order).await;
    drop(in_order);
    write_all(&mut sink_u, &again).await;
    let b_upload_order = t.elapsed();
    assert_eq!(
        totals(&pg(&url_u).await, "skuflow_finance.daily").await,
        want,
        "in upload order the write path's aggregates differ"
    );

    // (c) end to end from the topic.
    let only_write = std::env::var("SKUFLOW_BENCH_ONLY_WRITE").is_ok_and(|v| v == "1");
    let end_to_end = if only_write {
        None
    } else {
        Some(end_to_end(&brokers, &id, &url_c, &records, &corrections, want).await)
    };

    let (ra, rb) = (rate(n, a), rate(total_b, b));
    let ra_loaded = rate(total_b, loaded + a);
    let rb_upload_order = rate(total_b, b_upload_order);
    println!();
    println!(
        "finance reporter, {n} records and {} corrections over 28 days",
        corrections.len()
    );
    let line = |name: &str, took: Duration, records_per_sec: f64| {
        println!(
            "  {name:<56} {:>8.2} s  {records_per_sec:>10.0} records/s",
            took.as_secs_f64()
        );
    };
    line("(a) INSERT … SELECT … GROUP BY from the facts", a, ra);
    line(
        "(a') the facts loaded by the warehouse loader, then (a)",
        loaded + a,
        ra_loaded,
    );
    line("(b) reporter write path (no broker)", b, rb);
    line(
        "(b) in upload order (a store's day after another)",
        b_upload_order,
        rb_upload_order,
    );
    if let Some((c, total)) = end_to_end {
        line("(c) reporter end to end from the topic", c, rate(total, c));
    }
    println!(
        "  ratio (b)/(a)                         = {:.2}  (target ≥ 1.00) {}",
        rb / ra,
        if rb / ra >= 1.0 { "ok" } else { "MISSED" }
    );
    println!(
        "  ratio (b)/(a')                        = {:.2}  (the deduplication (a) starts from, counted)",
        rb / ra_loaded
    );
    println!(
        "  ratio (b in upload order)/(a)         = {:.2}   (b in upload order)/(a') = {:.2}",
        rb_upload_order / ra,
        rb_upload_order / ra_loaded
    );
    println!(
        "  batch cost, last tenth / first tenth  = {:.2}  ({:.0} ms / {:.0} ms; target ≤ 1.50) {}",
        late / early,
        late * 1e3,
        early * 1e3,
        if late / early <= 1.5 { "ok" } else { "MISSED" }
    );
    // The mean batch cost over each tenth of the first load, with the lines stored before it.
    let tenths: Vec<String> = load_times
        .chunks(tenth)
        .take(10)
        .enumerate()
        .map(|(k, d)| {
            format!(
                "{:.0} ms at {:.2}M",
                mean(d) * 1e3,
                (k * tenth) as f64 * size as f64 / 1e6
            )
        })
        .collect();
    println!(
        "  batch cost by tenth of the first load (lines stored before it): {}",
        tenths.join(", ")
    );
    if let Some((c, total)) = end_to_end {
        println!(
            "  ratio (c)/(b)                         = {:.2}",
            rate(total, c) / rb
        );
    }
    for db in ["a", "b", "c"] {
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {prefix}_{db} WITH (FORCE)"
            ))
            .await;
    }
}
