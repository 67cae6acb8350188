//! The dataset sink: one Delta Lake table under a root (local directory or S3 prefix),
//! Hive-partitioned Parquet files named by the table's log ([`crate::table`]).
//!
//! Layout: `country=<CC>/business_date=<YYYY-MM-DD>/part-p<kafka partition>-<n>-<id>.parquet`:
//! file `n` of a Kafka partition's keys of that day, `<id>` new on every write. Records are keyed
//! by (country, store, SKU), so every natural key lives in exactly one Kafka partition, and a key
//! stays in the file of that partition and day it first went to: exactly one file of its day in
//! every version. A batch's new keys go to new files; a stored key's newer version is merged into
//! the file holding it (the newest version per (store_id, sku) wins). Each file whose rows or
//! features changed is written as a new file, and one commit adds the new files, removes the ones
//! they replace and records the batch's offsets: readers see the version before the batch or the
//! one after it, never a part. Scheduled compaction joins small files ([`DatasetSink::optimize`]).
//! Several builders may write one table: a batch is committed as one that read the whole table,
//! so of two concurrent batches one is written again on the other's version. Then
//! `country=<CC>/_manifest.json` and `_dataset_card.md` describe the committed version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use skuflow_platform::consume::{Consumed, Refusal, Sink, SinkError};
use skuflow_schemas::SkuRecord;

use crate::columns::{self, Encoding};
use crate::rows::{category_medians, key_hash, FileRows, History, Row, Split, HISTORY_DAYS};
use crate::table::{self, DataFile, Location};

/// Default size a file grows to before the next file of its partition and day is started.
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;

/// One file: a country, a business day, a Kafka partition, and the file's number among that
/// partition's files of the day (a new one is started when the last reaches the target size).
type ShardKey = (String, NaiveDate, i32, u32);

/// The files of a country, day and Kafka partition.
type GroupKey = (String, NaiveDate, i32);

/// Which file of a country, day and Kafka partition holds each key: ([`key_hash`], shard).
type KeyIndex = hashbrown::HashTable<(u64, u32)>;

/// Category medians of one country and day.
type Medians = HashMap<String, rust_decimal::Decimal>;

/// Rows of a file per split (what the manifest adds up without reading the rows again).
#[derive(Debug, Clone, Default)]
struct ShardStats {
    rows: u64,
    splits: BTreeMap<&'static str, u64>,
}

impl ShardStats {
    fn of(rows: &FileRows, split: Split) -> Self {
        let mut s = ShardStats {
            rows: rows.len() as u64,
            splits: BTreeMap::new(),
        };
        for r in rows.rows() {
            *s.splits.entry(split.of_bucket(r.bucket())).or_default() += 1;
        }
        s
    }
}

/// Days of history kept by default (versions younger than that stay readable).
pub const DEFAULT_KEEP_DAYS: u32 = 7;

/// How often small files are compacted by default, in seconds.
pub const DEFAULT_OPTIMIZE_EVERY_SECS: u64 = 900;

/// The table's scheduled maintenance: how much history to keep and how often to VACUUM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Maintenance {
    pub keep_days: u32,
    /// Zero: never.
    pub vacuum_every: std::time::Duration,
    /// How often small files are compacted (OPTIMIZE). Zero: never.
    pub optimize_every: std::time::Duration,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            keep_days: DEFAULT_KEEP_DAYS,
            vacuum_every: std::time::Duration::from_secs(3600),
            optimize_every: std::time::Duration::from_secs(DEFAULT_OPTIMIZE_EVERY_SECS),
        }
    }
}

/// Bytes per row assumed for the target file size until a file has been written or read.
const ROW_BYTES_GUESS: f64 = 100.0;

/// What one compaction round did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Compacted {
    /// Small files replaced.
    pub replaced: usize,
    /// Files written in their place.
    pub written: usize,
    /// Rows those files hold.
    pub rows: u64,
    /// The version that replaced them (0 when nothing was compacted).
    pub version: i64,
}

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
    /// The version of the Delta table this manifest describes.
    #[serde(default)]
    pub table_version: i64,
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
    location: Location,
    /// The table's directory as the root of a store: data files, manifests, cards, the lease.
    store: Arc<dyn ObjectStore>,
    /// The directory behind `store` when the root is local: files are then written by
    /// [`write_local_atomically`] (hidden temporary name, fsync, rename, fsync of the directory).
    local_dir: Option<std::path::PathBuf>,
    split: Split,
    encoding: Encoding,
    /// Shards read or written by this process (dropped on every rebalance: another builder may
    /// have written them since).
    shards: HashMap<ShardKey, FileRows>,
    manifests: HashMap<String, Manifest>,
    /// The category medians (of the day before) each file was last written with.
    written_medians: HashMap<ShardKey, Medians>,
    /// Which shard holds each key of a loaded day, per Kafka partition.
    index: HashMap<GroupKey, KeyIndex>,
    /// Rows per split of every loaded shard.
    stats: HashMap<ShardKey, ShardStats>,
    /// Category medians of loaded days (what the next day's rows are compared with), computed
    /// when first needed and dropped when the day changes.
    day_medians: HashMap<(String, NaiveDate), Arc<Medians>>,
    /// Most rows kept in memory between batches; beyond it, shards are re-read on demand.
    cache_rows: usize,
    /// Size a file grows to before new keys of its partition and day start the next file.
    target_file_bytes: u64,
    /// Compressed bytes per row of the last file written or read (to size files).
    row_bytes: Option<f64>,
    /// The one-writer lease on the root, when the operator asked for one.
    lease: Option<crate::lease::Lease>,
    /// Who writes (group, host, instance), recorded in every commit.
    writer: Option<crate::lease::Holder>,
    /// The table at the last version this builder read or committed (none until the first
    /// batch, and again after a failed one: it is then read afresh).
    table: Option<deltalake_core::DeltaTable>,
    /// The data files of that version by country and day.
    files: HashMap<(String, NaiveDate), Vec<DataFile>>,
    /// The file each loaded shard is in at that version.
    shard_files: HashMap<ShardKey, DataFile>,
    /// The adds and removes of the batch being written.
    pending: Vec<deltalake_core::kernel::Action>,
    /// The shards the batch being written changed in memory (dropped if its commit loses).
    batch_shards: BTreeSet<ShardKey>,
    /// The Kafka partitions this builder was last assigned (none: every partition's files are
    /// its to compact, as in tests and benchmarks).
    assigned: Option<BTreeSet<i32>>,
    /// The offsets the table holds, by transaction app id, as far as this builder has seen
    /// them (a batch never records offsets below them: see [`DatasetSink::commit`]).
    table_offsets: HashMap<String, i64>,
    maintenance: Maintenance,
    /// When this builder last vacuumed (none yet: at the first chance).
    vacuumed_at: Option<std::time::Instant>,
    /// When this builder last compacted small files (none: at the first chance, which a
    /// builder holding no partition never has).
    optimized_at: Option<std::time::Instant>,
}

impl DatasetSink {
    /// The sink of the table at `location` (created by the first batch when missing).
    pub fn new(location: Location, split: Split, encoding: Encoding, cache_rows: usize) -> Self {
        let store: Arc<dyn ObjectStore> = match location.log_store() {
            Ok(l) => l.object_store(None),
            // Only a URL without a path fails here; `Location::parse` never makes one.
            Err(_) => location.root_store.clone(),
        };
        let local_dir = (location.url.scheme() == "file")
            .then(|| location.url.to_file_path().ok())
            .flatten();
        DatasetSink {
            location,
            store,
            local_dir,
            split,
            encoding,
            shards: HashMap::new(),
            manifests: HashMap::new(),
            written_medians: HashMap::new(),
            index: HashMap::new(),
            stats: HashMap::new(),
            day_medians: HashMap::new(),
            cache_rows,
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            row_bytes: None,
            lease: None,
            writer: None,
            table: None,
            files: HashMap::new(),
            shard_files: HashMap::new(),
            pending: Vec::new(),
            batch_shards: BTreeSet::new(),
            table_offsets: HashMap::new(),
            assigned: None,
            maintenance: Maintenance::default(),
            vacuumed_at: None,
            optimized_at: None,
        }
    }

