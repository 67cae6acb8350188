//! `skuflow-warehouse-loader`: the PostgreSQL consumer group.

use clap::Parser;
use skuflow_platform::{shutdown, telemetry, KafkaArgs, TopicArgs};

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
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    let stop = shutdown::on_signal();
    skuflow_warehouse_loader::run(&cli.loader, &cli.kafka, &cli.topics, stop).await?;
    Ok(())
}
