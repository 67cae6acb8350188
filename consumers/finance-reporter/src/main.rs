//! `skuflow-finance-reporter`: the finance consumer group.

fn main() -> anyhow::Result<()> {
    skuflow_platform::component::main::<skuflow_finance_reporter::FinanceReporter>()
}
