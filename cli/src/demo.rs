//! `skuflow demo`: generated uploads through the whole pipeline, in one process.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use skuflow_ingest::store::StoreArgs;
use skuflow_ingest::{IngestArgs, Mode};
use skuflow_platform::kafka::{ensure_topics, pipeline_topics};
use skuflow_platform::{ConsumeArgs, KafkaArgs, TopicArgs};
use skuflow_samples::{gzip, render_csv, sample_rows};
use skuflow_schemas::{FileEvent, FileStatus};
use skuflow_warehouse_loader::LoaderArgs;

#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Kafka bootstrap servers; without it the demo runs an in-process mock broker. The demo
    /// uses topics and consumer groups of its own (`sku.*.v1.demo`, `skuflow-demo-*`).
    #[arg(long = "brokers", env = "SKUFLOW_DEMO_BROKERS")]
    brokers: Option<String>,
    /// PostgreSQL connection string of a database for the demo (`make demo`: `skuflow_demo`).
    /// Its `skuflow` and `skuflow_finance` schemas are reset, and only when the demo made them:
    /// a database holding other skuflow data is refused. Never read from SKUFLOW_PG_URL, which
    /// the loader and reporter pods have.
    #[arg(long = "pg-url", env = "SKUFLOW_DEMO_PG_URL", hide_env_values = true)]
    pg_url: skuflow_platform::secret::Secret,
    /// Output directory: the bucket root lives in `<out>/buckets`.
    #[arg(long = "out", default_value = "out/demo")]
    out: PathBuf,
    /// Countries, one bucket each.
    #[arg(long = "countries", value_delimiter = ',', default_value = "DE,FR,US")]
    countries: Vec<String>,
    /// Rows per generated file.
    #[arg(long = "rows-per-file", default_value_t = 2000)]
    rows_per_file: u64,
    /// Give up after this many seconds.
    #[arg(long = "timeout-secs", default_value_t = 300)]
    timeout_secs: u64,
}

fn currency(cc: &str) -> &'static str {
    match cc {
        "US" => "USD",
        "GB" => "GBP",
        "JP" => "JPY",
        "CH" => "CHF",
        "SE" => "SEK",
        _ => "EUR",
    }
}

