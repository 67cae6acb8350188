#!/usr/bin/env bash
# `make demo`: the whole pipeline on generated uploads. PostgreSQL comes from the local stack; the
# broker is a throwaway tansu of this run (fresh storage in a temporary directory, stopped at the
# end), so every run starts from empty topics and groups. Without tansu installed, the demo uses
# an in-process Kafka-API mock broker.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/stack.sh" up postgres
eval "$("$here/stack.sh" env)"
export PATH="$HOME/.cargo/bin:$PATH"

brokers=()
if command -v tansu >/dev/null 2>&1; then
  dir="$(mktemp -d)"
  port="${SKUFLOW_DEMO_KAFKA_PORT:-19093}"
  tansu broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite:///$dir/tansu.db" > "$dir/tansu.log" 2>&1 &
  tansu_pid=$!
  trap 'kill "$tansu_pid" 2>/dev/null || true; wait "$tansu_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  python3 "$here/tansu-index.py" "$dir/tansu.db"
  brokers=(--brokers "127.0.0.1:$port")
fi
cargo run --quiet -p skuflow-cli -- demo --pg-url "$SKUFLOW_DEMO_PG_URL" "${brokers[@]}"
