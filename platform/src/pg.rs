//! PostgreSQL helpers shared by the sinks that keep their data and their consumed offsets in
//! PostgreSQL: one retry decision, error text without connection details, versioned migrations
//! per schema, and the offsets table written in the same transaction as the data.

use std::collections::{BTreeMap, HashMap};

use anyhow::anyhow;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

pub use crate::pg_tls::{parse as parse_url, PgTarget, TlsMode};

use crate::SinkError;

/// Whether a PostgreSQL error is worth retrying (connection, restart, overload, deadlock).
pub fn is_retriable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("58")
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}

/// A store category as a PostgreSQL text value, for COPY and query parameters.
pub fn store_category_value(
    category: skuflow_schemas::StoreCategory,
) -> &'static (dyn tokio_postgres::types::ToSql + Sync) {
    use skuflow_schemas::StoreCategory;
    static INDIVIDUAL: &str = StoreCategory::Individual.as_str();
    static RETAIL_CHAIN: &str = StoreCategory::RetailChain.as_str();
    match category {
        StoreCategory::Individual => &INDIVIDUAL,
        StoreCategory::RetailChain => &RETAIL_CHAIN,
    }
}

/// COPYs `rows` in binary format with `sql` (a `COPY … FROM STDIN (FORMAT binary)`) in `tx`;
/// `fill` puts one row's values, in the order of `types`, into the vector it is given.
pub async fn copy_binary<'a, R: Sync>(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    types: &[tokio_postgres::types::Type],
    rows: &'a [R],
    fill: impl Fn(&'a R, &mut Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>),
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(sql).await?;
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(sink, types);
    futures::pin_mut!(writer);
    let mut values = Vec::with_capacity(types.len());
    for row in rows {
        values.clear();
        fill(row, &mut values);
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await
}

/// Whether a batch should first try a COPY straight into its keyed table (new keys only, the
/// common case), or go through the slower merge that compares versions with the stored keys.
/// After a direct COPY met a stored key, the next batches merge for a while: a replay or a run
/// of corrections would otherwise pay for a failed COPY each time.
#[derive(Debug, Default)]
pub struct DirectFirst {
    merge_only: u32,
}

impl DirectFirst {
    /// Batches that merge after a direct COPY met a stored key.
    pub const MERGE_AFTER_CONFLICT: u32 = 16;

    /// Whether this batch tries the direct COPY first.
    pub fn try_direct(&mut self) -> bool {
        let direct = self.merge_only == 0;
        self.merge_only = self.merge_only.saturating_sub(1);
        direct
    }

    /// The direct COPY failed with `e`: `true` when a key was stored already (the savepoint is
    /// to be rolled back and the batch merged); the next batches merge.
    pub fn conflicted(&mut self, e: &tokio_postgres::Error) -> bool {
        let stored = e.code() == Some(&SqlState::UNIQUE_VIOLATION);
        if stored {
            self.merge_only = Self::MERGE_AFTER_CONFLICT;
        }
        stored
    }
}

/// Whether the error is about the data of a row (retrying cannot fix it; single the row out).
pub fn is_row_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// An error's text without connection details.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A sink error from a PostgreSQL error: retriable or fatal, described as `what: cause`.
pub fn classify(e: tokio_postgres::Error, what: &str) -> SinkError {
    let msg = anyhow!("{what}: {}", describe(&e));
    if is_retriable(&e) {
        SinkError::Retriable(msg)
    } else {
        SinkError::Fatal(msg)
    }
}

/// The TLS failure behind a connection error (a refused certificate, a failed handshake).
fn tls_failure(e: &tokio_postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r.to_string());
        }
        cause = c.source();
    }
    None
}

/// The client of a new connection, with the connection driven on a task of its own.
fn drive<S, T>((client, conn): (Client, tokio_postgres::Connection<S, T>)) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(cause = %describe(&e), "PostgreSQL connection ended.");
        }
    });
    client
}

