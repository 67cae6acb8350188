//! Harness for end-to-end tests on the real local stack (`scripts/stack.sh up`): isolated topics
//! and database per test, the real binaries as child processes, and readers for the topics.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use skuflow_platform::kafka::{ensure_topics, pipeline_topics};
use skuflow_platform::{KafkaArgs, TopicArgs};

#[allow(unused_imports)]
pub use skuflow_e2e::record;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts the local stack (scripts/stack.sh up) and exports it")
    })
}

pub struct Stack {
    pub brokers: String,
    pub pg_url: String,
    pub s3_endpoint: String,
    pub s3_data: PathBuf,
    pub s3_key: String,
    pub s3_secret: String,
}

impl Stack {
    pub fn from_env() -> Self {
        Stack {
            brokers: env("SKUFLOW_TEST_BROKERS"),
            pg_url: env("SKUFLOW_TEST_PG_URL"),
            s3_endpoint: env("SKUFLOW_TEST_S3_ENDPOINT"),
            s3_data: PathBuf::from(env("SKUFLOW_TEST_S3_DATA")),
            s3_key: env("SKUFLOW_TEST_S3_ACCESS_KEY"),
            s3_secret: env("SKUFLOW_TEST_S3_SECRET_KEY"),
        }
    }
}

/// A short unique id for names of this test's topics, database and buckets.
pub fn unique_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// A tansu broker of the test's own: sqlite log in a temp dir, a free port. A broker per test
/// keeps one test's consumer-group churn (SIGKILLed members, rebalances) from stalling the group
/// coordinator the other tests use: tansu's sqlite engine serialises group updates with the log.
pub struct TempBroker {
    pub dir: tempfile::TempDir,
    pub addr: String,
    child: Child,
}

/// Starts `tansu broker` on `addr` with its sqlite log and its output (appended) in `dir`.
fn spawn_tansu(dir: &std::path::Path, addr: &str) -> Child {
    let tansu = std::env::var("SKUFLOW_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
    let url = format!("tcp://{addr}");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .unwrap();
    Command::new(&tansu)
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .arg("--storage-engine")
        .arg(format!("sqlite:///{}", dir.join("tansu.db").display()))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {tansu} (install it with scripts/install-stack.sh): {e}")
        })
}

/// Waits up to `limit` for `child` to answer on `addr`; false when it exits first (its port was
/// taken) or the time runs out, and then it is stopped.
fn answers(child: &mut Child, addr: &str, limit: Duration, poll: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(poll);
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl TempBroker {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skuflow-tansu-")
            .tempdir()
            .unwrap();
        for _ in 0..5 {
            // A port lost to someone else between choosing and binding: try another.
            let addr = format!("127.0.0.1:{}", free_port());
            let mut child = spawn_tansu(dir.path(), &addr);
            if answers(
                &mut child,
                &addr,
                Duration::from_secs(20),
                Duration::from_millis(20),
            ) {
                add_header_index(&dir.path().join("tansu.db"));
                return TempBroker { dir, addr, child };
            }
        }
        panic!(
            "tansu did not start: {}",
            std::fs::read_to_string(dir.path().join("tansu.log")).unwrap_or_default()
        )
    }

    /// Stops the broker (SIGKILL) and starts it again on the same address and storage.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let mut child = spawn_tansu(self.dir.path(), &self.addr);
            if answers(
                &mut child,
                &self.addr,
                Duration::from_secs(10),
                Duration::from_millis(50),
            ) {
                self.child = child;
                return;
            }
            // The port is not free yet.
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("tansu did not restart on {}", self.addr);
    }
}

