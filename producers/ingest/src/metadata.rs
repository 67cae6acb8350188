//! File metadata: country from the bucket, store and business date from the key (overridden by
//! S3 user metadata).

use std::collections::HashMap;

use chrono::NaiveDate;
use skuflow_schemas::StoreCategory;

use crate::codes;

/// How bucket names map to countries.
#[derive(Debug, Clone)]
pub struct BucketCountries {
    /// Explicit bucket → country pairs (win over the template).
    explicit: HashMap<String, String>,
    /// Name template with one `{country}` placeholder, e.g. `skus-{country}`.
    prefix: String,
    suffix: String,
}

impl BucketCountries {
    /// `template` must contain `{country}` once; `explicit` are `bucket=CC` pairs.
    pub fn new(template: &str, explicit: &[(String, String)]) -> Result<Self, String> {
        let (prefix, suffix) = template.split_once("{country}").ok_or_else(|| {
            format!("bucket template `{template}` has no {{country}} placeholder")
        })?;
        if suffix.contains("{country}") {
            return Err(format!(
                "bucket template `{template}` has {{country}} twice"
            ));
        }
        let mut map = HashMap::new();
        for (bucket, cc) in explicit {
            let cc = cc.trim().to_ascii_uppercase();
            if !codes::is_country(&cc) {
                return Err(format!(
                    "bucket {bucket}: `{cc}` is not an ISO 3166-1 alpha-2 country code"
                ));
            }
            map.insert(bucket.clone(), cc);
        }
        Ok(BucketCountries {
            explicit: map,
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The country of `bucket`, or why there is none.
    pub fn country(&self, bucket: &str) -> Result<String, String> {
        if let Some(cc) = self.explicit.get(bucket) {
            return Ok(cc.clone());
        }
        let middle = bucket
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_suffix(&self.suffix))
            .ok_or_else(|| {
                format!("bucket {bucket} does not match the bucket template {}{{country}}{} and has no explicit country", self.prefix, self.suffix)
            })?;
        let cc = middle.to_ascii_uppercase();
        if codes::is_country(&cc) {
            Ok(cc)
        } else {
            Err(format!(
                "bucket {bucket}: `{middle}` is not an ISO 3166-1 alpha-2 country code"
            ))
        }
    }

    /// The bucket name of `country` by the template.
    pub fn bucket_for(&self, country: &str) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            country.to_ascii_lowercase(),
            self.suffix
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Var(String),
}

/// A key template such as `incoming/{store_category}/[{chain}/]{store_id}/{business_date}/{file}`.
/// Each path segment is a literal or one placeholder; `[...]` marks optional segments.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    source: String,
    /// Alternatives, longest first.
    alternatives: Vec<Vec<Seg>>,
    /// The first literal segment: the prefix listed by scans (e.g. `incoming/`).
    pub incoming_prefix: String,
}

const VARS: [&str; 5] = [
    "store_category",
    "chain",
    "store_id",
    "business_date",
    "file",
];

/// What a key says about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadata {
    pub store_category: StoreCategory,
    pub chain: Option<String>,
    pub store_id: String,
    pub business_date: NaiveDate,
    pub file_name: String,
}

fn parse_segments(s: &str) -> Result<Vec<Seg>, String> {
    s.split('/')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some(v) = p.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if VARS.contains(&v) {
                    Ok(Seg::Var(v.to_string()))
                } else {
                    Err(format!(
                        "unknown placeholder {{{v}}} (known: {})",
                        VARS.join(", ")
                    ))
                }
            } else if p.contains('{') || p.contains('}') {
                Err(format!(
                    "segment `{p}` must be a literal or exactly one placeholder"
                ))
            } else {
                Ok(Seg::Literal(p.to_string()))
            }
        })
        .collect()
}

impl KeyTemplate {
    pub const DEFAULT: &'static str =
        "incoming/{store_category}/[{chain}/]{store_id}/{business_date}/{file}";

    pub fn parse(template: &str) -> Result<Self, String> {
        let (with, without) = match (template.find('['), template.find(']')) {
            (Some(a), Some(b)) if a < b => {
                let with = format!(
                    "{}{}{}",
                    &template[..a],
                    &template[a + 1..b],
                    &template[b + 1..]
                );
                let without = format!("{}{}", &template[..a], &template[b + 1..]);
                (with, Some(without))
            }
            (None, None) => (template.to_string(), None),
            _ => return Err(format!("key template `{template}` has an unbalanced [ ]")),
        };
        let mut alternatives = vec![parse_segments(&with)?];
        if let Some(w) = without {
            alternatives.push(parse_segments(&w)?);
        }
        let first = &alternatives[0];
        if !matches!(first.last(), Some(Seg::Var(v)) if v == "file") {
            return Err(format!("key template `{template}` must end with {{file}}"));
        }
        let incoming_prefix = match first.first() {
            Some(Seg::Literal(l)) => format!("{l}/"),
            _ => String::new(),
        };
        Ok(KeyTemplate {
            source: template.to_string(),
            alternatives,
            incoming_prefix,
        })
    }

    /// Reads the key. Missing parts are `None` so that user metadata can supply them.
    pub fn extract(&self, key: &str) -> Result<HashMap<&'static str, String>, String> {
        check_key(key)?;
        let parts: Vec<&str> = key.split('/').collect();
        for alt in &self.alternatives {
            if alt.len() != parts.len() {
                continue;
            }
            let mut vars = HashMap::new();
            let mut ok = true;
            for (seg, part) in alt.iter().zip(&parts) {
                match seg {
                    Seg::Literal(l) => ok &= l == part,
                    Seg::Var(v) => {
                        let name = VARS.iter().find(|n| *n == v).copied().unwrap_or("file");
                        vars.insert(name, part.to_string());
                    }
                }
            }
            if ok {
                return Ok(vars);
            }
        }
        Err(format!(
            "key {key} does not match the key template {}",
            self.source
        ))
    }
}

