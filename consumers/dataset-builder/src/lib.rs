//! skuflow dataset builder: `sku.records.v1` into per-country, Hive-partitioned Parquet training
//! sets (`country=<CC>/business_date=<date>/`), exactly one row per natural key with its latest
//! version, derived features, a manifest and a dataset card per country.

pub mod card;
pub mod columns;
pub mod lease;
pub mod rows;
pub mod sink;
pub mod snapshot;
pub mod table;

use anyhow::bail;
use clap::Args;
use object_store::path::Path;
use skuflow_platform::component::{self, Component, OffsetsHome, RowCount, SinkInfo};
use skuflow_platform::shutdown::CancellationToken;

pub use sink::DatasetSink;

/// Default consumer group.
pub const GROUP: &str = "skuflow-dataset-builder";

/// Flags of `skuflow-dataset-builder`.
#[derive(Debug, Clone, Args)]
pub struct BuilderArgs {
    /// Where the datasets go: a local directory, or `s3://bucket/prefix` (credentials, region
    /// and endpoint from the standard AWS_* variables).
    #[arg(
        long = "dataset-root",
        env = "SKUFLOW_DATASET_ROOT",
        default_value = "datasets"
    )]
    pub root: String,
    /// Train/validation/test weights.
    #[arg(long = "split", env = "SKUFLOW_SPLIT", default_value = "80/10/10")]
    pub split: String,
    /// Cut-off dates of the split by time, `validation_from,test_from` (e.g.
    /// `2026-11-01,2026-11-15`): the `time_split` column is `train` before the first,
    /// `validation` from it, `test` from the second; null without them. Applies to the files
    /// written from then on: rebuild into a new root to apply new cut-offs to every day.
    #[arg(long = "time-split", env = "SKUFLOW_TIME_SPLIT")]
    pub time_split: Option<String>,
    /// Rows per Parquet row group.
    #[arg(long = "row-group-rows", env = "SKUFLOW_ROW_GROUP_ROWS", default_value_t = 128 * 1024)]
    pub row_group_rows: usize,
    /// Size of the data files: a batch's new keys of a Kafka partition and day go to new files
    /// of at most this size, and compaction (`--optimize-every-secs`) joins smaller files up to
    /// it. Bytes, or with KiB, MiB, GiB (KB, MB, GB: powers of 1000). A target, not a limit:
    /// a file's rows are counted from the last file's bytes per row.
    #[arg(long = "target-file-size", env = "SKUFLOW_TARGET_FILE_SIZE", default_value = "128MiB",
          value_parser = parse_size)]
    pub target_file_bytes: u64,
    /// zstd level (1–22).
    #[arg(long = "zstd-level", env = "SKUFLOW_ZSTD_LEVEL", default_value_t = 3)]
    pub zstd_level: i32,
    /// Most rows kept in memory between batches (beyond it, files are re-read when touched).
    #[arg(
        long = "cache-rows",
        env = "SKUFLOW_CACHE_ROWS",
        default_value_t = 2_000_000
    )]
    pub cache_rows: usize,
    /// A one-writer lease on the dataset root (`_writer.json`), lasting this many seconds
    /// (5–3600): only its holder writes, and a builder elsewhere waits this long after the
    /// holder stopped without releasing it. 0 (the default): no lease; any number of builders
    /// of the group write the table, each batch a version of its own, and a batch that loses
    /// the commit race to another builder's is written again on the version that won.
    #[arg(long = "writer-lease-secs", env = "SKUFLOW_WRITER_LEASE_SECS", default_value_t = 0,
          value_parser = parse_lease_secs)]
    pub writer_lease_secs: u64,
    /// Days of history the table keeps: every version of the last this many days stays
    /// readable (time travel, `skuflow dataset export`); VACUUM deletes the files that only
    /// older versions name, and the log entries older than that go at checkpoints.
    #[arg(long = "keep-days", env = "SKUFLOW_DATASET_KEEP_DAYS", default_value_t = sink::DEFAULT_KEEP_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub keep_days: u32,
    /// How often the builder vacuums the table, in seconds (0: never; then run it elsewhere).
    #[arg(
        long = "vacuum-every-secs",
        env = "SKUFLOW_DATASET_VACUUM_EVERY_SECS",
        default_value_t = 3600
    )]
    pub vacuum_every_secs: u64,
    /// How often the builder compacts small files (OPTIMIZE), in seconds (0: never): per
    /// country, day and Kafka partition, files under the target size are joined into files of
    /// up to it, in a version of their own that changes no row.
    #[arg(
        long = "optimize-every-secs",
        env = "SKUFLOW_DATASET_OPTIMIZE_EVERY_SECS",
        default_value_t = sink::DEFAULT_OPTIMIZE_EVERY_SECS
    )]
    pub optimize_every_secs: u64,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

