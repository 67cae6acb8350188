//! The finance reporter on the real stack: aggregates in PostgreSQL equal an independent
//! computation (Python `decimal` over the uploaded CSVs) to the cent, with a correction and two
//! currencies, one of them missing a rate; the report's HTML draws every chart in headless
//! Chromium; a SIGKILL mid-stream neither loses nor double-counts anything.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use common::{bin, upload_local, Pipeline};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use skuflow_e2e::SampleRow;

const WAIT: Duration = Duration::from_secs(180);
const OFFSETS: &str =
    "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow_finance.consumer_offsets";

/// One uploaded file, as the independent check reads it.
struct Upload {
    bucket: &'static str,
    country: &'static str,
    store_id: String,
    store_category: &'static str,
    chain: Option<&'static str>,
    date: NaiveDate,
    name: &'static str,
    rows: Vec<SampleRow>,
}

impl Upload {
    fn key(&self) -> String {
        let chain = self.chain.map(|c| format!("{c}/")).unwrap_or_default();
        format!(
            "incoming/{}/{chain}{}/{}/{}",
            self.store_category, self.store_id, self.date, self.name
        )
    }
}

fn put(buckets: &Path, u: &Upload, modified: Option<SystemTime>) -> PathBuf {
    let file = upload_local(buckets, u.bucket, &u.key(), &u.rows);
    if let Some(t) = modified {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    file
}

fn python(script: &str, args: &[String]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = Command::new("python3")
        .arg(dir.join(script))
        .args(args)
        .output()
        .expect("running python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_report_equals_an_independent_decimal_computation_and_renders_in_chromium() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let start = NaiveDate::from_ymd_opt(2026, 9, 1).unwrap();
    let mut uploads = Vec::new();
    // DE: one store with 35 days of history (enough to project), one chain store for 3 days.
    for d in 0..35u64 {
        let date = start + chrono::Duration::days(d as i64);
        uploads.push(Upload {
            bucket: "skus-de",
            country: "DE",
            store_id: "berlin-1".into(),
            store_category: "individual",
            chain: None,
            date,
            name: "skus.csv",
            // Sales with a weekly pattern and a slow rise, as a real store's.
            rows: (0..12)
                .map(|i| {
                    let mut r = SampleRow::valid(7, i, "EUR", &date.to_string());
                    r.units_sold =
                        (2 + i % 5 + [1, 0, 1, 2, 4, 9, 6][(d % 7) as usize] + d / 6).to_string();
                    r
                })
                .collect(),
        });
    }
    for d in 0..3u64 {
        let date = start + chrono::Duration::days(d as i64);
        uploads.push(Upload {
            bucket: "skus-de",
            country: "DE",
            store_id: "ikea-hh".into(),
            store_category: "retail_chain",
            chain: Some("ikea"),
            date,
            name: "skus.csv",
            rows: (0..30)
                .map(|i| SampleRow::valid(11, i, "EUR", &date.to_string()))
                .collect(),
        });
    }
    // SE: prices in SEK for 5 days; the rate file leaves one of them out.
    for d in 0..5u64 {
        let date = start + chrono::Duration::days(d as i64);
        uploads.push(Upload {
            bucket: "skus-se",
            country: "SE",
            store_id: "sto-3".into(),
            store_category: "individual",
            chain: None,
            date,
            name: "skus.csv",
            rows: (0..20)
                .map(|i| SampleRow::valid(13, i, "SEK", &date.to_string()))
                .collect(),
        });
    }
    // A correction of the chain store's first day: ten rows change price, units and category,
    // two are new; the other twenty keep their first values.
    let first = start.to_string();
    let mut fixed: Vec<SampleRow> = (0..10)
        .map(|i| {
            let mut r = SampleRow::valid(11, i, "EUR", &first);
            r.unit_price = format!("{}.99", 3 + i);
            r.units_sold = (i * 7 % 40).to_string();
            if i % 2 == 0 {
                r.category = "corrected".into();
            }
            r
        })
        .collect();
    fixed.extend((100..102).map(|i| SampleRow::valid(11, i, "EUR", &first)));
    let correction = Upload {
        bucket: "skus-de",
        country: "DE",
        store_id: "ikea-hh".into(),
        store_category: "retail_chain",
        chain: Some("ikea"),
        date: start,
        name: "skus-fix.csv",
        rows: fixed,
    };

    // The correction is uploaded once the first uploads are in the aggregates, so that it
    // replaces stored contributions; its last-modified time is a minute after the others.
    let mut manifest = Vec::new();
    for u in &uploads {
        let path = put(&buckets, u, None);
        manifest.push((u, path));
    }
    let later = SystemTime::now() + Duration::from_secs(60);
    let correction_path = buckets.join(correction.bucket).join(correction.key());
    manifest.push((&correction, correction_path.clone()));
    // The check reads copies: ingest moves the uploads away.
    let copies = root.path().join("copies");
    let manifest_json: Vec<Value> = manifest
        .iter()
        .enumerate()
        .map(|(i, (u, _))| {
            let copy = copies.join(format!("{i:03}.csv"));
            std::fs::create_dir_all(&copies).unwrap();
            std::fs::write(&copy, skuflow_e2e::render_csv(&u.rows, false, false)).unwrap();
            json!({
                "path": copy, "country": u.country, "store_id": u.store_id,
                "store_category": u.store_category, "chain": u.chain.unwrap_or(""),
            })
        })
        .collect();
    let manifest_path = root.path().join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest_json).unwrap()).unwrap();
    let rates_path = root.path().join("rates.csv");
    let mut rates = String::from("date,currency,reporting_currency,rate\n");
    for d in 0..5i64 {
        if d == 3 {
            continue;
        }
        let date = start + chrono::Duration::days(d);
        rates.push_str(&format!("{date},SEK,EUR,0.08{}7{d}3\n", 6 + d));
    }
    std::fs::write(&rates_path, &rates).unwrap();

    let rows: i64 = manifest.iter().map(|(u, _)| u.rows.len() as i64).sum();
    let sched_out = root.path().join("scheduled");
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    p.start_reporter(&[
        "--batch-size=100".into(),
        "--report-every-secs=2".into(),
        format!("--report-out={}", sched_out.display()),
    ]);
    let first_rows = rows - correction.rows.len() as i64;
    p.expect_count(OFFSETS, first_rows, WAIT).await;
    let before: i64 = 35 * 12 + 3 * 30 + 5 * 20;
    p.expect_count(
        "SELECT sum(skus)::bigint FROM skuflow_finance.daily",
        before,
        WAIT,
    )
    .await;
    put(&buckets, &correction, Some(later));
    assert_eq!(
        correction_path,
        buckets.join("skus-de").join(correction.key())
    );
    p.expect_count(OFFSETS, rows, WAIT).await;
    let keys: i64 = 35 * 12 + 3 * 30 + 2 + 5 * 20;
    p.expect_count("SELECT count(*) FROM skuflow_finance.lines", keys, WAIT)
        .await;
    p.expect_count(
        "SELECT sum(skus)::bigint FROM skuflow_finance.daily",
        keys,
        WAIT,
    )
    .await;

    // On demand.
    let out = root.path().join("report");
    let run = Command::new(bin("skuflow"))
        .args([
            "report",
            &format!("--report-out={}", out.display()),
            &format!("--rates={}", rates_path.display()),
            "--reporting-currency=EUR",
            "--horizon-days=28",
        ])
        .env("SKUFLOW_PG_URL", &p.db_url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "skuflow report failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("1 days without a rate"), "{stdout}");

    // The same report into an S3 prefix (s3s-fs): the same files.
    let bucket = format!("reports-{}", p.id);
    std::fs::create_dir_all(p.stack.s3_data.join(&bucket)).unwrap();
    let to_s3 = Command::new(bin("skuflow"))
        .args([
            "report",
            &format!("--report-out=s3://{bucket}/finance"),
            "--reporting-currency=EUR",
        ])
        .env("SKUFLOW_PG_URL", &p.db_url)
        .env("AWS_ENDPOINT_URL", &p.stack.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &p.stack.s3_key)
        .env("AWS_SECRET_ACCESS_KEY", &p.stack.s3_secret)
        .env("AWS_REGION", "us-east-1")
        // No AWS_ALLOW_HTTP: an http:// endpoint is taken as given, as the chart sets it.
        .env_remove("AWS_ALLOW_HTTP")
        .output()
        .unwrap();
    assert!(
        to_s3.status.success(),
        "{}",
        String::from_utf8_lossy(&to_s3.stderr)
    );
    let in_s3 = p.stack.s3_data.join(&bucket).join("finance");
    for f in [
        "daily.csv",
        "projections.csv",
        "summary.json",
        "report.html",
    ] {
        assert!(in_s3.join(f).exists(), "{f} not written to S3");
    }
    assert_eq!(
        std::fs::read(in_s3.join("daily.csv")).unwrap(),
        std::fs::read(out.join("daily.csv")).unwrap()
    );

    let (ok, said) = python(
        "check_finance.py",
        &[
            format!("--manifest={}", manifest_path.display()),
            format!("--rates={}", rates_path.display()),
            format!("--report={}", out.display()),
            "--reporting-currency=EUR".into(),
        ],
    );
    assert!(ok, "independent check disagrees:\n{said}");
    assert!(said.contains("equal to the cent"), "{said}");

    // Projections: DE has enough history, SE does not and says so.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let projections = summary["projections"].as_array().unwrap();
    let de = projections
        .iter()
        .find(|x| x["scope"] == "country" && x["country"] == "DE")
        .unwrap();
    let points = de["projection"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 28);
    assert_eq!(points[0]["date"], "2026-10-06");
    for pt in points {
        let v: Decimal = pt["value"].as_str().unwrap().parse().unwrap();
        let lo: Decimal = pt["lower"].as_str().unwrap().parse().unwrap();
        let hi: Decimal = pt["upper"].as_str().unwrap().parse().unwrap();
        assert!(lo <= v && v <= hi, "{pt}");
    }
    assert_eq!(de["projection"]["backtest"]["metric"], "sMAPE");
    assert_eq!(de["projection"]["backtest"]["window_days"], 14);
    let se = projections
        .iter()
        .find(|x| x["scope"] == "country" && x["country"] == "SE")
        .unwrap();
    assert!(se["projection"].is_null());
    assert!(
        se["error"]
            .as_str()
            .unwrap()
            .starts_with("too little history: 5 days"),
        "{se}"
    );

    // The HTML in a real browser: every chart drawn, the band there, nothing fetched.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    let charts = html.matches("<svg data-chart=").count();
    assert_eq!(charts, projections.len() + 2);
    let dom = chromium_dom(&out.join("report.html"));
    assert!(
        dom.contains(&format!("data-charts=\"{charts}\""))
            && dom.contains(&format!("data-charts-rendered=\"{charts}\"")),
        "not every chart rendered in Chromium ({charts} expected):\n{}",
        &dom[dom.find("<body").unwrap_or(0)..][..300.min(dom.len())]
    );
    assert!(dom.contains("data-mark=\"band\""));
    assert!(dom.contains("No projection: too little history: 5 days"));
    // Readable charts: a legend, round amounts on the y axis (k/M, never a raw 8-digit number),
    // dates on the x axis; nothing wider than the window.
    assert!(dom.contains("data-mark=\"legend\""));
    let ticks = |mark: &str| -> Vec<String> {
        dom.split(&format!("data-mark=\"{mark}\""))
            .skip(1)
            .filter_map(|t| t.split_once('>').and_then(|(_, rest)| rest.split_once('<')))
            .map(|(text, _)| text.to_string())
            .collect()
    };
    let (y, x) = (ticks("ytick"), ticks("xtick"));
    assert!(y.len() >= 3 && y.iter().all(|t| t.len() <= 5), "{y:?}");
    assert!(x.iter().any(|t| !t.is_empty()), "no date on the x axis");
    assert!(
        x.iter()
            .filter(|t| !t.is_empty())
            .all(|t| chrono::NaiveDate::parse_from_str(&format!("{t} 2026"), "%b %d %Y").is_ok()),
        "{x:?}"
    );
    assert!(
        dom.contains("data-overflow=\"no\""),
        "the page is wider than the window"
    );
    // And as a person sees it: a screenshot of the window's width, not blank.
    let png = chromium_screenshot(&out.join("report.html"));
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((&png[1..4], w, h), (&b"PNG"[..], 800, 1600));
    assert!(
        png.len() > 40_000,
        "a near-empty screenshot: {} bytes",
        png.len()
    );

    // On a schedule, too.
    assert!(
        common::wait_until(Duration::from_secs(30), || sched_out
            .join("report.html")
            .exists()
            && sched_out.join("summary.json").exists()),
        "no scheduled report in {}:\n{}",
        sched_out.display(),
        p.logs()
    );
}

/// The DOM of `page` after Chromium loaded it and ran its scripts.
/// Headless Chromium on `page` in an 800 px wide window, with `what` (`--dump-dom` or
/// `--screenshot=<file>`); its standard output.
fn chromium(page: &Path, what: &str) -> Vec<u8> {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is not installed: run scripts/install-stack.sh chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=800,1600",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            what,
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn chromium_dom(page: &Path) -> String {
    String::from_utf8_lossy(&chromium(page, "--dump-dom")).into_owned()
}

/// A PNG screenshot of `page`.
fn chromium_screenshot(page: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.png");
    chromium(page, &format!("--screenshot={}", file.display()));
    std::fs::read(&file).expect("Chromium wrote no screenshot")
}

/// Sums per (country, store) computed here from the produced records: the newest version of
/// each natural key.
fn expected(
    records: &[skuflow_schemas::SkuRecord],
) -> HashMap<(String, String), (i64, i64, Decimal)> {
    let mut newest: HashMap<(String, String, String, NaiveDate), &skuflow_schemas::SkuRecord> =
        HashMap::new();
    for r in records {
        let k = (
            r.country.clone(),
            r.store_id.clone(),
            r.sku.clone(),
            r.business_date,
        );
        if newest
            .get(&k)
            .is_none_or(|o| o.record_version < r.record_version)
        {
            newest.insert(k, r);
        }
    }
    let mut out: HashMap<(String, String), (i64, i64, Decimal)> = HashMap::new();
    for r in newest.values() {
        let e = out
            .entry((r.country.clone(), r.store_id.clone()))
            .or_default();
        e.0 += 1;
        e.1 += i64::from(r.units_sold);
        e.2 += r.unit_price * Decimal::from(r.units_sold);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finance_aggregates_stay_exact_after_sigkill_mid_stream() {
    let mut p = Pipeline::new().await;
    // 12,000 first versions, 3,000 corrections (newer), 1,000 stale copies (older, after them).
    let mut records = Vec::new();
    for i in 0..12_000u64 {
        records.push(common::record(
            if i % 2 == 0 { "DE" } else { "FR" },
            i,
            10 + (i % 5) as i64,
        ));
    }
    for i in 0..3_000u64 {
        records.push(common::record(
            if i % 2 == 0 { "DE" } else { "FR" },
            i,
            40 + (i % 3) as i64,
        ));
    }
    for i in 0..1_000u64 {
        records.push(common::record(if i % 2 == 0 { "DE" } else { "FR" }, i, 1));
    }
    let messages = skuflow_e2e::record_messages(&records);
    common::produce(&p.stack.brokers, &p.topics.records, &messages).await;
    let total = messages.len() as i64;

    // A short session and stall watch: tansu may hand the replacement no partition while it
    // still counts the killed member (docs/tansu.md, "Groups left without a consumer").
    let flags = [
        "--batch-size=200".to_string(),
        "-Xsession.timeout.ms=6000".to_string(),
        "--rejoin-stalled-secs=20".to_string(),
    ];
    let first = p.start_reporter(&flags);
    // Kill as soon as some batches are durable, well before the end.
    let db = p.db().await;
    let mut at_kill = 0;
    for _ in 0..600 {
        let n: i64 = db
            .query_one(OFFSETS, &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n > 0 {
            at_kill = n;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.kill(first);
    assert!(
        at_kill > 0 && at_kill < total,
        "killed at {at_kill} of {total}:\n{}",
        p.logs()
    );
    p.start_reporter(&flags);
    p.expect_count(OFFSETS, total, WAIT).await;

    let want = expected(&records);
    let rows = db
        .query(
            "SELECT country, store_id, sum(skus)::bigint, sum(units)::bigint, sum(revenue)
             FROM skuflow_finance.daily GROUP BY country, store_id",
            &[],
        )
        .await
        .unwrap();
    let got: HashMap<(String, String), (i64, i64, Decimal)> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
        .collect();
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        assert_eq!(got.get(k), Some(w), "store {k:?}");
    }
    let lines: i64 = db
        .query_one("SELECT count(*) FROM skuflow_finance.lines", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lines, 12_000);
}
