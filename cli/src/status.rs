//! `skuflow status`: for each upload, what ingest accepted and rejected (from the file lifecycle
//! topic, or with `--from=table` from the loader's upload history `skuflow.files`) and how many rows each sink holds for it, read from the sinks themselves: the
//! warehouse (`skuflow.sku_facts`), the finance lines (`skuflow_finance.lines`), the search
//! indexes (documents per `file_id`, when `--es-url` is given) and the Parquet dataset (its
//! `file_id` lineage column).
//!
//! Every sink keeps the newest version of each natural key, so once caught up all sinks hold the
//! same number of rows of a file: its valid rows, less those a later upload replaced. A file is
//! `complete` when every sink holds its valid rows, or the same smaller number above zero (the
//! difference is reported as superseded); `in_flight` while it is not final or younger than the grace
//! period; `mismatch` when a sink holds fewer rows than another, or more than the file's valid
//! rows. The command exits with 1 when any file is a mismatch.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde::Serialize;
use skuflow_platform::component::{RowCount, SinkInfo};
use skuflow_platform::{KafkaArgs, TopicArgs};
use skuflow_schemas::{FileEvent, FileStatus};

#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// PostgreSQL of the warehouse loader and the finance reporter. Never logged.
    #[arg(long = "pg-url", env = "SKUFLOW_PG_URL", hide_env_values = true)]
    pg_url: Option<skuflow_platform::secret::Secret>,
    /// Elasticsearch of the search indexer: its documents are counted when this is given.
    #[arg(long = "es-url", env = "SKUFLOW_ES_URL")]
    es_url: Option<String>,
    #[command(flatten)]
    es_auth: skuflow_search_indexer::EsAuth,
    /// The alias (or index pattern) the search indexer's documents are under.
    #[arg(
        long = "index-alias",
        env = "SKUFLOW_INDEX_ALIAS",
        default_value = "skus"
    )]
    index_alias: String,
    /// Root of the Parquet datasets (a directory or `s3://bucket/prefix`).
    #[arg(long = "dataset-root", env = "SKUFLOW_DATASET_ROOT")]
    dataset_root: Option<String>,
    /// Only this upload: `bucket/key` (the key it arrived under, or where it was moved).
    #[arg(long = "file")]
    file: Option<String>,
    /// Only uploads whose latest lifecycle event is at or after this time (RFC 3339).
    #[arg(long = "since")]
    since: Option<DateTime<Utc>>,
    /// Seconds after its completion during which a file whose sinks are behind is in flight,
    /// not a mismatch.
    #[arg(long = "grace-secs", default_value_t = 300)]
    grace_secs: u64,
    /// JSON output.
    #[arg(long = "json")]
    json: bool,
    /// Where the list of uploads comes from: `topic` reads `sku.files.v1` from its start;
    /// `table` reads the warehouse loader's upload history `skuflow.files` (needs `--pg-url`),
    /// much faster over a long history and as fresh as the loader's `<group>-files` consumer
    /// group.
    #[arg(long = "from", value_enum, default_value_t = Source::Topic)]
    from: Source,
}

/// Where `skuflow status` reads the uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Source {
    Topic,
    Table,
}

/// One upload's lineage.
#[derive(Debug, Serialize)]
pub(crate) struct FileStatusLine {
    pub file_id: String,
    pub bucket: String,
    pub key: String,
    pub lifecycle: String,
    pub at: DateTime<Utc>,
    pub rows_valid: Option<u64>,
    pub rows_rejected: Option<u64>,
    /// Rows each sink holds for the file.
    pub sinks: BTreeMap<&'static str, u64>,
    /// complete, in_flight, failed or mismatch.
    pub status: &'static str,
    /// Valid rows no sink holds because a later upload replaced them.
    pub superseded: u64,
    pub problems: Vec<String>,
}

/// The latest lifecycle event of every file on the topic.
pub(crate) fn read_files(
    kafka: &KafkaArgs,
    topic: &str,
) -> anyhow::Result<HashMap<String, FileEvent>> {
    let consumer: BaseConsumer = kafka
        .consumer_config(&format!("skuflow-status-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0")
        .create()
        .context("creating the status consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    let mut ends = Vec::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.push((low, high));
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut done: Vec<bool> = ends.iter().map(|(l, h)| h <= l).collect();
    let mut latest: HashMap<String, FileEvent> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done.iter().any(|d| !d) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic} took over 120 s"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        let p = m.partition() as usize;
        if m.offset() + 1 >= ends[p].1 {
            done[p] = true;
        }
        if let Some(ev) = m
            .payload()
            .and_then(|b| serde_json::from_slice::<FileEvent>(b).ok())
            .filter(|ev| ev.status != FileStatus::Late)
        {
            latest.insert(ev.file_id.clone(), ev);
        }
    }
    Ok(latest)
}

