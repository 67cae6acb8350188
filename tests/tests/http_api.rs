//! The HTTP trigger of `skuflow-ingest` on the real broker: `POST /v1/uploads` answers 202 with
//! the file id, `GET /v1/uploads/{id}` follows it to `completed` with its counts, the same object
//! posted twice is ingested once, and bad requests get 400 (or 404) with a JSON error that names
//! the problem. Every request needs an API key: none or a revoked one is 401, a bucket or key
//! outside the key's scope or the ingest's allowlist is 403 before any object-store call, and
//! replacing the key file rotates the keys without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, http_as, Pipeline};
use serde_json::Value;
use skuflow_e2e::{render_csv, sample_rows};
use skuflow_ingest::apikeys::{hash_token, new_token, KeyEntry};

/// Writes the key file `path` (atomically, as an operator replacing it would) with one entry
/// per (id, token, buckets, prefix).
fn write_keys(path: &std::path::Path, keys: &[(&str, &str, &[&str], Option<&str>)]) {
    let entries: Vec<KeyEntry> = keys
        .iter()
        .map(|(id, token, buckets, prefix)| KeyEntry {
            id: id.to_string(),
            sha256: hash_token(token),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            prefix: prefix.map(str::to_string),
        })
        .collect();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, serde_json::json!({ "keys": entries }).to_string()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn wait_up(p: &Pipeline, addr: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "API not up; logs:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let keys = root.path().join("api-keys.json");
    let token = new_token().unwrap();
    write_keys(
        &keys,
        &[("store-se", &token, &["skus-se", "skus-zz"], None)],
    );
    let http = |method: &str, path: &str, body: &str| http_as(&token, &addr, method, path, body);
    // Worker mode: no bucket scan, the API is the trigger under test.
    p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        format!("--http-listen={addr}"),
        format!("--api-keys-file={}", keys.display()),
        "--mode=worker".into(),
    ]);
    wait_up(&p, &addr);

    let body = format!(r#"{{"bucket":"skus-se","key":"{key}"}}"#);
    let (status, first) = http("POST", "/v1/uploads", &body);
    assert_eq!(status, 202, "{first}");
    let id = first["file_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(first["status"], "queued");
    // The same object version again: same id, ingested once.
    let (status, again) = http("POST", "/v1/uploads", &body);
    assert_eq!(status, 202);
    assert_eq!(again["file_id"], id.as_str());

    let start = Instant::now();
    let done = loop {
        let (status, v) = http("GET", &format!("/v1/uploads/{id}"), "");
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
        // In the key's scope, but no such bucket here: outside the ingest's allowlist.
        (
            r#"{"bucket":"skus-zz","key":"incoming/a.csv"}"#,
            403,
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
        let (status, v) = http("POST", "/v1/uploads", body);
        assert_eq!(status, want, "{body}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {v}"
        );
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{body}: {v}");
        }
    }
    let (status, v) = http("GET", "/v1/uploads/not-an-id", "");
    assert_eq!((status, v["field"].as_str()), (400, Some("file_id")), "{v}");
    let (status, v) = http("GET", &format!("/v1/uploads/{}", "0".repeat(32)), "");
    assert_eq!(status, 404, "{v}");

    // Without a key, or with one never issued: 401, as problem details.
    for t in ["", "skf_not-a-key"] {
        let (status, v) = http_as(t, &addr, "POST", "/v1/uploads", &body);
        assert_eq!((status, &v["status"]), (401, &Value::from(401)), "{v}");
        let (status, _) = http_as(t, &addr, "GET", &format!("/v1/uploads/{id}"), "");
        assert_eq!(status, 401);
    }
    // Rotation: the file is replaced by one with another key; the old one stops working
    // without a restart, and a key scoped to another store's folder sees nothing of this one.
    let next = new_token().unwrap();
    let other = new_token().unwrap();
    write_keys(
        &keys,
        &[
            ("store-se-2", &next, &["skus-se"], None),
            (
                "other-store",
                &other,
                &["skus-se"],
                Some("incoming/individual/other/"),
            ),
        ],
    );
    let start = Instant::now();
    while http_as(&token, &addr, "GET", &format!("/v1/uploads/{id}"), "").0 != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "old key still accepted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, v) = http_as(&next, &addr, "GET", &format!("/v1/uploads/{id}"), "");
    assert_eq!(
        (status, &v["status"]),
        (200, &Value::from("completed")),
        "{v}"
    );
    // Accepted by the new key: the object itself is in processed/ by now.
    let (status, v) = http_as(&next, &addr, "POST", "/v1/uploads", &body);
    assert_eq!((status, &v["field"]), (404, &Value::from("key")), "{v}");
    let (status, _) = http_as(&other, &addr, "GET", &format!("/v1/uploads/{id}"), "");
    assert_eq!(
        status, 404,
        "a file outside the key's scope is not disclosed"
    );
    let (status, v) = http_as(&other, &addr, "POST", "/v1/uploads", &body);
    assert_eq!((status, &v["field"]), (403, &Value::from("key")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_a_keys_scope_or_the_allowlist_never_reach_the_object_store() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    // A stand-in S3 endpoint that counts the connections made to it.
    let s3 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s3_addr = s3.local_addr().unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    std::thread::spawn(move || {
        for c in s3.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    let keys = root.path().join("api-keys.json");
    let token = new_token().unwrap();
    write_keys(
        &keys,
        &[(
            "store-s1",
            &token,
            &["skus-de", "skus-fr"],
            Some("incoming/individual/s1/"),
        )],
    );
    let addr = format!("127.0.0.1:{}", free_port());
    p.start_ingest(&[
        "--object-store=s3".into(),
        format!("--s3-endpoint=http://{s3_addr}"),
        "--buckets=skus-de".into(),
        format!("--http-listen={addr}"),
        format!("--api-keys-file={}", keys.display()),
        "--mode=worker".into(),
    ]);
    wait_up(&p, &addr);
    let cases = [
        // The key allows skus-fr, the ingest does not read it.
        (
            "skus-fr",
            "incoming/individual/s1/2026-11-01/a.csv",
            "bucket",
        ),
        // Another store's folder.
        ("skus-de", "incoming/individual/s2/2026-11-01/a.csv", "key"),
        // A bucket in neither.
        (
            "skus-attacker",
            "incoming/individual/s1/2026-11-01/a.csv",
            "bucket",
        ),
    ];
    for (bucket, key, field) in cases {
        let body = format!(r#"{{"bucket":"{bucket}","key":"{key}"}}"#);
        let (status, v) = http_as(&token, &addr, "POST", "/v1/uploads", &body);
        assert_eq!(
            (status, &v["field"]),
            (403, &Value::from(field)),
            "{body}: {v}"
        );
        assert_eq!(v["title"], "Forbidden", "{v}");
    }
    let (status, _) = http_as("", &addr, "POST", "/v1/uploads", "{}");
    assert_eq!(status, 401);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refused request reached the object store"
    );
    assert!(
        p.read_topic(&p.topics.uploads).is_empty(),
        "a refused request was queued"
    );
}
