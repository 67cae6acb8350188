//! `skuflow-finance-reporter`: the finance consumer group.

use clap::Parser;
use skuflow_platform::{ops, telemetry, KafkaArgs, OpsArgs, TopicArgs};

#[derive(Debug, Parser)]
#[command(
    name = "skuflow-finance-reporter",
    version,
    about = "Keeps exact revenue and margin aggregates of sku.records.v1 in PostgreSQL and writes reports with projections"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    reporter: skuflow_finance_reporter::ReporterArgs,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = ops::start("finance-reporter", &cli.log, &cli.ops, &cli.kafka).await?;
    let result = skuflow_finance_reporter::run(&cli.reporter, &cli.kafka, &cli.topics, stop).await;
    telemetry::shutdown();
    result.map(|_| ())
}
