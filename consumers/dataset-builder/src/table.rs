//! The dataset as one Delta Lake table at the dataset root, partitioned by `country` and
//! `business_date`: every batch the builder writes is one table version. A version names the
//! files that make up the dataset then; files are never changed, a rewritten file is a new file
//! (an `add`) and the old one a `remove`, so every earlier version stays readable until VACUUM
//! deletes what no kept version names.
//!
//! The consumed Kafka offsets travel in the same commit as the files, as Delta transaction
//! identifiers (`txn`: app id `skuflow:<topic>:<partition>`, version = the next offset), so the
//! table itself says which records it holds: a restarted builder resumes there, and a commit
//! whose offsets another writer committed first fails instead of writing a batch twice.
//! Commits are atomic by the store's put-if-absent of the log entry (the local file system's
//! hard link, S3's `If-None-Match: *`).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use chrono::{DateTime, NaiveDate, Utc};
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake_core::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    LogStoreRef, ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableConfig, DeltaTableError};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use url::Url;

/// The table's partition columns, in path order.
pub const PARTITION_COLUMNS: [&str; 2] = ["country", "business_date"];

/// Where the table lives: the store with "/" at the root of the bucket (or file system), the
/// table's URL, and the same store with the table's directory as its root.
#[derive(Clone)]
pub struct Location {
    pub root_store: Arc<dyn ObjectStore>,
    pub url: Url,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Opens `s3://` URLs for delta-rs (which knows only `file://` and `memory://` by itself): the
/// store from the standard AWS_* variables, commits by put-if-absent (`If-None-Match: *`).
struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &StorageConfig,
    ) -> deltalake_core::DeltaResult<(ObjectStoreRef, Path)> {
        let bucket = url.host_str().unwrap_or_default();
        let s3 = skuflow_platform::store::s3_builder(bucket, None, "--dataset-root")
            .build()
            .map_err(|e| DeltaTableError::GenericError {
                source: Box::new(e),
            })?;
        let prefix = Path::from_url_path(url.path())?;
        Ok((Arc::new(s3), prefix))
    }
}

impl LogStoreFactory for S3Stores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Registers [`S3Stores`] once per process.
fn register_s3() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let scheme = Url::parse("s3://").expect("a valid scheme");
        object_store_factories().insert(scheme.clone(), Arc::new(S3Stores));
        logstore_factories().insert(scheme, Arc::new(S3Stores));
    });
}

impl Location {
    /// `root` as given to `--dataset-root`: a local directory (created when missing) or
    /// `s3://bucket/prefix` (credentials and endpoint from the standard AWS_* variables).
    pub fn parse(root: &str, flag: &str) -> anyhow::Result<Location> {
        // The same checks, credentials and directory creation as every other root.
        let opened = skuflow_platform::store::open_root(root, flag)?;
        match opened.local_dir {
            Some(dir) => Ok(Location {
                root_store: Arc::new(LocalFileSystem::new()),
                url: Url::from_directory_path(&dir)
                    .map_err(|()| anyhow::anyhow!("{flag} {root}: not an absolute directory"))?,
            }),
            // An S3 root's store is the bucket's root, and the prefix is in the URL.
            None => Ok(Location {
                root_store: opened.store,
                url: Url::parse(root.trim_end_matches('/'))
                    .with_context(|| format!("{flag} {root}: not a valid S3 URL"))?,
            }),
        }
    }

    /// The log store of the table (its commits are put-if-absent on `root_store`).
    pub fn log_store(&self) -> anyhow::Result<LogStoreRef> {
        register_s3();
        let prefix = Path::from_url_path(self.url.path())
            .with_context(|| format!("the path of {}", self.url))?;
        let prefixed: Arc<dyn ObjectStore> =
            Arc::new(PrefixStore::new(self.root_store.clone(), prefix));
        Ok(default_logstore(
            prefixed,
            self.root_store.clone(),
            &self.url,
            &StorageConfig::default(),
        ))
    }

    /// The table, not loaded.
    pub fn table(&self) -> anyhow::Result<DeltaTable> {
        Ok(DeltaTable::new(
            self.log_store()?,
            DeltaTableConfig::default(),
        ))
    }

