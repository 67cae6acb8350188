//! `skuflow-search-indexer`: the Elasticsearch consumer group.

fn main() -> anyhow::Result<()> {
    skuflow_platform::component::main::<skuflow_search_indexer::SearchIndexer>()
}
