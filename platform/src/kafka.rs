//! Kafka client configuration and builders.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use skuflow_schemas::topics;

use crate::metrics::metrics;
use crate::secret::Secret;

/// Broker connection flags shared by every binary.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(
        long = "brokers",
        env = "SKUFLOW_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// librdkafka properties passed through unchanged, `key=value`; repeat the flag or separate
    /// with `;` in the environment variable (e.g. `security.protocol=SASL_SSL;sasl.mechanism=PLAIN`).
    #[arg(
        short = 'X',
        long = "kafka-option",
        env = "SKUFLOW_KAFKA_OPTIONS",
        hide_env_values = true,
        value_delimiter = ';',
        value_parser = parse_kafka_option
    )]
    pub options: Vec<(String, Secret)>,
    /// TLS to the brokers: a PEM file of the CA(s) that signed their certificates (e.g. Amazon
    /// MSK's, a Strimzi cluster CA). Turns TLS on.
    #[arg(long = "kafka-ca-file", env = "SKUFLOW_KAFKA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// TLS to the brokers, trusting the system's CAs (Confluent Cloud, Aiven); implied by the
    /// other TLS and SASL flags.
    #[arg(long = "kafka-tls", env = "SKUFLOW_KAFKA_TLS")]
    pub tls: bool,
    /// Mutual TLS: this client's certificate (PEM); needs --kafka-key-file.
    #[arg(
        long = "kafka-cert-file",
        env = "SKUFLOW_KAFKA_CERT_FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// Mutual TLS: this client's private key (PEM); needs --kafka-cert-file.
    #[arg(
        long = "kafka-key-file",
        env = "SKUFLOW_KAFKA_KEY_FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// SASL over TLS (SASL_SSL): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "SKUFLOW_KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(
        long = "kafka-sasl-username",
        env = "SKUFLOW_KAFKA_SASL_USERNAME",
        requires = "sasl_mechanism"
    )]
    pub sasl_username: Option<String>,
    /// SASL password (never logged); prefer --kafka-sasl-password-file.
    #[arg(
        long = "kafka-sasl-password",
        env = "SKUFLOW_KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        requires = "sasl_mechanism",
        conflicts_with = "sasl_password_file"
    )]
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password (e.g. a mounted Kubernetes Secret).
    #[arg(long = "kafka-sasl-password-file", env = "SKUFLOW_KAFKA_SASL_PASSWORD_FILE",
          value_parser = crate::secret::from_file, requires = "sasl_mechanism")]
    pub sasl_password_file: Option<Secret>,
    /// A consumer rejoins its group when a partition it is not assigned has had unconsumed
    /// records and an unchanged committed offset for this many seconds (0: never). A group
    /// coordinator can leave a partition with a member that is gone, or a member with nothing
    /// (seen with tansu); on Apache Kafka this does not fire. Default: 180 for the sinks, 900
    /// for ingest workers (one worker may spend that long on one large upload).
    #[arg(long = "rejoin-stalled-secs", env = "SKUFLOW_REJOIN_STALLED_SECS")]
    pub rejoin_stalled_secs: Option<u64>,
}

/// A SASL mechanism librdkafka speaks without extra libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN", alias = "plain")]
    Plain,
    #[value(name = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

fn parse_kafka_option(s: &str) -> Result<(String, Secret), String> {
    // An empty entry (`SKUFLOW_KAFKA_OPTIONS=""`, as a chart renders no options, or a trailing
    // `;`) sets nothing: kept with an empty name, which apply_options skips.
    if s.trim().is_empty() {
        return Ok((String::new(), Secret::new("")));
    }
    // The value may be a password: the error names only the property.
    let Some((k, v)) = s.split_once('=') else {
        let name: String = s.chars().take_while(|c| *c != ' ').take(40).collect();
        return Err(format!(
            "a -X option starting `{name}` is not key=value (e.g. -X compression.type=zstd)"
        ));
    };
    let k = k.trim();
    if k.is_empty() {
        return Err("a -X option has an empty property name".into());
    }
    Ok((k.to_string(), Secret::new(v)))
}

