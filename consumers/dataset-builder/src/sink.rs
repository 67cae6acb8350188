//! The dataset sink: Hive-partitioned Parquet under a root (local directory or S3 prefix).
//!
//! Layout: `country=<CC>/business_date=<YYYY-MM-DD>/part-p<kafka partition>.parquet`, then
//! `part-p<kafka partition>-<n>.parquet` once a file reaches the target size. Records are keyed by
//! (country, store, SKU), so every natural key lives in exactly one Kafka partition, and a key
//! stays in the file of that partition and day it first went to: exactly one file of its day. A
//! batch merges into each file it touches (the newest version per (store_id, sku) wins); every file
//! of that day whose rows or category medians changed is rewritten with one atomic put: readers see
//! the old file or the new one, never a part. One builder writes a dataset root (the group runs one
//! member; the day's medians span every file of the day, so the builder rewrites files of
//! partitions other than the batch's). Then `country=<CC>/_manifest.json` and `_dataset_card.md`
//! are rewritten. Only after all of that does the consume loop store the offsets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use crate::rows::{category_medians, FileRows, Split};

/// Default size a file grows to before the next file of its partition and day is started.
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;

/// One file: a country, a business day, a Kafka partition, and the file's number among that
/// partition's files of the day (a new one is started when the last reaches the target size).
type ShardKey = (String, NaiveDate, i32, u32);

/// The files of a country, day and Kafka partition.
type GroupKey = (String, NaiveDate, i32);

