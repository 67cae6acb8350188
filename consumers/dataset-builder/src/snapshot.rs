//! What a data scientist does with the table's versions: list them, and export one (by version
//! or by time) as a plain Hive-partitioned Parquet directory with a manifest naming the version,
//! so a training run can be repeated on exactly the data it saw.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::Serialize;

use crate::table::{self, Location};

/// Which version to read: the latest, a version number, or the one current at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    Latest,
    Version(i64),
    AsOf(DateTime<Utc>),
}

/// The table at `location` as of `pick`.
pub async fn open(location: &Location, pick: Pick) -> anyhow::Result<deltalake_core::DeltaTable> {
    let mut t = location.table()?;
    let read = match pick {
        Pick::Latest => t.load().await,
        Pick::Version(v) => t.load_version(v).await,
        Pick::AsOf(at) => t.load_with_datetime(at).await,
    };
    match read {
        Ok(()) => {
            if let Pick::AsOf(at) = pick {
                let v = t.version().unwrap_or(0);
                let committed = t.snapshot()?.version_timestamp(v);
                if committed.is_some_and(|c| c > at.timestamp_millis()) {
                    bail!("{location:?} has no version as of {at}: its first was committed later");
                }
            }
            Ok(t)
        }
        Err(deltalake_core::DeltaTableError::NotATable(_)) => {
            bail!("{location:?} holds no dataset table (no _delta_log)")
        }
        Err(e) => Err(e).with_context(|| format!("reading {location:?} at {pick:?}")),
    }
}

/// The versions of the table, newest first.
pub async fn versions(
    location: &Location,
    limit: usize,
) -> anyhow::Result<Vec<table::VersionInfo>> {
    let t = open(location, Pick::Latest).await?;
    table::history(&t, Some(limit)).await
}

/// `_export.json` of an exported snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub source: String,
    pub table_version: i64,
    pub version_timestamp: Option<DateTime<Utc>>,
    pub country: Option<String>,
    pub files: Vec<String>,
    pub bytes: u64,
    /// Rows per country and business date, from the version's file statistics.
    pub rows: BTreeMap<String, BTreeMap<String, u64>>,
    pub exported_at: DateTime<Utc>,
}

/// Copies the data files of one version (of one country, or all) under `to` with their
/// `country=…/business_date=…/` paths, the countries' dataset cards, and `_export.json` last:
/// a directory with an `_export.json` is complete. Refuses a `to` that already holds one.
pub async fn export(
    location: &Location,
    pick: Pick,
    country: Option<&str>,
    to: &str,
) -> anyhow::Result<Exported> {
    let t = open(location, pick).await?;
    let version = t.version().unwrap_or(0);
    let target = skuflow_platform::store::open_root(to, "--to")?;
    let child = |rel: &str| -> anyhow::Result<Path> {
        let rel = Path::parse(rel).with_context(|| format!("a file name {rel:?}"))?;
        Ok(rel
            .parts()
            .fold(target.prefix.clone(), |p, part| p.child(part)))
    };
    let done = child("_export.json")?;
    if target.store.head(&done).await.is_ok() {
        bail!("{to} already holds an exported snapshot (_export.json): export into an empty place");
    }
    let source = t.log_store().object_store(None);
    let mut out = Exported {
        source: location.url.to_string(),
        table_version: version,
        version_timestamp: t
            .snapshot()?
            .version_timestamp(version)
            .and_then(DateTime::from_timestamp_millis),
        country: country.map(str::to_string),
        files: Vec::new(),
        bytes: 0,
        rows: BTreeMap::new(),
        exported_at: Utc::now(),
    };
    let mut days: Vec<_> = table::files_by_day(&t).await?.into_iter().collect();
    days.sort_by(|a, b| a.0.cmp(&b.0));
    let mut countries = std::collections::BTreeSet::new();
    for ((c, day), files) in days {
        if country.is_some_and(|want| want != c) {
            continue;
        }
        countries.insert(c.clone());
        for f in files {
            let from = Path::parse(&f.path).with_context(|| format!("a file name {:?}", f.path))?;
            let bytes = source
                .get(&from)
                .await
                .with_context(|| format!("reading {} of version {version}", f.path))?
                .bytes()
                .await?;
            out.bytes += bytes.len() as u64;
            target
                .store
                .put(&child(&f.path)?, PutPayload::from(bytes))
                .await
                .with_context(|| format!("writing {} under {to}", f.path))?;
            *out.rows
                .entry(c.clone())
                .or_default()
                .entry(day.to_string())
                .or_default() += f.rows.unwrap_or(0);
            out.files.push(f.path);
        }
    }
    if let Some(want) = country {
        if countries.is_empty() {
            bail!("version {version} holds no rows of country {want}");
        }
    }
    for c in &countries {
        let card = format!("country={c}/_dataset_card.md");
        if let Ok(r) = source.get(&Path::parse(&card)?).await {
            let text = String::from_utf8_lossy(&r.bytes().await?).to_string();
            let text = crate::card::for_version(&text, version);
            target
                .store
                .put(&child(&card)?, PutPayload::from(text.into_bytes()))
                .await?;
        }
    }
    target
        .store
        .put(&done, PutPayload::from(serde_json::to_vec_pretty(&out)?))
        .await
        .with_context(|| format!("writing _export.json under {to}"))?;
    Ok(out)
}

