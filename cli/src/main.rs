//! `skuflow`: the command line of the platform.
//!
//! - `skuflow topics create`: create the pipeline's topics with explicit partition counts.
//! - `skuflow demo`: the whole pipeline in one process on the embedded default (a local
//!   directory as the bucket, an in-process Kafka-API mock broker unless --brokers is given,
//!   local PostgreSQL) over generated uploads, with a summary at the end.

mod demo;

use clap::{Parser, Subcommand};
use skuflow_platform::kafka::{ensure_topics, pipeline_topics};
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
}

#[derive(Debug, Subcommand)]
enum TopicsAction {
    /// Create the topics that do not exist yet.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
        /// Partitions per topic.
        #[arg(long, env = "SKUFLOW_PARTITIONS", default_value_t = 6)]
        partitions: i32,
        /// More topics to create alongside (e.g. the S3 event-notification topic).
        #[arg(long = "also", value_delimiter = ',')]
        also: Vec<String>,
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
                    also,
                },
        } => {
            let mut specs = pipeline_topics(&topics, partitions);
            specs.extend(
                also.into_iter()
                    .map(|name| skuflow_platform::kafka::TopicSpec {
                        name,
                        partitions,
                        compacted: false,
                    }),
            );
            ensure_topics(&kafka, &specs).await?;
            println!(
                "topics ready: {}, {}, {}, {}",
                topics.uploads, topics.records, topics.rejects, topics.files
            );
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
    }
}
