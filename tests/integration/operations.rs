//! Plugins in a long-lived pipeline: hot reload while runs follow each other,
//! wall-clock timeouts that end in a fallback, and the circuit breaker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use m3u_plugin_host::abi::MemoryPressureLevel;
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, RunStats, Source};
use m3u_plugin_host::OwnedChannel;

use super::pipeline::scratch_dir;

const PLAYLIST: &str = include_str!("../fixtures/m3u/iptv-org-index-2021.m3u");

fn test_plugin(file: &str) -> PathBuf {
    Path::new(env!("M3U_TEST_PLUGIN_DIR")).join(file)
}

fn pipeline(dir: &Path, extra: &str) -> Pipeline {
    let text = format!(
        "[proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n{extra}",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut pipeline = Pipeline::new(config).unwrap();
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    pipeline
}

fn first_lines(entries: usize) -> String {
    PLAYLIST
        .lines()
        .take(1 + 2 * entries)
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(pipeline: &mut Pipeline, playlist: &str) -> (Vec<OwnedChannel>, RunStats) {
    let source = Source::from_reader("t", std::io::Cursor::new(playlist.as_bytes().to_vec()));
    pipeline.run_collect(vec![source]).unwrap()
}

/// Replaces `path` the way a careless deploy does (truncate, then write),
/// with an mtime of its own so every version is noticed.
fn replace(path: &Path, bytes: &[u8], version: u64) {
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + version);
    super::common::write_with_mtime(path, bytes, mtime);
}

#[test]
fn reloads_during_back_to_back_runs_never_mix_versions() {
    let dir = scratch_dir("reload-storm");
    let plugin = dir.join("tagger.wasm");
    let build_a = std::fs::read(test_plugin("tagger_a.wasm")).unwrap();
    let build_b = std::fs::read(test_plugin("tagger_b.wasm")).unwrap();
    replace(&plugin, &build_a, 0);
    let mut pipeline = pipeline(
        &dir,
        "[proxy_generation.wasm_plugins.strategies]\ndata_mapping = [\"tagger\"]\n\
         [pipeline]\nbatch_size = 100\n",
    );
    let playlist = first_lines(1000);
    let entries = m3u_plugin_host::m3u::read_all(&playlist, 0).1.len();

    // Another thread keeps replacing the file: build a, build b, garbage.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, plugin) = (stop.clone(), plugin.clone());
        std::thread::spawn(move || {
            let versions: [&[u8]; 3] = [&build_b, b"\0asm\x01\0\0\0 not a module", &build_a];
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                replace(&plugin, versions[version as usize % 3], version);
                version += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            version
        })
    };
    let mut seen = std::collections::BTreeMap::new();
    // At least 40 runs, and on until both builds have been served (a busy
    // machine can starve the writer for a while), at most 400.
    for number in 0..400 {
        let both =
            seen.contains_key(&Some("a".to_string())) && seen.contains_key(&Some("b".to_string()));
        if number >= 40 && both {
            break;
        }
        let (out, stats) = run(&mut pipeline, &playlist);
        assert_eq!(out.len(), entries, "every run is complete");
        let builds: std::collections::BTreeSet<Option<&str>> =
            out.iter().map(|c| c.attribute("tagger-build")).collect();
        assert_eq!(builds.len(), 1, "one run, one version: {builds:?}");
        *seen
            .entry(builds.into_iter().next().unwrap().map(String::from))
            .or_insert(0) += 1;
        // The numbers add up: every batch went through exactly one strategy,
        // and a healthy tagger never failed.
        let mapping = &stats.stages[1];
        let batches: u64 = mapping.batches_by_strategy.iter().map(|(_, n)| n).sum();
        assert_eq!(batches, stats.batches);
        assert_eq!(stats.plugin_failures, 0);
        assert_eq!(stats.fallbacks, 0);
        let tagger_batches = mapping
            .batches_by_strategy
            .iter()
            .find(|(name, _)| name == "tagger")
            .map_or(0, |(_, n)| *n);
        assert_eq!(stats.plugin_calls, tagger_batches);
    }
    stop.store(true, Ordering::Relaxed);
    let versions_written = writer.join().unwrap();
    assert!(versions_written > 10, "the writer really raced the runs");
    assert!(
        seen.contains_key(&Some("a".into())) && seen.contains_key(&Some("b".into())),
        "both builds served in turn: {seen:?}"
    );
    // A corrupt file never replaced a working version: runs without the
    // tagger can only happen when no good version was ever loaded.
    assert!(
        !seen.contains_key(&None) || pipeline.plugins().is_empty(),
        "a corrupt replacement unloaded the running version: {seen:?}"
    );
}

