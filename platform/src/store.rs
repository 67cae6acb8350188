//! Output roots: a local directory (the embedded default) or an S3 prefix (`s3://bucket/prefix`,
//! credentials and endpoint from the standard `AWS_*` environment variables).

use std::sync::Arc;

use anyhow::{bail, Context};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;

/// An opened root: the store, the prefix inside it, and the directory when the root is local.
pub struct Root {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub local_dir: Option<std::path::PathBuf>,
}

/// Opens `root` (named `flag` in errors); a local directory is created when missing.
pub fn open_root(root: &str, flag: &str) -> anyhow::Result<Root> {
    if let Some(rest) = root.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{flag} {root}: no bucket");
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        // An endpoint the operator gave as plain http:// (MinIO in a cluster) is used as given,
        // as the ingest does, rather than failing at the first request.
        let endpoint = ["AWS_ENDPOINT", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok());
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            tracing::warn!(flag, "The S3 endpoint is plain HTTP: data and credentials cross the network unencrypted.");
            b = b.with_allow_http(true);
        }
        let s3 = b
            .build()
            .with_context(|| format!("configuring S3 for {flag}"))?;
        return Ok(Root {
            store: Arc::new(s3),
            prefix: Path::from(prefix),
            local_dir: None,
        });
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {flag} {root}"))?;
    let local =
        LocalFileSystem::new_with_prefix(root).with_context(|| format!("opening {flag} {root}"))?;
    let dir = std::fs::canonicalize(root).with_context(|| format!("resolving {flag} {root}"))?;
    Ok(Root {
        store: Arc::new(local),
        prefix: Path::default(),
        local_dir: Some(dir),
    })
}
