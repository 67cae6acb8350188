# skuflow — the two commands that matter: `make demo` and `make test`.
# Everything they need (PostgreSQL, tansu, s3s-fs) is installed and started by scripts/.

SHELL := /bin/bash
CARGO_TARGET_DIR ?= $(HOME)/.cache/skuflow-target
export CARGO_TARGET_DIR
export PATH := $(HOME)/.cargo/bin:$(PATH)
STACK := scripts/stack.sh

.PHONY: demo test lint build-deps deploy-check unit fuzz chaos bench stack stack-down stack-status fmt

## Run the whole pipeline on generated uploads (local directory bucket, a throwaway local broker,
## local PostgreSQL) and print a summary. Uses tansu when it is installed, else an in-process broker.
demo: build-deps
	scripts/demo.sh

## Every test: formatting, lints, unit tests and the end-to-end tests on the real local stack.
test: lint stack deploy-check
	scripts/install-stack.sh python chromium tls
	cargo build --workspace --bins
	@eval "$$($(STACK) env)"; \
	 if cargo nextest --version >/dev/null 2>&1; then \
	    cargo nextest run --workspace --no-fail-fast; \
	 else cargo test --workspace --no-fail-fast; fi

## What the build needs besides Rust (OpenSSL headers for librdkafka's TLS and SASL).
build-deps:
	scripts/install-stack.sh build-deps

lint: build-deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## Prometheus rules and their unit tests, the Grafana dashboard, docker-compose.kafka.yml, and the
## Helm chart (lint, template, Kubernetes schemas): no Docker or cluster needed.
deploy-check:
	scripts/install-stack.sh deploy-tools
	scripts/check-deploy.sh

## Benchmarks on the local stack: each prints its figures and ratios against baselines measured
## in the same run (never pass/fail on time). SKUFLOW_BENCH_RECORDS sets the size (default 1M).
bench: build-deps
	scripts/bench.sh

## Property tests of the CSV reader, row contract, decompression and key parser with many more
## cases than `make test` runs (256 per property there). FUZZ_CASES sets the count.
FUZZ_CASES ?= 200000
fuzz: build-deps
	PROPTEST_CASES=$(FUZZ_CASES) cargo nextest run -p skuflow-ingest --test properties --no-fail-fast

## A seeded fault run (SKUFLOW_CHAOS_SEED, default 7): 12 uploads, 204,000 rows, random SIGKILLs,
## a broker restart and a 20 s PostgreSQL outage; then `skuflow status` and independent counts must
## show every valid row in every sink once. Prints a summary.
chaos: build-deps stack
	scripts/install-stack.sh python
	cargo build --workspace --bins
	@eval "$$($(STACK) env)"; \
	 cargo nextest run -p skuflow-e2e --test chaos --run-ignored only --no-capture

## Unit tests only (no stack needed).
unit: build-deps
	cargo nextest run --workspace -E 'not package(skuflow-e2e) or test(/generated_rows/)'

stack:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

fmt:
	cargo fmt --all
