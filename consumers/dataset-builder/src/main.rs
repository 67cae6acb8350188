//! `skuflow-dataset-builder`: the Parquet training-set consumer group.

// A file's rows hold millions of small strings: mimalloc allocates and frees them faster than
// the system allocator and keeps the freed memory for the next batch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    skuflow_platform::component::main::<skuflow_dataset_builder::DatasetBuilder>()
}
