//! A webhook receiver that checks what a store's endpoint should check: the signature over the
//! timestamp and the raw body (computed here from the documented recipe, not with the
//! notifier's code), and the event id. `/flaky` answers 500 to the first delivery of each
//! event and 200 after; `/refuse` always answers 400; `/slow` answers 200 after 2 s (recorded
//! only once answered); anything else answers 200.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use sha2::Sha256;

/// One request the receiver saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub event_id: String,
    pub idempotency_key: String,
    pub signature_valid: bool,
    pub body: serde_json::Value,
    pub status: u16,
}

pub struct WebhookReceiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The event id of every request that arrived, answered or not.
    pub arrived: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The documented check: `Skuflow-Signature: t=<t>,v1=<hex>`, HMAC-SHA256 of `<t>.<body>`.
pub fn signature_valid(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(sig) = hex::decode(v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

impl WebhookReceiver {
    pub async fn start(secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let failed_once: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
        let arrived: Arc<Mutex<Vec<String>>> = Arc::default();
        let (shared, secret, count) = (seen.clone(), secret.to_string(), arrived.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, failed_once, secret, count) = (
                    shared.clone(),
                    failed_once.clone(),
                    secret.clone(),
                    count.clone(),
                );
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (shared, failed_once, secret) =
                            (shared.clone(), failed_once.clone(), secret.clone());
                        count.lock().unwrap().push(
                            req.headers()
                                .get("skuflow-event-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string(),
                        );
                        async move {
                            let path = req.uri().path().to_string();
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let (sig, event_id, key) = (
                                header("skuflow-signature"),
                                header("skuflow-event-id"),
                                header("idempotency-key"),
                            );
                            let body = req.into_body().collect().await?.to_bytes();
                            if path == "/slow" {
                                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                            }
                            let status = match path.as_str() {
                                "/refuse" => 400,
                                "/flaky" => {
                                    let mut f = failed_once.lock().unwrap();
                                    if f.insert(event_id.clone(), true).is_none() {
                                        500
                                    } else {
                                        200
                                    }
                                }
                                _ => 200,
                            };
                            shared.lock().unwrap().push(Seen {
                                path,
                                event_id,
                                idempotency_key: key,
                                signature_valid: signature_valid(&secret, &sig, &body),
                                body: serde_json::from_slice(&body)
                                    .unwrap_or(serde_json::Value::Null),
                                status,
                            });
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(StatusCode::from_u16(status).unwrap())
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WebhookReceiver {
            url,
            seen,
            arrived,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
