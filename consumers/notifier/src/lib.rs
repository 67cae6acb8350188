//! skuflow notifier: tells stores what became of their uploads. It reads the file lifecycle
//! (`sku.files.v1`) as its own consumer group on the shared consume loop and sends every final
//! event (`completed`, `failed`) as a signed webhook and as an e-mail to the routes of the
//! routing file that match the upload's country, store category, chain and store id.
//!
//! Delivery is at least once: offsets are stored after every delivery of a batch ended, and a
//! redelivered event carries the same id (`Skuflow-Event-Id`, `Idempotency-Key`, the e-mail's
//! `Message-ID`). An event a
//! route could not be told about goes to the dead-letter topic with the reason.

pub mod delivery;
pub mod email;
pub mod late;
pub mod routes;
pub mod sink;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skuflow_platform::component::{Component, OffsetsHome, RowCount, SinkInfo};
use skuflow_platform::shutdown::CancellationToken;

pub use sink::NotifySink;

/// Default consumer group.
pub const GROUP: &str = "skuflow-notifier";

/// Flags of `skuflow-notifier`.
#[derive(Debug, Clone, Args)]
pub struct NotifierArgs {
    /// The routing file (TOML): which uploads go to which webhooks; read again when it changes.
    /// See docs/notifications.md.
    #[arg(long = "routes", env = "SKUFLOW_ROUTES")]
    pub routes: PathBuf,
    /// Seconds a webhook or the SMTP server has to answer one delivery.
    #[arg(
        long = "webhook-timeout-secs",
        env = "SKUFLOW_WEBHOOK_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub webhook_timeout_secs: u64,
    /// Attempts at one delivery (webhook 5xx, 408, 429, SMTP 4xx, timeouts) before it is
    /// dead-lettered.
    #[arg(long = "webhook-attempts", env = "SKUFLOW_WEBHOOK_ATTEMPTS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_attempts: u32,
    /// Milliseconds before the first retry of a delivery; doubled per attempt (with jitter) up
    /// to 60 s.
    #[arg(
        long = "webhook-retry-ms",
        env = "SKUFLOW_WEBHOOK_RETRY_MS",
        default_value_t = 1000
    )]
    pub webhook_retry_ms: u64,
    #[command(flatten)]
    pub smtp: email::SmtpArgs,
    #[command(flatten)]
    pub late: late::LateArgs,
    /// The buckets, where the e-mails' rejected rows are read from the upload's report.
    #[command(flatten)]
    pub buckets: skuflow_platform::buckets::StoreArgs,
    #[command(flatten)]
    pub consume: skuflow_platform::ConsumeArgs,
}

/// The notifier as a component of the consume loop.
pub struct Notifier;

#[async_trait::async_trait]
impl Component for Notifier {
    const INFO: SinkInfo = SinkInfo {
        name: "notifier",
        label: "notified",
        group: GROUP,
        offsets: OffsetsHome::Broker,
        rows: RowCount::NotCounted,
    };
    const ABOUT: &'static str =
        "Tells stores what became of their uploads: signed webhooks and e-mail from sku.files.v1";
    type Args = NotifierArgs;
    type Sink = NotifySink;

    fn consume_args(args: &NotifierArgs) -> &skuflow_platform::ConsumeArgs {
        &args.consume
    }

    /// The late-upload watch, beside the sink that tells the routes about its events.
    fn spawn_tasks(
        args: &NotifierArgs,
        kafka: &skuflow_platform::KafkaArgs,
        topics: &skuflow_platform::TopicArgs,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if args.late.no_late_watch {
            return Ok(());
        }
        let (late, kafka, topic) = (args.late.clone(), kafka.clone(), topics.files.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Started again, from the topic's beginning, after a failure (a broker away at start).
            while let Err(e) =
                late::watch(late.clone(), kafka.clone(), topic.clone(), shutdown.clone()).await
            {
                tracing::error!(
                    error = format!("{e:#}"),
                    "The late-upload watch failed; starting it again in 30 s."
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        });
        Ok(())
    }

    async fn build(
        args: &NotifierArgs,
        _group: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<NotifySink>> {
        let policy = delivery::Policy {
            timeout: Duration::from_secs(args.webhook_timeout_secs.max(1)),
            attempts: args.webhook_attempts,
            first_pause: Duration::from_millis(args.webhook_retry_ms.max(1)),
            max_pause: Duration::from_secs(60),
        };
        let mailer = email::Mailer::new(&args.smtp, policy.timeout)?;
        Ok(Some(NotifySink::new(
            &args.routes,
            mailer,
            skuflow_platform::buckets::Stores::new(args.buckets.clone()),
            policy,
            shutdown.clone(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_are_one_consistent_command() {
        use clap::Args as _;
        super::NotifierArgs::augment_args(clap::Command::new("skuflow-notifier")).debug_assert();
    }
}
