//! The stores' buckets: one per country, on a local directory (the embedded default) or any
//! S3 API (AWS S3, MinIO, s3s-fs). Both go through `object_store`, so the code that reads them
//! (the ingest, the notifier reading reports) is the same; the flags are the same everywhere.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;

pub use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Each bucket is a subdirectory of --bucket-root.
    Local,
    /// An S3 API (AWS, MinIO, s3s-fs).
    S3,
}

/// Where the buckets live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Object store backend.
    #[arg(long = "object-store", env = "SKUFLOW_OBJECT_STORE", value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Local backend: directory holding one subdirectory per bucket.
    #[arg(
        long = "bucket-root",
        env = "SKUFLOW_BUCKET_ROOT",
        default_value = "buckets"
    )]
    pub bucket_root: PathBuf,
    /// S3 backend: endpoint URL for S3-compatible servers (empty: AWS).
    #[arg(long = "s3-endpoint", env = "SKUFLOW_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 backend: region.
    #[arg(
        long = "s3-region",
        env = "SKUFLOW_S3_REGION",
        default_value = "us-east-1"
    )]
    pub s3_region: String,
    /// S3 backend: a static access key id, only when given; otherwise the standard AWS chain:
    /// web identity (IRSA: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`), ECS task or EKS Pod
    /// Identity credentials, then the instance profile.
    #[arg(
        long = "s3-access-key-id",
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<String>,
    /// S3 backend: secret access key (never logged).
    #[arg(
        long = "s3-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<Secret>,
}

impl StoreArgs {
    pub fn local(root: impl Into<PathBuf>) -> Self {
        StoreArgs {
            backend: Backend::Local,
            bucket_root: root.into(),
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
        }
    }
}

/// The object path of a key, taken as it is (`Path::from` would percent-encode non-ASCII
/// characters and name another object).
pub fn object_path(key: &str) -> Result<object_store::path::Path, String> {
    object_store::path::Path::parse(key)
        .map_err(|e| format!("key {key:?} is not a valid object path: {e}"))
}

/// Opens buckets on demand and keeps them.
pub struct Stores {
    args: StoreArgs,
    open: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// Whether `name` is a valid bucket name.
pub fn check_bucket_name(name: &str) -> anyhow::Result<()> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.contains("..");
    if !ok {
        bail!("`{name}` is not a valid bucket name (3-63 characters of a-z 0-9 - .)");
    }
    Ok(())
}

impl Stores {
    pub fn new(args: StoreArgs) -> Self {
        Stores {
            args,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn args(&self) -> &StoreArgs {
        &self.args
    }

    /// The store of `bucket`.
    pub fn bucket(&self, bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        check_bucket_name(bucket)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = open.get(bucket) {
            return Ok(s.clone());
        }
        let store: Arc<dyn ObjectStore> = match self.args.backend {
            Backend::Local => {
                let dir = self.args.bucket_root.join(bucket);
                if !dir.is_dir() {
                    bail!(
                        "bucket {bucket} does not exist (no directory {})",
                        dir.display()
                    );
                }
                Arc::new(
                    LocalFileSystem::new_with_prefix(&dir)
                        .with_context(|| format!("opening bucket directory {}", dir.display()))?,
                )
            }
            Backend::S3 => {
                let mut b = crate::store::s3_builder(
                    bucket,
                    self.args.s3_endpoint.as_deref(),
                    "--s3-endpoint",
                )
                .with_region(&self.args.s3_region);
                if let Some(k) = &self.args.s3_access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = &self.args.s3_secret_access_key {
                    b = b.with_secret_access_key(s.expose());
                }
                Arc::new(
                    b.build()
                        .with_context(|| format!("configuring S3 bucket {bucket}"))?,
                )
            }
        };
        open.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    /// Buckets found under the local root (the S3 backend has no listing: configure them).
    pub fn local_buckets(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.args.bucket_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_bucket_name(n).is_ok())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = "hunter2".parse().unwrap();
        assert_eq!(format!("{s:?}"), "\"***\"");
    }

    #[test]
    fn keys_keep_their_characters() {
        assert_eq!(
            object_path("incoming/a/sküs list.csv").unwrap().as_ref(),
            "incoming/a/sküs list.csv"
        );
    }

    #[test]
    fn bucket_names_are_checked() {
        assert!(check_bucket_name("skus-de").is_ok());
        assert!(check_bucket_name("../etc").is_err());
        assert!(check_bucket_name("Skus").is_err());
    }
}
