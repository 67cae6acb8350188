//! The registry of sinks: every consumer component the command line knows (`skuflow status`
//! counts their rows, `skuflow replay --sink` moves their groups). A new sink is one line here.

use skuflow_platform::component::{Component, SinkInfo};

pub(crate) const SINKS: [SinkInfo; 4] = [
    skuflow_warehouse_loader::WarehouseLoader::INFO,
    skuflow_finance_reporter::FinanceReporter::INFO,
    skuflow_search_indexer::SearchIndexer::INFO,
    skuflow_dataset_builder::DatasetBuilder::INFO,
];

/// The sink named `name` (as `--sink` takes it: the component's name).
pub(crate) fn by_name(name: &str) -> Result<SinkInfo, String> {
    SINKS
        .iter()
        .find(|s| s.name == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = SINKS.iter().map(|s| s.name).collect();
            format!("unknown sink {name:?}; one of {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_groups_are_unique() {
        for (i, a) in SINKS.iter().enumerate() {
            for b in &SINKS[i + 1..] {
                assert!(a.name != b.name && a.label != b.label && a.group != b.group);
            }
        }
        assert_eq!(by_name("dataset-builder").unwrap().label, "dataset");
        assert!(by_name("notifier")
            .unwrap_err()
            .contains("warehouse-loader"));
    }
}
