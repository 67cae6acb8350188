//! The notifier's sink: each final upload event of a batch, to every route it matches, by each
//! of the route's channels.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use async_trait::async_trait;
use futures::future::join_all;
use skuflow_platform::buckets::{object_path, Stores};
use skuflow_platform::consume::{Consumed, Refusal, Sink, SinkError};
use skuflow_platform::shutdown::CancellationToken;
use skuflow_schemas::{report_key, FileEvent, FileReport, FileStatus};

use crate::delivery::{Delivery, Policy};
use crate::email::Mailer;
use crate::routes::{Route, RoutesWatch};
use crate::webhook::{deliver, Notification};

pub struct NotifySink {
    routes: RoutesWatch,
    client: reqwest::Client,
    mailer: Option<Mailer>,
    buckets: Stores,
    policy: Policy,
    shutdown: CancellationToken,
}

/// One delivery's outcome: the event's index in the batch, the route, the channel, the id.
type Done<'a> = (usize, &'a str, &'static str, String, Delivery);

impl NotifySink {
    pub fn new(
        routes: &Path,
        mailer: Option<Mailer>,
        buckets: Stores,
        policy: Policy,
        shutdown: CancellationToken,
    ) -> anyhow::Result<NotifySink> {
        Ok(NotifySink {
            routes: RoutesWatch::load(routes, mailer.is_some())?,
            client: reqwest::Client::builder()
                .user_agent(concat!("skuflow-notifier/", env!("CARGO_PKG_VERSION")))
                .build()?,
            mailer,
            buckets,
            policy,
            shutdown,
        })
    }
}

/// The report beside a final upload, or why it could not be read.
async fn read_report(buckets: &Stores, ev: &FileEvent) -> Result<FileReport, String> {
    let Some(moved) = &ev.moved_to else {
        return Err("no report was written".into());
    };
    let key = report_key(moved, ev.status);
    let store = buckets.bucket(&ev.bucket).map_err(|e| format!("{e:#}"))?;
    let path = object_path(&key)?;
    let bytes = async { store.get(&path).await?.bytes().await }
        .await
        .map_err(|e| format!("the report {}/{key} could not be read: {e}", ev.bucket))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("the report {}/{key} does not parse: {e}", ev.bucket))
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
        let (client, policy, shutdown) = (&self.client, &self.policy, &self.shutdown);
        let (buckets, mailer) = (&self.buckets, self.mailer.as_ref());
        let matched: Vec<(usize, Vec<_>)> = batch
            .iter()
            .enumerate()
            .filter(|(_, c)| c.value.status != FileStatus::Accepted)
            .map(|(i, c)| (i, routes.iter().filter(|r| r.matches(&c.value)).collect()))
            .collect();
        // The report of each event some route tells by e-mail (its first rejected rows).
        let reports: BTreeMap<usize, Result<FileReport, String>> = join_all(
            matched
                .iter()
                .filter(|(_, rs)| rs.iter().any(|r: &&Route| !r.email.is_empty()))
                .map(|(i, _)| async move { (*i, read_report(buckets, &batch[*i].value).await) }),
        )
        .await
        .into_iter()
        .collect();

        let mut jobs: Vec<Pin<Box<dyn Future<Output = Done<'_>> + Send + '_>>> = Vec::new();
        for (index, routes) in &matched {
            let (index, ev) = (*index, &batch[*index].value);
            for route in routes {
                let name = route.name.as_str();
                let n = Notification::new(ev, name);
                if let Some(hook) = &route.webhook {
                    let body = serde_json::to_vec(&n).map_err(|e| SinkError::Fatal(e.into()))?;
                    let id = n.id.clone();
                    jobs.push(Box::pin(async move {
                        let d = deliver(client, hook, &id, body.into(), policy, shutdown).await;
                        (index, name, "webhook", id, d)
                    }));
                }
                if let (Some(mailer), false) = (mailer, route.email.is_empty()) {
                    let report = &reports[&index];
                    jobs.push(Box::pin(async move {
                        let d = mailer
                            .send(&route.email, &n, report, policy, shutdown)
                            .await;
                        (index, name, "email", n.id, d)
                    }));
                }
            }
        }
        let m = &skuflow_platform::metrics::metrics().notifications;
        let mut undelivered: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (index, route, channel, id, d) in join_all(jobs).await {
            let file_id = &batch[index].value.file_id;
            match d {
                Delivery::Delivered { attempts } => {
                    m.with_label_values(&[channel, "delivered"]).inc();
                    tracing::info!(event_id = %id, %route, channel, attempts, %file_id, "Notification delivered.");
                }
                Delivery::Undelivered(why) => {
                    m.with_label_values(&[channel, "dead_lettered"]).inc();
                    tracing::warn!(event_id = %id, %route, channel, reason = %why, %file_id, "Notification not delivered; dead-lettered.");
                    undelivered
                        .entry(index)
                        .or_default()
                        .push(format!("route {route} ({channel}): {why}"));
                }
                Delivery::Interrupted => {
                    return Err(SinkError::Retriable(anyhow::anyhow!(
                        "shutdown during notification retries"
                    )))
                }
            }
        }
        Ok(undelivered
            .into_iter()
            .map(|(index, why)| Refusal {
                index,
                rule: "notification_undelivered".into(),
                message: why.join("; "),
            })
            .collect())
    }
}