/// Adds the header index tansu's sqlite schema lacks (`scripts/tansu-index.py`): without it every
/// fetch scans all stored headers.
fn add_header_index(db: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tansu-index.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(db)
        .output()
        .expect("python3 (scripts/install-stack.sh python)");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for TempBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name{labels} value` lines of a Prometheus text exposition whose name and every given label
/// match; the sum of their values.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// Writes `rows` as a CSV upload at `key` in the local-directory bucket `bucket` under `buckets`.
pub fn upload_local(
    buckets: &std::path::Path,
    bucket: &str,
    key: &str,
    rows: &[skuflow_e2e::SampleRow],
) -> PathBuf {
    let file = buckets.join(bucket).join(key);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, skuflow_e2e::render_csv(rows, false, false)).unwrap();
    file
}

/// Polls `check` every 250 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    check()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One isolated pipeline: its own broker, topics and database.
pub struct Pipeline {
    pub id: String,
    pub broker: TempBroker,
    pub stack: Stack,
    pub topics: TopicArgs,
    pub db_url: String,
    pub children: Vec<Child>,
    /// Port of each child's operations endpoints (/metrics, /healthz, /readyz).
    pub ops_ports: Vec<u16>,
    /// Environment given to every child started from now on.
    pub child_env: Vec<(String, String)>,
}

/// Directory of the workspace's built binaries (next to this test executable).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

impl Pipeline {
    pub async fn new() -> Self {
        let mut stack = Stack::from_env();
        let broker = TempBroker::start();
        stack.brokers = broker.addr.clone();
        let id = unique_id();
        let topics = TopicArgs::with_suffix(&format!(".t{id}"));
        ensure_topics(
            &KafkaArgs::new(&stack.brokers),
            &pipeline_topics(&topics, 3),
        )
        .await
        .expect("creating topics");
        let db = format!("sf_{id}");
        let (client, conn) = tokio_postgres::connect(&stack.pg_url, tokio_postgres::NoTls)
            .await
            .expect("connecting to PostgreSQL");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("creating the test database");
        let db_url = match stack.pg_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => panic!("SKUFLOW_TEST_PG_URL must be a postgres:// URL"),
        };
        Pipeline {
            id,
            broker,
            stack,
            topics,
            db_url,
            children: Vec::new(),
            ops_ports: Vec::new(),
            child_env: Vec::new(),
        }
    }

    pub fn topic_args(&self) -> Vec<String> {
        vec![
            format!("--uploads-topic={}", self.topics.uploads),
            format!("--records-topic={}", self.topics.records),
            format!("--rejects-topic={}", self.topics.rejects),
            format!("--files-topic={}", self.topics.files),
            format!("--brokers={}", self.stack.brokers),
        ]
    }

    /// Starts `skuflow-ingest` with extra flags.
    pub fn start_ingest(&mut self, extra: &[String]) -> usize {
        let mut cmd = Command::new(bin("skuflow-ingest"));
        cmd.args(self.topic_args())
            .arg(format!("--group=skuflow-ingest-{}", self.id))
            .arg("--scan-interval-secs=1")
            .env("AWS_ACCESS_KEY_ID", &self.stack.s3_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.stack.s3_secret)
            .args(extra);
        self.spawn(cmd, "ingest")
    }

    /// Starts `skuflow-warehouse-loader`.
    pub fn start_loader(&mut self, extra: &[String]) -> usize {
        let mut cmd = Command::new(bin("skuflow-warehouse-loader"));
        cmd.args(self.topic_args())
            .arg(format!("--group=skuflow-warehouse-loader-{}", self.id))
            .arg("--flush-interval-ms=300")
            .env("SKUFLOW_PG_URL", &self.db_url)
            .args(extra);
        self.spawn(cmd, "loader")
    }

    /// Starts `skuflow-notifier` with the routing file `routes` and `env` (the routes' secrets).
    #[allow(dead_code)]
    pub fn start_notifier(
        &mut self,
        routes: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> usize {
        let mut cmd = Command::new(bin("skuflow-notifier"));
        cmd.args(self.topic_args())
            .arg(format!("--group=skuflow-notifier-{}", self.id))
            .arg(format!("--routes={}", routes.display()))
            .arg("--flush-interval-ms=300")
            .envs(env.iter().copied())
            .args(extra);
        self.spawn(cmd, "notifier")
    }

    /// Starts `skuflow-search-indexer` against the Elasticsearch at `es_url`.
    pub fn start_indexer(&mut self, es_url: &str, extra: &[String], env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(bin("skuflow-search-indexer"));
        cmd.envs(env.iter().copied())
            .args(self.topic_args())
            .arg(format!("--group=skuflow-search-indexer-{}", self.id))
            .arg(format!("--es-url={es_url}"))
            .arg("--flush-interval-ms=300")
            .args(extra);
        self.spawn(cmd, "indexer")
    }

    /// Starts `skuflow-finance-reporter` (scheduled reports off unless `extra` sets them).
    pub fn start_reporter(&mut self, extra: &[String]) -> usize {
        let mut cmd = Command::new(bin("skuflow-finance-reporter"));
        cmd.args(self.topic_args())
            .arg(format!("--group=skuflow-finance-reporter-{}", self.id))
            .arg("--flush-interval-ms=300")
            .env("SKUFLOW_REPORT_EVERY_SECS", "0")
            .env("SKUFLOW_PG_URL", &self.db_url)
            .args(extra);
        self.spawn(cmd, "reporter")
    }

    /// Runs `skuflow status --json --grace-secs=0` over this pipeline's files topic, database
    /// and the dataset at `dataset_root`: (exit code, parsed JSON or null, stdout + stderr).
    #[allow(dead_code)]
    pub fn status_json(
        &self,
        dataset_root: &std::path::Path,
        extra: &[&str],
    ) -> (i32, serde_json::Value, String) {
        let out = Command::new(bin("skuflow"))
            .args([
                "status",
                "--json",
                "--grace-secs=0",
                &format!("--brokers={}", self.stack.brokers),
                &format!("--files-topic={}", self.topics.files),
                &format!("--dataset-root={}", dataset_root.display()),
            ])
            .args(extra)
            .env("SKUFLOW_PG_URL", &self.db_url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
            format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// Waits until group `group` has committed exactly `ends` on `topic` (panics with the logs
    /// after `timeout`).
    pub async fn wait_committed(&self, group: &str, topic: &str, ends: &[i64], timeout: Duration) {
        let start = Instant::now();
        loop {
            let committed = self.committed(group, topic, ends.len() as i32);
            if committed == ends {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "offsets {committed:?} of {ends:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Starts `skuflow-dataset-builder` (pass `--group` and `--dataset-root` in `extra`).
    pub fn start_builder(&mut self, extra: &[String]) -> usize {
        self.start_builder_env(extra, &[])
    }

    /// Starts `skuflow-dataset-builder` with extra environment variables.
    pub fn start_builder_env(&mut self, extra: &[String], env: &[(&str, String)]) -> usize {
        let mut cmd = Command::new(bin("skuflow-dataset-builder"));
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(self.topic_args())
            .args(extra);
        self.spawn(cmd, "builder")
    }

    /// The offsets group `group` has committed on `topic`, per partition (-1 when none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let mut out = vec![-1; partitions as usize];
        if let Ok(got) = consumer.committed_offsets(tpl, Duration::from_secs(10)) {
            for e in got.elements() {
                if let rdkafka::Offset::Offset(o) = e.offset() {
                    out[e.partition() as usize] = o;
                }
            }
        }
        out
    }

    /// Starts `cmd` as child `name` (its log in the test's log directory, its operations
    /// endpoints on a free port): the child's index.
    pub fn spawn(&mut self, mut cmd: Command, name: &str) -> usize {
        let logdir = std::env::temp_dir().join(format!("skuflow-test-{}", self.id));
        std::fs::create_dir_all(&logdir).unwrap();
        let log = std::fs::File::create(logdir.join(format!("{name}-{}.log", self.children.len())))
            .unwrap();
        let ops_port = free_port();
        cmd.env("SKUFLOW_LOG", "info")
            .env("SKUFLOW_OPS_LISTEN", format!("127.0.0.1:{ops_port}"))
            .envs(self.child_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push(child);
        self.ops_ports.push(ops_port);
        self.children.len() - 1
    }

    /// An S3 client of the local stack's s3s-fs for `bucket`, which is created when missing.
    pub fn s3(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        std::fs::create_dir_all(self.stack.s3_data.join(bucket)).unwrap();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(&self.stack.s3_endpoint)
            .with_allow_http(true)
            .with_access_key_id(&self.stack.s3_key)
            .with_secret_access_key(&self.stack.s3_secret)
            .build()
            .unwrap()
    }

    /// The logs of every child so far (for failure messages and secret checks).
    pub fn logs(&self) -> String {
        let logdir = std::env::temp_dir().join(format!("skuflow-test-{}", self.id));
        let mut out = String::new();
        for e in std::fs::read_dir(logdir).into_iter().flatten().flatten() {
            out.push_str(&format!("== {}\n", e.path().display()));
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        let broker =
            std::fs::read_to_string(self.broker.dir.path().join("tansu.log")).unwrap_or_default();
        let from = (broker.len().saturating_sub(4000)..broker.len())
            .find(|i| broker.is_char_boundary(*i))
            .unwrap_or(broker.len());
        let tail = &broker[from..];
        out.push_str(&format!("== broker log (end)\n{tail}\n"));
        out
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        // The URL may ask for TLS (sslmode, sslrootcert), as the binaries read it.
        skuflow_platform::pg::connect(&self.db_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database: {e}"))
    }

    /// Polls `count_sql` (one bigint) until it equals `want` or the timeout passes; returns the last value.
    pub async fn wait_for_count(&self, count_sql: &str, want: i64, timeout: Duration) -> i64 {
        let start = Instant::now();
        let mut last = -1;
        while start.elapsed() < timeout {
            if let Ok(client) = skuflow_platform::pg::connect(&self.db_url).await {
                if let Ok(row) = client.query_one(count_sql, &[]).await {
                    last = row.get(0);
                    if last == want {
                        return last;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        last
    }

    /// Waits (up to `timeout`) for `count_sql` to return `want`; fails the test with the logs
    /// if it does not.
    pub async fn expect_count(&self, count_sql: &str, want: i64, timeout: Duration) {
        let got = self.wait_for_count(count_sql, want, timeout).await;
        assert_eq!(got, want, "{count_sql}\nlogs:\n{}", self.logs());
    }

    /// Reads every message currently on `topic` (payloads).
    pub fn read_topic(&self, topic: &str) -> Vec<serde_json::Value> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .set("group.id", format!("reader-{}", unique_id()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        // The broker may be slow to answer under a parallel test load: retry before giving up.
        fn retry<T>(what: &str, mut f: impl FnMut() -> rdkafka::error::KafkaResult<T>) -> T {
            let mut last = None;
            for _ in 0..6 {
                match f() {
                    Ok(v) => return v,
                    Err(e) => last = Some(e),
                }
            }
            panic!("{what}: {last:?}")
        }
        let md = retry("topic metadata", || {
            consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
        });
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..partitions {
            let (_, high) = retry("watermarks", || {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            });
            ends.push(high);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let total: i64 = ends.iter().sum();
        let mut seen = vec![0i64; partitions as usize];
        let mut out = Vec::new();
        let start = Instant::now();
        while seen.iter().zip(&ends).any(|(s, e)| s < e)
            && start.elapsed() < Duration::from_secs(60)
        {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let part = m.partition() as usize;
                if m.offset() >= ends[part] {
                    continue;
                }
                seen[part] = m.offset() + 1;
                if let Some(p) = m.payload() {
                    out.push(serde_json::from_slice(p).expect("every message is JSON"));
                }
            }
        }
        assert!(out.len() as i64 <= total);
        out
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The test's database goes with a passing test (a failing one keeps it to look at), so
        // that runs do not pile databases up in the shared PostgreSQL. On a thread of its own:
        // this may run inside the test's runtime.
        if !std::thread::panicking() {
            let (admin, db) = (self.stack.pg_url.clone(), format!("sf_{}", self.id));
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                    tokio::spawn(conn);
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .await
                        .ok()
                })
            })
            .join();
        }
        // The broker (a field) stops after its clients.
    }
}

/// The end offset (last + 1) of each of `partitions` partitions, from produced positions.
pub fn ends_of(positions: &[(i32, i64)], partitions: usize) -> Vec<i64> {
    let mut ends = vec![0i64; partitions];
    for (part, off) in positions {
        ends[*part as usize] = ends[*part as usize].max(off + 1);
    }
    ends
}

/// Produces payloads to `topic`, keyed, and waits for every acknowledgement; returns the
/// (partition, offset) of each message, in order.
pub async fn produce(
    brokers: &str,
    topic: &str,
    messages: &[(String, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let mut positions = Vec::with_capacity(messages.len());
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = KafkaArgs::new(brokers).producer_config().create().unwrap();
    for chunk in messages.chunks(5000) {
        // send_result enqueues at once; awaiting each send() in turn would wait a linger per message.
        let mut pending = Vec::with_capacity(chunk.len());
        for (k, v) in chunk {
            let mut rec = FutureRecord::to(topic).key(k).payload(v);
            loop {
                match producer.send_result(rec) {
                    Ok(f) => break pending.push(f),
                    Err((_, back)) => {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        for f in pending {
            let d = f
                .await
                .expect("delivery report")
                .expect("record acknowledged");
            positions.push((d.partition, d.offset));
        }
    }
    positions
}

/// A PostgreSQL server of the test's own (initdb in a temp dir, random port), for tests that
/// stop and start the server without disturbing the others.
pub struct TempPostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn as_postgres(cmd: &mut Command) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    } else {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        c
    }
}

impl TempPostgres {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Like [`TempPostgres::start`], with `setup` run on the data directory between `initdb`
    /// and the first start (to add settings, certificates or a `pg_hba.conf`); it runs as the
    /// test's user and the directory is handed to the postgres user afterwards.
    pub fn start_with(setup: impl FnOnce(&std::path::Path)) -> Self {
        let bin = PathBuf::from(env("SKUFLOW_TEST_PG_BIN"));
        let dir = tempfile::Builder::new()
            .prefix("skuflow-pg-")
            .tempdir()
            .unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let data = dir.path().join("data");
        let ok = as_postgres(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]))
        .stdout(Stdio::null())
        .status()
        .unwrap();
        assert!(ok.success(), "initdb failed");
        setup(&data);
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let port = free_port();
        let pg = TempPostgres { dir, port, bin };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, what: &str) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let status = as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-m", "fast", "-o", &opts, "-l"])
                .arg(self.dir.path().join("pg.log"))
                .arg(what),
        )
        .stdout(Stdio::null())
        .status()
        .unwrap();
        assert!(status.success(), "pg_ctl {what} failed");
    }

    pub fn stop(&self) {
        self.ctl("stop");
    }

    pub fn restart(&self) {
        self.ctl("start");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "stop"]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

impl Pipeline {
    /// Points the loader at another database (e.g. a [`TempPostgres`]).
    pub fn use_database(&mut self, url: &str) {
        self.db_url = url.to_string();
    }

    /// `GET path` on child `i`'s operations endpoints: (HTTP status, body); status 0 when the
    /// endpoint does not answer.
    pub fn ops_get(&self, i: usize, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = format!("127.0.0.1:{}", self.ops_ports[i]);
        let Ok(mut conn) = std::net::TcpStream::connect(&addr) else {
            return (0, String::new());
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut raw = String::new();
        if conn.write_all(req.as_bytes()).is_err() || conn.read_to_string(&mut raw).is_err() {
            return (0, String::new());
        }
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    /// Sends SIGTERM to child `i` and waits up to `limit` for it to exit: its exit status, or
    /// `None` if it was still running (then it is killed).
    pub fn terminate(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.children[i].id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.children[i].try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill(i);
        None
    }

    /// Waits up to `limit` for child `i` to exit on its own: its exit status, or `None` if it
    /// is still running.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.children[i].try_wait() {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs child `i` (no chance to clean up).
    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

/// Certificates for the TLS tests, made with the `openssl` command (Debian's openssl package).
pub mod tls {
    use std::path::Path;
    use std::process::Command;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA (`<name>.pem`, `<name>.key`) in `dir`.
    pub fn make_ca(dir: &Path, name: &str) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=skuflow test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    /// A certificate `<name>.crt` / `<name>.key` for IP 127.0.0.1 only (no DNS name), signed
    /// by CA `ca`, for `usage` (`serverAuth` or `clientAuth`).
    pub fn make_cert(dir: &Path, ca: &str, name: &str, usage: &str) {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.cnf")),
            format!(
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.cnf"),
            ],
        );
    }
}

/// One HTTP/1.1 request with `token` as its bearer key (none when empty); returns the status
/// and the body as JSON (Null when not JSON).
pub fn http_as(
    token: &str,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Writes `text` as object `key` of `bucket` under a local bucket root (`--bucket-root`).
#[allow(dead_code)]
pub fn put_local(root: &std::path::Path, bucket: &str, key: &str, text: &str) {
    let f = root.join(bucket).join(key);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, text).unwrap();
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
