//! Kafka over TLS with mutual authentication: the local broker behind stunnel (Debian's TLS
//! terminator), advertising the TLS address, with a CA and certificates the test makes. A full
//! ingest → warehouse loader run goes through it; a client that does not trust the broker's CA
//! is refused at start with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{make_ca, make_cert};
use common::{free_port, upload_local, Pipeline};
use skuflow_e2e::sample_rows;
use skuflow_platform::kafka::{ensure_topics, pipeline_topics};
use skuflow_platform::KafkaArgs;

/// tansu on a plain port, advertising the TLS port stunnel serves in front of it.
struct TlsBroker {
    children: Vec<Child>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_port(addr: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{addr} does not answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The broker behind stunnel: with `mtls`, stunnel requires a client certificate signed by the
/// test CA; with `scram_user`, the broker requires SASL SCRAM-SHA-512 and knows that user.
fn start_tls_broker(certs: &Path, mtls: bool, scram_user: Option<(&str, &str)>) -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let tansu = std::env::var("SKUFLOW_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
    let storage = format!("sqlite:///{}", dir.path().join("tansu.db").display());
    let spawn = |authentication: bool| {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.path().join("tansu.log"))
            .unwrap();
        let mut cmd = Command::new(&tansu);
        cmd.arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{plain}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{tls}"),
            ])
            .args(["--storage-engine", &storage]);
        if authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_port(&format!("127.0.0.1:{plain}"));
        child
    };
    let mut broker = spawn(false);
    if let Some((user, password)) = scram_user {
        // tansu takes new users while it does not require authentication; then it restarts
        // requiring it, on the same storage.
        let ok = Command::new(&tansu)
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{plain}"),
            ])
            .args(["--mechanism", "scram512", user, password])
            .status()
            .unwrap();
        assert!(ok.success(), "tansu user create");
        let _ = broker.kill();
        let _ = broker.wait();
        broker = spawn(true);
    }
    let conf = dir.path().join("stunnel.conf");
    let c = |f: &str| certs.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n\
             cert = {}\nkey = {}\n{}",
            c("server.crt"),
            c("server.key"),
            if mtls {
                format!("CAfile = {}\nverifyChain = yes\nrequireCert = yes\n", c("ca.pem"))
            } else {
                String::new()
            }
        ),
    )
    .unwrap();
    let stunnel = Command::new("stunnel")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel (Debian's stunnel4 package)");
    let addr = format!("127.0.0.1:{tls}");
    wait_port(&addr);
    TlsBroker {
        children: vec![broker, stunnel],
        addr,
        _dir: dir,
    }
}

fn tls_env(certs: &Path, ca: &str) -> Vec<(String, String)> {
    let p = |f: &str| certs.join(f).display().to_string();
    vec![
        ("SKUFLOW_KAFKA_CA_FILE".into(), p(ca)),
        ("SKUFLOW_KAFKA_CERT_FILE".into(), p("client.crt")),
        ("SKUFLOW_KAFKA_KEY_FILE".into(), p("client.key")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_loader_run_over_mutual_tls_and_an_unknown_ca_is_refused_at_start() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_ca(certs.path(), "other-ca");
    make_cert(certs.path(), "ca", "server", "serverAuth");
    make_cert(certs.path(), "ca", "client", "clientAuth");
    let broker = start_tls_broker(certs.path(), true, None);

    let mut p = Pipeline::new().await;
    p.stack.brokers = broker.addr.clone();
    let mut kafka = KafkaArgs::new(&broker.addr);
    kafka.ca_file = Some(certs.path().join("ca.pem"));
    kafka.cert_file = Some(certs.path().join("client.crt"));
    kafka.key_file = Some(certs.path().join("client.key"));
    ensure_topics(&kafka, &pipeline_topics(&p.topics, 3))
        .await
        .expect("creating topics over TLS");

    // A loader that does not trust the broker's CA stops at once, saying why.
    p.child_env = tls_env(certs.path(), "other-ca.pem");
    let refused = p.start_loader(&[]);
    let status = p.wait_exit(refused, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the loader kept running with an untrusted broker\n{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(
        logs.contains("refused the connection") && logs.contains("certificate verify failed"),
        "{logs}"
    );

    p.child_env = tls_env(certs.path(), "ca.pem");
    let root = tempfile::tempdir().unwrap();
    let buckets: PathBuf = root.path().join("buckets");
    let rows = sample_rows(91, 200, 0, "SEK", "2026-11-26");
    upload_local(
        &buckets,
        "skus-se",
        "incoming/individual/store-7/2026-11-26/skus.csv",
        &rows,
    );
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_loader(&[]);
    p.expect_count(
        "SELECT count(*) FROM skuflow.sku_facts",
        200,
        Duration::from_secs(120),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_with_the_password_from_a_file_and_a_wrong_one_refused_at_start() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_cert(certs.path(), "ca", "server", "serverAuth");
    let password = "scram-pw-7f3a9c";
    let broker = start_tls_broker(certs.path(), false, Some(("skuflow-svc", password)));
    let secrets = tempfile::tempdir().unwrap();
    let pw_file = secrets.path().join("kafka-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let wrong_file = secrets.path().join("wrong-password");
    std::fs::write(&wrong_file, "not-the-password\n").unwrap();

    let mut p = Pipeline::new().await;
    p.stack.brokers = broker.addr.clone();
    let mut kafka = KafkaArgs::new(&broker.addr);
    kafka.ca_file = Some(certs.path().join("ca.pem"));
    kafka.sasl_mechanism = Some(skuflow_platform::kafka::SaslMechanism::ScramSha512);
    kafka.sasl_username = Some("skuflow-svc".into());
    kafka.sasl_password = Some(skuflow_platform::secret::Secret::new(password));
    ensure_topics(&kafka, &pipeline_topics(&p.topics, 3))
        .await
        .expect("creating topics over SASL_SSL");
    let env = |pw: &Path| -> Vec<(String, String)> {
        vec![
            (
                "SKUFLOW_KAFKA_CA_FILE".into(),
                certs.path().join("ca.pem").display().to_string(),
            ),
            (
                "SKUFLOW_KAFKA_SASL_MECHANISM".into(),
                "SCRAM-SHA-512".into(),
            ),
            ("SKUFLOW_KAFKA_SASL_USERNAME".into(), "skuflow-svc".into()),
            (
                "SKUFLOW_KAFKA_SASL_PASSWORD_FILE".into(),
                pw.display().to_string(),
            ),
        ]
    };
    p.child_env = env(&wrong_file);
    let refused = p.start_loader(&[]);
    let status = p.wait_exit(refused, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the loader kept running with a wrong password\n{}",
        p.logs()
    );
    assert!(p.logs().contains("SASL authentication"), "{}", p.logs());

    p.child_env = env(&pw_file);
    let root = tempfile::tempdir().unwrap();
    let buckets: PathBuf = root.path().join("buckets");
    upload_local(
        &buckets,
        "skus-se",
        "incoming/individual/store-8/2026-11-26/skus.csv",
        &sample_rows(92, 120, 0, "SEK", "2026-11-26"),
    );
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_loader(&[]);
    p.expect_count(
        "SELECT count(*) FROM skuflow.sku_facts",
        120,
        Duration::from_secs(120),
    )
    .await;
    let logs = p.logs();
    assert!(
        !logs.contains(password),
        "the SASL password reached a log line"
    );
}
