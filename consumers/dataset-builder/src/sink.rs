//! The dataset sink: Hive-partitioned Parquet under a root (local directory or S3 prefix).
//!
//! Layout: `country=<CC>/business_date=<YYYY-MM-DD>/part-p<kafka partition>.parquet`. Records
//! are keyed by (country, store, SKU), so every natural key lives in exactly one Kafka partition
//! and therefore in exactly one file of its day. A batch merges into each file it touches (the
//! newest version per (store_id, sku) wins); every file of that day whose rows or category
//! medians changed is rewritten with one atomic put: readers see the old file or the new one,
//! never a part. One builder writes a dataset root (the group runs one member; the day's
//! medians span every file of the day, so the builder rewrites files of partitions other than
//! the batch's).
//! Then `country=<CC>/_manifest.json` and `_dataset_card.md` are rewritten. Only after all of that
//! does the consume loop store the offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use skuflow_platform::consume::{Consumed, Refusal, Sink, SinkError};
use skuflow_schemas::SkuRecord;

use crate::columns::{self, Encoding};
use crate::rows::{category_medians, Featured, Partition, Split};

/// One file: a country, a business day, a Kafka partition.
type ShardKey = (String, NaiveDate, i32);

/// Counts of one business day in the manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DayEntry {
    pub rows: u64,
    pub files: Vec<String>,
    pub splits: BTreeMap<String, u64>,
}

/// `country=<CC>/_manifest.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub country: String,
    pub record_schema: String,
    pub columns: Vec<ManifestColumn>,
    pub rows: u64,
    pub splits: BTreeMap<String, u64>,
    pub partitions: BTreeMap<String, DayEntry>,
    /// Next offsets per Kafka partition of the records topic covered by these files.
    pub last_offsets: BTreeMap<String, i64>,
    pub built_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ManifestColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

pub struct DatasetSink {
    store: Arc<dyn ObjectStore>,
    root: Path,
    split: Split,
    encoding: Encoding,
    /// Shards read or written by this process (dropped on every rebalance: another builder may
    /// have written them since).
    shards: HashMap<ShardKey, Partition>,
    manifests: HashMap<String, Manifest>,
    /// The category medians each file was last written with.
    written_medians: HashMap<ShardKey, HashMap<String, rust_decimal::Decimal>>,
    /// Most rows kept in memory between batches; beyond it, shards are re-read on demand.
    cache_rows: usize,
}