/// Topic names, overridable so that several pipelines can share one cluster.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Topic of upload requests (the ingest work queue).
    #[arg(long = "uploads-topic", env = "SKUFLOW_UPLOADS_TOPIC", default_value = topics::UPLOADS)]
    pub uploads: String,
    /// Topic of valid records.
    #[arg(long = "records-topic", env = "SKUFLOW_RECORDS_TOPIC", default_value = topics::RECORDS)]
    pub records: String,
    /// Dead-letter topic.
    #[arg(long = "rejects-topic", env = "SKUFLOW_REJECTS_TOPIC", default_value = topics::REJECTS)]
    pub rejects: String,
    /// File lifecycle topic (compacted).
    #[arg(long = "files-topic", env = "SKUFLOW_FILES_TOPIC", default_value = topics::FILES)]
    pub files: String,
}

impl Default for TopicArgs {
    fn default() -> Self {
        TopicArgs {
            uploads: topics::UPLOADS.into(),
            records: topics::RECORDS.into(),
            rejects: topics::REJECTS.into(),
            files: topics::FILES.into(),
        }
    }
}

impl TopicArgs {
    /// Topics with a common suffix appended, e.g. for isolated test runs.
    pub fn with_suffix(suffix: &str) -> Self {
        let d = TopicArgs::default();
        TopicArgs {
            uploads: format!("{}{suffix}", d.uploads),
            records: format!("{}{suffix}", d.records),
            rejects: format!("{}{suffix}", d.rejects),
            files: format!("{}{suffix}", d.files),
        }
    }
}

impl KafkaArgs {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaArgs {
            brokers: brokers.into(),
            options: Vec::new(),
            ca_file: None,
            tls: false,
            cert_file: None,
            key_file: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            rejoin_stalled_secs: None,
        }
    }

    /// The librdkafka properties of the named TLS and SASL flags.
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = Vec::new();
        let tls = self.tls
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.sasl_mechanism.is_some();
        let protocol = match (tls, self.sasl_mechanism) {
            (false, _) => return props,
            (true, None) => "SSL",
            (true, Some(_)) => "SASL_SSL",
        };
        props.push(("security.protocol", protocol.to_string()));
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &self.ca_file {
            props.push(("ssl.ca.location", path(ca)));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            props.push(("ssl.certificate.location", path(cert)));
            props.push(("ssl.key.location", path(key)));
        }
        if let Some(m) = self.sasl_mechanism {
            props.push(("sasl.mechanism", m.name().to_string()));
            if let Some(u) = &self.sasl_username {
                props.push(("sasl.username", u.clone()));
            }
            if let Some(p) = self
                .sasl_password
                .as_ref()
                .or(self.sasl_password_file.as_ref())
            {
                props.push(("sasl.password", p.expose().to_string()));
            }
        }
        props
    }

    /// Applies the user's -X properties: last, so that they win over skuflow's defaults.
    pub fn apply_options(&self, cfg: &mut ClientConfig) {
        for (k, v) in self.options.iter().filter(|(k, _)| !k.is_empty()) {
            cfg.set(k, v.expose());
        }
    }

    /// A base configuration: bootstrap servers, TLS and SASL from the named flags, then the
    /// pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers);
        // tansu and small clusters: keep metadata fresh so new topics are seen quickly.
        cfg.set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in self.security_properties() {
            cfg.set(k, v);
        }
        self.apply_options(&mut cfg);
        cfg
    }

    /// `cfg` with skuflow's `defaults` set, then the user's -X properties, which win: the one
    /// place that order is kept.
    pub fn with_defaults(&self, mut cfg: ClientConfig, defaults: &[(&str, &str)]) -> ClientConfig {
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        self.apply_options(&mut cfg);
        cfg
    }

    /// Producer configuration: idempotent, acks=all, and the user's -X properties over
    /// skuflow's defaults.
    pub fn producer_config(&self) -> ClientConfig {
        self.with_defaults(
            self.client_config(),
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("batch.size", "1000000"),
                ("compression.type", "lz4"),
                ("message.timeout.ms", "300000"),
            ],
        )
    }

    /// Consumer configuration for group `group`: offsets are stored by the application only
    /// after its sink has durably accepted them (`enable.auto.offset.store=false`) and committed
    /// in the background.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        self.with_defaults(
            self.client_config(),
            &[
                ("group.id", group),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
                ("session.timeout.ms", "30000"),
                // Feeds skuflow_consumer_lag (see ObservedContext).
                ("statistics.interval.ms", "5000"),
            ],
        )
    }

    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.producer_config()
            .create()
            .context("creating the Kafka producer (check --brokers and -X options)")
    }
}