    /// How much history the table keeps and how often it is vacuumed.
    pub fn with_maintenance(mut self, maintenance: Maintenance) -> Self {
        self.maintenance = maintenance;
        self
    }

    /// The table's scheduled maintenance, each part when it is due: OPTIMIZE (small files
    /// compacted), then VACUUM (files replaced more than the kept days ago, and files no version
    /// named, deleted). A failure is logged and tried again at the next interval; it never
    /// holds up a batch.
    pub async fn maintain(&mut self) {
        self.maintain_optimize().await;
        self.maintain_vacuum().await;
    }

    async fn maintain_optimize(&mut self) {
        let every = self.maintenance.optimize_every;
        if every.is_zero()
            || self.table.is_none()
            // Nothing is its to compact: the first chance is kept for when partitions come.
            || self.assigned.as_ref().is_some_and(BTreeSet::is_empty)
            || self.optimized_at.is_some_and(|t| t.elapsed() < every)
        {
            return;
        }
        self.optimized_at = Some(std::time::Instant::now());
        match self.optimize().await {
            Ok(done) if done.written > 0 => {
                tracing::info!(
                    files_replaced = done.replaced,
                    files_written = done.written,
                    rows = done.rows,
                    version = done.version,
                    "Compacted the dataset table's small files."
                );
            }
            Ok(_) => {}
            // Another builder committed first: nothing in memory changed before the commit.
            Err(e) if lost_race(&e) => {
                tracing::info!(error = %format!("{e:#}"), "Compacting the dataset table lost the race to another builder's version; trying again at the next interval.");
            }
            Err(e) => {
                // What is in memory may name files the failed round replaced: read afresh.
                self.forget();
                tracing::warn!(error = %format!("{e:#}"), "Compacting the dataset table failed; trying again at the next interval.");
            }
        }
    }

    async fn maintain_vacuum(&mut self) {
        let every = self.maintenance.vacuum_every;
        if every.is_zero() || self.vacuumed_at.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        let Some(table) = &self.table else {
            return;
        };
        self.vacuumed_at = Some(std::time::Instant::now());
        let keep = chrono::Duration::days(i64::from(self.maintenance.keep_days));
        match table::vacuum(table, keep).await {
            Ok((t, done)) => {
                tracing::info!(
                    replaced_files_deleted = done.replaced,
                    orphaned_files_deleted = done.orphans,
                    keep_days = self.maintenance.keep_days,
                    version = t.version().unwrap_or(-1),
                    "Vacuumed the dataset table."
                );
                self.table = Some(t);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Vacuuming the dataset table failed; trying again at the next interval.");
            }
        }
    }

    /// Compacts small files (OPTIMIZE): per country, day and Kafka partition (of the partitions
    /// assigned to this builder), the files under the target size are joined, in shard order,
    /// into files of up to the target size, their rows and features copied as they are; one
    /// version (operation OPTIMIZE, `dataChange: false`) replaces them. Returns the files
    /// replaced and written.
    pub async fn optimize(&mut self) -> anyhow::Result<Compacted> {
        self.ensure_table().await?;
        let target = self.target_file_bytes as i64;
        // Bins of small files, each becoming one file.
        let mut bins: Vec<(GroupKey, Vec<(u32, DataFile)>)> = Vec::new();
        for ((country, day), files) in &self.files {
            let mut small: BTreeMap<i32, Vec<(u32, DataFile)>> = BTreeMap::new();
            for f in files {
                let name = f.name();
                if let Some((p, n)) = Self::parse_file_name(name) {
                    let mine = self.assigned.as_ref().is_none_or(|a| a.contains(&p));
                    if f.size < target && mine {
                        small.entry(p).or_default().push((n, f.clone()));
                    }
                }
            }
            for (p, mut files) in small {
                files.sort_by_key(|(n, _)| *n);
                let mut bin: Vec<(u32, DataFile)> = Vec::new();
                let mut bytes = 0;
                for f in files {
                    if !bin.is_empty() && bytes + f.1.size > target {
                        let full = std::mem::take(&mut bin);
                        if full.len() > 1 {
                            bins.push(((country.clone(), *day, p), full));
                        }
                        bytes = 0;
                    }
                    bytes += f.1.size;
                    bin.push(f);
                }
                if bin.len() > 1 {
                    bins.push(((country.clone(), *day, p), bin));
                }
            }
        }
        if bins.is_empty() {
            return Ok(Compacted::default());
        }
        let mut done = Compacted::default();
        let mut actions = Vec::new();
        let mut days = BTreeSet::new();
        for ((country, day, p), bin) in bins {
            let mut files = Vec::with_capacity(bin.len());
            let mut medians = Medians::new();
            for (_, f) in &bin {
                let location = Path::parse(&f.path)
                    .with_context(|| format!("the table names a file {:?}", f.path))?;
                let bytes = self.store.get(&location).await?.bytes().await?;
                medians.extend(columns::medians_of(&bytes)?.unwrap_or_default());
                files.push(bytes);
            }
            let joined = columns::concat(&files, self.encoding, &medians)
                .with_context(|| format!("compacting {} files of {country} {day}", files.len()))?;
            drop(files);
            let rows: u64 = bin.iter().filter_map(|(_, f)| f.rows).sum();
            let first = bin.iter().map(|(n, _)| *n).min().unwrap_or(0);
            let path = self.day_dir(&country, day).child(Self::file_name(p, first));
            let size = joined.len();
            self.put(&path, joined)
                .await
                .with_context(|| format!("writing {path}"))?;
            actions.push(table::add(
                path.to_string(),
                &country,
                day,
                size,
                rows as usize,
            ));
            for (_, f) in &bin {
                actions.push(table::remove(f, &country, day));
            }
            done.replaced += bin.len();
            done.written += 1;
            done.rows += rows;
            days.insert((country, day));
        }
        let mut info = HashMap::from([
            (
                "skuflow.files_compacted".to_string(),
                serde_json::json!(done.replaced),
            ),
            (
                "skuflow.files_written".to_string(),
                serde_json::json!(done.written),
            ),
        ]);
        if let Some(me) = &self.writer {
            info.insert("skuflow.writer".to_string(), me.json());
        }
        let table = self.table.as_mut().ok_or_else(|| anyhow!("no table"))?;
        let read = table.version().unwrap_or(-1);
        let version =
            table::commit_compaction(table, actions, self.target_file_bytes, info).await?;
        done.version = version;
        // Versions another builder committed meanwhile that this one did not conflict with.
        if version > read + 1 {
            self.catch_up(read, version - 1).await?;
        }
        let table = self.table.as_ref().ok_or_else(|| anyhow!("no table"))?;
        // The compacted days are read again when a batch next needs them; the manifests name
        // the new files.
        let now = table::files_by_day(table).await?;
        for (country, day) in &days {
            self.drop_day(country, *day);
            let key = (country.clone(), *day);
            let names: Vec<String> = now
                .get(&key)
                .into_iter()
                .flatten()
                .map(|f| f.name().to_string())
                .collect();
            self.load_manifest(country).await?;
            if let Some(m) = self.manifests.get_mut(country) {
                if let Some(entry) = m.partitions.get_mut(&day.to_string()) {
                    let mut names = names;
                    names.sort();
                    entry.files = names;
                }
                m.table_version = version;
            }
        }
        self.files = now;
        let countries: BTreeSet<String> = days.into_iter().map(|(c, _)| c).collect();
        for country in countries {
            self.put_manifest(&country).await?;
        }
        Ok(done)
    }

    /// The table's directory as the root of a store (what the lease is kept in).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
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

    /// Records who writes (group, host, instance) in every commit.
    pub fn with_writer(mut self, group: &str) -> Self {
        self.writer = Some(crate::lease::Holder::me(group));
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
        Path::from(format!("country={country}")).child(format!("business_date={day}"))
    }

    /// `part-p<partition>-<n>-<id>.parquet`: shard `n` of a Kafka partition's keys of a day,
    /// `id` new for every file written.
    fn file_name(partition: i32, n: u32) -> String {
        format!(
            "part-p{partition}-{n}-{}.parquet",
            uuid::Uuid::new_v4().simple()
        )
    }

