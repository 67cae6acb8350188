//! `skuflow topics create` on the real broker: the layout's settings (retention, compaction,
//! min.insync.replicas) land on the topics, the replication factor follows the cluster's size,
//! and `--check` reports a topic that drifted from it.

mod common;

use std::process::Command;

use common::{bin, unique_id, TempBroker};

fn topics(brokers: &str, suffix: &str, extra: &[&str]) -> std::process::Output {
    Command::new(bin("skuflow"))
        .args([
            "topics",
            "create",
            &format!("--brokers={brokers}"),
            "--partitions=2",
        ])
        .args([
            format!("--uploads-topic=up{suffix}"),
            format!("--records-topic=rec{suffix}"),
            format!("--rejects-topic=rej{suffix}"),
            format!("--files-topic=files{suffix}"),
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn topics_get_the_layout_and_check_reports_drift() {
    let broker = TempBroker::start();
    let s = format!(".{}", unique_id());
    let out = topics(&broker.addr, &s, &["--records-retention-hours=48"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 broker(s)"),
        "a one-broker cluster is warned about: {stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replication 1"));

    let out = topics(
        &broker.addr,
        &s,
        &["--records-retention-hours=48", "--check"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The same topics checked against another retention and more partitions: drift.
    let out = Command::new(bin("skuflow"))
        .args([
            "topics",
            "create",
            &format!("--brokers={}", broker.addr),
            "--partitions=4",
        ])
        .args([
            format!("--uploads-topic=up{s}"),
            format!("--records-topic=rec{s}"),
            format!("--rejects-topic=rej{s}"),
            format!("--files-topic=files{s}"),
            "--check".into(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("rec{s}: 2 partitions, want 4")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("rec{s}: retention.ms=172800000, want 604800000")),
        "{stdout}"
    );

    let out = topics(&broker.addr, &format!("{s}b"), &["--replication-factor=3"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("more than the 1 broker(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
