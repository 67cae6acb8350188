//! `skuflow-search-indexer`: the Elasticsearch consumer group.

use clap::Parser;
use skuflow_platform::{ops, telemetry, KafkaArgs, OpsArgs, TopicArgs};

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
    ops: OpsArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = ops::start("search-indexer", &cli.log, &cli.ops, &cli.kafka).await?;
    let result = skuflow_search_indexer::run(&cli.indexer, &cli.kafka, &cli.topics, stop).await;
    telemetry::shutdown();
    result.map(|_| ())
}
