//! skuflow warehouse loader: `sku.records.v1` into PostgreSQL, one LIST partition per country,
//! exactly once per natural key (country, store_id, sku, business_date).

pub mod migrations;
pub mod quality;
pub mod sink;

use clap::Args;
use skuflow_platform::component::{self, Component, OffsetsHome, RowCount, SinkInfo};
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
    /// Days rejected rows stay in `skuflow.rejects` (0: for ever); older ones are deleted hourly.
    #[arg(
        long = "rejects-retention-days",
        env = "SKUFLOW_REJECTS_RETENTION_DAYS",
        default_value_t = 90
    )]
    pub rejects_retention_days: u32,
    /// Only the facts: no `skuflow.files` and `skuflow.rejects` (their consumer groups
    /// `<group>-files` and `<group>-rejects` do not run).
    #[arg(long = "no-quality-tables", env = "SKUFLOW_NO_QUALITY_TABLES")]
    pub no_quality_tables: bool,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

/// The warehouse loader as a component of the consume loop.
pub struct WarehouseLoader;

#[async_trait::async_trait]
impl Component for WarehouseLoader {
    const INFO: SinkInfo = SinkInfo {
        name: "warehouse-loader",
        label: "warehouse",
        group: GROUP,
        offsets: OffsetsHome::Postgres {
            table: migrations::OFFSETS_TABLE,
        },
        rows: RowCount::PostgresTable {
            table: migrations::FACT_TABLE,
        },
    };
    const ABOUT: &'static str = "Loads sku.records.v1 into PostgreSQL exactly once";
    type Args = LoaderArgs;
    type Sink = PgSink;

    fn consume_args(args: &LoaderArgs) -> &skuflow_platform::ConsumeArgs {
        &args.consume
    }

    /// The upload history and the rejected rows, each its own consumer group beside the facts'.
    fn spawn_tasks(
        args: &LoaderArgs,
        kafka: &skuflow_platform::KafkaArgs,
        topics: &skuflow_platform::TopicArgs,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if args.no_quality_tables {
            return Ok(());
        }
        let group = args.consume.group.as_deref().unwrap_or(GROUP);
        let (files, rejects) = (format!("{group}-files"), format!("{group}-rejects"));
        let (url, days) = (args.pg_url.clone(), args.rejects_retention_days);
        let g = files.clone();
        component::spawn_group(
            move || quality::FilesSink::new(url.expose(), &g),
            files,
            &args.consume,
            kafka,
            topics,
            shutdown,
        );
        let (url, g) = (args.pg_url.clone(), rejects.clone());
        component::spawn_group(
            move || quality::RejectsSink::new(url.expose(), &g, days),
            rejects,
            &args.consume,
            kafka,
            topics,
            shutdown,
        );
        Ok(())
    }

    async fn build(
        args: &LoaderArgs,
        group: &str,
        _shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<PgSink>> {
        let mut sink = PgSink::new(args.pg_url.expose(), group);
        component::fail_fast(sink.connect().await, "PostgreSQL")?;
        Ok(Some(sink))
    }

    fn demo_args(place: &component::DemoPlace) -> Option<LoaderArgs> {
        Some(LoaderArgs {
            pg_url: place.pg_url.clone(),
            rejects_retention_days: 90,
            no_quality_tables: false,
            consume: place.consume.clone(),
        })
    }
}

/// Runs the loader until `shutdown`.
pub async fn run(
    args: &LoaderArgs,
    kafka: &skuflow_platform::KafkaArgs,
    topics: &skuflow_platform::TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<skuflow_platform::consume::RunStats> {
    component::run::<WarehouseLoader>(args, kafka, topics, shutdown).await
}
