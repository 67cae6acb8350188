//! An HTTP double of Elasticsearch for the search indexer's tests and benchmark (no
//! Elasticsearch server can be installed here). It follows the documented `_bulk` contract to the
//! letter and checks what it is sent:
//!
//! * `Content-Type: application/x-ndjson` (or the versioned `vnd.elasticsearch+x-ndjson`), a
//!   body of action/source line pairs, the final line terminated by `\n`;
//! * action lines: one object with one key (`index`), `_index` matching a template put before,
//!   `_id` a non-empty string of at most 512 bytes, an integer `version` ≥ 0 with
//!   `version_type: external`;
//! * sources: an object that the template's strict mapping accepts (no unknown field, each value
//!   of the mapped type).
//!
//! It answers per item as Elasticsearch does (201/200, 409 `version_conflict_engine_exception`
//! when the stored external version is equal or newer, 400 for documents the mapping refuses,
//! `errors: true` inside an HTTP 200) and can be scripted to answer item-level 429s, 400 mapping
//! errors for chosen SKUs, whole-request 503s, slow responses and dropped connections.
//! Malformed requests are answered 400 and recorded in [`State::violations`].
//!
//! `POST /<target>/_search` answers the one search skuflow sends (`skuflow status` counting
//! documents per upload): `size: 0`, a `terms` query on one field and a `terms` aggregation on a
//! field the template maps as `keyword`, over the indices `<target>` names (an index, a
//! template's alias, or a `prefix*` pattern; comma-separated). Anything else is answered 400 as
//! Elasticsearch answers a request it cannot parse, and recorded as a violation. An unknown
//! target is 404 `index_not_found_exception` unless `ignore_unavailable=true`.
//!
//! Templates apply to a new index as in Elasticsearch: of those whose patterns match, the one
//! of highest `priority`. `GET /_cat/indices/<pattern>?format=json` lists the indices holding
//! documents and `DELETE /<index>` deletes one (recorded in [`State::deleted_indices`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

/// One stored document.
#[derive(Debug, Clone)]
pub struct Stored {
    pub version: i64,
    pub source: Value,
}

/// Scripted faults, consumed as they fire.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next N `index` items are answered 429 `es_rejected_execution_exception`.
    pub item_429: u32,
    /// Documents with these SKUs are answered 400 `document_parsing_exception`.
    pub refuse_skus: HashSet<String>,
    /// The next N `_bulk` requests are answered 503 as a whole.
    pub request_503: u32,
    /// The next N `_bulk` requests lose their connection without an answer.
    pub drop_connections: u32,
    /// The next N `_bulk` requests are answered only after `slow_by` (after being applied).
    pub slow: u32,
    pub slow_by: Duration,
}

/// Everything the double has seen and holds.
#[derive(Debug, Default)]
pub struct State {
    pub templates: HashMap<String, Value>,
    /// (index, _id) → document.
    pub docs: HashMap<(String, String), Stored>,
    pub bulk_requests: u64,
    pub items_seen: u64,
    /// Broken contract: what the client sent that Elasticsearch would refuse.
    pub violations: Vec<String>,
    pub faults: Faults,
    /// When set, every request must carry exactly this `Authorization` header.
    pub required_auth: Option<String>,
    pub auth_failures: u64,
    /// Indices deleted, in order.
    pub deleted_indices: Vec<String>,
}

impl State {
    /// The documents of the records' indices (`skus-<cc>`), without the upload history's and
    /// the rejected rows' (`skuflow-files`, `skuflow-rejects-*`).
    pub fn records(&self) -> impl Iterator<Item = (&(String, String), &Stored)> {
        self.docs
            .iter()
            .filter(|((i, _), _)| i.starts_with("skus-"))
    }

    pub fn record_count(&self) -> usize {
        self.records().count()
    }
}

/// A running double on 127.0.0.1.
pub struct EsDouble {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EsDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EsDouble {
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// The double over HTTPS, with the certificate and key (PEM files) of `cert` and `key`.
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, tls) = (shared.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { handle(shared, req).await }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            // A client that refuses the certificate ends here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        EsDouble { url, state, task }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

/// A connection dropped on purpose (hyper closes it without an answer).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the double")
    }
}

impl std::error::Error for Dropped {}

type Answer = Result<Response<Full<Bytes>>, Dropped>;

