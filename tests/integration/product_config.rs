//! The product's own configuration, copied verbatim (only
//! `plugin_directory` pointed at the built plugins): every strategy name in
//! it is real, configurable plugins load under its allowlist (no
//! `get_config`), and the run gives the same playlist as a plain run with
//! only the sports optimizer and native strategies.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::{repo_path, PLAYLIST_FIXTURE};

/// The product card's plugin section, as a user copies it.
pub const PRODUCT_CONFIG: &str = r#"
[proxy_generation.wasm_plugins]
enabled = true
plugin_directory = "./plugins"
max_memory_per_plugin = "64MB"
timeout_seconds = 30
enable_hot_reload = true

[proxy_generation.wasm_plugins.security]
allow_network_access = false
allow_file_system_access = false
allowed_host_functions = [
    "log", "get_memory_usage", "read_channels", "write_channels"
]

[proxy_generation.wasm_plugins.strategies]
# Map stages to preferred plugin strategies
source_loading = ["cloud_spill", "inmemory_full"]
data_mapping = ["zstd_compression", "sports_optimizer", "parallel_mapping"]
filtering = ["redis_spill", "bitmask_filter", "inmemory_filter"]

[proxy_generation.wasm_plugins.fallbacks]
enable_fallbacks = true
fallback_timeout_ms = 5000
max_plugin_failures = 3
"#;

/// The sports optimizer's settings, the same in both runs.
const SPORTS_SETTINGS: &str = "\n[plugins.sports_optimizer]\nnumber_block = \"100-999\"\n";

fn scratch() -> PathBuf {
    let dir = repo_path("target/test-scratch/product-config");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(name: &str, config_text: &str) -> (serde_json::Value, String) {
    let dir = scratch();
    let config = dir.join(format!("{name}.toml"));
    let output = dir.join(format!("{name}.m3u"));
    let stats = dir.join(format!("{name}.json"));
    std::fs::write(&config, config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
        .args(["run", "-q", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(repo_path(PLAYLIST_FIXTURE))
        .arg("--output")
        .arg(&output)
        .arg("--stats-json")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap();
    (stats, std::fs::read_to_string(output).unwrap())
}

fn stage<'s>(stats: &'s serde_json::Value, name: &str) -> &'s serde_json::Value {
    stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

fn plugin_directory() -> String {
    Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR"))
        .display()
        .to_string()
}

#[test]
fn the_product_configuration_runs_as_written() {
    let product = PRODUCT_CONFIG.replace(
        "plugin_directory = \"./plugins\"",
        &format!("plugin_directory = {:?}", plugin_directory()),
    );
    assert_ne!(product, PRODUCT_CONFIG, "plugin_directory was pointed");
    let (stats, playlist) = run("product", &format!("{product}{SPORTS_SETTINGS}"));

    // Every SDK plugin loads under this allowlist but dedup_shared, which
    // imports `claim_keys`; and the hand-written WAT plugin, which imports
    // `get_config`: both refused, and named.
    let refused = stats["plugin_load_errors"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (file, import) in [
        ("dedup_shared.wasm", "claim_keys"),
        ("dedup_wat.wasm", "get_config"),
    ] {
        assert!(
            refused.iter().any(|error| {
                let error = error.as_str().unwrap();
                error.contains(file) && error.contains(import)
            }),
            "{file}: {refused:?}"
        );
    }
    let loading = stage(&stats, "source_loading");
    assert_eq!(loading["strategy"], "inmemory_full");
    let reason = loading["reason"].as_str().unwrap();
    assert!(
        reason.contains("cloud_spill (needs an S3-compatible object store"),
        "{reason}"
    );

    let mapping = stage(&stats, "data_mapping");
    assert_eq!(mapping["strategy"], "sports_optimizer");
    assert!(mapping["hold"]
        .as_str()
        .unwrap()
        .starts_with("zstd_compression"));
    let reason = mapping["reason"].as_str().unwrap();
    assert!(reason.contains("zstd_compression holds"), "{reason}");

    let filtering = stage(&stats, "filtering");
    assert_eq!(filtering["strategy"], "bitmask_filter");
    let reason = filtering["reason"].as_str().unwrap();
    assert!(
        reason.contains("redis_spill (needs a Redis server"),
        "{reason}"
    );

    // What each hold kept, and how.
    let holds = stats["holds"].as_array().unwrap();
    let holders: Vec<&str> = holds
        .iter()
        .map(|h| h["holder"].as_str().unwrap())
        .collect();
    assert_eq!(holders, ["inmemory_full", "zstd_compression"]);
    assert!(holds[1]["codec"].as_str().unwrap().starts_with("zstd"));
    assert_eq!(holds[1]["tier"], "compressed");
    assert!(
        holds[1]["stored_bytes"].as_u64().unwrap() * 4
            < holds[1]["encoded_bytes"].as_u64().unwrap()
    );
    assert_eq!(stats["plugin_failures"], 0);
    let sports = stats["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sports_optimizer")
        .expect("sports_optimizer loaded");
    assert!(sports["calls"].as_u64().unwrap() > 0);

    // The same as a plain run with the sports optimizer and native
    // strategies: the product's names change where data waits, not what
    // comes out.
    let plain = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\"]\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"sports_optimizer\"]\n{SPORTS_SETTINGS}",
        plugin_directory()
    );
    let (plain_stats, plain_playlist) = run("plain", &plain);
    assert_eq!(
        stage(&plain_stats, "data_mapping")["strategy"],
        "sports_optimizer"
    );
    assert_eq!(playlist, plain_playlist);
    assert!(
        playlist.contains("group-title=\"Sports/"),
        "the sports optimizer ran"
    );
}

#[test]
fn parallel_mapping_gives_the_native_mapping_result() {
    let rules = "[mapping]\nrules = ['group_title equals \"\" SET group_title = \"Other\"', \
                 'channel_name matches \"^(.*) HD$\" SET channel_name = \"$1\"']\n\
                 [proxy_generation.wasm_plugins]\nenabled = false\n";
    let with =
        |strategy: &str| {
            format!(
            "{rules}[proxy_generation.wasm_plugins.strategies]\ndata_mapping = [\"{strategy}\"]\n\
             filtering = [\"{}\"]\n",
            if strategy == "parallel_mapping" { "inmemory_filter" } else { "native_filter" }
        )
        };
    let (native_stats, native) = run("native-mapping", &with("native_mapping"));
    let (parallel_stats, parallel) = run("parallel-mapping", &with("parallel_mapping"));
    assert_eq!(
        stage(&native_stats, "data_mapping")["strategy"],
        "native_mapping"
    );
    assert_eq!(
        stage(&parallel_stats, "data_mapping")["strategy"],
        "parallel_mapping"
    );
    assert_eq!(
        stage(&parallel_stats, "filtering")["strategy"],
        "inmemory_filter"
    );
    assert!(native.contains("group-title=\"Other\""));
    assert_eq!(native, parallel);
}