    /// The latest version of the table; `None` when there is no table here yet.
    pub async fn load(&self) -> anyhow::Result<Option<DeltaTable>> {
        let mut table = self.table()?;
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading the Delta log of {}", self.url)),
        }
    }

    /// The latest version of the table, created with `schema` when there is none; its history
    /// retention set to `keep_days` (see [`retention_properties`]).
    pub async fn open_or_create(
        &self,
        schema: &arrow_schema::Schema,
        name: &str,
        keep_days: u32,
    ) -> anyhow::Result<DeltaTable> {
        let wanted = retention_properties(keep_days);
        if let Some(t) = self.load().await? {
            let config = &t.snapshot()?.metadata().configuration().clone();
            let differs = wanted
                .iter()
                .any(|(k, v)| config.get(k.as_str()) != v.as_ref());
            if !differs {
                return Ok(t);
            }
            let properties = wanted
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            return deltalake_core::operations::set_tbl_properties::SetTablePropertiesBuilder::new(
                t.log_store(),
                t.snapshot()?.clone(),
            )
            .with_properties(properties)
            .with_raise_if_not_exists(false)
            .await
            .context("setting the dataset table's history retention");
        }
        let columns = StructType::try_from_arrow(schema).context("the dataset schema in Delta")?;
        let created = CreateBuilder::new()
            .with_log_store(self.log_store()?)
            .with_table_name(name)
            .with_comment("skuflow training set: one row per (country, store_id, sku, business_date), newest version")
            .with_columns(columns.fields().cloned())
            .with_partition_columns(PARTITION_COLUMNS)
            .with_configuration(wanted)
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(t) => Ok(t),
            // Another builder may have created it in the same instant.
            Err(e) => match self.load().await? {
                Some(t) => Ok(t),
                None => Err(e).with_context(|| format!("creating the Delta table at {}", self.url)),
            },
        }
    }
}

/// The app id of the offsets of one partition of the records topic.
pub fn offsets_app_id(topic: &str, partition: i32) -> String {
    format!("skuflow:{topic}:{partition}")
}

/// The partition values of a country and day, as the log stores them.
pub fn partition_values(country: &str, day: NaiveDate) -> HashMap<String, Option<String>> {
    HashMap::from([
        ("country".to_string(), Some(country.to_string())),
        ("business_date".to_string(), Some(day.to_string())),
    ])
}

/// A data file of the current version.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// Relative to the table root, e.g. `country=SE/business_date=2026-11-21/part-p0-0-….parquet`.
    pub path: String,
    pub size: i64,
    pub rows: Option<u64>,
}

impl DataFile {
    /// The file's name, without its `country=…/business_date=…/` directories.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The data files of the table's loaded version by (country, business day).
pub async fn files_by_day(
    table: &DeltaTable,
) -> anyhow::Result<HashMap<(String, NaiveDate), Vec<DataFile>>> {
    let snapshot = table.snapshot()?;
    let adds: Vec<Add> = snapshot
        .file_actions_iter(table.log_store().as_ref())
        .try_collect()
        .await?;
    let mut out: HashMap<(String, NaiveDate), Vec<DataFile>> = HashMap::new();
    for add in adds {
        let (day, file) = data_file(&add)?;
        out.entry(day).or_default().push(file);
    }
    Ok(out)
}

/// The country and day of an `add`, and the file it names.
fn data_file(add: &Add) -> anyhow::Result<((String, NaiveDate), DataFile)> {
    let day = file_day(&add.path, |k| {
        add.partition_values.get(k).cloned().flatten()
    })?;
    let rows = add
        .stats
        .as_deref()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v["numRecords"].as_u64());
    let file = DataFile {
        path: add.path.clone(),
        size: add.size,
        rows,
    };
    Ok((day, file))
}

fn file_day(
    path: &str,
    value: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(String, NaiveDate)> {
    let (Some(country), Some(day)) = (value("country"), value("business_date")) else {
        bail!("{path}: a data file without its country or business date");
    };
    let day: NaiveDate = day
        .parse()
        .with_context(|| format!("{path}: business_date {day:?}"))?;
    Ok((country, day))
}

/// What one version did to the data files.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<((String, NaiveDate), DataFile)>,
    pub removed: Vec<((String, NaiveDate), String)>,
    /// Transaction identifiers (app id, version): the offsets the version recorded.
    pub txns: Vec<(String, i64)>,
    /// The version changed the table's schema, settings or protocol.
    pub metadata: bool,
}

