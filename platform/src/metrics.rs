//! The one set of metric names every skuflow binary exports, defined here and nowhere else.
//!
//! Every series carries a `component` label (the binary: `ingest`, `warehouse-loader`,
//! `search-indexer`, `dataset-builder`, `finance-reporter`, `notifier`), set once by [`init`]. Other labels are bounded: topic
//! names from configuration, sink names, partitions of a topic, fixed outcome/reason words.
//! `deploy/grafana/skuflow.json` and `deploy/prometheus/alerts.yml` use these names; a test
//! checks that they name only metrics defined here.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

static COMPONENT: OnceLock<&'static str> = OnceLock::new();

/// Names the binary in every series; call once, first thing in `main` (later calls are ignored).
pub fn init(component: &'static str) {
    let _ = COMPONENT.set(component);
    LazyLock::force(&METRICS);
}

/// Every metric, registered on one registry.
pub struct Metrics {
    registry: Registry,
    /// `skuflow_records_received_total{source}`: records read (rows of uploaded files for ingest,
    /// source `uploads`; Kafka messages for consumers, source = the topic).
    pub records_received: IntCounterVec,
    /// `skuflow_records_sent_total{destination}`: records durably written (the Kafka topic for
    /// ingest, the sink for consumers).
    pub records_sent: IntCounterVec,
    /// `skuflow_records_failed_total{reason}`: records that did not reach their destination:
    /// `rejected` (invalid row), `refused` (the sink refused it for good), `undecodable`.
    pub records_failed: IntCounterVec,
    /// `skuflow_bytes_total{direction}`: bytes `in` (uploaded files read by ingest, message
    /// payloads read by consumers) and `out` (keys and payloads produced to Kafka: records and
    /// dead letters).
    pub bytes: IntCounterVec,
    /// `skuflow_dead_letters_total{topic}`: dead letters acknowledged by the broker.
    pub dead_letters: IntCounterVec,
    /// `skuflow_batch_duration_seconds{sink}`: time to write one batch durably, retries included.
    pub batch_duration: HistogramVec,
    /// `skuflow_batch_records`: records per batch.
    pub batch_records: Histogram,
    /// `skuflow_sink_retries_total{sink}`: attempts that found the sink unavailable.
    pub sink_retries: IntCounterVec,
    /// `skuflow_consumer_lag{group,topic,partition}`: messages between the partition's end and
    /// the group's committed offset, as librdkafka last saw them.
    pub consumer_lag: IntGaugeVec,
    /// `skuflow_files_total{outcome}`: uploads by final outcome (`completed`, `failed`,
    /// `abandoned`: given up on after too many attempts), and upload requests `refused`.
    pub files: IntCounterVec,
    /// `skuflow_store_last_upload_timestamp_seconds{country,store_id}`: when each store last
    /// uploaded a file this process ingested (the object's modification time); what the alert on
    /// a daily store that has stopped uploading reads. One series per store.
    pub store_last_upload: IntGaugeVec,
    /// `skuflow_file_duration_seconds{outcome}`: time from accepting a file to its outcome.
    pub file_duration: HistogramVec,
    /// `skuflow_ready`: 1 when every readiness check passes (what `/readyz` answers).
    pub ready: IntGauge,
    /// `skuflow_check_up{check}`: 1 per passing readiness check (`broker`, `sink`, `store`).
    pub check_up: IntGaugeVec,
    /// `skuflow_shutdowns_total`: graceful shutdowns started (SIGTERM/SIGINT).
    pub shutdowns: IntCounter,
    /// `skuflow_reports_total{outcome}`: scheduled finance reports, `written` or `failed`.
    pub reports: IntCounterVec,
    /// `skuflow_notifications_total{channel,outcome}`: notifications of upload outcomes by
    /// channel (`webhook`) and outcome (`delivered`, `retried`, `dead_lettered`).
    pub notifications: IntCounterVec,
    /// `skuflow_store_upload_late{country,store_id}`: 1 while a store that uploads daily is past
    /// its usual upload time and the grace (the notifier's late-upload watch), else 0.
    pub store_upload_late: IntGaugeVec,
    /// `skuflow_late_uploads_total`: late-upload notices put on the file lifecycle topic.
    pub late_uploads: IntCounter,
    /// `skuflow_uploads_in_flight`: uploads this ingest worker is ingesting now (at most its
    /// `--concurrency`).
    pub uploads_in_flight: IntGauge,
    /// `skuflow_bulk_lane_wait_seconds_total`: time large uploads were held back by the ingest
    /// worker's bulk lane (`--bulk-records-per-sec`).
    pub bulk_lane_wait: Counter,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let component = COMPONENT.get().copied().unwrap_or("skuflow");
    Metrics::new(component).expect("metric definitions are valid")
});

