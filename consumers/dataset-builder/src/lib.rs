//! skuflow dataset builder: `sku.records.v1` into per-country, Hive-partitioned Parquet training
//! sets (`country=<CC>/business_date=<date>/`), exactly one row per natural key with its latest
//! version, derived features, a manifest and a dataset card per country.

pub mod card;
pub mod columns;
pub mod lease;
pub mod rows;
pub mod sink;

use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use object_store::path::Path;
use object_store::ObjectStore;
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
    /// Rows per Parquet row group.
    #[arg(long = "row-group-rows", env = "SKUFLOW_ROW_GROUP_ROWS", default_value_t = 128 * 1024)]
    pub row_group_rows: usize,
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
    /// Lifetime of the one-writer lease on the dataset root (`_writer.json`), in seconds: a
    /// builder elsewhere waits this long after its holder stopped without releasing it.
    #[arg(long = "writer-lease-secs", env = "SKUFLOW_WRITER_LEASE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub writer_lease_secs: u64,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

impl BuilderArgs {
    /// The object store, the prefix inside it, and the directory when the root is local.
    pub fn store(
        &self,
    ) -> anyhow::Result<(Arc<dyn ObjectStore>, Path, Option<std::path::PathBuf>)> {
        let root = skuflow_platform::store::open_root(&self.root, "--dataset-root")?;
        Ok((root.store, root.prefix, root.local_dir))
    }

    pub fn sink(&self) -> anyhow::Result<DatasetSink> {
        let split = rows::Split::parse(&self.split).map_err(anyhow::Error::msg)?;
        if !(1..=22).contains(&self.zstd_level) {
            bail!("--zstd-level {} is outside 1..=22", self.zstd_level);
        }
        let (store, root, local_dir) = self.store()?;
        let group = self.consume.group.as_deref().unwrap_or(GROUP);
        let lease = lease::Lease::new(
            store.clone(),
            &root,
            group,
            std::time::Duration::from_secs(self.writer_lease_secs),
        );
        let sink = DatasetSink::new(
            store,
            root,
            split,
            columns::Encoding {
                row_group_rows: self.row_group_rows.max(1),
                zstd_level: self.zstd_level,
            },
            self.cache_rows,
        );
        let sink = sink.with_lease(lease);
        Ok(match local_dir {
            Some(dir) => sink.with_local_dir(dir),
            None => sink,
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
    let sink = args.sink()?;
    tracing::info!(root = %args.root, split = %args.split, "Building datasets.");
    skuflow_platform::run_sink(kafka, topics, &args.consume, GROUP, sink, shutdown).await
}