impl DatasetSink {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        root: Path,
        split: Split,
        encoding: Encoding,
        cache_rows: usize,
    ) -> Self {
        DatasetSink {
            store,
            root,
            split,
            encoding,
            shards: HashMap::new(),
            manifests: HashMap::new(),
            written_medians: HashMap::new(),
            cache_rows,
        }
    }

    fn day_dir(&self, country: &str, day: NaiveDate) -> Path {
        self.root
            .child(format!("country={country}"))
            .child(format!("business_date={day}"))
    }

    fn file_name(partition: i32) -> String {
        format!("part-p{partition}.parquet")
    }

    /// Loads every shard file of a day that is not in memory yet.
    async fn load_day(&mut self, country: &str, day: NaiveDate) -> anyhow::Result<()> {
        let dir = self.day_dir(country, day);
        let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        for meta in listed {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some(p) = name
                .strip_prefix("part-p")
                .and_then(|n| n.strip_suffix(".parquet"))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let key = (country.to_string(), day, p);
            if self.shards.contains_key(&key) {
                continue;
            }
            let bytes = self.store.get(&meta.location).await?.bytes().await?;
            let mut part = Partition::default();
            for r in columns::decode(bytes).with_context(|| format!("reading {}", meta.location))? {
                part.upsert(r);
            }
            self.shards.insert(key, part);
        }
        Ok(())
    }

    async fn load_manifest(&mut self, country: &str) -> anyhow::Result<()> {
        if self.manifests.contains_key(country) {
            return Ok(());
        }
        let path = self
            .root
            .child(format!("country={country}"))
            .child("_manifest.json");
        let m = match self.store.get(&path).await {
            Ok(r) => serde_json::from_slice(&r.bytes().await?)
                .with_context(|| format!("reading {path}"))?,
            Err(object_store::Error::NotFound { .. }) => Manifest::default(),
            Err(e) => return Err(e.into()),
        };
        self.manifests.insert(country.to_string(), m);
        Ok(())
    }

    async fn write_inner(
        &mut self,
        topic: &str,
        batch: &[Consumed<SkuRecord>],
        offsets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        // Which shards change.
        let mut touched: BTreeMap<ShardKey, Vec<&SkuRecord>> = BTreeMap::new();
        for c in batch {
            let r = &c.value;
            touched
                .entry((r.country.clone(), r.business_date, c.partition))
                .or_default()
                .push(r);
        }
        let days: std::collections::BTreeSet<(String, NaiveDate)> =
            touched.keys().map(|(c, d, _)| (c.clone(), *d)).collect();
        for (country, day) in &days {
            self.load_day(country, *day).await?;
            self.load_manifest(country).await?;
        }
        let mut changed_shards = std::collections::BTreeSet::new();
        for (key, records) in touched {
            let shard = self.shards.entry(key.clone()).or_default();
            let mut changed = false;
            for r in records {
                changed |= shard.upsert(r.clone());
            }
            if changed {
                changed_shards.insert(key);
            }
        }
        // Every file of a changed day whose rows or category medians changed is rewritten: the
        // medians are over the whole country and day, across its files.
        for (country, day) in &days {
            if !changed_shards
                .iter()
                .any(|(c, d, _)| c == country && d == day)
            {
                continue; // a pure replay: the files already hold all of it
            }
            let medians: HashMap<String, rust_decimal::Decimal> = category_medians(
                self.shards
                    .iter()
                    .filter(|((c, d, _), _)| c == country && d == day)
                    .flat_map(|(_, p)| p.rows.values()),
            )
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let keys: Vec<ShardKey> = self
                .shards
                .keys()
                .filter(|(c, d, _)| c == country && d == day)
                .cloned()
                .collect();
            for key in keys {
                let shard = &self.shards[&key];
                let used: HashMap<String, rust_decimal::Decimal> = shard
                    .rows
                    .values()
                    .filter_map(|r| medians.get(&r.category).map(|m| (r.category.clone(), *m)))
                    .collect();
                if !changed_shards.contains(&key) && self.written_medians.get(&key) == Some(&used) {
                    continue;
                }
                let mut rows: Vec<Featured<'_>> = shard
                    .rows
                    .values()
                    .map(|r| Featured::of(r, medians.get(&r.category).copied(), self.split))
                    .collect();
                rows.sort_by(|a, b| {
                    (&a.record.store_id, &a.record.sku).cmp(&(&b.record.store_id, &b.record.sku))
                });
                let file = columns::encode(&rows, self.encoding)?;
                let path = self.day_dir(country, *day).child(Self::file_name(key.2));
                self.store
                    .put(&path, PutPayload::from(file))
                    .await
                    .with_context(|| format!("writing {path}"))?;
                self.written_medians.insert(key, used);
            }
        }
        for (country, day) in &days {
            self.update_manifest(country, *day, topic, offsets);
        }
        let countries: std::collections::BTreeSet<&String> = days.iter().map(|(c, _)| c).collect();
        for country in countries {
            self.put_manifest(country).await?;
        }
        let cached: usize = self.shards.values().map(|p| p.rows.len()).sum();
        if cached > self.cache_rows {
            self.shards.clear();
            self.written_medians.clear();
        }
        Ok(())
    }

    fn update_manifest(
        &mut self,
        country: &str,
        day: NaiveDate,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) {
        let mut entry = DayEntry::default();
        let mut files: Vec<(i32, &Partition)> = self
            .shards
            .iter()
            .filter(|((c, d, _), _)| c == country && *d == day)
            .map(|((_, _, p), part)| (*p, part))
            .collect();
        files.sort_by_key(|(p, _)| *p);
        for (p, part) in files {
            if part.rows.is_empty() {
                continue;
            }
            entry.files.push(Self::file_name(p));
            entry.rows += part.rows.len() as u64;
            for r in part.rows.values() {
                *entry
                    .splits
                    .entry(self.split.of(&r.sku).to_string())
                    .or_default() += 1;
            }
        }
        let m = self.manifests.entry(country.to_string()).or_default();
        m.partitions.insert(day.to_string(), entry);
        for (p, o) in offsets {
            m.last_offsets.insert(format!("{topic}/{p}"), *o);
        }
    }

    async fn put_manifest(&mut self, country: &str) -> anyhow::Result<()> {
        let m = self
            .manifests
            .get_mut(country)
            .ok_or_else(|| anyhow!("no manifest for {country}"))?;
        m.country = country.to_string();
        m.record_schema = skuflow_schemas::RECORD_SCHEMA.to_string();
        m.columns = columns::dataset_schema()
            .fields()
            .iter()
            .map(|f| ManifestColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();
        m.rows = m.partitions.values().map(|d| d.rows).sum();
        m.splits.clear();
        for d in m.partitions.values() {
            for (s, n) in &d.splits {
                *m.splits.entry(s.clone()).or_default() += n;
            }
        }
        m.built_at = Utc::now().to_rfc3339();
        let dir = self.root.child(format!("country={country}"));
        let json = serde_json::to_vec_pretty(m)?;
        self.store
            .put(&dir.child("_manifest.json"), PutPayload::from(json))
            .await?;
        let card = crate::card::dataset_card(country, self.split);
        self.store
            .put(
                &dir.child("_dataset_card.md"),
                PutPayload::from(card.into_bytes()),
            )
            .await?;
        Ok(())
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<object_store::Error>().is_some_and(|oe| {
            matches!(
                oe,
                object_store::Error::Generic { .. } | object_store::Error::NotFound { .. }
            )
        }) || c.downcast_ref::<std::io::Error>().is_some()
    })
}

#[async_trait]
impl Sink for DatasetSink {
    fn name(&self) -> &'static str {
        "dataset-builder"
    }

    async fn write(
        &mut self,
        topic: &str,
        batch: &[Consumed<SkuRecord>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        match self.write_inner(topic, batch, offsets).await {
            Ok(()) => Ok(Vec::new()),
            Err(e) => {
                // What is in memory may be ahead of what is stored: start over from storage.
                self.shards.clear();
                self.manifests.clear();
                self.written_medians.clear();
                if is_transient(&e) {
                    Err(SinkError::Retriable(e))
                } else {
                    Err(SinkError::Fatal(e))
                }
            }
        }
    }

    async fn durable_offsets(&mut self, _topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        // Called after every rebalance: another builder may have written our files meanwhile.
        self.shards.clear();
        self.manifests.clear();
        self.written_medians.clear();
        Ok(HashMap::new())
    }
}
