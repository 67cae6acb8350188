//! skuflow finance reporter: `sku.records.v1` into exact daily revenue and margin aggregates in
//! PostgreSQL (schema `skuflow_finance`, offsets in the same transaction), and reports with
//! projections on a schedule and on demand (`skuflow report`).

pub mod migrations;
pub mod reporting;
pub mod sink;

use std::time::Duration;

use clap::Args;
use skuflow_platform::component::{self, Component, OffsetsHome, RowCount, SinkInfo};
use skuflow_platform::secret::Secret;
use skuflow_platform::shutdown::CancellationToken;

pub use reporting::ReportArgs;
pub use sink::FinanceSink;

/// Default consumer group.
pub const GROUP: &str = "skuflow-finance-reporter";

/// Flags of `skuflow-finance-reporter`.
#[derive(Debug, Clone, Args)]
pub struct ReporterArgs {
    /// PostgreSQL connection string: `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=/ca.pem`
    /// or the key=value form; `sslmode` `disable`, `prefer` (default), `require`, `verify-ca`,
    /// `verify-full` as libpq reads them (without `sslrootcert`, `verify-*` trust the Mozilla
    /// roots). Never logged.
    #[arg(long = "pg-url", env = "SKUFLOW_PG_URL", hide_env_values = true)]
    pub pg_url: Secret,
    /// Seconds between scheduled reports (0: none; `skuflow report` makes one on demand).
    #[arg(
        long = "report-every-secs",
        env = "SKUFLOW_REPORT_EVERY_SECS",
        default_value_t = 3600
    )]
    pub report_every_secs: u64,
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

/// Writes a report every `every` until `shutdown`. A failed report (an error, or a panic in its
/// task) is logged at ERROR and counted in `skuflow_reports_total{outcome="failed"}` (alert
/// SkuflowReportFailed); the next run happens as scheduled.
async fn schedule(pg_url: Secret, args: ReportArgs, every: Duration, shutdown: CancellationToken) {
    let reports = &skuflow_platform::metrics::metrics().reports;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (url, a) = (pg_url.clone(), args.clone());
        let outcome = tokio::spawn(async move { reporting::run(url.expose(), &a).await })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the report task ended abnormally: {e}")));
        match outcome {
            Ok(r) => {
                reports.with_label_values(&["written"]).inc();
                tracing::info!(rows = r.rows, out = %args.out, missing_rates = r.missing_rates.len(),
                    excluded_rows = r.excluded_rows.len(), "Wrote the scheduled report.")
            }
            Err(e) => {
                reports.with_label_values(&["failed"]).inc();
                tracing::error!(
                    cause = format!("{e:#}"),
                    next_in_secs = every.as_secs(),
                    "Scheduled report failed; the next run is still scheduled."
                )
            }
        }
    }
}

/// The finance reporter as a component of the consume loop.
pub struct FinanceReporter;

#[async_trait::async_trait]
impl Component for FinanceReporter {
    const INFO: SinkInfo = SinkInfo {
        name: "finance-reporter",
        label: "finance",
        group: GROUP,
        offsets: OffsetsHome::Postgres {
            table: migrations::OFFSETS_TABLE,
        },
        rows: RowCount::PostgresTable {
            table: migrations::LINES,
        },
    };
    const ABOUT: &'static str = "Keeps exact revenue and margin aggregates of sku.records.v1 in PostgreSQL and writes reports with projections";
    type Args = ReporterArgs;
    type Sink = FinanceSink;

    fn consume_args(args: &ReporterArgs) -> &skuflow_platform::ConsumeArgs {
        &args.consume
    }

    /// Also starts the scheduled reports.
    async fn build(
        args: &ReporterArgs,
        group: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<FinanceSink>> {
        args.report.validate()?;
        let mut sink = FinanceSink::new(args.pg_url.expose(), group);
        component::fail_fast(sink.connect().await, "PostgreSQL")?;
        if args.report_every_secs > 0 {
            tokio::spawn(schedule(
                args.pg_url.clone(),
                args.report.clone(),
                Duration::from_secs(args.report_every_secs),
                shutdown.clone(),
            ));
        }
        Ok(Some(sink))
    }

    /// Aggregates only; the demo writes one report once everything is in.
    fn demo_args(place: &component::DemoPlace) -> Option<ReporterArgs> {
        Some(ReporterArgs {
            pg_url: place.pg_url.clone(),
            report_every_secs: 0,
            report: ReportArgs::into_dir(&place.dir.display().to_string()),
            consume: place.consume.clone(),
        })
    }
}

/// Runs the reporter until `shutdown`.
pub async fn run(
    args: &ReporterArgs,
    kafka: &skuflow_platform::KafkaArgs,
    topics: &skuflow_platform::TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<skuflow_platform::consume::RunStats> {
    component::run::<FinanceReporter>(args, kafka, topics, shutdown).await
}
