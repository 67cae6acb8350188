//! The HTTP trigger: `POST /v1/uploads` queues one object for ingest (the same upload request
//! the bucket scan and the event trigger produce, so an object version arriving through several
//! triggers is ingested once), `GET /v1/uploads/{file_id}` answers its status and counts from
//! the file lifecycle topic. Bad requests get 400 with a JSON error naming the problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
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
    known: Arc<Mutex<Known>>,
}

fn error(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Response {
    let mut body = json!({ "error": message.into() });
    if let Some(f) = field {
        body["field"] = f.into();
    }
    (status, Json(body)).into_response()
}

async fn post_upload(State(api): State<Api>, body: axum::body::Bytes) -> Response {
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
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn get_upload(State(api): State<Api>, UrlPath(id): UrlPath<String>) -> Response {
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
    if let Some(e) = known.events.get(&id) {
        let mut body = serde_json::to_value(e).unwrap_or_default();
        if let Some(o) = body.as_object_mut() {
            o.remove("schema");
        }
        return (StatusCode::OK, Json(body)).into_response();
    }
    if let Some(q) = known.queued.get(&id) {
        return (StatusCode::OK, Json(q.clone())).into_response();
    }
    error(
        StatusCode::NOT_FOUND,
        Some("file_id"),
        format!("no upload {id} is known"),
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
        .with_state(Api { ingestor, known });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, "HTTP API listening.");
    let s = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { s.cancelled().await })
        .await
        .context("serving the HTTP API")?;
    tail.abort();
    Ok(())
}
