//! `skuflow demo`: generated uploads through the whole pipeline, in one process.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use skuflow_finance_reporter::ReportArgs;
use skuflow_ingest::store::StoreArgs;
use skuflow_ingest::{IngestArgs, Mode};
use skuflow_platform::component::{Component, DemoPlace, RowCount, SinkInfo};
use skuflow_platform::kafka::{ensure_topics, pipeline_topics};
use skuflow_platform::{ConsumeArgs, KafkaArgs, TopicArgs};
use skuflow_samples::{gzip, render_csv, sample_rows};
use skuflow_schemas::{FileEvent, FileStatus};

use crate::status::Stores;

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
    /// Rows (SKUs) per store and day (the corner shop has half as many).
    #[arg(long = "rows-per-file", default_value_t = 200)]
    rows_per_file: u64,
    /// Days of daily history per store before the featured day (yesterday), with a weekly
    /// pattern and a trend, so the finance report has projections to show (0: none).
    #[arg(long = "history-days", default_value_t = 70)]
    history_days: u32,
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

/// Units sold on `day` relative to a plain day: a weekly pattern (weekends sell more), a trend
/// of +0.5 % a day from `first`, ±10 % of the day's own and ±12 % of the row's noise.
fn demand(day: NaiveDate, first: NaiveDate, row: u64) -> f64 {
    const WEEK: [f64; 7] = [0.85, 0.9, 0.95, 1.0, 1.2, 1.45, 0.7];
    let weekday = WEEK[day.weekday().num_days_from_monday() as usize];
    let trend = 1.0 + 0.005 * (day - first).num_days() as f64;
    let mut x = (day.num_days_from_ce() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ row;
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    let noise = 0.88 + 0.24 * ((x % 1000) as f64 / 1000.0);
    // A day's own swing, shared by every row (weather, holidays): what the interval is for.
    let mut d = (day.num_days_from_ce() as u64).wrapping_mul(0xd6e8_feb8_6659_fd93);
    d ^= d >> 31;
    let day_noise = 0.9 + 0.2 * ((d % 1000) as f64 / 1000.0);
    weekday * trend * noise * day_noise
}

/// The demo's stores of country number `n`: (key prefix under `incoming/`, seed).
fn stores_of(cc: &str, n: usize) -> [(String, u64); 3] {
    let (cc, seed) = (cc.to_lowercase(), 100 * (n as u64 + 1));
    let chain = if n.is_multiple_of(2) {
        "walmart"
    } else {
        "ikea"
    };
    [
        (format!("retail_chain/{chain}/{cc}-001"), seed),
        (format!("retail_chain/{chain}/{cc}-002"), seed + 1),
        (format!("individual/corner-{cc}"), seed + 2),
    ]
}

/// Writes the sample uploads: a daily upload per store from `history_days` days before
/// `featured` (yesterday) to it, with a weekly pattern and a trend in units sold. The uploads of
/// the featured day show what skuflow does with bad input: rows that break the contract in each
/// store's file (a BOM and CRLF in one, gzip in another) and, in the first country, a file
/// refused as a whole. Returns the number of files per bucket.
fn generate(
    root: &Path,
    args: &DemoArgs,
    featured: NaiveDate,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let first = featured - chrono::Days::new(args.history_days.into());
    let mut files = BTreeMap::new();
    for (n, cc) in args.countries.iter().enumerate() {
        let bucket = format!("skus-{}", cc.to_ascii_lowercase());
        let cur = currency(cc);
        let mut count = 0;
        for day in first.iter_days().take_while(|d| *d <= featured) {
            let date = day.to_string();
            let last = day == featured;
            // (store, seed, rows, every n-th row invalid on the featured day)
            let [(chain1, seed), (chain2, _), (corner, _)] = stores_of(cc, n);
            let plan = [
                (chain1, seed, args.rows_per_file, 25),
                (chain2, seed + 1, args.rows_per_file, 40),
                (corner, seed + 2, args.rows_per_file / 2, 30),
            ];
            for (i, (store, seed, rows, invalid)) in plan.into_iter().enumerate() {
                let mut rows = sample_rows(seed, rows, if last { invalid } else { 0 }, cur, &date);
                for (r, row) in rows.iter_mut().enumerate() {
                    if let Ok(base) = row.units_sold.parse::<f64>() {
                        row.units_sold =
                            ((base * demand(day, first, r as u64)).round() as u64).to_string();
                    }
                }
                let (crlf, bom) = (last && i == 0, last && i == 0);
                let csv = render_csv(&rows, crlf, bom);
                if last && i == 2 {
                    put(
                        root,
                        &bucket,
                        &format!("incoming/{store}/{date}/skus.csv.gz"),
                        &gzip(csv.as_bytes()),
                    )?;
                } else {
                    put(
                        root,
                        &bucket,
                        &format!("incoming/{store}/{date}/skus.csv"),
                        csv.as_bytes(),
                    )?;
                }
                count += 1;
            }
        }
        if n == 0 {
            // A file rejected as a whole: the unit_price column is missing.
            put(
                root,
                &bucket,
                &format!("incoming/individual/kiosk-1/{featured}/skus.csv"),
                format!(
                    "sku,product_name,category,currency,quantity_on_hand,units_sold,business_date\nK1,Gum,snacks,{cur},3,1,{featured}\n"
                )
                .as_bytes(),
            )?;
            count += 1;
        }
        files.insert(bucket, count);
    }
    Ok(files)
}

/// A rate file for the report: every day from `first` to `last`, every currency of the demo's
/// countries into EUR (a slow drift, so the conversion visibly uses each day's rate).
fn write_rates(
    path: &Path,
    countries: &[String],
    first: NaiveDate,
    last: NaiveDate,
) -> anyhow::Result<()> {
    let mut currencies: Vec<&str> = countries.iter().map(|c| currency(c)).collect();
    currencies.sort_unstable();
    currencies.dedup();
    let mut out = String::from("date,currency,reporting_currency,rate\n");
    for (i, day) in first.iter_days().take_while(|d| *d <= last).enumerate() {
        for cur in &currencies {
            let base = match *cur {
                "EUR" => continue,
                "USD" => 9_200i64,
                "GBP" => 11_600,
                "CHF" => 10_500,
                "SEK" => 870,
                "JPY" => 61,
                _ => 10_000,
            };
            let rate = rust_decimal::Decimal::new(base * 100 + (i as i64 % 9) * 7, 6);
            out.push_str(&format!("{day},{cur},EUR,{rate}\n"));
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
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

/// Removes `dir`, the demo's own output of an earlier run.
fn cleared(dir: PathBuf) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Ok(dir)
}

/// The brokers to run on: those given (their demo topics made), or an in-process mock broker
/// that lives as long as the returned handle.
async fn broker(
    args: &DemoArgs,
    topics: &TopicArgs,
) -> anyhow::Result<(String, Option<MockCluster<'static, DefaultProducerContext>>)> {
    if let Some(b) = &args.brokers {
        ensure_topics(&KafkaArgs::new(b), &pipeline_topics(topics, 3)).await?;
        return Ok((b.clone(), None));
    }
    let cluster = MockCluster::new(1).context("starting the in-process mock broker")?;
    for t in pipeline_topics(topics, 3) {
        cluster
            .create_topic(&t.name, t.partitions, 1)
            .context("creating a topic")?;
    }
    Ok((cluster.bootstrap_servers(), Some(cluster)))
}

fn ingest_args(buckets: &Path) -> IngestArgs {
    IngestArgs {
        store: StoreArgs::local(buckets),
        mode: Mode::All,
        bucket_template: "skus-{country}".into(),
        buckets: Vec::new(),
        key_template: skuflow_ingest::metadata::KeyTemplate::DEFAULT.into(),
        events_topic: None,
        http_listen: None,
        api_keys_file: None,
        scan_interval_secs: 1,
        requeue_after_secs: skuflow_ingest::discovery::REQUEUE_AFTER.as_secs(),
        concurrency: None,
        bulk_after_rows: skuflow_ingest::worker::IngestSettings::default().bulk_after_rows,
        bulk_records_per_sec: skuflow_ingest::worker::IngestSettings::default()
            .bulk_records_per_sec,
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
        report_max_rows: 1000,
    }
}

/// The sinks of the registry that take part in the demo, each started on its own directory
/// under `out`, and where their rows are counted.
fn start_sinks(
    args: &DemoArgs,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    stop: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(Vec<SinkInfo>, Option<String>)> {
    let mut started = Vec::new();
    let mut dataset_root = None;
    for sink in crate::sinks::SINKS {
        let info = sink.info;
        let place = DemoPlace {
            pg_url: args.pg_url.clone(),
            dir: cleared(args.out.join(info.label))?,
            consume: ConsumeArgs {
                group: Some(format!("{DEMO_GROUP}-{}", info.name)),
                flush_interval_ms: 500,
                ..ConsumeArgs::default()
            },
        };
        let Some(running) = (sink.demo)(&place, kafka.clone(), topics.clone(), stop.clone()) else {
            std::fs::remove_dir(&place.dir).ok();
            continue;
        };
        tasks.spawn(async move { running.await.map(|_| ()).context(info.name) });
        if info.rows == RowCount::DatasetFiles {
            dataset_root = Some(place.dir.display().to_string());
        }
        started.push(info);
    }
    Ok((started, dataset_root))
}

/// The latest lifecycle event of each upload of this run, updated from the files topic.
fn follow(files: &BaseConsumer, since: DateTime<Utc>, latest: &mut HashMap<String, FileEvent>) {
    while let Some(Ok(m)) = files.poll(Duration::from_millis(100)) {
        let Some(ev) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<FileEvent>(p).ok())
            .filter(|ev| ev.at >= since && ev.status != FileStatus::Late)
        else {
            continue;
        };
        let newer = latest
            .get(&ev.file_id)
            .is_none_or(|old| old.status == FileStatus::Accepted);
        if newer {
            latest.insert(ev.file_id.clone(), ev);
        }
    }
}

/// Rows per file id in each sink once every file is final and every sink holds exactly the
/// valid rows of each completed file and none of a failed one; `None` before.
async fn drained(
    latest: &HashMap<String, FileEvent>,
    total_files: usize,
    sinks: &[SinkInfo],
    stores: &Stores,
) -> anyhow::Result<Option<Vec<HashMap<String, u64>>>> {
    let finals: Vec<&FileEvent> = latest
        .values()
        .filter(|e| e.status != FileStatus::Accepted)
        .collect();
    if finals.len() < total_files {
        return Ok(None);
    }
    let ids: Vec<String> = finals.iter().map(|e| e.file_id.clone()).collect();
    let mut counts = Vec::new();
    for sink in sinks {
        let held = stores.count(sink, &ids).await?.unwrap_or_default();
        let exact = finals.iter().all(|e| {
            let want = match e.status {
                FileStatus::Completed => e.rows_valid.unwrap_or(0),
                _ => 0,
            };
            held.get(&e.file_id).copied().unwrap_or(0) == want
        });
        if !exact {
            return Ok(None);
        }
        counts.push(held);
    }
    Ok(Some(counts))
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let buckets = cleared(args.out.join("buckets"))?;
    let featured = Utc::now().date_naive() - chrono::Days::new(1);
    let expected_files = generate(&buckets, &args, featured)?;
    let total_files: usize = expected_files.values().sum();
    reset_schema(args.pg_url.expose()).await?;

    let topics = TopicArgs::with_suffix(DEMO_SUFFIX);
    let (brokers, _mock) = broker(&args, &topics).await?;
    let kafka = KafkaArgs::new(&brokers);
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    {
        let (ingest, k, t, s) = (
            ingest_args(&buckets),
            kafka.clone(),
            topics.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            skuflow_ingest::run(&ingest, &k, &t, s)
                .await
                .context("ingest")
        });
    }
    let (sinks, dataset_root) = start_sinks(&args, &kafka, &topics, &stop, &mut tasks)?;
    let stores = Stores {
        pg: Some(
            skuflow_platform::pg::connect(args.pg_url.expose())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        es: None,
        dataset_root,
    };

    // Follow the file lifecycle until every file is final and every sink holds its rows.
    let files_consumer: BaseConsumer = kafka
        .consumer_config("skuflow-demo-status")
        .set("enable.auto.commit", "false")
        // This consumer only follows the files topic: no statistics (nothing would read them).
        .set("statistics.interval.ms", "0")
        .create()?;
    files_consumer.subscribe(&[&topics.files])?;
    let mut latest: HashMap<String, FileEvent> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let held = loop {
        if Instant::now() > deadline {
            stop.cancel();
            bail!("the pipeline did not drain within {} s", args.timeout_secs);
        }
        if let Some(r) = tasks.try_join_next() {
            r??;
            bail!("a pipeline task stopped early");
        }
        follow(&files_consumer, started_at, &mut latest);
        if let Some(held) = drained(&latest, total_files, &sinks, &stores).await? {
            if quality_loaded(&stores, &latest).await {
                break held;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let story = if args.countries.is_empty() || args.rows_per_file < 25 {
        None
    } else {
        Some(
            walkthrough(
                &args,
                &buckets,
                featured,
                (&kafka, &topics, &files_consumer),
                &mut latest,
                (&sinks, &stores),
                deadline,
            )
            .await?,
        )
    };
    // The counts after the walkthrough's correction (5 rows of the first upload superseded).
    let held = match story {
        Some(_) => {
            let ids: Vec<String> = latest.keys().cloned().collect();
            held_by(&sinks, &stores, &ids).await?
        }
        None => held,
    };
    stop.cancel();
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let mut report = ReportArgs::into_dir(
        &args
            .out
            .join(skuflow_finance_reporter::FinanceReporter::INFO.label)
            .display()
            .to_string(),
    );
    let rates = args.out.join("rates.csv");
    write_rates(
        &rates,
        &args.countries,
        featured - chrono::Days::new(args.history_days.into()),
        featured,
    )?;
    report.rates = Some(rates);
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
    print_uploads(&expected_files, &latest, &sinks, &held);
    if let Some(story) = &story {
        println!("{story}");
    }
    if let Some(pg) = &stores.pg {
        print_quality(pg).await?;
    }
    print_finance(&finance);
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
    println!("  postgresql     skuflow.sku_facts (partitioned by country), views skuflow.latest_stock_price, skuflow.daily_sales;");
    println!("                 uploads and rejected rows: skuflow.files, skuflow.rejects, views skuflow.upload_quality, skuflow.reject_rules");
    if let Some(root) = &stores.dataset_root {
        println!(
            "  datasets       {root}: a Delta Lake table (country=CC/business_date=D/), _manifest.json, _dataset_card.md"
        );
    }
    println!("  finance        skuflow_finance.daily in PostgreSQL; report {}/report.html (+ daily.csv, projections.csv, summary.json)", report.out);
    println!();
    println!("where to look next:");
    println!("  the report     chromium {}/report.html", report.out);
    println!(
        "  SQL            psql \"$SKUFLOW_DEMO_PG_URL\" -c 'SELECT * FROM skuflow.upload_quality WHERE failed > 0 OR rows_rejected > 0'"
    );
    if let Some(root) = &stores.dataset_root {
        println!(
            "  datasets       python3 -c \"import polars as pl; print(pl.read_delta('{root}').filter(pl.col('country') == 'DE').group_by('business_date').agg(pl.col('units_sold').sum()).sort('business_date'))\""
        );
        println!(
            "  its versions   cargo run -q -p skuflow-cli -- dataset versions --dataset-root {root}"
        );
        println!(
            "  every upload   cargo run -q -p skuflow-cli -- status --from=table --pg-url \"$SKUFLOW_DEMO_PG_URL\" --dataset-root {root}"
        );
    }
    println!("  (`eval \"$(scripts/stack.sh env)\"` sets SKUFLOW_DEMO_PG_URL)");
    Ok(())
}

/// Rows each sink holds per file id of `ids`, in the order of `sinks`.
async fn held_by(
    sinks: &[SinkInfo],
    stores: &Stores,
    ids: &[String],
) -> anyhow::Result<Vec<HashMap<String, u64>>> {
    let mut out = Vec::new();
    for sink in sinks {
        out.push(stores.count(sink, ids).await?.unwrap_or_default());
    }
    Ok(out)
}

/// What sets skuflow apart, played on the drained pipeline and told step by step: the rejects
/// file of a store's upload, fixed and uploaded again with a few corrected rows, winning in every
/// sink; a replay of the country's last day that changes no count; every upload complete.
async fn walkthrough(
    args: &DemoArgs,
    buckets: &Path,
    featured: NaiveDate,
    (kafka, topics, files): (&KafkaArgs, &TopicArgs, &BaseConsumer),
    latest: &mut HashMap<String, FileEvent>,
    (sinks, stores): (&[SinkInfo], &Stores),
    deadline: Instant,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::from("\nwhat skuflow did with the bad input and the fixes:\n");
    let cc = &args.countries[0];
    let bucket = format!("skus-{}", cc.to_ascii_lowercase());
    let [(store, seed), ..] = stores_of(cc, 0);
    let key = format!("incoming/{store}/{featured}/skus.csv");
    let original = latest
        .values()
        .find(|e| e.bucket == bucket && e.key == key && e.status == FileStatus::Completed)
        .cloned()
        .context("the featured upload did not complete")?;
    let moved = original.moved_to.clone().unwrap_or_default();
    let rejects = buckets.join(&bucket).join(format!("{moved}.rejects.csv"));
    let text = std::fs::read_to_string(&rejects)
        .with_context(|| format!("reading {}", rejects.display()))?;
    let _ = writeln!(
        out,
        "  1. {bucket}/{key}: {} rows loaded, {} rejected; the store gets {bucket}/{moved}.rejects.csv, e.g.\n     {}",
        original.rows_valid.unwrap_or(0),
        original.rows_rejected.unwrap_or(0),
        text.lines().nth(1).unwrap_or("")
    );

    // The store fixes the rejected rows and corrects units sold of five others: one upload.
    let date = featured.to_string();
    let cur = currency(cc);
    let as_sent = sample_rows(seed, args.rows_per_file, 25, cur, &date);
    let fixed = sample_rows(seed, args.rows_per_file, 0, cur, &date);
    let mut rows: Vec<_> = as_sent
        .iter()
        .zip(&fixed)
        .filter(|(sent, _)| !sent.valid)
        .map(|(_, f)| f.clone())
        .collect();
    let repaired = rows.len() as u64;
    rows.extend(skuflow_samples::corrected_rows(&as_sent, 5, "0"));
    let fix_key = format!("incoming/{store}/{featured}/skus-fixed.csv");
    put(
        buckets,
        &bucket,
        &fix_key,
        render_csv(&rows, false, false).as_bytes(),
    )?;
    let want = rows.len() as u64;
    let kept = original.rows_valid.unwrap_or(0) - 5;
    let held = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the correction was not loaded in time"
        );
        follow(files, Utc::now() - chrono::Duration::hours(1), latest);
        if let Some(fix) = latest
            .values()
            .find(|e| e.key == fix_key && e.status == FileStatus::Completed)
        {
            let ids = [fix.file_id.clone(), original.file_id.clone()];
            let held = held_by(sinks, stores, &ids).await?;
            if held
                .iter()
                .all(|h| h.get(&ids[0]) == Some(&want) && h.get(&ids[1]) == Some(&kept))
            {
                break held;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = writeln!(
        out,
        "  2. {bucket}/{fix_key}: the {repaired} fixed rows and 5 rows with units sold corrected; every sink \
         ({}) holds {want} rows from it and {kept} from the first upload: the newer upload wins",
        sinks.iter().map(|s| s.label).collect::<Vec<_>>().join(", ")
    );
    drop(held);

    // A replay of the country's last day: every upload again, no count changes.
    let ids: Vec<String> = latest.keys().cloned().collect();
    let before = held_by(sinks, stores, &ids).await?;
    let chosen = crate::replay::choose(
        latest,
        std::slice::from_ref(cc),
        Some(featured),
        Some(featured),
        "processed/",
    );
    let producer: rdkafka::producer::FutureProducer = kafka.producer_config().create()?;
    let since = Utc::now();
    for c in &chosen {
        let (k, payload, headers) = skuflow_ingest::discovery::upload_message(&c.request)?;
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topics.uploads)
                    .key(&k)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(15),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("queueing a replay: {e}"))?;
    }
    let mut replayed = std::collections::HashSet::new();
    while replayed.len() < chosen.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replay did not finish in time"
        );
        while let Some(Ok(m)) = files.poll(Duration::from_millis(100)) {
            if let Some(ev) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<FileEvent>(p).ok())
                .filter(|e| e.at >= since && e.status == FileStatus::Completed)
            {
                replayed.insert(ev.file_id);
            }
        }
    }
    let after = loop {
        // Sinks write asynchronously: wait until they are done, then compare.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = held_by(sinks, stores, &ids).await?;
        if after == before || Instant::now() > deadline {
            break after;
        }
    };
    let total = |h: &[HashMap<String, u64>]| {
        h.iter()
            .map(|m| m.values().sum::<u64>())
            .collect::<Vec<_>>()
    };
    anyhow::ensure!(
        after == before,
        "the replay changed the sinks' rows: {:?} before, {:?} after",
        total(&before),
        total(&after)
    );
    let _ = writeln!(
        out,
        "  3. skuflow replay --country {cc} --from {featured} --until {featured}: {} uploads ingested again; \
         rows per sink unchanged ({}): nothing duplicated",
        chosen.len(),
        total(&after).iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    );

    // Every upload, as `skuflow status` judges it.
    let now = Utc::now();
    let (mut complete, mut failed, mut other) = (0, 0, 0);
    for e in latest.values() {
        let counts = sinks
            .iter()
            .zip(&after)
            .map(|(s, h)| (s.label, h.get(&e.file_id).copied().unwrap_or(0)))
            .collect();
        match crate::status::judge(e, counts, now, Duration::ZERO).status {
            "complete" => complete += 1,
            "failed" => failed += 1,
            _ => other += 1,
        }
    }
    let _ = write!(
        out,
        "  4. skuflow status: {} uploads, {complete} complete, {failed} failed (refused as a whole), {other} otherwise",
        latest.len()
    );
    Ok(out)
}

/// Whether the warehouse holds the upload history and the rejected rows of every final upload
/// of the run (when the warehouse loader runs; true when it does not).
async fn quality_loaded(stores: &Stores, latest: &HashMap<String, FileEvent>) -> bool {
    let Some(pg) = &stores.pg else {
        return true;
    };
    let finals: Vec<&String> = latest
        .values()
        .filter(|e| e.status != FileStatus::Accepted)
        .map(|e| &e.file_id)
        .collect();
    let rejected: u64 = latest.values().filter_map(|e| e.rows_rejected).sum();
    let ids: Vec<String> = finals.iter().map(|s| s.to_string()).collect();
    let row = pg
        .query_one(
            "SELECT (SELECT count(*) FROM skuflow.files WHERE file_id = ANY($1) AND status <> 'accepted'), \
                    (SELECT count(*) FROM skuflow.rejects WHERE file_id = ANY($1) AND stage = 'ingest')",
            &[&ids],
        )
        .await;
    // Before the loader's migrations the tables do not exist: not yet.
    row.is_ok_and(|r| {
        r.get::<_, i64>(0) as usize >= finals.len() && r.get::<_, i64>(1) as u64 >= rejected
    })
}

/// Per country, from the warehouse's data-quality tables: files failed, rows rejected, the
/// rule that rejected the most.
async fn print_quality(pg: &tokio_postgres::Client) -> anyhow::Result<()> {
    let rows = pg
        .query(
            "SELECT q.country, q.failed, q.rows_rejected, r.rule, r.rows \
             FROM (SELECT country, sum(failed)::bigint AS failed, sum(rows_rejected)::bigint AS rows_rejected \
                   FROM skuflow.upload_quality GROUP BY country) q \
             LEFT JOIN LATERAL (SELECT rule, sum(rows)::bigint AS rows FROM skuflow.reject_rules \
                   WHERE country = q.country AND stage = 'ingest' GROUP BY rule ORDER BY 2 DESC, 1 LIMIT 1) r ON true \
             ORDER BY q.country",
            &[],
        )
        .await
        .context("reading skuflow.upload_quality")?;
    println!();
    println!("data quality (skuflow.upload_quality, skuflow.reject_rules):");
    for r in rows {
        let country: Option<String> = r.get(0);
        let top = match (r.get::<_, Option<String>>(3), r.get::<_, Option<i64>>(4)) {
            (Some(rule), Some(n)) => format!("top rule {rule} ({n} rows)"),
            _ => "no rule hit".to_string(),
        };
        println!(
            "  {:<6} {} failed file(s), {} rows rejected, {top}",
            country.as_deref().unwrap_or("-"),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
        );
    }
    Ok(())
}

/// Per country: the uploads, what ingest made of them and the rows each sink holds.
fn print_uploads(
    buckets: &BTreeMap<String, usize>,
    latest: &HashMap<String, FileEvent>,
    sinks: &[SinkInfo],
    held: &[HashMap<String, u64>],
) {
    println!();
    print!(
        "{:<8} {:>6} {:>10} {:>7} {:>14} {:>14}",
        "country", "files", "completed", "failed", "rows accepted", "rows rejected"
    );
    for s in sinks {
        print!(" {:>16}", format!("rows in {}", s.label));
    }
    println!();
    for bucket in buckets.keys() {
        let evs: Vec<&FileEvent> = latest
            .values()
            .filter(|e| &e.bucket == bucket && e.status != FileStatus::Accepted)
            .collect();
        let cc = evs
            .iter()
            .find_map(|e| e.country.clone())
            .unwrap_or_else(|| bucket.trim_start_matches("skus-").to_uppercase());
        let with = |s: FileStatus| evs.iter().filter(|e| e.status == s).count();
        let valid: u64 = evs.iter().filter_map(|e| e.rows_valid).sum();
        let rejected: u64 = evs.iter().filter_map(|e| e.rows_rejected).sum();
        print!(
            "{:<8} {:>6} {:>10} {:>7} {:>14} {:>14}",
            cc,
            evs.len(),
            with(FileStatus::Completed),
            with(FileStatus::Failed),
            valid,
            rejected,
        );
        for counts in held {
            let rows: u64 = evs.iter().filter_map(|e| counts.get(&e.file_id)).sum();
            print!(" {rows:>16}");
        }
        println!();
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
}

/// Per country: revenue, margin and the projection of the report.
fn print_finance(finance: &skuflow_finance_reporter::reporting::Report) {
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
}
