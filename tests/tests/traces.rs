//! Traces beside metrics and logs: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, every binary exports
//! spans over OTLP/HTTP, and the trace context travels in the Kafka messages' `traceparent`
//! header, so one upload is one trace: `upload.queued` (the scan) → `ingest.file` (a worker) →
//! each sink's write. Checked against an OTLP receiver that decodes what the binaries send.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{upload_local, wait_until, Pipeline};
use skuflow_e2e::es_double::EsDouble;
use skuflow_e2e::otlp_double::{OtlpDouble, ReceivedSpan};
use skuflow_e2e::sample_rows;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_is_one_trace_across_ingest_and_every_sink() {
    let mut p = Pipeline::new().await;
    let otlp = OtlpDouble::start().await;
    let es = EsDouble::start().await;
    p.child_env
        .push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), otlp.url.clone()));
    // Export within half a second instead of five (the SDK's batch delay).
    p.child_env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "500".into()));
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let rows = sample_rows(61, 120, 10, "EUR", "2026-11-22");
    let valid = rows.iter().filter(|r| r.valid).count() as i64;
    upload_local(
        &buckets,
        "skus-de",
        "incoming/individual/s7/2026-11-22/skus.csv",
        &rows,
    );
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_loader(&[]);
    p.start_indexer(&es.url, &[], &[]);
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", valid, WAIT)
        .await;

    let find = |spans: &[ReceivedSpan], name: &str| -> Vec<ReceivedSpan> {
        spans.iter().filter(|s| s.name == name).cloned().collect()
    };
    let mut spans = Vec::new();
    let complete = wait_until(WAIT, || {
        spans = otlp.spans();
        [
            "upload.queued",
            "ingest.file",
            "warehouse-loader write",
            "search-indexer write",
        ]
        .iter()
        .all(|n| !find(&spans, n).is_empty())
    });
    let names: HashSet<_> = spans.iter().map(|s| s.name.clone()).collect();
    assert!(
        complete,
        "spans received: {names:?}; refused: {:?}; logs:\n{}",
        otlp.refused.lock().unwrap(),
        p.logs()
    );
    let queued = find(&spans, "upload.queued");
    assert_eq!(queued.len(), 1, "{queued:?}");
    let queued = &queued[0];
    assert_eq!(queued.service, "skuflow-ingest");
    assert!(
        queued.parent_span_id.is_empty(),
        "the request starts the trace"
    );
    assert!(queued
        .attributes
        .iter()
        .any(|(k, v)| k == "key" && v.ends_with("/s7/2026-11-22/skus.csv")));

    let ingest = find(&spans, "ingest.file");
    assert_eq!(ingest.len(), 1, "{ingest:?}");
    let ingest = &ingest[0];
    assert_eq!(
        (&ingest.trace_id, &ingest.parent_span_id),
        (&queued.trace_id, &queued.span_id),
        "the worker's span continues the request's trace"
    );
    assert!(ingest
        .attributes
        .iter()
        .any(|(k, v)| k == "outcome" && v == "completed"));

    for (sink, service) in [
        ("warehouse-loader write", "skuflow-warehouse-loader"),
        ("search-indexer write", "skuflow-search-indexer"),
    ] {
        let writes = find(&spans, sink);
        assert!(!writes.is_empty());
        for w in &writes {
            assert_eq!(w.service, service);
            assert_eq!(
                (&w.trace_id, &w.parent_span_id),
                (&ingest.trace_id, &ingest.span_id),
                "{sink}: the write is in the upload's trace, under its ingest"
            );
        }
    }
    assert!(otlp.refused.lock().unwrap().is_empty());
}
