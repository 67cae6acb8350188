//! The documentation that is derived from the code stays in step with it: the flag tables of
//! `docs/configuration.md` are what the binaries' `--help` says (regenerate them with
//! `scripts/flags-doc.py <bin dir> > docs/configuration.md`).

mod common;

use std::process::Command;

#[test]
fn configuration_tables_are_the_binaries_own_flags() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let bin_dir = common::bin("skuflow").parent().unwrap().to_path_buf();
    let out = Command::new("python3")
        .arg(repo.join("scripts/flags-doc.py"))
        .arg(&bin_dir)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(repo.join("docs/configuration.md")).unwrap();
    if generated != committed {
        let first = generated
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(generated.lines().count().min(committed.lines().count()));
        panic!(
            "docs/configuration.md is not what the binaries say (first difference at line {}):\n  binaries: {}\n  file:     {}\nRegenerate: scripts/flags-doc.py {} > docs/configuration.md",
            first + 1,
            generated.lines().nth(first).unwrap_or("(end)"),
            committed.lines().nth(first).unwrap_or("(end)"),
            bin_dir.display()
        );
    }
}

/// The Elasticsearch queries of the README and `docs/elasticsearch.md` (no real cluster runs
/// here): each parses, names only fields its target's index template maps, aggregates and sorts
/// only on fields that can be (never a `text` field), and the latest-snapshot query groups by
/// (country, store_id, sku), one document per store and SKU.
#[test]
fn elasticsearch_examples_name_only_mapped_fields() {
    use serde_json::Value;
    use skuflow_schemas::elasticsearch as es;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let templates = [
        ("skus-files", es::files_template("skuflow", "skus-files")),
        (
            "skus-rejects",
            es::rejects_template("skuflow", "skus-rejects"),
        ),
        ("skus", es::index_template("skus", "skus")),
    ];
    let mut checked = 0;
    let mut snapshot = false;
    for doc in ["README.md", "docs/elasticsearch.md"] {
        let text = std::fs::read_to_string(repo.join(doc)).unwrap();
        for block in text.split("```json\n").skip(1) {
            let block = block.split("```").next().unwrap();
            let Some((request, body)) = block.split_once('\n') else {
                continue;
            };
            let Some(target) = request
                .strip_prefix("POST ")
                .and_then(|r| r.strip_suffix("/_search"))
            else {
                continue;
            };
            let body: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{doc}: {request}: not JSON: {e}\n{body}"));
            // The two aliases by name; anything else under `skus` is the records' alias or a
            // country's index.
            let (_, template) = templates
                .iter()
                .find(|(alias, _)| target == *alias)
                .or_else(|| {
                    (target == "skus" || target.starts_with("skus-")).then_some(&templates[2])
                })
                .unwrap_or_else(|| panic!("{doc}: {request}: unknown target"));
            let props = &template["template"]["mappings"]["properties"];
            let mut used = Vec::new();
            fields_used(&body, &mut used);
            assert!(!used.is_empty(), "{doc}: {request}: names no field");
            for (field, exact) in used {
                let mapping = match field.split_once('.') {
                    Some((parent, sub)) => &props[parent]["fields"][sub],
                    None => &props[field.as_str()],
                };
                let kind = mapping["type"].as_str().unwrap_or_else(|| {
                    panic!("{doc}: {request}: field [{field}] is not in the index template")
                });
                assert!(
                    !exact || kind != "text",
                    "{doc}: {request}: [{field}] is text: it cannot be aggregated, sorted or matched exactly"
                );
            }
            if let Some(sources) = body.pointer("/aggs/latest/composite/sources") {
                let keys: Vec<&str> = sources
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|s| s.as_object().unwrap().values())
                    .map(|v| v["terms"]["field"].as_str().unwrap())
                    .collect();
                assert_eq!(keys, ["country", "store_id", "sku"], "{doc}: {request}");
                snapshot = true;
            }
            assert!(
                body.get("collapse").is_none() || body.pointer("/collapse/field") != Some(&Value::from("sku")),
                "{doc}: {request}: collapsing on sku alone keeps one document per SKU across stores"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} Elasticsearch examples found");
    assert!(snapshot, "the latest-snapshot example is missing");
}

/// The fields a query body names: (field, whether it must be exact, i.e. aggregated, sorted,
/// term-matched or collapsed on).
fn fields_used(v: &serde_json::Value, out: &mut Vec<(String, bool)>) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("field", Value::String(f)) => out.push((f.clone(), true)),
                    ("match" | "match_phrase", Value::Object(q)) => {
                        out.extend(q.keys().map(|f| (f.clone(), false)))
                    }
                    ("term" | "range" | "prefix", Value::Object(q)) => {
                        out.extend(q.keys().map(|f| (f.clone(), true)))
                    }
                    ("terms", Value::Object(q)) if !q.contains_key("field") => out.extend(
                        q.keys()
                            .filter(|f| *f != "boost")
                            .map(|f| (f.clone(), true)),
                    ),
                    ("sort", Value::Array(items)) => {
                        for item in items {
                            match item {
                                Value::String(f) => out.push((f.clone(), true)),
                                Value::Object(s) => out.extend(s.keys().map(|f| (f.clone(), true))),
                                _ => {}
                            }
                        }
                    }
                    _ => fields_used(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| fields_used(v, out)),
        _ => {}
    }
}
