//! Shared by the end-to-end tests and the benchmarks: the test doubles (Elasticsearch, an OTLP
//! receiver, a webhook receiver), the benchmark helpers, and the sample data of `skuflow-samples`.

pub mod bench;
pub mod es_double;
pub mod otlp_double;
pub mod webhook_receiver;

pub use skuflow_samples::*;
