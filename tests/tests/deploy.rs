//! What ops deploy, run as shipped, without a cluster or Docker: the Helm chart is rendered
//! (`helm template`) with a values file pointing at the local stack, and `docker-compose.kafka.yml`
//! is read with an `.env` of the local stack's credentials. Each Deployment, Job and skuflow service
//! becomes a local process with exactly the container's command, args and environment (Secret and
//! ConfigMap references resolved from the rendered manifests, volumes mapped to directories, the
//! compose file's service names mapped to the local stack's addresses). The topics Job runs first
//! and must create the topics; then every component must pass `/readyz`, uploads must reach every
//! sink, and every process must stop cleanly on SIGTERM. A chart or compose file that lints but
//! does not work fails here.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin, free_port, http_as, wait_until, Pipeline};
use object_store::{ObjectStore, PutPayload};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use skuflow_e2e::es_double::EsDouble;
use skuflow_e2e::webhook_receiver::WebhookReceiver;
use skuflow_e2e::{render_csv, sample_rows, SampleRow};
use skuflow_ingest::apikeys::{hash_token, new_token, KeyEntry};

const WAIT: Duration = Duration::from_secs(120);

/// The repository root (the tests crate's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every document of a YAML stream, as JSON (PyYAML, installed with the deploy tools, reads
/// anchors and merge keys as Docker Compose does).
fn yaml_docs(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (scripts/install-stack.sh deploy-tools)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML did not parse");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One container to run as a local process.
#[derive(Debug, Clone)]
struct Workload {
    name: String,
    /// Command and arguments as the container runs them (image paths, before mapping).
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container path → directory here.
    mounts: Vec<(String, PathBuf)>,
}

/// The image's entrypoint, from the Dockerfile (used when a container sets no command).
fn image_entrypoint() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let line = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("the Dockerfile has an ENTRYPOINT");
    serde_json::from_str(line).expect("ENTRYPOINT in exec form")
}

/// Where an image path lives here: every binary is copied to /usr/local/bin in the image.
fn local_program(image_path: &str) -> PathBuf {
    let name = image_path
        .strip_prefix("/usr/local/bin/")
        .unwrap_or_else(|| panic!("{image_path}: not a binary of the image"));
    bin(name)
}

/// Replaces every container path that is a mount with its directory here.
fn map_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (at, dir) in mounts {
        if value == at {
            return dir.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{at}/")) {
            return dir.join(rest).display().to_string();
        }
    }
    value.to_string()
}

impl Workload {
    /// The process, with nothing of this test's environment: only what the container gets.
    fn command(&self, ports: &mut HashMap<String, u16>) -> Command {
        let mut argv = self.argv.iter().map(|a| map_paths(a, &self.mounts));
        let mut cmd = Command::new(local_program(&argv.next().unwrap()));
        cmd.env_clear().args(argv);
        for (k, v) in &self.env {
            let mut v = map_paths(v, &self.mounts);
            // A listener on every interface of the pod: a free port on loopback here.
            if let Some(port) = v.strip_prefix("0.0.0.0:") {
                let local = free_port();
                ports.insert(format!("{}:{port}", self.name), local);
                v = format!("127.0.0.1:{local}");
            }
            cmd.env(k, v);
        }
        cmd
    }
}

/// The manifests `helm template` renders from the chart with `values`.
fn render_chart(values: &Value, dir: &Path) -> Vec<Value> {
    let tools = std::env::var("SKUFLOW_TOOLS_BIN").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/skuflow-tools/bin"),
        PathBuf::from,
    );
    let helm = tools.join("helm");
    let file = dir.join("values.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(values).unwrap()).unwrap();
    let out = Command::new(&helm)
        .args(["template", "skuflow"])
        .arg(repo().join("helm/skuflow"))
        .args(["--namespace", "skuflow", "-f"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/install-stack.sh deploy-tools installs it)",
                helm.display()
            )
        });
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8(out.stdout).unwrap())
}

