//! `skuflow-dataset-builder`: the Parquet training-set consumer group.

use clap::Parser;
use skuflow_platform::{ops, telemetry, KafkaArgs, OpsArgs, TopicArgs};

// Partitions hold millions of small strings: mimalloc allocates and frees them faster than the
// system allocator and keeps the freed memory for the next batch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "skuflow-dataset-builder",
    version,
    about = "Builds per-country Parquet training sets from sku.records.v1"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    builder: skuflow_dataset_builder::BuilderArgs,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = ops::start("dataset-builder", &cli.log, &cli.ops, &cli.kafka).await?;
    let result = skuflow_dataset_builder::run(&cli.builder, &cli.kafka, &cli.topics, stop).await;
    telemetry::shutdown();
    result.map(|_| ())
}
