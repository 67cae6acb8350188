//! Versioned schema migrations, applied at start under an advisory lock (safe when several
//! loaders start at once; idempotent when re-run).

use skuflow_platform::pg::{dead_letter_outbox_ddl, offsets_table_ddl, Migration, Migrations};
use skuflow_schemas::postgres;

/// Advisory lock key shared by every skuflow migration run.
const MIGRATION_LOCK: i64 = 0x736b_7566_6c6f_7701;
/// Advisory lock key for partition creation.
pub(crate) const PARTITION_LOCK: i64 = 0x736b_7566_6c6f_7702;

pub const FACT_TABLE: &str = "skuflow.sku_facts";
/// Where the loader keeps its consumed offsets, next to the facts.
pub const OFFSETS_TABLE: &str = "skuflow.consumer_offsets";
/// Dead letters of refused records, until they are acknowledged on the dead-letter topic.
pub const OUTBOX_TABLE: &str = "skuflow.dead_letter_outbox";
/// One row per upload: its latest lifecycle state (`sku.files.v1`).
pub const FILES_TABLE: &str = "skuflow.files";
/// One row per late-upload notice of the notifier (`sku.files.v1`, status `late`).
pub const LATE_TABLE: &str = "skuflow.late_uploads";
/// One row per rejected row or refused record (`sku.rejects.v1`), one LIST partition per country.
pub const REJECTS_TABLE: &str = "skuflow.rejects";

/// Every migration, in order. The fact table's columns come from the schema crate.
pub fn migrations() -> Vec<Migration> {
    vec![
        Migration {
            version: 1,
            name: "fact table and consumer offsets",
            sql: format!(
                "{};\n{}",
                postgres::create_fact_table(FACT_TABLE),
                offsets_table_ddl(OFFSETS_TABLE)
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
        Migration {
            version: 5,
            name: "dead-letter outbox",
            sql: dead_letter_outbox_ddl(OUTBOX_TABLE),
        },
        Migration {
            version: 6,
            name: "upload history, rejected rows and late uploads for analysts",
            sql: "CREATE TABLE skuflow.files (\n\
                      file_id text PRIMARY KEY,\n\
                      status text NOT NULL,\n\
                      bucket text NOT NULL,\n\
                      key text NOT NULL,\n\
                      etag text,\n\
                      size bigint,\n\
                      country text,\n\
                      store_id text,\n\
                      store_category text,\n\
                      chain text,\n\
                      business_date date,\n\
                      last_modified timestamptz,\n\
                      rows_total bigint,\n\
                      rows_valid bigint,\n\
                      rows_rejected bigint,\n\
                      bytes bigint,\n\
                      duration_ms bigint,\n\
                      reason text,\n\
                      warnings text[] NOT NULL DEFAULT '{}',\n\
                      moved_to text,\n\
                      accepted_at timestamptz,\n\
                      finished_at timestamptz,\n\
                      updated_at timestamptz NOT NULL\n\
                  );\n\
                  CREATE INDEX files_store_idx ON skuflow.files (country, store_id, last_modified);\n\
                  CREATE TABLE skuflow.late_uploads (\n\
                      event_id text PRIMARY KEY,\n\
                      country text,\n\
                      store_id text,\n\
                      store_category text,\n\
                      chain text,\n\
                      missed_day date,\n\
                      last_upload timestamptz,\n\
                      late_at timestamptz NOT NULL,\n\
                      reason text\n\
                  );\n\
                  CREATE TABLE skuflow.rejects (\n\
                      country text NOT NULL,\n\
                      file_id text NOT NULL,\n\
                      stage text NOT NULL,\n\
                      line bigint NOT NULL,\n\
                      reasons_digest text NOT NULL,\n\
                      bucket text NOT NULL,\n\
                      key text NOT NULL,\n\
                      record_id text,\n\
                      field text,\n\
                      rule text NOT NULL,\n\
                      message text NOT NULL,\n\
                      reasons jsonb NOT NULL,\n\
                      raw text NOT NULL,\n\
                      raw_truncated boolean NOT NULL,\n\
                      rejected_at timestamptz NOT NULL,\n\
                      PRIMARY KEY (country, file_id, stage, line, reasons_digest)\n\
                  ) PARTITION BY LIST (country);\n\
                  CREATE TABLE skuflow.rejects_unknown PARTITION OF skuflow.rejects FOR VALUES IN ('--');\n\
                  CREATE INDEX rejects_time_idx ON skuflow.rejects (rejected_at);\n\
                  CREATE VIEW skuflow.upload_quality AS\n\
                  SELECT country, store_id,\n\
                      (coalesce(last_modified, accepted_at, updated_at) AT TIME ZONE 'UTC')::date AS upload_day,\n\
                      count(*) AS uploads,\n\
                      count(*) FILTER (WHERE status = 'failed') AS failed,\n\
                      count(*) FILTER (WHERE status = 'accepted') AS in_flight,\n\
                      coalesce(sum(rows_total), 0) AS rows_total,\n\
                      coalesce(sum(rows_valid), 0) AS rows_valid,\n\
                      coalesce(sum(rows_rejected), 0) AS rows_rejected,\n\
                      round(sum(rows_rejected)::numeric / nullif(sum(rows_total), 0), 4) AS rejected_share\n\
                  FROM skuflow.files\n\
                  GROUP BY 1, 2, 3;\n\
                  CREATE VIEW skuflow.reject_rules AS\n\
                  SELECT r.country, r.stage, reason->>'rule' AS rule, reason->>'field' AS field,\n\
                      count(*) AS rows, count(DISTINCT r.file_id) AS files, max(r.rejected_at) AS last_seen\n\
                  FROM skuflow.rejects r CROSS JOIN LATERAL jsonb_array_elements(r.reasons) AS reason\n\
                  GROUP BY 1, 2, 3, 4;\n\
                  DO $$\n\
                  BEGIN\n\
                      IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'skuflow_analyst') THEN\n\
                          GRANT SELECT ON ALL TABLES IN SCHEMA skuflow TO skuflow_analyst;\n\
                      END IF;\n\
                  END $$;\n\
                  REVOKE ALL ON ALL TABLES IN SCHEMA skuflow FROM PUBLIC"
                .to_string(),
        },
    ]
}

/// This schema's migrations.
pub fn all() -> Migrations {
    Migrations {
        schema: "skuflow",
        lock: MIGRATION_LOCK,
        list: migrations(),
    }
}
