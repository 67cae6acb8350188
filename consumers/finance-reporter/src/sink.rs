//! The finance sink: each record's contribution (revenue, cost, units, stock value) is kept per
//! natural key in `skuflow_finance.lines`; the daily aggregates change by exactly what a batch
//! changes there (a newer version of a key first takes the old contribution away), in one
//! transaction with the consumed offsets. Replays and duplicates change nothing: a version that
//! is not newer than the stored one is not applied.
//!
//! A batch of new keys (the common case: a store's upload of a day) is COPYed straight into the
//! lines and its contribution summed here, so PostgreSQL only adds a few sums per store, day and
//! category. A batch that meets a stored key goes back to its savepoint and takes the merge,
//! which compares versions and takes the old contributions away in SQL.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use skuflow_platform::consume::dead_letters;
use skuflow_platform::pg::{self, classify, describe, is_retriable, is_row_error};
use skuflow_platform::{Consumed, Refusal, Sink, SinkError};
use skuflow_schemas::{RejectMessage, SkuRecord};

use crate::migrations::{self, DAILY, DIMENSIONS, LINES, MEASURES, OFFSETS_TABLE, OUTBOX_TABLE};

/// The sink's name: its dead letters' stage.
const SINK_NAME: &str = "finance-reporter";

/// Columns of a line, in the order of its COPY.
const LINE_COLUMNS: [&str; 15] = [
    "country",
    "store_id",
    "sku",
    "business_date",
    "record_version",
    "record_id",
    "store_category",
    "chain",
    "category",
    "currency",
    "unit_price",
    "unit_cost",
    "units_sold",
    "quantity_on_hand",
    "file_id",
];

/// Types of [`LINE_COLUMNS`], for the binary COPY.
const LINE_TYPES: [Type; 15] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::DATE,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::INT4,
    Type::INT4,
    Type::TEXT,
];

static NO_CHAIN: &str = "";

/// A line's values in the order of [`LINE_COLUMNS`].
fn line_values<'a>(r: &'a SkuRecord, values: &mut Vec<&'a (dyn ToSql + Sync)>) {
    let chain: &'a (dyn ToSql + Sync) = match &r.chain {
        Some(c) => c,
        None => &NO_CHAIN,
    };
    values.extend([
        &r.country as &(dyn ToSql + Sync),
        &r.store_id,
        &r.sku,
        &r.business_date,
        &r.record_version,
        &r.record_id,
        pg::store_category_value(r.store_category),
        chain,
        &r.category,
        &r.currency,
        &r.unit_price,
        &r.unit_cost,
        &r.units_sold,
        &r.quantity_on_hand,
        &r.file_id,
    ]);
}

/// The dimensions of a daily aggregate row, in the order of [`DIMENSIONS`].
type Dims<'a> = (
    NaiveDate,
    &'a str,
    &'a str,
    &'static str,
    &'a str,
    &'a str,
    &'a str,
);

/// The measures of a daily aggregate row, in the order of [`MEASURES`].
#[derive(Default)]
struct Sums {
    skus: i64,
    skus_with_cost: i64,
    units: i64,
    revenue: Decimal,
    revenue_with_cost: Decimal,
    cost: Decimal,
    stock_value_retail: Decimal,
    stock_value_cost: Decimal,
}

impl Sums {
    /// Adds the contribution of `r` (what [`contribution`] computes in SQL); `None` when a sum
    /// leaves the range of exact decimals (PostgreSQL's numeric has no such limit).
    fn add(&mut self, r: &SkuRecord) -> Option<()> {
        let units = Decimal::from(r.units_sold);
        let on_hand = Decimal::from(r.quantity_on_hand);
        let revenue = r.unit_price.checked_mul(units)?;
        self.skus += 1;
        self.units += i64::from(r.units_sold);
        self.revenue = self.revenue.checked_add(revenue)?;
        self.stock_value_retail = self
            .stock_value_retail
            .checked_add(r.unit_price.checked_mul(on_hand)?)?;
        if let Some(cost) = r.unit_cost {
            self.skus_with_cost += 1;
            self.revenue_with_cost = self.revenue_with_cost.checked_add(revenue)?;
            self.cost = self.cost.checked_add(cost.checked_mul(units)?)?;
            self.stock_value_cost = self
                .stock_value_cost
                .checked_add(cost.checked_mul(on_hand)?)?;
        }
        Some(())
    }
}

