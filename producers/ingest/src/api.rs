//! The HTTP trigger: `POST /v1/uploads` queues one object for ingest (the same upload request
//! the bucket scan and the event trigger produce, so an object version arriving through several
//! triggers is ingested once), `GET /v1/uploads/{file_id}` answers its status and counts from
//! the file lifecycle topic.
//!
//! Every request carries `Authorization: Bearer <token>`, a key of `--api-keys-file`
//! ([`crate::apikeys`]): without a valid key 401, outside the key's buckets or prefix (or a
//! bucket outside `--buckets`) 403, before the object store is asked anything. A status is
//! answered only for files in the caller's scope. Errors are RFC 9457 problem details
//! (`application/problem+json`) that name the field at fault.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use skuflow_platform::KafkaArgs;
use skuflow_schemas::{FileEvent, Trigger, UploadRequest};
use tokio_util::sync::CancellationToken;

use crate::apikeys::{ApiKeys, Scope};
use crate::discovery::request_upload;
use crate::store::object_path;
use crate::worker::{file_id, Ingestor};

/// What the API knows of each file: the newest lifecycle event, or that it queued it.
#[derive(Default)]
struct Known {
    events: HashMap<String, FileEvent>,
    queued: HashMap<String, Value>,
}

#[derive(Clone)]
struct Api {
    ingestor: Arc<Ingestor>,
    keys: Arc<ApiKeys>,
    known: Arc<Mutex<Known>>,
}

/// Largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024;

/// A problem details response (RFC 9457); `error` repeats `detail` for clients of the first
/// version of the API.
fn error(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Response {
    let detail = message.into();
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "error": detail,
    });
    if let Some(f) = field {
        body["field"] = f.into();
    }
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"skuflow\""),
        );
    }
    r
}

/// The caller's scope, or why it has none (answered with 401).
fn authenticate(api: &Api, headers: &HeaderMap) -> Result<Scope, &'static str> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err("an API key is required: send Authorization: Bearer <token>");
    };
    api.keys
        .authenticate(token)
        .ok_or("the API key is not valid (revoked, mistyped or never issued)")
}

