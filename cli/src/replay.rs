//! `skuflow replay`, two ways:
//!
//! * `--country/--from/--until`: re-ingests the uploads of those countries and business dates
//!   that are in `processed/`, found on the lifecycle topic `sku.files.v1`. Each is queued on
//!   `sku.uploads.v1` as a replay of its object in `processed/`; ingest reads it as the upload it
//!   was (same file id, record ids and versions), so sinks that hold its rows change nothing and
//!   sinks that lost them get them back, and a later correction is never overwritten.
//! * `--sink/--to`: moves one sink's consumer group back (to the earliest offsets, a time, or
//!   given offsets) so that it rebuilds from `sku.records.v1`. For the sinks that keep their
//!   offsets next to their data (the warehouse loader and the finance reporter), the offsets in
//!   PostgreSQL move too; the dataset builder resumes from the offsets its Delta table holds, so
//!   a dataset is rebuilt into a new dataset root.
//!
//! Nothing is duplicated either way: every sink keeps one row per natural key and applies a
//! version only when it is newer than the one it holds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use skuflow_platform::component::{OffsetsHome, SinkInfo};
use skuflow_platform::{KafkaArgs, TopicArgs};
use skuflow_schemas::{FileEvent, FileStatus, Trigger, UploadRequest};

/// Where to start again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Earliest,
    Time(DateTime<Utc>),
    Offsets(BTreeMap<i32, i64>),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "earliest" {
            return Ok(Target::Earliest);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Target::Time(t.with_timezone(&Utc)));
        }
        let mut out = BTreeMap::new();
        for part in s.split(',') {
            let (p, o) = part.split_once(':').ok_or_else(|| {
                format!(
                    "`{part}`: expected `earliest`, an RFC 3339 time, or PARTITION:OFFSET[,...]"
                )
            })?;
            let p: i32 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{p}` is not a partition number"))?;
            let o: i64 = o
                .trim()
                .parse()
                .map_err(|_| format!("`{o}` is not an offset"))?;
            if p < 0 || o < 0 {
                return Err(format!("`{part}`: partitions and offsets are not negative"));
            }
            if out.insert(p, o).is_some() {
                return Err(format!("partition {p} given twice"));
            }
        }
        Ok(Target::Offsets(out))
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// The sink to rebuild (with --to): warehouse-loader, finance-reporter, search-indexer or
    /// dataset-builder.
    #[arg(long = "sink", value_parser = crate::sinks::by_name)]
    sink: Option<SinkInfo>,
    /// Its consumer group (default: the sink's default group).
    #[arg(long = "group")]
    group: Option<String>,
    /// Where to start again: `earliest`, an RFC 3339 time, or PARTITION:OFFSET[,...].
    #[arg(long = "to")]
    to: Option<Target>,
    /// Re-ingest the processed uploads of these countries (ISO 3166-1 alpha-2, comma-separated).
    #[arg(long = "country", value_delimiter = ',')]
    countries: Vec<String>,
    /// Re-ingest uploads whose business date is on or after this day (YYYY-MM-DD).
    #[arg(long = "from")]
    from: Option<NaiveDate>,
    /// Re-ingest uploads whose business date is on or before this day (YYYY-MM-DD).
    #[arg(long = "until")]
    until: Option<NaiveDate>,
    /// Where ingest moves completed uploads.
    #[arg(long = "processed-prefix", default_value = "processed/")]
    processed_prefix: String,
    /// List what would be re-ingested without queueing it.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// PostgreSQL of the warehouse loader or the finance reporter (their offsets live there).
    /// Never logged.
    #[arg(long = "pg-url", env = "SKUFLOW_PG_URL", hide_env_values = true)]
    pg_url: Option<skuflow_platform::secret::Secret>,
}

const TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let reingest = !args.countries.is_empty() || args.from.is_some() || args.until.is_some();
    match (args.sink, &args.to, reingest) {
        (Some(sink), Some(to), false) => move_group(&args, sink, to).await,
        (None, None, true) => reingest_files(&args).await,
        (Some(_), None, false) => bail!("--sink needs --to (earliest, a time or offsets)"),
        (None, Some(_), false) => bail!("--to needs --sink"),
        (None, None, false) => bail!(
            "say what to replay: --country/--from/--until to re-ingest processed uploads, or --sink and --to to rebuild a sink"
        ),
        _ => bail!("--country/--from/--until re-ingest uploads; --sink/--to rebuild a sink: give one or the other"),
    }
}

/// A processed upload chosen for re-ingest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chosen {
    pub bucket: String,
    pub processed_key: String,
    pub request: UploadRequest,
}

/// The completed uploads of `events` in `processed/` that match the countries and dates.
pub(crate) fn choose(
    events: &HashMap<String, FileEvent>,
    countries: &[String],
    from: Option<NaiveDate>,
    until: Option<NaiveDate>,
    processed_prefix: &str,
) -> Vec<Chosen> {
    let countries: Vec<String> = countries
        .iter()
        .map(|c| c.trim().to_ascii_uppercase())
        .collect();
    let mut out: Vec<Chosen> = events
        .values()
        .filter(|e| e.status == FileStatus::Completed)
        .filter(|e| {
            countries.is_empty()
                || e.country
                    .as_deref()
                    .is_some_and(|c| countries.iter().any(|w| w == c))
        })
        .filter(|e| match e.business_date {
            Some(d) => from.is_none_or(|f| d >= f) && until.is_none_or(|u| d <= u),
            None => from.is_none() && until.is_none(),
        })
        .filter_map(|e| {
            let key = e.moved_to.as_deref()?;
            key.starts_with(processed_prefix).then(|| {
                let mut request =
                    UploadRequest::new(&e.bucket, key, e.etag.clone(), e.size, Trigger::Replay);
                request.last_modified = e.last_modified;
                Chosen {
                    bucket: e.bucket.clone(),
                    processed_key: key.to_string(),
                    request,
                }
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.bucket, &a.processed_key).cmp(&(&b.bucket, &b.processed_key)));
    out
}

async fn reingest_files(args: &ReplayArgs) -> anyhow::Result<()> {
    for c in &args.countries {
        if !skuflow_ingest::codes::is_country(&c.trim().to_ascii_uppercase()) {
            bail!("--country {c:?} is not an ISO 3166-1 alpha-2 code");
        }
    }
    if let (Some(f), Some(u)) = (args.from, args.until) {
        if f > u {
            bail!("--from {f} is after --until {u}");
        }
    }
    let events = crate::status::read_files(&args.kafka, &args.topics.files)?;
    let chosen = choose(
        &events,
        &args.countries,
        args.from,
        args.until,
        &args.processed_prefix,
    );
    if chosen.is_empty() {
        println!("no completed upload in {} matches", args.processed_prefix);
        return Ok(());
    }
    let producer: FutureProducer = args
        .kafka
        .producer_config()
        .create()
        .context("creating the producer of upload requests")?;
    for c in &chosen {
        println!("  {}/{}", c.bucket, c.processed_key);
        if args.dry_run {
            continue;
        }
        let (key, payload, headers) = skuflow_ingest::discovery::upload_message(&c.request)?;
        producer
            .send(
                FutureRecord::to(&args.topics.uploads)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
                TIMEOUT,
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("queueing {}/{}: {e}", c.bucket, c.processed_key))?;
    }
    if args.dry_run {
        println!("{} uploads would be re-ingested (dry run)", chosen.len());
    } else {
        println!(
            "{} uploads queued on {} for re-ingest; `skuflow status` follows them",
            chosen.len(),
            args.topics.uploads
        );
    }
    Ok(())
}

async fn move_group(args: &ReplayArgs, sink: SinkInfo, to: &Target) -> anyhow::Result<()> {
    let group = args.group.clone().unwrap_or_else(|| sink.group.to_string());
    let topic = args.topics.records.as_str();
    let table = match sink.offsets {
        OffsetsHome::Postgres { table } => Some(table),
        OffsetsHome::Broker | OffsetsHome::WithData { .. } => None,
    };
    if table.is_some() && args.pg_url.is_none() {
        bail!(
            "--sink {} keeps its offsets in PostgreSQL: give --pg-url",
            sink.name
        );
    }
    let consumer: BaseConsumer = args
        .kafka
        .consumer_config(&group)
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0")
        .create()
        .context("creating a client of the group")?;
    // Moving offsets under running members would be undone by their next commit. A broker
    // that cannot describe groups (tansu) leaves this check to the operator.
    match consumer.fetch_group_list(Some(&group), TIMEOUT) {
        Ok(groups) => {
            if let Some(g) = groups.groups().iter().find(|g| g.name() == group) {
                if !g.members().is_empty() {
                    bail!(
                        "consumer group {group} has {} active member(s): stop every {} first",
                        g.members().len(),
                        sink.name
                    );
                }
            }
        }
        Err(e) => eprintln!(
            "warning: the broker did not describe group {group} ({e}); make sure none of its members runs"
        ),
    }
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if partitions == 0 {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    let mut targets: BTreeMap<i32, i64> = BTreeMap::new();
    match to {
        Target::Earliest => {
            for p in 0..partitions {
                targets.insert(p, consumer.fetch_watermarks(topic, p, TIMEOUT)?.0);
            }
        }
        Target::Time(t) => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(topic, p, Offset::Offset(t.timestamp_millis()))?;
            }
            let found = consumer
                .offsets_for_times(tpl, TIMEOUT)
                .context("finding the offsets of that time")?;
            for e in found.elements() {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    // No message at or after that time: start at the end.
                    _ => consumer.fetch_watermarks(topic, e.partition(), TIMEOUT)?.1,
                };
                targets.insert(e.partition(), o);
            }
        }
        Target::Offsets(given) => {
            for (p, o) in given {
                if *p >= partitions {
                    bail!("{topic} has {partitions} partitions; there is no partition {p}");
                }
                let (low, high) = consumer.fetch_watermarks(topic, *p, TIMEOUT)?;
                if *o < low || *o > high {
                    bail!("offset {o} of partition {p} is outside {low}..={high}");
                }
                targets.insert(*p, *o);
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &targets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    let before = consumer.committed_offsets(tpl.clone(), TIMEOUT).ok();
    consumer
        .commit(&tpl, CommitMode::Sync)
        .context("committing the new offsets of the group")?;
    if let (Some(table), Some(url)) = (table, &args.pg_url) {
        let mut client = skuflow_platform::pg::connect(url.expose())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // A database restored empty (or rebuilt from scratch) has no offsets table yet: the
        // sink creates it when it starts, and the group's offsets committed above decide.
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await?
            .get(0);
        if !exists {
            println!("{table} does not exist (a new database): the group's offsets decide");
        }
        let tx = client.transaction().await?;
        if exists {
            skuflow_platform::pg::move_offsets(&tx, table, &group, topic, &targets)
                .await
                .with_context(|| format!("moving the offsets stored in {table}"))?;
        }
        tx.commit().await?;
    }
    println!("consumer group {group} on {topic} moved back:");
    for (p, o) in &targets {
        let was = before
            .as_ref()
            .and_then(|b| b.find_partition(topic, *p))
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .map_or("none".to_string(), |o| o.to_string());
        println!("  partition {p}: {o} (was {was})");
    }
    if let OffsetsHome::WithData { reset } = sink.offsets {
        println!(
            "the {} resumes from the offsets it keeps with its data: {reset}",
            sink.name
        );
    }
    println!("start the {} again to rebuild", sink.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        id: &str,
        status: FileStatus,
        country: &str,
        day: &str,
        moved: Option<&str>,
    ) -> FileEvent {
        let mut e: FileEvent = serde_json::from_value(serde_json::json!({
            "schema": skuflow_schemas::FILE_SCHEMA, "file_id": id, "status": status,
            "bucket": format!("skus-{}", country.to_lowercase()),
            "key": format!("incoming/individual/s1/{day}/{id}.csv"),
            "country": country, "business_date": day, "etag": format!("\"{id}\""),
            "last_modified": "2026-11-20T08:00:00Z", "at": "2026-11-20T09:00:00Z",
        }))
        .unwrap();
        e.moved_to = moved.map(str::to_string);
        e
    }

    #[test]
    fn chooses_completed_processed_uploads_by_country_and_day() {
        let events: HashMap<String, FileEvent> = [
            ev(
                "a",
                FileStatus::Completed,
                "DE",
                "2026-11-19",
                Some("processed/individual/s1/2026-11-19/a.csv"),
            ),
            ev(
                "b",
                FileStatus::Completed,
                "DE",
                "2026-11-20",
                Some("processed/individual/s1/2026-11-20/b.csv"),
            ),
            ev(
                "c",
                FileStatus::Completed,
                "FR",
                "2026-11-20",
                Some("processed/individual/s1/2026-11-20/c.csv"),
            ),
            ev(
                "d",
                FileStatus::Failed,
                "DE",
                "2026-11-20",
                Some("errors/individual/s1/2026-11-20/d.csv"),
            ),
            ev("e", FileStatus::Accepted, "DE", "2026-11-20", None),
            ev(
                "f",
                FileStatus::Completed,
                "DE",
                "2026-11-21",
                Some("processed/individual/s1/2026-11-21/f.csv"),
            ),
        ]
        .into_iter()
        .map(|e| (e.file_id.clone(), e))
        .collect();
        let day = |s: &str| s.parse::<NaiveDate>().ok();
        let keys = |c: Vec<Chosen>| c.into_iter().map(|c| c.processed_key).collect::<Vec<_>>();
        let de = choose(
            &events,
            &["de".into()],
            day("2026-11-20"),
            day("2026-11-21"),
            "processed/",
        );
        assert_eq!(
            keys(de.clone()),
            vec![
                "processed/individual/s1/2026-11-20/b.csv",
                "processed/individual/s1/2026-11-21/f.csv"
            ]
        );
        let r = &de[0].request;
        assert_eq!(r.trigger, Trigger::Replay);
        assert_eq!(r.bucket, "skus-de");
        assert_eq!(r.etag.as_deref(), Some("\"b\""));
        assert_eq!(
            r.last_modified,
            "2026-11-20T08:00:00Z".parse().ok(),
            "the original version"
        );
        assert_eq!(
            choose(
                &events,
                &[],
                day("2026-11-20"),
                day("2026-11-20"),
                "processed/"
            )
            .len(),
            2
        );
        assert_eq!(
            choose(
                &events,
                &["DE".into(), "FR".into()],
                None,
                None,
                "processed/"
            )
            .len(),
            4
        );
        assert!(choose(&events, &["NL".into()], None, None, "processed/").is_empty());
    }

    #[test]
    fn targets_parse_or_say_why_not() {
        assert_eq!("earliest".parse::<Target>(), Ok(Target::Earliest));
        assert!(matches!(
            "2026-11-20T10:00:00Z".parse::<Target>(),
            Ok(Target::Time(_))
        ));
        assert_eq!(
            "0:5, 2:7".parse::<Target>(),
            Ok(Target::Offsets(BTreeMap::from([(0, 5), (2, 7)])))
        );
        assert!("0:5,0:6"
            .parse::<Target>()
            .unwrap_err()
            .contains("given twice"));
        assert!("yesterday"
            .parse::<Target>()
            .unwrap_err()
            .contains("expected `earliest`"));
        assert!(
            "0:-1"
                .parse::<Target>()
                .unwrap_err()
                .contains("not an offset")
                || "0:-1"
                    .parse::<Target>()
                    .unwrap_err()
                    .contains("not negative")
        );
    }
}
