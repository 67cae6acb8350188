//! The HTTP trigger of `skuflow-ingest` on the real broker: `POST /v1/uploads` answers 202 with
//! the file id, `GET /v1/uploads/{id}` follows it to `completed` with its counts, the same object
//! posted twice is ingested once, and bad requests get 400 (or 404) with a JSON error that names
//! the problem.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{free_port, Pipeline};
use serde_json::Value;
use skuflow_e2e::{render_csv, sample_rows};

/// One HTTP/1.1 request; returns the status and the body as JSON (Null when not JSON).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_api_queues_follows_and_refuses_clearly() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let key = "incoming/individual/kiosk-3/2026-11-03/skus.csv";
    let file = buckets.join("skus-se").join(key);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let rows = sample_rows(31, 40, 6, "SEK", "2026-11-03");
    std::fs::write(&file, render_csv(&rows, false, false)).unwrap();
    let valid = rows.iter().filter(|r| r.valid).count() as u64;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Worker mode: no bucket scan, the API is the trigger under test.
    p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        format!("--http-listen={addr}"),
        "--mode=worker".into(),
    ]);
    let start = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "API not up; logs:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = format!(r#"{{"bucket":"skus-se","key":"{key}"}}"#);
    let (status, first) = http(&addr, "POST", "/v1/uploads", &body);
    assert_eq!(status, 202, "{first}");
    let id = first["file_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(first["status"], "queued");
    // The same object version again: same id, ingested once.
    let (status, again) = http(&addr, "POST", "/v1/uploads", &body);
    assert_eq!(status, 202);
    assert_eq!(again["file_id"], id.as_str());

    let start = Instant::now();
    let done = loop {
        let (status, v) = http(&addr, "GET", &format!("/v1/uploads/{id}"), "");
        assert_eq!(status, 200, "{v}");
        if v["status"] == "completed" || v["status"] == "failed" {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{v}; logs:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["rows_valid"], valid, "{done}");
    assert_eq!(done["rows_rejected"], rows.len() as u64 - valid, "{done}");
    assert_eq!(done["bucket"], "skus-se");
    // Exactly one ingest of the file: the records topic holds each valid row once.
    let records = p.read_topic(&p.topics.records);
    assert_eq!(
        records.len() as u64,
        valid,
        "the object posted twice was ingested once"
    );

    // Bad requests: status and the field named.
    let bad = [
        ("not json", 400, None),
        ("[1,2]", 400, None),
        (r#"{"key":"incoming/a.csv"}"#, 400, Some("bucket")),
        (r#"{"bucket":"skus-se"}"#, 400, Some("key")),
        (r#"{"bucket":"skus-se","key":""}"#, 400, Some("key")),
        (
            r#"{"bucket":7,"key":"incoming/a.csv"}"#,
            400,
            Some("bucket"),
        ),
        (
            r#"{"bucket":"skus-se","key":"incoming/a.csv","x":1}"#,
            400,
            Some("x"),
        ),
        (
            r#"{"bucket":"skus-se","key":"processed/a.csv"}"#,
            400,
            Some("key"),
        ),
        (
            r#"{"bucket":"skus-zz","key":"incoming/a.csv"}"#,
            400,
            Some("bucket"),
        ),
        (
            r#"{"bucket":"Bad_Bucket!","key":"incoming/a.csv"}"#,
            400,
            Some("bucket"),
        ),
        (
            r#"{"bucket":"skus-se","key":"incoming/none.csv"}"#,
            404,
            Some("key"),
        ),
    ];
    for (body, want, field) in bad {
        let (status, v) = http(&addr, "POST", "/v1/uploads", body);
        assert_eq!(status, want, "{body}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {v}"
        );
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{body}: {v}");
        }
    }
    let (status, v) = http(&addr, "GET", "/v1/uploads/not-an-id", "");
    assert_eq!((status, v["field"].as_str()), (400, Some("file_id")), "{v}");
    let (status, v) = http(&addr, "GET", &format!("/v1/uploads/{}", "0".repeat(32)), "");
    assert_eq!(status, 404, "{v}");
}