async fn post_upload(
    State(api): State<Api>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let scope = match authenticate(&api, &headers) {
        Ok(s) => s,
        Err(why) => return error(StatusCode::UNAUTHORIZED, None, why),
    };
    let body = match skuflow_platform::http::read_body(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, None, e.to_string()),
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                format!("the body is not JSON: {e}"),
            )
        }
    };
    let Some(o) = v.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "the body must be a JSON object {\"bucket\": ..., \"key\": ...}",
        );
    };
    if let Some(extra) = o.keys().find(|k| *k != "bucket" && *k != "key") {
        return error(
            StatusCode::BAD_REQUEST,
            Some(extra),
            format!("unknown field {extra:?}: only bucket and key are accepted"),
        );
    }
    // A required, non-empty string field, or (field, why not).
    let field = |name: &'static str| -> Result<String, (&'static str, String)> {
        match o.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err((name, format!("{name} is empty"))),
            Some(_) => Err((name, format!("{name} must be a string"))),
            None => Err((name, format!("{name} is missing"))),
        }
    };
    let (bucket, key) = match (field("bucket"), field("key")) {
        (Ok(b), Ok(k)) => (b, k),
        (Err((f, why)), _) | (_, Err((f, why))) => {
            return error(StatusCode::BAD_REQUEST, Some(f), why)
        }
    };
    let prefix = &api.ingestor.template.incoming_prefix;
    if !key.starts_with(prefix.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            Some("key"),
            format!("key {key:?} is not under {prefix:?}: only uploads there are ingested"),
        );
    }
    let path = match object_path(&key) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, Some("key"), e),
    };
    if let Err(e) = crate::store::check_bucket_name(&bucket) {
        return error(StatusCode::BAD_REQUEST, Some("bucket"), format!("{e:#}"));
    }
    // Scope and allowlist before the object store is asked anything.
    if !api.ingestor.bucket_allowed(&bucket) {
        return error(
            StatusCode::FORBIDDEN,
            Some("bucket"),
            format!("bucket {bucket:?} is not one this ingest reads"),
        );
    }
    if !scope.allows(&bucket, &key) {
        tracing::warn!(key_id = %scope.id, %bucket, %key, "API request outside the key's scope refused.");
        return error(
            StatusCode::FORBIDDEN,
            Some("key"),
            format!("this API key may not queue {bucket}/{key}"),
        );
    }
    let store = match api.ingestor.stores.bucket(&bucket) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, Some("bucket"), format!("{e:#}")),
    };
    let meta = match store.head(&path).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            return error(
                StatusCode::NOT_FOUND,
                Some("key"),
                format!("no object {key:?} in bucket {bucket:?}"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                format!("the object store did not answer: {e}"),
            )
        }
    };
    let etag = meta.e_tag.clone().unwrap_or_default();
    let id = file_id(&bucket, &key, &etag);
    let req = UploadRequest::new(
        &bucket,
        &key,
        meta.e_tag.clone(),
        Some(meta.size),
        Trigger::Api,
    );
    if let Err(e) = request_upload(&api.ingestor, &req).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            format!("could not queue the upload: {e:#}"),
        );
    }
    let body = json!({
        "file_id": id,
        "status": "queued",
        "bucket": bucket,
        "key": key,
        "etag": etag,
        "size": meta.size,
        "status_url": format!("/v1/uploads/{id}"),
    });
    if let Ok(mut k) = api.known.lock() {
        k.queued.insert(id, body.clone());
    }
    tracing::info!(key_id = %scope.id, %bucket, %key, "Upload queued through the API.");
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn get_upload(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let scope = match authenticate(&api, &headers) {
        Ok(s) => s,
        Err(why) => return error(StatusCode::UNAUTHORIZED, None, why),
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(
            StatusCode::BAD_REQUEST,
            Some("file_id"),
            format!("{id:?} is not a file id (32 hex digits)"),
        );
    }
    let known = match api.known.lock() {
        Ok(k) => k,
        Err(p) => p.into_inner(),
    };
    if let Some(e) = known
        .events
        .get(&id)
        .filter(|e| scope.allows(&e.bucket, &e.key))
    {
        let mut body = serde_json::to_value(e).unwrap_or_default();
        if let Some(o) = body.as_object_mut() {
            o.remove("schema");
        }
        return (StatusCode::OK, Json(body)).into_response();
    }
    if let Some(q) = known.queued.get(&id).filter(|q| {
        scope.allows(
            q["bucket"].as_str().unwrap_or_default(),
            q["key"].as_str().unwrap_or_default(),
        )
    }) {
        return (StatusCode::OK, Json(q.clone())).into_response();
    }
    error(
        StatusCode::NOT_FOUND,
        Some("file_id"),
        format!("no upload {id} is known to this API key"),
    )
}

/// Tails the file lifecycle topic from the beginning into `known` (the newest event per file).
async fn tail_files(
    kafka: &KafkaArgs,
    topic: &str,
    known: Arc<Mutex<Known>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut cfg = kafka.consumer_config("skuflow-ingest-api-reader");
    cfg.set("enable.auto.commit", "false");
    let consumer: StreamConsumer = cfg.create().context("creating the file-status reader")?;
    let md = consumer
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(30))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m,
        };
        match m {
            Ok(m) => {
                let Some(payload) = m.payload() else { continue };
                match serde_json::from_slice::<FileEvent>(payload) {
                    // A late-upload notice is not an upload.
                    Ok(e) if e.status == skuflow_schemas::FileStatus::Late => {}
                    Ok(e) => {
                        if let Ok(mut k) = known.lock() {
                            k.queued.remove(&e.file_id);
                            k.events.insert(e.file_id.clone(), e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "A file event the API cannot read; skipped.")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "File-status reader error; continuing."),
        }
    }
}

/// Serves the API on `addr` until `shutdown`.
pub async fn serve(
    ingestor: Arc<Ingestor>,
    keys: ApiKeys,
    kafka: KafkaArgs,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let known = Arc::new(Mutex::new(Known::default()));
    let files = ingestor.topics.files.clone();
    let (k, s) = (known.clone(), shutdown.clone());
    let tail = tokio::spawn(async move { tail_files(&kafka, &files, k, s).await });
    let app = Router::new()
        .route("/v1/uploads", post(post_upload))
        .route("/v1/uploads/{file_id}", get(get_upload))
        .with_state(Api {
            ingestor,
            keys: Arc::new(keys),
            known,
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, "HTTP API listening.");
    skuflow_platform::http::serve(listener, app, shutdown).await;
    tail.abort();
    Ok(())
}
