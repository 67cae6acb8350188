//! `skuflow replay`: moves one sink's consumer group back (to the earliest offsets, a time, or
//! given offsets) so that it rebuilds from `sku.records.v1`. Nothing is duplicated: every sink
//! keeps one row per natural key and applies a version only when it is newer. For the sinks that
//! keep their offsets next to their data (the warehouse loader and the finance reporter), the
//! offsets in PostgreSQL move too; the dataset builder resumes from the offsets in its manifests,
//! so a dataset is rebuilt by deleting it first.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use skuflow_platform::{KafkaArgs, TopicArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SinkKind {
    WarehouseLoader,
    FinanceReporter,
    SearchIndexer,
    DatasetBuilder,
}

impl SinkKind {
    fn default_group(self) -> &'static str {
        match self {
            SinkKind::WarehouseLoader => skuflow_warehouse_loader::GROUP,
            SinkKind::FinanceReporter => skuflow_finance_reporter::GROUP,
            SinkKind::SearchIndexer => skuflow_search_indexer::GROUP,
            SinkKind::DatasetBuilder => skuflow_dataset_builder::GROUP,
        }
    }

    /// The table where the sink keeps its consumed offsets, if it keeps them in PostgreSQL.
    fn offsets_table(self) -> Option<&'static str> {
        match self {
            SinkKind::WarehouseLoader => Some(skuflow_warehouse_loader::migrations::OFFSETS_TABLE),
            SinkKind::FinanceReporter => Some(skuflow_finance_reporter::migrations::OFFSETS_TABLE),
            SinkKind::SearchIndexer | SinkKind::DatasetBuilder => None,
        }
    }
}

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

#[derive(Clone, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// The sink to rebuild.
    #[arg(long = "sink", value_enum)]
    sink: SinkKind,
    /// Its consumer group (default: the sink's default group).
    #[arg(long = "group")]
    group: Option<String>,
    /// Where to start again: `earliest`, an RFC 3339 time, or PARTITION:OFFSET[,...].
    #[arg(long = "to")]
    to: Target,
    /// PostgreSQL of the warehouse loader or the finance reporter (their offsets live there).
    /// Never logged.
    #[arg(long = "pg-url", env = "SKUFLOW_PG_URL", hide_env_values = true)]
    pg_url: Option<String>,
}

impl std::fmt::Debug for ReplayArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayArgs")
            .field("sink", &self.sink)
            .field("group", &self.group)
            .field("to", &self.to)
            .field("pg_url", &self.pg_url.as_ref().map(|_| "***"))
            .finish()
    }
}

const TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| args.sink.default_group().to_string());
    let topic = args.topics.records.as_str();
    let table = args.sink.offsets_table();
    if table.is_some() && args.pg_url.is_none() {
        bail!(
            "--sink {:?} keeps its offsets in PostgreSQL: give --pg-url",
            args.sink
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
                        args.sink.default_group()
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
    match &args.to {
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
        let mut client = skuflow_platform::pg::connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tx = client.transaction().await?;
        for (p, o) in &targets {
            tx.execute(
                &format!(
                    "INSERT INTO {table} (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
                ),
                &[&group, &topic, p, o],
            )
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
    if args.sink == SinkKind::DatasetBuilder {
        println!(
            "the dataset builder resumes from the offsets in its manifests: delete the dataset (or a country's _manifest.json) to rebuild it"
        );
    }
    println!("start the {} again to rebuild", args.sink.default_group());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