/// The data files `version` added and removed, read from its log entry.
pub async fn changes(table: &DeltaTable, version: i64) -> anyhow::Result<Changes> {
    let bytes = table
        .log_store()
        .read_commit_entry(version)
        .await?
        .ok_or_else(|| anyhow::anyhow!("version {version} of the dataset table is gone"))?;
    let mut out = Changes::default();
    for action in deltalake_core::logstore::get_actions(version, bytes).await? {
        match action {
            Action::Add(add) => out.added.push(data_file(&add)?),
            Action::Remove(r) => {
                let values = r.partition_values.clone().unwrap_or_default();
                let day = file_day(&r.path, |k| values.get(k).cloned().flatten())?;
                out.removed.push((day, r.path));
            }
            Action::Txn(t) => out.txns.push((t.app_id, t.version)),
            Action::Metadata(_) | Action::Protocol(_) => out.metadata = true,
            _ => {}
        }
    }
    Ok(out)
}

/// The next offsets per partition of `topic` that the loaded version holds.
pub async fn offsets(
    table: &DeltaTable,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> anyhow::Result<HashMap<i32, i64>> {
    let snapshot = table.snapshot()?;
    let mut out = HashMap::new();
    for p in partitions {
        if let Some(v) = snapshot
            .transaction_version(table.log_store().as_ref(), offsets_app_id(topic, p))
            .await?
        {
            out.insert(p, v);
        }
    }
    Ok(out)
}

/// The `add` of a new data file.
pub fn add(path: String, country: &str, day: NaiveDate, size: usize, rows: usize) -> Action {
    Action::Add(Add {
        path,
        partition_values: partition_values(country, day),
        size: size as i64,
        modification_time: Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(format!("{{\"numRecords\":{rows}}}")),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    })
}

/// The `remove` of a data file the new version no longer holds.
pub fn remove(file: &DataFile, country: &str, day: NaiveDate) -> Action {
    Action::Remove(Remove {
        path: file.path.clone(),
        data_change: true,
        deletion_timestamp: Some(Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        partition_values: Some(partition_values(country, day)),
        size: Some(file.size),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    })
}

/// Another writer committed first, in a way this batch conflicts with (the same files
/// replaced, the same offsets): the batch is written again on the new version.
#[derive(Debug, thiserror::Error)]
#[error("another writer committed to the dataset table first ({0}); writing the batch again on its version")]
pub struct Conflict(pub String);

/// Commits `actions` and the offsets of `topic` as one version; returns it.
///
/// A batch is recorded as a MERGE that read the whole table (it did: the day before's medians,
/// the keys' history, the files holding its keys), so Delta's conflict check refuses it when
/// any version committed since the batch read the table added or removed a file: of two
/// builders writing at once, one commits and the other reads the new version and writes its
/// batch again. Several builders can thus share one table, and what each wrote is what a
/// single builder would have.
pub async fn commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    topic: &str,
    offsets: &std::collections::BTreeMap<i32, i64>,
    info: HashMap<String, serde_json::Value>,
) -> anyhow::Result<i64> {
    let operation = DeltaOperation::Merge {
        predicate: None,
        merge_predicate: Some(
            "target.country = source.country AND target.store_id = source.store_id \
             AND target.sku = source.sku AND target.business_date = source.business_date \
             AND target.record_version < source.record_version"
                .to_string(),
        ),
        matched_predicates: Vec::new(),
        not_matched_predicates: Vec::new(),
        not_matched_by_source_predicates: Vec::new(),
    };
    let now = Utc::now().timestamp_millis();
    let txns: Vec<Transaction> = offsets
        .iter()
        .map(|(p, o)| Transaction {
            app_id: offsets_app_id(topic, *p),
            version: *o,
            last_updated: Some(now),
        })
        .collect();
    commit_as(table, actions, operation, txns, info).await
}

/// Compacted files as one version (operation OPTIMIZE): the adds and removes carry
/// `dataChange: false`, so readers of changes know no row changed.
pub async fn commit_compaction(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    target_size: u64,
    info: HashMap<String, serde_json::Value>,
) -> anyhow::Result<i64> {
    let actions = actions
        .into_iter()
        .map(|a| match a {
            Action::Add(add) => Action::Add(Add {
                data_change: false,
                ..add
            }),
            Action::Remove(r) => Action::Remove(Remove {
                data_change: false,
                ..r
            }),
            other => other,
        })
        .collect();
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: target_size as i64,
    };
    commit_as(table, actions, operation, Vec::new(), info).await
}

