//! `skuflow`: the command line of the platform.
//!
//! - `skuflow topics create`: create the pipeline's topics with explicit partition counts.
//! - `skuflow demo`: the whole pipeline in one process on the embedded default (a local
//!   directory as the bucket, an in-process Kafka-API mock broker unless --brokers is given,
//!   local PostgreSQL) over generated uploads, with a summary at the end.
//! - `skuflow status`: per-upload lineage across the sinks.
//! - `skuflow replay`: move a sink's consumer group back to rebuild it.
//! - `skuflow dataset`: the training-set table's versions, and one exported for a training run.
//! - `skuflow report`: a finance report (CSV, JSON, HTML with projections) from the finance
//!   reporter's aggregates, on demand.

mod dataset;
mod demo;
mod replay;
mod sinks;
mod status;

use clap::{Parser, Subcommand};
use skuflow_platform::{telemetry, KafkaArgs, TopicArgs};

#[derive(Debug, Parser)]
#[command(
    name = "skuflow",
    version,
    about = "skuflow: store SKU uploads streamed to every sink, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the pipeline's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Run the pipeline end to end on generated uploads and print a summary.
    Demo(demo::DemoArgs),
    /// Write a finance report now (daily.csv, projections.csv, summary.json, report.html).
    Report(ReportCmd),
    /// Per upload: rows accepted and rejected by ingest and the rows each sink holds; exits
    /// with 1 when a sink is missing rows of a completed file.
    Status(status::StatusArgs),
    /// Move one sink's consumer group back (earliest, a time, or offsets) to rebuild it; sinks
    /// keep one row per natural key, so nothing is duplicated.
    Replay(replay::ReplayArgs),
    /// The training-set table: its versions, and one exported for a training run.
    Dataset(dataset::DatasetArgs),
    /// Keys of the ingest HTTP API.
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyAction,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyAction {
    /// Make a key: prints the token (shown once, give it to the caller) and the entry to add to
    /// the --api-keys-file of the ingest (which holds only the token's hash).
    New {
        /// A name for the key, in logs and audits.
        #[arg(long)]
        id: String,
        /// A bucket the key may queue from (repeat it for several; `*`: every bucket).
        #[arg(long = "bucket", required = true)]
        buckets: Vec<String>,
        /// Only keys under this prefix, e.g. one store's folder `incoming/individual/s-17/`.
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ReportCmd {
    /// PostgreSQL connection string of the finance reporter. Never logged.
    #[arg(long = "pg-url", env = "SKUFLOW_PG_URL", hide_env_values = true)]
    pg_url: skuflow_platform::secret::Secret,
    #[command(flatten)]
    report: skuflow_finance_reporter::ReportArgs,
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create the topics that do not exist yet; with --check, report how existing ones differ.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
        /// Partitions per topic.
        #[arg(long, env = "SKUFLOW_PARTITIONS", default_value_t = 6)]
        partitions: i32,
        /// Replicas per partition (default: 3, or the number of brokers when there are fewer).
        #[arg(long = "replication-factor", env = "SKUFLOW_REPLICATION_FACTOR",
              value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: Option<i32>,
        /// In-sync replicas a write needs (default: one less than the replicas, at least 1).
        #[arg(long = "min-insync-replicas", env = "SKUFLOW_MIN_INSYNC_REPLICAS",
              value_parser = clap::value_parser!(i32).range(1..))]
        min_insync_replicas: Option<i32>,
        /// Hours the upload requests are kept.
        #[arg(long = "uploads-retention-hours", default_value_t = 168)]
        uploads_retention_hours: u64,
        /// Hours the records are kept (a sink rebuilt from the topic can go this far back).
        #[arg(long = "records-retention-hours", default_value_t = 168)]
        records_retention_hours: u64,
        /// Hours the dead letters are kept.
        #[arg(long = "rejects-retention-hours", default_value_t = 720)]
        rejects_retention_hours: u64,
        /// More topics to create alongside (e.g. the S3 event-notification topic).
        #[arg(long = "also", value_delimiter = ',')]
        also: Vec<String>,
        /// Create nothing: list how the existing topics differ from this layout, and exit
        /// with 1 when they do.
        #[arg(long)]
        check: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    match cli.command {
        Command::Topics {
            action:
                TopicsAction::Create {
                    kafka,
                    topics,
                    partitions,
                    replication_factor,
                    min_insync_replicas,
                    uploads_retention_hours,
                    records_retention_hours,
                    rejects_retention_hours,
                    also,
                    check,
                },
        } => {
            use skuflow_platform::kafka::{broker_count, create_topics, topic_drift, TopicLayout};
            let hours = |h: u64| std::time::Duration::from_secs(h * 3600);
            let layout = TopicLayout {
                partitions,
                replication_factor,
                min_insync_replicas,
                uploads_retention: hours(uploads_retention_hours),
                records_retention: hours(records_retention_hours),
                rejects_retention: hours(rejects_retention_hours),
            };
            let brokers = broker_count(&kafka)?;
            let (mut specs, replication) = layout.specs(&topics, brokers);
            if replication_factor.is_none() && replication < 3 {
                eprintln!(
                    "warning: the cluster has {brokers} broker(s): topics get {replication} replica(s); \
                     a production cluster needs 3 to lose a broker without losing data"
                );
            }
            if replication > brokers {
                anyhow::bail!(
                    "--replication-factor {replication} is more than the {brokers} broker(s) of the cluster"
                );
            }
            specs.extend(
                also.into_iter()
                    .map(|name| skuflow_platform::kafka::TopicSpec::new(name, partitions, false)),
            );
            if check {
                let drift = topic_drift(&kafka, &specs, replication).await?;
                if drift.is_empty() {
                    println!(
                        "topics match the layout ({} topics, replication {replication})",
                        specs.len()
                    );
                    return Ok(());
                }
                for d in &drift {
                    println!("drift: {d}");
                }
                std::process::exit(1);
            }
            create_topics(&kafka, &specs, replication).await?;
            println!(
                "topics ready (replication {replication}): {}, {}, {}, {}",
                topics.uploads, topics.records, topics.rejects, topics.files
            );
            Ok(())
        }
        Command::ApiKey {
            action:
                ApiKeyAction::New {
                    id,
                    buckets,
                    prefix,
                },
        } => {
            use skuflow_ingest::apikeys::{hash_token, new_token, KeyEntry};
            let token = new_token()?;
            let entry = KeyEntry {
                sha256: hash_token(&token),
                id,
                buckets,
                prefix,
            };
            println!("token (give it to the caller; it is not stored anywhere): {token}");
            println!(
                "entry for the \"keys\" list of --api-keys-file: {}",
                serde_json::to_string(&entry)?
            );
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Dataset(args) => dataset::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Status(args) => {
            if status::run(args).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Report(ReportCmd { pg_url, report }) => {
            let r = skuflow_finance_reporter::reporting::run(pg_url.expose(), &report).await?;
            println!(
                "report written to {}: {} aggregate rows, {} countries, {} projections, {} days without a rate",
                report.out,
                r.rows,
                r.totals.len(),
                r.projections.iter().filter(|p| p.projection.is_some()).count(),
                r.missing_rates.len()
            );
            for t in &r.totals {
                println!(
                    "  {} {}: revenue {} gross margin {} ({} in {})",
                    t.country,
                    t.currency,
                    t.sums.revenue,
                    t.sums.gross_margin,
                    t.revenue_reporting,
                    r.reporting_currency
                );
            }
            Ok(())
        }
    }
}
