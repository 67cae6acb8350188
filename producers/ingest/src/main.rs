//! `skuflow-ingest`: bucket scan + ingest workers.

use clap::Parser;
use skuflow_platform::{ops, telemetry, KafkaArgs, OpsArgs, TopicArgs};

#[derive(Debug, Parser)]
#[command(
    name = "skuflow-ingest",
    version,
    about = "Streams store SKU uploads from buckets into Kafka"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    ingest: skuflow_ingest::IngestArgs,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = ops::start("ingest", &cli.log, &cli.ops, &cli.kafka).await?;
    let result = skuflow_ingest::run(&cli.ingest, &cli.kafka, &cli.topics, stop).await;
    telemetry::shutdown();
    result
}