async fn commit_as(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    txns: Vec<Transaction>,
    info: HashMap<String, serde_json::Value>,
) -> anyhow::Result<i64> {
    let properties = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata(info);
    let committed = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await;
    let version = match committed {
        Ok(c) => c.version(),
        Err(DeltaTableError::Transaction { source })
            if matches!(
                source,
                TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            ) =>
        {
            return Err(Conflict(source.to_string()).into());
        }
        Err(e) => return Err(e).context("committing a version of the dataset table"),
    };
    table
        .update_incremental(None)
        .await
        .context("reading back the committed version")?;
    Ok(version)
}

/// One entry of the table's history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub version: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub operation: String,
    /// Rows the version's new files hold, per the commit's own metadata.
    pub info: HashMap<String, serde_json::Value>,
}

/// The table's history, newest first (at most `limit` entries).
pub async fn history(table: &DeltaTable, limit: Option<usize>) -> anyhow::Result<Vec<VersionInfo>> {
    let latest = table.version().unwrap_or(-1);
    let commits = table.history(limit).await?;
    Ok(commits
        .into_iter()
        .enumerate()
        .map(|(i, c)| VersionInfo {
            // Newest first, one commit info per version (every writer of this table writes one).
            version: latest - i as i64,
            timestamp: c.timestamp.and_then(DateTime::from_timestamp_millis),
            operation: c.operation.unwrap_or_default(),
            info: c.info,
        })
        .collect())
}

/// The table properties that keep `days` of history: removed files and log entries younger than
/// that stay, so every version of the last `days` days can be read.
pub fn retention_properties(days: u32) -> [(String, Option<String>); 2] {
    let interval = Some(format!("interval {days} days"));
    [
        (
            "delta.deletedFileRetentionDuration".to_string(),
            interval.clone(),
        ),
        ("delta.logRetentionDuration".to_string(), interval),
    ]
}

/// What one round of maintenance removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Vacuumed {
    /// Files replaced longer than the retention ago (no kept version names them).
    pub replaced: usize,
    /// Files no version ever named (a writer stopped between writing and committing them),
    /// older than the retention.
    pub orphans: usize,
}

/// VACUUM: deletes the data files that were replaced more than `keep` ago, and the data files no
/// version ever named that are older than `keep` (left by a writer killed before its commit).
/// Versions younger than `keep` stay readable. Manifests, cards and the lease are not data files
/// and are never touched.
pub async fn vacuum(
    table: &DeltaTable,
    keep: chrono::Duration,
) -> anyhow::Result<(DeltaTable, Vacuumed)> {
    use deltalake_core::operations::vacuum::{VacuumBuilder, VacuumMode};
    let log_store = table.log_store();
    let snapshot = table.snapshot()?.clone();
    let mut tracked: std::collections::HashSet<String> =
        snapshot.file_paths_iter().map(|p| p.to_string()).collect();
    tracked.extend(
        snapshot
            .all_tombstones(log_store.as_ref())
            .await?
            .map(|t| t.path.clone()),
    );
    let (table, metrics) = VacuumBuilder::new(log_store.clone(), snapshot)
        .with_retention_period(keep)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Lite)
        .await
        .context("vacuuming the dataset table")?;
    let mut out = Vacuumed {
        replaced: metrics.files_deleted.len(),
        orphans: 0,
    };
    let store = log_store.object_store(None);
    let cutoff = Utc::now() - keep;
    let listed: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await?;
    for meta in listed {
        let path = meta.location.to_string();
        let name = meta.location.filename().unwrap_or_default();
        let data_file =
            path.starts_with("country=") && name.starts_with("part-") && name.ends_with(".parquet");
        if !data_file || tracked.contains(&path) || meta.last_modified >= cutoff {
            continue;
        }
        store
            .delete(&meta.location)
            .await
            .with_context(|| format!("deleting the orphaned file {path}"))?;
        out.orphans += 1;
    }
    Ok((table, out))
}
