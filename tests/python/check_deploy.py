"""Consistency checks of what ops deploy, beyond what promtool, helm and kubernetes-validate see.

Usage: check_deploy.py <repo root> <rendered chart manifests>...

- docker-compose.kafka.yml parses; every depends_on names a service; every named volume is
  declared; every bind-mounted file exists; images are name:tag (skuflow's own are built); each
  skuflow binary serves its operations port and Prometheus scrapes exactly those services on it;
  host ports are not published twice.
- Every skuflow_* metric named by the alert rules and the Grafana dashboard is defined in
  platform/src/metrics.rs (the one place metric names live); the dashboard's panels have unique
  ids and use the provisioned data source variable.
- Rendered chart: every Deployment has liveness/readiness probes on the operations port, runs as
  non-root, and is covered by a Service and a NetworkPolicy; secrets come from secretKeyRef only;
  ScaledObjects and ServiceMonitors (CRDs kubernetes-validate cannot check) point at things that exist.
"""

import json
import os
import re
import sys

import yaml

BINARIES = {"ingest", "warehouse-loader", "search-indexer", "dataset-builder", "finance-reporter", "notifier"}
problems = []


def problem(msg):
    problems.append(msg)


def defined_metrics(root):
    src = open(os.path.join(root, "platform/src/metrics.rs")).read()
    block = src.split("pub const NAMES: &[&str] = &[", 1)[1].split("];", 1)[0]
    return set(re.findall(r'"(skuflow_[a-z_]+)"', block))


def metric_names(expr):
    names = set()
    for n in re.findall(r"\b(skuflow_[a-z_]+)", expr):
        for suffix in ("_bucket", "_count", "_sum"):
            if n.endswith(suffix) and not n.endswith("_total"):
                n = n[: -len(suffix)]
        names.add(n)
    return names


def check_compose(root):
    path = os.path.join(root, "docker-compose.kafka.yml")
    doc = yaml.safe_load(open(path))
    services = doc["services"]
    volumes = set((doc.get("volumes") or {}).keys())
    host_ports = {}
    for name, svc in services.items():
        image = svc.get("image")
        if image is None and "build" not in svc:
            problem(f"compose: service {name} has neither image nor build")
        if image and not re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", image):
            problem(f"compose: service {name}: image {image!r} is not name:tag")
        deps = svc.get("depends_on") or []
        for d in deps if isinstance(deps, list) else deps.keys():
            if d not in services:
                problem(f"compose: {name} depends on unknown service {d}")
        for v in svc.get("volumes") or []:
            src = v.split(":", 1)[0]
            if src.startswith("./"):
                if not os.path.exists(os.path.join(root, src)):
                    problem(f"compose: {name} mounts missing file {src}")
            elif src not in volumes:
                problem(f"compose: {name} uses undeclared volume {src}")
        for p in svc.get("ports") or []:
            parts = str(p).split(":")
            # Published on the host's loopback only: nothing of the stack faces the network.
            if len(parts) != 3 or parts[0] != "127.0.0.1":
                problem(f"compose: {name} publishes {p} beyond 127.0.0.1 (write 127.0.0.1:HOST:CONTAINER)")
            host = parts[-2] if len(parts) > 1 else parts[0]
            if host in host_ports:
                problem(f"compose: host port {host} published by {host_ports[host]} and {name}")
            host_ports[host] = name
    skuflow_images = {svc.get("image") for svc in services.values() if "build" in svc}
    for b in BINARIES:
        svc = services.get(b)
        if svc is None:
            problem(f"compose: no service for skuflow-{b}")
            continue
        if svc.get("image") not in skuflow_images:
            problem(f"compose: {b} does not run the image built from this repository")
        if svc.get("entrypoint") != [f"/usr/local/bin/skuflow-{b}"]:
            problem(f"compose: {b} does not run skuflow-{b}")
        if "9464" not in [str(x) for x in svc.get("expose") or []]:
            problem(f"compose: {b} does not expose the operations port 9464")
        # A named volume mounted where the image has no directory owned by its user would be
        # root-owned and unwritable for uid 10001.
        dockerfile = open(os.path.join(root, "Dockerfile")).read()
        for v in svc.get("volumes") or []:
            src, target = str(v).split(":")[:2]
            if not src.startswith("./") and target not in dockerfile:
                problem(f"compose: {b} mounts volume {src} at {target}, which the image does not create for its user")
        env = svc.get("environment") or {}
        if env.get("SKUFLOW_OPS_LISTEN") != "0.0.0.0:9464":
            problem(f"compose: {b} does not serve its operations endpoints on 0.0.0.0:9464")
    prom = yaml.safe_load(open(os.path.join(root, "deploy/prometheus/prometheus.yml")))
    targets = set()
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            targets.update(sc["targets"])
    want = {f"{b}:9464" for b in BINARIES}
    if targets != want:
        problem(f"prometheus.yml scrapes {sorted(targets)}, expected {sorted(want)}")
    for t in targets:
        if t.split(":")[0] not in services:
            problem(f"prometheus.yml scrapes {t}, not a compose service")
    mounts = " ".join(services["prometheus"].get("volumes", []))
    for f in ["deploy/prometheus/prometheus.yml", "deploy/prometheus/alerts.yml"]:
        if f"./{f}" not in mounts:
            problem(f"compose: prometheus does not mount {f}")
    mounts = " ".join(services["grafana"].get("volumes", []))
    for f in ["deploy/grafana/provisioning", "deploy/grafana/skuflow.json"]:
        if f"./{f}" not in mounts:
            problem(f"compose: grafana does not mount {f}")
    env = services["minio"]["environment"]
    if env.get("MINIO_NOTIFY_KAFKA_TOPIC_PRIMARY") != services["ingest"]["environment"].get(
        "SKUFLOW_S3_EVENTS_TOPIC"
    ):
        problem("compose: MinIO publishes to a topic the ingest does not read")
    # Credentials come from .env: no default for a password or key, every variable documented.
    text = open(path).read()
    example = open(os.path.join(root, ".env.example")).read()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    # The SMTP relay's password belongs to an optional feature (e-mail is off without a host):
    # it may be left empty, never given a default.
    optional = {"SKUFLOW_SMTP_PASSWORD"}
    for name, op, default in re.findall(r"\$\{([A-Za-z0-9_]+)(:?[-?]?)([^}]*)\}", text):
        if name not in documented:
            problem(f"compose: ${{{name}}} is not in .env.example")
        if name in optional and op == ":-" and default == "":
            continue
        if re.search(r"PASSWORD|SECRET|KEY", name) and op != ":?":
            problem(f"compose: {name} may be empty or has a default; a credential must come from .env (${{{name}:?…}})")
    if "alertmanager" not in services:
        problem("compose: no alertmanager routes the alert rules")
    ams = [t for a in (prom.get("alerting") or {}).get("alertmanagers", [])
           for sc in a.get("static_configs", []) for t in sc.get("targets", [])]
    if "alertmanager:9093" not in ams:
        problem("prometheus.yml sends alerts to no alertmanager service")
    am = yaml.safe_load(open(os.path.join(root, "deploy/alertmanager/alertmanager.yml")))
    names = {r["name"] for r in am.get("receivers", [])}
    def receivers(route):
        yield route.get("receiver")
        for r in route.get("routes", []):
            yield from receivers(r)
    for r in receivers(am["route"]):
        if r is not None and r not in names:
            problem(f"alertmanager.yml routes to unknown receiver {r}")
    if not any(r.get("webhook_configs") or r.get("email_configs") for r in am.get("receivers", [])):
        problem("alertmanager.yml has no receiver that sends anywhere")
    if "kibana" not in services:
        problem("compose: no Kibana for the analysts")