fn put(root: &Path, bucket: &str, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = root.join(bucket).join(key);
    std::fs::create_dir_all(path.parent().context("key has a parent")?)?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes the sample uploads; returns the number of files per bucket.
fn generate(
    root: &Path,
    countries: &[String],
    rows: u64,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let date = "2026-11-20";
    let mut files = BTreeMap::new();
    for (n, cc) in countries.iter().enumerate() {
        let bucket = format!("skus-{}", cc.to_ascii_lowercase());
        let cur = currency(cc);
        let seed = 100 * (n as u64 + 1);
        let chain = if n % 2 == 0 { "walmart" } else { "ikea" };
        put(
            root,
            &bucket,
            &format!(
                "incoming/retail_chain/{chain}/{}-001/{date}/skus.csv",
                cc.to_lowercase()
            ),
            render_csv(&sample_rows(seed, rows, 25, cur, date), true, true).as_bytes(),
        )?;
        put(
            root,
            &bucket,
            &format!(
                "incoming/retail_chain/{chain}/{}-002/{date}/skus.csv",
                cc.to_lowercase()
            ),
            render_csv(&sample_rows(seed + 1, rows, 40, cur, date), false, false).as_bytes(),
        )?;
        put(
            root,
            &bucket,
            &format!(
                "incoming/individual/corner-{}/{date}/skus.csv.gz",
                cc.to_lowercase()
            ),
            &gzip(
                render_csv(
                    &sample_rows(seed + 2, rows / 2, 30, cur, date),
                    false,
                    false,
                )
                .as_bytes(),
            ),
        )?;
        let mut count = 3;
        if n == 0 {
            // A file rejected as a whole: the unit_price column is missing.
            put(root, &bucket, &format!("incoming/individual/kiosk-1/{date}/skus.csv"),
                b"sku,product_name,category,currency,quantity_on_hand,units_sold,business_date\nK1,Gum,snacks,EUR,3,1,2026-11-20\n")?;
            count += 1;
        }
        files.insert(bucket, count);
    }
    Ok(files)
}

/// Rows per country in the datasets' manifests.
fn parquet_rows(root: &std::path::Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(cc) = name.strip_prefix("country=") else {
            continue;
        };
        let rows = std::fs::read(e.path().join("_manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|m| m["rows"].as_i64())
            .unwrap_or(0);
        out.insert(cc.to_string(), rows);
    }
    out
}

/// What the demo writes on the schemas it makes; it resets only schemas that say so.
const DEMO_MARK: &str = "skuflow demo data: `skuflow demo` resets it";

/// The schemas the demo resets.
const DEMO_SCHEMAS: [&str; 2] = ["skuflow", "skuflow_finance"];

/// The demo's topics and consumer groups: never those of a deployment on the same cluster.
const DEMO_SUFFIX: &str = ".demo";
const DEMO_GROUP: &str = "skuflow-demo";

async fn reset_schema(pg_url: &str) -> anyhow::Result<()> {
    let client = skuflow_platform::pg::connect(pg_url)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is it running? `make stack`)"))?;
    for schema in DEMO_SCHEMAS {
        let row = client
            .query_opt(
                "SELECT coalesce(obj_description(oid, 'pg_namespace'), '') FROM pg_namespace WHERE nspname = $1",
                &[&schema],
            )
            .await
            .context("looking at the demo database")?;
        if let Some(r) = row {
            let mark: String = r.get(0);
            if mark != DEMO_MARK {
                let db: String = client
                    .query_one("SELECT current_database()", &[])
                    .await?
                    .get(0);
                anyhow::bail!(
                    "database {db} holds a `{schema}` schema the demo did not create: it may be a \
                     deployment's data, so the demo leaves it alone. Point --pg-url \
                     (SKUFLOW_DEMO_PG_URL) at a database of its own, e.g. the stack's skuflow_demo."
                );
            }
        }
    }
    for schema in DEMO_SCHEMAS {
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
                 COMMENT ON SCHEMA {schema} IS '{DEMO_MARK}'"
            ))
            .await
            .context("resetting the demo schemas")?;
    }
    Ok(())
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let buckets = args.out.join("buckets");
    if buckets.exists() {
        std::fs::remove_dir_all(&buckets)
            .with_context(|| format!("clearing {}", buckets.display()))?;
    }
    let datasets = args.out.join("datasets");
    if datasets.exists() {
        std::fs::remove_dir_all(&datasets)
            .with_context(|| format!("clearing {}", datasets.display()))?;
    }
    let expected_files = generate(&buckets, &args.countries, args.rows_per_file)?;
    let total_files: usize = expected_files.values().sum();
    reset_schema(args.pg_url.expose()).await?;

    let topics = TopicArgs::with_suffix(DEMO_SUFFIX);
    let _mock;
    let brokers = match &args.brokers {
        Some(b) => {
            ensure_topics(&KafkaArgs::new(b), &pipeline_topics(&topics, 3)).await?;
            b.clone()
        }
        None => {
            let cluster = MockCluster::new(1).context("starting the in-process mock broker")?;
            for t in pipeline_topics(&topics, 3) {
                cluster
                    .create_topic(&t.name, t.partitions, 1)
                    .context("creating a topic")?;
            }
            let b = cluster.bootstrap_servers();
            _mock = cluster;
            b
        }
    };
    let kafka = KafkaArgs::new(&brokers);
    let stop = CancellationToken::new();

    let ingest = IngestArgs {
        store: StoreArgs::local(&buckets),
        mode: Mode::All,
        bucket_template: "skus-{country}".into(),
        buckets: Vec::new(),
        key_template: skuflow_ingest::metadata::KeyTemplate::DEFAULT.into(),
        events_topic: None,
        http_listen: None,
        api_keys_file: None,
        scan_interval_secs: 1,
        group: format!("{DEMO_GROUP}-ingest"),
        max_reject_ratio: 0.5,
        max_object_bytes: 4 << 30,
        max_decompressed_bytes: 8 << 30,
        max_zstd_window_log: 24,
        max_rows_per_file: 2_000_000,
        max_record_bytes: 64 * 1024,
        earliest_business_date: skuflow_ingest::csvstream::EARLIEST_DATE,
        max_days_ahead: 31,
        max_attempts: 10,
        single_copy_max_bytes: skuflow_ingest::worker::S3_SINGLE_COPY_MAX,
    };
    let consume = |sink: &str| ConsumeArgs {
        group: Some(format!("{DEMO_GROUP}-{sink}")),
        flush_interval_ms: 500,
        ..ConsumeArgs::default()
    };
    let loader = LoaderArgs {
        pg_url: args.pg_url.clone(),
        consume: consume("warehouse-loader"),
    };
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (k, t, s) = (kafka.clone(), topics.clone(), stop.clone());
        tasks.spawn(async move {
            skuflow_ingest::run(&ingest, &k, &t, s)
                .await
                .context("ingest")
        });
    }
    {
        let (k, t, s) = (kafka.clone(), topics.clone(), stop.clone());
        tasks.spawn(async move {
            skuflow_warehouse_loader::run(&loader, &k, &t, s)
                .await
                .map(|_| ())
                .context("warehouse loader")
        });
    }

    {
        let (k, t, s) = (kafka.clone(), topics.clone(), stop.clone());
        let builder = skuflow_dataset_builder::BuilderArgs {
            root: datasets.display().to_string(),
            split: "80/10/10".into(),
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            target_file_bytes: skuflow_dataset_builder::sink::DEFAULT_TARGET_FILE_BYTES,
            cache_rows: 2_000_000,
            writer_lease_secs: 60,
            consume: consume("dataset-builder"),
        };
        tasks.spawn(async move {
            skuflow_dataset_builder::run(&builder, &k, &t, s)
                .await
                .map(|_| ())
                .context("dataset builder")
        });
    }

    let report = skuflow_finance_reporter::ReportArgs {
        out: args.out.join("reports").display().to_string(),
        reporting_currency: "EUR".into(),
        rates: None,
        from: None,
        to: None,
        horizon_days: 28,
        top_stores: 10,
    };
    {
        let (k, t, s) = (kafka.clone(), topics.clone(), stop.clone());
        let reporter = skuflow_finance_reporter::ReporterArgs {
            pg_url: args.pg_url.clone(),
            report_every_secs: 0,
            report: report.clone(),
            consume: consume("finance-reporter"),
        };
        tasks.spawn(async move {
            skuflow_finance_reporter::run(&reporter, &k, &t, s)
                .await
                .map(|_| ())
                .context("finance reporter")
        });
    }

    // Follow the file lifecycle until every file is final and the warehouse and the datasets
    // hold every valid row.
    let files_consumer: BaseConsumer = kafka
        .consumer_config("skuflow-demo-status")
        .set("enable.auto.commit", "false")
        // This consumer only follows the files topic: no statistics (nothing would read them).
        .set("statistics.interval.ms", "0")
        .create()?;
    files_consumer.subscribe(&[&topics.files])?;
    let mut latest: HashMap<String, FileEvent> = HashMap::new();
    let client = skuflow_platform::pg::connect(args.pg_url.expose())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let per_country = loop {
        if Instant::now() > deadline {
            stop.cancel();
            bail!("the pipeline did not drain within {} s", args.timeout_secs);
        }
        if let Some(r) = tasks.try_join_next() {
            r??;
            bail!("a pipeline task stopped early");
        }
        while let Some(Ok(m)) = files_consumer.poll(Duration::from_millis(100)) {
            if let Some(ev) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<FileEvent>(p).ok())
                .filter(|ev| ev.at >= started_at)
            {
                let newer = latest
                    .get(&ev.file_id)
                    .is_none_or(|old| old.status == FileStatus::Accepted);
                if newer {
                    latest.insert(ev.file_id.clone(), ev);
                }
            }
        }
        let finals: Vec<&FileEvent> = latest
            .values()
            .filter(|e| e.status != FileStatus::Accepted)
            .collect();
        let want: i64 = finals
            .iter()
            .filter_map(|e| e.rows_valid.filter(|_| e.status == FileStatus::Completed))
            .sum::<u64>() as i64;
        if finals.len() >= total_files {
            let rows = client
                .query(
                    "SELECT country, count(*) FROM skuflow.sku_facts GROUP BY country",
                    &[],
                )
                .await
                .unwrap_or_default();
            let loaded: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let in_finance: i64 = client
                .query_one(
                    "SELECT coalesce(sum(skus), 0)::bigint FROM skuflow_finance.daily",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1);
            if loaded.values().sum::<i64>() == want
                && parquet_rows(&datasets) == loaded
                && in_finance == want
            {
                break loaded;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    stop.cancel();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let finance = skuflow_finance_reporter::reporting::run(args.pg_url.expose(), &report)
        .await
        .context("writing the finance report")?;

    println!();
    println!(
        "skuflow demo: {} files in {} buckets drained in {:.1} s (broker: {})",
        total_files,
        expected_files.len(),
        started.elapsed().as_secs_f64(),
        if args.brokers.is_some() {
            brokers.as_str()
        } else {
            "in-process mock"
        }
    );
    println!();
    println!(
        "{:<8} {:>6} {:>10} {:>7} {:>14} {:>14} {:>16} {:>15}",
        "country",
        "files",
        "completed",
        "failed",
        "rows accepted",
        "rows rejected",
        "rows in postgres",
        "rows in parquet"
    );
    let in_parquet = parquet_rows(&datasets);
    for bucket in expected_files.keys() {
        let evs: Vec<&FileEvent> = latest
            .values()
            .filter(|e| &e.bucket == bucket && e.status != FileStatus::Accepted)
            .collect();
        let cc = evs
            .iter()
            .find_map(|e| e.country.clone())
            .unwrap_or_else(|| bucket.trim_start_matches("skus-").to_uppercase());
        let done = evs
            .iter()
            .filter(|e| e.status == FileStatus::Completed)
            .count();
        let failed = evs
            .iter()
            .filter(|e| e.status == FileStatus::Failed)
            .count();
        let valid: u64 = evs.iter().filter_map(|e| e.rows_valid).sum();
        let rejected: u64 = evs.iter().filter_map(|e| e.rows_rejected).sum();
        println!(
            "{:<8} {:>6} {:>10} {:>7} {:>14} {:>14} {:>16} {:>15}",
            cc,
            evs.len(),
            done,
            failed,
            valid,
            rejected,
            per_country.get(&cc).copied().unwrap_or(0),
            in_parquet.get(&cc).copied().unwrap_or(0)
        );
    }
    for e in latest.values().filter(|e| e.status == FileStatus::Failed) {
        println!(
            "\nfailed: {}/{}\n  reason: {}\n  report: {}/{}.errors.json",
            e.bucket,
            e.key,
            e.reason.as_deref().unwrap_or("-"),
            e.bucket,
            e.moved_to.as_deref().unwrap_or("-")
        );
    }
    println!();
    println!(
        "{:<8} {:>9} {:>16} {:>16} {:>8}  projection (next 28 days)",
        "country", "currency", "revenue", "gross margin", "margin"
    );
    for t in &finance.totals {
        let projection = finance
            .projections
            .iter()
            .find(|p| p.scope == "country" && p.country == t.country && p.currency == t.currency)
            .map(|p| match (&p.projection, &p.error) {
                (Some(x), _) => format!(
                    "{} (backtest sMAPE {} %)",
                    x.points
                        .iter()
                        .map(|pt| pt.value)
                        .sum::<rust_decimal::Decimal>(),
                    x.backtest.value
                ),
                (None, e) => e.clone().unwrap_or_default(),
            })
            .unwrap_or_default();
        println!(
            "{:<8} {:>9} {:>16} {:>16} {:>7}%  {}",
            t.country,
            t.currency,
            t.sums.revenue,
            t.sums.gross_margin,
            t.margin_pct
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            projection
        );
    }
    println!();
    println!("where the output is:");
    println!(
        "  buckets        {}  (incoming/ -> processed/ | errors/ + <file>.errors.json)",
        buckets.display()
    );
    println!(
        "  kafka topics   {}, {}, {}, {}",
        topics.uploads, topics.records, topics.rejects, topics.files
    );
    println!("  postgresql     skuflow.sku_facts (partitioned by country), views skuflow.latest_stock_price, skuflow.daily_sales");
    println!(
        "  parquet        {}/country=CC/business_date=D/*.parquet, _manifest.json, _dataset_card.md",
        datasets.display()
    );
    println!("  finance        skuflow_finance.daily in PostgreSQL; report {}/report.html (+ daily.csv, projections.csv, summary.json)", report.out);
    Ok(())
}