/// The headers of a message about one file: its schema and file id, and the trace context of
/// the work that produced it when traces are exported.
pub fn message_headers(
    schema: &str,
    file_id: &str,
    trace: &[(String, String)],
) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::Header;
    let h = rdkafka::message::OwnedHeaders::new_with_capacity(2 + trace.len())
        .insert(Header {
            key: skuflow_schemas::headers::SCHEMA,
            value: Some(schema),
        })
        .insert(Header {
            key: skuflow_schemas::headers::FILE_ID,
            value: Some(file_id),
        });
    crate::telemetry::with_trace_headers(h, trace)
}

/// A consumer context that exports each assigned partition's lag from librdkafka's statistics
/// (`skuflow_consumer_lag`) and, when given a flag, raises it on every rebalance.
pub struct ObservedContext {
    group: String,
    rebalanced: Option<Arc<AtomicBool>>,
    reported: Mutex<HashSet<(String, i32)>>,
}

impl ObservedContext {
    pub fn new(group: &str, rebalanced: Option<Arc<AtomicBool>>) -> Self {
        ObservedContext {
            group: group.to_string(),
            rebalanced,
            reported: Mutex::new(HashSet::new()),
        }
    }
}

impl ClientContext for ObservedContext {
    fn stats(&self, stats: Statistics) {
        let gauge = &metrics().consumer_lag;
        let mut now = HashSet::new();
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition.
                if *p < 0 || !part.desired {
                    continue;
                }
                let lag = if part.consumer_lag >= 0 {
                    part.consumer_lag
                } else if part.hi_offset >= 0 && part.lo_offset >= 0 {
                    // Nothing committed yet: everything retained is still to do.
                    part.hi_offset - part.lo_offset
                } else {
                    continue;
                };
                gauge
                    .with_label_values(&[&self.group, topic, &p.to_string()])
                    .set(lag);
                now.insert((topic.clone(), *p));
            }
        }
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, p) in reported.difference(&now) {
            let _ = gauge.remove_label_values(&[&self.group, topic, &p.to_string()]);
        }
        *reported = now;
    }
}

impl ConsumerContext for ObservedContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), group = %self.group, "Partitions assigned.");
        }
        if let Some(flag) = &self.rebalanced {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// The next message, or `None` once `shutdown` is cancelled; consumer errors (which librdkafka
/// recovers from by itself) are logged and skipped.
pub async fn next_message<'a, C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &'a rdkafka::consumer::StreamConsumer<C>,
    shutdown: &tokio_util::sync::CancellationToken,
    watch: &mut StallWatch,
) -> Option<rdkafka::message::BorrowedMessage<'a>> {
    loop {
        watch.check(consumer);
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return None,
            m = tokio::time::timeout(CHECK_EVERY, consumer.recv()) => m,
        };
        match msg {
            Ok(Ok(m)) => return Some(m),
            Ok(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error; continuing."),
            Err(_idle) => {}
        }
    }
}

/// [`KafkaArgs::rejoin_stalled_secs`] of the sinks when not given.
pub const SINK_REJOIN_STALLED_SECS: u64 = 180;
/// [`KafkaArgs::rejoin_stalled_secs`] of the ingest workers when not given.
pub const INGEST_REJOIN_STALLED_SECS: u64 = 900;