def check_metrics_use(root):
    defined = defined_metrics(root)
    if len(defined) < 10:
        problem(f"found only {len(defined)} metric names in platform/src/metrics.rs")
    rules = yaml.safe_load(open(os.path.join(root, "deploy/prometheus/alerts.yml")))
    alerts = set()
    for g in rules["groups"]:
        for r in g["rules"]:
            alerts.add(r["alert"])
            for n in metric_names(r["expr"]) - defined:
                problem(f"alert {r['alert']} uses undefined metric {n}")
    for a in ["SkuflowSinkLagging", "SkuflowDeadLetterSpike", "SkuflowDown", "SkuflowFileFailed"]:
        if a not in alerts:
            problem(f"alert {a} missing")
    dash = json.load(open(os.path.join(root, "deploy/grafana/skuflow.json")))
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problem("dashboard: panel ids repeat")
    exprs = []
    for p in dash["panels"]:
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problem(f"dashboard panel {p['title']!r} does not use the $datasource variable")
        for t in p.get("targets", []):
            exprs.append(t["expr"])
            for n in metric_names(t["expr"]) - defined:
                problem(f"dashboard panel {p['title']!r} uses undefined metric {n}")
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for want in ["files per minute", "rows per second", "lag per group", "dead letters", "latency"]:
        if want not in titles:
            problem(f"dashboard has no {want!r} panel")
    # The dashboard's PromQL, as recording rules, for `promtool check rules` (syntax check).
    with open(os.environ.get("DASHBOARD_RULES", "/dev/null"), "w") as out:
        rules = [
            {"record": f"dashboard:expr{i}", "expr": e.replace("$__rate_interval", "5m").replace("$component", ".*")}
            for i, e in enumerate(exprs)
        ]
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, out)


