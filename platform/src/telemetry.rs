//! Logs and traces shared by every binary.
//!
//! Logs go to stderr (text or JSON). Traces are exported over OTLP (HTTP, protobuf) when the
//! standard OpenTelemetry variables name a collector: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), with `OTEL_EXPORTER_OTLP_HEADERS` for its credentials,
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as usual. The W3C trace context travels in
//! each Kafka message's `traceparent` header, so one upload's journey (queued, ingested, each
//! sink's write) is one trace. Without a collector nothing is recorded and no header is added.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{Headers, Message};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer as _};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long = "log-format", env = "SKUFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax, e.g. `info,skuflow_ingest=debug`.
    #[arg(long = "log-level", env = "SKUFLOW_LOG", default_value = "info")]
    pub log_level: String,
}

/// The W3C trace-context header carried by Kafka messages.
pub const TRACEPARENT: &str = "traceparent";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static TRACING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber, logs only (a second call is a no-op).
pub fn init(args: &LogArgs) {
    install(args, None);
}

/// Installs the global subscriber with logs and, when a collector is configured, traces of
/// `service` (the default service name; `OTEL_SERVICE_NAME` wins).
pub fn init_traced(args: &LogArgs, service: &str) {
    install(args, Some(service));
}

fn install(args: &LogArgs, service: Option<&str>) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The log filter applies to the logs only: spans are exported at info whatever it says.
    let logs = match args.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let (traces, failed) = match service.filter(|_| collector_configured()) {
        Some(service) => match provider(service) {
            Ok(p) => {
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(p.tracer("skuflow"))
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
                    .boxed();
                let _ = PROVIDER.set(p);
                TRACING.store(true, Ordering::Relaxed);
                (Some(layer), None)
            }
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if let Some(e) = failed {
        tracing::warn!(cause = %e, "OTLP trace export not started; logs and metrics go on.");
    }
}

fn collector_configured() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v.trim() != "none")
}

fn provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Whether spans are exported (a collector is configured).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Sends the spans not yet exported and stops the exporter; call before the process exits.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(cause = %e, "Flushing traces at exit failed.");
        }
    }
}

/// The trace context of the current span as message headers (`traceparent`, and `tracestate`
/// when set); empty when spans are not exported.
pub fn trace_headers() -> Vec<(String, String)> {
    if !tracing_enabled() {
        return Vec::new();
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut out: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    let mut out: Vec<(String, String)> = out.into_iter().collect();
    out.sort();
    out
}

/// `headers` with the trace context of the current span added.
pub fn with_trace_headers(
    mut headers: rdkafka::message::OwnedHeaders,
    trace: &[(String, String)],
) -> rdkafka::message::OwnedHeaders {
    for (k, v) in trace {
        headers = headers.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    headers
}

struct HeaderMap<'a>(Vec<(&'a str, &'a str)>);

impl Extractor for HeaderMap<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The `traceparent` a message carries, if any (and spans are exported).
pub fn traceparent<M: Message>(msg: &M) -> Option<String> {
    if !tracing_enabled() {
        return None;
    }
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == TRACEPARENT)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

/// Makes `span` a child of the trace context a message carried (its `traceparent`); a span
/// without one stays a root.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let cx = TraceContextPropagator::new().extract(&HeaderMap(vec![(TRACEPARENT, tp)]));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_collector_no_headers() {
        assert!(!tracing_enabled());
        assert!(trace_headers().is_empty());
        let h = with_trace_headers(rdkafka::message::OwnedHeaders::new(), &[]);
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn a_traceparent_header_parses_back() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = TraceContextPropagator::new().extract(&HeaderMap(vec![(TRACEPARENT, tp)]));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
