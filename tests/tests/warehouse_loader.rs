//! The warehouse loader on the real stack: exactly once under SIGKILL and rebalances,
//! dead letters for rows PostgreSQL refuses, and a PostgreSQL outage mid-load.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{produce, record, Pipeline, TempPostgres};
use rust_decimal::Decimal;

const WAIT: Duration = Duration::from_secs(180);
/// How long the kill test waits without progress before it replaces the loader.
const STALL: Duration = Duration::from_secs(30);

/// Keyed payloads, and the newest record of each SKU.
type Generated = (
    Vec<(String, Vec<u8>)>,
    HashMap<String, skuflow_schemas::SkuRecord>,
);

/// Records for `keys` natural keys, each in `versions` versions, shuffled so that older versions
/// often arrive after newer ones.
fn versions(country: &str, keys: u64, versions: i64, seed: u64) -> Generated {
    let mut msgs = Vec::new();
    let mut latest = HashMap::new();
    for i in 0..keys {
        for v in 1..=versions {
            let version = v * 1000 + (i as i64 % 7);
            let r = record(country, i, version);
            msgs.push((r.kafka_key(), serde_json::to_vec(&r).unwrap()));
            latest.insert(r.sku.clone(), r);
        }
    }
    // Deterministic shuffle.
    let mut x = seed | 1;
    for i in (1..msgs.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        msgs.swap(i, (x % (i as u64 + 1)) as usize);
    }
    (msgs, latest)
}

