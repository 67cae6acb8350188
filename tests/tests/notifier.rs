//! The notifier tells each store's routes what became of its uploads: signed webhooks,
//! retried after a 500 and then delivered exactly once per event (one id throughout), never
//! retried after a 400 and dead-lettered with the reason.

mod common;

use std::time::Duration;

use common::Pipeline;
use skuflow_e2e::webhook_receiver::WebhookReceiver;

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec-test-4f1c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_uploads_are_signed_retried_once_delivered_and_refusals_dead_lettered() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    // Store s1: a file with one rejected row. Store s2: a file rejected as a whole.
    let put = |key: &str, text: &str| {
        let f = buckets.join("skus-de").join(key);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    };
    put(
        "incoming/individual/s1/2026-11-21/skus.csv",
        "sku,product_name,category,unit_price,currency,quantity_on_hand,units_sold,business_date\n\
         A,Milk,dairy,1.25,EUR,3,1,2026-11-21\nB,Tea,drinks,abc,EUR,3,1,2026-11-21\n",
    );
    put(
        "incoming/individual/s2/2026-11-21/skus.csv",
        "sku,product_name\nA,Milk\n",
    );
    let hooks = WebhookReceiver::start(SECRET).await;
    let routes = root.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[[route]]\nname = \"every-store\"\ncountry = \"DE\"\nwebhook = \"{0}/flaky\"\n\
             webhook_secret_env = \"TEST_HOOK_SECRET\"\n\n\
             [[route]]\nname = \"s2-desk\"\nstore_id = \"s2\"\noutcomes = [\"failed\"]\n\
             webhook = \"{0}/refuse\"\nwebhook_secret_file = \"{1}\"\n",
            hooks.url,
            root.path().join("secret").display()
        ),
    )
    .unwrap();
    std::fs::write(root.path().join("secret"), format!("{SECRET}\n")).unwrap();

    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_notifier(
        &routes,
        &[
            "--webhook-retry-ms=200".into(),
            "--webhook-attempts=4".into(),
        ],
        &[("TEST_HOOK_SECRET", SECRET)],
    );

    // Each final event: a 500, then one 200; the refusing route: one 400 and a dead letter.
    let ok = common::wait_until(WAIT, || {
        let seen = hooks.seen();
        seen.iter()
            .filter(|s| s.path == "/flaky" && s.status == 200)
            .count()
            == 2
            && seen.iter().any(|s| s.path == "/refuse")
    });
    assert!(ok, "deliveries: {:#?}\n{}", hooks.seen(), p.logs());
    // Time for a wrong extra retry or duplicate to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = hooks.seen();
    assert!(seen.iter().all(|s| s.signature_valid), "{seen:#?}");
    assert!(seen
        .iter()
        .all(|s| s.idempotency_key == s.event_id && !s.event_id.is_empty()));
    let flaky: Vec<_> = seen.iter().filter(|s| s.path == "/flaky").collect();
    assert_eq!(flaky.len(), 4, "one 500 and one 200 per event: {flaky:#?}");
    for s in flaky.iter().filter(|s| s.status == 200) {
        let tries: Vec<_> = flaky.iter().filter(|x| x.event_id == s.event_id).collect();
        assert_eq!(tries.len(), 2, "{tries:#?}");
        assert_eq!(tries[0].body, tries[1].body, "a retry sends the same event");
        assert_eq!(s.body["id"], s.event_id.as_str());
        assert_eq!(s.body["route"], "every-store");
    }
    let by_type = |t: &str| {
        flaky
            .iter()
            .find(|s| s.status == 200 && s.body["type"] == t)
            .unwrap_or_else(|| panic!("no {t}: {flaky:#?}"))
            .body
            .clone()
    };
    let done = by_type("upload.completed");
    assert_eq!(done["upload"]["store_id"], "s1");
    assert_eq!(done["upload"]["rows_valid"], 1);
    assert_eq!(done["upload"]["rows_rejected"], 1);
    assert_eq!(
        done["rejects"],
        "skus-de/processed/individual/s1/2026-11-21/skus.csv.rejects.csv"
    );
    let failed = by_type("upload.failed");
    assert_eq!(failed["upload"]["store_id"], "s2");
    assert!(failed["upload"]["reason"]
        .as_str()
        .unwrap()
        .contains("unit_price"));
    assert_eq!(
        failed["report"],
        "skus-de/errors/individual/s2/2026-11-21/skus.csv.errors.json"
    );
    let refused: Vec<_> = seen.iter().filter(|s| s.path == "/refuse").collect();
    assert_eq!(refused.len(), 1, "a 400 is not retried: {refused:#?}");

    let letters = p.read_topic(&p.topics.rejects);
    let letter = letters
        .iter()
        .find(|l| l["stage"] == "notifier")
        .unwrap_or_else(|| panic!("no dead letter: {letters:#?}"));
    let reason = letter["reasons"][0]["message"].as_str().unwrap();
    assert!(
        reason.contains("s2-desk") && reason.contains("HTTP 400"),
        "{reason}"
    );
    assert_eq!(letter["reasons"][0]["rule"], "notification_undelivered");
    assert!(!p.logs().contains(SECRET), "the secret was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_batch_loses_no_event_and_repeats_the_same_ids() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let hooks = WebhookReceiver::start(SECRET).await;
    let routes = root.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[[route]]\nname = \"all\"\nwebhook = \"{}/slow\"\nwebhook_secret_env = \"TEST_HOOK_SECRET\"\n",
            hooks.url
        ),
    )
    .unwrap();
    // Forty final events on the lifecycle topic, as the ingest writes them.
    let events: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            let mut ev = skuflow_schemas::FileEvent::new(
                &format!("file-{i:02}"),
                skuflow_schemas::FileStatus::Completed,
                "skus-de",
                &format!("incoming/individual/s{i}/2026-11-21/skus.csv"),
            );
            ev.store_id = Some(format!("s{i}"));
            ev.rows_valid = Some(10);
            (ev.file_id.clone(), serde_json::to_vec(&ev).unwrap())
        })
        .collect();
    common::produce(&p.stack.brokers, &p.topics.files, &events).await;
    let secret = [("TEST_HOOK_SECRET", SECRET)];
    let first = p.start_notifier(&routes, &[], &secret);
    // Killed while the batch's deliveries wait for their answers: nothing of it is stored.
    let started = std::time::Instant::now();
    while hooks.arrived.lock().unwrap().is_empty() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.kill(first);
    let before = hooks.seen().len();
    p.start_notifier(&routes, &[], &secret);

    let delivered = |seen: &[skuflow_e2e::webhook_receiver::Seen]| {
        let mut ids: Vec<String> = seen
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.body["upload"]["file_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    let ok = common::wait_until(WAIT, || delivered(&hooks.seen()) == 40);
    let seen = hooks.seen();
    assert!(
        ok,
        "{} of 40 events delivered\n{}",
        delivered(&seen),
        p.logs()
    );
    assert!(
        before < 40,
        "the kill came after the whole batch ({before} answered)"
    );
    assert!(seen.iter().all(|s| s.signature_valid));
    // A repeated delivery carries the same id as the first.
    let mut by_file: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for s in &seen {
        by_file
            .entry(s.body["upload"]["file_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(s.event_id.clone());
    }
    assert!(by_file.values().all(|ids| ids.len() == 1), "{by_file:#?}");
    // Every request, the ones cut off by the kill included, carried one of those ids.
    let ids: std::collections::HashSet<&String> = by_file.values().flatten().collect();
    let arrived = hooks.arrived.lock().unwrap().clone();
    assert!(arrived.iter().all(|id| ids.contains(id)), "{arrived:?}");
    assert!(
        arrived.len() > 40,
        "no delivery was repeated: {}",
        arrived.len()
    );
    println!(
        "{} requests for 40 events ({} answered before the kill)",
        arrived.len(),
        before
    );
}
