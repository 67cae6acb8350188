//! `skuflow-warehouse-loader`: the PostgreSQL consumer group.

fn main() -> anyhow::Result<()> {
    skuflow_platform::component::main::<skuflow_warehouse_loader::WarehouseLoader>()
}
