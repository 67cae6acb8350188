//! API keys of the ingest HTTP API: bearer tokens, stored only as SHA-256 hashes in a JSON file
//! (`--api-keys-file`), each scoped to buckets and optionally a key prefix (one store's folder).
//! Replacing the file rotates the keys without a restart: it is read again when it changes.
//!
//! ```json
//! {"keys": [
//!   {"id": "store-s17", "sha256": "<hex of SHA-256(token)>", "buckets": ["skus-us"],
//!    "prefix": "incoming/retail_chain/walmart/s-17/"},
//!   {"id": "ops", "sha256": "…", "buckets": ["*"]}
//! ]}
//! ```
//!
//! `skuflow api-key new` makes a token and prints its entry. Tokens are 256-bit random values,
//! so a plain SHA-256 is enough to store them: the file reveals no token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How often a request may look at the file for a change.
const RECHECK: Duration = Duration::from_secs(1);

/// The prefix of every token skuflow makes (so that a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "skf_";

/// One key of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// A name for logs and audits (never the token).
    pub id: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// Buckets the key may queue from and read the status of; `*`: every allowed bucket.
    pub buckets: Vec<String>,
    /// Only keys under this prefix (e.g. one store's folder); none: the whole bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub id: String,
    buckets: Vec<String>,
    prefix: Option<String>,
}

impl Scope {
    /// Whether the key may queue `key` of `bucket` (or read its status).
    pub fn allows(&self, bucket: &str, key: &str) -> bool {
        self.buckets.iter().any(|b| b == "*" || b == bucket)
            && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
    }
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits from the operating system's generator).
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    keys: HashMap<String, Scope>,
}

/// The keys of `--api-keys-file`, read again when the file changes.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> anyhow::Result<HashMap<String, Scope>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API key file {}", path.display()))?;
    let file: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an API key file", path.display()))?;
    let mut keys = HashMap::new();
    for (i, k) in file.keys.into_iter().enumerate() {
        let at = || format!("{}: key {} ({:?})", path.display(), i + 1, k.id);
        anyhow::ensure!(
            k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: sha256 must be 64 hex digits (the hash of the token, never the token)",
            at()
        );
        anyhow::ensure!(!k.buckets.is_empty(), "{}: buckets is empty", at());
        let scope = Scope {
            id: k.id.clone(),
            buckets: k.buckets,
            prefix: k.prefix.filter(|p| !p.is_empty()),
        };
        if keys.insert(k.sha256.to_ascii_lowercase(), scope).is_some() {
            anyhow::bail!("{}: the same hash appears twice", at());
        }
    }
    Ok(keys)
}

impl ApiKeys {
    /// Reads the file; an unreadable or invalid file is an error at start.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let keys = read(path)?;
        tracing::info!(keys = keys.len(), file = %path.display(), "API keys loaded.");
        Ok(ApiKeys {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp: stamp(path),
                checked: Instant::now(),
                keys,
            }),
        })
    }

    /// The scope of `token`, if it is a key of the file as it is now. A file replaced by one
    /// that cannot be read keeps the keys read before (and says so at ERROR).
    pub fn authenticate(&self, token: &str) -> Option<Scope> {
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if l.checked.elapsed() >= RECHECK {
            l.checked = Instant::now();
            let now = stamp(&self.path);
            if now != l.stamp {
                l.stamp = now;
                match read(&self.path) {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), file = %self.path.display(), "API keys reloaded.");
                        l.keys = keys;
                    }
                    Err(e) => tracing::error!(cause = %format!("{e:#}"),
                        "The API key file changed but cannot be used; keeping the keys read before."),
                }
            }
        }
        l.keys.get(&hash_token(token)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, entries: &[KeyEntry]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::json!({ "keys": entries }).to_string()).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    fn entry(id: &str, token: &str, buckets: &[&str], prefix: Option<&str>) -> KeyEntry {
        KeyEntry {
            id: id.into(),
            sha256: hash_token(token),
            buckets: buckets.iter().map(|b| b.to_string()).collect(),
            prefix: prefix.map(str::to_string),
        }
    }

    #[test]
    fn keys_are_scoped_and_rotate_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 68 && a != b);
        write(
            &path,
            &[entry(
                "store-1",
                &a,
                &["skus-de"],
                Some("incoming/individual/s1/"),
            )],
        );
        let keys = ApiKeys::load(&path).unwrap();
        let scope = keys.authenticate(&a).expect("key a");
        assert!(scope.allows("skus-de", "incoming/individual/s1/2026-11-01/x.csv"));
        assert!(!scope.allows("skus-de", "incoming/individual/s2/2026-11-01/x.csv"));
        assert!(!scope.allows("skus-fr", "incoming/individual/s1/2026-11-01/x.csv"));
        assert!(keys.authenticate(&b).is_none());
        assert!(keys.authenticate("").is_none());

        write(&path, &[entry("ops", &b, &["*"], None)]);
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        assert!(keys.authenticate(&a).is_none(), "the old key is revoked");
        assert!(keys
            .authenticate(&b)
            .unwrap()
            .allows("skus-fr", "incoming/a.csv"));

        // A broken replacement keeps the keys in force.
        std::fs::write(&path, "{not json").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        assert!(keys.authenticate(&b).is_some());
    }

    #[test]
    fn a_file_holding_a_token_instead_of_its_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut e = entry("x", "t", &["skus-de"], None);
        e.sha256 = new_token().unwrap();
        write(&path, &[e]);
        let err = ApiKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
