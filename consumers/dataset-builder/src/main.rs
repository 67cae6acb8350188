//! `skuflow-dataset-builder`: the Parquet training-set consumer group.

use clap::Parser;
use skuflow_platform::{shutdown, telemetry, KafkaArgs, TopicArgs};

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
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    let stop = shutdown::on_signal();
    skuflow_dataset_builder::run(&cli.builder, &cli.kafka, &cli.topics, stop).await?;
    Ok(())
}