async fn assert_latest(p: &Pipeline, latest: &HashMap<String, skuflow_schemas::SkuRecord>) {
    let db = p.db().await;
    let rows = db
        .query(
            "SELECT sku, record_version, unit_price, units_sold FROM skuflow.sku_facts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), latest.len(), "one row per natural key");
    for r in rows {
        let sku: String = r.get(0);
        let want = &latest[&sku];
        assert_eq!(
            r.get::<_, i64>(1),
            want.record_version,
            "{sku} holds an older version"
        );
        assert_eq!(r.get::<_, Decimal>(2), want.unit_price);
        assert_eq!(r.get::<_, i32>(3), want.units_sold);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_rebalances_lose_and_duplicate_nothing() {
    let mut p = Pipeline::new().await;
    let (msgs, latest) = versions("NL", 6000, 4, 42);
    produce(&p.stack.brokers, &p.topics.records, &msgs).await;
    // A loader SIGKILLed at random points while it loads (five times), and restarted: each round waits until
    // the loader has committed progress, then kills it a random moment later (mid-batch, mid-COPY
    // or between the commit and the offset store). A short session timeout lets the group drop
    // the dead member quickly.
    let batch = [
        "--batch-size=300".to_string(),
        "-Xsession.timeout.ms=6000".to_string(),
        "-Xmax.poll.interval.ms=15000".to_string(),
    ];
    let progress = "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut kills = 0;
    let mut seen = 0i64;
    let mut produced = msgs.len() as i64;
    for round in 0..5 {
        let child = p.start_loader(&batch);
        // Wait for fresh progress (or for the loader to have caught up with all there is).
        // tansu sometimes leaves a new member with no partitions while it still counts the
        // killed one: after STALL without progress the round moves on and kills it anyway.
        let start = std::time::Instant::now();
        while start.elapsed() < STALL {
            let now = p
                .wait_for_count(progress, i64::MAX, Duration::from_millis(100))
                .await;
            if now > seen || now == produced {
                seen = now;
                break;
            }
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(x % 400)).await;
        p.kill(child);
        kills += 1;
        if round == 2 {
            // A second wave of corrections while the loader keeps dying.
            let (more, _) = versions("NL", 6000, 5, 7);
            let wave = &more[more.len() / 2..];
            produce(&p.stack.brokers, &p.topics.records, wave).await;
            produced += wave.len() as i64;
        }
    }
    let mut last = p.start_loader(&batch);
    assert_eq!(kills, 5);
    // The versions of the second wave that were produced may be newer: recompute the truth.
    let (more, _) = versions("NL", 6000, 5, 7);
    let mut truth = latest;
    for (_, payload) in &more[more.len() / 2..] {
        let r: skuflow_schemas::SkuRecord = serde_json::from_slice(payload).unwrap();
        if truth
            .get(&r.sku)
            .is_none_or(|old| old.record_version < r.record_version)
        {
            truth.insert(r.sku.clone(), r);
        }
    }
    let total = (msgs.len() + more.len() - more.len() / 2) as i64;
    let sql = "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
    // Drain. Should tansu leave the last member without partitions (no progress for STALL),
    // replace it: one more member change, which the loader must survive too.
    let mut got = -1;
    let mut at = (
        std::time::Instant::now(),
        p.wait_for_count(sql, total, Duration::ZERO).await,
    );
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        got = p.wait_for_count(sql, total, Duration::from_secs(2)).await;
        if got == total {
            break;
        }
        if got > at.1 {
            at = (std::time::Instant::now(), got);
        } else if at.0.elapsed() > STALL {
            p.kill(last);
            last = p.start_loader(&batch);
            at = (std::time::Instant::now(), got);
        }
    }
    assert_eq!(
        got,
        total,
        "offsets stored in PostgreSQL cover every message; logs:\n{}",
        p.logs()
    );
    assert_latest(&p, &truth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_dead_lettered_and_the_rest_loads() {
    let mut p = Pipeline::new().await;
    let mut msgs = Vec::new();
    for i in 0..200 {
        let r = record("SE", i, 1000);
        msgs.push((r.kafka_key(), serde_json::to_vec(&r).unwrap()));
    }
    // A record PostgreSQL refuses (CHECK unit_price >= 0) and a message that is not a record.
    let mut bad = record("SE", 9999, 1000);
    bad.unit_price = Decimal::new(-150, 2);
    msgs.insert(50, (bad.kafka_key(), serde_json::to_vec(&bad).unwrap()));
    msgs.insert(120, ("x".into(), b"{not json".to_vec()));
    produce(&p.stack.brokers, &p.topics.records, &msgs).await;
    p.start_loader(&[]);
    let got = p
        .wait_for_count("SELECT count(*) FROM skuflow.sku_facts", 200, WAIT)
        .await;
    assert_eq!(got, 200, "logs:\n{}", p.logs());
    let sql = "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
    assert_eq!(p.wait_for_count(sql, 202, WAIT).await, 202);
    let letters = p.read_topic(&p.topics.rejects);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let rules: Vec<&str> = letters
        .iter()
        .map(|l| l["reasons"][0]["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"postgres_constraint") && rules.contains(&"decode"),
        "{rules:?}"
    );
    assert!(letters.iter().all(|l| l["stage"] == "warehouse-loader"));
    let refused = letters
        .iter()
        .find(|l| l["reasons"][0]["rule"] == "postgres_constraint")
        .unwrap();
    assert_eq!(refused["record_id"], bad.record_id.as_str());
    assert!(
        refused["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("check constraint"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_pauses_then_resumes_without_loss_or_duplicates() {
    let pg = TempPostgres::start();
    let mut p = Pipeline::new().await;
    p.use_database(&pg.url());
    let (msgs, latest) = versions("PL", 8000, 2, 3);
    let half = msgs.len() / 2;
    produce(&p.stack.brokers, &p.topics.records, &msgs[..half]).await;
    p.start_loader(&["--batch-size=500".into(), "--max-backoff-ms=2000".into()]);
    let sql = "SELECT count(*) FROM skuflow.sku_facts";
    let start = std::time::Instant::now();
    while p.wait_for_count(sql, 1, Duration::from_millis(200)).await < 1 && start.elapsed() < WAIT {
    }
    pg.stop();
    produce(&p.stack.brokers, &p.topics.records, &msgs[half..]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.restart();
    let total = msgs.len() as i64;
    let offsets = "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
    assert_eq!(
        p.wait_for_count(offsets, total, WAIT).await,
        total,
        "logs:\n{}",
        p.logs()
    );
    assert_latest(&p, &latest).await;
    let logs = p.logs();
    assert!(
        logs.contains("Sink unavailable; holding the batch and retrying."),
        "no WARN during the outage:\n{logs}"
    );
    assert!(logs.contains("Sink available again; resuming."), "{logs}");
}

/// `postgres://user:password@host:port/db` from the stack's URL with another login and database.
fn url_as(base: &str, user: &str, password: &str, db: &str) -> String {
    let (_, host_db) = base
        .split_once('@')
        .expect("SKUFLOW_TEST_PG_URL has user@host");
    let host = host_db.rsplit_once('/').map_or(host_db, |(h, _)| h);
    format!("postgres://{user}:{password}@{host}/{db}")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    tokio::spawn(conn);
    client
}

/// Asserts that `sql` fails with SQLSTATE 42501 (insufficient privilege).
async fn denied(client: &tokio_postgres::Client, who: &str, sql: &str) {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("{who} was allowed: {sql}"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{who}: {sql}: {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_role_writes_only_its_own_tables_and_analysts_only_read() {
    let mut p = Pipeline::new().await;
    let db = format!("sf_{}", p.id);
    let (loader, analyst) = (format!("sf_ld_{}", p.id), format!("sf_an_{}", p.id));
    let (loader_pw, analyst_pw) = (format!("ld-{}", p.id), format!("an-{}", p.id));
    // What an administrator does once (README): a plain login for the loader with CREATE on its
    // database only, the analyst group role, an analyst's login in it; and a table of someone
    // else's in the same database.
    let admin = connect(&url_as(&p.stack.pg_url, "skuflow", &pg_password(&p), &db)).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {loader} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{loader_pw}';\n\
             CREATE ROLE {analyst} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{analyst_pw}';\n\
             DO $$ BEGIN\n\
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'skuflow_analyst') THEN\n\
                     CREATE ROLE skuflow_analyst NOLOGIN;\n\
                 END IF;\n\
             END $$;\n\
             GRANT skuflow_analyst TO {analyst};\n\
             GRANT CREATE ON DATABASE {db} TO {loader};\n\
             CREATE TABLE public.payroll (employee text PRIMARY KEY, salary numeric NOT NULL);\n\
             INSERT INTO public.payroll VALUES ('someone', 1000);"
        ))
        .await
        .expect("setting up roles");
    let loader_url = url_as(&p.stack.pg_url, &loader, &loader_pw, &db);
    p.use_database(&loader_url);
    let mut msgs = Vec::new();
    for (country, n) in [("SE", 60), ("FI", 40)] {
        for i in 0..n {
            let r = record(country, i, 1000);
            msgs.push((r.kafka_key(), serde_json::to_vec(&r).unwrap()));
        }
    }
    produce(&p.stack.brokers, &p.topics.records, &msgs).await;
    p.start_loader(&[]);
    let sql = "SELECT coalesce(sum(next_offset), 0)::bigint FROM skuflow.consumer_offsets WHERE topic LIKE 'sku.records.%'";
    assert_eq!(
        p.wait_for_count(sql, 100, WAIT).await,
        100,
        "logs:\n{}",
        p.logs()
    );

    // The loader's login: its own tables, nothing else.
    let as_loader = connect(&loader_url).await;
    let n: i64 = as_loader
        .query_one("SELECT count(*) FROM skuflow.sku_facts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let who = "the loader";
    denied(&as_loader, who, "SELECT * FROM public.payroll").await;
    denied(&as_loader, who, "UPDATE public.payroll SET salary = 0").await;
    denied(&as_loader, who, "CREATE TABLE public.mine (a int)").await;
    denied(&as_loader, who, "CREATE ROLE sneaky").await;
    denied(&as_loader, who, &format!("CREATE DATABASE {db}_x")).await;

    // The analyst: reads the facts, both views and a partition created after the migrations
    // (default privileges), and can change nothing.
    let as_analyst = connect(&url_as(&p.stack.pg_url, &analyst, &analyst_pw, &db)).await;
    for (q, want) in [
        ("SELECT count(*) FROM skuflow.sku_facts", 100),
        ("SELECT count(*) FROM skuflow.sku_facts_fi", 40),
        ("SELECT count(*) FROM skuflow.latest_stock_price", 100),
        (
            "SELECT coalesce(sum(skus), 0)::bigint FROM skuflow.daily_sales",
            100,
        ),
        // The upload history and rejected rows (nothing was uploaded here: records only).
        ("SELECT count(*) FROM skuflow.files", 0),
        ("SELECT count(*) FROM skuflow.rejects", 0),
        ("SELECT count(*) FROM skuflow.late_uploads", 0),
        ("SELECT count(*) FROM skuflow.upload_quality", 0),
        ("SELECT count(*) FROM skuflow.reject_rules", 0),
    ] {
        let got: i64 = as_analyst.query_one(q, &[]).await.unwrap().get(0);
        assert_eq!(got, want, "{q}");
    }
    let who = "an analyst";
    for sql in [
        "INSERT INTO skuflow.sku_facts (country) VALUES ('SE')",
        "UPDATE skuflow.sku_facts SET unit_price = 0",
        "DELETE FROM skuflow.sku_facts",
        "TRUNCATE skuflow.sku_facts",
        "UPDATE skuflow.consumer_offsets SET next_offset = 0",
        "DELETE FROM skuflow.rejects",
        "CREATE TABLE skuflow.scratch (a int)",
        "SELECT * FROM public.payroll",
    ] {
        denied(&as_analyst, who, sql).await;
    }
    assert!(
        !p.logs().contains(&loader_pw),
        "the loader's password appears in its logs"
    );
}

/// The stack's password for `skuflow` (from SKUFLOW_TEST_PG_URL).
fn pg_password(p: &Pipeline) -> String {
    let (userinfo, _) = p.stack.pg_url.split_once('@').unwrap();
    userinfo.rsplit_once(':').unwrap().1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_history_and_rejected_rows_load_once_and_answer_the_quality_questions() {
    let mut p = Pipeline::new().await;
    let root = tempfile::tempdir().unwrap();
    let buckets = root.path().join("buckets");
    let put = |key: &str, text: &str| common::put_local(&buckets, "skus-de", key, text);
    // s1: two rows rejected (line 3 unit_price, line 4 currency and quantity); s2: refused as a
    // whole (no unit_price column).
    put(
        "incoming/individual/s1/2026-11-21/skus.csv",
        "sku,product_name,category,unit_price,currency,quantity_on_hand,units_sold,business_date\n\
         A,Milk,dairy,1.25,EUR,3,1,2026-11-21\nB,Tea,drinks,abc,EUR,3,1,2026-11-21\n\
         C,Jam,food,2.00,EURO,-1,1,2026-11-21\nD,Oil,food,3.10,EUR,8,2,2026-11-21\n",
    );
    put(
        "incoming/individual/s2/2026-11-21/skus.csv",
        "sku,product_name\nA,Milk\n",
    );
    p.start_ingest(&[format!("--bucket-root={}", buckets.display())]);
    let loader = p.start_loader(&[]);
    let finals = "SELECT count(*) FROM skuflow.files WHERE status <> 'accepted'";
    assert_eq!(p.wait_for_count(finals, 2, WAIT).await, 2, "{}", p.logs());
    p.expect_count("SELECT count(*) FROM skuflow.rejects", 2, WAIT)
        .await;

    let db = p.db().await;
    let s1 = db
        .query_one(
            "SELECT status, rows_total, rows_valid, rows_rejected, accepted_at IS NOT NULL, \
             finished_at >= accepted_at, store_category, business_date::text \
             FROM skuflow.files WHERE store_id = 's1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s1.get::<_, String>(0), "completed");
    assert_eq!(
        (
            s1.get::<_, i64>(1),
            s1.get::<_, i64>(2),
            s1.get::<_, i64>(3)
        ),
        (4, 2, 2)
    );
    assert!(s1.get::<_, bool>(4) && s1.get::<_, bool>(5));
    assert_eq!(s1.get::<_, String>(6), "individual");
    assert_eq!(s1.get::<_, String>(7), "2026-11-21");
    let s2 = db
        .query_one(
            "SELECT status, reason FROM skuflow.files WHERE store_id = 's2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s2.get::<_, String>(0), "failed");
    assert!(s2.get::<_, String>(1).contains("unit_price"));

    let line3 = db
        .query_one(
            "SELECT country, stage, field, rule, raw FROM skuflow.rejects WHERE line = 3",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(line3.get::<_, String>(0), "DE");
    assert_eq!(line3.get::<_, String>(1), "ingest");
    assert_eq!(
        line3.get::<_, Option<String>>(2).as_deref(),
        Some("unit_price")
    );
    assert!(line3.get::<_, String>(4).contains("abc"), "the raw row");

    // The views answer the review's first questions.
    let q = db
        .query_one(
            "SELECT sum(uploads)::bigint, sum(failed)::bigint, sum(rows_rejected)::bigint \
             FROM skuflow.upload_quality WHERE country = 'DE'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (q.get::<_, i64>(0), q.get::<_, i64>(1), q.get::<_, i64>(2)),
        (2, 1, 2)
    );
    let rules: i64 = db
        .query_one(
            "SELECT sum(rows)::bigint FROM skuflow.reject_rules WHERE country = 'DE'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        rules >= 3,
        "every reason of every rejected row counts: {rules}"
    );

    // The README's data-quality queries, with the answers this load must give.
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let block = readme
        .split("```sql\n")
        .find(|b| b.starts_with("-- Stores whose uploads failed"))
        .and_then(|b| b.split("```").next())
        .expect("the README's data-quality queries");
    let queries: Vec<&str> = block
        .split(';')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .collect();
    assert_eq!(queries.len(), 3, "{block}");
    let stores = db.query(queries[0], &[]).await.unwrap();
    let got: Vec<(String, i64, i64)> = stores
        .iter()
        .map(|r| {
            let n = |i| r.get::<_, rust_decimal::Decimal>(i).try_into().unwrap();
            (r.get(1), n(3), n(4))
        })
        .collect();
    assert_eq!(
        got,
        [("s2".to_string(), 1, 0), ("s1".to_string(), 0, 2)],
        "failed first, then rows rejected"
    );
    let top = db.query(queries[1], &[]).await.unwrap();
    let total: i64 = top
        .iter()
        .map(|r| i64::try_from(r.get::<_, rust_decimal::Decimal>(2)).unwrap())
        .sum();
    assert_eq!(total as i64, rules, "{top:?}");
    let s1_id: String = db
        .query_one(
            "SELECT file_id FROM skuflow.files WHERE store_id = 's1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let fix = db
        .query(&queries[2].replace(":'file_id'", "$1"), &[&s1_id])
        .await
        .unwrap();
    let lines: Vec<i64> = fix.iter().map(|r| r.get(0)).collect();
    assert_eq!(lines, [3, 4]);

    // A late-upload notice lands in its own table, not among the uploads.
    let mut late = skuflow_schemas::FileEvent::new(
        "late-0123",
        skuflow_schemas::FileStatus::Late,
        "skus-de",
        "incoming/individual/s1/2026-11-21/skus.csv",
    );
    late.country = Some("DE".into());
    late.store_id = Some("s1".into());
    late.business_date = chrono::NaiveDate::from_ymd_opt(2026, 11, 22);
    late.reason = Some("no upload since …".into());
    produce(
        &p.stack.brokers,
        &p.topics.files,
        &[(late.file_id.clone(), serde_json::to_vec(&late).unwrap())],
    )
    .await;
    p.expect_count(
        "SELECT count(*) FROM skuflow.late_uploads WHERE store_id = 's1' AND missed_day = '2026-11-22'",
        1,
        WAIT,
    )
    .await;

    // Killed and started again over the same topics: nothing twice.
    p.kill(loader);
    p.start_loader(&[]);
    let group = format!("skuflow-warehouse-loader-{}-rejects", p.id);
    let committed =
        format!("SELECT count(*) FROM skuflow.consumer_offsets WHERE consumer_group = '{group}'");
    assert!(p.wait_for_count(&committed, 1, WAIT).await >= 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (sql, want) in [
        ("SELECT count(*) FROM skuflow.files", 2),
        ("SELECT count(*) FROM skuflow.rejects", 2),
        ("SELECT count(*) FROM skuflow.late_uploads", 1),
    ] {
        let got: i64 = db.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(got, want, "{sql}");
    }
}