/// How often [`StallWatch`] looks at the group.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Watches the partitions of a subscribed topic that this consumer is not assigned: when one has
/// records past its committed offset and that offset has not moved for the stall time, nobody
/// consumes it (its owner is gone but still counted, or the group formed with no assignment),
/// and the consumer leaves and rejoins the group, which makes the coordinator assign again.
pub struct StallWatch {
    topic: String,
    stall: Duration,
    next_check: std::time::Instant,
    /// Partition → (committed position, since when it has not moved).
    seen: std::collections::HashMap<i32, (i64, std::time::Instant)>,
}

impl StallWatch {
    pub fn new(topic: &str, stall_secs: u64) -> Self {
        StallWatch {
            topic: topic.to_string(),
            stall: Duration::from_secs(stall_secs),
            next_check: std::time::Instant::now() + CHECK_EVERY,
            seen: Default::default(),
        }
    }

    /// Looks at the group at most every 10 s; rejoins it when a partition is stalled. Returns
    /// whether it rejoined.
    pub fn check<C: ConsumerContext + 'static>(
        &mut self,
        consumer: &rdkafka::consumer::StreamConsumer<C>,
    ) -> bool {
        use rdkafka::consumer::Consumer;
        let now = std::time::Instant::now();
        if self.stall.is_zero() || now < self.next_check {
            return false;
        }
        self.next_check = now + CHECK_EVERY;
        match self.stalled(consumer, now) {
            Ok(Some((partition, lag))) => {
                tracing::warn!(topic = %self.topic, partition, lag, stalled_secs = self.stall.as_secs(),
                    "A partition this consumer is not assigned has not been consumed for the stall time; rejoining the group so that it is assigned again.");
                self.seen.clear();
                consumer.unsubscribe();
                if let Err(e) = consumer.subscribe(&[&self.topic]) {
                    tracing::error!(topic = %self.topic, error = %e, "Subscribing again failed.");
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(topic = %self.topic, error = %e, "Could not look at the group's progress.");
                false
            }
        }
    }

    fn stalled<C: ConsumerContext + 'static>(
        &mut self,
        consumer: &rdkafka::consumer::StreamConsumer<C>,
        now: std::time::Instant,
    ) -> anyhow::Result<Option<(i32, i64)>> {
        use rdkafka::consumer::Consumer;
        const TIMEOUT: Duration = Duration::from_secs(5);
        let md = consumer.fetch_metadata(Some(&self.topic), TIMEOUT)?;
        let Some(t) = md.topics().first() else {
            return Ok(None);
        };
        let assigned: HashSet<i32> = consumer
            .assignment()?
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let mut all = rdkafka::TopicPartitionList::new();
        for p in t.partitions() {
            all.add_partition(&self.topic, p.id());
        }
        let committed = consumer.committed_offsets(all, TIMEOUT)?;
        let mut progress = Vec::new();
        for p in t.partitions().iter().map(|p| p.id()) {
            if assigned.contains(&p) {
                progress.push((p, true, 0, 0));
                continue;
            }
            let (low, high) = consumer.fetch_watermarks(&self.topic, p, TIMEOUT)?;
            let position = committed
                .find_partition(&self.topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
                .unwrap_or(low)
                .max(low);
            progress.push((p, false, position, high));
        }
        Ok(self.judge(now, &progress))
    }

    /// From each partition's (id, assigned here, committed position, high watermark): the first
    /// one not assigned here whose position has stayed below its high watermark, unchanged, for
    /// the stall time, with its lag.
    fn judge(
        &mut self,
        now: std::time::Instant,
        progress: &[(i32, bool, i64, i64)],
    ) -> Option<(i32, i64)> {
        for &(p, mine, position, high) in progress {
            let lag = high - position;
            if mine || lag <= 0 {
                self.seen.remove(&p);
                continue;
            }
            match self.seen.get(&p) {
                Some((was, since)) if *was == position => {
                    if now.duration_since(*since) >= self.stall {
                        return Some((p, lag));
                    }
                }
                _ => {
                    self.seen.insert(p, (position, now));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod stall_tests {
    use super::StallWatch;
    use std::time::{Duration, Instant};

    #[test]
    fn only_an_unassigned_partition_with_lag_and_no_progress_for_the_stall_time_is_stalled() {
        let mut w = StallWatch::new("t", 60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Partition 0 is ours, 1 progresses, 2 has no lag, 3 is stuck at 10 of 50.
        let state = |one: i64| {
            vec![
                (0, true, 0, 99),
                (1, false, one, 100),
                (2, false, 7, 7),
                (3, false, 10, 50),
            ]
        };
        assert_eq!(
            w.judge(at(0), &state(5)),
            None,
            "first sight only starts the clock"
        );
        assert_eq!(w.judge(at(30), &state(20)), None);
        assert_eq!(
            w.judge(at(59), &state(40)),
            None,
            "59 s is under the stall time"
        );
        assert_eq!(w.judge(at(61), &state(60)), Some((3, 40)));
        // Progress restarts the clock; being assigned or caught up forgets the partition.
        let mut w = StallWatch::new("t", 60);
        assert_eq!(w.judge(at(0), &[(3, false, 10, 50)]), None);
        assert_eq!(w.judge(at(50), &[(3, false, 11, 50)]), None);
        assert_eq!(
            w.judge(at(100), &[(3, false, 11, 50)]),
            None,
            "only 50 s since it moved"
        );
        assert_eq!(w.judge(at(111), &[(3, false, 11, 50)]), Some((3, 39)));
        let mut w = StallWatch::new("t", 60);
        assert_eq!(w.judge(at(0), &[(3, false, 10, 50)]), None);
        assert_eq!(w.judge(at(30), &[(3, true, 0, 0)]), None);
        assert_eq!(
            w.judge(at(70), &[(3, false, 10, 50)]),
            None,
            "the clock started again"
        );
        assert_eq!(w.judge(at(80), &[(3, false, 50, 50)]), None);
        assert!(w.seen.is_empty(), "caught up: forgotten");
    }
}

/// A topic skuflow needs, with its partition count, cleanup policy and settings.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
    /// Topic settings (`retention.ms`, `min.insync.replicas`, …) besides `cleanup.policy`.
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32, compacted: bool) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            compacted,
            configs: Vec::new(),
        }
    }

    /// Every setting skuflow sets on the topic, `cleanup.policy` included.
    pub fn settings(&self) -> Vec<(String, String)> {
        let policy = if self.compacted { "compact" } else { "delete" };
        let mut all = vec![("cleanup.policy".to_string(), policy.to_string())];
        all.extend(self.configs.iter().cloned());
        all
    }
}

/// How the pipeline's topics are laid out on a production cluster.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    pub partitions: i32,
    /// Replicas per partition; none: 3, or the number of brokers when there are fewer.
    pub replication_factor: Option<i32>,
    /// In-sync replicas a write needs; none: one less than the replicas (at least 1).
    pub min_insync_replicas: Option<i32>,
    pub uploads_retention: Duration,
    pub records_retention: Duration,
    pub rejects_retention: Duration,
}

impl Default for TopicLayout {
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 86_400);
        TopicLayout {
            partitions: 6,
            replication_factor: None,
            min_insync_replicas: None,
            uploads_retention: days(7),
            records_retention: days(7),
            rejects_retention: days(30),
        }
    }
}