/// The contribution of a batch of new lines to the daily aggregates, as the column arrays of
/// the statement that adds them.
#[derive(Default)]
struct Contribution<'a> {
    business_date: Vec<NaiveDate>,
    country: Vec<&'a str>,
    store_id: Vec<&'a str>,
    store_category: Vec<&'static str>,
    chain: Vec<&'a str>,
    category: Vec<&'a str>,
    currency: Vec<&'a str>,
    counts: [Vec<i64>; 3],
    amounts: [Vec<Decimal>; 5],
}

impl<'a> Contribution<'a> {
    /// Sums `rows` per aggregate row; `None` when a sum is out of exact decimal range.
    fn of(rows: &[(usize, &'a SkuRecord)]) -> Option<Self> {
        let mut sums: HashMap<Dims<'a>, Sums> = HashMap::new();
        for (_, r) in rows {
            let dims = (
                r.business_date,
                r.country.as_str(),
                r.store_id.as_str(),
                r.store_category.as_str(),
                r.chain.as_deref().unwrap_or(""),
                r.category.as_str(),
                r.currency.as_str(),
            );
            sums.entry(dims).or_default().add(r)?;
        }
        let mut c = Contribution::default();
        for (d, s) in sums {
            c.business_date.push(d.0);
            c.country.push(d.1);
            c.store_id.push(d.2);
            c.store_category.push(d.3);
            c.chain.push(d.4);
            c.category.push(d.5);
            c.currency.push(d.6);
            for (v, x) in c.counts.iter_mut().zip([s.skus, s.skus_with_cost, s.units]) {
                v.push(x);
            }
            let amounts = [
                s.revenue,
                s.revenue_with_cost,
                s.cost,
                s.stock_value_retail,
                s.stock_value_cost,
            ];
            for (v, x) in c.amounts.iter_mut().zip(amounts) {
                v.push(x);
            }
        }
        Some(c)
    }

    async fn add_to_daily(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
    ) -> Result<u64, tokio_postgres::Error> {
        let [skus, with_cost, units] = &self.counts;
        let [revenue, revenue_with_cost, cost, retail, at_cost] = &self.amounts;
        tx.execute(
            sql,
            &[
                &self.business_date,
                &self.country,
                &self.store_id,
                &self.store_category,
                &self.chain,
                &self.category,
                &self.currency,
                skus,
                with_cost,
                units,
                revenue,
                revenue_with_cost,
                cost,
                retail,
                at_cost,
            ],
        )
        .await
    }
}

/// The contribution of line `x` to each measure, in the order of [`MEASURES`], times `sign`.
fn contribution(x: &str, sign: i32) -> String {
    let parts = [
        "1".to_string(),
        format!("({x}.unit_cost IS NOT NULL)::int"),
        format!("{x}.units_sold"),
        format!("{x}.unit_price * {x}.units_sold"),
        format!("CASE WHEN {x}.unit_cost IS NULL THEN 0 ELSE {x}.unit_price * {x}.units_sold END"),
        format!("coalesce({x}.unit_cost * {x}.units_sold, 0)"),
        format!("{x}.unit_price * {x}.quantity_on_hand"),
        format!("coalesce({x}.unit_cost * {x}.quantity_on_hand, 0)"),
    ];
    let dims: Vec<String> = DIMENSIONS.iter().map(|d| format!("{x}.{d}")).collect();
    let measures: Vec<String> = parts.iter().map(|p| format!("{sign} * ({p})")).collect();
    format!("{}, {}", dims.join(", "), measures.join(", "))
}

/// The statements of one batch, built once.
struct Statements {
    setup: String,
    stage: String,
    take_old: String,
    put_new: String,
    clear_stage: String,
    aggregate: String,
    drop_empty: String,
    /// The direct COPY of a batch of new keys into the lines.
    copy_lines: String,
    /// Adds a [`Contribution`] computed here to the daily aggregates.
    add_daily: String,
}

impl Statements {
    fn new() -> Self {
        let cols = LINE_COLUMNS.join(", ");
        let key = "country, store_id, sku, business_date";
        let updates: Vec<String> = LINE_COLUMNS[4..]
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let dims = DIMENSIONS.join(", ");
        let measures = MEASURES.join(", ");
        let sums: Vec<String> = MEASURES.iter().map(|m| format!("sum({m})")).collect();
        let adds: Vec<String> = MEASURES
            .iter()
            .map(|m| format!("{m} = d.{m} + EXCLUDED.{m}"))
            .collect();
        let dim_match: Vec<String> = DIMENSIONS
            .iter()
            .map(|d| format!("d.{d} = c.{d}"))
            .collect();
        Statements {
            setup: format!(
                "SET synchronous_commit = off;\n\
                 CREATE TEMP TABLE IF NOT EXISTS fin_staging (LIKE {LINES}) ON COMMIT DELETE ROWS;\n\
                 CREATE TEMP TABLE IF NOT EXISTS fin_contrib ON COMMIT DELETE ROWS AS\n\
                 SELECT {dims}, {measures} FROM {DAILY} WITH NO DATA"
            ),
            stage: format!("COPY fin_staging ({cols}) FROM STDIN (FORMAT binary)"),
            take_old: format!(
                "WITH old AS (\n\
                     SELECT l.* FROM {LINES} l JOIN fin_staging s USING ({key})\n\
                     WHERE l.record_version < s.record_version FOR UPDATE OF l)\n\
                 INSERT INTO fin_contrib SELECT {} FROM old",
                contribution("old", -1)
            ),
            put_new: format!(
                "WITH up AS (\n\
                     INSERT INTO {LINES} AS l ({cols}) SELECT {cols} FROM fin_staging\n\
                     ON CONFLICT ({key}) DO UPDATE SET {}\n\
                     WHERE l.record_version < EXCLUDED.record_version\n\
                     RETURNING *)\n\
                 INSERT INTO fin_contrib SELECT {} FROM up",
                updates.join(", "),
                contribution("up", 1)
            ),
            clear_stage: "DELETE FROM fin_staging".into(),
            copy_lines: format!("COPY {LINES} ({cols}) FROM STDIN (FORMAT binary)"),
            add_daily: format!(
                "INSERT INTO {DAILY} AS d ({dims}, {measures})\n\
                 SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], \
                   $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::numeric[], \
                   $12::numeric[], $13::numeric[], $14::numeric[], $15::numeric[]) \
                 ORDER BY 1, 2, 3, 4, 5, 6, 7\n\
                 ON CONFLICT ({dims}) DO UPDATE SET {}, updated_at = now()",
                adds.join(", ")
            ),
            aggregate: format!(
                "INSERT INTO {DAILY} AS d ({dims}, {measures})\n\
                 SELECT {dims}, {} FROM fin_contrib GROUP BY {dims} ORDER BY {dims}\n\
                 ON CONFLICT ({dims}) DO UPDATE SET {}, updated_at = now()",
                sums.join(", "),
                adds.join(", ")
            ),
            drop_empty: format!(
                "DELETE FROM {DAILY} d USING (SELECT DISTINCT {dims} FROM fin_contrib) c\n\
                 WHERE {} AND d.skus = 0",
                dim_match.join(" AND ")
            ),
        }
    }
}

/// The finance reporter's sink.
pub struct FinanceSink {
    conn: pg::SinkConnection,
    group: String,
    sql: Statements,
    direct: pg::DirectFirst,
}

impl FinanceSink {
    pub fn new(url: &str, group: &str) -> Self {
        let sql = Statements::new();
        FinanceSink {
            conn: pg::SinkConnection::new(url, migrations::all(), sql.setup.clone()),
            group: group.to_string(),
            sql,
            direct: pg::DirectFirst::default(),
        }
    }

    /// Connects (once), applies the migrations and creates the staging tables.
    pub async fn connect(&mut self) -> Result<(), SinkError> {
        self.conn.open().await.map(|_| ())
    }

    /// Applies `rows` (one per natural key) in one transaction with the offsets and the dead
    /// letters of the batch's refusals. With `isolate`, each row is applied under a savepoint and
    /// the rows PostgreSQL refuses join `known` in what is returned.
    async fn apply(
        &mut self,
        topic: &str,
        batch: &[Consumed<SkuRecord>],
        rows: &[(usize, &SkuRecord)],
        offsets: &BTreeMap<i32, i64>,
        known: &[Refusal],
        isolate: bool,
    ) -> Result<Vec<Refusal>, tokio_postgres::Error> {
        let (sql, group) = (&self.sql, &self.group);
        let mut tx = self.conn.client().transaction().await?;
        let mut refused = known.to_vec();
        // Summed before the COPY: a batch whose sums leave exact decimals is merged in SQL.
        let contribution = if isolate || !self.direct.try_direct() {
            None
        } else {
            Contribution::of(rows)
        };
        let direct = match contribution {
            None => false,
            Some(contribution) => {
                let savepoint = tx.savepoint("direct").await?;
                match copy_lines(&savepoint, &sql.copy_lines, rows).await {
                    Ok(_) => {
                        savepoint.commit().await?;
                        contribution.add_to_daily(&tx, &sql.add_daily).await?;
                        true
                    }
                    Err(e) if self.direct.conflicted(&e) => {
                        savepoint.rollback().await?;
                        false
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if !direct {
            if isolate {
                for row @ (index, _) in rows {
                    tx.batch_execute("SAVEPOINT line").await?;
                    match merge(&tx, sql, std::slice::from_ref(row)).await {
                        Ok(()) => tx.batch_execute("RELEASE SAVEPOINT line").await?,
                        Err(e) if is_row_error(&e) => {
                            tx.batch_execute("ROLLBACK TO SAVEPOINT line").await?;
                            refused.push(Refusal {
                                index: *index,
                                rule: "postgres_constraint".into(),
                                message: describe(&e),
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
            } else {
                merge(&tx, sql, rows).await?;
            }
            tx.execute(sql.aggregate.as_str(), &[]).await?;
            tx.execute(sql.drop_empty.as_str(), &[]).await?;
        }
        pg::store_offsets(&tx, OFFSETS_TABLE, group, topic, offsets).await?;
        let letters = dead_letters(SINK_NAME, batch, &refused);
        pg::store_dead_letters(&tx, OUTBOX_TABLE, group, &letters).await?;
        tx.commit().await?;
        Ok(refused)
    }
}

/// COPYs `rows` as lines with `sql` (into the lines, or into the staging table).
async fn copy_lines(
    tx: &Transaction<'_>,
    sql: &str,
    rows: &[(usize, &SkuRecord)],
) -> Result<u64, tokio_postgres::Error> {
    pg::copy_binary(tx, sql, &LINE_TYPES, rows, |row, v| line_values(row.1, v)).await
}

/// Stages `rows`, takes away the contributions of the lines they replace and adds theirs.
async fn merge(
    tx: &Transaction<'_>,
    sql: &Statements,
    rows: &[(usize, &SkuRecord)],
) -> Result<(), tokio_postgres::Error> {
    copy_lines(tx, &sql.stage, rows).await?;
    tx.execute(sql.take_old.as_str(), &[]).await?;
    tx.execute(sql.put_new.as_str(), &[]).await?;
    tx.execute(sql.clear_stage.as_str(), &[]).await?;
    Ok(())
}

#[async_trait]
impl Sink for FinanceSink {
    type Message = SkuRecord;

    fn name(&self) -> &'static str {
        SINK_NAME
    }

    async fn write(
        &mut self,
        topic: &str,
        batch: &[Consumed<SkuRecord>],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<Refusal>, SinkError> {
        let (rows, refusals) = pg::newest_per_natural_key(batch);
        self.conn.open().await?;
        let result = match self
            .apply(topic, batch, &rows, offsets, &refusals, false)
            .await
        {
            Err(e) if is_row_error(&e) => {
                tracing::warn!(cause = %describe(&e), rows = rows.len(), "Batch refused; applying row by row to single out the bad rows.");
                self.apply(topic, batch, &rows, offsets, &refusals, true)
                    .await
            }
            other => other,
        };
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                if is_retriable(&e) {
                    self.conn.reset();
                }
                Err(classify(e, "updating the finance aggregates"))
            }
        }
    }

    async fn ping(&mut self) -> Result<(), SinkError> {
        self.conn.ping().await
    }

    async fn durable_offsets(
        &mut self,
        topic: &str,
        _partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, SinkError> {
        self.conn
            .durable_offsets(OFFSETS_TABLE, &self.group, topic)
            .await
    }

    fn has_dead_letter_outbox(&self) -> bool {
        true
    }

    async fn pending_dead_letters(&mut self) -> Result<Vec<(i64, RejectMessage)>, SinkError> {
        self.conn
            .pending_dead_letters(OUTBOX_TABLE, &self.group)
            .await
    }

    async fn dead_letters_sent(&mut self, ids: &[i64]) -> Result<(), SinkError> {
        self.conn
            .clear_dead_letters(OUTBOX_TABLE, &self.group, ids)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn line(store: &str, category: &str, price: Decimal, cost: Option<Decimal>) -> SkuRecord {
        let mut r = skuflow_e2e::synthetic_record(1);
        r.store_id = store.into();
        r.category = category.into();
        r.unit_price = price;
        r.unit_cost = cost;
        r.units_sold = 3;
        r.quantity_on_hand = 10;
        r
    }

    #[test]
    fn a_batch_is_summed_per_aggregate_row_as_the_sql_contribution_does() {
        let rows = [
            line("s1", "dairy", dec("2.50"), Some(dec("1.25"))),
            line("s1", "dairy", dec("1.00"), None),
            line("s2", "dairy", dec("4.00"), Some(dec("3.00"))),
        ];
        let indexed: Vec<(usize, &SkuRecord)> = rows.iter().enumerate().collect();
        let c = Contribution::of(&indexed).unwrap();
        assert_eq!(c.store_id.len(), 2);
        let s1 = c.store_id.iter().position(|s| *s == "s1").unwrap();
        let counts: Vec<i64> = c.counts.iter().map(|v| v[s1]).collect();
        let amounts: Vec<Decimal> = c.amounts.iter().map(|v| v[s1]).collect();
        // skus, skus with cost, units
        assert_eq!(counts, vec![2, 1, 6]);
        // revenue, revenue with cost, cost, stock at retail, stock at cost
        assert_eq!(
            amounts,
            vec![
                dec("10.50"),
                dec("7.50"),
                dec("3.75"),
                dec("35.00"),
                dec("12.50")
            ]
        );
    }

    #[test]
    fn sums_beyond_exact_decimals_are_left_to_postgresql() {
        let big = Decimal::MAX / Decimal::TWO;
        let rows = [
            line("s1", "dairy", big, None),
            line("s1", "dairy", big, None),
        ];
        let indexed: Vec<(usize, &SkuRecord)> = rows.iter().enumerate().collect();
        assert!(Contribution::of(&indexed).is_none());
    }
}
