//! The notifier's sink: each final upload event of a batch, to every route it matches.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use futures::future::join_all;
use skuflow_platform::consume::{Consumed, Refusal, Sink, SinkError};
use skuflow_platform::shutdown::CancellationToken;
use skuflow_schemas::{FileEvent, FileStatus};

use crate::routes::RoutesWatch;
use crate::webhook::{deliver, Delivery, Notification, Policy};

pub struct NotifySink {
    routes: RoutesWatch,
    client: reqwest::Client,
    policy: Policy,
    shutdown: CancellationToken,
}

impl NotifySink {
    pub fn new(
        routes: &Path,
        policy: Policy,
        shutdown: CancellationToken,
    ) -> anyhow::Result<NotifySink> {
        Ok(NotifySink {
            routes: RoutesWatch::load(routes)?,
            client: reqwest::Client::builder()
                .user_agent(concat!("skuflow-notifier/", env!("CARGO_PKG_VERSION")))
                .build()?,
            policy,
            shutdown,
        })
    }
}

#[async_trait]
impl Sink for NotifySink {
    type Message = FileEvent;

    fn name(&self) -> &'static str {
        "notifier"
    }

    /// Every delivery of the batch at once; an event some route could not be told about is
    /// refused with the reasons (its dead letter), the others are done. A shutdown during the
    /// retries leaves the whole batch to be delivered again (the ids stay the same).
    async fn write(
        &mut self,
        _topic: &str,
        batch: &[Consumed<FileEvent>],
        _offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        let routes = self.routes.current();
        let mut jobs = Vec::new();
        for (index, c) in batch.iter().enumerate() {
            let ev = &c.value;
            if ev.status == FileStatus::Accepted {
                continue;
            }
            for route in routes.iter().filter(|r| r.matches(ev)) {
                let hook = &route.webhook;
                let n = Notification::new(ev, &route.name);
                let body = serde_json::to_vec(&n).map_err(|e| SinkError::Fatal(e.into()))?;
                let (client, policy, shutdown) = (&self.client, &self.policy, &self.shutdown);
                jobs.push(async move {
                    let d = deliver(client, hook, &n.id, &body, policy, shutdown).await;
                    (index, route.name.clone(), n.id, d)
                });
            }
        }
        let m = &skuflow_platform::metrics::metrics().notifications;
        let mut undelivered: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (index, route, id, d) in join_all(jobs).await {
            match d {
                Delivery::Delivered { attempts } => {
                    m.with_label_values(&["webhook", "delivered"]).inc();
                    tracing::info!(event_id = %id, %route, attempts, file_id = %batch[index].value.file_id, "Webhook delivered.");
                }
                Delivery::Undelivered(why) => {
                    m.with_label_values(&["webhook", "dead_lettered"]).inc();
                    tracing::warn!(event_id = %id, %route, reason = %why, file_id = %batch[index].value.file_id, "Webhook not delivered; dead-lettered.");
                    undelivered
                        .entry(index)
                        .or_default()
                        .push(format!("route {route}: {why}"));
                }
                Delivery::Interrupted => {
                    return Err(SinkError::Retriable(anyhow::anyhow!(
                        "shutdown during webhook retries"
                    )))
                }
            }
        }
        Ok(undelivered
            .into_iter()
            .map(|(index, why)| Refusal {
                index,
                rule: "webhook_undelivered".into(),
                message: why.join("; "),
            })
            .collect())
    }
}