impl BuilderArgs {
    pub fn sink(&self) -> anyhow::Result<DatasetSink> {
        let mut split = rows::Split::parse(&self.split).map_err(anyhow::Error::msg)?;
        if let Some(t) = &self.time_split {
            split = split.with_time_split(t).map_err(anyhow::Error::msg)?;
        }
        if !(1..=22).contains(&self.zstd_level) {
            bail!("--zstd-level {} is outside 1..=22", self.zstd_level);
        }
        let location = table::Location::parse(&self.root, "--dataset-root")?;
        let group = self.consume.group.as_deref().unwrap_or(GROUP);
        let sink = DatasetSink::new(
            location,
            split,
            columns::Encoding {
                row_group_rows: self.row_group_rows.max(1),
                zstd_level: self.zstd_level,
            },
            self.cache_rows,
        );
        let mut sink = sink.with_writer(group);
        if self.writer_lease_secs > 0 {
            let lease = lease::Lease::new(
                sink.store(),
                &Path::default(),
                group,
                std::time::Duration::from_secs(self.writer_lease_secs),
            );
            sink = sink.with_lease(lease);
        }
        Ok(sink
            .with_target_file_bytes(self.target_file_bytes)
            .with_maintenance(sink::Maintenance {
                keep_days: self.keep_days,
                vacuum_every: std::time::Duration::from_secs(self.vacuum_every_secs),
                optimize_every: std::time::Duration::from_secs(self.optimize_every_secs),
            }))
    }
}

/// `--writer-lease-secs`: 0 (no lease) or 5 to 3600 seconds.
fn parse_lease_secs(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if n == 0 || (5..=3600).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is outside 0 (no lease) and 5..=3600"))
    }
}

/// Parses `512`, `64KiB`, `128MiB`, `1GiB`, `500MB` (spaces and case ignored) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number.parse().map_err(|_| {
        format!("size {s:?}: want a whole number with an optional unit, e.g. 128MiB")
    })?;
    let scale: u64 = match unit {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "size {s:?}: unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("size {s:?}: must be above zero and under 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}

/// The dataset builder as a component of the consume loop.
pub struct DatasetBuilder;

#[async_trait::async_trait]
impl Component for DatasetBuilder {
    const INFO: SinkInfo = SinkInfo {
        name: "dataset-builder",
        label: "dataset",
        group: GROUP,
        offsets: OffsetsHome::WithData {
            reset: "its table holds them; give it a new --dataset-root to rebuild into a fresh table (the old one keeps its versions)",
        },
        rows: RowCount::DatasetFiles,
    };
    const ABOUT: &'static str = "Builds per-country Parquet training sets from sku.records.v1";
    type Args = BuilderArgs;
    type Sink = DatasetSink;

    fn consume_args(args: &BuilderArgs) -> &skuflow_platform::ConsumeArgs {
        &args.consume
    }

    async fn build(
        args: &BuilderArgs,
        _group: &str,
        _shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<DatasetSink>> {
        let sink = args.sink()?;
        tracing::info!(root = %args.root, split = %args.split, "Building datasets.");
        Ok(Some(sink))
    }

    fn demo_args(place: &component::DemoPlace) -> Option<BuilderArgs> {
        Some(BuilderArgs {
            root: place.dir.display().to_string(),
            split: "80/10/10".into(),
            time_split: None,
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            target_file_bytes: sink::DEFAULT_TARGET_FILE_BYTES,
            cache_rows: 2_000_000,
            writer_lease_secs: 0,
            keep_days: sink::DEFAULT_KEEP_DAYS,
            vacuum_every_secs: 3600,
            optimize_every_secs: sink::DEFAULT_OPTIMIZE_EVERY_SECS,
            consume: place.consume.clone(),
        })
    }
}

/// Runs the builder until `shutdown`.
pub async fn run(
    args: &BuilderArgs,
    kafka: &skuflow_platform::KafkaArgs,
    topics: &skuflow_platform::TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<skuflow_platform::consume::RunStats> {
    component::run::<DatasetBuilder>(args, kafka, topics, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("128 MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        for bad in ["", "0", "12 parsecs", "-5MiB", "1.5GiB", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
