//! The repository's layout as the docs describe it: every path that
//! docs/ARCHITECTURE.md names exists, and the workspace lists exactly the
//! plugin crates build.rs builds.

use super::common::repo_path;

/// Paths in backticks that look like repository paths.
fn named_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            ["src/", "crates/", "plugins/", "tests/", "docs/", "build.rs"]
                .iter()
                .any(|prefix| span.starts_with(prefix))
        })
        .map(|span| span.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn every_path_the_architecture_doc_names_exists() {
    let doc = std::fs::read_to_string(repo_path("docs/ARCHITECTURE.md")).unwrap();
    let paths = named_paths(&doc);
    assert!(paths.len() > 20, "{paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|path| !repo_path(path).exists())
        .collect();
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md names {missing:?}");
}

#[test]
fn the_workspace_lists_every_plugin_crate() {
    // build.rs's rule: every directory of plugins/ and tests/plugins/ with a
    // Cargo.toml is a plugin crate. The workspace must list each one, so
    // `cargo test --workspace` and clippy see them too.
    let manifest = std::fs::read_to_string(repo_path("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find(|line| line.starts_with("members = "))
        .expect("a members line");
    for dir in ["plugins", "tests/plugins"] {
        for entry in std::fs::read_dir(repo_path(dir)).unwrap() {
            let path = entry.unwrap().path();
            if !path.join("Cargo.toml").exists() {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let listed = members.contains(&format!("\"{dir}/{name}\""))
                || members.contains(&format!("\"{dir}/*\""));
            assert!(
                listed,
                "{dir}/{name} is a plugin crate missing from the workspace members"
            );
        }
    }
}

#[test]
fn the_readme_example_filter_is_the_drop_adult_crate() {
    // The README's complete filter is compiled by the build (build.rs builds
    // every crate of tests/plugins/), so it cannot go stale unnoticed; and it
    // stays short.
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let crate_source =
        std::fs::read_to_string(repo_path("tests/plugins/drop-adult/src/lib.rs")).unwrap();
    let code = &crate_source[crate_source.find("use m3u_proxy_plugin_sdk").unwrap()..];
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README's example filter differs from tests/plugins/drop-adult/src/lib.rs"
    );
    let lines = code.lines().count();
    assert!(lines < 30, "the minimal filter is {lines} lines");
}
