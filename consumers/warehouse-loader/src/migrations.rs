//! Versioned schema migrations, applied at start under an advisory lock (safe when several
//! loaders start at once; idempotent when re-run).

use skuflow_schemas::postgres;
use tokio_postgres::Client;

/// Advisory lock key shared by every skuflow migration run.
const MIGRATION_LOCK: i64 = 0x736b_7566_6c6f_7701;
/// Advisory lock key for partition creation.
pub(crate) const PARTITION_LOCK: i64 = 0x736b_7566_6c6f_7702;

pub const FACT_TABLE: &str = "skuflow.sku_facts";

/// One migration: a version, a name, and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: String,
}

/// Every migration, in order. The fact table's columns come from the schema crate.
pub fn migrations() -> Vec<Migration> {
    vec![
        Migration {
            version: 1,
            name: "fact table and consumer offsets",
            sql: format!(
                "{};\n\
                 CREATE TABLE IF NOT EXISTS skuflow.consumer_offsets (\n\
                     consumer_group text NOT NULL,\n\
                     topic text NOT NULL,\n\
                     partition integer NOT NULL,\n\
                     next_offset bigint NOT NULL,\n\
                     updated_at timestamp with time zone NOT NULL DEFAULT now(),\n\
                     PRIMARY KEY (consumer_group, topic, partition)\n\
                 )",
                postgres::create_fact_table(FACT_TABLE)
            ),
        },
        Migration {
            version: 2,
            name: "views for SQL users",
            sql: "CREATE OR REPLACE VIEW skuflow.latest_stock_price AS\n\
                  SELECT DISTINCT ON (country, store_id, sku)\n\
                      country, store_id, store_category, chain, sku, product_name, category, brand,\n\
                      unit_price, unit_cost, currency, quantity_on_hand, business_date\n\
                  FROM skuflow.sku_facts\n\
                  ORDER BY country, store_id, sku, business_date DESC;\n\
                  CREATE OR REPLACE VIEW skuflow.daily_sales AS\n\
                  SELECT country, store_id, store_category, chain, category, business_date, currency,\n\
                      count(*) AS skus,\n\
                      sum(units_sold) AS units_sold,\n\
                      sum(unit_price * units_sold) AS revenue,\n\
                      sum(unit_cost * units_sold) AS cost,\n\
                      count(unit_cost) AS skus_with_cost\n\
                  FROM skuflow.sku_facts\n\
                  GROUP BY country, store_id, store_category, chain, category, business_date, currency"
                .to_string(),
        },
        Migration {
            version: 3,
            name: "read-only analyst role",
            sql: "DO $$\n\
                  BEGIN\n\
                      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'skuflow_analyst') THEN\n\
                          CREATE ROLE skuflow_analyst NOLOGIN;\n\
                      END IF;\n\
                      GRANT USAGE ON SCHEMA skuflow TO skuflow_analyst;\n\
                      GRANT SELECT ON ALL TABLES IN SCHEMA skuflow TO skuflow_analyst;\n\
                      ALTER DEFAULT PRIVILEGES IN SCHEMA skuflow GRANT SELECT ON TABLES TO skuflow_analyst;\n\
                  EXCEPTION WHEN insufficient_privilege THEN\n\
                      RAISE WARNING 'skuflow: no privilege to create role skuflow_analyst; create it as described in the README';\n\
                  END $$"
                .to_string(),
        },
        Migration {
            version: 4,
            name: "least privilege: nothing for PUBLIC, read-only for analysts",
            // Version 3 gave up on the grants as a whole when the loader could not create the
            // role. Here the role is created only where it is missing and allowed; the grants
            // run whenever the role exists (an administrator may have created it).
            sql: "DO $$\n\
                  BEGIN\n\
                      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'skuflow_analyst') THEN\n\
                          BEGIN\n\
                              CREATE ROLE skuflow_analyst NOLOGIN;\n\
                          EXCEPTION WHEN insufficient_privilege THEN\n\
                              RAISE WARNING 'skuflow: cannot create role skuflow_analyst (no CREATEROLE); an administrator creates it as the README shows';\n\
                          END;\n\
                      END IF;\n\
                      IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'skuflow_analyst') THEN\n\
                          GRANT USAGE ON SCHEMA skuflow TO skuflow_analyst;\n\
                          GRANT SELECT ON ALL TABLES IN SCHEMA skuflow TO skuflow_analyst;\n\
                          ALTER DEFAULT PRIVILEGES IN SCHEMA skuflow GRANT SELECT ON TABLES TO skuflow_analyst;\n\
                      END IF;\n\
                  END $$;\n\
                  REVOKE ALL ON SCHEMA skuflow FROM PUBLIC;\n\
                  REVOKE ALL ON ALL TABLES IN SCHEMA skuflow FROM PUBLIC"
                .to_string(),
        },
    ]
}

/// Applies the migrations that are not applied yet. Returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS skuflow;\n\
         CREATE TABLE IF NOT EXISTS skuflow.schema_migrations (\n\
             version integer PRIMARY KEY,\n\
             name text NOT NULL,\n\
             applied_at timestamp with time zone NOT NULL DEFAULT now()\n\
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM skuflow.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for m in migrations() {
        if done.contains(&m.version) {
            continue;
        }
        tx.batch_execute(&m.sql).await?;
        tx.execute(
            "INSERT INTO skuflow.schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tracing::info!(version = m.version, name = m.name, "Applied migration.");
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}
