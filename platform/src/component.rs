//! A consumer component: one sink on the shared consume loop, described once.
//!
//! A sink crate implements [`Component`]: its name and default group, its flags, a `build` that
//! checks them and makes the connections a wrong setting should fail at once on, where its
//! durable offsets live and how `skuflow status` counts the rows it holds for one upload. Its
//! binary's `main` is [`main`], which parses the shared flags (Kafka, topics, operations, logs)
//! around the component's own, starts logging, metrics, traces and the operations endpoints,
//! runs the consume loop until SIGTERM, and flushes the traces. The command line (`skuflow
//! status`, `skuflow replay`) reads the same [`SinkInfo`] through its registry of sinks.

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use tokio_util::sync::CancellationToken;

use crate::consume::{run_sink, ConsumeArgs, RunStats, Sink, SinkError};
use crate::kafka::{KafkaArgs, TopicArgs};
use crate::ops::{self, OpsArgs};
use crate::secret::Secret;
use crate::telemetry::{self, LogArgs};

/// Where a sink keeps the offsets of what it has made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetsHome {
    /// Only the group's commits on the broker.
    Broker,
    /// A PostgreSQL table written in the same transaction as the data.
    Postgres { table: &'static str },
    /// Beside the data in the sink's own store; `reset` says how to make it start over.
    WithData { reset: &'static str },
}

/// How `skuflow status` counts the rows a sink holds for one upload (its `file_id` lineage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCount {
    /// `SELECT file_id, count(*)` from this PostgreSQL table.
    PostgresTable { table: &'static str },
    /// Documents per `file_id` in the search indexes.
    SearchIndex,
    /// Rows per `file_id` in the Parquet files of the dataset root.
    DatasetFiles,
    /// The sink holds no rows (it reads the file lifecycle, e.g. the notifier).
    NotCounted,
}

/// What the command line knows of a sink without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkInfo {
    /// The component's name: the binary is `skuflow-<name>`, metrics carry `component=<name>`.
    pub name: &'static str,
    /// Its column in `skuflow status`.
    pub label: &'static str,
    /// Its consumer group unless `--group` says otherwise.
    pub group: &'static str,
    pub offsets: OffsetsHome,
    pub rows: RowCount,
}

/// One sink on the consume loop. See the module documentation.
#[async_trait]
pub trait Component {
    const INFO: SinkInfo;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// The component's own flags (the consume flags among them).
    type Args: Args + FromArgMatches + Debug + Clone + Send + Sync + 'static;
    type Sink: Sink + Send + 'static;

    fn consume_args(args: &Self::Args) -> &ConsumeArgs;

    /// Checks the flags and makes the sink, writing as consumer group `group`. Connections a
    /// wrong setting should stop the process on are made here (an unreachable service is not
    /// one: the loop waits for it). `None` when `shutdown` came first.
    async fn build(
        args: &Self::Args,
        group: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Self::Sink>>;

    /// Work the component does besides its sink, spawned before the sink is built and ended by
    /// `shutdown` (the notifier's watch on late uploads). An error here stops the process.
    fn spawn_tasks(
        args: &Self::Args,
        kafka: &KafkaArgs,
        topics: &TopicArgs,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let _ = (args, kafka, topics, shutdown);
        Ok(())
    }

    /// The flags `skuflow demo` runs the component with, everything it writes under `place`;
    /// `None` when it needs a service the demo does not start.
    fn demo_args(place: &DemoPlace) -> Option<Self::Args> {
        let _ = place;
        None
    }
}

/// What `skuflow demo` gives each component: the demo database, a directory of its own
/// (`<out>/<label>`, absent at the start) and the consume flags (the demo's own consumer group,
/// short flushes).
#[derive(Debug, Clone)]
pub struct DemoPlace {
    pub pg_url: Secret,
    pub dir: PathBuf,
    pub consume: ConsumeArgs,
}

/// The consume loop of one component, as the demo runs it.
pub type Running = Pin<Box<dyn Future<Output = anyhow::Result<RunStats>> + Send>>;

/// A component as the command line's registry holds it: what `status` and `replay` know of it,
/// and how `demo` starts it.
#[derive(Debug, Clone, Copy)]
pub struct Registered {
    pub info: SinkInfo,
    /// The component's consume loop with its demo flags (`None`: not part of the demo).
    pub demo: fn(&DemoPlace, KafkaArgs, TopicArgs, CancellationToken) -> Option<Running>,
}

/// The registry entry of component `C`.
pub const fn registered<C: Component + 'static>() -> Registered {
    Registered {
        info: C::INFO,
        demo: demo::<C>,
    }
}

