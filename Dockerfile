# Multi-stage build of every skuflow binary; the runtime image is small and runs as non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/skuflow target/release/skuflow-ingest target/release/skuflow-warehouse-loader \
    target/release/skuflow-search-indexer target/release/skuflow-dataset-builder target/release/skuflow-finance-reporter \
    target/release/skuflow-notifier /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin skuflow \
 && mkdir -p /datasets /reports && chown 10001:10001 /datasets /reports
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# Operations endpoints of every binary: /metrics, /healthz, /readyz (SKUFLOW_OPS_LISTEN).
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/skuflow"]
