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

/// The records' sink: one index per country.
pub struct EsSink {
    bulk: Bulk,
    layout: Layout,
}

impl EsSink {
    pub fn new(transport: Transport, layout: Layout, tuning: Tuning) -> Self {
        EsSink {
            bulk: Bulk::new(transport, tuning, "search-indexer"),
            layout,
        }
    }

    /// Puts the index template (idempotent): mappings from the schema crate, the alias over
    /// every country's index.
    pub async fn put_template(&self, alias: &str) -> Result<(), SinkError> {
        let template = skuflow_schemas::elasticsearch::index_template(&self.layout.prefix, alias);
        self.bulk.put_template(&self.layout.prefix, &template).await
    }
}

/// A `_bulk` client: bounded requests, a bounded number in flight, every item's outcome read.
pub struct Bulk {
    transport: Transport,
    tuning: Tuning,
    /// The sink's name, in metrics and logs.
    name: &'static str,
}

impl Bulk {
    pub fn new(transport: Transport, tuning: Tuning, name: &'static str) -> Self {
        Bulk {
            transport,
            tuning,
            name,
        }
    }

    /// One request answered 2xx, its body read: 429, 5xx and transport errors are retriable,
    /// other answers fatal. `what` names it in errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: Option<&[(&str, &str)]>,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<Vec<u8>, SinkError> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let resp = self
            .transport
            .send(
                method,
                path,
                headers,
                query,
                body,
                Some(self.tuning.request_timeout),
            )
            .await
            .map_err(|e| SinkError::Retriable(anyhow!("{what}: {e}")))?;
        let status = resp.status_code().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SinkError::Retriable(anyhow!("{what}: reading the answer: {e}")))?;
        if (200..300).contains(&status) {
            return Ok(bytes.to_vec());
        }
        let err = anyhow!(
            "{what}: {path} answered HTTP {status}: {}",
            snippet(&String::from_utf8_lossy(&bytes))
        );
        Err(if status == 429 || status >= 500 {
            SinkError::Retriable(err)
        } else {
            SinkError::Fatal(err)
        })
    }

    /// Puts index template `name` (idempotent).
    pub async fn put_template(
        &self,
        name: &str,
        template: &serde_json::Value,
    ) -> Result<(), SinkError> {
        let path = format!("/_index_template/{name}");
        let body = serde_json::to_vec(template).map_err(|e| SinkError::Fatal(e.into()))?;
        self.call(
            Method::Put,
            &path,
            None,
            Some(body),
            "putting the index template",
        )
        .await
        .map(drop)
    }

    /// The names of the indices matching `pattern` (none is no error).
    pub async fn list_indices(&self, pattern: &str) -> Result<Vec<String>, SinkError> {
        #[derive(serde::Deserialize)]
        struct Row {
            index: String,
        }
        let body = self
            .call(
                Method::Get,
                &format!("/_cat/indices/{pattern}"),
                Some(&[("format", "json"), ("h", "index")]),
                None,
                "listing indices",
            )
            .await?;
        let rows: Vec<Row> = serde_json::from_slice(&body).map_err(|e| {
            SinkError::Retriable(anyhow!("listing indices: unreadable answer: {e}"))
        })?;
        Ok(rows.into_iter().map(|r| r.index).collect())
    }

    /// Deletes index `index` (one name, never a pattern).
    pub async fn delete_index(&self, index: &str) -> Result<(), SinkError> {
        if index.contains(['*', ',', '?']) || index.starts_with('_') {
            return Err(SinkError::Fatal(anyhow!(
                "refusing to delete {index:?}: not one index name"
            )));
        }
        self.call(
            Method::Delete,
            &format!("/{index}"),
            None,
            None,
            "deleting an index",
        )
        .await
        .map(drop)
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

    /// A round trip to the cluster.
    pub async fn ping(&self) -> Result<(), SinkError> {
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

    /// Indexes every item of `batch`, each encoded by `one`: items Elasticsearch asks to retry
    /// are retried alone, up to the tuning's rounds; those it refuses for good come back.
    pub async fn index<T>(
        &self,
        batch: &[T],
        one: impl Fn(&T, &mut Vec<u8>) -> serde_json::Result<()>,
    ) -> Result<Vec<Refusal>, SinkError> {
        let mut todo: Vec<usize> = (0..batch.len()).collect();
        let mut refusals = Vec::new();
        let mut round = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let requests = bulk::encode_with(batch, &todo, self.tuning.bounds, &one)
                .map_err(|e| SinkError::Fatal(e.into()))?;
            let this = self;
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
                .with_label_values(&[self.name])
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

fn snippet(s: &str) -> String {
    skuflow_platform::text::truncate_chars(s.trim(), 300)
}

#[async_trait]
impl Sink for EsSink {
    type Message = SkuRecord;

    fn name(&self) -> &'static str {
        self.bulk.name
    }

    async fn ping(&mut self) -> Result<(), SinkError> {
        self.bulk.ping().await
    }

    async fn write(
        &mut self,
        _topic: &str,
        batch: &[Consumed<SkuRecord>],
        _offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        let layout = &self.layout;
        self.bulk
            .index(batch, |c, out| bulk::encode_one(layout, &c.value, out))
            .await
    }
}