/// Refuses keys that could escape a prefix or confuse a store's tools.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        return Err("key is empty or longer than 1024 bytes".into());
    }
    if key.starts_with('/')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "key {key:?} has an empty, `.` or `..` path segment"
        ));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!("key {key:?} has control characters or backslashes"));
    }
    Ok(())
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Combines the key's parts with user-metadata overrides (`store-id`, `store-category`, `chain`)
/// and checks them.
pub fn resolve(
    template: &KeyTemplate,
    key: &str,
    user_metadata: &HashMap<String, String>,
) -> Result<KeyMetadata, String> {
    let mut vars = template.extract(key)?;
    for (meta, var) in [
        ("store-id", "store_id"),
        ("store-category", "store_category"),
        ("chain", "chain"),
    ] {
        if let Some(v) = user_metadata
            .get(meta)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            vars.insert(var, v.to_string());
        }
    }
    let cat_raw = vars
        .get("store_category")
        .ok_or("store category is missing (key or x-amz-meta-store-category)")?;
    let store_category = StoreCategory::parse(cat_raw)
        .ok_or_else(|| format!("store category `{cat_raw}` is not individual or retail_chain"))?;
    let chain = vars.get("chain").map(|c| c.to_ascii_lowercase());
    let chain = match (store_category, chain) {
        (StoreCategory::RetailChain, Some(c)) if valid_id(&c) => Some(c),
        (StoreCategory::RetailChain, Some(c)) => {
            return Err(format!(
                "chain `{c}` must be 1-64 characters of a-z 0-9 . _ -"
            ))
        }
        (StoreCategory::RetailChain, None) => {
            return Err("retail_chain store without a chain name (key or x-amz-meta-chain)".into())
        }
        (StoreCategory::Individual, Some(c)) => {
            return Err(format!("individual store with a chain `{c}`"))
        }
        (StoreCategory::Individual, None) => None,
    };
    let store_id = vars
        .get("store_id")
        .ok_or("store id is missing (key or x-amz-meta-store-id)")?
        .clone();
    if !valid_id(&store_id) {
        return Err(format!(
            "store id `{store_id}` must be 1-64 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    let date_raw = vars
        .get("business_date")
        .ok_or("business date is missing from the key")?;
    let business_date = NaiveDate::parse_from_str(date_raw, "%Y-%m-%d")
        .ok()
        .filter(|_| date_raw.len() == 10)
        .ok_or_else(|| format!("business date `{date_raw}` in the key is not YYYY-MM-DD"))?;
    let file_name = vars.get("file").cloned().unwrap_or_default();
    Ok(KeyMetadata {
        store_category,
        chain,
        store_id,
        business_date,
        file_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> KeyTemplate {
        KeyTemplate::parse(KeyTemplate::DEFAULT).unwrap()
    }

    #[test]
    fn chain_and_individual_keys() {
        let none = HashMap::new();
        let m = resolve(
            &t(),
            "incoming/retail_chain/walmart/s-17/2026-11-01/skus.csv",
            &none,
        )
        .unwrap();
        assert_eq!(m.store_category, StoreCategory::RetailChain);
        assert_eq!(m.chain.as_deref(), Some("walmart"));
        assert_eq!(m.store_id, "s-17");
        let m = resolve(
            &t(),
            "incoming/individual/corner-shop/2026-11-01/a.csv.gz",
            &none,
        )
        .unwrap();
        assert_eq!(m.chain, None);
        assert_eq!(m.file_name, "a.csv.gz");
        assert_eq!(t().incoming_prefix, "incoming/");
    }

    #[test]
    fn metadata_overrides_the_key() {
        let meta = HashMap::from([("store-id".to_string(), "override-1".to_string())]);
        let m = resolve(
            &t(),
            "incoming/individual/corner-shop/2026-11-01/a.csv",
            &meta,
        )
        .unwrap();
        assert_eq!(m.store_id, "override-1");
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let none = HashMap::new();
        assert!(
            resolve(&t(), "incoming/individual/../2026-11-01/a.csv", &none)
                .unwrap_err()
                .contains("..")
        );
        assert!(
            resolve(&t(), "incoming/wholesale/x/2026-11-01/a.csv", &none)
                .unwrap_err()
                .contains("wholesale")
        );
        assert!(
            resolve(&t(), "incoming/individual/x/2026-13-01/a.csv", &none)
                .unwrap_err()
                .contains("2026-13-01")
        );
        assert!(
            resolve(&t(), "incoming/retail_chain/x/2026-11-01/a.csv", &none)
                .unwrap_err()
                .contains("chain")
        );
        assert!(resolve(&t(), "other/a.csv", &none)
            .unwrap_err()
            .contains("template"));
    }

    #[test]
    fn buckets_map_to_countries() {
        let b =
            BucketCountries::new("skus-{country}", &[("legacy-uk".into(), "gb".into())]).unwrap();
        assert_eq!(b.country("skus-de").unwrap(), "DE");
        assert_eq!(b.country("legacy-uk").unwrap(), "GB");
        assert!(b.country("skus-xx").unwrap_err().contains("ISO 3166"));
        assert!(b.country("photos").unwrap_err().contains("template"));
        assert_eq!(b.bucket_for("FR"), "skus-fr");
    }
}
