//! The dataset builder on the real broker, SIGKILLed while it writes, then read back with real
//! clients (the deltalake package, pyarrow, polars and DuckDB, `tests/python/check_dataset.py`):
//! one row per natural key with its newest version and exact values, after crashes, replays and
//! a wave of corrections; an earlier table version still reads as it was.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::{produce, record, Pipeline};
use rust_decimal::Decimal;
use skuflow_schemas::SkuRecord;

const WAIT: Duration = Duration::from_secs(180);
/// The split by time of the SIGKILL test's builder.
const TIME_SPLIT: &str = "2026-11-21,2026-11-22";

/// A record of key `i` in `country` on `day`, version `version`, with varied costs and sales.
fn sample(country: &str, i: u64, day: u32, version: i64) -> SkuRecord {
    let mut r = record(country, i, version);
    r.business_date = NaiveDate::from_ymd_opt(2026, 11, day).unwrap();
    r.category = ["dairy", "bakery", "produce"][(i % 3) as usize].into();
    r.unit_cost = (!i.is_multiple_of(4)).then(|| (r.unit_price * Decimal::new(6, 1)).round_dp(4));
    r.units_sold = ((i + version as u64) % 5) as i32;
    r.record_id = format!("{:08x}{:024x}", day, (i << 24) ^ version as u64);
    r
}

