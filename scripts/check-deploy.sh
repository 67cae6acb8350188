#!/usr/bin/env bash
# Checks what ops deploy, without Docker or a cluster (part of `make test`):
#   - Prometheus: config and alert rules (promtool check), alert unit tests (promtool test rules),
#     the Grafana dashboard's PromQL (as recording rules, promtool check rules)
#   - docker-compose.kafka.yml, deploy/ and the metric names they use (tests/python/check_deploy.py)
#   - Helm: `helm lint` and `helm template` with the default values and with every option on
#     (helm/skuflow/ci/full-values.yaml), manifests validated against the Kubernetes schemas
#     (kubernetes-validate, strict) of the oldest and newest supported versions; values the
#     chart must refuse are refused.
# The tools come from scripts/install-stack.sh deploy-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
helm="${SKUFLOW_TOOLS_BIN:-$HOME/.cache/skuflow-tools/bin}/helm"
[ -x "$helm" ] || helm="$(command -v helm)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log() { printf '[check-deploy] %s\n' "$*" >&2; }

log "promtool: config, rules, rule unit tests"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts_test.yml

log "helm lint and template"
chart=helm/skuflow
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" -f "$chart/ci/full-values.yaml"
"$helm" template skuflow "$chart" --namespace skuflow > "$tmp/default.yaml"
"$helm" template skuflow "$chart" --namespace skuflow -f "$chart/ci/full-values.yaml" > "$tmp/full.yaml"
refuse() {
  if "$helm" template skuflow "$chart" "$@" > /dev/null 2> "$tmp/err"; then
    log "helm accepted values it must refuse: $*"; exit 1
  fi
  log "refused as it should ($*): $(grep -m1 -v '^$' "$tmp/err")"
}
refuse --set components.datasetBuilder.replicas=2 --set components.datasetBuilder.writerLeaseSecs=60
refuse --set components.datasetBuilder.keda.enabled=true --set components.datasetBuilder.writerLeaseSecs=60
refuse --set components.datasetBuilder.writerLeaseSecs=3
refuse --set elasticsearch.url=https://user:pw@es.example:9200
refuse --set ops.port=0
refuse -f "$chart/ci/full-values.yaml" --set components.notifier.smtp.from=
refuse -f "$chart/ci/full-values.yaml" --set components.notifier.smtp.passwordFile=
refuse -f "$chart/ci/full-values.yaml" --set components.notifier.smtp.tls=ssl

log "Kubernetes schemas (strict)"
for v in 1.29.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$v" "$tmp/default.yaml" "$tmp/full.yaml"
done

log "compose, deploy/ and metric names"
DASHBOARD_RULES="$tmp/dashboard-rules.yml" CHART_RULES="$tmp/chart-rules.yml" \
  python3 tests/python/check_deploy.py . "$tmp/default.yaml" "$tmp/full.yaml"
promtool check rules "$tmp/dashboard-rules.yml" "$tmp/chart-rules.yml"
log "ok"
