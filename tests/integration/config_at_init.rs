//! The host hands each plugin its `[plugins.<name>]` table at init
//! (docs/ABI.md §3 step 5 and §7 "PluginConfig"):
//!
//! - every configurable catalogue plugin (SDK-built) loads under the
//!   product's own allowlist, which has no `get_config`, imports no
//!   `get_config`, and its settings take effect;
//! - a module whose `m3u_init` is the old `() -> i32` still loads and still
//!   reads its config with `get_config` (hand-written WAT);
//! - a module whose `m3u_init` is `(i32) -> i32` receives the table at the
//!   arena start, byte for byte as the golden encoding, with its length;
//! - a table larger than the arena is a clear load error;
//! - init stays under the fuel budget.

use std::collections::BTreeMap;

use m3u_plugin_host::abi::{
    status, ConfigEntry, MemoryPressureLevel, PluginConfig, Stage, StageContext,
};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, Source};
use m3u_plugin_host::runtime::{PluginInstance, PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::{Error, ErrorKind, OwnedChannel};

use super::common::{allowlist_with, example_plugin, runtime_with, wat_str};
use super::pipeline::plugin_dir;

/// `allowed_host_functions` of the product's own configuration: no
/// `get_config`.
const PRODUCT_ALLOWLIST: [&str; 4] = ["log", "get_memory_usage", "read_channels", "write_channels"];

/// The product's security section, verbatim.
const PRODUCT_SECURITY: &str = "[proxy_generation.wasm_plugins.security]\n\
     allowed_host_functions = [\"log\", \"get_memory_usage\", \"read_channels\", \"write_channels\"]\n";

fn product_runtime_with(limits: RuntimeLimits) -> PluginRuntime {
    let allowed: Vec<String> = PRODUCT_ALLOWLIST.iter().map(|s| s.to_string()).collect();
    runtime_with(limits, &allowed)
}

fn product_runtime() -> PluginRuntime {
    product_runtime_with(RuntimeLimits::default())
}

fn settings(plugin: &str, pairs: &[(&str, &str)]) -> PluginSettings {
    let values: BTreeMap<String, String> = pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    PluginSettings::from([(plugin.to_string(), values)])
}

fn expect_error<T>(result: Result<T, Error>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: loaded, expected an error"),
        Err(error) => error,
    }
}

/// A catalogue plugin loaded under the product's allowlist with these
/// settings, after checking that it does not import `get_config`.
fn catalogue_slot(plugin: &str, pairs: &[(&str, &str)]) -> PluginSlot {
    let (wasm, path) = example_plugin(&format!("{plugin}.wasm"));
    let runtime = product_runtime();
    let compiled = runtime
        .compile(&wasm)
        .unwrap_or_else(|error| panic!("{plugin} refused under the product allowlist: {error}"));
    let imports = compiled.imports();
    assert!(
        !imports.iter().any(|import| import == "host.get_config"),
        "{plugin} imports get_config: {imports:?}"
    );
    assert!(
        imports.iter().all(|import| PRODUCT_ALLOWLIST
            .iter()
            .any(|f| *import == format!("host.{f}"))),
        "{plugin}: {imports:?}"
    );
    let instance = runtime
        .instantiate(&compiled, plugin, &settings(plugin, pairs))
        .unwrap_or_else(|error| panic!("{plugin} with {pairs:?} did not initialise: {error}"));
    assert_eq!(instance.info().name, plugin);
    PluginSlot::new(instance, path)
}

fn context(stage: Stage) -> StageContext<'static> {
    StageContext {
        stage,
        memory_pressure: MemoryPressureLevel::Optimal,
        available_memory: 1 << 30,
        proxy_name: "integration".into(),
        base_url: "http://proxy.local".into(),
        batch_index: 0,
    }
}

fn channel(id: u64, name: &str, group: &str, tvg_id: &str) -> OwnedChannel {
    OwnedChannel {
        id,
        channel_name: name.to_string().into(),
        group_title: group.to_string().into(),
        tvg_id: tvg_id.to_string().into(),
        stream_url: format!("http://streams.example/{id}").into(),
        duration: "-1".into(),
        ..OwnedChannel::default()
    }
}

/// Opens a run (the pressure check) and runs one batch through `stage`.
fn run(slot: &mut PluginSlot, stage: Stage, input: &[OwnedChannel]) -> Vec<OwnedChannel> {
    assert!(slot
        .instance
        .accepts_pressure(
            MemoryPressureLevel::Optimal,
            &m3u_plugin_host::abi::RunContext::default()
        )
        .expect("pressure check"));
    let mut batch = input.to_vec();
    slot.run(stage, &context(stage), &mut batch)
        .unwrap_or_else(|error| panic!("{} at {}: {error}", slot.name(), stage.name()));
    batch
}

