//! What operators see of every binary: `/metrics` (Prometheus text format), `/healthz` (the
//! process is alive) and `/readyz` (connected to its broker and its sink), on `--ops-listen`;
//! plus the start-up every `main` shares and the bounded graceful shutdown.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

pub use crate::health::{health, Health};
use crate::kafka::KafkaArgs;
use crate::metrics::{self, metrics};
use crate::{shutdown, telemetry};

/// Operations flags shared by every binary.
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Address of the operations endpoints (/metrics, /healthz, /readyz); `off` serves none.
    #[arg(
        long = "ops-listen",
        env = "SKUFLOW_OPS_LISTEN",
        default_value = "0.0.0.0:9464"
    )]
    pub ops_listen: String,
    /// Longest time from SIGTERM/SIGINT to exit, in seconds. Within it the batch in flight is
    /// finished (and its offsets stored) or abandoned (it is redelivered to the next owner).
    #[arg(
        long = "shutdown-timeout-secs",
        env = "SKUFLOW_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 20
    )]
    pub shutdown_timeout_secs: u64,
}

impl Default for OpsArgs {
    fn default() -> Self {
        OpsArgs {
            ops_listen: "off".into(),
            shutdown_timeout_secs: 20,
        }
    }
}

/// What every `main` does first: logging, metrics under the component's name, the operations
/// endpoints, the broker check, and the shutdown token (cancelled on SIGTERM/SIGINT, with the
/// process ended if shutting down outlasts `--shutdown-timeout-secs`).
pub async fn start(
    component: &'static str,
    log: &telemetry::LogArgs,
    ops: &OpsArgs,
    kafka: &KafkaArgs,
) -> anyhow::Result<CancellationToken> {
    telemetry::init_traced(log, &format!("skuflow-{component}"));
    metrics::init(component);
    let stop = shutdown::on_signal(Duration::from_secs(ops.shutdown_timeout_secs));
    if let Some(addr) = serve(&ops.ops_listen).await? {
        tracing::info!(%addr, component, "Operations endpoints: /metrics /healthz /readyz.");
    }
    spawn_broker_check(kafka.clone(), stop.clone()).await?;
    Ok(stop)
}

/// Binds `listen` (unless `off`) and serves the endpoints for the life of the process.
pub async fn serve(listen: &str) -> anyhow::Result<Option<SocketAddr>> {
    if listen.eq_ignore_ascii_case("off") || listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--ops-listen `{listen}` is not host:port"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the operations endpoints to {addr} (--ops-listen)"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route("/readyz", get(readyz));
    tokio::spawn(crate::http::serve(listener, app, CancellationToken::new()));
    Ok(Some(bound))
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
        .into_response()
}

async fn readyz() -> Response {
    let (ready, body) = health().summary();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// The librdkafka errors that configuration must fix: a TLS handshake refused (an unknown CA, a
/// client certificate the broker does not accept) or SASL credentials refused.
#[derive(Default)]
pub struct SecurityErrors {
    last: Mutex<Option<String>>,
}

impl SecurityErrors {
    fn is_security(reason: &str) -> bool {
        [
            "SSL handshake failed",
            "certificate verify failed",
            "SASL authentication",
            "SSL routines",
        ]
        .iter()
        .any(|s| reason.contains(s))
    }

    /// The last such error, if any.
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rdkafka::ClientContext for SecurityErrors {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if Self::is_security(reason) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
        tracing::warn!(%error, reason, "Kafka client error.");
    }
}

impl rdkafka::consumer::ConsumerContext for SecurityErrors {}

/// Asks the cluster for its metadata every 10 s: the `broker` readiness check (failing after
/// two failed attempts in a row). The first attempt runs before the process goes on: a TLS or
/// SASL refusal then stops it with the reason, where a broker that is merely down is waited for.
async fn spawn_broker_check(kafka: KafkaArgs, stop: CancellationToken) -> anyhow::Result<()> {
    health().expect("broker");
    let client: BaseConsumer<SecurityErrors> = kafka
        .client_config()
        .create_with_context(SecurityErrors::default())
        .context("creating the Kafka client of the broker check (check --brokers, the TLS and SASL flags and -X options)")?;
    let client = std::sync::Arc::new(client);
    let first = {
        let c = client.clone();
        tokio::task::spawn_blocking(move || {
            let ok = c.fetch_metadata(None, Duration::from_secs(5)).is_ok();
            if !ok {
                // Serves the client's error events to SecurityErrors.
                let _ = c.poll(Duration::from_millis(200));
            }
            ok
        })
        .await
        .unwrap_or(false)
    };
    if !first {
        if let Some(reason) = client.context().last() {
            anyhow::bail!(
                "Kafka at {} refused the connection: {reason} (check --kafka-ca-file, \
                 --kafka-cert-file/--kafka-key-file and the SASL credentials)",
                kafka.brokers
            );
        }
    }
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let c = client.clone();
            let result = tokio::task::spawn_blocking(move || {
                c.fetch_metadata(None, Duration::from_secs(10))
                    .map_err(|e| format!("no broker answers: {e}"))
                    .and_then(|m| {
                        if m.brokers().is_empty() {
                            Err("the cluster lists no broker".to_string())
                        } else {
                            Ok(())
                        }
                    })
            })
            .await
            .unwrap_or_else(|e| Err(format!("broker check failed: {e}")));
            // One slow answer from a busy broker is not an outage: two in a row are.
            failures = if result.is_ok() { 0 } else { failures + 1 };
            if result.is_ok() || failures >= 2 {
                health().report("broker", result);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    });
    Ok(())
}
