//! The notifier tells each store's routes what became of its uploads: signed webhooks,
//! retried after a 500 and then delivered exactly once per event (one id throughout), never
//! retried after a 400 and dead-lettered with the reason.

mod common;

use std::time::Duration;

use common::Pipeline;
use skuflow_e2e::webhook_receiver::WebhookReceiver;

const WAIT: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec-test-4f1c";

/// Store s1: a file with one rejected row (line 3, unit_price `abc`). Store s2: a file rejected
/// as a whole (no unit_price column). Returns the bucket root.
fn two_uploads(root: &std::path::Path) -> std::path::PathBuf {
    let buckets = root.join("buckets");
    let put = |key: &str, text: &str| common::put_local(&buckets, "skus-de", key, text);
    put(
        "incoming/individual/s1/2026-11-21/skus.csv",
        "sku,product_name,category,unit_price,currency,quantity_on_hand,units_sold,business_date\n\
         A,Milk,dairy,1.25,EUR,3,1,2026-11-21\nB,Tea,drinks,abc,EUR,3,1,2026-11-21\n",
    );
    put(
        "incoming/individual/s2/2026-11-21/skus.csv",
        "sku,product_name\nA,Milk\n",
    );
    buckets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_uploads_are_signed_retried_once_delivered_and_refusals_dead_lettered() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = two_uploads(root.path());
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
    // A short session and stall watch: tansu may hand the replacement no partition while it
    // still counts the killed member (docs/tansu.md, "Groups left without a consumer").
    let group = [
        "-Xsession.timeout.ms=6000".to_string(),
        "--rejoin-stalled-secs=20".to_string(),
    ];
    let first = p.start_notifier(&routes, &group, &secret);
    // Killed while the batch's deliveries wait for their answers: nothing of it is stored.
    let started = std::time::Instant::now();
    while hooks.arrived.lock().unwrap().is_empty() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.kill(first);
    let before = hooks.seen().len();
    p.start_notifier(&routes, &group, &secret);

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

/// The test's SMTP server (tests/python/smtp_server.py): STARTTLS and AUTH required; "full@"
/// is deferred once with a 452, "nobody@" refused with a 550.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    out: std::path::PathBuf,
}