/// The latest state of every upload in the loader's upload history, as the events it was
/// loaded from.
pub(crate) async fn read_files_table(
    client: &tokio_postgres::Client,
) -> anyhow::Result<HashMap<String, FileEvent>> {
    let table = skuflow_warehouse_loader::migrations::FILES_TABLE;
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&table])
        .await?
        .get(0);
    anyhow::ensure!(
        exists.is_some(),
        "{table} does not exist: the warehouse loader has not loaded the upload history (run it without --no-quality-tables, or use --from=topic)"
    );
    let rows = client
        .query(
            &format!(
                "SELECT file_id, status, bucket, key, etag, size, country, store_id, store_category, \
                 chain, business_date, last_modified, rows_total, rows_valid, rows_rejected, bytes, \
                 duration_ms, reason, warnings, moved_to, updated_at FROM {table}"
            ),
            &[],
        )
        .await
        .with_context(|| format!("reading {table}"))?;
    let count = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let status: String = r.get(1);
        let file_id: String = r.get(0);
        let mut ev = FileEvent::new(
            &file_id,
            serde_json::from_value(serde_json::Value::String(status.clone()))
                .with_context(|| format!("{table}: upload {file_id} has status {status:?}"))?,
            &r.get::<_, String>(2),
            &r.get::<_, String>(3),
        );
        ev.etag = r.get(4);
        ev.size = count(r.get(5));
        ev.country = r.get(6);
        ev.store_id = r.get(7);
        ev.store_category = r
            .get::<_, Option<String>>(8)
            .as_deref()
            .and_then(skuflow_schemas::StoreCategory::parse);
        ev.chain = r.get(9);
        ev.business_date = r.get(10);
        ev.last_modified = r.get(11);
        ev.rows_total = count(r.get(12));
        ev.rows_valid = count(r.get(13));
        ev.rows_rejected = count(r.get(14));
        ev.bytes = count(r.get(15));
        ev.duration_ms = count(r.get(16));
        ev.reason = r.get(17);
        ev.warnings = r.get::<_, Option<Vec<String>>>(18).unwrap_or_default();
        ev.moved_to = r.get(19);
        ev.at = r.get(20);
        out.insert(file_id, ev);
    }
    Ok(out)
}

/// Rows per file id in a PostgreSQL table (none when the table does not exist).
async fn pg_counts(
    client: &tokio_postgres::Client,
    table: &str,
    ids: &[String],
) -> anyhow::Result<Option<HashMap<String, u64>>> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&table])
        .await?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            &format!(
                "SELECT file_id, count(*) FROM {table} WHERE file_id = ANY($1) GROUP BY file_id"
            ),
            &[&ids],
        )
        .await
        .with_context(|| format!("counting rows per file in {table}"))?;
    Ok(Some(
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect(),
    ))
}

/// Rows per file id over the data files of the dataset table's latest version.
async fn dataset_counts(root: &str) -> anyhow::Result<HashMap<String, u64>> {
    use skuflow_dataset_builder::table;
    let location = table::Location::parse(root, "--dataset-root")?;
    let mut out: HashMap<String, u64> = HashMap::new();
    let Some(t) = location.load().await? else {
        return Ok(out);
    };
    let store = t.log_store().object_store(None);
    for files in table::files_by_day(&t).await?.into_values() {
        for f in files {
            let path = object_store::path::Path::parse(&f.path)
                .with_context(|| format!("the table names a file {:?}", f.path))?;
            let bytes = store.get(&path).await?.bytes().await?;
            let counts = skuflow_dataset_builder::columns::rows_per_file(bytes)
                .with_context(|| format!("reading {}", f.path))?;
            for (k, v) in counts {
                *out.entry(k).or_default() += v;
            }
        }
    }
    Ok(out)
}

/// Where the sinks' rows are counted; a sink whose store is not given is not counted.
#[derive(Default)]
pub(crate) struct Stores {
    pub pg: Option<tokio_postgres::Client>,
    /// Elasticsearch: the transport and the alias (or index pattern) of the documents.
    pub es: Option<(skuflow_search_indexer::Transport, String)>,
    pub dataset_root: Option<String>,
}

