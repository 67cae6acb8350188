//! What every skuflow binary stands on: configuration shared by all binaries, Kafka client
//! builders, topic management, the at-least-once consume → sink → store-offset loop, tracing, metrics,
//! health endpoints and graceful shutdown.

pub mod backoff;
pub mod buckets;
pub mod component;
pub mod consume;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod parallel;
pub mod pg;
pub mod pg_tls;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod text;

pub use consume::{run_sink, ConsumeArgs, Consumed, Refusal, Sink, SinkError};
pub use kafka::{KafkaArgs, TopicArgs};
pub use ops::OpsArgs;
