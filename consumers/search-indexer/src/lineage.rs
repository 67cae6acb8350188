//! How many documents of each upload the search indexes hold: the `file_id` of a document is the
//! upload its current version came from, so per-file counts line up with the other sinks'.
//! Read with one `_search` per 1,000 files: a `terms` filter on `file_id` and a `terms`
//! aggregation over the same ids, exact because it asks for as many buckets as ids.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use serde::Deserialize;
use serde_json::json;

/// Ids per request (well under Elasticsearch's 65,536 terms per query).
const CHUNK: usize = 1000;

/// The `_search` body counting the documents of `ids`.
pub fn count_request(ids: &[String]) -> serde_json::Value {
    json!({
        "size": 0,
        "track_total_hits": false,
        "query": {"terms": {"file_id": ids}},
        "aggs": {"files": {"terms": {"field": "file_id", "size": ids.len().max(1)}}}
    })
}

#[derive(Debug, Deserialize)]
struct SearchResponse {
    aggregations: Option<Aggregations>,
    #[serde(rename = "_shards")]
    shards: Option<Shards>,
}

#[derive(Debug, Deserialize)]
struct Shards {
    #[serde(default)]
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct Aggregations {
    files: Terms,
}

#[derive(Debug, Deserialize)]
struct Terms {
    #[serde(default)]
    doc_count_error_upper_bound: u64,
    buckets: Vec<Bucket>,
}

#[derive(Debug, Deserialize)]
struct Bucket {
    key: String,
    doc_count: u64,
}

/// Reads one `_search` answer into per-file counts.
pub fn parse_counts(body: &[u8]) -> anyhow::Result<HashMap<String, u64>> {
    let r: SearchResponse =
        serde_json::from_slice(body).context("the _search answer is not the expected JSON")?;
    if let Some(s) = r.shards {
        if s.failed > 0 {
            bail!("{} shards failed to answer", s.failed);
        }
    }
    // An alias over no index yet answers without aggregations.
    let Some(a) = r.aggregations else {
        return Ok(HashMap::new());
    };
    if a.files.doc_count_error_upper_bound > 0 {
        bail!("the counts are approximate (doc_count_error_upper_bound > 0)");
    }
    Ok(a.files
        .buckets
        .into_iter()
        .map(|b| (b.key, b.doc_count))
        .collect())
}

/// Documents per file id under `target` (an alias, an index or a pattern). Files with no
/// document are absent from the map.
pub async fn count_by_file(
    transport: &Transport,
    target: &str,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    let path = format!("/{target}/_search");
    for chunk in ids.chunks(CHUNK) {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = serde_json::to_vec(&count_request(chunk))?;
        let resp = transport
            .send(
                Method::Post,
                &path,
                headers,
                Some(&[("ignore_unavailable", "true"), ("allow_no_indices", "true")]),
                Some(body),
                Some(timeout),
            )
            .await
            .map_err(|e| anyhow!("searching {target}: {e}"))?;
        let status = resp.status_code().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer of {path}: {e}"))?;
        if status != 200 {
            bail!(
                "{path} answered HTTP {status}: {}",
                skuflow_platform::text::truncate_chars(String::from_utf8_lossy(&bytes).trim(), 300)
            );
        }
        out.extend(parse_counts(&bytes).with_context(|| format!("counting in {target}"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counts_and_refuses_partial_answers() {
        let ok = br#"{"took":2,"timed_out":false,"_shards":{"total":2,"successful":2,"skipped":0,"failed":0},
            "hits":{"hits":[]},"aggregations":{"files":{"doc_count_error_upper_bound":0,
            "sum_other_doc_count":0,"buckets":[{"key":"a","doc_count":7},{"key":"b","doc_count":1}]}}}"#;
        let c = parse_counts(ok).unwrap();
        assert_eq!((c["a"], c["b"], c.len()), (7, 1, 2));
        let empty = br#"{"took":0,"timed_out":false,"_shards":{"total":0,"successful":0,"skipped":0,"failed":0},"hits":{"hits":[]}}"#;
        assert!(parse_counts(empty).unwrap().is_empty());
        let failed = br#"{"_shards":{"total":2,"successful":1,"failed":1},"aggregations":{"files":{"buckets":[]}}}"#;
        assert!(parse_counts(failed)
            .unwrap_err()
            .to_string()
            .contains("1 shards failed"));
        assert!(parse_counts(b"<html>").is_err());
        let req = count_request(&["a".into(), "b".into()]);
        assert_eq!(req["aggs"]["files"]["terms"]["size"], 2);
        assert_eq!(req["query"]["terms"]["file_id"], json!(["a", "b"]));
    }
}