/// Connects (with TLS as the URL's `sslmode` asks, see [`crate::pg_tls`]) and drives the
/// connection on a task. Errors name the host and the reason, never the URL: a refused
/// certificate or credentials are fatal (a configuration to fix), anything else is retried.
pub async fn connect(url: &str) -> Result<Client, SinkError> {
    let target = parse_url(url).map_err(|e| SinkError::Fatal(e.context("--pg-url")))?;
    let host = target.host();
    let tls = target
        .tls()
        .map_err(|e| SinkError::Fatal(e.context("--pg-url")))?;
    let fail = |e: tokio_postgres::Error| {
        if let Some(why) = tls_failure(&e) {
            return SinkError::Fatal(anyhow!(
                "PostgreSQL at {host}: TLS refused ({why}); check sslmode and sslrootcert"
            ));
        }
        let msg = anyhow!("connecting to PostgreSQL at {host}: {}", describe(&e));
        match e.code() {
            // Authentication and authorisation (wrong password, no pg_hba.conf entry).
            Some(c) if c.code().starts_with("28") => SinkError::Fatal(msg),
            _ => SinkError::Retriable(msg),
        }
    };
    let client = match tls {
        None => drive(target.config.connect(NoTls).await.map_err(fail)?),
        Some(cfg) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(cfg);
            drive(target.config.connect(tls).await.map_err(fail)?)
        }
    };
    Ok(client)
}

/// A sink's connection: opened on first use and again once it has closed, with the sink's
/// migrations and its session setup (staging tables) applied to every new connection.
pub struct SinkConnection {
    url: String,
    migrations: Migrations,
    setup: String,
    client: Option<Client>,
}

impl SinkConnection {
    /// `setup` runs on every new connection, after the migrations.
    pub fn new(url: &str, migrations: Migrations, setup: String) -> Self {
        SinkConnection {
            url: url.to_string(),
            migrations,
            setup,
            client: None,
        }
    }

    /// The open connection, and whether it was opened now (session state starts over).
    pub async fn open(&mut self) -> Result<(&mut Client, bool), SinkError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        let fresh = self.client.is_none();
        if fresh {
            let mut client = connect(&self.url).await?;
            self.migrations
                .apply(&mut client)
                .await
                .map_err(|e| classify(e, "applying migrations"))?;
            client
                .batch_execute(&self.setup)
                .await
                .map_err(|e| classify(e, "creating the staging tables"))?;
            self.client = Some(client);
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| SinkError::Retriable(anyhow!("no connection")))?;
        Ok((client, fresh))
    }

    /// The connection [`SinkConnection::open`] returned. Panics when there is none: open first.
    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected before writing")
    }

    /// Forgets the connection (after an error that may have broken it).
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// `SELECT 1` on the connection (opening it if needed): the sink's readiness check.
    pub async fn ping(&mut self) -> Result<(), SinkError> {
        let (client, _) = self.open().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| classify(e, "checking the connection"))
    }

    /// The offsets `group` has stored in `table` for `topic`.
    pub async fn durable_offsets(
        &mut self,
        table: &str,
        group: &str,
        topic: &str,
    ) -> Result<HashMap<i32, i64>, SinkError> {
        let (client, _) = self.open().await?;
        read_offsets(client, table, group, topic).await
    }
}