fn demo<C: Component + 'static>(
    place: &DemoPlace,
    kafka: KafkaArgs,
    topics: TopicArgs,
    shutdown: CancellationToken,
) -> Option<Running> {
    let args = C::demo_args(place)?;
    Some(Box::pin(async move {
        run::<C>(&args, &kafka, &topics, shutdown).await
    }))
}

/// What a component's `build` does with its first connection attempt: a fatal error (a wrong
/// URL, refused credentials or privileges) stops the process now; an unreachable service is
/// logged and left to the consume loop, which waits for it.
pub fn fail_fast<T>(first: Result<T, SinkError>, service: &str) -> anyhow::Result<()> {
    match first {
        Ok(_) => Ok(()),
        Err(SinkError::Fatal(e)) => Err(e),
        Err(e) => {
            tracing::warn!(cause = %e, "{service} not reachable yet; will retry.");
            Ok(())
        }
    }
}

/// Runs the sink `make` makes as its own consumer group `group` (with `consume`'s other flags)
/// until `shutdown`, beside the component's main sink: a component that keeps more than one
/// topic (the loader's and the indexer's upload history and rejected rows). After a failure a new
/// sink starts 30 s later; the main sink's loop goes on meanwhile.
pub fn spawn_group<S: Sink + 'static>(
    make: impl Fn() -> S + Send + 'static,
    group: String,
    consume: &ConsumeArgs,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    shutdown: &CancellationToken,
) {
    let mut consume = consume.clone();
    consume.group = Some(group.clone());
    let (kafka, topics, shutdown) = (kafka.clone(), topics.clone(), shutdown.clone());
    tokio::spawn(async move {
        while let Err(e) =
            run_sink(&kafka, &topics, &consume, &group, make(), shutdown.clone()).await
        {
            tracing::error!(error = format!("{e:#}"), %group, "A consumer group failed; starting it again in 30 s.");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            }
        }
    });
}

/// Runs component `C` until `shutdown`: builds its sink, then the consume loop.
pub async fn run<C: Component>(
    args: &C::Args,
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<RunStats> {
    let consume = C::consume_args(args);
    let group = consume.group.as_deref().unwrap_or(C::INFO.group);
    C::spawn_tasks(args, kafka, topics, &shutdown)?;
    let Some(sink) = C::build(args, group, &shutdown).await? else {
        return Ok(RunStats::default());
    };
    run_sink(kafka, topics, consume, C::INFO.group, sink, shutdown).await
}

/// The flags of every consumer binary around the component's own.
#[derive(Debug, Parser)]
struct Cli<A: Args> {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(flatten)]
    component: A,
    #[command(flatten)]
    ops: OpsArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The `main` of a consumer binary.
pub fn main<C: Component>() -> anyhow::Result<()> {
    // Once per process: clap keeps the name for the life of the command.
    let name: &'static str = Box::leak(format!("skuflow-{}", C::INFO.name).into_boxed_str());
    let matches = Cli::<C::Args>::command()
        .name(name)
        .bin_name(name)
        .about(C::ABOUT)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let cli = Cli::<C::Args>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let stop = ops::start(C::INFO.name, &cli.log, &cli.ops, &cli.kafka).await?;
            let result = run::<C>(&cli.component, &cli.kafka, &cli.topics, stop).await;
            telemetry::shutdown();
            result.map(|_| ())
        })
}