/// Parses `--as-of`: RFC 3339 (`2026-11-21T18:00:00Z`) or a date (its end, UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let end = d
            .and_hms_milli_opt(23, 59, 59, 999)
            .ok_or_else(|| format!("{s}: not a day"))?;
        return Ok(end.and_utc());
    }
    Err(format!(
        "{s:?}: want a time like 2026-11-21T18:00:00Z or a date like 2026-11-21"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::Split;
    use crate::sink::DatasetSink;
    use skuflow_platform::consume::{Consumed, Sink};
    use skuflow_schemas::SkuRecord;

    fn batch(country: &str, version: i64, offset: i64) -> Vec<Consumed<SkuRecord>> {
        (0..5)
            .map(|i| Consumed {
                partition: 0,
                offset: offset + i,
                value: skuflow_samples::record(country, i as u64, version),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_version_exports_as_it_was_and_twice_into_one_place_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let location = Location::parse(root.path().to_str().unwrap(), "--dataset-root").unwrap();
        let enc = crate::columns::Encoding {
            row_group_rows: 100,
            zstd_level: 3,
        };
        let mut sink = DatasetSink::new(location.clone(), Split::default(), enc, 1000);
        let offsets = |o| std::collections::BTreeMap::from([(0, o)]);
        sink.write("t", &batch("SE", 1, 0), &offsets(5))
            .await
            .unwrap();
        sink.write("t", &batch("FI", 1, 5), &offsets(10))
            .await
            .unwrap();
        // Version 3 corrects SE.
        sink.write("t", &batch("SE", 2, 10), &offsets(15))
            .await
            .unwrap();
        let listed = versions(&location, 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![3, 2, 1, 0]
        );
        assert_eq!(listed[0].info["skuflow.records"], 5);

        let to = tempfile::tempdir().unwrap();
        let out = export(
            &location,
            Pick::Version(2),
            Some("SE"),
            to.path().to_str().unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(out.table_version, 2);
        assert_eq!(out.rows["SE"].values().sum::<u64>(), 5);
        assert!(!out.rows.contains_key("FI"));
        for f in &out.files {
            let bytes = std::fs::read(to.path().join(f)).unwrap();
            for r in crate::columns::decode(bytes::Bytes::from(bytes)).unwrap() {
                assert_eq!(r.record_version, 1, "version 2 predates the correction");
            }
        }
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(to.path().join("_export.json")).unwrap())
                .unwrap();
        assert_eq!(written["table_version"], 2);
        let again = export(&location, Pick::Latest, None, to.path().to_str().unwrap()).await;
        assert!(again.unwrap_err().to_string().contains("already holds"));
        let elsewhere = tempfile::tempdir().unwrap();
        let none = export(
            &location,
            Pick::Version(2),
            Some("DK"),
            elsewhere.path().to_str().unwrap(),
        )
        .await;
        assert!(none
            .unwrap_err()
            .to_string()
            .contains("no rows of country DK"));
    }

    #[test]
    fn times_parse_as_rfc3339_or_the_end_of_a_day() {
        assert_eq!(
            parse_time("2026-11-21T18:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-21T17:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-21").unwrap().to_rfc3339(),
            "2026-11-21T23:59:59.999+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }
}