fn answer(status: StatusCode, body: Value) -> Answer {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

fn error(status: StatusCode, kind: &str, reason: &str) -> Answer {
    answer(
        status,
        json!({"error": {"type": kind, "reason": reason}, "status": status.as_u16()}),
    )
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Answer {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    {
        let mut s = state.lock().unwrap();
        if let Some(want) = &s.required_auth {
            let got = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got != Some(want.as_str()) {
                s.auth_failures += 1;
                return error(
                    StatusCode::UNAUTHORIZED,
                    "security_exception",
                    "missing authentication credentials",
                );
            }
        }
    }
    let path = parts.uri.path().to_string();
    let method = parts.method.as_str().to_string();
    match (method.as_str(), path.as_str()) {
        ("GET", "/") => answer(
            StatusCode::OK,
            json!({"name": "double", "version": {"number": "8.15.3"}, "tagline": "You Know, for Search"}),
        ),
        ("PUT", p) if p.starts_with("/_index_template/") => {
            let name = p.trim_start_matches("/_index_template/").to_string();
            let t: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "x_content_parse_exception",
                        &e.to_string(),
                    )
                }
            };
            let ok = t["index_patterns"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
                && t["template"]["mappings"]["properties"].is_object();
            if !ok {
                state
                    .lock()
                    .unwrap()
                    .violations
                    .push(format!("index template {name} lacks patterns or mappings"));
                return error(
                    StatusCode::BAD_REQUEST,
                    "action_request_validation_exception",
                    "index_patterns and template.mappings are required",
                );
            }
            state.lock().unwrap().templates.insert(name, t);
            answer(StatusCode::OK, json!({"acknowledged": true}))
        }
        ("POST" | "PUT", "/_bulk") => bulk(state, &parts.headers, &body).await,
        ("GET", p) if p.starts_with("/_cat/indices/") => {
            let pattern = p.trim_start_matches("/_cat/indices/");
            let query = parts.uri.query().unwrap_or("");
            if !query.split('&').any(|kv| kv == "format=json") {
                return violation(&state, "_cat/indices without format=json".into());
            }
            let s = state.lock().unwrap();
            let mut names: Vec<&String> = s
                .docs
                .keys()
                .map(|(i, _)| i)
                .filter(|i| pattern_matches(pattern, i))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            names.sort();
            answer(
                StatusCode::OK,
                Value::Array(names.into_iter().map(|i| json!({"index": i})).collect()),
            )
        }
        ("DELETE", p) if p.len() > 1 && !p[1..].contains('/') => {
            let index = &p[1..];
            if index.contains(['*', ',']) || index.starts_with('_') {
                return violation(&state, format!("DELETE of {index:?}: not one index"));
            }
            let mut s = state.lock().unwrap();
            let before = s.docs.len();
            s.docs.retain(|(i, _), _| i != index);
            if s.docs.len() == before {
                return error(
                    StatusCode::NOT_FOUND,
                    "index_not_found_exception",
                    &format!("no such index [{index}]"),
                );
            }
            s.deleted_indices.push(index.to_string());
            answer(StatusCode::OK, json!({"acknowledged": true}))
        }
        ("POST" | "GET", p) if p.ends_with("/_search") && p.len() > "/_search".len() + 1 => {
            let target = &p[1..p.len() - "/_search".len()];
            search(&state, target, parts.uri.query().unwrap_or(""), &body)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "resource_not_found_exception",
            &format!("no handler for {method} {path}"),
        ),
    }
}

