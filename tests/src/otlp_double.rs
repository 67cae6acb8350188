//! An OTLP/HTTP trace receiver for the tests: accepts `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest` (what the OpenTelemetry SDKs send by default), decodes it and keeps
//! every span with its service name, as a collector would before exporting it on.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// String attributes (others rendered with Debug).
    pub attributes: Vec<(String, String)>,
}

/// A running receiver on 127.0.0.1; `url` is what `OTEL_EXPORTER_OTLP_ENDPOINT` takes.
pub struct OtlpDouble {
    pub url: String,
    pub spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Requests that were not a decodable export (kept as their error).
    pub refused: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OtlpDouble {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (spans.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (s, r) = (s.clone(), r.clone());
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &s, &r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        OtlpDouble {
            url,
            spans,
            refused,
            task,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    spans: &Mutex<Vec<ReceivedSpan>>,
    refused: &Mutex<Vec<String>>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" || !protobuf {
        refused.lock().unwrap().push(format!(
            "{} {} ({:?})",
            req.method(),
            req.uri(),
            req.headers().get("content-type")
        ));
        return reply(404, Vec::new());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            refused.lock().unwrap().push(e.to_string());
            return reply(400, Vec::new());
        }
    };
    let export = match ExportTraceServiceRequest::decode(body) {
        Ok(e) => e,
        Err(e) => {
            refused
                .lock()
                .unwrap()
                .push(format!("undecodable export: {e}"));
            return reply(400, Vec::new());
        }
    };
    let mut got = Vec::new();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|a| {
                            let v = match a.value.and_then(|v| v.value) {
                                Some(AnyValue::StringValue(s)) => s,
                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                other => format!("{other:?}"),
                            };
                            (a.key, v)
                        })
                        .collect(),
                });
            }
        }
    }
    spans.lock().unwrap().extend(got);
    reply(200, ExportTraceServiceResponse::default().encode_to_vec())
}
