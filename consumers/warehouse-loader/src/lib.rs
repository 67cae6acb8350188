//! skuflow warehouse loader: `sku.records.v1` into PostgreSQL, one LIST partition per country,
//! exactly once per natural key (country, store_id, sku, business_date).

pub mod migrations;
pub mod sink;

use clap::Args;
use skuflow_platform::secret::Secret;
use skuflow_platform::shutdown::CancellationToken;

pub use sink::PgSink;

/// Default consumer group.
pub const GROUP: &str = "skuflow-warehouse-loader";

/// Flags of `skuflow-warehouse-loader`.
#[derive(Debug, Clone, Args)]
pub struct LoaderArgs {
    /// PostgreSQL connection string: `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=/ca.pem`
    /// or the key=value form; `sslmode` `disable`, `prefer` (default), `require`, `verify-ca`,
    /// `verify-full` as libpq reads them (without `sslrootcert`, `verify-*` trust the Mozilla
    /// roots). Never logged.
    #[arg(long = "pg-url", env = "SKUFLOW_PG_URL", hide_env_values = true)]
    pub pg_url: Secret,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

/// Runs the loader until `shutdown`.
pub async fn run(
    args: &LoaderArgs,
    kafka: &skuflow_platform::KafkaArgs,
    topics: &skuflow_platform::TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<skuflow_platform::consume::RunStats> {
    let group = args
        .consume
        .group
        .clone()
        .unwrap_or_else(|| GROUP.to_string());
    let mut sink = PgSink::new(args.pg_url.expose(), &group);
    // Fail fast on a wrong URL or missing privileges; an unreachable server is retried.
    match sink.connect().await {
        Ok(_) => {}
        Err(skuflow_platform::SinkError::Fatal(e)) => return Err(e),
        Err(e) => tracing::warn!(cause = %e, "PostgreSQL not reachable yet; will retry."),
    }
    skuflow_platform::run_sink(kafka, topics, &args.consume, GROUP, sink, shutdown).await
}
