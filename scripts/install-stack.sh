#!/usr/bin/env bash
# Installs the local stack skuflow's tests run against, skipping whatever is already present:
#   - PostgreSQL (Debian package)
#   - tansu, a Kafka-API broker
#   - s3s-fs, an S3 API server over a local directory
#   - python: pyarrow and DuckDB from PyPI, the real clients the dataset tests read Parquet with
# Usage: scripts/install-stack.sh [postgres] [tansu] [s3s-fs] [python]   (no argument: all)
set -euo pipefail

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(postgres tansu s3s-fs python)
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
      if python3 -c 'import pyarrow, duckdb, confluent_kafka' >/dev/null 2>&1; then
        log "pyarrow, duckdb and confluent-kafka present"
      else
        log "Installing pyarrow, duckdb and confluent-kafka from PyPI."
        python3 -m pip install --quiet --disable-pip-version-check 'pyarrow==26.*' 'duckdb==2.*' 'confluent-kafka==2.*'
      fi
      ;;
    *)
      log "unknown component '$what' (expected postgres, tansu, s3s-fs or python)"
      exit 2
      ;;
  esac
done