impl SinkConnection {
    /// The dead letters `group` has in the outbox `table`, oldest first, with their ids.
    pub async fn pending_dead_letters(
        &mut self,
        table: &str,
        group: &str,
    ) -> Result<Vec<(i64, skuflow_schemas::RejectMessage)>, SinkError> {
        let (client, _) = self.open().await?;
        let rows = client
            .query(
                &format!("SELECT id, letter FROM {table} WHERE consumer_group = $1 ORDER BY id"),
                &[&group],
            )
            .await
            .map_err(|e| classify(e, "reading the dead-letter outbox"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (id, text): (i64, String) = (r.get(0), r.get(1));
            match serde_json::from_str(&text) {
                Ok(letter) => out.push((id, letter)),
                Err(e) => {
                    return Err(SinkError::Fatal(anyhow!(
                        "dead letter {id} in {table} is not a sku-reject/v1 message: {e}"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Removes the dead letters `ids` of `group` from the outbox `table` (they are acknowledged).
    pub async fn clear_dead_letters(
        &mut self,
        table: &str,
        group: &str,
        ids: &[i64],
    ) -> Result<(), SinkError> {
        let (client, _) = self.open().await?;
        client
            .execute(
                &format!("DELETE FROM {table} WHERE consumer_group = $1 AND id = ANY($2)"),
                &[&group, &ids],
            )
            .await
            .map_err(|e| classify(e, "clearing the dead-letter outbox"))?;
        Ok(())
    }
}

/// One migration: a version, a name, and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: String,
}

/// The migrations of one schema: applied under an advisory lock (safe when several binaries
/// start at once), each recorded in `<schema>.schema_migrations`.
pub struct Migrations {
    /// Schema name (an identifier chosen by skuflow, never user input).
    pub schema: &'static str,
    /// Advisory lock key, one per schema.
    pub lock: i64,
    pub list: Vec<Migration>,
}

impl Migrations {
    /// Applies the migrations not applied yet; returns the versions applied now.
    pub async fn apply(&self, client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
        let schema = self.schema;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock])
            .await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};\n\
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (\n\
                 version integer PRIMARY KEY,\n\
                 name text NOT NULL,\n\
                 applied_at timestamp with time zone NOT NULL DEFAULT now()\n\
             )"
        ))
        .await?;
        let done: Vec<i32> = tx
            .query(
                &format!("SELECT version FROM {schema}.schema_migrations"),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for m in &self.list {
            if done.contains(&m.version) {
                continue;
            }
            tx.batch_execute(&m.sql).await?;
            tx.execute(
                &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
                &[&m.version, &m.name],
            )
            .await?;
            tracing::info!(
                schema,
                version = m.version,
                name = m.name,
                "Applied migration."
            );
            applied.push(m.version);
        }
        tx.commit().await?;
        Ok(applied)
    }
}

/// DDL of an offsets table (`table` is an identifier chosen by skuflow).
pub fn offsets_table_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n\
             consumer_group text NOT NULL,\n\
             topic text NOT NULL,\n\
             partition integer NOT NULL,\n\
             next_offset bigint NOT NULL,\n\
             updated_at timestamp with time zone NOT NULL DEFAULT now(),\n\
             PRIMARY KEY (consumer_group, topic, partition)\n\
         )"
    )
}

/// Stores the next offsets of `group` in `table`, inside the caller's transaction; an offset
/// never moves back.
pub async fn store_offsets(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), tokio_postgres::Error> {
    upsert_offsets(tx, table, group, topic, offsets, true).await
}

/// Sets the next offsets of `group` in `table` to `offsets`, backwards too (`skuflow replay`),
/// inside the caller's transaction.
pub async fn move_offsets(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), tokio_postgres::Error> {
    upsert_offsets(tx, table, group, topic, offsets, false).await
}

async fn upsert_offsets(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    group: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    forward_only: bool,
) -> Result<(), tokio_postgres::Error> {
    let next = if forward_only {
        format!("GREATEST({table}.next_offset, EXCLUDED.next_offset)")
    } else {
        "EXCLUDED.next_offset".to_string()
    };
    let sql = format!(
        "INSERT INTO {table} (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
         ON CONFLICT (consumer_group, topic, partition) DO UPDATE
         SET next_offset = {next}, updated_at = now()"
    );
    for (p, o) in offsets {
        tx.execute(&sql, &[&group, &topic, p, o]).await?;
    }
    Ok(())
}

/// DDL of a dead-letter outbox (`table` is an identifier chosen by skuflow): the dead letters of
/// records a sink refused, stored in the transaction that stores the offsets past them, and
/// removed once the consume loop has them acknowledged on the dead-letter topic. A crash between
/// the two loses none: the loop relays what is left when it starts.
pub fn dead_letter_outbox_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n\
             id bigserial PRIMARY KEY,\n\
             consumer_group text NOT NULL,\n\
             letter text NOT NULL,\n\
             stored_at timestamp with time zone NOT NULL DEFAULT now()\n\
         )"
    )
}

/// Stores `letters` in the outbox `table` for `group`, inside the caller's transaction.
pub async fn store_dead_letters(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    group: &str,
    letters: &[skuflow_schemas::RejectMessage],
) -> Result<(), tokio_postgres::Error> {
    if letters.is_empty() {
        return Ok(());
    }
    let sql = format!("INSERT INTO {table} (consumer_group, letter) VALUES ($1, $2)");
    for l in letters {
        // A RejectMessage always serializes (strings, numbers, a timestamp).
        let json = serde_json::to_string(l).unwrap_or_default();
        tx.execute(&sql, &[&group, &json]).await?;
    }
    Ok(())
}

