//! PostgreSQL helpers shared by the sinks that keep their data and their consumed offsets in
//! PostgreSQL: one retry decision, error text without connection details, versioned migrations
//! per schema, and the offsets table written in the same transaction as the data.

use std::collections::{BTreeMap, HashMap};

use anyhow::anyhow;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

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

/// Connects and drives the connection on a task; the error never holds the URL.
pub async fn connect(url: &str) -> Result<Client, SinkError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| SinkError::Retriable(anyhow!("connecting to PostgreSQL: {}", describe(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(cause = %describe(&e), "PostgreSQL connection ended.");
        }
    });
    Ok(client)
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
    let sql = format!(
        "INSERT INTO {table} (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
         ON CONFLICT (consumer_group, topic, partition) DO UPDATE
         SET next_offset = GREATEST({table}.next_offset, EXCLUDED.next_offset), updated_at = now()"
    );
    for (p, o) in offsets {
        tx.execute(&sql, &[&group, &topic, p, o]).await?;
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