/// Secrets and ConfigMaps by name: key → value (decoded).
type Objects = HashMap<String, BTreeMap<String, String>>;

fn objects_of(docs: &[Value], kind: &str) -> Objects {
    use base64::Engine as _;
    let mut out = Objects::new();
    for d in docs.iter().filter(|d| d["kind"] == kind) {
        let name = d["metadata"]["name"].as_str().unwrap().to_string();
        let entry = out.entry(name).or_default();
        for (k, v) in d["stringData"].as_object().into_iter().flatten() {
            entry.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
        for (k, v) in d["data"].as_object().into_iter().flatten() {
            let text = if kind == "Secret" {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                String::from_utf8(raw).unwrap()
            } else {
                v.as_str().unwrap_or_default().to_string()
            };
            entry.insert(k.clone(), text);
        }
    }
    out
}

/// Each container of the rendered Deployments and Jobs of `kind`, with its env resolved as the
/// kubelet would: a reference to a missing Secret key fails unless it is optional. `existing`
/// holds the Secrets the operator creates beside the chart.
fn chart_workloads(
    docs: &[Value],
    kind: &str,
    existing: &Objects,
    scratch: &Path,
) -> Vec<Workload> {
    let mut secrets = objects_of(docs, "Secret");
    secrets.extend(existing.clone());
    let config_maps = objects_of(docs, "ConfigMap");
    let lookup = |r: &Value, objects: &Objects, what: &str| -> Option<String> {
        let (name, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
        let found = objects.get(name).and_then(|o| o.get(key)).cloned();
        if found.is_none() {
            assert!(
                r["optional"] == true,
                "{what} {name} has no key {key} and the reference is not optional"
            );
        }
        found
    };
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == kind) {
        let pod = &d["spec"]["template"]["spec"];
        let volumes: HashMap<&str, &Value> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        for c in pod["containers"].as_array().unwrap() {
            let name = format!(
                "{}-{}",
                d["metadata"]["name"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            );
            let mut argv: Vec<String> = match c["command"].as_array() {
                Some(cmd) => cmd
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
                None => image_entrypoint(),
            };
            argv.extend(
                c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.as_str().unwrap().to_string()),
            );
            let mut env = BTreeMap::new();
            for from in c["envFrom"].as_array().into_iter().flatten() {
                let (objects, r) = if from["secretRef"].is_object() {
                    (&secrets, &from["secretRef"])
                } else {
                    (&config_maps, &from["configMapRef"])
                };
                let name = r["name"].as_str().unwrap();
                match objects.get(name) {
                    Some(o) => env.extend(o.clone()),
                    None => assert!(r["optional"] == true, "envFrom {name} does not exist"),
                }
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let key = e["name"].as_str().unwrap().to_string();
                let value = if let Some(v) = e.get("value") {
                    Some(v.as_str().unwrap_or_default().to_string())
                } else if e["valueFrom"]["secretKeyRef"].is_object() {
                    lookup(&e["valueFrom"]["secretKeyRef"], &secrets, "Secret")
                } else if e["valueFrom"]["configMapKeyRef"].is_object() {
                    lookup(
                        &e["valueFrom"]["configMapKeyRef"],
                        &config_maps,
                        "ConfigMap",
                    )
                } else if e["valueFrom"]["fieldRef"].is_object() {
                    // The downward API: the pod's own name and namespace.
                    match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                        Some("metadata.name") => Some(format!("{name}-0")),
                        Some("metadata.namespace") => Some("skuflow".into()),
                        other => panic!("{name}: env {key} from fieldRef {other:?}"),
                    }
                } else {
                    panic!("{name}: env {key} has a source this test cannot resolve: {e}")
                };
                if let Some(v) = value {
                    env.insert(key, v);
                }
            }
            let mut mounts = Vec::new();
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let vname = m["name"].as_str().unwrap();
                let v = volumes
                    .get(vname)
                    .unwrap_or_else(|| panic!("{name}: volumeMount {vname} names no volume"));
                let dir = scratch.join(format!("{name}-{vname}"));
                std::fs::create_dir_all(&dir).unwrap();
                let files = if v["secret"].is_object() {
                    let s = v["secret"]["secretName"].as_str().unwrap();
                    Some(secrets.get(s).unwrap_or_else(|| {
                        panic!("{name}: volume {vname} mounts Secret {s}, which does not exist")
                    }))
                } else if v["configMap"].is_object() {
                    let s = v["configMap"]["name"].as_str().unwrap();
                    Some(config_maps.get(s).unwrap_or_else(|| {
                        panic!("{name}: volume {vname} mounts ConfigMap {s}, which does not exist")
                    }))
                } else {
                    assert!(
                        v["emptyDir"].is_object(),
                        "{name}: volume {vname} is neither a Secret, a ConfigMap nor an emptyDir"
                    );
                    None
                };
                for (file, text) in files.into_iter().flatten() {
                    std::fs::write(dir.join(file), text).unwrap();
                }
                mounts.push((m["mountPath"].as_str().unwrap().to_string(), dir));
            }
            out.push(Workload {
                name,
                argv,
                env,
                mounts,
            });
        }
    }
    out
}

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}` and `$$`, as
/// Docker Compose interpolates them, from `vars` (the `.env` file).
fn interpolate(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some(r) = rest.strip_prefix('{') else {
            out.push('$');
            continue;
        };
        let end = r.find('}').expect("unterminated ${");
        let expr = &r[..end];
        rest = &r[end + 1..];
        let name_end = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_end);
        let value = vars.get(name).cloned();
        let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
        let got = match op {
            "" => value.unwrap_or_default(),
            _ if op.starts_with(":-") => {
                if set_nonempty {
                    value.unwrap()
                } else {
                    op[2..].to_string()
                }
            }
            _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
            _ if op.starts_with(":?") || op.starts_with('?') => {
                assert!(
                    if op.starts_with(':') {
                        set_nonempty
                    } else {
                        value.is_some()
                    },
                    "compose refuses to start: {name}: {}",
                    op.trim_start_matches(':').trim_start_matches('?')
                );
                value.unwrap()
            }
            _ => panic!("unknown interpolation ${{{expr}}}"),
        };
        out.push_str(&got);
    }
    out.push_str(rest);
    out
}

/// The `KEY=value` lines of an env file.
fn env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The services of the compose file that run the skuflow image, with the values of `vars`
/// interpolated, named volumes mapped to directories under `scratch`, and `hosts` (compose
/// service address → local address) replaced in their environment.
fn compose_workloads(
    vars: &HashMap<String, String>,
    hosts: &[(&str, String)],
    scratch: &Path,
) -> (Vec<Workload>, Value) {
    let text = std::fs::read_to_string(repo().join("docker-compose.kafka.yml")).unwrap();
    let file = yaml_docs(&interpolate(&text, vars)).remove(0);
    let mut out = Vec::new();
    for (name, s) in file["services"].as_object().unwrap() {
        let image = s["image"].as_str().unwrap_or_default();
        if !image.starts_with("skuflow:") {
            continue;
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().unwrap().to_string())
                .collect()
        };
        let mut argv = if s["entrypoint"].is_array() {
            strings(&s["entrypoint"])
        } else {
            image_entrypoint()
        };
        argv.extend(strings(&s["command"]));
        let mut env = BTreeMap::new();
        for (k, v) in s["environment"].as_object().into_iter().flatten() {
            let mut v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            for (from, to) in hosts {
                v = v.replace(from, to);
            }
            env.insert(k.clone(), v);
        }
        let mut mounts = Vec::new();
        for m in s["volumes"].as_array().into_iter().flatten() {
            let m = m.as_str().unwrap();
            let (volume, at) = m.split_once(':').unwrap();
            let at = at.trim_end_matches(":ro");
            let dir = if volume.starts_with("./") {
                // A bind mount of the project's own files.
                repo().join(volume)
            } else {
                let dir = scratch.join(format!("volume-{volume}"));
                std::fs::create_dir_all(&dir).unwrap();
                dir
            };
            mounts.push((at.to_string(), dir));
        }
        out.push(Workload {
            name: name.clone(),
            argv,
            env,
            mounts,
        });
    }
    (out, file)
}

/// Runs a one-off workload (a Job, a compose service that must complete) to its end.
fn run_to_completion(p: &mut Pipeline, w: &Workload, ports: &mut HashMap<String, u16>) {
    let i = p.spawn(w.command(ports), &w.name);
    let status = p.wait_exit(i, WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{} did not complete successfully ({status:?}); logs:\n{}",
        w.name,
        p.logs()
    );
}

/// The partition count of each of `topics` on the broker (0: missing).
fn partitions(brokers: &str, topics: &[&str]) -> Vec<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(20))
        .unwrap();
    topics
        .iter()
        .map(|t| {
            md.topics()
                .iter()
                .find(|m| m.name() == *t && m.error().is_none())
                .map_or(0, |m| m.partitions().len())
        })
        .collect()
}

const TOPICS: [&str; 4] = [
    "sku.uploads.v1",
    "sku.records.v1",
    "sku.rejects.v1",
    "sku.files.v1",
];

/// Starts every long-running workload and waits until each answers `/readyz` with 200.
fn start_all(
    p: &mut Pipeline,
    workloads: &[Workload],
    ports: &mut HashMap<String, u16>,
) -> Vec<usize> {
    let started: Vec<usize> = workloads
        .iter()
        .map(|w| p.spawn(w.command(ports), &w.name))
        .collect();
    for (w, &i) in workloads.iter().zip(&started) {
        let ready = wait_until(WAIT, || p.ops_get(i, "/readyz").0 == 200);
        assert!(
            ready,
            "{} never passed /readyz; logs:\n{}",
            w.name,
            p.logs()
        );
    }
    started
}

/// SIGTERM to each started workload: each must exit 0 within its shutdown timeout.
fn stop_all(p: &mut Pipeline, workloads: &[Workload], started: &[usize]) {
    for (w, &i) in workloads.iter().zip(started) {
        let status = p.terminate(i, Duration::from_secs(40));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly on SIGTERM ({status:?}); logs:\n{}",
            w.name,
            p.logs()
        );
    }
}

/// Valid rows of a generated upload of `n` rows (a few invalid among them).
fn upload(seed: u64, n: u64, currency: &str) -> (Vec<SampleRow>, usize) {
    let rows = sample_rows(seed, n, 5, currency, "2026-11-20");
    let valid = rows.iter().filter(|r| r.valid).count();
    (rows, valid)
}

/// Files under `dir` (recursively) whose name ends with `suffix`.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out
}

/// Rows of `country` the dataset's manifest under `root` counts.
fn dataset_rows(root: &Path, country: &str) -> u64 {
    std::fs::read(root.join(format!("country={country}/_manifest.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|m| m["rows"].as_u64())
        .unwrap_or(0)
}

/// Waits until every sink holds the `want` rows: the warehouse, the search index, the finance
/// lines and the dataset (rows per country).
async fn expect_every_sink(
    p: &Pipeline,
    es: &EsDouble,
    dataset: &Path,
    want: usize,
    per_country: &[(&str, usize)],
) {
    p.expect_count("SELECT count(*) FROM skuflow.sku_facts", want as i64, WAIT)
        .await;
    p.expect_count(
        "SELECT count(*) FROM skuflow_finance.lines",
        want as i64,
        WAIT,
    )
    .await;
    let indexed = wait_until(WAIT, || es.with(|s| s.record_count()) == want);
    assert!(
        indexed,
        "{} of {want} documents indexed; logs:\n{}",
        es.with(|s| s.record_count()),
        p.logs()
    );
    for (country, n) in per_country {
        let built = wait_until(WAIT, || dataset_rows(dataset, country) == *n as u64);
        assert!(
            built,
            "dataset {country}: {} of {n} rows; logs:\n{}",
            dataset_rows(dataset, country),
            p.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_as_rendered_runs_end_to_end() {
    let mut p = Pipeline::new().await;
    let es = EsDouble::start().await;
    let hooks = WebhookReceiver::start("chart-hook-secret").await;
    let scratch = tempfile::tempdir().unwrap();
    let id = &p.id;
    let (de, fr) = (format!("d{id}-de"), format!("d{id}-fr"));
    let (datasets, reports) = (format!("d{id}-datasets"), format!("d{id}-reports"));
    for b in [&datasets, &reports] {
        std::fs::create_dir_all(p.stack.s3_data.join(b)).unwrap();
    }
    // What an operator writes: their endpoints and credentials, the API on with its keys Secret.
    let values = json!({
        "kafka": { "brokers": p.stack.brokers },
        "topics": { "partitions": 3 },
        "existingSecret": "",
        "secrets": {
            "pgUrl": p.db_url,
            "awsAccessKeyId": p.stack.s3_key,
            "awsSecretAccessKey": p.stack.s3_secret,
        },
        "elasticsearch": { "url": es.url },
        "objectStore": {
            "backend": "s3",
            "s3Endpoint": p.stack.s3_endpoint,
            "buckets": format!("{de},{fr}"),
            "bucketTemplate": format!("d{id}-{{country}}"),
        },
        "components": {
            "ingest": {
                "scanIntervalSecs": 1,
                "httpApi": { "enabled": true, "keysSecret": "store-api-keys" },
                // Its own S3 key pair, from a Secret beside the chart's.
                "s3Secret": "ingest-s3",
            },
            "warehouseLoader": {
                "extraArgs": ["--flush-interval-ms=300"],
                "extraEnv": [
                    { "name": "PGAPPNAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                ],
            },
            "datasetBuilder": {
                "root": format!("s3://{datasets}/v1"),
                "flushIntervalMs": 500,
            },
            "financeReporter": {
                "reportOut": format!("s3://{reports}/finance"),
                "reportEverySecs": 5,
            },
            "notifier": {
                "enabled": true,
                "routes": format!(
                    "[[route]]\nname = \"stores\"\nwebhook = \"{}/ok\"\n\
                     webhook_secret_env = \"STORES_HOOK_SECRET\"\n",
                    hooks.url
                ),
                // The signing secret from the operator's Secret, as an environment variable.
                "extraEnv": [{ "name": "STORES_HOOK_SECRET", "valueFrom": {
                    "secretKeyRef": { "name": "notifier-secrets", "key": "stores" } } }],
            },
        },
    });
    let docs = render_chart(&values, scratch.path());
    // The Secret the operator creates beside the chart (`kubectl create secret generic`).
    let token = new_token().unwrap();
    let keys = json!({ "keys": [KeyEntry {
        id: "store-fr".into(),
        sha256: hash_token(&token),
        buckets: vec![fr.clone()],
        prefix: None,
    }]});
    let existing = Objects::from([
        (
            "store-api-keys".to_string(),
            BTreeMap::from([("api-keys.json".to_string(), keys.to_string())]),
        ),
        (
            "notifier-secrets".to_string(),
            BTreeMap::from([("stores".to_string(), "chart-hook-secret".to_string())]),
        ),
        (
            "ingest-s3".to_string(),
            BTreeMap::from([
                ("aws-access-key-id".to_string(), p.stack.s3_key.clone()),
                (
                    "aws-secret-access-key".to_string(),
                    p.stack.s3_secret.clone(),
                ),
            ]),
        ),
    ]);
    let mut ports = HashMap::new();

    // The pre-install hook: the topics Job.
    let jobs = chart_workloads(&docs, "Job", &existing, scratch.path());
    assert_eq!(jobs.len(), 1, "one Job: the topics");
    run_to_completion(&mut p, &jobs[0], &mut ports);
    assert_eq!(
        partitions(&p.stack.brokers, &TOPICS),
        [3, 3, 3, 3],
        "the topics Job creates every topic with the partitions of the values"
    );

    let deployments = chart_workloads(&docs, "Deployment", &existing, scratch.path());
    let names: Vec<&str> = deployments.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    let ingest = &deployments
        .iter()
        .find(|w| w.name.ends_with("-ingest-ingest"))
        .unwrap();
    assert_eq!(ingest.env["AWS_SECRET_ACCESS_KEY"], p.stack.s3_secret);
    let loader = &deployments
        .iter()
        .find(|w| w.name.contains("-warehouse-loader-"))
        .unwrap();
    assert!(loader.argv.contains(&"--flush-interval-ms=300".to_string()));
    let started = start_all(&mut p, &deployments, &mut ports);

    // One store uploads straight to its bucket (found by the scan), another posts to the API.
    let (rows_de, valid_de) = upload(71, 120, "EUR");
    let key_de = "incoming/individual/berlin-1/2026-11-20/skus.csv";
    p.s3(&de)
        .put(
            &key_de.into(),
            PutPayload::from(render_csv(&rows_de, false, false)),
        )
        .await
        .unwrap();
    let (rows_fr, valid_fr) = upload(72, 80, "EUR");
    let key_fr = "incoming/individual/lyon-2/2026-11-20/skus.csv";
    p.s3(&fr)
        .put(
            &key_fr.into(),
            PutPayload::from(render_csv(&rows_fr, false, false)),
        )
        .await
        .unwrap();
    let api = format!(
        "127.0.0.1:{}",
        ports
            .iter()
            .find(|(k, _)| k.ends_with(":8080"))
            .map(|(_, v)| *v)
            .expect("the ingest API listens")
    );
    let (status, v) = http_as(
        &token,
        &api,
        "POST",
        "/v1/uploads",
        &json!({ "bucket": fr, "key": key_fr }).to_string(),
    );
    assert_eq!(status, 202, "{v}");

    let dataset = p.stack.s3_data.join(&datasets).join("v1");
    expect_every_sink(
        &p,
        &es,
        &dataset,
        valid_de + valid_fr,
        &[("DE", valid_de), ("FR", valid_fr)],
    )
    .await;
    let report_dir = p.stack.s3_data.join(&reports).join("finance");
    let reported = wait_until(WAIT, || !files_under(&report_dir, ".html").is_empty());
    assert!(reported, "no scheduled finance report; logs:\n{}", p.logs());
    // The notifier, its routes from the chart's ConfigMap and its secret from the operator's
    // Secret, told the stores' endpoint about both uploads.
    let notified = wait_until(WAIT, || {
        let seen = hooks.seen();
        seen.len() == 2 && seen.iter().all(|s| s.signature_valid && s.status == 200)
    });
    assert!(
        notified,
        "webhooks: {:#?}\nlogs:\n{}",
        hooks.seen(),
        p.logs()
    );
    stop_all(&mut p, &deployments, &started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_defaults_on_s3_without_buckets_stop_the_ingest_loudly() {
    let mut p = Pipeline::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let values =
        json!({ "kafka": { "brokers": p.stack.brokers }, "secrets": { "pgUrl": p.db_url } });
    let docs = render_chart(&values, scratch.path());
    let ingest = chart_workloads(&docs, "Deployment", &Objects::new(), scratch.path())
        .into_iter()
        .find(|w| w.name.ends_with("-ingest-ingest"))
        .expect("an ingest Deployment");
    let mut ports = HashMap::new();
    let i = p.spawn(ingest.command(&mut ports), &ingest.name);
    let status = p.wait_exit(i, WAIT);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the ingest ran with no bucket to read ({status:?})"
    );
    assert!(
        p.logs().contains("--buckets is required"),
        "the ingest's error does not say what is missing:\n{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_file_as_written_runs_end_to_end() {
    let mut p = Pipeline::new().await;
    let es = EsDouble::start().await;
    let scratch = tempfile::tempdir().unwrap();
    // The compose file's buckets, emptied first (no other test uses these names).
    for cc in ["de", "fr", "us"] {
        let dir = p.stack.s3_data.join(format!("skus-{cc}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
    }
    // The operator's .env: the example with the local stack's credentials filled in.
    let example = std::fs::read_to_string(repo().join(".env.example"))
        .expect(".env.example documents the compose file's settings");
    let mut vars = env_file(&example);
    vars.insert("SKUFLOW_GRAFANA_PASSWORD".into(), "unused-here".into());
    vars.insert(
        "SKUFLOW_WEBHOOK_SECRET".into(),
        "compose-hook-secret".into(),
    );
    vars.insert(
        "SKUFLOW_ALERT_WEBHOOK_URL".into(),
        "http://127.0.0.1:9/alerts".into(),
    );
    vars.insert("SKUFLOW_PG_PASSWORD".into(), pg_password(&p.stack.pg_url));
    vars.insert("SKUFLOW_S3_ACCESS_KEY".into(), p.stack.s3_key.clone());
    vars.insert("SKUFLOW_S3_SECRET".into(), p.stack.s3_secret.clone());
    let pg = p.db_url.split_once('@').unwrap().1.to_string(); // host:port/db
    let s3_host = p
        .stack
        .s3_endpoint
        .trim_start_matches("http://")
        .to_string();
    let es_host = es.url.trim_start_matches("http://").to_string();
    let hosts = [
        ("kafka:9092", p.stack.brokers.clone()),
        ("postgres:5432/skuflow", pg),
        ("minio:9000", s3_host),
        ("elasticsearch:9200", es_host),
    ];
    let (workloads, file) = compose_workloads(&vars, &hosts, scratch.path());
    let (once, services): (Vec<Workload>, Vec<Workload>) = workloads.into_iter().partition(|w| {
        file["services"]
            .as_object()
            .unwrap()
            .values()
            .any(|s| s["depends_on"][&w.name]["condition"] == "service_completed_successfully")
    });
    assert_eq!(once.len(), 1, "one run-once service: the topics");
    let mut ports = HashMap::new();
    run_to_completion(&mut p, &once[0], &mut ports);
    let made = partitions(&p.stack.brokers, &TOPICS);
    assert!(made.iter().all(|n| *n == 6), "topics: {made:?}");
    assert_eq!(partitions(&p.stack.brokers, &["sku.s3events.v1"]), [6]);

    assert_eq!(services.len(), 6);
    let started = start_all(&mut p, &services, &mut ports);
    let (rows_de, valid_de) = upload(81, 90, "EUR");
    p.s3("skus-de")
        .put(
            &"incoming/individual/hamburg-4/2026-11-20/skus.csv".into(),
            PutPayload::from(render_csv(&rows_de, false, false)),
        )
        .await
        .unwrap();
    let (rows_us, valid_us) = upload(82, 60, "USD");
    p.s3("skus-us")
        .put(
            &"incoming/individual/austin-7/2026-11-20/skus.csv".into(),
            PutPayload::from(render_csv(&rows_us, false, false)),
        )
        .await
        .unwrap();
    let dataset = services
        .iter()
        .find(|w| w.name == "dataset-builder")
        .and_then(|w| w.mounts.first())
        .map(|(_, dir)| dir.clone())
        .expect("the dataset builder's volume");
    expect_every_sink(
        &p,
        &es,
        &dataset,
        valid_de + valid_us,
        &[("DE", valid_de), ("US", valid_us)],
    )
    .await;
    stop_all(&mut p, &services, &started);
}

/// The password of a postgres:// URL.
fn pg_password(url: &str) -> String {
    let auth = url.split_once("://").unwrap().1.split_once('@').unwrap().0;
    auth.split_once(':').unwrap().1.to_string()
}