    /// The partition and shard number of a name made by [`DatasetSink::file_name`].
    fn parse_file_name(name: &str) -> Option<(i32, u32)> {
        let stem = name.strip_prefix("part-p")?.strip_suffix(".parquet")?;
        let mut parts = stem.splitn(3, '-');
        let (p, n, id) = (parts.next()?, parts.next()?, parts.next()?);
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
        Some((p.parse().ok()?, n.parse().ok()?))
    }

    /// The table at its latest version, with its files by day (read once, then kept up to date
    /// by this builder's own commits).
    async fn ensure_table(&mut self) -> anyhow::Result<()> {
        if let Some(t) = &mut self.table {
            // Another builder may have committed since: what it changed is read from its
            // versions' log entries and dropped from memory (those files are read again when
            // needed); a version that changed the table's metadata makes this builder read the
            // whole table afresh.
            let known = t.version().unwrap_or(-1);
            t.update_incremental(None)
                .await
                .context("reading the dataset table's new versions")?;
            let now = t.version().unwrap_or(-1);
            if now == known {
                return Ok(());
            }
            match self.catch_up(known, now).await {
                Ok(()) => {
                    // The other builder may have written the manifests since.
                    self.manifests.clear();
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(
                        from = known,
                        to = now,
                        reason = %format!("{e:#}"),
                        "The dataset table changed under this builder; reading it afresh."
                    );
                    self.forget();
                }
            }
        }
        let table = self
            .location
            .open_or_create(
                &columns::dataset_schema(),
                "skuflow_training_set",
                self.maintenance.keep_days,
            )
            .await?;
        let ours: Vec<String> = columns::dataset_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let theirs: Vec<String> = table
            .snapshot()?
            .schema()
            .fields()
            .map(|f| f.name().clone())
            .collect();
        if ours != theirs {
            anyhow::bail!(
                "the dataset table at {:?} has the columns {theirs:?}, this builder writes {ours:?}: \
                 rebuild into a new --dataset-root (docs/datasets.md)",
                self.location
            );
        }
        self.files = table::files_by_day(&table).await?;
        self.table = Some(table);
        Ok(())
    }

    /// Applies the versions after `from` up to `to` that another builder committed: the files
    /// they removed are dropped from memory, the ones they added are noted (and read when a
    /// batch needs their day), and the medians of their days are computed again.
    async fn catch_up(&mut self, from: i64, to: i64) -> anyhow::Result<()> {
        let table = self.table.as_ref().ok_or_else(|| anyhow!("no table"))?;
        let mut all = Vec::new();
        for v in from + 1..=to {
            all.push(table::changes(table, v).await?);
        }
        for changes in all {
            anyhow::ensure!(!changes.metadata, "a version changed the table's metadata");
            for (day, path) in changes.removed {
                if let Some(files) = self.files.get_mut(&day) {
                    files.retain(|f| f.path != path);
                }
                let held = self
                    .shard_files
                    .iter()
                    .find(|(_, f)| f.path == path)
                    .map(|(k, _)| k.clone());
                if let Some(key) = held {
                    self.drop_shard(&key);
                }
                self.day_medians.remove(&day);
            }
            for (day, file) in changes.added {
                self.day_medians.remove(&day);
                self.files.entry(day).or_default().push(file);
            }
            for (app, version) in changes.txns {
                let known = self.table_offsets.entry(app).or_insert(version);
                *known = (*known).max(version);
            }
        }
        Ok(())
    }

    /// Drops one shard from memory (it is read again from the table's file when needed).
    fn drop_shard(&mut self, key: &ShardKey) {
        self.shards.remove(key);
        self.stats.remove(key);
        self.written_medians.remove(key);
        self.shard_files.remove(key);
        if let Some(index) = self.index.get_mut(&(key.0.clone(), key.1, key.2)) {
            index.retain(|&mut (_, n)| n != key.3);
        }
    }

    /// Undoes in memory a batch whose commit lost the race to another builder's: the shards it
    /// changed are dropped (the next attempt reads them from the version that won).
    fn roll_back(&mut self) {
        for key in std::mem::take(&mut self.batch_shards) {
            self.drop_shard(&key);
            self.day_medians.remove(&(key.0.clone(), key.1));
        }
        self.pending.clear();
    }

    /// Forgets what it read: the next batch reads the table afresh.
    fn forget(&mut self) {
        self.drop_cache();
        self.manifests.clear();
        self.files.clear();
        self.pending.clear();
        self.batch_shards.clear();
        self.table_offsets.clear();
        self.table = None;
    }

    /// Drops the rows kept in memory and everything derived from them.
    fn drop_cache(&mut self) {
        self.shards.clear();
        self.written_medians.clear();
        self.shard_files.clear();
        self.index.clear();
        self.stats.clear();
        self.day_medians.clear();
    }