impl SmtpServer {
    fn start(dir: &std::path::Path, user: &str, password: &str) -> SmtpServer {
        use std::io::BufRead;
        common::tls::make_ca(dir, "ca");
        common::tls::make_cert(dir, "ca", "smtp", "serverAuth");
        let port = common::free_port();
        let out = dir.join("mail");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/smtp_server.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.join("smtp.crt"))
            .arg(dir.join("smtp.key"))
            .args([user, password])
            .arg(&out)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/install-stack.sh python)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        SmtpServer { child, port, out }
    }

    /// The messages accepted so far.
    fn mails(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<_> = std::fs::read_dir(&self.out)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|x| x == "json"));
        files.sort();
        files
            .iter()
            .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_mailed_over_starttls_with_auth_retried_on_4xx_and_dead_lettered_on_5xx() {
    const PASSWORD: &str = "smtp-pw-91d2";
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = two_uploads(root.path());
    let smtp = SmtpServer::start(root.path(), "notifier", PASSWORD);
    std::fs::write(root.path().join("smtp-password"), format!("{PASSWORD}\n")).unwrap();
    let routes = root.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[route]]\nname = \"desk\"\ncountry = \"DE\"\n\
         email = [\"Store desk <desk@s1.example>\", \"full@s1.example\"]\n\n\
         [[route]]\nname = \"s2-owner\"\nstore_id = \"s2\"\nemail = [\"nobody@s2.example\"]\n",
    )
    .unwrap();

    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_notifier(
        &routes,
        &[
            "--smtp-host=127.0.0.1".into(),
            format!("--smtp-port={}", smtp.port),
            format!("--smtp-ca-file={}", root.path().join("ca.pem").display()),
            "--smtp-username=notifier".into(),
            format!(
                "--smtp-password-file={}",
                root.path().join("smtp-password").display()
            ),
            "--mail-from=skuflow <uploads@skuflow.example>".into(),
            format!("--bucket-root={}", buckets.display()),
            "--webhook-retry-ms=200".into(),
            "--webhook-attempts=4".into(),
        ],
        &[],
    );

    // Two mails to the desk (s1 completed, s2 failed), the first after a 452; s2's owner: a 550.
    let dead_letter = || {
        p.read_topic(&p.topics.rejects)
            .into_iter()
            .find(|l| l["stage"] == "notifier")
    };
    let ok = common::wait_until(WAIT, || smtp.mails().len() >= 2 && dead_letter().is_some());
    assert!(ok, "mails: {:#?}\n{}", smtp.mails(), p.logs());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 2, "one mail per event and route: {mails:#?}");
    for m in &mails {
        assert_eq!(m["tls"], true, "STARTTLS: {m:#}");
        assert_eq!(m["authenticated"], true);
        assert_eq!(m["mail_from"], "uploads@skuflow.example");
        assert_eq!(
            m["rcpt_tos"],
            serde_json::json!(["desk@s1.example", "full@s1.example"])
        );
        let id = m["headers"]["skuflow-event-id"].as_str().unwrap();
        assert!(m["headers"]["message-id"].as_str().unwrap().contains(id));
    }
    let by_subject = |s: &str| {
        mails
            .iter()
            .find(|m| m["headers"]["subject"] == s)
            .unwrap_or_else(|| panic!("no mail {s:?}: {mails:#?}"))
    };
    let done =
        by_subject("skuflow: incoming/individual/s1/2026-11-21/skus.csv accepted, 1 row rejected");
    let plain = done["plain"].as_str().unwrap();
    for part in [
        "Rows: 2 in the file, 1 accepted, 1 rejected",
        "line 3, column 4, unit_price = \"abc\"",
        "skus-de/processed/individual/s1/2026-11-21/skus.csv.report.json",
        "skus-de/processed/individual/s1/2026-11-21/skus.csv.rejects.csv",
    ] {
        assert!(plain.contains(part), "{part:?} not in\n{plain}");
    }
    let html = done["html"].as_str().unwrap();
    assert!(
        html.contains("<td>unit_price</td>") && html.contains("<td>abc</td>"),
        "{html}"
    );
    let failed = by_subject("skuflow: incoming/individual/s2/2026-11-21/skus.csv failed");
    assert!(failed["plain"].as_str().unwrap().contains("unit_price"));

    let letter = dead_letter().unwrap();
    let reason = letter["reasons"][0]["message"].as_str().unwrap();
    assert!(
        reason.contains("s2-owner") && reason.contains("550") && reason.contains("not retried"),
        "{reason}"
    );
    let logs = p.logs();
    assert!(!logs.contains(PASSWORD), "the SMTP password was logged");
    assert_eq!(
        logs.matches("Not delivered; retrying.").count(),
        1,
        "one retry, of the first mail to full@ after its 452:\n{logs}"
    );
}