impl TopicLayout {
    /// The pipeline's topics on a cluster of `brokers` brokers, and the replication factor.
    /// Records, rejects and uploads expire by time; the file lifecycle is compacted (one
    /// event per file is kept for good).
    pub fn specs(&self, t: &TopicArgs, brokers: i32) -> (Vec<TopicSpec>, i32) {
        let replication = self.replication_factor.unwrap_or(3.min(brokers.max(1)));
        let isr = self.min_insync_replicas.unwrap_or((replication - 1).max(1));
        let spec = |name: &str, retention: Option<Duration>| {
            let mut s = TopicSpec::new(name, self.partitions, retention.is_none());
            if let Some(r) = retention {
                s.configs
                    .push(("retention.ms".into(), r.as_millis().to_string()));
            }
            s.configs
                .push(("min.insync.replicas".into(), isr.to_string()));
            s
        };
        (
            vec![
                spec(&t.uploads, Some(self.uploads_retention)),
                spec(&t.records, Some(self.records_retention)),
                spec(&t.rejects, Some(self.rejects_retention)),
                spec(&t.files, None),
            ],
            replication,
        )
    }
}

/// The pipeline's topics with default partition counts (one replica: for tests and local runs).
pub fn pipeline_topics(t: &TopicArgs, partitions: i32) -> Vec<TopicSpec> {
    vec![
        TopicSpec::new(&t.uploads, partitions, false),
        TopicSpec::new(&t.records, partitions, false),
        TopicSpec::new(&t.rejects, partitions, false),
        TopicSpec::new(&t.files, partitions, true),
    ]
}