// ---------------------------------------------------------------------------
// (1) The catalogue plugins under the product allowlist
// ---------------------------------------------------------------------------

#[test]
fn group_normalizer_reads_its_settings_without_get_config() {
    let input = [
        channel(1, "No group", "", ""),
        channel(2, "Untidy", "  news   today ", ""),
    ];
    let mut slot = catalogue_slot(
        "group_normalizer",
        &[("empty_group", "Misc"), ("case", "upper")],
    );
    let out = run(&mut slot, Stage::DataMapping, &input);
    assert_eq!(out[0].group_title, "Misc", "empty_group took effect");
    assert_eq!(out[1].group_title, "NEWS TODAY", "case took effect");
    // Without settings: the documented defaults, so the values above came
    // from the table.
    let mut defaults = catalogue_slot("group_normalizer", &[]);
    let out = run(&mut defaults, Stage::DataMapping, &input);
    assert_eq!(out[0].group_title, "Uncategorized");
    assert_eq!(out[1].group_title, "News Today");
    // A bad value still fails init, with the plugin's reason.
    let (wasm, _) = example_plugin("group_normalizer.wasm");
    let error = expect_error(
        product_runtime().load(
            &wasm,
            "group_normalizer",
            &settings("group_normalizer", &[("case", "shouting")]),
        ),
        "case = shouting",
    );
    assert!(
        matches!(error.kind(), ErrorKind::PluginStatus { status: s, .. } if *s == status::CONFIG_ERROR),
        "{error:?}"
    );
    assert!(error.to_string().contains("shouting"), "{error}");
}

#[test]
fn sports_optimizer_reads_its_settings_without_get_config() {
    let input = [
        channel(1, "NBA TV", "", ""),
        channel(2, "Niederbayern TV", "Regional", ""),
        channel(3, "MLB Network", "", ""),
    ];
    let mut slot = catalogue_slot(
        "sports_optimizer",
        &[
            ("group_prefix", "Games"),
            ("tag_attributes", "false"),
            ("number_block", "500-509"),
        ],
    );
    let out = run(&mut slot, Stage::DataMapping, &input);
    assert_eq!(out[0].group_title, "Games/Basketball", "group_prefix");
    assert_eq!(out[0].tvg_chno, "500", "number_block");
    assert!(
        out[0].attributes.is_empty(),
        "tag_attributes = false: {:?}",
        out[0].attributes
    );
    assert_eq!(out[1], input[1], "not sports: untouched");
    assert_eq!(out[2].group_title, "Games/Baseball");
    assert_eq!(out[2].tvg_chno, "501");
    // The defaults, for contrast.
    let mut defaults = catalogue_slot("sports_optimizer", &[]);
    let out = run(&mut defaults, Stage::DataMapping, &input);
    assert_eq!(out[0].group_title, "Sports/Basketball");
    assert_eq!(out[0].tvg_chno, "");
    assert_eq!(out[0].attribute("x-sports-sport"), Some("Basketball"));
}

#[test]
fn dedup_reads_its_settings_without_get_config() {
    let input = [
        channel(1, "BBC One HD", "UK", "bbcone.uk"),
        channel(2, "BBC One (1080p)", "UK", "bbc1.uk"),
        channel(3, "ITV", "UK", "itv.uk"),
    ];
    let mut by_name = catalogue_slot("dedup", &[("key", "name"), ("mode", "exact")]);
    let kept: Vec<u64> = run(&mut by_name, Stage::Filtering, &input)
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        kept,
        [1, 3],
        "key = name: the second BBC One is a duplicate"
    );
    // The default key (tvg_id) keeps all three.
    let mut defaults = catalogue_slot("dedup", &[]);
    let kept = run(&mut defaults, Stage::Filtering, &input);
    assert_eq!(kept.len(), 3);
}

#[test]
fn logo_mapper_reads_its_settings_without_get_config() {
    let input = [
        channel(1, "BBC One HD", "UK", ""),
        channel(2, "Unknown", "UK", ""),
    ];
    let mut slot = catalogue_slot(
        "logo_mapper",
        &[
            (
                "by_name",
                "BBC One | https://logos.example/bbc-one.png | BBCOne.uk",
            ),
            ("rewrite_logos", "false"),
        ],
    );
    let out = run(&mut slot, Stage::DataMapping, &input);
    assert_eq!(out[0].tvg_logo, "https://logos.example/bbc-one.png");
    assert_eq!(out[0].tvg_id, "BBCOne.uk");
    assert_eq!(out[1], input[1]);
}

