//! `skuflow-search-indexer`: the Elasticsearch consumer group.

use clap::Parser;
use skuflow_platform::{shutdown, telemetry, KafkaArgs, TopicArgs};

#[derive(Debug, Parser)]
#[command(
    name = "skuflow-search-indexer",
    version,
    about = "Indexes sku.records.v1 into Elasticsearch, one index per country"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    indexer: skuflow_search_indexer::IndexerArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    let stop = shutdown::on_signal();
    skuflow_search_indexer::run(&cli.indexer, &cli.kafka, &cli.topics, stop).await?;
    Ok(())
}
