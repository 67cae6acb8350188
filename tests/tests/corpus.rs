//! The bad-input corpus (`tests/corpus/bad/`, written by `tests/corpus/make_corpus.py`) through
//! the real `skuflow-ingest`: the process keeps running, each file ends in the right place
//! (`processed/` or `errors/` with its report) with the right reason, rejected rows are
//! dead-lettered with their line and rule, and the valid rows of mixed files still arrive.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Pipeline;
use serde_json::Value;

/// Where each corpus file must end, and a piece of its reason (failed) or its valid/rejected
/// counts (completed).
enum Want {
    Failed(&'static str),
    Completed { valid: u64, rejected: u64 },
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/bad")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_file_ends_in_the_right_place_with_the_right_reason() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let wants: Vec<(&str, Want)> = vec![
        ("empty.csv", Want::Failed("empty")),
        ("header_only.csv", Want::Failed("no data rows")),
        (
            "missing_column.csv",
            Want::Failed("missing required column"),
        ),
        ("duplicate_column.csv", Want::Failed("appears twice")),
        (
            "unbalanced_quote.csv",
            Want::Completed {
                valid: 1,
                rejected: 1,
            },
        ),
        (
            "wrong_field_count.csv",
            Want::Completed {
                valid: 2,
                rejected: 1,
            },
        ),
        (
            "huge_field.csv",
            Want::Completed {
                valid: 2,
                rejected: 1,
            },
        ),
        ("not_utf8.csv", Want::Failed("UTF-8")),
        (
            "bad_values.csv",
            Want::Completed {
                valid: 11,
                rejected: 5,
            },
        ),
        ("corrupt.csv.gz", Want::Failed("corrupt or truncated")),
        ("bomb.csv.gz", Want::Failed("decompress")),
    ];
    let mut keys = HashMap::new();
    for (name, _) in &wants {
        let stem = name.split('.').next().unwrap().replace('_', "-");
        let key = format!("incoming/individual/{stem}/2026-11-05/{name}");
        let dst = buckets.join("skus-fi").join(&key);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(corpus().join(name), &dst).unwrap();
        keys.insert(key, *name);
    }
    // A good file in a bucket of no country, and one under a key whose store id has characters
    // keys may not carry.
    let zz = "incoming/individual/kiosk-9/2026-11-05/skus.csv";
    let dst = buckets.join("skus-zz").join(zz);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(corpus().join("bad_values.csv"), &dst).unwrap();
    let odd = "incoming/individual/kiosk 9;drop/2026-11-05/skus.csv";
    let dst = buckets.join("skus-fi").join(odd);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(corpus().join("bad_values.csv"), &dst).unwrap();
    p.start_ingest(&[
        format!("--bucket-root={}", buckets.display()),
        "--max-decompressed-bytes=1000000".into(),
    ]);
    // Wait for a final event of every file.
    let start = Instant::now();
    let finals: HashMap<String, Value> = loop {
        let mut latest: HashMap<String, Value> = HashMap::new();
        for e in p.read_topic(&p.topics.files) {
            if e["status"] != "accepted" {
                latest.insert(e["key"].as_str().unwrap().to_string(), e);
            }
        }
        if keys.keys().all(|k| latest.contains_key(k))
            && latest.contains_key(zz)
            && latest.contains_key(odd)
        {
            break latest;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "final events for {} of {} files; logs:\n{}",
            latest.len(),
            keys.len(),
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut report = String::new();
    for (key, name) in &keys {
        let e = &finals[key];
        report.push_str(&format!(
            "{name}: {} valid={} rejected={} reason={}\n",
            e["status"], e["rows_valid"], e["rows_rejected"], e["reason"]
        ));
    }
    println!("{report}");
    let mut problems = Vec::new();
    for (name, want) in &wants {
        let key = keys.iter().find(|(_, n)| *n == name).unwrap().0;
        let e = &finals[key];
        let moved = e["moved_to"].as_str().unwrap_or("");
        match want {
            Want::Failed(why) => {
                let reason = e["reason"].as_str().unwrap_or("");
                if e["status"] != "failed" || !reason.to_lowercase().contains(&why.to_lowercase()) {
                    problems.push(format!("{name}: want failed with {why:?}: {e}"));
                }
                if !moved.starts_with("errors/")
                    || !buckets
                        .join("skus-fi")
                        .join(format!("{moved}.errors.json"))
                        .exists()
                {
                    problems.push(format!("{name}: not in errors/ with a report: {moved}"));
                }
            }
            Want::Completed { valid, rejected } => {
                if e["status"] != "completed"
                    || e["rows_valid"] != *valid
                    || e["rows_rejected"] != *rejected
                {
                    problems.push(format!("{name}: want completed {valid}/{rejected}: {e}"));
                }
                if !moved.starts_with("processed/") {
                    problems.push(format!("{name}: not in processed/: {moved}"));
                }
            }
        }
    }
    for (bucket, key, why) in [("skus-zz", zz, "country"), ("skus-fi", odd, "store")] {
        let e = finals.get(key).filter(|e| e["bucket"] == bucket);
        let ok = e.is_some_and(|e| {
            e["status"] == "failed"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.to_lowercase().contains(why))
        });
        if !ok {
            problems.push(format!("{bucket}/{key}: want failed with {why:?}: {e:?}"));
        }
    }
    assert!(problems.is_empty(), "{}\n{report}", problems.join("\n"));
    // Valid rows of the mixed files arrived; every rejected row is dead-lettered with its
    // line and a rule; the process is still running.
    let records = p.read_topic(&p.topics.records);
    let want_valid: u64 = wants
        .iter()
        .map(|(_, w)| match w {
            Want::Completed { valid, .. } => *valid,
            Want::Failed(_) => 0,
        })
        .sum();
    assert_eq!(records.len() as u64, want_valid);
    let rejects = p.read_topic(&p.topics.rejects);
    let want_rejected: u64 = wants
        .iter()
        .map(|(_, w)| match w {
            Want::Completed { rejected, .. } => *rejected,
            Want::Failed(_) => 0,
        })
        .sum();
    assert!(rejects.len() as u64 >= want_rejected, "{rejects:#?}");
    for r in &rejects {
        assert!(r["line"].as_u64().is_some_and(|l| l >= 1), "{r}");
        assert!(
            r["reasons"][0]["rule"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{r}"
        );
    }
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
    assert!(p.children[0].try_wait().unwrap().is_none(), "ingest exited");
}
