//! The registry of sinks: every consumer component the command line knows (`skuflow status`
//! counts their rows, `skuflow replay --sink` moves their groups, `skuflow demo` runs those that
//! take part in it). A new sink is one line here.

use skuflow_platform::component::{registered, Registered, SinkInfo};

pub(crate) const SINKS: [Registered; 5] = [
    registered::<skuflow_warehouse_loader::WarehouseLoader>(),
    registered::<skuflow_finance_reporter::FinanceReporter>(),
    registered::<skuflow_search_indexer::SearchIndexer>(),
    registered::<skuflow_dataset_builder::DatasetBuilder>(),
    registered::<skuflow_notifier::Notifier>(),
];

/// The sink named `name` (as `--sink` takes it: the component's name).
pub(crate) fn by_name(name: &str) -> Result<SinkInfo, String> {
    SINKS
        .iter()
        .map(|s| s.info)
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = SINKS.iter().map(|s| s.info.name).collect();
            format!("unknown sink {name:?}; one of {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_groups_are_unique() {
        let infos: Vec<SinkInfo> = SINKS.iter().map(|s| s.info).collect();
        for (i, a) in infos.iter().enumerate() {
            for b in &infos[i + 1..] {
                assert!(a.name != b.name && a.label != b.label && a.group != b.group);
            }
        }
        assert_eq!(by_name("dataset-builder").unwrap().label, "dataset");
        assert!(by_name("mailer").unwrap_err().contains("notifier"));
    }
}