/// Every metric name defined here, for consistency checks of dashboards and alerts.
pub const NAMES: &[&str] = &[
    "skuflow_records_received_total",
    "skuflow_records_sent_total",
    "skuflow_records_failed_total",
    "skuflow_bytes_total",
    "skuflow_dead_letters_total",
    "skuflow_batch_duration_seconds",
    "skuflow_batch_records",
    "skuflow_sink_retries_total",
    "skuflow_consumer_lag",
    "skuflow_files_total",
    "skuflow_file_duration_seconds",
    "skuflow_store_last_upload_timestamp_seconds",
    "skuflow_ready",
    "skuflow_check_up",
    "skuflow_shutdowns_total",
    "skuflow_reports_total",
    "skuflow_notifications_total",
    "skuflow_store_upload_late",
    "skuflow_late_uploads_total",
    "skuflow_uploads_in_flight",
    "skuflow_bulk_lane_wait_seconds_total",
    "skuflow_build_info",
];

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const FILE_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0];

impl Metrics {
    fn new(component: &str) -> prometheus::Result<Self> {
        let labels = HashMap::from([("component".to_string(), component.to_string())]);
        let registry = Registry::new_custom(Some("skuflow".into()), Some(labels))?;
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: C,
        ) -> prometheus::Result<C> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let m = Metrics {
            records_received: counter(
                "records_received_total",
                "Records read: rows of uploaded files (ingest) or Kafka messages (consumers).",
                &["source"],
            )?,
            records_sent: counter(
                "records_sent_total",
                "Records durably written to their destination (Kafka topic or sink).",
                &["destination"],
            )?,
            records_failed: counter(
                "records_failed_total",
                "Records that did not reach their destination, by reason.",
                &["reason"],
            )?,
            bytes: counter(
                "bytes_total",
                "Bytes read (in: uploads, message payloads) and produced to Kafka (out).",
                &["direction"],
            )?,
            dead_letters: counter(
                "dead_letters_total",
                "Dead letters acknowledged by the broker.",
                &["topic"],
            )?,
            batch_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "batch_duration_seconds",
                        "Time to write one batch durably, retries included.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["sink"],
                )?,
            )?,
            batch_records: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("batch_records", "Records per batch written.")
                        .buckets(BATCH_SIZE_BUCKETS.to_vec()),
                )?,
            )?,
            sink_retries: counter(
                "sink_retries_total",
                "Write attempts that found the sink unavailable.",
                &["sink"],
            )?,
            consumer_lag: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "consumer_lag",
                        "Messages between the partition's end and the group's committed offset.",
                    ),
                    &["group", "topic", "partition"],
                )?,
            )?,
            files: counter(
                "files_total",
                "Uploaded files by final outcome.",
                &["outcome"],
            )?,
            store_last_upload: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "store_last_upload_timestamp_seconds",
                        "When the store last uploaded a file (the object's modification time).",
                    ),
                    &["country", "store_id"],
                )?,
            )?,
            file_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "file_duration_seconds",
                        "Time from accepting an uploaded file to its outcome.",
                    )
                    .buckets(FILE_BUCKETS.to_vec()),
                    &["outcome"],
                )?,
            )?,
            ready: reg(
                &registry,
                IntGauge::new("ready", "1 when every readiness check passes.")?,
            )?,
            check_up: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new("check_up", "1 per passing readiness check."),
                    &["check"],
                )?,
            )?,
            shutdowns: reg(
                &registry,
                IntCounter::new("shutdowns_total", "Graceful shutdowns started.")?,
            )?,
            reports: counter(
                "reports_total",
                "Scheduled finance reports, by outcome (written, failed).",
                &["outcome"],
            )?,
            notifications: counter(
                "notifications_total",
                "Notifications of upload outcomes, by channel and outcome (delivered, retried, dead_lettered).",
                &["channel", "outcome"],
            )?,
            store_upload_late: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "store_upload_late",
                        "1 while a daily uploading store is past its usual upload time and the grace.",
                    ),
                    &["country", "store_id"],
                )?,
            )?,
            late_uploads: reg(
                &registry,
                IntCounter::new(
                    "late_uploads_total",
                    "Late-upload notices put on the file lifecycle topic.",
                )?,
            )?,
            uploads_in_flight: reg(
                &registry,
                IntGauge::new(
                    "uploads_in_flight",
                    "Uploads this ingest worker is ingesting now.",
                )?,
            )?,
            bulk_lane_wait: reg(
                &registry,
                Counter::new(
                    "bulk_lane_wait_seconds_total",
                    "Time large uploads were held back by the ingest worker's bulk lane.",
                )?,
            )?,
            registry,
        };
        let info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the version in a label."),
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m.registry.register(Box::new(info))?;
        #[cfg(target_os = "linux")]
        {
            // process_cpu_seconds_total, process_resident_memory_bytes, open fds (unprefixed,
            // the names every Prometheus user knows).
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = prometheus::default_registry().register(Box::new(pc));
        }
        Ok(m)
    }

    /// The exposition text (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::default_registry().gather());
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "Encoding metrics failed.");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_name_is_exported_and_listed() {
        let m = metrics();
        m.records_received.with_label_values(&["t"]).inc();
        m.records_sent.with_label_values(&["d"]).inc();
        m.records_failed.with_label_values(&["rejected"]).inc();
        m.bytes.with_label_values(&["in"]).inc_by(3);
        m.dead_letters.with_label_values(&["t"]).inc();
        m.batch_duration.with_label_values(&["s"]).observe(0.2);
        m.batch_records.observe(10.0);
        m.sink_retries.with_label_values(&["s"]).inc();
        m.consumer_lag.with_label_values(&["g", "t", "0"]).set(4);
        m.files.with_label_values(&["completed"]).inc();
        m.file_duration
            .with_label_values(&["completed"])
            .observe(1.0);
        m.check_up.with_label_values(&["broker"]).set(1);
        m.store_last_upload
            .with_label_values(&["DE", "s1"])
            .set(1_764_000_000);
        m.shutdowns.inc();
        m.reports.with_label_values(&["written"]).inc();
        m.notifications
            .with_label_values(&["webhook", "delivered"])
            .inc();
        m.store_upload_late.with_label_values(&["DE", "s1"]).set(1);
        m.late_uploads.inc();
        let text = m.render();
        let mut exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|n| n.starts_with("skuflow_"))
            .collect();
        exported.sort();
        let mut listed = NAMES.to_vec();
        listed.sort();
        assert_eq!(exported, listed);
        assert!(text.contains("component=\"skuflow\""), "{text}");
        let lag = text
            .lines()
            .find(|l| l.starts_with("skuflow_consumer_lag{"))
            .expect("lag series");
        for label in [
            "component=\"skuflow\"",
            "group=\"g\"",
            "partition=\"0\"",
            "topic=\"t\"",
        ] {
            assert!(lag.contains(label), "{lag}");
        }
        assert!(lag.ends_with("} 4"), "{lag}");
    }
}