    /// Drops one day's rows kept in memory (its files changed under them, e.g. by compaction).
    fn drop_day(&mut self, country: &str, day: NaiveDate) {
        let of_day = |c: &String, d: &NaiveDate| c == country && *d == day;
        self.shards.retain(|(c, d, _, _), _| !of_day(c, d));
        self.written_medians.retain(|(c, d, _, _), _| !of_day(c, d));
        self.shard_files.retain(|(c, d, _, _), _| !of_day(c, d));
        self.stats.retain(|(c, d, _, _), _| !of_day(c, d));
        self.index.retain(|(c, d, _), _| !of_day(c, d));
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

    /// Loads every shard of a day (the files the table's version names) not in memory yet, with
    /// the index of which shard holds each key.
    async fn load_day(&mut self, country: &str, day: NaiveDate) -> anyhow::Result<()> {
        self.remove_local_leftovers(&self.day_dir(country, day));
        let files = self
            .files
            .get(&(country.to_string(), day))
            .cloned()
            .unwrap_or_default();
        for file in files {
            let name = file.name();
            let Some((p, n)) = Self::parse_file_name(name) else {
                anyhow::bail!(
                    "{}: not a file name this builder writes (part-p<partition>-<shard>-<id>.parquet)",
                    file.path
                );
            };
            let key = (country.to_string(), day, p, n);
            if self.shards.contains_key(&key) {
                continue;
            }
            let location = Path::parse(&file.path)
                .with_context(|| format!("the table names a file {:?}", file.path))?;
            let bytes = self.store.get(&location).await?.bytes().await?;
            let size = bytes.len();
            let (decoded, medians) = columns::decode_with_medians(bytes)
                .with_context(|| format!("reading {location}"))?;
            // The medians the file was written with: it is rewritten when the day before's move.
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
            let index = self.index.entry((country.to_string(), day, p)).or_default();
            for r in part.rows() {
                let h = key_hash(r.store_id(), r.sku());
                index.insert_unique(h, (h, n), |&(h, _)| h);
            }
            self.stats
                .insert(key.clone(), ShardStats::of(&part, self.split));
            self.shards.insert(key.clone(), part);
            self.shard_files.insert(key, file);
        }
        Ok(())
    }

    async fn load_manifest(&mut self, country: &str) -> anyhow::Result<()> {
        if self.manifests.contains_key(country) {
            return Ok(());
        }
        // The manifest and the card are written beside the day directories.
        self.remove_local_leftovers(&Path::from(format!("country={country}")));
        let path = Path::from(format!("country={country}")).child("_manifest.json");
        let m = match self.store.get(&path).await {
            Ok(r) => serde_json::from_slice(&r.bytes().await?)
                .with_context(|| format!("reading {path}"))?,
            Err(object_store::Error::NotFound { .. }) => Manifest::default(),
            Err(e) => return Err(e.into()),
        };
        self.manifests.insert(country.to_string(), m);
        Ok(())
    }

    /// One batch: the rows merged into their files (new keys into new files, a stored key into
    /// the file that has it), the files whose rows or features changed written again, one
    /// commit, then the manifests with the offsets the batch covers.
    ///
    /// What a batch costs depends on the batch, not on the size of its days: its rows' history
    /// and the day before's medians are looked up by key, and only the files holding a changed
    /// key are written. A change to an earlier day also rewrites, in the same version, the
    /// later days' files holding the changed keys (their history) and the next day's files
    /// whose categories' medians moved.
    async fn write_inner(
        &mut self,
        topic: &str,
        batch: &[Consumed<SkuRecord>],
        offsets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        if let Some(lease) = &mut self.lease {
            lease.ensure().await?;
        }
        self.ensure_table().await?;
        self.pending.clear();
        let touched = by_partition_and_day(batch);
        let days: BTreeSet<(String, NaiveDate)> =
            touched.keys().map(|(c, d, _)| (c.clone(), *d)).collect();
        for (country, day) in &days {
            self.load_day(country, *day).await?;
            self.load_manifest(country).await?;
        }
        // The stored days within the history window of a touched day, before it (its rows'
        // history, the day before's medians) and after it (whose history the batch may change).
        let near = |c: &str, d: NaiveDate| {
            days.iter()
                .any(|(tc, td)| tc == c && d != *td && (d - *td).num_days().abs() <= HISTORY_DAYS)
        };
        let around: BTreeSet<(String, NaiveDate)> = self
            .files
            .keys()
            .filter(|(c, d)| near(c, *d))
            .cloned()
            .collect();
        for (country, day) in &around {
            self.load_day(country, *day).await?;
        }
        let mut rewrite: BTreeSet<ShardKey> = BTreeSet::new();
        let mut changed_keys: BTreeMap<GroupKey, Vec<(String, String)>> = BTreeMap::new();
        self.batch_shards.clear();
        for (group, records) in touched {
            let (shards, keys) = self.merge(group.clone(), records);
            self.batch_shards.extend(shards.iter().cloned());
            rewrite.extend(shards);
            if !keys.is_empty() {
                changed_keys.insert(group, keys);
            }
        }
        let changed_days: BTreeSet<(String, NaiveDate)> = changed_keys
            .keys()
            .map(|(c, d, _)| (c.clone(), *d))
            .collect();
        for day in &changed_days {
            self.day_medians.remove(day);
        }
        // The later days' files holding a changed key: their history changed.
        for ((country, day, p), keys) in &changed_keys {
            let later: Vec<(GroupKey, &KeyIndex)> = (1..=HISTORY_DAYS)
                .map(|d| (country.clone(), *day + chrono::Duration::days(d), *p))
                .filter_map(|g| self.index.get(&g).map(|index| (g, index)))
                .collect();
            if later.is_empty() {
                continue;
            }
            for (store, sku) in keys {
                let key = (key_hash(store, sku), store.as_str(), sku.as_str());
                for (group, index) in &later {
                    if let Some((n, _)) = Self::find(&self.shards, index, group, key) {
                        rewrite.insert((group.0.clone(), group.1, group.2, n));
                    }
                }
            }
        }
        // The next day's files whose categories' medians (of the changed day) moved.
        for (country, day) in &changed_days {
            let next = *day + chrono::Duration::days(1);
            // Only a stored (or, in this batch, new) next day needs the changed day's medians.
            if !self
                .index
                .keys()
                .any(|(c, d, _)| c == country && *d == next)
            {
                continue;
            }
            let medians = self.medians_of(country, *day);
            for (key, shard) in &self.shards {
                if key.0 != *country || key.1 != next || rewrite.contains(key) {
                    continue;
                }
                if self.written_medians.get(key) != Some(&used_medians(shard, &medians)) {
                    rewrite.insert(key.clone());
                }
            }
        }
        self.batch_shards.extend(rewrite.iter().cloned());
        let mut by_day: BTreeMap<(String, NaiveDate), Vec<ShardKey>> = BTreeMap::new();
        for key in rewrite {
            by_day.entry((key.0.clone(), key.1)).or_default().push(key);
        }
        for ((country, day), keys) in &by_day {
            self.write_shards(country, *day, keys).await?;
        }
        let version = self.commit(topic, batch.len(), offsets).await?;
        let written: BTreeSet<&(String, NaiveDate)> = days.iter().chain(by_day.keys()).collect();
        for (country, day) in &written {
            self.update_manifest(country, *day, topic, offsets, version);
        }
        let countries: BTreeSet<&String> = written.iter().map(|(c, _)| c).collect();
        for country in countries {
            self.put_manifest(country).await?;
        }
        self.trim_cache();
        Ok(())
    }

    /// The shard of a loaded group holding (store_id, sku), whose [`key_hash`] is `h`, and its
    /// row.
    fn find<'a>(
        shards: &'a HashMap<ShardKey, FileRows>,
        index: &KeyIndex,
        group: &GroupKey,
        (h, store_id, sku): (u64, &str, &str),
    ) -> Option<(u32, Row<'a>)> {
        let mut found = None;
        // Equal hashes of different keys are told apart by the shard's own index.
        index.find(h, |&(eh, n)| {
            eh == h
                && shards
                    .get(&(group.0.clone(), group.1, group.2, n))
                    .and_then(|s| s.get(store_id, sku))
                    .map(|r| found = Some((n, r)))
                    .is_some()
        })?;
        found
    }

    /// The category medians of a loaded day (none for a day not stored), computed once until
    /// the day changes.
    fn medians_of(&mut self, country: &str, day: NaiveDate) -> Arc<Medians> {
        let key = (country.to_string(), day);
        if let Some(m) = self.day_medians.get(&key) {
            return m.clone();
        }
        let m: Medians = category_medians(
            self.shards
                .iter()
                .filter(|((c, d, _, _), _)| c == country && *d == day)
                .flat_map(|(_, p)| p.rows()),
        )
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let m = Arc::new(m);
        self.day_medians.insert(key, m.clone());
        m
    }

    /// Merges one partition's records of a country and day into its files; returns the files
    /// whose rows changed and the keys that changed.
    ///
    /// A stored key stays in the file that has it; new keys go to new files of their own (up
    /// to the target size each), so a batch of new keys writes only what it brings, and
    /// compaction ([`DatasetSink::optimize`]) later joins the small files. No key is ever in
    /// two files, not even for a moment.
    fn merge(
        &mut self,
        group: GroupKey,
        records: Vec<&SkuRecord>,
    ) -> (Vec<ShardKey>, Vec<(String, String)>) {
        let rows_per_file = self.rows_per_file();
        let (country, day, p) = group.clone();
        let key = |n: u32| (country.clone(), day, p, n);
        let mut next = self
            .shards
            .keys()
            .filter(|(c, d, q, _)| *c == country && *d == day && *q == p)
            .map(|k| k.3 + 1)
            .max()
            .unwrap_or(0);
        let mut open: Option<u32> = None;
        let mut changed = BTreeSet::new();
        let mut keys = Vec::new();
        let incoming = records.len();
        // The group's index, out of the map while the batch's keys are looked up and added.
        let mut index = self.index.remove(&group).unwrap_or_default();
        for r in records {
            let h = key_hash(&r.store_id, &r.sku);
            let found = Self::find(&self.shards, &index, &group, (h, &r.store_id, &r.sku));
            let n = match found.map(|f| f.0) {
                Some(n) => n,
                None => {
                    let n = match open {
                        Some(n) if self.shards[&key(n)].len() < rows_per_file => n,
                        _ => {
                            let n = next;
                            next += 1;
                            let room = incoming.min(rows_per_file);
                            self.shards.insert(key(n), FileRows::with_capacity(room));
                            open = Some(n);
                            n
                        }
                    };
                    index.insert_unique(h, (h, n), |&(h, _)| h);
                    n
                }
            };
            let shard = self
                .shards
                .get_mut(&key(n))
                .expect("the shard was just found");
            if shard.upsert(r) {
                changed.insert(n);
                keys.push((r.store_id.clone(), r.sku.clone()));
            }
        }
        self.index.insert(group, index);
        for n in &changed {
            if let Some(s) = self.shards.get_mut(&key(*n)) {
                s.settle();
            }
        }
        (changed.into_iter().map(key).collect(), keys)
    }