/// The next offsets of `group` on `topic` stored in `table`, per partition.
pub async fn read_offsets(
    client: &Client,
    table: &str,
    group: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, SinkError> {
    let rows = client
        .query(
            &format!(
                "SELECT partition, next_offset FROM {table} WHERE consumer_group = $1 AND topic = $2"
            ),
            &[&group, &topic],
        )
        .await
        .map_err(|e| classify(e, "reading stored offsets"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Whether `c` looks like an ISO 3166-1 alpha-2 code (two ASCII capitals), safe to put in an
/// identifier.
pub fn valid_country(c: &str) -> bool {
    c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// The rows of a batch a natural-key table takes: per natural key (country, store_id, sku,
/// business_date) the newest version in the batch (an upsert cannot touch a row twice in one
/// statement), in batch order, with their index; records whose country cannot name a
/// partition are refused.
pub fn newest_per_natural_key(
    batch: &[crate::Consumed<skuflow_schemas::SkuRecord>],
) -> (
    Vec<(usize, &skuflow_schemas::SkuRecord)>,
    Vec<crate::Refusal>,
) {
    use std::collections::hash_map::Entry;
    let mut refusals = Vec::new();
    let mut newest: HashMap<
        (&str, &str, &str, chrono::NaiveDate),
        (usize, &skuflow_schemas::SkuRecord),
    > = HashMap::with_capacity(batch.len());
    for (i, c) in batch.iter().enumerate() {
        let r = &c.value;
        if !valid_country(&r.country) {
            refusals.push(crate::Refusal {
                index: i,
                rule: "country".into(),
                message: format!("country `{}` is not an ISO 3166-1 alpha-2 code", r.country),
            });
            continue;
        }
        let key = (
            r.country.as_str(),
            r.store_id.as_str(),
            r.sku.as_str(),
            r.business_date,
        );
        match newest.entry(key) {
            Entry::Occupied(mut o) => {
                if o.get().1.record_version < r.record_version {
                    o.insert((i, r));
                }
            }
            Entry::Vacant(v) => {
                v.insert((i, r));
            }
        }
    }
    let mut rows: Vec<(usize, &skuflow_schemas::SkuRecord)> = newest.into_values().collect();
    rows.sort_by_key(|(i, _)| *i);
    (rows, refusals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Consumed;
    use skuflow_schemas::SkuRecord;

    fn rec(country: &str, sku: &str, version: i64) -> Consumed<SkuRecord> {
        let v = serde_json::json!({
            "schema": skuflow_schemas::RECORD_SCHEMA,
            "record_id": format!("{sku}-{version}"), "record_version": version,
            "country": country, "store_id": "s1", "store_category": "individual", "chain": null,
            "sku": sku, "product_name": "p", "category": "c", "brand": null,
            "unit_price": "1.00", "unit_cost": null, "currency": "EUR",
            "quantity_on_hand": 1, "units_sold": 1, "business_date": "2026-11-01",
            "barcode": null, "file_id": "f", "source_bucket": "b", "source_key": "k",
            "source_etag": "e", "source_line": 2,
            "source_last_modified": "2026-11-01T00:00:00Z", "ingested_at": "2026-11-01T00:00:00Z"
        });
        Consumed {
            partition: 0,
            offset: 0,
            value: serde_json::from_value(v).unwrap(),
        }
    }

    #[test]
    fn keeps_the_newest_version_per_key_in_batch_order_and_refuses_bad_countries() {
        let batch = [
            rec("DE", "a", 5),
            rec("DE", "b", 1),
            rec("DE", "a", 7),
            rec("DE", "a", 6),
            rec("de", "c", 1),
            rec("FR", "a", 1),
        ];
        let (rows, refused) = newest_per_natural_key(&batch);
        let got: Vec<(usize, &str, i64)> = rows
            .iter()
            .map(|(i, r)| (*i, r.sku.as_str(), r.record_version))
            .collect();
        assert_eq!(got, vec![(1, "b", 1), (2, "a", 7), (5, "a", 1)]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].index, 4);
        assert_eq!(refused[0].rule, "country");
    }
}