fn admin(kafka: &KafkaArgs) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    kafka
        .client_config()
        .create()
        .context("creating the Kafka admin client")
}

/// Brokers in the cluster.
pub fn broker_count(kafka: &KafkaArgs) -> anyhow::Result<i32> {
    let md = admin(kafka)?
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .context("reading the cluster's metadata")?;
    Ok(md.brokers().len() as i32)
}

/// Creates the topics that do not exist yet (one replica each); existing ones are left as they
/// are.
pub async fn ensure_topics(kafka: &KafkaArgs, specs: &[TopicSpec]) -> anyhow::Result<()> {
    create_topics(kafka, specs, 1).await
}

/// Creates the topics that do not exist yet with `replication` replicas per partition;
/// existing ones are left as they are ([`topic_drift`] tells how they differ).
pub async fn create_topics(
    kafka: &KafkaArgs,
    specs: &[TopicSpec],
    replication: i32,
) -> anyhow::Result<()> {
    let admin = admin(kafka)?;
    let settings: Vec<Vec<(String, String)>> = specs.iter().map(TopicSpec::settings).collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&settings)
        .map(|(s, set)| {
            set.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .context("creating topics")?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, replication, "Created topic."),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "Topic exists.")
            }
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// How the existing topics differ from `specs` and `replication`: one line per difference
/// (a missing topic, fewer or more partitions, another replication factor or setting).
pub async fn topic_drift(
    kafka: &KafkaArgs,
    specs: &[TopicSpec],
    replication: i32,
) -> anyhow::Result<Vec<String>> {
    use rdkafka::admin::{ConfigResource, ResourceSpecifier};
    let admin = admin(kafka)?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .context("reading the cluster's metadata")?;
    let mut drift = Vec::new();
    let mut existing = Vec::new();
    for s in specs {
        let Some(t) = md.topics().iter().find(|t| t.name() == s.name) else {
            drift.push(format!("{}: missing", s.name));
            continue;
        };
        let parts = t.partitions().len() as i32;
        if parts != s.partitions {
            drift.push(format!(
                "{}: {parts} partitions, want {}",
                s.name, s.partitions
            ));
        }
        if let Some(r) = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len() as i32)
            .find(|r| *r != replication)
        {
            drift.push(format!(
                "{}: replication factor {r}, want {replication}",
                s.name
            ));
        }
        existing.push(s);
    }
    if existing.is_empty() {
        return Ok(drift);
    }
    let resources: Vec<ResourceSpecifier<'_>> = existing
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let described = admin
        .describe_configs(resources.iter(), &opts)
        .await
        .context("describing topic configurations")?;
    for (s, r) in existing.iter().zip(described) {
        let r: ConfigResource = r.with_context(|| format!("describing {}", s.name))?;
        for (k, want) in s.settings() {
            match r.get(&k).and_then(|e| e.value.clone()) {
                Some(v) if v == want => {}
                Some(v) => drift.push(format!("{}: {k}={v}, want {want}", s.name)),
                None => drift.push(format!("{}: {k} not set, want {want}", s.name)),
            }
        }
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_replicates_three_times_or_on_every_broker_of_a_smaller_cluster() {
        let t = TopicArgs::default();
        let l = TopicLayout::default();
        let (specs, r) = l.specs(&t, 5);
        assert_eq!(r, 3);
        let records = specs.iter().find(|s| s.name == t.records).unwrap();
        assert!(records
            .settings()
            .contains(&("retention.ms".into(), (7 * 86_400_000u64).to_string())));
        assert!(records
            .settings()
            .contains(&("min.insync.replicas".into(), "2".into())));
        let files = specs.iter().find(|s| s.name == t.files).unwrap();
        assert!(files
            .settings()
            .contains(&("cleanup.policy".into(), "compact".into())));
        assert!(!files.settings().iter().any(|(k, _)| k == "retention.ms"));
        let (_, r) = l.specs(&t, 1);
        assert_eq!(r, 1);
        let (specs, _) = l.specs(&t, 1);
        assert!(specs[0]
            .settings()
            .contains(&("min.insync.replicas".into(), "1".into())));
        let fixed = TopicLayout {
            replication_factor: Some(5),
            ..TopicLayout::default()
        };
        assert_eq!(
            fixed.specs(&t, 2).1,
            5,
            "an explicit factor is kept (and refused later)"
        );
    }

    #[test]
    fn kafka_options_parse() {
        let (k, v) = parse_kafka_option("sasl.password=a=b").unwrap();
        assert_eq!((k.as_str(), v.expose()), ("sasl.password", "a=b"));
        assert!(parse_kafka_option("novalue")
            .unwrap_err()
            .contains("key=value"));
        let e = parse_kafka_option("sasl.password hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        // What a chart renders when no option is set: nothing applied, no error.
        let (k, _) = parse_kafka_option("").unwrap();
        let args = KafkaArgs {
            options: vec![(k, Secret::new(""))],
            ..KafkaArgs::new("b:9092")
        };
        let mut cfg = ClientConfig::new();
        args.apply_options(&mut cfg);
        assert!(cfg.config_map().is_empty());
    }

    #[test]
    fn tls_and_sasl_flags_become_librdkafka_properties_and_never_print() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            kafka: KafkaArgs,
        }
        let props = |args: &[&str]| {
            let k = Cli::try_parse_from([&["x"], args].concat()).unwrap().kafka;
            let p: Vec<(String, String)> = k
                .security_properties()
                .into_iter()
                .map(|(a, b)| (a.to_string(), b))
                .collect();
            (k, p)
        };
        let (_, p) = props(&[]);
        assert!(p.is_empty(), "plaintext by default");
        let (_, p) = props(&[
            "--kafka-ca-file=/ca.pem",
            "--kafka-cert-file=/c.pem",
            "--kafka-key-file=/k.pem",
        ]);
        assert_eq!(
            p,
            [
                ("security.protocol", "SSL"),
                ("ssl.ca.location", "/ca.pem"),
                ("ssl.certificate.location", "/c.pem"),
                ("ssl.key.location", "/k.pem"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let (k, p) = props(&[
            "--kafka-sasl-mechanism=SCRAM-SHA-512",
            "--kafka-sasl-username=svc",
            "--kafka-sasl-password=hunter2",
            "-Xsasl.oauthbearer.client.secret=s3cret",
        ]);
        assert!(p.contains(&("security.protocol".into(), "SASL_SSL".into())));
        assert!(p.contains(&("sasl.mechanism".into(), "SCRAM-SHA-512".into())));
        assert!(p.contains(&("sasl.password".into(), "hunter2".into())));
        let printed = format!("{k:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        assert!(
            Cli::try_parse_from(["x", "--kafka-cert-file=/c.pem"]).is_err(),
            "a certificate needs its key"
        );
    }
}
