//! The search indexer on the real broker against the `_bulk` double: every document ends
//! indexed (newest version) or dead-lettered, exactly once, through item-level 429s, 400 mapping
//! errors, whole-request 503s, slow responses and dropped connections; committed offsets never
//! run ahead of what the double holds.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{produce, record, Pipeline};
use skuflow_e2e::es_double::EsDouble;
use skuflow_e2e::record_messages;
use skuflow_schemas::SkuRecord;

const WAIT: Duration = Duration::from_secs(120);

fn doc_id(r: &SkuRecord) -> (String, String) {
    (
        format!("skus-{}", r.country.to_ascii_lowercase()),
        format!("{}:{}:{}:{}", r.country, r.store_id, r.sku, r.business_date),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_document_is_indexed_or_dead_lettered_once_through_faults() {
    let mut p = Pipeline::new().await;
    let es = EsDouble::start().await;
    let password = format!("es-secret-{}", p.id);
    es.with(|s| {
        // Basic auth as the indexer sends it: base64("indexer:<password>").
        s.required_auth = Some(format!(
            "Basic {}",
            base64_of(&format!("indexer:{password}"))
        ));
        // Item-level faults from the start; whole-request faults once the first documents are
        // in (below), so that neither kind hides the other.
        s.faults.item_429 = 60;
        s.faults.refuse_skus = ["SKU-13".to_string(), "SKU-377".to_string()].into();
    });

    // Three countries, 1000 keys each, two versions per key, shuffled so that older versions
    // often arrive after newer ones.
    let mut msgs = Vec::new();
    let mut records = Vec::new();
    for country in ["SE", "NO", "DK"] {
        for i in 0..1000u64 {
            for v in [1000i64, 2000] {
                let r = record(country, i, v + (i as i64 % 5));
                msgs.push((r.kafka_key(), serde_json::to_vec(&r).unwrap()));
                records.push(r);
            }
        }
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..msgs.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        msgs.swap(i, j);
        records.swap(i, j);
    }
    let positions = produce(&p.stack.brokers, &p.topics.records, &msgs).await;
    let refused: HashSet<&str> = ["SKU-13", "SKU-377"].into();

    let group = format!("skuflow-search-indexer-{}", p.id);
    // The password travels the way the README says: SKUFLOW_ES_PASSWORD, never a flag.
    let indexer = p.start_indexer(
        &es.url,
        &[
            "--es-username=indexer".into(),
            "--batch-size=500".into(),
            "--bulk-max-docs=100".into(),
            "--max-in-flight=3".into(),
            "--item-retries=3".into(),
            "--request-timeout-ms=2000".into(),
            "--max-backoff-ms=1000".into(),
        ],
        &[("SKUFLOW_ES_PASSWORD", &password)],
    );

    // While it runs: every offset the group has committed covers only documents the double
    // holds (at this version or newer) or ones refused for good.
    let by_position: HashMap<(i32, i64), &SkuRecord> =
        positions.iter().copied().zip(records.iter()).collect();
    let ends = common::ends_of(&positions, 3);
    let start = Instant::now();
    let mut checks = 0;
    loop {
        let committed = p.committed(&group, &p.topics.records, 3);
        let docs = es.with(|s| {
            s.records()
                .map(|(k, v)| (k.clone(), v.version))
                .collect::<HashMap<_, _>>()
        });
        for (part, &upto) in committed.iter().enumerate() {
            for off in 0..upto.max(0) {
                let r = by_position[&(part as i32, off)];
                if refused.contains(r.sku.as_str()) {
                    continue;
                }
                let held = docs.get(&doc_id(r)).copied().unwrap_or(-1);
                assert!(
                    held >= r.record_version,
                    "offset {off} of partition {part} committed before its document was durable (holds {held}, wants {})",
                    r.record_version
                );
            }
        }
        checks += 1;
        if checks == 1 {
            // Let the item-level faults play out on the first batches, then break whole
            // requests halfway through.
            while es.with(|s| s.record_count() < 1500) && start.elapsed() < WAIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            es.with(|s| {
                s.faults.request_503 = 2;
                s.faults.drop_connections = 2;
                s.faults.slow = 2;
                s.faults.slow_by = Duration::from_secs(3);
            });
        }
        if committed.iter().zip(&ends).all(|(c, e)| c == e) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "not all offsets committed: {committed:?} of {ends:?}; logs:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks > 1);

    // Every natural key holds its newest version, exactly the record minus its envelope.
    let mut newest: HashMap<(String, String), &SkuRecord> = HashMap::new();
    for r in &records {
        if refused.contains(r.sku.as_str()) {
            continue;
        }
        let e = newest.entry(doc_id(r)).or_insert(r);
        if e.record_version < r.record_version {
            *e = r;
        }
    }
    let (docs, state) = es.with(|s| {
        (
            s.records()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            (
                s.violations.clone(),
                s.faults.clone(),
                s.auth_failures,
                s.templates.clone(),
            ),
        )
    });
    let (violations, faults, auth_failures, templates) = state;
    assert!(violations.is_empty(), "contract broken: {violations:?}");
    assert_eq!(auth_failures, 0, "every request authenticated");
    assert_eq!(docs.len(), newest.len(), "one document per natural key");
    for (key, want) in &newest {
        let got = &docs[key];
        assert_eq!(got.version, want.record_version, "{key:?}");
        let mut expect = serde_json::to_value(want).unwrap();
        expect.as_object_mut().unwrap().remove("schema");
        assert_eq!(got.source, expect, "{key:?}");
    }
    // The faults all fired.
    assert_eq!(
        (
            faults.item_429,
            faults.request_503,
            faults.drop_connections,
            faults.slow
        ),
        (0, 0, 0, 0)
    );
    let t = &templates["skus"];
    assert_eq!(t["index_patterns"][0], "skus-*");
    assert!(t["template"]["aliases"]["skus"].is_object());
    assert_eq!(
        t["template"]["mappings"]["properties"]["unit_price"]["type"],
        "scaled_float"
    );

    // Dead letters: one per refused record (each of the two keys in three countries, two
    // versions each), no more.
    let letters = p.read_topic(&p.topics.rejects);
    let want_letters = records
        .iter()
        .filter(|r| refused.contains(r.sku.as_str()))
        .count();
    assert_eq!(letters.len(), want_letters, "{letters:#?}");
    // (The test records' ids repeat across countries.)
    let ids: HashSet<(&str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l["country"].as_str().unwrap(),
                l["record_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids.len(), want_letters, "no record dead-lettered twice");
    for l in &letters {
        assert_eq!(l["stage"], "search-indexer");
        assert_eq!(l["reasons"][0]["rule"], "elasticsearch_rejected");
        let m = l["reasons"][0]["message"].as_str().unwrap();
        assert!(
            m.contains("400") && m.contains("document_parsing_exception"),
            "{m}"
        );
    }

    // What an operator sees of the same run on /metrics.
    let m = p.ops_get(indexer, "/metrics").1;
    let c = ("component", "search-indexer");
    let dead = common::metric(&m, "skuflow_dead_letters_total", &[c]);
    assert_eq!(dead, Some(want_letters as f64), "{m}");
    let refusals = common::metric(
        &m,
        "skuflow_records_failed_total",
        &[c, ("reason", "refused")],
    );
    assert_eq!(refusals, Some(want_letters as f64));
    let retries = common::metric(
        &m,
        "skuflow_sink_retries_total",
        &[c, ("sink", "search-indexer")],
    );
    assert!(retries.unwrap_or(0.0) >= 2.0, "{m}");
    assert_eq!(p.ops_get(indexer, "/readyz").0, 200);

    let logs = p.logs();
    assert!(logs.contains("retrying them alone"), "{logs}");
    assert!(logs.contains("Sink unavailable"), "{logs}");
    assert!(
        !logs.contains(&password),
        "the password appears in a log line"
    );
}

fn base64_of(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_verifies_the_clusters_certificate_and_sends_its_api_key_only_to_it() {
    use common::tls::{make_ca, make_cert};
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_ca(certs.path(), "other-ca");
    make_cert(certs.path(), "ca", "server", "serverAuth");
    let es = EsDouble::start_tls(
        &certs.path().join("server.crt"),
        &certs.path().join("server.key"),
    )
    .await;
    // The API key `skf-id:skf-key-8c1d`, as Elasticsearch expects it: base64 of id:key.
    es.with(|s| s.required_auth = Some("ApiKey c2tmLWlkOnNrZi1rZXktOGMxZA==".into()));
    let mut p = Pipeline::new().await;
    let records: Vec<SkuRecord> = (0..40).map(|i| record("DE", i, 2)).collect();
    produce(
        &p.stack.brokers,
        &p.topics.records,
        &record_messages(&records),
    )
    .await;

    // A CA that did not sign the cluster's certificate: nothing is sent, the key included.
    let other = certs.path().join("other-ca.pem").display().to_string();
    let refused = p.start_indexer(
        &es.url,
        &[
            format!("--es-ca-cert={other}"),
            "--max-backoff-ms=500".into(),
        ],
        &[("SKUFLOW_ES_API_KEY", "skf-id:skf-key-8c1d")],
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(es.with(|s| (s.docs.len(), s.auth_failures)), (0, 0));
    p.kill(refused);

    let ca = certs.path().join("ca.pem").display().to_string();
    p.start_indexer(
        &es.url,
        &[format!("--es-ca-cert={ca}")],
        &[("SKUFLOW_ES_API_KEY", "skf-id:skf-key-8c1d")],
    );
    assert!(
        common::wait_until(Duration::from_secs(120), || es.with(|s| s.record_count())
            == 40),
        "{}",
        p.logs()
    );
    assert_eq!(es.with(|s| s.auth_failures), 0);
    let logs = p.logs();
    assert!(
        !logs.contains("skf-key-8c1d") && !logs.contains("c2tmLWlkOnNrZi1rZXktOGMxZA"),
        "the API key reached a log line"
    );
}

/// The upload history and the rejected rows beside the facts: real uploads through the ingest,
/// one document per upload with its final state in `skuflow-files` under `skus-files`, one per
/// rejected row in the month's `skuflow-rejects-YYYY.MM` under `skus-rejects`; a redelivered dead
/// letter changes nothing, and a month past the retention is deleted whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_history_and_rejected_rows_are_indexed_once_beside_the_facts() {
    let mut p = Pipeline::new().await;
    let es = EsDouble::start().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let put = |key: &str, text: &str| common::put_local(&buckets, "skus-de", key, text);
    // s1: line 3 rejected (unit_price), a column the contract does not know (a warning);
    // s2: refused as a whole (no unit_price column).
    put(
        "incoming/individual/s1/2026-11-21/skus.csv",
        "sku,product_name,category,unit_price,currency,quantity_on_hand,units_sold,business_date,shelf\n\
         A,Milk,dairy,1.25,EUR,3,1,2026-11-21,x\nB,Tea,drinks,abc,EUR,3,1,2026-11-21,y\n\
         D,Oil,food,3.10,EUR,8,2,2026-11-21,z\n",
    );
    put(
        "incoming/individual/s2/2026-11-21/skus.csv",
        "sku,product_name\nA,Milk\n",
    );
    // Two dead letters from elsewhere: one of yesterday with a row longer than is kept, sent
    // twice; one from long ago (its month is past the 90-day retention).
    let reject = |line: u64, raw: String, at: chrono::DateTime<chrono::Utc>| {
        let m = skuflow_schemas::RejectMessage {
            schema: skuflow_schemas::REJECT_SCHEMA.into(),
            stage: "ingest".into(),
            file_id: format!("f-{line}"),
            bucket: "skus-de".into(),
            key: "incoming/individual/s9/2025-01-10/skus.csv".into(),
            country: Some("DE".into()),
            line,
            raw,
            raw_truncated: false,
            record_id: None,
            reasons: vec![skuflow_schemas::RejectReason {
                field: Some("sku".into()),
                column: Some(1),
                value: Some("Z".into()),
                rule: "gtin_check_digit".into(),
                message: "not a GTIN".into(),
            }],
            rejected_at: at,
        };
        (m.file_id.clone(), serde_json::to_vec(&m).unwrap())
    };
    let recent = reject(
        7,
        "Z,".repeat(6000),
        chrono::Utc::now() - chrono::Duration::days(1),
    );
    let old = reject(8, "Z,".into(), "2025-01-10T08:00:00Z".parse().unwrap());
    produce(
        &p.stack.brokers,
        &p.topics.rejects,
        &[recent.clone(), recent, old],
    )
    .await;

    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_indexer(&es.url, &[], &[]);
    let files = |s: &skuflow_e2e::es_double::State| -> Vec<serde_json::Value> {
        s.docs
            .iter()
            .filter(|((i, _), _)| i == "skuflow-files")
            .map(|(_, d)| d.source.clone())
            .collect()
    };
    let finals = common::wait_until(WAIT, || {
        es.with(|s| {
            files(s)
                .iter()
                .filter(|d| d["status"] != "accepted")
                .count()
        }) == 2
    });
    assert!(finals, "{}", p.logs());
    let rejected = common::wait_until(WAIT, || {
        es.with(|s| {
            s.docs
                .keys()
                .filter(|(i, _)| i.starts_with("skuflow-rejects-"))
                .count()
        }) == 2
            && es.with(|s| s.deleted_indices.clone()) == ["skuflow-rejects-2025.01"]
    });
    assert!(
        rejected,
        "{:?} {}",
        es.with(|s| s.docs.keys().cloned().collect::<Vec<_>>()),
        p.logs()
    );
    assert!(common::wait_until(WAIT, || es.with(|s| s.record_count()) == 2));

    let (docs, violations, templates) =
        es.with(|s| (s.docs.clone(), s.violations.clone(), s.templates.clone()));
    assert!(violations.is_empty(), "contract broken: {violations:?}");
    for (name, alias) in [
        ("skuflow-files", "skus-files"),
        ("skuflow-rejects", "skus-rejects"),
    ] {
        let t = &templates[name];
        assert!(t["template"]["aliases"].get(alias).is_some(), "{t}");
        assert_eq!(t["template"]["mappings"]["dynamic"], "strict");
    }
    let by_store = |store: &str| {
        docs.iter()
            .find(|((i, _), d)| i == "skuflow-files" && d.source["store_id"] == store)
            .map(|(_, d)| d.source.clone())
            .unwrap()
    };
    let s1 = by_store("s1");
    assert_eq!(s1["status"], "completed");
    assert_eq!(
        (&s1["rows_total"], &s1["rows_valid"], &s1["rows_rejected"]),
        (
            &serde_json::json!(3),
            &serde_json::json!(2),
            &serde_json::json!(1)
        )
    );
    assert_eq!(
        (&s1["country"], &s1["store_category"]),
        (&"DE".into(), &"individual".into())
    );
    assert!(s1["warnings"].to_string().contains("shelf"), "{s1}");
    assert!(s1.get("schema").is_none());
    let s2 = by_store("s2");
    assert_eq!(s2["status"], "failed");
    assert!(
        s2["reason"].as_str().unwrap().contains("unit_price"),
        "{s2}"
    );

    let rejected = |line: u64| {
        docs.iter()
            .find(|((i, _), d)| i.starts_with("skuflow-rejects-") && d.source["line"] == line)
            .map(|((i, _), d)| (i.clone(), d.source.clone()))
            .unwrap()
    };
    let (index, line3) = rejected(3);
    let month = chrono::DateTime::parse_from_rfc3339(line3["rejected_at"].as_str().unwrap())
        .unwrap()
        .format("%Y.%m")
        .to_string();
    assert_eq!(index, format!("skuflow-rejects-{month}"));
    assert_eq!(line3["line"], 3);
    assert_eq!(line3["file_id"], s1["file_id"]);
    assert_eq!(
        (&line3["field"], &line3["stage"]),
        (&"unit_price".into(), &"ingest".into())
    );
    assert!(line3["raw"].as_str().unwrap().contains("abc"), "{line3}");
    assert_eq!(line3["rules"].as_array().unwrap().len(), 1);

    // The long row: one document for the two deliveries, its raw text cut to what is kept.
    let (_, line7) = rejected(7);
    assert_eq!(line7["raw_truncated"], true);
    assert_eq!(line7["raw"].as_str().unwrap().len(), 8 * 1024);
    assert_eq!(line7["reasons"][0]["column"], 1);

    // The consumer groups of the two topics committed everything they read.
    let group = format!("skuflow-search-indexer-{}", p.id);
    let committed = |g: &str, topic: &str| {
        p.committed(g, topic, 3)
            .iter()
            .map(|o| o.max(&0))
            .sum::<i64>()
    };
    let rejects_group = format!("{group}-rejects");
    assert!(
        common::wait_until(WAIT, || committed(&rejects_group, &p.topics.rejects) == 4),
        "{:?}",
        p.committed(&rejects_group, &p.topics.rejects, 3)
    );
    assert!(committed(&format!("{group}-files"), &p.topics.files) >= 4);
}