/// The completed-upload events of a store that uploaded at `times`.
fn history(store: &str, times: &[chrono::DateTime<chrono::Utc>]) -> Vec<(String, Vec<u8>)> {
    use skuflow_schemas::{FileEvent, FileStatus};
    times
        .iter()
        .map(|t| {
            let day = t.date_naive();
            let id = format!("{store}-{}", t.timestamp());
            let key = format!("incoming/individual/{store}/{day}/skus.csv");
            let mut ev = FileEvent::new(&id, FileStatus::Completed, "skus-de", &key);
            ev.country = Some("DE".into());
            ev.store_id = Some(store.into());
            ev.business_date = Some(day);
            ev.last_modified = Some(*t);
            ev.rows_total = Some(10);
            ev.rows_valid = Some(10);
            ev.rows_rejected = Some(0);
            ev.at = *t + chrono::Duration::seconds(5);
            (id, serde_json::to_vec(&ev).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_skipped_its_daily_upload_is_reported_late_once_and_one_that_uploaded_is_not()
{
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let hooks = WebhookReceiver::start(SECRET).await;
    let routes = root.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[[route]]\nname = \"late-desk\"\ncountry = \"DE\"\noutcomes = [\"late\"]\n\
             webhook = \"{}/late\"\nwebhook_secret_env = \"TEST_HOOK_SECRET\"\n",
            hooks.url
        ),
    )
    .unwrap();
    // Six days of uploads, each about three hours before this time of day: both stores upload
    // daily and their next upload was due three hours ago. bremen-2 uploaded ten minutes ago.
    let now = chrono::Utc::now();
    let days: Vec<_> = (1..=6)
        .map(|d| now - chrono::Duration::days(d) - chrono::Duration::hours(3))
        .collect();
    let mut events = history("hamburg-1", &days);
    let mut bremen = days.clone();
    bremen.push(now - chrono::Duration::minutes(10));
    events.extend(history("bremen-2", &bremen));
    common::produce(&p.stack.brokers, &p.topics.files, &events).await;

    let args = [
        "--late-grace-minutes=60".to_string(),
        "--late-check-secs=1".into(),
        // tansu may hand the restarted notifier no partition while it still counts the killed
        // one (docs/tansu.md, "Groups left without a consumer").
        "-Xsession.timeout.ms=6000".into(),
        "--rejoin-stalled-secs=20".into(),
    ];
    let first = p.start_notifier(&routes, &args, &[("TEST_HOOK_SECRET", SECRET)]);
    let late_deliveries = |hooks: &WebhookReceiver| -> Vec<serde_json::Value> {
        hooks
            .seen()
            .into_iter()
            .filter(|s| s.path == "/late")
            .map(|s| s.body)
            .collect()
    };
    let ok = common::wait_until(WAIT, || !late_deliveries(&hooks).is_empty());
    assert!(ok, "no late notice: {:#?}\n{}", hooks.seen(), p.logs());
    // Several more looks: no second notice, none for the store that uploaded.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = late_deliveries(&hooks);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let notice = &seen[0];
    assert_eq!(notice["type"], "upload.late");
    assert_eq!(notice["upload"]["status"], "late");
    assert_eq!(notice["upload"]["store_id"], "hamburg-1");
    let reason = notice["upload"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("uploads daily") && reason.contains("60 minutes of grace"),
        "{reason}"
    );
    let lates = |p: &Pipeline| -> Vec<serde_json::Value> {
        p.read_topic(&p.topics.files)
            .into_iter()
            .filter(|e| e["status"] == "late")
            .collect()
    };
    let on_topic = lates(&p);
    assert_eq!(on_topic.len(), 1, "{on_topic:#?}");
    assert_eq!(on_topic[0]["file_id"], notice["upload"]["file_id"]);

    let (_, metrics) = p.ops_get(first, "/metrics");
    let late = |store| {
        common::metric(
            &metrics,
            "skuflow_store_upload_late",
            &[("store_id", store)],
        )
    };
    assert_eq!(late("hamburg-1"), Some(1.0), "{metrics}");
    assert_eq!(late("bremen-2"), Some(0.0), "{metrics}");
    assert_eq!(
        common::metric(&metrics, "skuflow_late_uploads_total", &[]),
        Some(1.0)
    );

    // Killed and started again, the watch reads its own notice back and sends no second one.
    p.kill(first);
    let second = p.start_notifier(&routes, &args, &[("TEST_HOOK_SECRET", SECRET)]);
    let watched = common::wait_until(WAIT, || {
        let (_, m) = p.ops_get(second, "/metrics");
        common::metric(
            &m,
            "skuflow_store_upload_late",
            &[("store_id", "hamburg-1")],
        ) == Some(1.0)
    });
    assert!(watched, "{}", p.logs());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = p.ops_get(second, "/metrics");
    assert_eq!(
        common::metric(&metrics, "skuflow_late_uploads_total", &[]),
        Some(0.0)
    );
    assert_eq!(lates(&p).len(), 1);
    assert_eq!(late_deliveries(&hooks).len(), 1, "{:#?}", hooks.seen());
}