fn newest(all: &[SkuRecord]) -> Vec<&SkuRecord> {
    let mut m: HashMap<(String, String, String, NaiveDate), &SkuRecord> = HashMap::new();
    for r in all {
        let k = (
            r.country.clone(),
            r.store_id.clone(),
            r.sku.clone(),
            r.business_date,
        );
        match m.get(&k) {
            Some(old) if old.record_version >= r.record_version => {}
            _ => {
                m.insert(k, r);
            }
        }
    }
    m.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_survive_sigkill_and_corrections_and_read_exactly_in_pyarrow_and_duckdb() {
    let mut p = Pipeline::new().await;
    let root = tempfile::Builder::new()
        .prefix("skuflow-datasets-")
        .tempdir()
        .unwrap();
    let group = format!("skuflow-dataset-builder-{}", p.id);
    let args = [
        format!("--dataset-root={}", root.path().display()),
        format!("--group={group}"),
        "--batch-size=400".to_string(),
        "--flush-interval-ms=200".to_string(),
        "--row-group-rows=500".to_string(),
        // Small files: each partition's day spans several, and corrections, restarts and
        // compaction must keep every key in exactly one of them.
        "--target-file-size=24KiB".to_string(),
        // Day 20 trains, day 21 validates.
        format!("--time-split={TIME_SPLIT}"),
        // A short session lets the group drop a SIGKILLed member quickly; a member left
        // without partitions by the broker after a kill (docs/tansu.md) joins again.
        "-Xsession.timeout.ms=6000".to_string(),
        "-Xmax.poll.interval.ms=15000".to_string(),
        "--rejoin-stalled-secs=20".to_string(),
    ];

    // Two countries, two days, 1500 keys each, two versions shuffled.
    let mut all = Vec::new();
    for country in ["SE", "FI"] {
        for day in [20, 21] {
            for i in 0..1500u64 {
                for v in [1000i64, 2000] {
                    all.push(sample(country, i, day, v + (i % 7) as i64));
                }
            }
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..all.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let msgs = skuflow_e2e::record_messages(&all);
    let mut positions = produce(&p.stack.brokers, &p.topics.records, &msgs).await;

    // SIGKILL the builder three times while it writes (after it has committed fresh progress),
    // and restart it.
    let progress = |p: &Pipeline| -> i64 {
        p.committed(&group, &p.topics.records, 3)
            .iter()
            .map(|c| c.max(&0))
            .sum()
    };
    let mut seen = 0i64;
    let mut produced = positions.len() as i64;
    for round in 0..3 {
        let child = p.start_builder(&args);
        let start = Instant::now();
        while start.elapsed() < WAIT {
            let now = progress(&p);
            if now > seen || now == produced {
                seen = now;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(x % 700)).await;
        p.kill(child);
        // The next builder joins once the killed member's session has expired.
        tokio::time::sleep(Duration::from_secs(7)).await;
        if round == 1 {
            // A wave of corrections: a later upload changes prices of a third of SE's day 20.
            let wave: Vec<SkuRecord> = (0..1500u64)
                .filter(|i| i % 3 == 0)
                .map(|i| {
                    let mut r = sample("SE", i, 20, 5000);
                    r.unit_price += Decimal::new(100, 2);
                    r
                })
                .collect();
            let more = skuflow_e2e::record_messages(&wave);
            positions.extend(produce(&p.stack.brokers, &p.topics.records, &more).await);
            produced += more.len() as i64;
            all.extend(wave);
        }
    }
    p.start_builder(&args);

    let ends = common::ends_of(&positions, 3);
    p.wait_committed(&group, &p.topics.records, &ends, WAIT)
        .await;

    check_version_with_python_env(&p, root.path(), &newest(&all), None, TIME_SPLIT);
    // Every version the killed builders committed reads consistent.
    let (ok, report) = run_python("check_versions.py", &[root.path().as_os_str()], &[]);
    assert!(ok && report.contains("versions consistent"), "{report}");
    // A restarted builder compacts the small files at its first chance: those versions are
    // among the ones checked above.
    let optimized = std::fs::read_dir(root.path().join("_delta_log"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .filter(|log| log.contains("\"operation\":\"OPTIMIZE\""))
        .count();
    assert!(optimized > 0, "no OPTIMIZE version");
    let day = root.path().join("country=SE/business_date=2026-11-20");
    let names: Vec<String> = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.split('-').nth(2) == Some("1")),
        "a partition's day spans several files: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_land_under_an_s3_prefix() {
    let mut p = Pipeline::new().await;
    let bucket = format!("t{}-ml", p.id);
    std::fs::create_dir_all(p.stack.s3_data.join(&bucket)).unwrap();
    let group = format!("skuflow-dataset-builder-{}", p.id);
    let mut all = Vec::new();
    for country in ["DE", "NL"] {
        for i in 0..200u64 {
            all.push(sample(country, i, 21, 1000));
        }
    }
    // A later upload corrects a quarter of DE's rows.
    for i in (0..200u64).step_by(4) {
        let mut r = sample("DE", i, 21, 3000);
        r.quantity_on_hand += 7;
        all.push(r);
    }
    let msgs = skuflow_e2e::record_messages(&all);
    let positions = produce(&p.stack.brokers, &p.topics.records, &msgs).await;
    // The environment the chart gives: an http:// endpoint and no AWS_ALLOW_HTTP.
    let mut cmd_env = vec![
        ("AWS_ENDPOINT_URL", p.stack.s3_endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", p.stack.s3_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", p.stack.s3_secret.clone()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    cmd_env.push(("SKUFLOW_DATASET_ROOT", format!("s3://{bucket}/datasets/v1")));
    let builder = p.start_builder_env(&[format!("--group={group}")], &cmd_env);
    let ends = common::ends_of(&positions, 3);
    p.wait_committed(&group, &p.topics.records, &ends, WAIT)
        .await;
    // What an operator sees: every record received and written, nothing failed, ready.
    let m = p.ops_get(builder, "/metrics").1;
    let c = ("component", "dataset-builder");
    let received = common::metric(&m, "skuflow_records_received_total", &[c]);
    assert_eq!(received, Some(all.len() as f64), "{m}");
    let sent = common::metric(&m, "skuflow_records_sent_total", &[c]);
    assert_eq!(sent, Some(all.len() as f64), "{m}");
    let failed = common::metric(&m, "skuflow_records_failed_total", &[c]);
    assert_eq!(failed.unwrap_or(0.0), 0.0, "{m}");
    let ready = p.ops_get(builder, "/readyz");
    assert_eq!(ready.0, 200, "{}", ready.1);
    // s3s-fs keeps objects as files under its data directory: read them there with the same
    // clients.
    let root = p.stack.s3_data.join(&bucket).join("datasets/v1");
    check_with_python(&p, &root, &newest(&all));
    assert!(
        !p.logs().contains(&p.stack.s3_secret),
        "the S3 secret appears in a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_builder_on_the_same_root_waits_for_the_first_to_stop() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let (first_group, second_group) = (format!("sdb-a-{}", p.id), format!("sdb-b-{}", p.id));
    let (mut all, mut positions) = (Vec::new(), Vec::new());
    let first: Vec<SkuRecord> = (0..300u64)
        .flat_map(|i| [sample("FI", i, 22, 1000), sample("DK", i, 22, 1000)])
        .collect();
    produce_more(&p, &mut positions, &mut all, first).await;
    let args = |group: &str| {
        vec![
            format!("--group={group}"),
            format!("--dataset-root={}", root.path().display()),
            "--writer-lease-secs=10".to_string(),
            "--flush-interval-ms=300".to_string(),
        ]
    };
    // Two hosts (HOSTNAME names the lease's holder), two groups, one root: a misconfiguration.
    let first = p.start_builder_env(&args(&first_group), &[("HOSTNAME", "host-a".into())]);
    p.wait_committed(
        &first_group,
        &p.topics.records,
        &common::ends_of(&positions, 3),
        WAIT,
    )
    .await;
    // The version that holds the first load, and what it holds.
    let first_load: Vec<SkuRecord> = all.clone();
    let loaded_at = latest_version(root.path());
    let second = p.start_builder_env(&args(&second_group), &[("HOSTNAME", "host-b".into())]);
    // Corrections arrive while both run: only the lease holder writes them.
    let wave: Vec<SkuRecord> = (0..300u64)
        .step_by(5)
        .map(|i| {
            let mut r = sample("FI", i, 22, 2000);
            r.unit_price += Decimal::new(25, 2);
            r
        })
        .collect();
    produce_and_wait(&p, &first_group, &mut positions, &mut all, wave).await;
    let refused = "another dataset builder holds the dataset root (group";
    let seen = common::wait_until(WAIT, || p.logs().contains(refused));
    assert!(seen, "{}", p.logs());
    assert!(p.logs().contains("host host-a"), "{}", p.logs());
    assert!(writers(root.path()).contains(&first_group));
    assert!(
        !writers(root.path()).contains(&second_group),
        "the second builder committed a version while the first held the root"
    );
    let (status, body) = p.ops_get(second, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("holds the dataset root"), "{body}");
    // The first stops (and releases the root); the second takes over and catches up.
    assert!(p.terminate(first, Duration::from_secs(30)).is_some());
    assert!(
        p.logs().contains("Released the dataset root."),
        "{}",
        p.logs()
    );
    let ends = common::ends_of(&positions, 3);
    p.wait_committed(&second_group, &p.topics.records, &ends, WAIT)
        .await;
    check_with_python(&p, root.path(), &newest(&all));
    assert!(writers(root.path()).contains(&second_group));
    // Time travel: the version of the first load still reads as it was, corrections or not.
    assert!(latest_version(root.path()) > loaded_at);
    check_version_with_python(&p, root.path(), &newest(&first_load), Some(loaded_at));
    // What a data scientist runs: the versions, then the first load exported for a training run.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::bin("skuflow"))
            .arg("dataset")
            .arg(format!("--dataset-root={}", root.path().display()))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let listed: Vec<serde_json::Value> = cli(&["versions", "--json", "--limit=1000"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = listed
        .iter()
        .find(|v| v["version"] == loaded_at)
        .expect("the first load's version is listed");
    assert_eq!(at["info"]["skuflow.writer"]["group"], first_group.as_str());
    let export = tempfile::tempdir().unwrap();
    let to = export.path().join("run-1");
    let said = cli(&[
        "export",
        &format!("--version={loaded_at}"),
        &format!("--to={}", to.display()),
    ]);
    assert!(
        said.contains(&format!("Exported version {loaded_at} ")),
        "{said}"
    );
    let card = std::fs::read_to_string(to.join("country=FI/_dataset_card.md")).unwrap();
    assert!(
        card.contains(&format!("Describes version {loaded_at} ")),
        "{card}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(to.join("_export.json")).unwrap()).unwrap();
    let rows: u64 = manifest["rows"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|d| d.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(rows, newest(&first_load).len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builders_of_one_group_share_one_table_without_a_lease() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let group = format!("sdb-pair-{}", p.id);
    let args = vec![
        format!("--group={group}"),
        format!("--dataset-root={}", root.path().display()),
        "--batch-size=300".to_string(),
        "--flush-interval-ms=200".to_string(),
        // Small files (a batch writes some 20 KiB per file) and frequent compaction.
        "--target-file-size=64KiB".to_string(),
        "--optimize-every-secs=2".to_string(),
        "-Xsession.timeout.ms=6000".to_string(),
        "--rejoin-stalled-secs=20".to_string(),
    ];
    // Both start at once: the group splits the records topic's partitions between them.
    let a = p.start_builder_env(&args, &[("HOSTNAME", "host-a".into())]);
    let b = p.start_builder_env(&args, &[("HOSTNAME", "host-b".into())]);
    let assigned = common::wait_until(WAIT, || {
        p.logs()
            .lines()
            .map(without_colours)
            .filter(|l| l.contains("Partitions assigned") && !l.contains("partitions=0"))
            .count()
            >= 2
    });
    assert!(assigned, "{}", p.logs());
    // Two consecutive days, so the second day's rows carry the first day's medians.
    let (mut all, mut positions) = (Vec::new(), Vec::new());
    let first: Vec<SkuRecord> = (0..600u64)
        .flat_map(|i| [sample("SE", i, 20, 1000), sample("SE", i, 21, 1000)])
        .chain((0..300u64).map(|i| sample("NO", i, 21, 1000)))
        .collect();
    produce_and_wait(&p, &group, &mut positions, &mut all, first).await;
    // Compaction is due at the builders' next batches.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A later upload corrects a third of SE's first day: its medians move, and both builders
    // write again every file of the next day, the other's as well as their own.
    let wave: Vec<SkuRecord> = (0..600u64)
        .filter(|i| i % 3 == 0)
        .map(|i| {
            let mut r = sample("SE", i, 20, 3000);
            r.unit_price += Decimal::new(700, 2);
            r.units_sold += 4;
            r
        })
        .collect();
    produce_and_wait(&p, &group, &mut positions, &mut all, wave).await;
    let log = table_log(root.path());
    let hosts: std::collections::BTreeSet<&str> = log.iter().map(|v| v.host.as_str()).collect();
    assert!(
        hosts.contains("host-a") && hosts.contains("host-b"),
        "{hosts:?}\n{}",
        p.logs()
    );
    // A batch of one builder replaced a file the other wrote, and both compacted.
    let mut added_by: HashMap<&str, &str> = HashMap::new();
    let mut crossed = 0;
    for v in &log {
        if v.operation == "MERGE" {
            crossed += v
                .removed
                .iter()
                .filter(|f| added_by.get(f.as_str()).is_some_and(|h| *h != v.host))
                .count();
        }
        for f in &v.added {
            added_by.insert(f, &v.host);
        }
    }
    assert!(crossed > 0, "no batch replaced a file of the other builder");
    let compacted: std::collections::BTreeSet<&str> = log
        .iter()
        .filter(|v| v.operation == "OPTIMIZE")
        .map(|v| v.host.as_str())
        .collect();
    assert_eq!(compacted.len(), 2, "{compacted:?}\n{}", p.logs());
    assert!(!root.path().join("_writer.json").exists());
    let latest = latest_version(root.path());
    check_version_with_python(&p, root.path(), &newest(&all), Some(latest));
    let (ok, report) = run_python("check_versions.py", &[root.path().as_os_str()], &[]);
    assert!(ok && report.contains("versions consistent"), "{report}");
    for builder in [a, b] {
        assert!(p.terminate(builder, Duration::from_secs(30)).is_some());
    }
}

/// A log line without its terminal colours.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One version of the dataset table, as its log entry says.
struct Logged {
    operation: String,
    host: String,
    added: Vec<String>,
    removed: Vec<String>,
}

/// The versions of the table at `root`, oldest first.
fn table_log(root: &std::path::Path) -> Vec<Logged> {
    let mut entries: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(root.join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let v = path
                .file_name()?
                .to_str()?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((v, path))
        })
        .collect();
    entries.sort();
    entries
        .into_iter()
        .map(|(_, path)| {
            let mut v = Logged {
                operation: String::new(),
                host: String::new(),
                added: Vec::new(),
                removed: Vec::new(),
            };
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let a: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(op) = a["commitInfo"]["operation"].as_str() {
                    v.operation = op.to_string();
                    v.host = a["commitInfo"]["skuflow.writer"]["host"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                if let Some(f) = a["add"]["path"].as_str() {
                    v.added.push(f.to_string());
                }
                if let Some(f) = a["remove"]["path"].as_str() {
                    v.removed.push(f.to_string());
                }
            }
            v
        })
        .collect()
}

/// Produces `records` to the records topic, adding their positions and them to the lists kept.
async fn produce_more(
    p: &Pipeline,
    positions: &mut Vec<(i32, i64)>,
    all: &mut Vec<SkuRecord>,
    records: Vec<SkuRecord>,
) {
    let messages = skuflow_e2e::record_messages(&records);
    positions.extend(produce(&p.stack.brokers, &p.topics.records, &messages).await);
    all.extend(records);
}

/// [`produce_more`], then waits until `group` has committed everything produced so far.
async fn produce_and_wait(
    p: &Pipeline,
    group: &str,
    positions: &mut Vec<(i32, i64)>,
    all: &mut Vec<SkuRecord>,
    records: Vec<SkuRecord>,
) {
    produce_more(p, positions, all, records).await;
    p.wait_committed(
        group,
        &p.topics.records,
        &common::ends_of(positions, 3),
        WAIT,
    )
    .await;
}

/// The consumer groups of the builders that committed versions of the table at `root`.
fn writers(root: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(root.join("_delta_log")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(g) = v["commitInfo"]["skuflow.writer"]["group"].as_str() {
                out.insert(g.to_string());
            }
        }
    }
    out
}

/// The latest version in the dataset table's log at `root`.
fn latest_version(root: &std::path::Path) -> i64 {
    std::fs::read_dir(root.join("_delta_log"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".json")?.parse::<i64>().ok()
        })
        .max()
        .expect("the table has a version")
}

/// Runs `tests/python/check_dataset.py` (pyarrow and DuckDB) over the dataset at `root` against
/// `truth`, the newest record of each natural key; fails the test with its report and the logs.
fn check_with_python(p: &Pipeline, root: &std::path::Path, truth: &[&SkuRecord]) {
    check_version_with_python(p, root, truth, None)
}

/// As [`check_with_python`], of the table's `version` (the latest without one).
fn check_version_with_python(
    p: &Pipeline,
    root: &std::path::Path,
    truth: &[&SkuRecord],
    version: Option<i64>,
) {
    check_version_with_python_env(p, root, truth, version, "")
}

/// As [`check_version_with_python`], for a builder given `--time-split={time_split}`.
fn check_version_with_python_env(
    p: &Pipeline,
    root: &std::path::Path,
    truth: &[&SkuRecord],
    version: Option<i64>,
    time_split: &str,
) {
    let expected = std::env::temp_dir().join(format!("expected-{}.jsonl", common::unique_id()));
    let lines: String = truth
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(&expected, lines).unwrap();
    let version = version.map(|v| v.to_string());
    let mut args = vec![root.as_os_str(), expected.as_os_str()];
    args.extend(version.as_deref().map(std::ffi::OsStr::new));
    let (ok, report) = run_python("check_dataset.py", &args, &[("TIME_SPLIT", time_split)]);
    let _ = std::fs::remove_file(&expected);
    assert!(ok, "{report}\nlogs:\n{}", p.logs());
    assert!(
        report.contains(&format!("ok: {} rows", truth.len())),
        "{report}"
    );
}

/// Runs `tests/python/<script>` with `args` and `env`: whether it exited 0, and what it printed.
fn run_python(script: &str, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (bool, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("python3 runs (scripts/install-stack.sh python installs its packages)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