/// The product's configuration section, verbatim, through `Config` and the
/// whole pipeline: the plugin loads (no load error), runs, and its
/// `[plugins.sports_optimizer]` number_block puts the sports channel in the
/// block.
#[test]
fn pipeline_with_the_product_allowlist_loads_and_configures_sports_optimizer() {
    let dir = plugin_dir(&[
        "sports_optimizer",
        "group_normalizer",
        "dedup",
        "logo_mapper",
    ]);
    let toml_text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n{PRODUCT_SECURITY}\
         [proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"sports_optimizer\"]\nchannel_numbering = [\"inmemory_numbering\"]\n\
         [proxy_generation.wasm_plugins.fallbacks]\nenable_fallbacks = false\n\
         [plugins.sports_optimizer]\nnumber_block = \"1000-1999\"\ngroup_prefix = \"Games\"\n\
         [plugins.group_normalizer]\nempty_group = \"Misc\"\n\
         [plugins.dedup]\nkey = \"name\"\nexpected_channels = 5000\n\
         [plugins.logo_mapper]\nrewrite_logos = false\n",
        dir.display().to_string()
    );
    let config = Config::from_toml(&toml_text).unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let loaded: Vec<&str> = pipeline.plugins().iter().map(PluginSlot::name).collect();
    assert_eq!(
        loaded,
        ["sports_optimizer"],
        "only the plugin a strategy names"
    );
    assert_eq!(
        super::common::idle_files(&pipeline),
        ["dedup.wasm", "group_normalizer.wasm", "logo_mapper.wasm"],
        "the other catalogue plugins are valid under the product allowlist"
    );
    assert!(
        pipeline.load_errors().is_empty(),
        "{:?}",
        pipeline.load_errors()
    );
    let playlist = "#EXTM3U\n\
        #EXTINF:-1 group-title=\"News\",Channel A\nhttp://a\n\
        #EXTINF:-1 group-title=\"\",NBA TV\nhttp://nba\n";
    let source = Source::from_reader("tiny", std::io::Cursor::new(playlist.as_bytes().to_vec()));
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
    assert_eq!(
        stats.plugin_load_errors,
        Vec::<String>::new(),
        "every catalogue plugin loads"
    );
    assert_eq!(stats.plugin_failures, 0);
    assert!(
        stats
            .stages
            .iter()
            .any(|s| s.strategy == "sports_optimizer"),
        "{:?}",
        stats.stages
    );
    let nba = out.iter().find(|c| c.channel_name == "NBA TV").unwrap();
    assert_eq!(nba.group_title, "Games/Basketball");
    assert_eq!(nba.tvg_chno, "1000");
    let other = out.iter().find(|c| c.channel_name == "Channel A").unwrap();
    assert_ne!(other.tvg_chno, "1000");
}

// ---------------------------------------------------------------------------
// WAT fixtures: both forms of m3u_init
// ---------------------------------------------------------------------------

/// A plugin named `config_echo` (data_mapping, reads nothing) whose
/// `m3u_init` is `$init` (a whole func definition, exported as `m3u_init`)
/// and whose `m3u_execute_stage` sends back the `$saved_len` bytes saved at
/// 131072. Arena at 65536 with `capacity` bytes (`$capacity` returns it).
fn echo_module(capacity: u32, init: &str) -> Vec<u8> {
    wat_str(&format!(
        r#"(module
  (@custom "m3u_abi_version" "\02\00\00\00")
  (import "host" "write_channels" (func $write_channels (param i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global $saved_len (mut i32) (i32.const 0))
  ;; PluginInfo (23 bytes): "config_echo", "1", "", "", DataMapping, reads
  ;; nothing, memory {{ 0, 0, Emergency }}, not parallel-safe, no stage_reads
  (data (i32.const 0)
    "\0b" "config_echo" "\01" "1" "\00" "\00" "\02" "\00" "\00" "\00" "\04" "\00\00")
  (func (export "m3u_arena_ptr") (result i32) (i32.const 65536))
  (func $capacity (export "m3u_arena_capacity") (result i32) (i32.const {capacity}))
  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (i32.const 65536) (i32.const 0) (i32.const 23))
    (i32.const 23))
  {init}
  (func (export "m3u_execute_stage") (param i32 i32) (result i32)
    (memory.copy (i32.const 65536) (i32.const 131072) (global.get $saved_len))
    (call $write_channels (i32.const 65536) (global.get $saved_len)))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_cleanup") (result i32) (i32.const 0)))"#
    ))
}

