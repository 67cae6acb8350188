//! skuflow's message contracts.
//!
//! The JSON Schema files under `schemas/v1/` are the source of truth. This crate embeds them,
//! defines the Rust types that are serialized to and from them, and derives every sink schema
//! (PostgreSQL DDL, Elasticsearch index template, Arrow schema) from the one field list read out
//! of `sku-record.schema.json`, so the sinks cannot drift apart.

pub mod arrow;
pub mod elasticsearch;
pub mod fields;
mod messages;
pub mod postgres;
pub mod wire_time;

pub use fields::{record_fields, Field, FieldType};
pub use messages::*;

/// Topic names of the pipeline (defaults; every binary lets them be overridden).
pub mod topics {
    /// One message per file to ingest: the work queue.
    pub const UPLOADS: &str = "sku.uploads.v1";
    /// One JSON record per valid row.
    pub const RECORDS: &str = "sku.records.v1";
    /// Dead letters: rows and records that failed for good, with every reason.
    pub const REJECTS: &str = "sku.rejects.v1";
    /// File lifecycle, compacted by file id.
    pub const FILES: &str = "sku.files.v1";
}

/// Kafka header names carried by every produced message.
pub mod headers {
    /// The schema id of the payload, e.g. `sku-record/v1`.
    pub const SCHEMA: &str = "skuflow-schema";
    /// The file id the message belongs to.
    pub const FILE_ID: &str = "skuflow-file-id";
}

/// The JSON Schema documents, embedded, by schema id.
pub mod json_schemas {
    pub const RECORD: &str = include_str!("../v1/sku-record.schema.json");
    pub const UPLOAD: &str = include_str!("../v1/sku-upload.schema.json");
    pub const REJECT: &str = include_str!("../v1/sku-reject.schema.json");
    pub const FILE: &str = include_str!("../v1/sku-file.schema.json");

    /// Every (schema id, document) pair.
    pub const ALL: [(&str, &str); 4] = [
        (super::RECORD_SCHEMA, RECORD),
        (super::UPLOAD_SCHEMA, UPLOAD),
        (super::REJECT_SCHEMA, REJECT),
        (super::FILE_SCHEMA, FILE),
    ];
}
