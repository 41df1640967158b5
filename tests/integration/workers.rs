//! `[pipeline] workers`: parallel-safe stages on several threads give the
//! output, the failures, the fallbacks and the circuits of a run on one
//! thread, on the real playlist, with plugins that fail.

use std::path::Path;

use m3u_plugin_host::abi::MemoryPressureLevel;
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{M3uSink, Pipeline, RunStats, Source};
use m3u_plugin_host::OwnedChannel;

use super::pipeline::plugin_dir;

const PLAYLIST: &str = include_str!("../fixtures/m3u/iptv-org-index-2021.m3u");

fn pipeline_with(workers: usize, dir: &Path, extra: &str) -> Pipeline {
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [pipeline]\nworkers = {workers}\nbatch_size = 64\n{extra}",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    pipeline
}

fn real_source() -> Source {
    Source::from_reader("real", std::io::Cursor::new(PLAYLIST.as_bytes().to_vec()))
}

fn run_with(
    workers: usize,
    dir: &Path,
    extra: &str,
) -> m3u_plugin_host::Result<(Vec<OwnedChannel>, RunStats)> {
    pipeline_with(workers, dir, extra).run_collect(vec![real_source()])
}

/// The run written as M3U (with workers, the last group's worker formats
/// each batch for this sink).
fn m3u_with(workers: usize, dir: &Path, extra: &str) -> (String, u64) {
    let mut text = Vec::new();
    let stats = pipeline_with(workers, dir, extra)
        .run(vec![real_source()], &mut M3uSink::new(&mut text))
        .unwrap();
    (String::from_utf8(text).unwrap(), stats.channels_written)
}

/// Every counter a run reports that does not depend on timing or on how
/// many instances ran (fuel and calls of a plugin count its workers' setup).
fn counters(stats: &RunStats) -> String {
    let stages: Vec<_> = stats
        .stages
        .iter()
        .map(|stage| {
            (
                &stage.stage,
                &stage.strategy,
                &stage.batches_by_strategy,
                stage.channels_in,
                stage.channels_out,
            )
        })
        .collect();
    let plugins: Vec<_> = stats
        .plugins
        .iter()
        .map(|plugin| {
            (
                &plugin.name,
                plugin.failures,
                &plugin.failures_by_kind,
                plugin.disabled,
                &plugin.last_error,
            )
        })
        .collect();
    format!(
        "calls {} failures {} fallbacks {} batches {} written {}\n{stages:?}\n{plugins:?}",
        stats.plugin_calls,
        stats.plugin_failures,
        stats.fallbacks,
        stats.batches,
        stats.channels_written
    )
}

fn assert_same_as_one_thread(dir: &Path, extra: &str) -> RunStats {
    let (single, single_stats) = run_with(1, dir, extra).unwrap();
    let single_text = m3u_with(1, dir, extra);
    for workers in [2, 3] {
        let pooled_text = m3u_with(workers, dir, extra);
        assert!(
            single_text == pooled_text,
            "workers = {workers}: the same M3U text and count\n{extra}"
        );
        let (pooled, pooled_stats) = run_with(workers, dir, extra).unwrap();
        assert!(
            single == pooled,
            "workers = {workers}: same channels, same order\n{extra}"
        );
        assert_eq!(
            counters(&single_stats),
            counters(&pooled_stats),
            "workers = {workers}\n{extra}"
        );
    }
    single_stats
}

const NATIVE_RULES: &str = r#"
[mapping]
rules = ['channel_name matches "^(.*) \[Geo-blocked\]$" SET channel_name = "$1", attr:geo = "yes"']
[[filtering.filters]]
action = "exclude"
expression = 'group_title equals "xxx"'
"#;

#[test]
fn native_stages_and_catalogue_plugins_give_the_single_thread_output() {
    let dir = plugin_dir(&["group_normalizer", "passthrough", "url_rewriter"]);
    let native = format!("{NATIVE_RULES}[proxy_generation.wasm_plugins.strategies]\n");
    let stats = assert_same_as_one_thread(&dir, &native);
    assert!(stats.channels_written > 9000);
    let plugins = format!(
        "{NATIVE_RULES}[proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"group_normalizer\"]\nfiltering = [\"passthrough\"]\n\
         m3u_generation = [\"url_rewriter\"]\n"
    );
    let stats = assert_same_as_one_thread(&dir, &plugins);
    assert_eq!(stats.plugin_failures, 0);
    assert!(stats.plugin_calls >= 3 * stats.batches - 3);
}

#[test]
fn failing_plugins_fall_back_and_open_their_circuit_on_the_same_batch() {
    let dir = plugin_dir(&["flaky_filter", "group_normalizer"]);
    // The flaky plugin traps on every batch holding a "(240p)" channel, as
    // a mapper and as a filter; with max_plugin_failures = 1 and 3 its
    // circuit opens mid-run, with 1000 never.
    for max_failures in [1, 3, 1000] {
        let extra = format!(
            "{NATIVE_RULES}[proxy_generation.wasm_plugins.strategies]\n\
             data_mapping = [\"flaky_filter\", \"group_normalizer\", \"native_mapping\"]\n\
             filtering = [\"flaky_filter\", \"native_filter\"]\n\
             [proxy_generation.wasm_plugins.fallbacks]\nmax_plugin_failures = {max_failures}\n\
             [plugins.flaky_filter]\ntrap_on = \"(240p)\"\n"
        );
        let stats = assert_same_as_one_thread(&dir, &extra);
        let flaky = stats
            .plugins
            .iter()
            .find(|plugin| plugin.name == "flaky_filter")
            .unwrap();
        assert!(stats.fallbacks > 0, "max {max_failures}");
        assert_eq!(flaky.disabled, max_failures < 1000, "max {max_failures}");
    }
}

#[test]
fn with_fallbacks_off_the_first_failure_in_input_order_ends_the_run() {
    let dir = plugin_dir(&["flaky_filter"]);
    let extra = "[proxy_generation.wasm_plugins.strategies]\n\
         filtering = [\"flaky_filter\", \"native_filter\"]\n\
         [proxy_generation.wasm_plugins.fallbacks]\nenable_fallbacks = false\n\
         [plugins.flaky_filter]\ntrap_on = \"(240p)\"\n";
    let single = run_with(1, &dir, extra).unwrap_err().to_string();
    let pooled = run_with(2, &dir, extra).unwrap_err().to_string();
    assert_eq!(single, pooled);
}