/// `m3u_init(config_len)`: CONFIG_ERROR unless a table arrived (even an
/// empty one is one byte) that fits the arena; saves it for the echo.
const INIT_WITH_CONFIG: &str = r#"(func (export "m3u_init") (param $len i32) (result i32)
    (if (i32.le_s (local.get $len) (i32.const 0)) (then (return (i32.const -5))))
    (if (i32.gt_u (local.get $len) (call $capacity)) (then (return (i32.const -5))))
    (memory.copy (i32.const 131072) (i32.const 65536) (local.get $len))
    (global.set $saved_len (local.get $len))
    (i32.const 0))"#;

/// The old `m3u_init() -> i32`: saves the first 23 arena bytes (still the
/// PluginInfo: nothing was written over them) for the echo.
const INIT_PLAIN: &str = r#"(func (export "m3u_init") (result i32)
    (memory.copy (i32.const 131072) (i32.const 65536) (i32.const 23))
    (global.set $saved_len (i32.const 23))
    (i32.const 0))"#;

/// What the plugin saved at init, sent back by one stage call.
fn echoed(instance: &mut PluginInstance) -> Vec<u8> {
    instance
        .execute_stage(Stage::DataMapping, &[0])
        .expect("echo")
        .to_vec()
}

#[test]
fn init_with_a_parameter_receives_the_table_at_the_arena_start() {
    let wasm = echo_module(4096, INIT_WITH_CONFIG);
    let runtime = product_runtime();
    // Looked up by PluginInfo.name, not by the file stem.
    let mut instance = runtime
        .load(
            &wasm,
            "some_file_stem",
            &settings("config_echo", &[("n", "300"), ("case", "upper")]),
        )
        .expect("loads and initialises");
    let bytes = echoed(&mut instance);
    // The golden bytes of crates/abi (`plugin_config_golden_bytes`): sorted
    // by key, values as text.
    #[rustfmt::skip]
    let expected: &[u8] = &[
        2,
        4, b'c', b'a', b's', b'e', 5, b'u', b'p', b'p', b'e', b'r',
        1, b'n', 3, b'3', b'0', b'0',
    ];
    assert_eq!(bytes, expected);
    let table: PluginConfig = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(table.get("case"), Some("upper"));

    // No settings: an empty table, one byte, still delivered (init checks
    // the length is > 0, so loading proves it).
    let mut empty = runtime
        .load(&wasm, "config_echo", &PluginSettings::new())
        .expect("loads with no settings");
    assert_eq!(echoed(&mut empty), [0]);
}

#[test]
fn toml_values_reach_the_table_as_text_like_get_config_gives_them() {
    let config = Config::from_toml(
        "[plugins.config_echo]\nexpected = 5000\nrate = 0.01\nmerge = true\nkey = \"tvg_id + url\"\n\
         [plugins.other]\nsecret = \"not for config_echo\"\n",
    )
    .expect("config");
    let mut instance = product_runtime()
        .load(
            &echo_module(4096, INIT_WITH_CONFIG),
            "config_echo",
            &config.plugin_settings(),
        )
        .expect("loads");
    let bytes = echoed(&mut instance);
    let table: PluginConfig = postcard::from_bytes(&bytes).unwrap();
    let entry = |key: &str, value: &str| ConfigEntry {
        key: key.to_string().into(),
        value: value.to_string().into(),
    };
    assert_eq!(
        table.entries,
        [
            entry("expected", "5000"),
            entry("key", "tvg_id + url"),
            entry("merge", "true"),
            entry("rate", "0.01"),
        ],
        "only this plugin's table, sorted by key"
    );
}

#[test]
fn init_without_a_parameter_still_loads_and_the_arena_is_left_alone() {
    let wasm = echo_module(4096, INIT_PLAIN);
    // Even with settings far larger than the arena: no table is built.
    let huge = "x".repeat(10_000);
    let mut instance = product_runtime()
        .load(
            &wasm,
            "config_echo",
            &settings("config_echo", &[("big", &huge)]),
        )
        .expect("the () -> i32 form loads");
    let bytes = echoed(&mut instance);
    assert_eq!(
        &bytes[..12],
        b"\x0bconfig_echo",
        "the arena still holds PluginInfo"
    );

    // The catalogue's hand-written WAT plugin (old form) still reads its
    // settings through get_config when that is allowed ...
    let (dedup_wat, _) = example_plugin("dedup_wat.wasm");
    let with_get_config = runtime_with(RuntimeLimits::default(), &allowlist_with(&["get_config"]));
    with_get_config
        .load(
            &dedup_wat,
            "dedup_wat",
            &settings("dedup_wat", &[("key", "url")]),
        )
        .expect("dedup_wat with key = url");
    let error = expect_error(
        with_get_config.load(
            &dedup_wat,
            "dedup_wat",
            &settings("dedup_wat", &[("key", "name")]),
        ),
        "dedup_wat with key = name",
    );
    assert!(
        matches!(error.kind(), ErrorKind::PluginStatus { status: s, .. } if *s == status::CONFIG_ERROR),
        "its init read the value: {error:?}"
    );
    // ... and, importing it, is refused without it, by name.
    let error = expect_error(
        product_runtime().load(&dedup_wat, "dedup_wat", &PluginSettings::new()),
        "dedup_wat under the product allowlist",
    );
    assert!(
        matches!(error.kind(), ErrorKind::DisallowedImport { name, .. } if name == "get_config"),
        "{error:?}"
    );
}