async fn bulk(state: Arc<Mutex<State>>, headers: &hyper::HeaderMap, body: &[u8]) -> Answer {
    let delay = {
        let mut s = state.lock().unwrap();
        s.bulk_requests += 1;
        if s.faults.drop_connections > 0 {
            s.faults.drop_connections -= 1;
            return Err(Dropped);
        }
        if s.faults.request_503 > 0 {
            s.faults.request_503 -= 1;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_block_exception",
                "blocked by: [SERVICE_UNAVAILABLE/2/no master];",
            );
        }
        if s.faults.slow > 0 {
            s.faults.slow -= 1;
            Some(s.faults.slow_by)
        } else {
            None
        }
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ndjson = content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/vnd.elasticsearch+x-ndjson");
    if !ndjson {
        return violation(
            &state,
            format!("_bulk Content-Type is {content_type:?}, not application/x-ndjson"),
        );
    }
    if body.is_empty() {
        return violation(&state, "_bulk body is empty".into());
    }
    if !body.ends_with(b"\n") {
        return violation(
            &state,
            "The bulk request must be terminated by a newline [\\n]".into(),
        );
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return violation(&state, "_bulk body is not UTF-8".into()),
    };
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    if !lines.len().is_multiple_of(2) {
        return violation(
            &state,
            format!(
                "_bulk body has {} lines: an action without a source",
                lines.len()
            ),
        );
    }
    // Parse and check every action first: a malformed action fails the whole request, as in
    // Elasticsearch.
    let mut actions = Vec::with_capacity(lines.len() / 2);
    for (n, pair) in lines.chunks(2).enumerate() {
        match check_action(pair[0]) {
            Ok(a) => actions.push((a, pair[1])),
            Err(why) => return violation(&state, format!("action {}: {why}", n + 1)),
        }
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut s = state.lock().unwrap();
    let mut items = Vec::with_capacity(actions.len());
    let mut errors = false;
    for ((index, id, version), source_line) in actions {
        s.items_seen += 1;
        let item = |status: u16, extra: Value| {
            let mut o = json!({"_index": index, "_id": id, "status": status});
            if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            json!({ "index": o })
        };
        let Some(mapping) = mapping_for(&s.templates, &index) else {
            errors = true;
            items.push(item(
                404,
                json!({"error": {"type": "index_not_found_exception",
                "reason": format!("no such index [{index}] and no template matches it")}}),
            ));
            continue;
        };
        let source: Value = match serde_json::from_str(source_line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                errors = true;
                items.push(item(
                    400,
                    json!({"error": {"type": "document_parsing_exception",
                    "reason": "[1:1] failed to parse: the source is not a JSON object"}}),
                ));
                continue;
            }
        };
        if let Err(e) = check_source(&mapping, &source) {
            errors = true;
            items.push(item(400, json!({"error": e})));
            continue;
        }
        let sku = source["sku"].as_str().unwrap_or_default().to_string();
        if s.faults.refuse_skus.contains(&sku) {
            errors = true;
            items.push(item(400, json!({"error": {"type": "document_parsing_exception",
                "reason": "[1:120] failed to parse field [unit_price] of type [scaled_float] in document",
                "caused_by": {"type": "illegal_argument_exception", "reason": "scripted refusal"}}})));
            continue;
        }
        if s.faults.item_429 > 0 {
            s.faults.item_429 -= 1;
            errors = true;
            items.push(item(
                429,
                json!({"error": {"type": "es_rejected_execution_exception",
                "reason": "rejected execution of coordinating operation [queue capacity = 200]"}}),
            ));
            continue;
        }
        let key = (index.clone(), id.clone());
        match s.docs.get(&key) {
            Some(old) if old.version >= version => {
                errors = true;
                let reason = format!(
                    "[{id}]: version conflict, current version [{}] is higher or equal to the one provided [{version}]",
                    old.version
                );
                items.push(item(409, json!({"error": {"type": "version_conflict_engine_exception", "reason": reason}})));
            }
            old => {
                let result = if old.is_some() { "updated" } else { "created" };
                let status = if old.is_some() { 200 } else { 201 };
                s.docs.insert(key, Stored { version, source });
                items.push(item(status, json!({"_version": version, "result": result})));
            }
        }
    }
    answer(
        StatusCode::OK,
        json!({"took": 1, "errors": errors, "items": items}),
    )
}

fn violation(state: &Arc<Mutex<State>>, why: String) -> Answer {
    state.lock().unwrap().violations.push(why.clone());
    error(StatusCode::BAD_REQUEST, "illegal_argument_exception", &why)
}

/// Checks one action line; returns (index, id, version).
fn check_action(line: &str) -> Result<(String, String, i64), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not an object")?;
    if o.len() != 1 {
        return Err(format!("{} keys, want exactly one operation", o.len()));
    }
    let (op, meta) = o.iter().next().unwrap();
    if op != "index" {
        return Err(format!(
            "operation {op:?}: the indexer only ever sends index"
        ));
    }
    let meta = meta.as_object().ok_or("metadata is not an object")?;
    for k in meta.keys() {
        if !["_index", "_id", "version", "version_type"].contains(&k.as_str()) {
            return Err(format!("unexpected metadata field {k:?}"));
        }
    }
    let index = meta
        .get("_index")
        .and_then(Value::as_str)
        .ok_or("_index missing")?;
    if index.is_empty()
        || index != index.to_lowercase()
        || index.starts_with(['_', '-', '+'])
        || index.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':'])
    {
        return Err(format!("invalid index name {index:?}"));
    }
    let id = meta
        .get("_id")
        .and_then(Value::as_str)
        .ok_or("_id missing or not a string")?;
    if id.is_empty() || id.len() > 512 {
        return Err(format!("_id of {} bytes", id.len()));
    }
    let version = meta
        .get("version")
        .and_then(Value::as_i64)
        .ok_or("version missing or not an integer")?;
    if version < 0 {
        return Err(format!("version {version} < 0"));
    }
    if meta.get("version_type").and_then(Value::as_str) != Some("external") {
        return Err("version_type is not external".into());
    }
    Ok((index.to_string(), id.to_string(), version))
}