impl Stores {
    /// Rows per file id that `sink` holds for `ids`; `None` when its store is not given (or,
    /// for a PostgreSQL table, does not exist yet).
    pub(crate) async fn count(
        &self,
        sink: &SinkInfo,
        ids: &[String],
    ) -> anyhow::Result<Option<HashMap<String, u64>>> {
        Ok(match sink.rows {
            RowCount::PostgresTable { table } => match &self.pg {
                Some(client) => pg_counts(client, table, ids).await?,
                None => None,
            },
            RowCount::SearchIndex => match &self.es {
                Some((transport, alias)) => Some(
                    skuflow_search_indexer::lineage::count_by_file(
                        transport,
                        alias,
                        ids,
                        Duration::from_secs(60),
                    )
                    .await?,
                ),
                None => None,
            },
            RowCount::DatasetFiles => match &self.dataset_root {
                Some(root) => Some(dataset_counts(root).await?),
                None => None,
            },
            RowCount::NotCounted => None,
        })
    }
}

/// Judges one file from its lifecycle and the sinks' counts.
pub(crate) fn judge(
    ev: &FileEvent,
    sinks: BTreeMap<&'static str, u64>,
    now: DateTime<Utc>,
    grace: Duration,
) -> FileStatusLine {
    let mut problems = Vec::new();
    let valid = ev.rows_valid.unwrap_or(0);
    let max = sinks.values().copied().max().unwrap_or(0);
    let min = sinks.values().copied().min().unwrap_or(0);
    let young = (now - ev.at).to_std().unwrap_or_default() < grace;
    let mut superseded = 0;
    let status = match ev.status {
        // Late notices are skipped when the topic is read.
        FileStatus::Accepted | FileStatus::Late => "in_flight",
        FileStatus::Failed => {
            for (s, n) in &sinks {
                if *n > 0 {
                    problems.push(format!("{s} holds {n} rows of a failed file"));
                }
            }
            if problems.is_empty() {
                "failed"
            } else {
                "mismatch"
            }
        }
        FileStatus::Completed => {
            for (s, n) in &sinks {
                if *n > valid {
                    problems.push(format!("{s} holds {n} rows, more than the {valid} valid"));
                }
            }
            if !problems.is_empty() {
                "mismatch"
            } else if max == 0 && valid > 0 {
                // Not one row anywhere: sinks that have not started, not a superseded file.
                if young {
                    "in_flight"
                } else {
                    problems.push(format!("no sink holds any of its {valid} valid rows"));
                    "mismatch"
                }
            } else if min == max {
                if min == valid || !young {
                    superseded = valid - min;
                    "complete"
                } else {
                    "in_flight"
                }
            } else if young {
                "in_flight"
            } else {
                for (s, n) in &sinks {
                    if *n < max {
                        problems.push(format!("{s} is missing {} rows", max - n));
                    }
                }
                "mismatch"
            }
        }
    };
    FileStatusLine {
        file_id: ev.file_id.clone(),
        bucket: ev.bucket.clone(),
        key: ev.key.clone(),
        lifecycle: format!("{:?}", ev.status).to_lowercase(),
        at: ev.at,
        rows_valid: ev.rows_valid,
        rows_rejected: ev.rows_rejected,
        sinks,
        status,
        superseded,
        problems,
    }
}