#[test]
fn init_with_another_signature_is_refused_by_name() {
    for init in [
        r#"(func (export "m3u_init") (param i32 i32) (result i32) (i32.const 0))"#,
        r#"(func (export "m3u_init") (param i64) (result i32) (i32.const 0))"#,
        r#"(func (export "m3u_init") (param i32))"#,
    ] {
        let error = expect_error(product_runtime().compile(&echo_module(4096, init)), init);
        assert!(
            matches!(error.kind(), ErrorKind::MissingExport { name, .. } if name == "m3u_init"),
            "{init}: {error:?}"
        );
        assert!(error.to_string().contains("0 or 1 i32"), "{error}");
    }
}

#[test]
fn init_with_a_parameter_runs_under_the_fuel_budget() {
    let spin = r#"(func (export "m3u_init") (param $len i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0))"#;
    let limits = RuntimeLimits {
        fuel_per_call: 2_000_000,
        ..RuntimeLimits::default()
    };
    let error = expect_error(
        product_runtime_with(limits).load(
            &echo_module(4096, spin),
            "config_echo",
            &settings("config_echo", &[("k", "v")]),
        ),
        "init that never returns",
    );
    assert!(
        matches!(error.kind(), ErrorKind::OutOfFuel { .. }),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------
// (4) A table larger than the arena
// ---------------------------------------------------------------------------

#[test]
fn a_table_larger_than_the_arena_is_a_clear_load_error() {
    let value = "v".repeat(4200);
    let pairs = [("key", value.as_str())];
    let table = PluginConfig {
        entries: vec![ConfigEntry {
            key: "key".into(),
            value: value.as_str().into(),
        }],
    };
    let size = postcard::to_allocvec(&table).unwrap().len();
    // Entry count, key (1 + 3), value (2-byte varint length + 4200).
    assert_eq!(size, 1 + 4 + 2 + 4200);

    // The smallest arena a plugin may have (4 KiB).
    let wasm = echo_module(4096, INIT_WITH_CONFIG);
    let error = expect_error(
        product_runtime().load(&wasm, "config_echo", &settings("config_echo", &pairs)),
        "4207-byte table, 4096-byte arena",
    );
    match error.kind() {
        ErrorKind::Config { key, message, .. } => {
            assert_eq!(key.as_deref(), Some("plugins.config_echo"));
            assert!(
                message.contains("`config_echo`")
                    && message.contains(&format!("{size} bytes"))
                    && message.contains("4096-byte arena"),
                "{message}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("config_echo") && text.contains(&format!("{size} bytes")),
        "{text}"
    );
    // A table that fits the same arena loads.
    product_runtime()
        .load(
            &wasm,
            "config_echo",
            &settings("config_echo", &[("k", "v")]),
        )
        .expect("a 5-byte table fits");

    // An SDK plugin (1 MiB arena) with a 2 MiB value.
    let (wasm, _) = example_plugin("group_normalizer.wasm");
    let big = "y".repeat(2 << 20);
    let size = postcard::to_allocvec(&PluginConfig {
        entries: vec![ConfigEntry {
            key: "empty_group".into(),
            value: big.as_str().into(),
        }],
    })
    .unwrap()
    .len();
    assert_eq!(
        size,
        1 + 1 + 11 + 4 + (2 << 20),
        "the length is a 4-byte varint"
    );
    let error = expect_error(
        product_runtime().load(
            &wasm,
            "group_normalizer",
            &settings("group_normalizer", &[("empty_group", &big)]),
        ),
        "a 2 MiB value",
    );
    let text = error.to_string();
    assert!(
        matches!(error.kind(), ErrorKind::Config { .. })
            && text.contains("group_normalizer")
            && text.contains(&format!("{size} bytes"))
            && text.contains("1048576-byte arena"),
        "{error:?}"
    );
}
