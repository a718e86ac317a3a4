//! The contract the tests read lives in `tests/contract/`, a copy of the
//! published `shared/contract/` (see `tests/contract/README.md`). These
//! tests keep the copy honest: identical to the published file whenever
//! `../shared/` sits beside the repository, and its version as the README
//! states it.

mod common {
    // Only the file locations are used here.
    #[allow(dead_code)]
    pub mod contract;
}

use std::path::PathBuf;

use common::contract::contract_file;

/// The contract files the tests keep a copy of.
const FILES: [&str; 2] = ["fielding-openapi.yml", "fielding-batch-openapi.yml"];

/// The published file: `../shared/contract/<name>` beside the workspace root.
fn published(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/contract")
        .join(name)
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn the_copies_match_the_published_contract_when_it_is_present() {
    for name in FILES {
        let copy = read(&contract_file(name));
        let source = published(name);
        if !source.exists() {
            // A clone without `../shared/` beside it: the copy is all there is.
            println!(
                "note: {} is absent; nothing to compare tests/contract/{name} with",
                source.display()
            );
            continue;
        }
        let original = read(&source);
        assert!(
            copy == original,
            "tests/contract/{name} differs from {}: copy the published file over it \
             (and update tests/contract/README.md)",
            source.display()
        );
    }
}

#[test]
fn the_readme_names_each_copys_openapi_and_contract_version() {
    let readme = read(&contract_file("README.md"));
    for name in FILES {
        let doc: serde_json::Value =
            serde_norway::from_str(&read(&contract_file(name))).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
        let openapi = doc["openapi"].as_str().expect("an openapi field");
        let version = doc["info"]["version"].as_str().expect("an info.version");
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("tests/contract/README.md has no row for {name}"));
        assert!(
            row.contains(&format!("OpenAPI {openapi}")) && row.contains(&format!("`{version}`")),
            "tests/contract/README.md: the row for {name} must name OpenAPI {openapi} and version {version}: {row}"
        );
    }
}
