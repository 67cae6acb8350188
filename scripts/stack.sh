#!/usr/bin/env bash
# Starts and stops skuflow's local stack on 127.0.0.1:
#   PostgreSQL  (port $SKUFLOW_PG_PORT,     default 55432)
#   tansu       (port $SKUFLOW_KAFKA_PORT,  default 19092; sqlite storage, durable)
#   s3s-fs      (port $SKUFLOW_S3_PORT,     default 19000)
# Usage: scripts/stack.sh up [postgres|tansu|s3] ... | down | env | status
# `up` installs what is missing (scripts/install-stack.sh) and is a no-op for what already runs.
# `env` prints the variables the tests and binaries read.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
STACK="${SKUFLOW_STACK_DIR:-/tmp/skuflow-stack}"
PG_PORT="${SKUFLOW_PG_PORT:-55432}"
KAFKA_PORT="${SKUFLOW_KAFKA_PORT:-19092}"
S3_PORT="${SKUFLOW_S3_PORT:-19000}"
S3_KEY="${SKUFLOW_S3_ACCESS_KEY:-skuflow}"
S3_SECRET="${SKUFLOW_S3_SECRET_KEY:-skuflow-local-secret}"
PG_PASSWORD="${SKUFLOW_PG_PASSWORD:-skuflow-local-pw}"

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 logf=$3
  for _ in $(seq 1 300); do
    port_open "$port" && return 0
    sleep 0.2
  done
  log "$name did not open port $port; last log lines:"
  tail -n 30 "$logf" >&2 || true
  return 1
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up_postgres() {
  "$here/install-stack.sh" postgres
  local bin; bin="$(pg_bin)"
  local data="$STACK/pg/data" sock="$STACK/pg/socket"
  if port_open "$PG_PORT"; then log "PostgreSQL already on $PG_PORT"; return 0; fi
  mkdir -p "$STACK/pg"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$STACK/pg" && chmod 755 "$STACK"
  if [ ! -s "$data/PG_VERSION" ]; then
    log "initdb $data"
    as_pg mkdir -p "$data" "$sock"
    local pwfile="$STACK/pg/.pw"
    printf '%s\n' "$PG_PASSWORD" > "$pwfile"; chmod 644 "$pwfile"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
fsync = on
max_connections = 200
shared_buffers = 256MB
max_wal_size = 4GB
log_min_messages = warning
CONF
  fi
  as_pg mkdir -p "$sock"
  as_pg "$bin/pg_ctl" -D "$data" -l "$STACK/pg/postgres.log" -w -t 60 start >/dev/null
  wait_port "$PG_PORT" PostgreSQL "$STACK/pg/postgres.log"
  as_pg "$bin/psql" -h "$sock" -p "$PG_PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 <<SQL >/dev/null
SELECT 'CREATE ROLE skuflow LOGIN CREATEDB CREATEROLE PASSWORD ''$PG_PASSWORD'''
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'skuflow') \gexec
SELECT 'CREATE DATABASE skuflow OWNER skuflow'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'skuflow') \gexec
SELECT 'CREATE DATABASE skuflow_demo OWNER skuflow'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'skuflow_demo') \gexec
SQL
  log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
}

down_postgres() {
  local bin; bin="$(pg_bin)"
  [ -n "$bin" ] && [ -s "$STACK/pg/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$STACK/pg/data" -m fast -w stop >/dev/null || true
}

up_tansu() {
  "$here/install-stack.sh" tansu
  if port_open "$KAFKA_PORT"; then log "tansu already on $KAFKA_PORT"; return 0; fi
  mkdir -p "$STACK/tansu"
  local storage="${SKUFLOW_TANSU_STORAGE:-sqlite:///$STACK/tansu/tansu.db}"
  (cd "$STACK/tansu" && exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "$storage" > "$STACK/tansu/tansu.log" 2>&1) &
  echo $! > "$STACK/tansu/pid"
  wait_port "$KAFKA_PORT" tansu "$STACK/tansu/tansu.log"
  case "$storage" in sqlite:///*) python3 "$here/tansu-index.py" "${storage#sqlite://}" ;; esac
  log "tansu ready on 127.0.0.1:$KAFKA_PORT ($storage)"
}

down_tansu() {
  if [ -s "$STACK/tansu/pid" ]; then kill "$(cat "$STACK/tansu/pid")" 2>/dev/null || true; rm -f "$STACK/tansu/pid"; fi
  # Wait for the port to close, so that an `up` right after starts a new broker rather than
  # finding the old one still on its way out.
  for _ in $(seq 1 100); do port_open "$KAFKA_PORT" || break; sleep 0.1; done
}

up_s3() {
  "$here/install-stack.sh" s3s-fs
  if port_open "$S3_PORT"; then log "s3s-fs already on $S3_PORT"; return 0; fi
  mkdir -p "$STACK/s3/data"
  # Started from its own directory: s3s-fs resolves every object path against its working
  # directory, so a checkout removed under it would fail each request with a 500.
  (cd "$STACK/s3" && exec nohup s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" \
    --secret-key "$S3_SECRET" "$STACK/s3/data" > "$STACK/s3/s3s-fs.log" 2>&1) &
  echo $! > "$STACK/s3/pid"
  wait_port "$S3_PORT" s3s-fs "$STACK/s3/s3s-fs.log"
  log "s3s-fs ready on 127.0.0.1:$S3_PORT (data in $STACK/s3/data)"
}

down_s3() {
  if [ -s "$STACK/s3/pid" ]; then kill "$(cat "$STACK/s3/pid")" 2>/dev/null || true; rm -f "$STACK/s3/pid"; fi
}

print_env() {
  cat <<ENV
export SKUFLOW_STACK_DIR='$STACK'
export SKUFLOW_TEST_BROKERS='127.0.0.1:$KAFKA_PORT'
export SKUFLOW_TEST_TANSU='$(command -v tansu || echo tansu)'
export SKUFLOW_TEST_PG_URL='postgres://skuflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/skuflow'
export SKUFLOW_DEMO_PG_URL='postgres://skuflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/skuflow_demo'
export SKUFLOW_TEST_PG_ADMIN='host=$STACK/pg/socket port=$PG_PORT user=postgres dbname=postgres'
export SKUFLOW_TEST_PG_BIN='$(pg_bin)'
export SKUFLOW_TEST_S3_ENDPOINT='http://127.0.0.1:$S3_PORT'
export SKUFLOW_TEST_S3_DATA='$STACK/s3/data'
export SKUFLOW_TEST_S3_ACCESS_KEY='$S3_KEY'
export SKUFLOW_TEST_S3_SECRET_KEY='$S3_SECRET'
ENV
}

cmd="${1:-up}"; shift || true
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(postgres tansu s3)
case "$cmd" in
  up) for p in "${parts[@]}"; do "up_$p"; done ;;
  down) for p in "${parts[@]}"; do "down_$p"; done ;;
  env) print_env ;;
  status)
    for p in "$PG_PORT:postgres" "$KAFKA_PORT:tansu" "$S3_PORT:s3s-fs"; do
      if port_open "${p%%:*}"; then echo "${p#*:} up (${p%%:*})"; else echo "${p#*:} down (${p%%:*})"; fi
    done ;;
  *) echo "usage: $0 up|down|env|status [postgres|tansu|s3]..." >&2; exit 2 ;;
esac