/// Runs the command; returns whether every file is consistent.
pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<bool> {
    let pg = match &args.pg_url {
        Some(url) => Some(
            skuflow_platform::pg::connect(url.expose())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let events = match (args.from, &pg) {
        (Source::Topic, _) => read_files(&args.kafka, &args.topics.files)?,
        (Source::Table, Some(client)) => read_files_table(client).await?,
        (Source::Table, None) => anyhow::bail!("--from=table needs --pg-url (or SKUFLOW_PG_URL)"),
    };
    let mut selected: Vec<&FileEvent> = events
        .values()
        .filter(|e| {
            args.file.as_deref().is_none_or(|f| {
                let (b, k) = f.split_once('/').unwrap_or((f, ""));
                e.bucket == b && (e.key == k || e.moved_to.as_deref() == Some(k))
            })
        })
        .filter(|e| args.since.is_none_or(|s| e.at >= s))
        .collect();
    selected.sort_by(|a, b| a.at.cmp(&b.at).then(a.file_id.cmp(&b.file_id)));
    let ids: Vec<String> = selected.iter().map(|e| e.file_id.clone()).collect();

    // Every sink of the registry whose store was given is counted, in the registry's order.
    let mut per_sink: Vec<(&'static str, HashMap<String, u64>)> = Vec::new();
    let stores = Stores {
        pg,
        es: match &args.es_url {
            Some(url) => Some((
                skuflow_search_indexer::transport(url, &args.es_auth)?,
                args.index_alias.clone(),
            )),
            None => None,
        },
        dataset_root: args.dataset_root.clone(),
    };
    for sink in crate::sinks::SINKS {
        if let Some(c) = stores.count(&sink.info, &ids).await? {
            per_sink.push((sink.info.label, c));
        }
    }
    let now = Utc::now();
    let grace = Duration::from_secs(args.grace_secs);
    let lines: Vec<FileStatusLine> = selected
        .iter()
        .map(|e| {
            let sinks = per_sink
                .iter()
                .map(|(name, c)| (*name, c.get(&e.file_id).copied().unwrap_or(0)))
                .collect();
            judge(e, sinks, now, grace)
        })
        .collect();
    let ok = lines.iter().all(|l| l.status != "mismatch");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        let names: Vec<&str> = per_sink.iter().map(|(n, _)| *n).collect();
        println!(
            "{:<10} {:<34} {:>7} {:>8} {} {:>10}  file",
            "status",
            "file_id",
            "valid",
            "rejected",
            names
                .iter()
                .map(|n| format!("{n:>10}"))
                .collect::<Vec<_>>()
                .join(" "),
            "superseded"
        );
        for l in &lines {
            println!(
                "{:<10} {:<34} {:>7} {:>8} {} {:>10}  {}/{}",
                l.status,
                l.file_id,
                l.rows_valid.map_or("-".into(), |v| v.to_string()),
                l.rows_rejected.map_or("-".into(), |v| v.to_string()),
                l.sinks
                    .values()
                    .map(|n| format!("{n:>10}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                l.superseded,
                l.bucket,
                l.key
            );
            for p in &l.problems {
                println!("           ! {p}");
            }
        }
        println!(
            "{} files: {} complete, {} in flight, {} failed, {} mismatched",
            lines.len(),
            lines.iter().filter(|l| l.status == "complete").count(),
            lines.iter().filter(|l| l.status == "in_flight").count(),
            lines.iter().filter(|l| l.status == "failed").count(),
            lines.iter().filter(|l| l.status == "mismatch").count()
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: FileStatus, valid: u64, age_secs: i64) -> FileEvent {
        serde_json::from_value(serde_json::json!({
            "schema": skuflow_schemas::FILE_SCHEMA, "file_id": "f1", "status": status,
            "bucket": "skus-de", "key": "incoming/individual/s1/2026-11-20/a.csv",
            "rows_valid": valid, "rows_rejected": 3,
            "at": (Utc::now() - chrono::Duration::seconds(age_secs)).to_rfc3339(),
        }))
        .unwrap()
    }

    fn sinks(w: u64, f: u64, d: u64) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([("warehouse", w), ("finance", f), ("dataset", d)])
    }

    #[test]
    fn judges_complete_superseded_in_flight_and_missing() {
        let grace = Duration::from_secs(60);
        let now = Utc::now();
        let old = event(FileStatus::Completed, 100, 600);
        let young = event(FileStatus::Completed, 100, 5);
        let j = |e: &FileEvent, s| judge(e, s, now, grace);
        assert_eq!(j(&old, sinks(100, 100, 100)).status, "complete");
        let sup = j(&old, sinks(90, 90, 90));
        assert_eq!((sup.status, sup.superseded), ("complete", 10));
        assert_eq!(j(&young, sinks(90, 90, 90)).status, "in_flight");
        assert_eq!(j(&young, sinks(100, 40, 100)).status, "in_flight");
        assert_eq!(j(&young, sinks(0, 0, 0)).status, "in_flight");
        let none = j(&old, sinks(0, 0, 0));
        assert_eq!(none.status, "mismatch");
        assert_eq!(
            none.problems,
            vec!["no sink holds any of its 100 valid rows"]
        );
        let miss = j(&old, sinks(100, 95, 100));
        assert_eq!(miss.status, "mismatch");
        assert_eq!(miss.problems, vec!["finance is missing 5 rows"]);
        let over = j(&old, sinks(101, 100, 100));
        assert_eq!(over.status, "mismatch");
        assert!(over.problems[0].contains("warehouse holds 101 rows, more than the 100 valid"));
        assert_eq!(
            j(&event(FileStatus::Accepted, 0, 600), sinks(0, 0, 0)).status,
            "in_flight"
        );
        assert_eq!(
            j(&event(FileStatus::Failed, 0, 600), sinks(0, 0, 0)).status,
            "failed"
        );
        assert_eq!(
            j(&event(FileStatus::Failed, 0, 600), sinks(0, 2, 0)).status,
            "mismatch"
        );
    }
}
