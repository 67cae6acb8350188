//! `skuflow-warehouse-loader`: the PostgreSQL consumer group.

use clap::Parser;
use skuflow_platform::{ops, telemetry, KafkaArgs, OpsArgs, TopicArgs};

#[derive(Debug, Parser)]
#[command(
    name = "skuflow-warehouse-loader",
    version,
    about = "Loads sku.records.v1 into PostgreSQL exactly once"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    loader: skuflow_warehouse_loader::LoaderArgs,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = ops::start("warehouse-loader", &cli.log, &cli.ops, &cli.kafka).await?;
    let result = skuflow_warehouse_loader::run(&cli.loader, &cli.kafka, &cli.topics, stop).await;
    telemetry::shutdown();
    result.map(|_| ())
}
