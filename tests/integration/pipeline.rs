//! The pipeline end to end on the real playlist: native strategies, plugin
//! strategies, memory-pressure driven choice, and fallbacks that lose nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use m3u_plugin_host::abi::MemoryPressureLevel;
use m3u_plugin_host::config::Config;
use m3u_plugin_host::m3u::read_all;
use m3u_plugin_host::pipeline::{Pipeline, Source};
use m3u_plugin_host::store::{HoldStats, Tier};
use m3u_plugin_host::{ErrorKind, OwnedChannel};

const PLAYLIST: &str = include_str!("../fixtures/m3u/iptv-org-index-2021.m3u");

/// A fresh, empty directory under the system temp dir.
pub fn scratch_dir(label: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "m3u-plugin-host-test-{}-{label}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A scratch directory holding copies of the named plugins.
pub fn plugin_dir(plugins: &[&str]) -> PathBuf {
    let dir = scratch_dir("plugins");
    for name in plugins {
        let file = format!("{name}.wasm");
        let from = [env!("M3U_EXAMPLE_PLUGIN_DIR"), env!("M3U_TEST_PLUGIN_DIR")]
            .iter()
            .map(|d| Path::new(d).join(&file))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{file} was not built; run `cargo build`"));
        std::fs::copy(from, dir.join(&file)).unwrap();
    }
    dir
}

fn config(plugin_dir: &Path, extra: &str) -> Config {
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n{extra}",
        plugin_dir.display().to_string()
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn run(
    config: Config,
    level: MemoryPressureLevel,
) -> (Vec<OwnedChannel>, m3u_plugin_host::pipeline::RunStats) {
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(level));
    let source = Source::from_reader("real", std::io::Cursor::new(PLAYLIST.as_bytes().to_vec()));
    pipeline.run_collect(vec![source]).unwrap()
}

fn strip_ids(channels: &[OwnedChannel]) -> Vec<OwnedChannel> {
    channels
        .iter()
        .cloned()
        .map(|mut c| {
            c.id = 0;
            c
        })
        .collect()
}

#[test]
fn native_only_run_keeps_every_channel_and_numbers_them_uniquely() {
    let empty = scratch_dir("empty");
    let (out, stats) = run(config(&empty, ""), MemoryPressureLevel::Optimal);
    let (_, input, malformed) = read_all(PLAYLIST, 0);
    assert_eq!(malformed, 0);
    assert_eq!(out.len(), input.len());
    assert_eq!(stats.channels_loaded, 10_525);
    assert_eq!(stats.channels_written, 10_525);
    let numbers: HashSet<&str> = out.iter().map(|c| c.tvg_chno.as_ref()).collect();
    assert_eq!(numbers.len(), out.len(), "channel numbers are unique");
    // Apart from the number, channels come out exactly as they went in.
    for (got, want) in out.iter().zip(&input) {
        let mut got = got.clone();
        got.id = 0;
        got.tvg_chno = want.tvg_chno.clone();
        assert_eq!(&got, want);
    }
}

#[test]
fn filters_and_mapping_rules_from_toml_follow_upstream_semantics() {
    let empty = scratch_dir("empty");
    let extra = r#"
[mapping]
rules = ['channel_name matches "^(.*) \[Geo-blocked\]$" SET channel_name = "$1", attr:geo = "yes"']
[[filtering.filters]]
action = "include"
expression = 'group_title equals "news" OR group_title equals "sports"'
[[filtering.filters]]
action = "exclude"
expression = 'channel_name contains "CNN" AND NOT tvg_id ends_with ".us"'
"#;
    let (out, _) = run(config(&empty, extra), MemoryPressureLevel::Optimal);
    let (_, input, _) = read_all(PLAYLIST, 0);
    let expected: Vec<&OwnedChannel> = input
        .iter()
        .filter(|c| {
            let group = c.group_title.to_lowercase();
            let included = group == "news" || group == "sports";
            let excluded = c.channel_name.to_lowercase().contains("cnn")
                && !c.tvg_id.to_lowercase().ends_with(".us");
            included && !excluded
        })
        .collect();
    assert!(
        expected.len() > 400,
        "the fixture has news and sports channels"
    );
    assert_eq!(out.len(), expected.len());
    for (got, want) in out.iter().zip(expected) {
        match want.channel_name.strip_suffix(" [Geo-blocked]") {
            Some(name) => {
                assert_eq!(got.channel_name, name, "regex capture $1 applied");
                assert_eq!(got.attribute("geo"), Some("yes"));
            }
            None => assert_eq!(got.channel_name, want.channel_name),
        }
        assert_eq!(got.stream_url, want.stream_url);
    }
}

#[test]
fn numbering_keeps_explicit_numbers_and_resolves_collisions() {
    let playlist = "#EXTM3U\n\
        #EXTINF:-1,auto-a\nhttp://a\n\
        #EXTINF:-1 tvg-chno=\"100\",explicit-100\nhttp://b\n\
        #EXTINF:-1 tvg-chno=\"100\",collides-100\nhttp://c\n\
        #EXTINF:-1,auto-b\nhttp://d\n";
    let empty = scratch_dir("empty");
    let numbers = |strategy: &str| -> Vec<(String, String)> {
        let extra = format!(
            "[numbering]\nstart = 100\n[proxy_generation.wasm_plugins.strategies]\n\
             channel_numbering = [\"{strategy}\"]\n"
        );
        let mut pipeline = Pipeline::new(config(&empty, &extra)).unwrap();
        pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
        let source = Source::from_reader("t", std::io::Cursor::new(playlist.as_bytes().to_vec()));
        let (out, _) = pipeline.run_collect(vec![source]).unwrap();
        out.iter()
            .map(|c| (c.channel_name.to_string(), c.tvg_chno.to_string()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    // In memory: explicit numbers are reserved first; the collision moves to
    // the next free number; the rest count up from `start` around them.
    assert_eq!(
        numbers("inmemory_numbering"),
        pairs(&[
            ("auto-a", "102"),
            ("explicit-100", "100"),
            ("collides-100", "101"),
            ("auto-b", "103")
        ])
    );
    // Streaming: numbers are given in arrival order, so the auto-numbered
    // first channel takes 100 and both explicit 100s move up.
    assert_eq!(
        numbers("streaming_numbering"),
        pairs(&[
            ("auto-a", "100"),
            ("explicit-100", "101"),
            ("collides-100", "102"),
            ("auto-b", "103")
        ])
    );
}

/// The hold of `holder` in a run's statistics.
fn hold<'s>(stats: &'s m3u_plugin_host::pipeline::RunStats, holder: &str) -> &'s HoldStats {
    stats
        .holds
        .iter()
        .find(|hold| hold.holder == holder)
        .unwrap_or_else(|| panic!("no hold by {holder}: {:?}", stats.holds))
}

#[test]
fn memory_pressure_moves_what_is_held_down_a_tier_with_the_same_output() {
    let empty = scratch_dir("empty");
    let extra = "[proxy_generation.wasm_plugins.strategies]\n\
        source_loading = [\"inmemory_full\"]\n\
        channel_numbering = [\"inmemory_numbering\"]\n\
        m3u_generation = [\"sorted_writer\"]\n";
    let (low_out, low) = run(config(&empty, extra), MemoryPressureLevel::Optimal);
    let (high_out, high) = run(config(&empty, extra), MemoryPressureLevel::High);
    let (critical_out, critical) = run(config(&empty, extra), MemoryPressureLevel::Critical);
    let strategies = |s: &m3u_plugin_host::pipeline::RunStats| -> Vec<String> {
        s.stages.iter().map(|st| st.strategy.clone()).collect()
    };
    // Holding strategies stay usable at every level: only where they hold
    // changes.
    for stats in [&low, &high, &critical] {
        assert_eq!(
            strategies(stats),
            [
                "inmemory_full",
                "native_mapping",
                "native_filter",
                "inmemory_numbering",
                "sorted_writer"
            ]
        );
    }
    for holder in ["inmemory_full", "inmemory_numbering", "sorted_writer"] {
        assert_eq!(hold(&low, holder).tier, Some(Tier::Plain), "{holder}");
        assert_eq!(hold(&high, holder).tier, Some(Tier::Compressed), "{holder}");
        assert_eq!(hold(&critical, holder).tier, Some(Tier::Disk), "{holder}");
    }
    assert!(
        high.stages[3]
            .reason
            .contains("inmemory_numbering holds compressed"),
        "{}",
        high.stages[3].reason
    );
    assert_eq!(high.memory_pressure, "high");
    assert_eq!(high_out, low_out);
    assert_eq!(critical_out, low_out);
}

#[test]
fn numbering_barrier_holds_compressed_under_high_pressure_with_the_same_output() {
    let empty = scratch_dir("empty");
    let extra = "[proxy_generation.wasm_plugins.strategies]\n\
        channel_numbering = [\"inmemory_numbering\"]\n";
    let (plain_out, plain) = run(config(&empty, extra), MemoryPressureLevel::Optimal);
    let (compressed_out, compressed) = run(config(&empty, extra), MemoryPressureLevel::High);
    let (critical_out, critical) = run(config(&empty, extra), MemoryPressureLevel::Critical);
    let (emergency_out, emergency) = run(config(&empty, extra), MemoryPressureLevel::Emergency);

    for stats in [&plain, &compressed, &critical, &emergency] {
        assert_eq!(stats.stages[3].strategy, "inmemory_numbering");
    }
    let plain_held = hold(&plain, "inmemory_numbering");
    let compressed_held = hold(&compressed, "inmemory_numbering");
    assert_eq!(plain_held.tier, Some(Tier::Plain));
    assert_eq!(compressed_held.tier, Some(Tier::Compressed));
    assert_eq!(
        hold(&emergency, "inmemory_numbering").tier,
        Some(Tier::Disk)
    );
    assert_eq!(compressed_held.channels, compressed.channels_written);
    assert!(
        compressed_held.stored_bytes * 2 < compressed_held.encoded_bytes,
        "{compressed_held:?}"
    );
    // The tier changes how the channels wait, never what comes out.
    assert_eq!(compressed_out, plain_out);
    assert_eq!(critical_out, plain_out);
    assert_eq!(emergency_out, plain_out);
    assert_eq!(
        compressed.stages[3].channels_in,
        compressed.stages[3].channels_out
    );

    // Every channel numbered exactly once.
    let numbers: std::collections::HashSet<&str> =
        plain_out.iter().map(|c| c.tvg_chno.as_ref()).collect();
    assert_eq!(numbers.len(), plain_out.len(), "numbers are unique");
}

#[test]
fn compress_held_always_and_never_are_obeyed() {
    let empty = scratch_dir("empty");
    let with = |mode: &str| {
        format!(
            "[pipeline]\ncompress_held = \"{mode}\"\n\
             [proxy_generation.wasm_plugins.strategies]\n\
             channel_numbering = [\"inmemory_numbering\"]\n"
        )
    };
    let (always_out, always) = run(
        config(&empty, &with("always")),
        MemoryPressureLevel::Optimal,
    );
    let (never_out, never) = run(config(&empty, &with("never")), MemoryPressureLevel::Optimal);
    let (never_high_out, never_high) =
        run(config(&empty, &with("never")), MemoryPressureLevel::High);
    assert_eq!(
        hold(&always, "inmemory_numbering").tier,
        Some(Tier::Compressed)
    );
    assert_eq!(hold(&always, "inmemory_numbering").codec, "lz4");
    assert_eq!(hold(&never, "inmemory_numbering").tier, Some(Tier::Plain));
    // `never`: blocks are plain postcard when pressure moves them out.
    let never_high_hold = hold(&never_high, "inmemory_numbering");
    assert_eq!(never_high_hold.codec, "none");
    assert_eq!(never_high_hold.stored_bytes, never_high_hold.encoded_bytes);
    assert_eq!(always_out, never_out);
    assert_eq!(never_high_out, never_out);
    let error = Config::from_toml("[pipeline]\ncompress_held = \"sometimes\"\n").unwrap_err();
    assert!(error.to_string().contains("compress_held"), "{error}");
}

#[test]
fn plugin_strategies_run_and_change_channels() {
    let dir = plugin_dir(&["group_normalizer", "passthrough"]);
    let extra = "[proxy_generation.wasm_plugins.strategies]\n\
        data_mapping = [\"group_normalizer\"]\nfiltering = [\"passthrough\"]\n\
        [plugins.group_normalizer]\nempty_group = \"Other\"\n";
    let (out, stats) = run(config(&dir, extra), MemoryPressureLevel::Optimal);
    let (_, input, _) = read_all(PLAYLIST, 0);
    assert_eq!(out.len(), input.len());
    assert_eq!(stats.stages[1].strategy, "group_normalizer");
    assert_eq!(stats.stages[2].strategy, "passthrough");
    for (got, want) in out.iter().zip(&input) {
        let expected = if want.group_title.trim().is_empty() {
            "Other".to_string()
        } else {
            want.group_title
                .split_whitespace()
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| {
                            f.to_uppercase()
                                .chain(c.flat_map(char::to_lowercase))
                                .collect::<String>()
                        })
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(got.group_title, expected);
        assert_eq!(got.channel_name, want.channel_name);
    }
    assert!(stats.fuel_consumed > 0);
    assert_eq!(stats.plugin_failures, 0);
}

#[test]
fn failing_plugin_batches_fall_back_and_the_output_equals_the_native_run() {
    let dir = plugin_dir(&["flaky_filter"]);
    let native_filter = "[[filtering.filters]]\naction = \"exclude\"\n\
        expression = 'channel_name case_sensitive contains \"[Geo-blocked]\"'\n";
    let with_plugin = format!(
        "{native_filter}[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"flaky_filter\", \"native_filter\"]\n\
         [proxy_generation.wasm_plugins.fallbacks]\nmax_plugin_failures = 4\n\
         [plugins.flaky_filter]\ntrap_on = \"(240p)\"\n[pipeline]\nbatch_size = 256\n"
    );
    let (plugin_out, stats) = run(config(&dir, &with_plugin), MemoryPressureLevel::Optimal);
    let native_only = format!("{native_filter}[pipeline]\nbatch_size = 256\n");
    let (native_out, native_stats) = run(config(&dir, &native_only), MemoryPressureLevel::Optimal);
    assert_eq!(
        strip_ids(&plugin_out),
        strip_ids(&native_out),
        "nothing lost, nothing duplicated"
    );
    assert_eq!(native_stats.plugin_calls, 0);
    // The plugin failed 4 times, was switched off, and every failed batch
    // (and all later ones) went to the native filter.
    let plugin = &stats.plugins[0];
    assert_eq!(plugin.failures, 4);
    assert!(plugin.disabled);
    assert_eq!(stats.fallbacks, 4);
    let batches: u64 = stats.stages[2]
        .batches_by_strategy
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(batches, stats.batches);
    assert!(stats.stages[2]
        .batches_by_strategy
        .iter()
        .any(|(s, n)| s == "flaky_filter" && *n > 0));
}

#[test]
fn a_batch_keeps_its_index_through_the_holds() {
    let dir = plugin_dir(&["batch_stamp"]);
    // Held after source_loading (and at critical pressure, on disk): the
    // plugin at data_mapping still sees each batch's own index.
    let held = "[pipeline]\nbatch_size = 1000\n\
        [proxy_generation.wasm_plugins.strategies]\n\
        source_loading = [\"inmemory_full\"]\n\
        data_mapping = [\"batch_stamp\"]\n";
    for level in [MemoryPressureLevel::Optimal, MemoryPressureLevel::Critical] {
        let (out, stats) = run(config(&dir, held), level);
        assert_eq!(stats.batches, 11);
        for (position, channel) in out.iter().enumerate() {
            let expected = (position / 1000).to_string();
            assert_eq!(
                channel.attribute("x-batch"),
                Some(expected.as_str()),
                "{level:?}"
            );
        }
    }
}

#[test]
fn an_instance_that_replaces_a_failed_one_mid_run_gets_the_run_context() {
    let dir = plugin_dir(&["context_stamp"]);
    let mut config = config(
        &dir,
        "[pipeline]\nbatch_size = 2\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"context_stamp\", \"native_mapping\"]\n",
    );
    config.proxy.name = "nas".into();
    let mut pipeline = Pipeline::new(config).unwrap();
    let playlist = "#EXTM3U\n#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,B\nhttp://b\n\
                    #EXTINF:-1,TRAP\nhttp://t\n#EXTINF:-1,C\nhttp://c\n\
                    #EXTINF:-1,D\nhttp://d\n#EXTINF:-1,E\nhttp://e\n";
    let source = Source::from_reader("s", std::io::Cursor::new(playlist.as_bytes().to_vec()));
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
    assert_eq!(stats.plugin_failures, 1, "the TRAP batch");
    let stamps: Vec<Option<&str>> = out.iter().map(|c| c.attribute("x-proxy")).collect();
    // The second batch fell back to native_mapping (no stamp); the third ran
    // on a fresh instance, which still knows the run's proxy name.
    assert_eq!(
        stamps,
        [
            Some("nas"),
            Some("nas"),
            None,
            None,
            Some("nas"),
            Some("nas")
        ]
    );
}

#[test]
fn a_chained_strategy_runs_each_plugin_in_order_on_every_batch() {
    let dir = plugin_dir(&["tagger_a", "group_normalizer"]);
    let settings = "[plugins.group_normalizer]\nempty_group = \"Other\"\n";
    let chained = format!(
        "[proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"tagger+group_normalizer\", \"native_mapping\"]\n{settings}"
    );
    let single = format!(
        "[proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"group_normalizer\"]\n{settings}"
    );
    let (chain_out, stats) = run(config(&dir, &chained), MemoryPressureLevel::Optimal);
    let (single_out, _) = run(config(&dir, &single), MemoryPressureLevel::Optimal);
    assert_eq!(stats.stages[1].strategy, "tagger+group_normalizer");
    assert_eq!(
        stats.stages[1].batches_by_strategy,
        [("tagger+group_normalizer".to_string(), stats.batches)]
    );
    assert_eq!(stats.plugin_calls, 2 * stats.batches);
    assert_eq!(chain_out.len(), single_out.len());
    for (chained, single) in chain_out.iter().zip(&single_out) {
        // The tagger's stamp, then the normalizer's work, on the same channel.
        assert_eq!(chained.attribute("tagger-build"), Some("a"));
        let mut without_stamp = chained.clone();
        without_stamp
            .attributes
            .retain(|a| a.name != "tagger-build");
        assert_eq!(&without_stamp, single);
    }
}

#[test]
fn a_chain_failing_midway_hands_the_untouched_batch_to_the_next_candidate() {
    let dir = plugin_dir(&["tagger_a", "flaky_filter"]);
    // The tagger stamps every channel, then the flaky mapper traps on batches
    // holding a "(240p)" channel: those batches must reach native_mapping
    // (no rules: no change) without the tagger's stamp.
    let extra = "[proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"tagger+flaky_filter\", \"native_mapping\"]\n\
         [proxy_generation.wasm_plugins.fallbacks]\nmax_plugin_failures = 1000\n\
         [plugins.flaky_filter]\ntrap_on = \"(240p)\"\n[pipeline]\nbatch_size = 64\n";
    let (out, stats) = run(config(&dir, extra), MemoryPressureLevel::Optimal);
    let (_, input, _) = read_all(PLAYLIST, 0);
    assert_eq!(out.len(), input.len(), "nothing lost");
    let mut failing_batches = 0;
    for (batch_in, batch_out) in input.chunks(64).zip(out.chunks(64)) {
        let traps = batch_in.iter().any(|c| c.channel_name.contains("(240p)"));
        failing_batches += u64::from(traps);
        for (before, after) in batch_in.iter().zip(batch_out) {
            assert_eq!(before.channel_name, after.channel_name, "order kept");
            let stamp = if traps { None } else { Some("a") };
            assert_eq!(
                after.attribute("tagger-build"),
                stamp,
                "{}",
                after.channel_name
            );
        }
    }
    assert!(failing_batches > 0, "the playlist has (240p) channels");
    assert_eq!(stats.fallbacks, failing_batches);
    let flaky = stats
        .plugins
        .iter()
        .find(|p| p.name == "flaky_filter")
        .unwrap();
    let tagger = stats.plugins.iter().find(|p| p.name == "tagger").unwrap();
    assert_eq!(
        flaky.failures_by_kind.values().sum::<u64>(),
        failing_batches
    );
    assert_eq!(
        tagger.failures, 0,
        "the failure is charged to the plugin that failed"
    );
}

#[test]
fn a_chain_can_end_with_the_native_strategy_of_its_stage() {
    let dir = plugin_dir(&["tagger_a", "flaky_filter"]);
    let rules = "[mapping]\nrules = ['channel_name matches \"^(.*) \\\\(720p\\\\)$\" SET channel_name = \"$1\"']\n";
    let chained = format!(
        "{rules}[proxy_generation.wasm_plugins.strategies]\n\
         data_mapping = [\"tagger+flaky_filter+native_mapping\", \"native_mapping\"]\n\
         [proxy_generation.wasm_plugins.fallbacks]\nmax_plugin_failures = 1000\n\
         [plugins.flaky_filter]\ntrap_on = \"(240p)\"\n[pipeline]\nbatch_size = 64\n"
    );
    let (out, stats) = run(config(&dir, &chained), MemoryPressureLevel::Optimal);
    let (native_out, _) = run(config(&dir, rules), MemoryPressureLevel::Optimal);
    assert_eq!(
        stats.stages[1].strategy,
        "tagger+flaky_filter+native_mapping"
    );
    assert_eq!(out.len(), native_out.len());
    let (_, input, _) = read_all(PLAYLIST, 0);
    let mut renamed = 0;
    for ((batch_in, batch_out), batch_native) in input
        .chunks(64)
        .zip(out.chunks(64))
        .zip(native_out.chunks(64))
    {
        let traps = batch_in.iter().any(|c| c.channel_name.contains("(240p)"));
        for ((before, after), native) in batch_in.iter().zip(batch_out).zip(batch_native) {
            // The rules ran on every batch: by the chain, or by the fallback.
            assert_eq!(after.channel_name, native.channel_name);
            if let Some(stem) = before.channel_name.strip_suffix(" (720p)") {
                assert_eq!(after.channel_name, stem);
                renamed += 1;
            }
            let stamp = if traps { None } else { Some("a") };
            assert_eq!(after.attribute("tagger-build"), stamp);
        }
    }
    assert!(renamed > 0);
    let chain_batches = stats.stages[1]
        .batches_by_strategy
        .iter()
        .find(|(name, _)| name == "tagger+flaky_filter+native_mapping")
        .map(|(_, n)| *n);
    assert_eq!(chain_batches, Some(stats.batches - stats.fallbacks));
}

#[test]
fn chained_strategy_names_are_checked() {
    let dir = plugin_dir(&["tagger_a", "passthrough"]);
    let refuse = |list: &str| -> String {
        let extra = format!("[proxy_generation.wasm_plugins.strategies]\ndata_mapping = {list}\n");
        Pipeline::new(config(&dir, &extra))
            .err()
            .unwrap_or_else(|| panic!("{list} was accepted"))
            .to_string()
    };
    let message = refuse("[\"native_mapping+tagger\"]");
    assert!(message.contains("can only end a chain"), "{message}");
    let message = refuse("[\"tagger+native_filter\"]");
    assert!(
        message.contains(
            "a chain can end only with a streaming native strategy of data_mapping: native_mapping"
        ),
        "{message}"
    );
    let message = refuse("[\"tagger+nosuch\"]");
    assert!(message.contains("unknown strategy `nosuch`"), "{message}");
    let message = refuse(&format!("[\"{}\"]", ["tagger"; 9].join("+")));
    assert!(message.contains("at most 8"), "{message}");
    // A chain whose member does not implement the stage is skipped, with why.
    let extra = "[proxy_generation.wasm_plugins.strategies]\n\
                 data_mapping = [\"tagger+passthrough\", \"native_mapping\"]\n";
    let (_, stats) = run(config(&dir, extra), MemoryPressureLevel::Optimal);
    assert_eq!(stats.stages[1].strategy, "native_mapping");
    assert!(
        stats.stages[1]
            .reason
            .contains("tagger+passthrough (passthrough (does not implement data_mapping))"),
        "{}",
        stats.stages[1].reason
    );
}

#[test]
fn unknown_strategy_names_list_what_is_known() {
    let empty = scratch_dir("empty");
    let error = Pipeline::new(config(
        &empty,
        "[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"made_up_filter\"]\n",
    ))
    .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error.kind(), ErrorKind::Config { .. }));
    assert!(text.contains("unknown strategy `made_up_filter`"), "{text}");
    assert!(text.contains("native_filter"), "{text}");
    let error = Pipeline::new(config(
        &empty,
        "[proxy_generation.wasm_plugins.strategies]\nfiltering = [\"sorted_writer\"]\n",
    ))
    .unwrap_err();
    assert!(
        error.to_string().contains("is a m3u_generation strategy"),
        "{error}"
    );
}

