//! The Elasticsearch sink: bounded `_bulk` requests, a bounded number in flight, every item's
//! result read, retriable items retried alone, refused items handed back for dead-lettering.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use futures::StreamExt;
use skuflow_platform::backoff::Backoff;
use skuflow_platform::consume::{Consumed, Refusal, Sink, SinkError};
use skuflow_schemas::SkuRecord;

use crate::bulk::{self, Bounds, BulkRequest, Layout, Outcome};

/// Dead-letter rule for documents Elasticsearch refuses for good.
pub const RULE_REFUSED: &str = "elasticsearch_rejected";

/// Tuning of the sink.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub bounds: Bounds,
    pub max_in_flight: usize,
    /// Rounds of retrying 429/5xx items alone before the whole batch is handed back to the
    /// consumer loop (which pauses consumption and retries it later).
    pub item_retries: u32,
    pub request_timeout: Duration,
}

pub struct EsSink {
    transport: Transport,
    layout: Layout,
    tuning: Tuning,
}

impl EsSink {
    pub fn new(transport: Transport, layout: Layout, tuning: Tuning) -> Self {
        EsSink {
            transport,
            layout,
            tuning,
        }
    }

    /// Puts the index template (idempotent): mappings from the schema crate, the alias over
    /// every country's index.
    pub async fn put_template(&self, alias: &str) -> Result<(), SinkError> {
        let template = skuflow_schemas::elasticsearch::index_template(&self.layout.prefix, alias);
        let path = format!("/_index_template/{}", self.layout.prefix);
        let body = serde_json::to_vec(&template).map_err(|e| SinkError::Fatal(e.into()))?;
        let resp = self
            .transport
            .send(
                Method::Put,
                &path,
                HeaderMap::new(),
                None::<&()>,
                Some(body),
                Some(self.tuning.request_timeout),
            )
            .await
            .map_err(|e| SinkError::Retriable(anyhow!("putting the index template: {e}")))?;
        let status = resp.status_code().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let err = anyhow!(
            "putting the index template {path}: HTTP {status}: {}",
            snippet(&text)
        );
        Err(if status == 429 || status >= 500 {
            SinkError::Retriable(err)
        } else {
            SinkError::Fatal(err)
        })
    }

    async fn send(&self, req: BulkRequest) -> Result<(Vec<usize>, Vec<Outcome>), SinkError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let resp = self
            .transport
            .send(
                Method::Post,
                "/_bulk",
                headers,
                None::<&()>,
                Some(req.body),
                Some(self.tuning.request_timeout),
            )
            .await
            .map_err(|e| SinkError::Retriable(anyhow!("sending _bulk: {e}")))?;
        let status = resp.status_code().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| SinkError::Retriable(anyhow!("reading the _bulk response: {e}")))?;
        match status {
            200 => bulk::parse_response(&body, req.items.len())
                .map(|o| (req.items, o))
                .map_err(|e| SinkError::Retriable(anyhow!(e))),
            429 | 500..=599 => Err(SinkError::Retriable(anyhow!(
                "_bulk answered HTTP {status}: {}",
                snippet(&String::from_utf8_lossy(&body))
            ))),
            _ => Err(SinkError::Fatal(anyhow!(
                "_bulk answered HTTP {status}: {}",
                snippet(&String::from_utf8_lossy(&body))
            ))),
        }
    }
}

fn snippet(s: &str) -> String {
    skuflow_platform::text::truncate_chars(s.trim(), 300)
}

#[async_trait]
impl Sink for EsSink {
    type Message = SkuRecord;

    fn name(&self) -> &'static str {
        "search-indexer"
    }

    async fn ping(&mut self) -> Result<(), SinkError> {
        let resp = self
            .transport
            .send(
                Method::Get,
                "/",
                HeaderMap::new(),
                None::<&()>,
                None::<Vec<u8>>,
                Some(self.tuning.request_timeout),
            )
            .await
            .map_err(|e| SinkError::Retriable(anyhow!("reaching Elasticsearch: {e}")))?;
        match resp.status_code().as_u16() {
            200..=299 => Ok(()),
            status => Err(SinkError::Retriable(anyhow!(
                "Elasticsearch answered GET / with HTTP {status}"
            ))),
        }
    }

    async fn write(
        &mut self,
        _topic: &str,
        batch: &[Consumed<SkuRecord>],
        _offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        let records: Vec<&SkuRecord> = batch.iter().map(|c| &c.value).collect();
        let mut todo: Vec<usize> = (0..records.len()).collect();
        let mut refusals = Vec::new();
        let mut round = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let requests = bulk::encode(&self.layout, &records, &todo, self.tuning.bounds)
                .map_err(|e| SinkError::Fatal(e.into()))?;
            let this = &*self;
            let results: Vec<_> = futures::stream::iter(requests.into_iter().map(|r| this.send(r)))
                .buffer_unordered(self.tuning.max_in_flight.max(1))
                .collect()
                .await;
            let mut retry = Vec::new();
            let mut cause = String::new();
            for result in results {
                let (items, outcomes) = result?;
                for (i, outcome) in items.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Done => {}
                        Outcome::Retry { status, reason } => {
                            retry.push(i);
                            cause = format!("HTTP {status}: {reason}");
                        }
                        Outcome::Refused {
                            status,
                            kind,
                            reason,
                        } => refusals.push(Refusal {
                            index: i,
                            rule: RULE_REFUSED.into(),
                            message: format!("HTTP {status} {kind}: {reason}"),
                        }),
                    }
                }
            }
            if retry.is_empty() {
                refusals.sort_by_key(|r| r.index);
                return Ok(refusals);
            }
            round += 1;
            if round > self.tuning.item_retries {
                return Err(SinkError::Retriable(anyhow!(
                    "{} documents still not accepted after {} rounds; last: {cause}",
                    retry.len(),
                    self.tuning.item_retries
                )));
            }
            // Counted as retries of the sink: Elasticsearch was unavailable for these documents.
            skuflow_platform::metrics::metrics()
                .sink_retries
                .with_label_values(&[self.name()])
                .inc();
            let pause = backoff.next_pause();
            tracing::warn!(
                documents = retry.len(),
                round,
                retry_in_ms = pause.as_millis() as u64,
                %cause,
                "Elasticsearch asked to retry documents; retrying them alone."
            );
            tokio::time::sleep(pause).await;
            retry.sort_unstable();
            todo = retry;
        }
    }
}