    /// Writes the given shards of a country and day as new files (features from the day
    /// before's medians and each key's history, looked up by key), each replacing the file it
    /// was in.
    async fn write_shards(
        &mut self,
        country: &str,
        day: NaiveDate,
        keys: &[ShardKey],
    ) -> anyhow::Result<()> {
        let medians = self.medians_of(country, day - chrono::Duration::days(1));
        for key in keys {
            let Some(shard) = self.shards.get(key) else {
                continue;
            };
            if shard.is_empty() {
                continue;
            }
            // The key's rows of the loaded days before, newest first.
            let past: Vec<(NaiveDate, GroupKey)> = (1..=HISTORY_DAYS)
                .map(|back| day - chrono::Duration::days(back))
                .map(|d| (d, (country.to_string(), d, key.2)))
                .filter(|(_, g)| self.index.contains_key(g))
                .collect();
            let (shards, index) = (&self.shards, &self.index);
            let history_of = |r: &Row<'_>| {
                if past.is_empty() {
                    return History::default();
                }
                let wanted = (key_hash(r.store_id(), r.sku()), r.store_id(), r.sku());
                let rows: Vec<(NaiveDate, i32, rust_decimal::Decimal)> = past
                    .iter()
                    .filter_map(|(d, g)| {
                        let (_, row) = Self::find(shards, &index[g], g, wanted)?;
                        Some((*d, row.units_sold(), row.unit_price()))
                    })
                    .collect();
                History::of(day, r.unit_price(), &rows)
            };
            let used = used_medians(shard, &medians);
            let rows = shard.featured_with(|c| medians.get(c).copied(), history_of, self.split);
            let file = columns::encode_with_medians(&rows, self.encoding, &used)?;
            let (size, count) = (file.len(), rows.len());
            drop(rows);
            let stats = ShardStats::of(shard, self.split);
            self.note_file_size(size, count);
            let path = self
                .day_dir(country, day)
                .child(Self::file_name(key.2, key.3));
            self.put(&path, file)
                .await
                .with_context(|| format!("writing {path}"))?;
            let new = DataFile {
                path: path.to_string(),
                size: size as i64,
                rows: Some(count as u64),
            };
            self.pending
                .push(table::add(new.path.clone(), country, day, size, count));
            if let Some(old) = self.shard_files.insert(key.clone(), new) {
                self.pending.push(table::remove(&old, country, day));
            }
            self.written_medians.insert(key.clone(), used);
            self.stats.insert(key.clone(), stats);
        }
        Ok(())
    }

    /// Commits the batch's new and replaced files with its offsets as one table version, and
    /// notes the files of the days it changed. A batch that changed no file (a replay) still
    /// commits its offsets.
    async fn commit(
        &mut self,
        topic: &str,
        records: usize,
        offsets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<i64> {
        let actions = std::mem::take(&mut self.pending);
        let added = actions
            .iter()
            .filter(|a| matches!(a, deltalake_core::kernel::Action::Add(_)))
            .count();
        let mut info = HashMap::from([
            ("skuflow.records".to_string(), serde_json::json!(records)),
            (
                "skuflow.files_written".to_string(),
                serde_json::json!(added),
            ),
            ("skuflow.topic".to_string(), serde_json::json!(topic)),
        ]);
        if let Some(me) = &self.writer {
            info.insert("skuflow.writer".to_string(), me.json());
        }
        // A partition another builder has taken over and written further (a batch of this one
        // still in flight when the partition moved) keeps the further offset.
        let offsets: BTreeMap<i32, i64> = offsets
            .iter()
            .filter(|(p, o)| {
                self.table_offsets
                    .get(&table::offsets_app_id(topic, **p))
                    .is_none_or(|known| known < *o)
            })
            .map(|(p, o)| (*p, *o))
            .collect();
        let table = self.table.as_mut().ok_or_else(|| anyhow!("no table"))?;
        let read = table.version().unwrap_or(-1);
        if actions.is_empty() && offsets.is_empty() {
            // Nothing new (a batch another builder already wrote): no version.
            return Ok(read);
        }
        let version = table::commit(table, actions, topic, &offsets, info).await?;
        // Versions another builder committed meanwhile that this batch did not conflict with
        // (they changed no file): their offsets.
        if version > read + 1 {
            self.catch_up(read, version - 1).await?;
        }
        for (p, o) in &offsets {
            self.table_offsets
                .insert(table::offsets_app_id(topic, *p), *o);
        }
        // The files of the days this version changed, from the shards in memory.
        let mut days: HashMap<(String, NaiveDate), Vec<DataFile>> = HashMap::new();
        for ((c, d, _, _), f) in &self.shard_files {
            days.entry((c.clone(), *d)).or_default().push(f.clone());
        }
        for (day, files) in days {
            self.files.insert(day, files);
        }
        Ok(version)
    }

    /// Drops the cached rows once they pass `--cache-rows`; files are read again when needed.
    fn trim_cache(&mut self) {
        let cached: usize = self.shards.values().map(FileRows::len).sum();
        if cached > self.cache_rows {
            self.drop_cache();
        }
    }

    fn update_manifest(
        &mut self,
        country: &str,
        day: NaiveDate,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
        version: i64,
    ) {
        let mut entry = DayEntry::default();
        let mut files: Vec<(&ShardKey, &ShardStats)> = self
            .stats
            .iter()
            .filter(|((c, d, _, _), st)| c == country && *d == day && st.rows > 0)
            .collect();
        files.sort_by_key(|(k, _)| (k.2, k.3));
        for (key, st) in files {
            if let Some(f) = self.shard_files.get(key) {
                entry.files.push(f.name().to_string());
            }
            entry.rows += st.rows;
            for (split, n) in &st.splits {
                *entry.splits.entry(split.to_string()).or_default() += n;
            }
        }
        let m = self.manifests.entry(country.to_string()).or_default();
        m.table_version = version;
        m.partitions.insert(day.to_string(), entry);
        for (p, o) in offsets {
            m.last_offsets.insert(format!("{topic}/{p}"), *o);
        }
    }

    async fn put_manifest(&mut self, country: &str) -> anyhow::Result<()> {
        // Another builder may have described a later version meanwhile: that one stays.
        let path = Path::from(format!("country={country}")).child("_manifest.json");
        let ours = self.manifests.get(country).map_or(0, |m| m.table_version);
        if let Ok(r) = self.store.get(&path).await {
            let stored: Option<Manifest> = serde_json::from_slice(&r.bytes().await?).ok();
            if let Some(stored) = stored.filter(|s| s.table_version > ours) {
                self.manifests.insert(country.to_string(), stored);
                return Ok(());
            }
        }
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
        let dir = Path::from(format!("country={country}"));
        let json = serde_json::to_vec_pretty(m)?;
        let version = m.table_version;
        self.put(&dir.child("_manifest.json"), json).await?;
        let card = crate::card::dataset_card(country, self.split, version);
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
    }) || lost_race(e)
}

/// Another writer committed first: the work is done again on the version that won.
fn lost_race(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<table::Conflict>().is_some())
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
            Ok(()) => {
                self.maintain().await;
                Ok(Vec::new())
            }
            Err(e) => {
                // What is in memory may be ahead of what is stored: a lost commit race drops
                // what the batch changed; any other failure starts over from storage.
                if lost_race(&e) {
                    tracing::info!(error = %format!("{e:#}"), "Another dataset builder committed first; writing the batch again on its version.");
                    self.roll_back();
                } else {
                    self.forget();
                }
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
            .list_with_delimiter(None)
            .await
            .map_err(|e| SinkError::Retriable(anyhow::anyhow!("listing the dataset root: {e}")))?;
        // Renews the lease while idle (or reports who holds it).
        if let Some(lease) = &mut self.lease {
            lease.ensure().await.map_err(SinkError::Retriable)?;
        }
        self.maintain().await;
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.release().await;
        }
    }

    async fn durable_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, SinkError> {
        // Called after every rebalance: another builder may have committed meanwhile.
        self.forget();
        let now: BTreeSet<i32> = partitions.iter().copied().collect();
        // Partitions taken over (from a builder that stopped, or after holding none) are
        // compacted at the first chance rather than at the next interval.
        if self
            .assigned
            .as_ref()
            .is_some_and(|was| !now.is_subset(was))
        {
            self.optimized_at = None;
        }
        self.assigned = Some(now);
        let read = async {
            self.ensure_table().await?;
            let table = self.table.as_ref().ok_or_else(|| anyhow!("no table"))?;
            let held = table::offsets(table, topic, partitions.iter().copied()).await?;
            for (p, o) in &held {
                self.table_offsets
                    .insert(table::offsets_app_id(topic, *p), *o);
            }
            Ok(held)
        };
        read.await.map_err(SinkError::Retriable)
    }
}

