#!/usr/bin/env bash
# Runs the benchmarks against a tansu broker of their own (fresh sqlite log in a temp dir), so
# that a million-record bench topic neither slows nor is slowed by the stack's shared broker.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
"$here/stack.sh" up >/dev/null
"$here/install-stack.sh" python
eval "$("$here/stack.sh" env)"
dir="$(mktemp -d /tmp/skuflow-bench-tansu.XXXXXX)"
port="${SKUFLOW_BENCH_KAFKA_PORT:-19192}"
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine "sqlite:///$dir/tansu.db" > "$dir/tansu.log" 2>&1 &
pid=$!
# Wait for the broker to exit, so that a bench run right after this one can bind its port.
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
python3 "$here/tansu-index.py" "$dir/tansu.db"
export SKUFLOW_TEST_BROKERS="127.0.0.1:$port"
# The latency bench runs the shipped binaries as processes: build them as they ship.
cargo build --release --workspace --bins
cargo bench -p skuflow-warehouse-loader --bench loader
cargo bench -p skuflow-finance-reporter --bench reporter
cargo bench -p skuflow-search-indexer --bench encode
cargo bench -p skuflow-dataset-builder --bench build
cargo bench -p skuflow-dataset-builder --bench day_growth
cargo bench -p skuflow-ingest --bench ingest
# Upload-to-sink latency: the whole pipeline on a broker of its own (not the one above).
cargo bench -p skuflow-e2e --bench latency