/// Bytes per row assumed for the target file size until a file has been written or read.
const ROW_BYTES_GUESS: f64 = 100.0;

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
    /// The directory behind `store` when the root is local: files are then written by
    /// [`write_local_atomically`] (hidden temporary name, fsync, rename, fsync of the directory).
    local_dir: Option<std::path::PathBuf>,
    root: Path,
    split: Split,
    encoding: Encoding,
    /// Shards read or written by this process (dropped on every rebalance: another builder may
    /// have written them since).
    shards: HashMap<ShardKey, FileRows>,
    manifests: HashMap<String, Manifest>,
    /// The category medians each file was last written with.
    written_medians: HashMap<ShardKey, HashMap<String, rust_decimal::Decimal>>,
    /// Most rows kept in memory between batches; beyond it, shards are re-read on demand.
    cache_rows: usize,
    /// Size a file grows to before new keys of its partition and day start the next file.
    target_file_bytes: u64,
    /// Compressed bytes per row of the last file written or read (to size files).
    row_bytes: Option<f64>,
    /// The one-writer lease on the root (none in unit tests and benchmarks).
    lease: Option<crate::lease::Lease>,
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
            local_dir: None,
            root,
            split,
            encoding,
            shards: HashMap::new(),
            manifests: HashMap::new(),
            written_medians: HashMap::new(),
            cache_rows,
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            row_bytes: None,
            lease: None,
        }
    }

    /// The size a file grows to before the next file of its Kafka partition and day is started.
    pub fn with_target_file_bytes(mut self, bytes: u64) -> Self {
        self.target_file_bytes = bytes.max(1);
        self
    }

    /// Rows a file holds at the target size, by the last bytes-per-row seen.
    fn rows_per_file(&self) -> usize {
        let per_row = self.row_bytes.unwrap_or(ROW_BYTES_GUESS).max(1.0);
        ((self.target_file_bytes as f64 / per_row) as usize).max(1)
    }

    fn note_file_size(&mut self, bytes: usize, rows: usize) {
        if rows >= 100 {
            self.row_bytes = Some(bytes as f64 / rows as f64);
        }
    }

    /// Writes only while holding the root's one-writer lease.
    pub fn with_lease(mut self, lease: crate::lease::Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Marks the root as the local directory `dir` (the one `store` is opened on).
    pub fn with_local_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.local_dir = Some(dir);
        self
    }

    /// Puts a whole object atomically and durably: readers see the old object or the new one.
    async fn put(&self, path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
        match &self.local_dir {
            Some(dir) => {
                let target = path
                    .parts()
                    .fold(dir.clone(), |p, part| p.join(part.as_ref()));
                tokio::task::spawn_blocking(move || write_local_atomically(&target, &bytes))
                    .await
                    .context("the write task stopped")?
            }
            None => {
                self.store.put(path, PutPayload::from(bytes)).await?;
                Ok(())
            }
        }
    }

    fn day_dir(&self, country: &str, day: NaiveDate) -> Path {
        self.root
            .child(format!("country={country}"))
            .child(format!("business_date={day}"))
    }

    /// `part-p<partition>.parquet` for a partition's first file of a day, then
    /// `part-p<partition>-<n>.parquet`.
    fn file_name(partition: i32, n: u32) -> String {
        match n {
            0 => format!("part-p{partition}.parquet"),
            n => format!("part-p{partition}-{n}.parquet"),
        }
    }

    /// The partition and file number of a name made by [`DatasetSink::file_name`].
    fn parse_file_name(name: &str) -> Option<(i32, u32)> {
        let stem = name.strip_prefix("part-p")?.strip_suffix(".parquet")?;
        match stem.split_once('-') {
            None => Some((stem.parse().ok()?, 0)),
            Some((p, n)) => {
                let n: u32 = n.parse().ok()?;
                (n > 0).then_some(())?;
                Some((p.parse().ok()?, n))
            }
        }
    }

    /// Removes the temporary files a killed writer left in `dir` (hidden, so object-store
    /// listings may skip them). Local roots only: an S3 put leaves nothing behind.
    fn remove_local_leftovers(&self, dir: &Path) {
        let Some(local) = &self.local_dir else {
            return;
        };
        let d = dir
            .parts()
            .fold(local.clone(), |p, part| p.join(part.as_ref()));
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if (name.starts_with('.') && name.contains(".tmp-")) || name.contains('#') {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(file = %e.path().display(), error = %err, "Could not remove a stale temporary file.");
                }
            }
        }
    }

    /// Loads every shard file of a day that is not in memory yet.
    async fn load_day(&mut self, country: &str, day: NaiveDate) -> anyhow::Result<()> {
        let dir = self.day_dir(country, day);
        self.remove_local_leftovers(&dir);
        let listed: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        for meta in listed {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if name.starts_with('.') || name.contains('#') {
                // A temporary file a killed writer left behind: never a dataset file.
                if let Err(e) = self.store.delete(&meta.location).await {
                    tracing::warn!(file = %meta.location, error = %e, "Could not remove a stale temporary file.");
                }
                continue;
            }
            let Some((p, n)) = Self::parse_file_name(name) else {
                continue;
            };
            let key = (country.to_string(), day, p, n);
            if self.shards.contains_key(&key) {
                continue;
            }
            let bytes = self.store.get(&meta.location).await?.bytes().await?;
            let size = bytes.len();
            let (decoded, medians) = columns::decode_with_medians(bytes)
                .with_context(|| format!("reading {}", meta.location))?;
            // What medians the file was written with: a file a crash left with an older
            // median of its day is rewritten at the next batch of the day, replay or not.
            match medians {
                Some(m) => {
                    self.written_medians.insert(key.clone(), m);
                }
                None => {
                    self.written_medians.remove(&key);
                }
            }
            let mut part = FileRows::with_capacity(decoded.len());
            for r in &decoded {
                part.upsert(r);
            }
            part.settle();
            self.note_file_size(size, part.len());
            self.shards.insert(key, part);
        }
        Ok(())
    }

    async fn load_manifest(&mut self, country: &str) -> anyhow::Result<()> {
        if self.manifests.contains_key(country) {
            return Ok(());
        }
        // The manifest and the card are written beside the day directories.
        self.remove_local_leftovers(&self.root.child(format!("country={country}")));
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

    /// One batch: the rows merged into their files, every file whose rows or medians changed
    /// rewritten, then the manifests with the offsets the batch covers.
    async fn write_inner(
        &mut self,
        topic: &str,
        batch: &[Consumed<SkuRecord>],
        offsets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        if let Some(lease) = &mut self.lease {
            lease.ensure().await?;
        }
        let touched = by_partition_and_day(batch);
        let days: BTreeSet<(String, NaiveDate)> =
            touched.keys().map(|(c, d, _)| (c.clone(), *d)).collect();
        for (country, day) in &days {
            self.load_day(country, *day).await?;
            self.load_manifest(country).await?;
        }
        let mut changed = BTreeSet::new();
        for (group, records) in touched {
            changed.extend(self.merge(group, records));
        }
        for (country, day) in &days {
            self.rewrite_day(country, *day, &changed).await?;
        }
        for (country, day) in &days {
            self.update_manifest(country, *day, topic, offsets);
        }
        let countries: BTreeSet<&String> = days.iter().map(|(c, _)| c).collect();
        for country in countries {
            self.put_manifest(country).await?;
        }
        self.trim_cache();
        Ok(())
    }

    /// Merges one partition's records of a country and day into its files; returns the files
    /// whose rows changed.
    ///
    /// A key stays in the file that has it; a new key goes to the last file until that holds a
    /// target size of rows, then to a new one. Every file is thus replaced on its own, and no
    /// key is ever in two files, not even for a moment.
    fn merge(&mut self, (country, day, p): GroupKey, records: Vec<&SkuRecord>) -> Vec<ShardKey> {
        let rows_per_file = self.rows_per_file();
        let key = |n: u32| (country.clone(), day, p, n);
        // This partition's files of the day, in order, taken out of the map for the merge.
        let mut numbers: Vec<u32> = self
            .shards
            .keys()
            .filter(|(c, d, q, _)| *c == country && *d == day && *q == p)
            .map(|k| k.3)
            .collect();
        numbers.sort_unstable();
        let mut files: Vec<(u32, FileRows, bool)> = numbers
            .into_iter()
            .filter_map(|n| self.shards.remove(&key(n)).map(|s| (n, s, false)))
            .collect();
        if files.is_empty() {
            files.push((0, FileRows::default(), false));
        }
        if let Some((_, open, _)) = files.last_mut() {
            open.reserve(records.len());
        }
        for r in records {
            let last = files.len() - 1;
            let i = match files[..last].iter().position(|(_, s, _)| s.holds(r)) {
                Some(i) => i,
                None if files[last].1.len() >= rows_per_file && !files[last].1.holds(r) => {
                    files.push((files[last].0 + 1, FileRows::default(), false));
                    last + 1
                }
                None => last,
            };
            let (_, rows, changed) = &mut files[i];
            *changed |= rows.upsert(r);
        }
        let mut changed_files = Vec::new();
        for (n, mut rows, changed) in files {
            if changed {
                rows.settle();
                changed_files.push(key(n));
            }
            if !rows.is_empty() {
                self.shards.insert(key(n), rows);
            }
        }
        changed_files
    }

    /// Rewrites every file of a country and day whose rows changed or whose category medians
    /// (over the whole day, across its files) are not those it was written with. Even a pure
    /// replay checks every file of the day: a crash between two files of a day whose median
    /// moved leaves the later ones with the older median.
    async fn rewrite_day(
        &mut self,
        country: &str,
        day: NaiveDate,
        changed: &BTreeSet<ShardKey>,
    ) -> anyhow::Result<()> {
        let medians: HashMap<String, rust_decimal::Decimal> = category_medians(
            self.shards
                .iter()
                .filter(|((c, d, _, _), _)| c == country && *d == day)
                .flat_map(|(_, p)| p.rows()),
        )
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let keys: Vec<ShardKey> = self
            .shards
            .keys()
            .filter(|(c, d, _, _)| c == country && *d == day)
            .cloned()
            .collect();
        for key in keys {
            let shard = &self.shards[&key];
            if shard.is_empty() {
                continue;
            }
            // The file's categories first, so that each is copied once, not once per row.
            let categories: std::collections::HashSet<&str> =
                shard.rows().map(|r| r.category()).collect();
            let used: HashMap<String, rust_decimal::Decimal> = categories
                .into_iter()
                .filter_map(|c| medians.get(c).map(|m| (c.to_string(), *m)))
                .collect();
            if !changed.contains(&key) && self.written_medians.get(&key) == Some(&used) {
                continue;
            }
            let rows = shard.featured_with(|c| medians.get(c).copied(), self.split);
            let file = columns::encode_with_medians(&rows, self.encoding, &used)?;
            self.note_file_size(file.len(), rows.len());
            let path = self
                .day_dir(country, day)
                .child(Self::file_name(key.2, key.3));
            self.put(&path, file)
                .await
                .with_context(|| format!("writing {path}"))?;
            self.written_medians.insert(key, used);
        }
        Ok(())
    }

    /// Drops the cached rows once they pass `--cache-rows`; files are read again when needed.
    fn trim_cache(&mut self) {
        let cached: usize = self.shards.values().map(FileRows::len).sum();
        if cached > self.cache_rows {
            self.shards.clear();
            self.written_medians.clear();
        }
    }

    fn update_manifest(
        &mut self,
        country: &str,
        day: NaiveDate,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) {
        let mut entry = DayEntry::default();
        let mut files: Vec<((i32, u32), &FileRows)> = self
            .shards
            .iter()
            .filter(|((c, d, _, _), _)| c == country && *d == day)
            .map(|((_, _, p, n), part)| ((*p, *n), part))
            .collect();
        files.sort_by_key(|(f, _)| *f);
        for ((p, n), part) in files {
            if part.is_empty() {
                continue;
            }
            entry.files.push(Self::file_name(p, n));
            entry.rows += part.len() as u64;
            for r in part.rows() {
                *entry
                    .splits
                    .entry(self.split.of_bucket(r.bucket()).to_string())
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
        self.put(&dir.child("_manifest.json"), json).await?;
        let card = crate::card::dataset_card(country, self.split);
        self.put(&dir.child("_dataset_card.md"), card.into_bytes())
            .await?;
        Ok(())
    }
}

/// Writes `bytes` to `target` so that no reader ever sees a partial file, and the file and its
/// name survive a crash once this returns: a hidden temporary file in the same directory (names
/// starting with `.` are skipped by pyarrow, DuckDB and Spark), fsync, rename over the target,
/// fsync of the directory.
pub fn write_local_atomically(target: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = target
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", target.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no file name", target.display()))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, target)
        .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<object_store::Error>().is_some_and(|oe| {
            matches!(
                oe,
                object_store::Error::Generic { .. } | object_store::Error::NotFound { .. }
            )
        }) || c.downcast_ref::<std::io::Error>().is_some()
            // Another builder holds the root: wait for it to stop.
            || c.downcast_ref::<crate::lease::Held>().is_some()
    })
}