#[test]
fn wall_clock_timeout_stops_a_looping_plugin_and_the_run_falls_back() {
    let dir = scratch_dir("timeout");
    let looping = wat::parse_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wat/infinite_loop.wat"),
    )
    .unwrap();
    std::fs::write(dir.join("infinite_loop.wasm"), looping).unwrap();
    let native = "[[filtering.filters]]\naction = \"exclude\"\nexpression = 'channel_name contains \"HD\"'\n";
    let mut with_plugin = pipeline(
        &dir,
        &format!(
            "timeout_seconds = 1\nfuel_per_call = 1000000000000000\n{native}\
             [proxy_generation.wasm_plugins.strategies]\nfiltering = [\"infinite_loop\"]\n\
             [proxy_generation.wasm_plugins.fallbacks]\nfallback_timeout_ms = 500\n\
             max_plugin_failures = 1\n"
        ),
    );
    // A small input keeps the native fallback instant even under qemu.
    let playlist = first_lines(20);
    let started = Instant::now();
    let (out, stats) = run(&mut with_plugin, &playlist);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "run took {elapsed:?}, more than timeout_seconds + fallback_timeout_ms"
    );
    assert!(
        elapsed >= Duration::from_secs(1),
        "the deadline, not fuel, stopped it"
    );
    let plugin = &stats.plugins[0];
    assert_eq!(plugin.failures_by_kind.get("timeout"), Some(&1));
    assert!(plugin.disabled);
    let mut native_only = pipeline(&scratch_dir("timeout-native"), native);
    let (expected, _) = run(&mut native_only, &playlist);
    let names = |c: &[OwnedChannel]| {
        c.iter()
            .map(|c| c.channel_name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&out), names(&expected));
}

#[test]
fn the_circuit_reopens_after_its_back_off_and_a_trapped_instance_is_replaced() {
    let dir = scratch_dir("circuit");
    std::fs::copy(
        test_plugin("flaky_filter.wasm"),
        dir.join("flaky_filter.wasm"),
    )
    .unwrap();
    let mut pipeline = pipeline(
        &dir,
        "[proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\nfiltering = [\"flaky_filter\"]\n\
         [proxy_generation.wasm_plugins.fallbacks]\nmax_plugin_failures = 2\ncircuit_reset_seconds = 1\n\
         [plugins.flaky_filter]\ntrap_on = \"TRAP\"\n[pipeline]\nbatch_size = 1\n",
    );
    let bad = "#EXTM3U\n#EXTINF:-1,TRAP one\nhttp://1\n#EXTINF:-1,TRAP two\nhttp://2\n#EXTINF:-1,fine\nhttp://3\n";
    let (out, stats) = run(&mut pipeline, bad);
    assert_eq!(out.len(), 3, "failed batches fell back");
    assert!(stats.plugins[0].disabled, "two traps opened the circuit");
    assert_eq!(
        stats.stages[2].batches_by_strategy,
        [("native_filter".to_string(), 3)]
    );
    assert_eq!(stats.plugins[0].failures_by_kind.get("trap"), Some(&2));

    // Still inside the back-off: the plugin is skipped.
    let good = "#EXTM3U\n#EXTINF:-1,fine\nhttp://3\n";
    let (_, stats) = run(&mut pipeline, good);
    assert_eq!(stats.stages[2].strategy, "native_filter");
    assert!(
        stats.stages[2].reason.contains("switched off"),
        "{}",
        stats.stages[2].reason
    );

    // After it, the plugin gets another chance, in a fresh instance.
    std::thread::sleep(Duration::from_millis(1100));
    let (out, stats) = run(&mut pipeline, good);
    assert_eq!(out.len(), 1);
    assert_eq!(stats.stages[2].strategy, "flaky_filter");
    assert!(!stats.plugins[0].disabled);
    assert_eq!(stats.plugins[0].failures, 0);
    assert_eq!(
        stats.plugins[0].failures_by_kind.get("trap"),
        Some(&2),
        "lifetime counts kept"
    );
}