/// The mapping of the template that applies to a new index `index`: among those whose patterns
/// match, the one of highest `priority`, as Elasticsearch picks.
fn mapping_for(templates: &HashMap<String, Value>, index: &str) -> Option<Value> {
    templates
        .values()
        .filter(|t| {
            t["index_patterns"].as_array().is_some_and(|ps| {
                ps.iter()
                    .filter_map(Value::as_str)
                    .any(|p| pattern_matches(p, index))
            })
        })
        .max_by_key(|t| t["priority"].as_u64().unwrap_or(0))
        .map(|t| t["template"]["mappings"].clone())
}

fn pattern_matches(pattern: &str, index: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => index.starts_with(prefix),
        None => index == pattern,
    }
}

/// The field types the double checks values of.
const KNOWN_TYPES: &[&str] = &[
    "keyword",
    "text",
    "integer",
    "long",
    "scaled_float",
    "boolean",
    "date",
];

/// The strict mapping's verdict on a source: `Err` carries the item error object.
fn check_source(mapping: &Value, source: &Value) -> Result<(), Value> {
    let props = &mapping["properties"];
    let strict = mapping["dynamic"] == "strict";
    for (field, value) in source.as_object().unwrap() {
        let Some(m) = props.get(field) else {
            if strict {
                return Err(json!({"type": "strict_dynamic_mapping_exception",
                    "reason": format!("[1:2] mapping set to strict, dynamic introduction of [{field}] within [_doc] is not allowed")}));
            }
            continue;
        };
        if value.is_null() {
            continue;
        }
        let kind = m["type"].as_str().unwrap_or("");
        if kind == "object" && m["enabled"] == false {
            // Kept in _source only, never parsed.
            continue;
        }
        // Any field may hold an array of values of its type.
        let values: Vec<&Value> = match value {
            Value::Array(a) => a.iter().filter(|v| !v.is_null()).collect(),
            v => vec![v],
        };
        let ok = values.into_iter().all(|value| match kind {
            "keyword" | "text" => value.is_string(),
            "integer" => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "long" => value.is_i64(),
            "scaled_float" => {
                value.is_number()
                    || value
                        .as_str()
                        .is_some_and(|s| s.parse::<f64>().is_ok_and(f64::is_finite))
            }
            "boolean" => value.is_boolean(),
            "date" => value.as_str().is_some_and(|s| {
                if m["format"] == "strict_date" {
                    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
                } else {
                    chrono::DateTime::parse_from_rfc3339(s).is_ok()
                        || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
                }
            }),
            _ => false,
        });
        if !KNOWN_TYPES.contains(&kind) {
            return Err(json!({"type": "mapper_parsing_exception",
                "reason": format!("the double does not know field type [{kind}]")}));
        }
        if !ok {
            return Err(json!({"type": "document_parsing_exception",
                "reason": format!("[1:2] failed to parse field [{field}] of type [{}] in document", m["type"].as_str().unwrap_or(""))}));
        }
    }
    Ok(())
}

/// The indices `target` names: each comma-separated part an index, a template's alias or a
/// `prefix*` pattern. `None` when a part names nothing.
fn resolve(s: &State, target: &str) -> Option<HashSet<String>> {
    let indices: HashSet<&String> = s.docs.keys().map(|(i, _)| i).collect();
    let mut out = HashSet::new();
    for part in target.split(',') {
        let mut found = false;
        for index in &indices {
            let by_alias = s.templates.values().any(|t| {
                t["template"]["aliases"].get(part).is_some()
                    && t["index_patterns"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .filter_map(Value::as_str)
                            .any(|p| pattern_matches(p, index))
                    })
            });
            let hit = match part.strip_suffix('*') {
                Some(prefix) => index.starts_with(prefix),
                None => *index == part || by_alias,
            };
            if hit {
                out.insert((*index).clone());
                found = true;
            }
        }
        if !found && !part.ends_with('*') {
            // An alias with no index yet still resolves (to nothing) in Elasticsearch.
            let alias = s
                .templates
                .values()
                .any(|t| t["template"]["aliases"].get(part).is_some());
            if !alias {
                return None;
            }
        }
    }
    Some(out)
}

