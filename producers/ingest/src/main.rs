//! `skuflow-ingest`: bucket scan + ingest workers.

use clap::Parser;
use skuflow_platform::{shutdown, telemetry, KafkaArgs, TopicArgs};

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
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    let stop = shutdown::on_signal();
    skuflow_ingest::run(&cli.ingest, &cli.kafka, &cli.topics, stop).await
}
