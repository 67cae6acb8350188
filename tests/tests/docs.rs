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