#[test]
fn malformed_entries_are_skipped_and_every_valid_one_survives() {
    let playlist = "#EXTM3U\n#EXTINF:-1 tvg-id=\"a\",A\nhttp://a\n\
        #EXTINF:-1 tvg-id=\"broken,B\n#EXTINF:-1,no url\n\
        #EXTINF:-1 tvg-ID=\"c\",C, with comma\r\nhttp://c\n";
    let empty = scratch_dir("empty");
    let mut pipeline = Pipeline::new(config(&empty, "")).unwrap();
    let source = Source::from_reader("t", std::io::Cursor::new(playlist.as_bytes().to_vec()));
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
    let names: Vec<&str> = out.iter().map(|c| c.channel_name.as_ref()).collect();
    assert_eq!(names, ["A", "C, with comma"]);
    assert_eq!(out[1].tvg_id, "c");
    assert_eq!(stats.malformed_entries, 2);
}

#[test]
fn hot_reload_swaps_changed_plugins_between_runs_and_keeps_the_old_one_on_a_bad_file() {
    let dir = scratch_dir("reload");
    let mapper = dir.join("mapper.wasm");
    let built = |name: &str| Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(format!("{name}.wasm"));
    std::fs::copy(built("group_normalizer"), &mapper).unwrap();
    let extra =
        "[proxy_generation.wasm_plugins.strategies]\ndata_mapping = [\"group_normalizer\"]\n\
                 [plugins.group_normalizer]\nempty_group = \"Other\"\n";
    let mut pipeline = Pipeline::new(config(&dir, extra)).unwrap();
    let playlist = "#EXTM3U\n#EXTINF:-1 group-title=\"\",A\nhttp://a\n";
    let run = |pipeline: &mut Pipeline| {
        let source = Source::from_reader("t", std::io::Cursor::new(playlist.as_bytes().to_vec()));
        let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
        (out[0].group_title.to_string(), stats)
    };
    let touch = |path: &Path, seconds: u64| {
        let time = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    };
    assert_eq!(run(&mut pipeline).0, "Other");

    // A corrupt replacement is refused; the previous version keeps serving.
    std::fs::write(&mapper, b"\0asm garbage").unwrap();
    touch(&mapper, 1_000);
    let (group, stats) = run(&mut pipeline);
    assert_eq!(group, "Other");
    assert!(
        stats
            .plugin_load_errors
            .iter()
            .any(|e| e.contains("previous version kept")),
        "{stats:?}"
    );

    // A valid replacement (another plugin) takes over on the next run.
    std::fs::copy(built("passthrough"), &mapper).unwrap();
    touch(&mapper, 2_000);
    let (group, stats) = run(&mut pipeline);
    assert_eq!(
        group, "",
        "group_normalizer is gone, native mapping has no rules"
    );
    assert_eq!(stats.stages[1].strategy, "native_mapping");
    assert_eq!(pipeline.plugins()[0].name(), "passthrough");

    // A new file appears and is picked up; a removed one is unloaded.
    std::fs::copy(built("group_normalizer"), dir.join("again.wasm")).unwrap();
    std::fs::remove_file(&mapper).unwrap();
    assert_eq!(run(&mut pipeline).0, "Other");
    let names: Vec<&str> = pipeline.plugins().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["group_normalizer"]);
}

#[test]
fn url_rewriter_points_every_stream_at_the_proxy_and_keeps_the_upstream() {
    let dir = plugin_dir(&["url_rewriter"]);
    let extra = "[proxy_generation.wasm_plugins.strategies]\nm3u_generation = [\"url_rewriter\"]\n";
    let mut config = config(&dir, extra);
    config.proxy.base_url = "http://nas.local:8080/".into();
    let mut pipeline = Pipeline::new(config).unwrap();
    let source = Source::from_reader("real", std::io::Cursor::new(PLAYLIST.as_bytes().to_vec()));
    let (out, stats) = pipeline.run_collect(vec![source]).unwrap();
    let (_, input, _) = read_all(PLAYLIST, 0);
    assert_eq!(stats.stages[4].strategy, "url_rewriter");
    assert_eq!(out.len(), input.len());
    for (got, want) in out.iter().zip(&input) {
        assert_eq!(
            got.stream_url,
            format!("http://nas.local:8080/stream/{}", got.id)
        );
        assert_eq!(
            got.attribute("x-upstream-url"),
            Some(want.stream_url.as_ref())
        );
        assert_eq!(got.channel_name, want.channel_name);
        assert_eq!(got.extras, want.extras, "whole channels come back intact");
    }
}
