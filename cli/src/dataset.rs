//! `skuflow dataset`: the versions of the training-set table, and a version exported for a
//! training run.

use clap::{Args, Subcommand};
use skuflow_dataset_builder::snapshot::{self, Pick};
use skuflow_dataset_builder::table::Location;

#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {
    /// The dataset root the builder writes (`--dataset-root` of skuflow-dataset-builder): a
    /// local directory or `s3://bucket/prefix` (credentials from the standard AWS_* variables).
    #[arg(
        long = "dataset-root",
        env = "SKUFLOW_DATASET_ROOT",
        default_value = "datasets",
        global = true
    )]
    root: String,
    #[command(subcommand)]
    action: DatasetAction,
}

#[derive(Debug, Subcommand)]
enum DatasetAction {
    /// The table's versions, newest first: time, operation, records and files of the batch,
    /// the builder that wrote it.
    Versions {
        /// How many versions to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copies one version's Parquet files (country=…/business_date=…/) and the dataset cards
    /// to a local directory or S3 prefix, with `_export.json` naming the version.
    Export {
        /// The version to export (default: the latest).
        #[arg(long, conflicts_with = "as_of")]
        version: Option<i64>,
        /// The version that was current at this time (2026-11-21T18:00:00Z, or a date for its
        /// end in UTC).
        #[arg(long = "as-of", value_parser = snapshot::parse_time)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Only this country.
        #[arg(long)]
        country: Option<String>,
        /// Where the snapshot goes: an empty local directory or `s3://bucket/prefix`.
        #[arg(long)]
        to: String,
    },
}

pub(crate) async fn run(args: DatasetArgs) -> anyhow::Result<()> {
    let location = Location::parse(&args.root, "--dataset-root")?;
    match args.action {
        DatasetAction::Versions { limit, json } => {
            let versions = snapshot::versions(&location, limit).await?;
            if json {
                for v in &versions {
                    println!("{}", serde_json::to_string(v)?);
                }
                return Ok(());
            }
            println!(
                "{:>8}  {:<24}  {:<8}  {:>9}  {:>5}  writer",
                "version", "committed (UTC)", "op", "records", "files"
            );
            for v in &versions {
                let info = |k: &str| v.info.get(k).cloned().unwrap_or_default();
                let writer = info("skuflow.writer");
                println!(
                    "{:>8}  {:<24}  {:<8}  {:>9}  {:>5}  {}",
                    v.version,
                    v.timestamp
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                        .unwrap_or_default(),
                    v.operation,
                    info("skuflow.records")
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    info("skuflow.files_written")
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    writer["group"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        DatasetAction::Export {
            version,
            as_of,
            country,
            to,
        } => {
            let pick = match (version, as_of) {
                (Some(v), _) => Pick::Version(v),
                (None, Some(t)) => Pick::AsOf(t),
                (None, None) => Pick::Latest,
            };
            let out = snapshot::export(&location, pick, country.as_deref(), &to).await?;
            let rows: u64 = out.rows.values().flat_map(|d| d.values()).sum();
            println!(
                "Exported version {} ({}) to {to}: {} files, {rows} rows, {} bytes; _export.json names the version.",
                out.table_version,
                out.version_timestamp
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "time unknown".into()),
                out.files.len(),
                out.bytes
            );
            Ok(())
        }
    }
}