fn search(state: &Arc<Mutex<State>>, target: &str, query: &str, body: &[u8]) -> Answer {
    let refuse = |why: String| {
        state
            .lock()
            .unwrap()
            .violations
            .push(format!("_search: {why}"));
        error(StatusCode::BAD_REQUEST, "parsing_exception", &why)
    };
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return refuse(format!("body is not JSON: {e}")),
    };
    let Some(obj) = req.as_object() else {
        return refuse("body is not an object".into());
    };
    for k in obj.keys() {
        if !["size", "track_total_hits", "query", "aggs"].contains(&k.as_str()) {
            return refuse(format!("unknown key [{k}]"));
        }
    }
    if req["size"] != 0 {
        return refuse("the double answers only size 0".into());
    }
    let Some(terms) = req["query"]["terms"].as_object().filter(|t| t.len() == 1) else {
        return refuse("query must be one terms query".into());
    };
    let (qfield, qvalues) = terms.iter().next().unwrap();
    let Some(qvalues) = qvalues.as_array() else {
        return refuse(format!("terms of [{qfield}] is not an array"));
    };
    if qvalues.len() > 65_536 {
        return refuse("more than 65536 terms".into());
    }
    let wanted: HashSet<&str> = qvalues.iter().filter_map(Value::as_str).collect();
    let Some(aggs) = req["aggs"].as_object().filter(|a| a.len() == 1) else {
        return refuse("aggs must name one aggregation".into());
    };
    let (agg_name, agg) = aggs.iter().next().unwrap();
    let (Some(afield), Some(size)) = (
        agg["terms"]["field"].as_str(),
        agg["terms"]["size"].as_u64(),
    ) else {
        return refuse("the aggregation must be terms with a field and a size".into());
    };
    let ignore_unavailable = query.split('&').any(|kv| kv == "ignore_unavailable=true");
    let s = state.lock().unwrap();
    let Some(indices) = resolve(&s, target) else {
        if ignore_unavailable {
            return answer(
                StatusCode::OK,
                json!({"took": 0, "timed_out": false,
                    "_shards": {"total": 0, "successful": 0, "skipped": 0, "failed": 0},
                    "hits": {"hits": [], "max_score": null}}),
            );
        }
        return error(
            StatusCode::NOT_FOUND,
            "index_not_found_exception",
            &format!("no such index [{target}]"),
        );
    };
    for index in &indices {
        let Some(mapping) = mapping_for(&s.templates, index) else {
            continue;
        };
        for field in [qfield.as_str(), afield] {
            let t = mapping["properties"][field]["type"].as_str().unwrap_or("");
            if t != "keyword" {
                drop(s);
                return refuse(format!(
                    "field [{field}] of [{index}] is mapped as {t:?}, not keyword: terms on it are not exact (Fielddata is disabled on text fields)"
                ));
            }
        }
    }
    let mut counts: HashMap<String, u64> = HashMap::new();
    for ((index, _), doc) in &s.docs {
        if !indices.contains(index) {
            continue;
        }
        let Some(v) = doc.source[qfield.as_str()].as_str() else {
            continue;
        };
        if !wanted.contains(v) {
            continue;
        }
        if let Some(k) = doc.source[afield].as_str() {
            *counts.entry(k.to_string()).or_default() += 1;
        }
    }
    let mut buckets: Vec<(String, u64)> = counts.into_iter().collect();
    buckets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let other: u64 = buckets.iter().skip(size as usize).map(|b| b.1).sum();
    buckets.truncate(size as usize);
    answer(
        StatusCode::OK,
        json!({"took": 1, "timed_out": false,
        "_shards": {"total": indices.len(), "successful": indices.len(), "skipped": 0, "failed": 0},
        "hits": {"hits": [], "max_score": null},
        "aggregations": {agg_name: {
            "doc_count_error_upper_bound": 0,
            "sum_other_doc_count": other,
            "buckets": buckets.iter().map(|(k, n)| json!({"key": k, "doc_count": n})).collect::<Vec<_>>()
        }}}),
    )
}