/// The medians of the categories a file's rows have (what its feature column was computed with).
fn used_medians(shard: &FileRows, medians: &Medians) -> Medians {
    let categories: std::collections::HashSet<&str> = shard.rows().map(|r| r.category()).collect();
    categories
        .into_iter()
        .filter_map(|c| medians.get(c).map(|m| (c.to_string(), *m)))
        .collect()
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

    fn priced(sku: &str, version: i64, cents: i64) -> SkuRecord {
        let mut r = rec(sku, version);
        r.unit_price = rust_decimal::Decimal::new(cents, 2);
        r
    }

    fn fresh_sink(root: &std::path::Path) -> DatasetSink {
        DatasetSink::new(
            Location::parse(root.to_str().unwrap(), "--dataset-root").unwrap(),
            Split::default(),
            Encoding {
                row_group_rows: 100,
                zstd_level: 3,
            },
            1_000_000,
        )
    }

    fn at(partition: i32, offset: i64, value: SkuRecord) -> Consumed<SkuRecord> {
        Consumed {
            partition,
            offset,
            value,
        }
    }

    const DAY: &str = "2026-11-01";

    /// The files of SE's day `DAY` at `version` (the latest without one), relative to the root.
    async fn files_at(root: &std::path::Path, version: Option<i64>) -> Vec<String> {
        files_of_day(root, version, DAY.parse().unwrap()).await
    }

    /// The latest version of the table at `root`.
    async fn latest_version(root: &std::path::Path) -> i64 {
        let location = Location::parse(root.to_str().unwrap(), "--dataset-root").unwrap();
        location.load().await.unwrap().unwrap().version().unwrap()
    }

    /// The files of one of SE's days at `version` (the latest without one).
    async fn files_of_day(
        root: &std::path::Path,
        version: Option<i64>,
        day: NaiveDate,
    ) -> Vec<String> {
        let location = Location::parse(root.to_str().unwrap(), "--dataset-root").unwrap();
        let mut t = location.table().unwrap();
        match version {
            Some(v) => t.load_version(v).await.unwrap(),
            None => t.load().await.unwrap(),
        }
        let mut files: Vec<String> = table::files_by_day(&t)
            .await
            .unwrap()
            .remove(&("SE".to_string(), day))
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.path)
            .collect();
        files.sort();
        files
    }

    /// Every key of SE's day at `version`, with the shard it is in; panics on a key in two files.
    async fn keys_by_shard(
        root: &std::path::Path,
        version: Option<i64>,
    ) -> BTreeMap<String, ((i32, u32), SkuRecord)> {
        let mut out = BTreeMap::new();
        for path in files_at(root, version).await {
            let name = path.rsplit('/').next().unwrap();
            let shard = DatasetSink::parse_file_name(name).unwrap();
            let bytes = std::fs::read(root.join(&path)).unwrap();
            for r in columns::decode(bytes::Bytes::from(bytes)).unwrap() {
                let sku = r.sku.clone();
                let again = out.insert(sku.clone(), (shard, r));
                assert!(again.is_none(), "{sku} is in two files");
            }
        }
        out
    }

    #[tokio::test]
    async fn every_batch_is_one_version_and_earlier_versions_stay_readable() {
        let root = tempfile::tempdir().unwrap();
        let day = root.path().join(format!("country=SE/business_date={DAY}"));
        std::fs::create_dir_all(&day).unwrap();
        // What a SIGKILL mid-write can leave: our hidden temporary file.
        std::fs::write(day.join(".part-p0-0-x.parquet.tmp-42"), b"PAR1 half").unwrap();
        let mut sink = fresh_sink(root.path());
        let batch = vec![at(0, 0, rec("A", 1)), at(0, 1, rec("B", 1))];
        assert!(sink
            .write("t", &batch, &BTreeMap::from([(0, 2)]))
            .await
            .unwrap()
            .is_empty());
        assert!(!day.join(".part-p0-0-x.parquet.tmp-42").exists());
        let first = files_at(root.path(), None).await;
        assert_eq!(first.len(), 1, "{first:?}");
        // A correction replaces the file in a new version: one file, the newer value.
        let mut newer = rec("A", 2);
        newer.unit_price = rust_decimal::Decimal::new(30000, 4);
        sink.write("t", &[at(0, 2, newer)], &BTreeMap::from([(0, 3)]))
            .await
            .unwrap();
        let now = keys_by_shard(root.path(), None).await;
        assert_eq!(now.len(), 2);
        let a = &now["A"].1;
        assert_eq!(
            (a.record_version, a.unit_price.to_string().as_str()),
            (2, "3.0000")
        );
        assert_ne!(files_at(root.path(), None).await, first);
        // Version 0 created the table; version 1 still shows what it held.
        assert_eq!(files_at(root.path(), Some(1)).await, first);
        let then = keys_by_shard(root.path(), Some(1)).await;
        assert_eq!(then["A"].1.record_version, 1);
        assert_eq!(then["A"].1.unit_price, rec("A", 1).unit_price);
        // The offsets are in the table: a restarted builder resumes after them.
        let mut restarted = fresh_sink(root.path());
        let held = restarted.durable_offsets("t", &[0, 1]).await.unwrap();
        assert_eq!(held, HashMap::from([(0, 3)]));
        let manifest: Manifest = serde_json::from_slice(
            &std::fs::read(root.path().join("country=SE/_manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.rows, 2);
        assert_eq!(manifest.table_version, 2);
        assert_eq!(manifest.last_offsets["t/0"], 3);
    }

    #[tokio::test]
    async fn vacuum_keeps_the_kept_days_and_deletes_replaced_and_orphaned_files_after_them() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = fresh_sink(root.path());
        let batch = vec![at(0, 0, rec("A", 1)), at(0, 1, rec("B", 1))];
        sink.write("t", &batch, &BTreeMap::from([(0, 2)]))
            .await
            .unwrap();
        let first = files_at(root.path(), None).await;
        sink.write(
            "t",
            &[at(0, 2, priced("A", 2, 999))],
            &BTreeMap::from([(0, 3)]),
        )
        .await
        .unwrap();
        let orphan = format!(
            "country=SE/business_date={DAY}/{}",
            DatasetSink::file_name(0, 7)
        );
        std::fs::write(root.path().join(&orphan), b"PAR1 never committed").unwrap();
        let location = Location::parse(root.path().to_str().unwrap(), "--dataset-root").unwrap();
        let latest = || async { location.load().await.unwrap().unwrap() };
        // Within the kept days: nothing goes, version 1 still reads.
        let (_, kept) = table::vacuum(&latest().await, chrono::Duration::days(1))
            .await
            .unwrap();
        assert_eq!(kept, table::Vacuumed::default());
        assert!(root.path().join(&first[0]).exists());
        // Past them: the replaced file and the orphan go; the latest version, the manifest and
        // the card stay.
        let (_, done) = table::vacuum(&latest().await, chrono::Duration::zero())
            .await
            .unwrap();
        assert_eq!(
            done,
            table::Vacuumed {
                replaced: 1,
                orphans: 1
            }
        );
        assert!(!root.path().join(&first[0]).exists());
        assert!(!root.path().join(&orphan).exists());
        let now = keys_by_shard(root.path(), None).await;
        assert_eq!(now["A"].1.record_version, 2);
        assert_eq!(now.len(), 2);
        for side in ["country=SE/_manifest.json", "country=SE/_dataset_card.md"] {
            assert!(root.path().join(side).exists(), "{side}");
        }
        // The table keeps the retention it was created with.
        let t = latest().await;
        let config = t.snapshot().unwrap().metadata().configuration().clone();
        assert_eq!(
            config
                .get("delta.deletedFileRetentionDuration")
                .map(String::as_str),
            Some("interval 7 days")
        );
    }

    #[tokio::test]
    async fn a_writer_reads_what_another_committed_and_a_lost_commit_race_is_retriable() {
        let root = tempfile::tempdir().unwrap();
        let mut a = fresh_sink(root.path());
        let mut b = fresh_sink(root.path());
        a.write(
            "t",
            &[at(0, 0, priced("A", 1, 100)), at(0, 1, priced("B", 1, 100))],
            &BTreeMap::from([(0, 2)]),
        )
        .await
        .unwrap();
        // B reads the table, then A replaces the file B holds in memory.
        assert_eq!(
            b.durable_offsets("t", &[0]).await.unwrap(),
            HashMap::from([(0, 2)])
        );
        b.load_day("SE", DAY.parse().unwrap()).await.unwrap();
        let stale = Location::parse(root.path().to_str().unwrap(), "--dataset-root")
            .unwrap()
            .load()
            .await
            .unwrap()
            .unwrap();
        a.write(
            "t",
            &[at(0, 2, priced("A", 2, 200))],
            &BTreeMap::from([(0, 3)]),
        )
        .await
        .unwrap();
        // B sees A's version before it writes, so A's correction survives B's.
        b.write(
            "t",
            &[at(0, 3, priced("B", 2, 300))],
            &BTreeMap::from([(0, 4)]),
        )
        .await
        .unwrap();
        let keys = keys_by_shard(root.path(), None).await;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["A"].1.record_version, 2, "A's correction survived");
        assert_eq!(keys["B"].1.record_version, 2);
        // A commit made on a version older than the file it replaces loses the race: retriable.
        let day: NaiveDate = DAY.parse().unwrap();
        let gone = table::files_by_day(&stale).await.unwrap()[&("SE".to_string(), day)][0].clone();
        let mut stale = stale;
        let lost = table::commit(
            &mut stale,
            vec![table::remove(&gone, "SE", day)],
            "t",
            &BTreeMap::from([(0, 3)]),
            HashMap::new(),
        )
        .await
        .unwrap_err();
        assert!(lost.downcast_ref::<table::Conflict>().is_some(), "{lost:#}");
        assert!(is_transient(&lost));
    }

    #[test]
    fn file_names_round_trip() {
        for (p, n) in [(0, 0), (0, 1), (11, 0), (11, 27)] {
            let name = DatasetSink::file_name(p, n);
            assert_eq!(DatasetSink::parse_file_name(&name), Some((p, n)), "{name}");
            assert_ne!(name, DatasetSink::file_name(p, n), "a new name every time");
        }
        for bad in [
            "part-p2.parquet",
            "part-p2-0.parquet",
            "part-px-0-0123456789abcdef0123456789abcdef.parquet",
            "part-p2-0-xyz.parquet",
            "part-p2-0-0123456789abcdef0123456789abcdef.parquet.tmp",
            "_manifest.json",
        ] {
            assert_eq!(DatasetSink::parse_file_name(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn files_grow_to_the_target_size_and_keys_never_move_between_shards() {
        let root = tempfile::tempdir().unwrap();
        let sized = |root: &std::path::Path| {
            fresh_sink(root)
                .with_target_file_bytes(20_000)
                .with_maintenance(Maintenance {
                    optimize_every: std::time::Duration::ZERO,
                    ..Maintenance::default()
                })
        };
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
        let first = keys_by_shard(root.path(), None).await;
        assert_eq!(first.len(), 1200);
        let files = files_at(root.path(), None).await;
        assert!(files.len() >= 3, "{files:?}");
        for f in &files {
            let size = std::fs::metadata(root.path().join(f)).unwrap().len();
            assert!(size < 60_000, "{f} is {size} bytes, target 20,000");
        }
        // A correction of every tenth key, from a restarted builder: each stays in its shard.
        let mut restarted = sized(root.path());
        let fix: Vec<Consumed<SkuRecord>> = (0..1200u32)
            .step_by(10)
            .map(|i| at(0, 5000 + i64::from(i), priced(&format!("SKU-{i:05}"), 2, 1)))
            .collect();
        restarted
            .write("t", &fix, &BTreeMap::from([(0, 7000)]))
            .await
            .unwrap();
        let second = keys_by_shard(root.path(), None).await;
        assert_eq!(second.len(), 1200);
        for (sku, (shard, r)) in &second {
            assert_eq!(shard, &first[sku].0, "{sku} moved");
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
        let listed: std::collections::BTreeSet<String> =
            manifest.partitions[DAY].files.iter().cloned().collect();
        let now: std::collections::BTreeSet<String> = files_at(root.path(), None)
            .await
            .iter()
            .map(|f| f.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(listed, now);
    }

    #[tokio::test]
    async fn a_batch_killed_before_its_commit_leaves_nothing_a_reader_sees_and_is_written_once_on_replay(
    ) {
        let root = tempfile::tempdir().unwrap();
        let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
        let next: NaiveDate = DAY.parse::<NaiveDate>().unwrap() + chrono::Duration::days(1);
        let on_next = |mut r: SkuRecord| {
            r.business_date = next;
            r
        };
        // Prices 10 (p0), 20 and 30 (p1): the category median of DAY is 20. The day after has
        // a row in each partition, compared with that median.
        let first = vec![
            at(0, 0, priced("A", 1, 1000)),
            at(1, 0, priced("B", 1, 2000)),
            at(1, 1, priced("C", 1, 3000)),
            at(0, 1, on_next(priced("X", 1, 4000))),
            at(1, 2, on_next(priced("Y", 1, 6000))),
        ];
        let mut sink = fresh_sink(root.path());
        sink.write("t", &first, &BTreeMap::from([(0, 2), (1, 3)]))
            .await
            .unwrap();
        let before = files_at(root.path(), None).await;
        let next_before = files_of_day(root.path(), None, next).await;
        assert_eq!(next_before.len(), 2);
        for f in &next_before {
            let bytes = bytes::Bytes::from(std::fs::read(root.path().join(f)).unwrap());
            let want = HashMap::from([("c".to_string(), d("20"))]);
            assert_eq!(columns::medians_of(&bytes).unwrap(), Some(want), "{f}");
        }
        // A correction of A to 40 moves DAY's median to 30. The builder writes the new p0 file and
        // is killed before the commit: the file is there, but no version names it.
        let a2 = priced("A", 2, 4000);
        let mut part = FileRows::default();
        part.upsert(&a2);
        let rows = part.featured_with(|_| None, |_| History::default(), Split::default());
        let enc = Encoding {
            row_group_rows: 100,
            zstd_level: 3,
        };
        let orphan = format!(
            "country=SE/business_date={DAY}/{}",
            DatasetSink::file_name(0, 0)
        );
        std::fs::write(
            root.path().join(&orphan),
            columns::encode_with_medians(&rows, enc, &HashMap::new()).unwrap(),
        )
        .unwrap();
        assert_eq!(files_at(root.path(), None).await, before);
        // The restarted builder resumes at the table's offsets and gets the correction again.
        let mut restarted = fresh_sink(root.path());
        assert_eq!(
            restarted.durable_offsets("t", &[0, 1]).await.unwrap(),
            HashMap::from([(0, 2), (1, 3)])
        );
        restarted
            .write("t", &[at(0, 2, a2)], &BTreeMap::from([(0, 3)]))
            .await
            .unwrap();
        let now = files_at(root.path(), None).await;
        assert!(!now.contains(&orphan), "{now:?}");
        assert_eq!(now.len(), 2, "{now:?}");
        // Only the p0 file of DAY changed: the p1 file holds no corrected key.
        assert_eq!(now.iter().filter(|f| before.contains(f)).count(), 1);
        let keys = keys_by_shard(root.path(), None).await;
        assert_eq!(keys["A"].1.record_version, 2);
        // Both files of the day after carry DAY's new median: rewritten in the same version.
        let next_now = files_of_day(root.path(), None, next).await;
        assert!(next_now.iter().all(|f| !next_before.contains(f)));
        for f in &next_now {
            let bytes = bytes::Bytes::from(std::fs::read(root.path().join(f)).unwrap());
            let want = HashMap::from([("c".to_string(), d("30"))]);
            assert_eq!(columns::medians_of(&bytes).unwrap(), Some(want), "{f}");
        }
        let rel = float_column(root.path(), &next_now, "price_rel_prev_day_category_median");
        let mut rel: Vec<f64> = rel.into_iter().flatten().collect();
        rel.sort_by(f64::total_cmp);
        assert_eq!(rel, vec![40.0 / 30.0, 60.0 / 30.0]);
    }

    /// The values of a Float64 or Int32 column of the given files (relative to the root).
    fn float_column(root: &std::path::Path, files: &[String], name: &str) -> Vec<Option<f64>> {
        use arrow_array::{Array, Float64Array, Int32Array};
        let mut out = Vec::new();
        for f in files {
            let bytes = bytes::Bytes::from(std::fs::read(root.join(f)).unwrap());
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                let b = b.unwrap();
                let c = b.column_by_name(name).unwrap();
                if let Some(a) = c.as_any().downcast_ref::<Float64Array>() {
                    out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
                } else {
                    let a = c.as_any().downcast_ref::<Int32Array>().unwrap();
                    out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| f64::from(a.value(i)))));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn new_keys_go_to_new_files_and_optimize_joins_the_small_ones() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = fresh_sink(root.path()).with_maintenance(Maintenance {
            optimize_every: std::time::Duration::ZERO,
            ..Maintenance::default()
        });
        let mut offset = 0;
        for b in 0..4 {
            offset = write_new_keys(&mut sink, b, 50, offset).await;
        }
        let four = files_at(root.path(), None).await;
        assert_eq!(four.len(), 4, "one file per batch of new keys: {four:?}");
        // A correction writes again only the file that holds its key.
        offset += 1;
        sink.write(
            "t",
            &[at(0, offset, priced("S2-007", 2, 1))],
            &BTreeMap::from([(0, offset + 1)]),
        )
        .await
        .unwrap();
        let corrected = files_at(root.path(), None).await;
        assert_eq!(corrected.len(), 4);
        assert_eq!(corrected.iter().filter(|f| four.contains(f)).count(), 3);
        let before = keys_by_shard(root.path(), None).await;
        let version = latest_version(root.path()).await;
        // OPTIMIZE: the four small files become one, in a version of its own; no row changes.
        let done = sink.optimize().await.unwrap();
        assert_eq!(
            (done.replaced, done.written, done.rows, done.version),
            (4, 1, 200, version + 1)
        );
        let joined = files_at(root.path(), None).await;
        assert_eq!(joined.len(), 1, "{joined:?}");
        let after = keys_by_shard(root.path(), None).await;
        assert_eq!(after.len(), 200);
        for (sku, (_, r)) in &after {
            assert_eq!(r, &before[sku].1, "{sku}");
        }
        assert_eq!(files_at(root.path(), Some(version)).await, corrected);
        let location = Location::parse(root.path().to_str().unwrap(), "--dataset-root").unwrap();
        let t = location.load().await.unwrap().unwrap();
        let last = &table::history(&t, Some(1)).await.unwrap()[0];
        assert_eq!(last.operation, "OPTIMIZE");
        let manifest: Manifest = serde_json::from_slice(
            &std::fs::read(root.path().join("country=SE/_manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.rows, 200);
        assert_eq!(manifest.table_version, version + 1);
        assert_eq!(
            manifest.partitions[DAY].files,
            vec![joined[0].rsplit('/').next().unwrap().to_string()]
        );
        // Nothing left to join; a later correction goes to the joined file.
        assert_eq!(sink.optimize().await.unwrap(), Compacted::default());
        offset += 1;
        sink.write(
            "t",
            &[at(0, offset, priced("S0-001", 2, 5))],
            &BTreeMap::from([(0, offset + 1)]),
        )
        .await
        .unwrap();
        let again = keys_by_shard(root.path(), None).await;
        assert_eq!(again.len(), 200);
        assert_eq!(again["S0-001"].1.record_version, 2);
        assert_eq!(files_at(root.path(), None).await.len(), 1);
    }

    /// Writes `keys` new keys (`S{b}-…`) on partition 0 after `offset` as one batch, so one
    /// new file; the last offset used.
    async fn write_new_keys(sink: &mut DatasetSink, b: usize, keys: i64, mut offset: i64) -> i64 {
        let batch: Vec<Consumed<SkuRecord>> = (0..keys)
            .map(|i| {
                offset += 1;
                at(0, offset, priced(&format!("S{b}-{i:03}"), 1, 100 + i))
            })
            .collect();
        sink.write("t", &batch, &BTreeMap::from([(0, offset + 1)]))
            .await
            .unwrap();
        offset
    }

    #[tokio::test]
    async fn scheduled_compaction_waits_for_partitions_and_comes_again_when_more_are_taken_over() {
        let root = tempfile::tempdir().unwrap();
        let every = std::time::Duration::from_secs(3600);
        let mut writer = fresh_sink(root.path()).with_maintenance(Maintenance {
            optimize_every: std::time::Duration::ZERO,
            ..Maintenance::default()
        });
        let mut offset = 0;
        for b in 0..3 {
            offset = write_new_keys(&mut writer, b, 20, offset).await;
        }
        assert_eq!(files_at(root.path(), None).await.len(), 3);
        let mut sink = fresh_sink(root.path()).with_maintenance(Maintenance {
            optimize_every: every,
            ..Maintenance::default()
        });
        // A member the group left without partitions compacts nothing and keeps its chance.
        sink.durable_offsets("t", &[]).await.unwrap();
        sink.maintain().await;
        assert_eq!(files_at(root.path(), None).await.len(), 3);
        // Given partition 1 (whose files are none), then partition 0 besides: the first
        // chance after taking partition 0 over compacts its files.
        sink.durable_offsets("t", &[1]).await.unwrap();
        sink.maintain().await;
        writer.forget();
        for b in 3..5 {
            offset = write_new_keys(&mut writer, b, 20, offset).await;
        }
        assert_eq!(files_at(root.path(), None).await.len(), 5);
        sink.durable_offsets("t", &[0, 1]).await.unwrap();
        sink.maintain().await;
        assert_eq!(files_at(root.path(), None).await.len(), 1);
        // Then not again before the interval.
        writer.forget();
        offset += 1;
        writer
            .write(
                "t",
                &[at(0, offset, priced("S9-000", 1, 1))],
                &BTreeMap::from([(0, offset + 1)]),
            )
            .await
            .unwrap();
        sink.durable_offsets("t", &[0, 1]).await.unwrap();
        sink.maintain().await;
        assert_eq!(files_at(root.path(), None).await.len(), 2);
    }

    #[tokio::test]
    async fn a_change_to_a_day_rewrites_only_the_later_files_holding_its_keys() {
        let root = tempfile::tempdir().unwrap();
        let mut sink = fresh_sink(root.path());
        let day: NaiveDate = DAY.parse().unwrap();
        let on = |sku: &str, version: i64, back: i64, sold: i32| {
            let mut r = priced(sku, version, 100);
            r.business_date = day + chrono::Duration::days(back);
            r.units_sold = sold;
            r
        };
        sink.write(
            "t",
            &[at(0, 0, on("A", 1, 0, 5)), at(0, 1, on("B", 1, 0, 6))],
            &BTreeMap::from([(0, 2)]),
        )
        .await
        .unwrap();
        // The next day's keys arrive in two batches: two files.
        sink.write(
            "t",
            &[at(0, 2, on("A", 1, 1, 1))],
            &BTreeMap::from([(0, 3)]),
        )
        .await
        .unwrap();
        sink.write(
            "t",
            &[at(0, 3, on("B", 1, 1, 1))],
            &BTreeMap::from([(0, 4)]),
        )
        .await
        .unwrap();
        let next = day + chrono::Duration::days(1);
        let before = files_of_day(root.path(), None, next).await;
        assert_eq!(before.len(), 2);
        let prev = |files: &[String]| float_column(root.path(), files, "units_sold_prev_day");
        let mut got = prev(&before);
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(got, vec![Some(5.0), Some(6.0)]);
        // A correction of A's first day (same price: the median stays): only the next day's
        // file holding A is written again, with A's new history.
        sink.write(
            "t",
            &[at(0, 4, on("A", 2, 0, 9))],
            &BTreeMap::from([(0, 5)]),
        )
        .await
        .unwrap();
        let after = files_of_day(root.path(), None, next).await;
        assert_eq!(after.iter().filter(|f| before.contains(f)).count(), 1);
        let mut got = prev(&after);
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(got, vec![Some(6.0), Some(9.0)]);
    }
}