def check_rendered(paths):
    docs = []
    for p in paths:
        docs += [d for d in yaml.safe_load_all(open(p)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    if not deployments:
        problem(f"{paths}: no Deployment rendered")
    services = by_kind.get("Service", [])
    policies = by_kind.get("NetworkPolicy", [])
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problem(f"{name}: not runAsNonRoot")
        accounts = {a["metadata"]["name"] for a in by_kind.get("ServiceAccount", [])}
        if spec.get("serviceAccountName") not in accounts:
            problem(f"{name}: runs as no ServiceAccount of its own")
        c = spec["containers"][0]
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            got = c.get(probe, {}).get("httpGet", {})
            if got.get("path") != path or got.get("port") != "metrics":
                problem(f"{name}: {probe} is not GET {path} on the metrics port")
        for e in c.get("env", []):
            # A *_FILE variable names a file (a mounted Secret), never the secret itself.
            looks_secret = re.search(r"PASSWORD|SECRET|API_KEY|PG_URL", e["name"]) and not e[
                "name"
            ].endswith("_FILE")
            if looks_secret and "valueFrom" not in e:
                problem(f"{name}: {e['name']} is a plain value, not a secretKeyRef")
        def selects(sel):
            return all(labels.get(k) == v for k, v in sel.items())
        if not any(selects(s["spec"]["selector"]) for s in services):
            problem(f"{name}: no Service selects it")
        if policies and not any(selects(p["spec"]["podSelector"]["matchLabels"]) for p in policies):
            problem(f"{name}: no NetworkPolicy covers it")
        if spec.get("terminationGracePeriodSeconds", 30) <= int(
            next((e["value"] for e in c["env"] if e["name"] == "SKUFLOW_SHUTDOWN_TIMEOUT_SECS"), "0")
        ):
            problem(f"{name}: grace period not longer than the shutdown timeout")
    jobs = [j for j in by_kind.get("Job", []) if j["metadata"]["name"].endswith("-topics")]
    if not jobs:
        problem(f"{paths}: no topics Job rendered")
    for j in jobs:
        hooks = j["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        if "pre-install" not in hooks or "pre-upgrade" not in hooks:
            problem(f"{j['metadata']['name']}: not a pre-install/pre-upgrade hook")
        c = j["spec"]["template"]["spec"]["containers"][0]
        if c.get("args", [])[:2] != ["topics", "create"]:
            problem(f"{j['metadata']['name']}: does not run `skuflow topics create`")
    for so in by_kind.get("ScaledObject", []):
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problem(f"ScaledObject {so['metadata']['name']} targets unknown {target}")
        for t in so["spec"]["triggers"]:
            md = t["metadata"]
            if t["type"] != "kafka" or not md.get("consumerGroup") or not md.get("topic"):
                problem(f"ScaledObject {so['metadata']['name']}: kafka trigger incomplete")
        if any(h["spec"]["scaleTargetRef"]["name"] == target for h in by_kind.get("HorizontalPodAutoscaler", [])):
            problem(f"{target}: both an HPA and a ScaledObject")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        ports = [e["port"] for e in sm["spec"]["endpoints"]]
        if not any(all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())
                   and any(p["name"] in ports for p in s["spec"]["ports"]) for s in services):
            problem(f"ServiceMonitor {sm['metadata']['name']} selects no Service with port {ports}")
    alerts = yaml.safe_load(open(os.path.join(ROOT, "helm/skuflow/files/alerts.yml")))
    want = [(r["alert"], r["expr"]) for g in alerts["groups"] for r in g["rules"]]
    for pr in by_kind.get("PrometheusRule", []):
        got = [(r["alert"], r["expr"]) for g in pr["spec"]["groups"] for r in g["rules"]]
        if got != want:
            problem(f"PrometheusRule {pr['metadata']['name']}: rules differ from files/alerts.yml")
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                if not r.get("annotations", {}).get("runbook_url", "").startswith("https://"):
                    problem(f"PrometheusRule: {r['alert']} has no absolute runbook_url")
        # promtool checks the rendered rules too (scripts/check-deploy.sh).
        with open(os.environ.get("CHART_RULES", "/dev/null"), "w") as out:
            yaml.safe_dump({"groups": pr["spec"]["groups"]}, out)
    dashboard = json.load(open(os.path.join(ROOT, "helm/skuflow/files/skuflow-dashboard.json")))
    for cm in by_kind.get("ConfigMap", []):
        if cm["metadata"]["name"].endswith("-dashboard"):
            if json.loads(cm["data"]["skuflow.json"]) != dashboard:
                problem(f"ConfigMap {cm['metadata']['name']}: not the dashboard of files/")
            if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
                problem(f"ConfigMap {cm['metadata']['name']}: no grafana_dashboard label")
    for np in policies:
        for rule in np["spec"].get("ingress", []):
            api = any(p["port"] != 9464 for p in rule.get("ports", []))
            if api and not rule.get("from"):
                problem(f"NetworkPolicy {np['metadata']['name']}: the ingest API is open to every pod")
    print(f"rendered: {sum(len(v) for v in by_kind.values())} objects "
          + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items())))


ROOT = sys.argv[1]


def main():
    root = ROOT
    check_compose(root)
    check_metrics_use(root)
    check_rendered(sys.argv[2:])
    if problems:
        for p in problems:
            print(f"deploy check: {p}", file=sys.stderr)
        sys.exit(1)
    print("deploy check: ok")


main()
