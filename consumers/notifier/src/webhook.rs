//! Signed webhook deliveries.
//!
//! A delivery is `POST <url>` with a JSON body and these headers:
//!
//! - `Skuflow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the
//!   route's secret>`: the receiver computes the same HMAC over the timestamp and the raw body,
//!   compares in constant time, and refuses a timestamp older than it tolerates (replays);
//! - `Skuflow-Event-Id` and `Idempotency-Key`: the same id for every delivery of one event
//!   (retries and redeliveries after a restart), so the receiver can drop duplicates.
//!
//! 2xx is delivered. 5xx, 408, 429, a timeout or no connection is retried with backoff up to
//! the attempt limit; any other status is not retried. What is not delivered becomes a dead
//! letter on `sku.rejects.v1` with the reason.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use skuflow_platform::shutdown::CancellationToken;
use skuflow_schemas::{rejects_key, report_key, FileEvent, FileStatus};

use crate::delivery::{with_retries, Delivery, Failure, Policy};
use crate::routes::Webhook;

pub const SIGNATURE_HEADER: &str = "Skuflow-Signature";
pub const EVENT_ID_HEADER: &str = "Skuflow-Event-Id";

/// The body of a delivery.
#[derive(Debug, Serialize)]
pub struct Notification<'a> {
    /// The event's id: the same for every delivery of it.
    pub id: String,
    /// `upload.completed` or `upload.failed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The route that matched.
    pub route: &'a str,
    /// Where the upload's report is (`bucket/key`), when it was written.
    pub report: Option<String>,
    /// Where its rejected rows are, as a CSV to fix and upload again, when some were rejected.
    pub rejects: Option<String>,
    pub upload: &'a FileEvent,
}

/// The id of an event: its file, outcome and time.
pub fn event_id(ev: &FileEvent) -> String {
    short_digest(&[
        ev.file_id.as_str(),
        &format!("{:?}", ev.status),
        &ev.at.to_rfc3339(),
    ])
}

/// 32 hex digits of SHA-256 over `parts`, each ended by a zero byte.
pub fn short_digest(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

impl<'a> Notification<'a> {
    pub fn new(ev: &'a FileEvent, route: &'a str) -> Notification<'a> {
        let kind = match ev.status {
            FileStatus::Failed => "upload.failed",
            FileStatus::Late => "upload.late",
            _ => "upload.completed",
        };
        let moved = ev.moved_to.as_deref();
        Notification {
            id: event_id(ev),
            kind,
            route,
            report: moved.map(|m| format!("{}/{}", ev.bucket, report_key(m, ev.status))),
            rejects: moved
                .filter(|_| ev.rows_rejected.unwrap_or(0) > 0)
                .map(|m| format!("{}/{}", ev.bucket, rejects_key(m))),
            upload: ev,
        }
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Posts `body` to `hook` until it is delivered, refused, or the attempts run out.
pub async fn deliver(
    client: &reqwest::Client,
    hook: &Webhook,
    id: &str,
    body: bytes::Bytes,
    policy: &Policy,
    shutdown: &CancellationToken,
) -> Delivery {
    with_retries("webhook", id, policy, shutdown, || {
        let now = chrono::Utc::now().timestamp();
        let sent = client
            .post(&hook.url)
            .timeout(policy.timeout)
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, sign(hook.secret.expose(), now, &body))
            .header(EVENT_ID_HEADER, id)
            .header("Idempotency-Key", id)
            .body(body.clone())
            .send();
        async move {
            match sent.await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => {
                    let s = r.status();
                    let why = format!("HTTP {s} from the webhook");
                    if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                        Err(Failure::retry(why))
                    } else {
                        Err(Failure::refused(why))
                    }
                }
                Err(e) if e.is_timeout() => Err(Failure::retry(format!(
                    "no answer within {:?}",
                    policy.timeout
                ))),
                // The URL is not in the reason: it may carry a token.
                Err(e) if e.is_connect() => Err(Failure::retry("could not connect to the webhook")),
                Err(e) => Err(Failure::retry(format!(
                    "the request failed: {}",
                    e.without_url()
                ))),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_documented_recipe() {
        // HMAC-SHA256("secret", "1700000000.{}"), as `openssl dgst -sha256 -hmac secret` gives it.
        let sig = sign("secret", 1_700_000_000, b"{}");
        assert!(sig.starts_with("t=1700000000,v1="), "{sig}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            sig,
            format!(
                "t=1700000000,v1={}",
                hex::encode(mac.finalize().into_bytes())
            )
        );
        assert_ne!(sign("other", 1_700_000_000, b"{}"), sig);
        assert_ne!(sign("secret", 1_700_000_001, b"{}"), sig);
    }

    #[test]
    fn an_event_keeps_its_id_and_names_its_report_and_rejects() {
        let mut ev = FileEvent::new("f1", FileStatus::Completed, "skus-de", "incoming/a.csv");
        ev.moved_to = Some("processed/a.csv".into());
        ev.rows_rejected = Some(2);
        let n = Notification::new(&ev, "r");
        assert_eq!(n.id, event_id(&ev.clone()));
        assert_eq!(
            n.report.as_deref(),
            Some("skus-de/processed/a.csv.report.json")
        );
        assert_eq!(
            n.rejects.as_deref(),
            Some("skus-de/processed/a.csv.rejects.csv")
        );
        let mut later = ev.clone();
        later.at += chrono::Duration::seconds(1);
        assert_ne!(event_id(&later), n.id);
    }
}