#[async_trait]
impl Sink for DatasetSink {
    type Message = SkuRecord;

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

    async fn ping(&mut self) -> Result<(), SinkError> {
        self.store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| SinkError::Retriable(anyhow::anyhow!("listing the dataset root: {e}")))?;
        // Renews the lease while idle (or reports who holds it).
        if let Some(lease) = &mut self.lease {
            lease.ensure().await.map_err(SinkError::Retriable)?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.release().await;
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

/// The batch's records by the file group they go to: country, business date, Kafka partition.
fn by_partition_and_day(batch: &[Consumed<SkuRecord>]) -> BTreeMap<GroupKey, Vec<&SkuRecord>> {
    let mut touched: BTreeMap<GroupKey, Vec<&SkuRecord>> = BTreeMap::new();
    for c in batch {
        let r = &c.value;
        touched
            .entry((r.country.clone(), r.business_date, c.partition))
            .or_default()
            .push(r);
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::Encoding;

    fn rec(sku: &str, version: i64) -> SkuRecord {
        let mut r = skuflow_samples::record("SE", 0, version);
        r.sku = sku.into();
        r.category = "c".into();
        r.currency = "SEK".into();
        r
    }

    #[tokio::test]
    async fn leftovers_of_a_killed_writer_are_removed_and_files_replace_whole() {
        let root = tempfile::tempdir().unwrap();
        let day = root.path().join("country=SE/business_date=2026-11-01");
        std::fs::create_dir_all(&day).unwrap();
        // What a SIGKILL mid-write can leave: our hidden temporary file, an object-store
        // staging file, and an interrupted older layout.
        std::fs::write(day.join(".part-p0.parquet.tmp-42"), b"PAR1 half").unwrap();
        std::fs::write(day.join("part-p0.parquet#1"), b"").unwrap();
        let store =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root.path()).unwrap());
        let mut sink = DatasetSink::new(
            store,
            Path::default(),
            Split::default(),
            Encoding {
                row_group_rows: 100,
                zstd_level: 3,
            },
            1_000_000,
        )
        .with_local_dir(root.path().to_path_buf());
        let batch: Vec<Consumed<SkuRecord>> = [rec("A", 1), rec("B", 1)]
            .into_iter()
            .enumerate()
            .map(|(i, value)| Consumed {
                partition: 0,
                offset: i as i64,
                value,
            })
            .collect();
        let offsets = BTreeMap::from([(0, 2)]);
        assert!(sink.write("t", &batch, &offsets).await.unwrap().is_empty());
        let mut names: Vec<String> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["part-p0.parquet".to_string()]);
        // A correction replaces the file: still one file, one row per key, the newer value.
        let mut newer = rec("A", 2);
        newer.unit_price = rust_decimal::Decimal::new(30000, 4);
        let batch = vec![Consumed {
            partition: 0,
            offset: 2,
            value: newer,
        }];
        sink.write("t", &batch, &BTreeMap::from([(0, 3)]))
            .await
            .unwrap();
        let bytes = std::fs::read(day.join("part-p0.parquet")).unwrap();
        let rows = columns::decode(bytes::Bytes::from(bytes)).unwrap();
        assert_eq!(rows.len(), 2);
        let a = rows.iter().find(|r| r.sku == "A").unwrap();
        assert_eq!(
            (a.record_version, a.unit_price.to_string().as_str()),
            (2, "3.0000")
        );
        let manifest: Manifest = serde_json::from_slice(
            &std::fs::read(root.path().join("country=SE/_manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.rows, 2);
        assert_eq!(manifest.last_offsets["t/0"], 3);
        assert_eq!(std::fs::read_dir(&day).unwrap().count(), 1);
    }

    fn priced(sku: &str, version: i64, cents: i64) -> SkuRecord {
        let mut r = rec(sku, version);
        r.unit_price = rust_decimal::Decimal::new(cents, 2);
        r
    }

    fn fresh_sink(root: &std::path::Path) -> DatasetSink {
        let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root).unwrap());
        DatasetSink::new(
            store,
            Path::default(),
            Split::default(),
            Encoding {
                row_group_rows: 100,
                zstd_level: 3,
            },
            1_000_000,
        )
        .with_local_dir(root.to_path_buf())
    }

    fn at(partition: i32, offset: i64, value: SkuRecord) -> Consumed<SkuRecord> {
        Consumed {
            partition,
            offset,
            value,
        }
    }

    #[test]
    fn file_names_round_trip() {
        for (p, n) in [(0, 0), (0, 1), (11, 0), (11, 27)] {
            let name = DatasetSink::file_name(p, n);
            assert_eq!(DatasetSink::parse_file_name(&name), Some((p, n)), "{name}");
        }
        assert_eq!(DatasetSink::file_name(2, 0), "part-p2.parquet");
        for bad in [
            "part-p2-0.parquet",
            "part-px.parquet",
            "part-p2-.parquet",
            "part-p2.parquet.tmp",
            "_manifest.json",
        ] {
            assert_eq!(DatasetSink::parse_file_name(bad), None, "{bad}");
        }
    }

    /// Every key of a day directory, with the file it is in; panics on a key in two files.
    fn keys_by_file(day: &std::path::Path) -> BTreeMap<String, (String, SkuRecord)> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(day).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            let bytes = std::fs::read(day.join(&name)).unwrap();
            for r in columns::decode(bytes::Bytes::from(bytes)).unwrap() {
                let sku = r.sku.clone();
                let again = out.insert(sku.clone(), (name.clone(), r));
                assert!(again.is_none(), "{sku} is in two files");
            }
        }
        out
    }

    #[tokio::test]
    async fn files_grow_to_the_target_size_and_keys_never_move_between_them() {
        let root = tempfile::tempdir().unwrap();
        let day = root.path().join("country=SE/business_date=2026-11-01");
        let sized = |root: &std::path::Path| fresh_sink(root).with_target_file_bytes(20_000);
        let mut sink = sized(root.path());
        let mut offset = 0;
        let mut batch = |skus: std::ops::Range<u32>, version: i64, cents: i64| {
            let b: Vec<Consumed<SkuRecord>> = skus
                .map(|i| {
                    offset += 1;
                    at(
                        0,
                        offset,
                        priced(&format!("SKU-{i:05}"), version, cents + i64::from(i)),
                    )
                })
                .collect();
            (b, BTreeMap::from([(0, offset + 1)]))
        };
        for start in (0..1200).step_by(300) {
            let (b, o) = batch(start..start + 300, 1, 100);
            sink.write("t", &b, &o).await.unwrap();
        }
        let first = keys_by_file(&day);
        assert_eq!(first.len(), 1200);
        let files: std::collections::BTreeSet<&String> = first.values().map(|(f, _)| f).collect();
        assert!(files.len() >= 3, "{files:?}");
        for f in &files {
            let size = std::fs::metadata(day.join(f)).unwrap().len();
            assert!(size < 60_000, "{f} is {size} bytes, target 20,000");
        }
        // A correction of every tenth key, from a restarted builder: each stays in its file.
        let mut restarted = sized(root.path());
        let fix: Vec<Consumed<SkuRecord>> = (0..1200u32)
            .step_by(10)
            .map(|i| at(0, 5000 + i64::from(i), priced(&format!("SKU-{i:05}"), 2, 1)))
            .collect();
        restarted
            .write("t", &fix, &BTreeMap::from([(0, 7000)]))
            .await
            .unwrap();
        let second = keys_by_file(&day);
        assert_eq!(second.len(), 1200);
        for (sku, (file, r)) in &second {
            assert_eq!(file, &first[sku].0, "{sku} moved");
            let i: u32 = sku[4..].parse().unwrap();
            let want = if i.is_multiple_of(10) {
                (2, 1)
            } else {
                (1, 100 + i64::from(i))
            };
            assert_eq!(
                (r.record_version, r.unit_price),
                (want.0, rust_decimal::Decimal::new(want.1, 2)),
                "{sku}"
            );
        }
        let manifest: Manifest = serde_json::from_slice(
            &std::fs::read(root.path().join("country=SE/_manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.rows, 1200);
        let listed: std::collections::BTreeSet<&String> =
            manifest.partitions["2026-11-01"].files.iter().collect();
        assert_eq!(listed, files);
    }

    #[tokio::test]
    async fn a_file_left_with_an_older_median_by_a_crash_is_rewritten_on_replay() {
        let root = tempfile::tempdir().unwrap();
        let day = root.path().join("country=SE/business_date=2026-11-01");
        let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
        // Prices 10 (p0), 20 and 30 (p1): the category median is 20.
        let first = vec![
            at(0, 0, priced("A", 1, 1000)),
            at(1, 0, priced("B", 1, 2000)),
            at(1, 1, priced("C", 1, 3000)),
        ];
        let mut sink = fresh_sink(root.path());
        sink.write("t", &first, &BTreeMap::from([(0, 1), (1, 2)]))
            .await
            .unwrap();
        let p1 = || bytes::Bytes::from(std::fs::read(day.join("part-p1.parquet")).unwrap());
        assert_eq!(
            columns::medians_of(&p1()).unwrap(),
            Some(HashMap::from([("c".to_string(), d("20"))]))
        );
        // A correction of A to 40 moves the median to 30. The builder writes p0 and is killed
        // before it rewrites p1 and the manifest: p0 as it would have written it.
        let a2 = priced("A", 2, 4000);
        let medians = HashMap::from([("c".to_string(), d("30"))]);
        let mut part = FileRows::default();
        part.upsert(&a2);
        let rows = part.featured_with(|c| medians.get(c).copied(), Split::default());
        let file = columns::encode_with_medians(
            &rows,
            Encoding {
                row_group_rows: 100,
                zstd_level: 3,
            },
            &medians,
        )
        .unwrap();
        std::fs::write(day.join("part-p0.parquet"), file).unwrap();
        // The restarted builder gets the correction again (its offset was not stored).
        let mut restarted = fresh_sink(root.path());
        restarted
            .write("t", &[at(0, 1, a2)], &BTreeMap::from([(0, 2)]))
            .await
            .unwrap();
        assert_eq!(columns::medians_of(&p1()).unwrap(), Some(medians));
        let b = columns::decode(p1()).unwrap();
        assert_eq!(b.len(), 2);
    }
}
