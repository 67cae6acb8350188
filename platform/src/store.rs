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

/// The S3 client settings of `bucket`: the standard `AWS_*` environment (credentials chain,
/// region, endpoint), `endpoint` when given. An endpoint given as plain `http://` (MinIO in a
/// cluster, s3s-fs) is used as given rather than failing at the first request, with a warning
/// naming `what`: data and credentials then cross the network unencrypted. The one way every
/// skuflow component opens S3.
pub fn s3_builder(bucket: &str, endpoint: Option<&str>, what: &str) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(ep) = endpoint {
        b = b.with_endpoint(ep);
    }
    let endpoint = endpoint.map(str::to_string).or_else(|| {
        ["AWS_ENDPOINT", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok())
    });
    if endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        tracing::warn!(
            what,
            bucket,
            "The S3 endpoint is plain HTTP: data and credentials cross the network unencrypted."
        );
        b = b.with_allow_http(true);
    }
    b
}

/// Opens `root` (named `flag` in errors); a local directory is created when missing.
pub fn open_root(root: &str, flag: &str) -> anyhow::Result<Root> {
    if let Some(rest) = root.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{flag} {root}: no bucket");
        }
        let b = s3_builder(bucket, None, flag);
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
