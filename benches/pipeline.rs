//! The whole pipeline as a user runs it: `m3u-plugin-host run` on inputs of
//! 10k, 100k and 1M channels derived from the real playlist, native-only and
//! with three plugins (group_normalizer, passthrough, url_rewriter), with fuel
//! metering on and off, streaming and in-memory; the spill store's holds: the
//! numbering barrier plain, LZ4, zstd and on disk, and sorted output in
//! memory against the external merge sort spilling to disk (the ratio of
//! the two is printed at the end), and whole-playlist dedup (`keep = "best"`
//! over the store, plain and on disk); the numbering barrier and the sorted
//! writer spilling to Redis and to an S3-compatible server (Garage) beside
//! the disk tier, when `M3U_TEST_REDIS_URL` / `M3U_TEST_S3_*` name them
//! (`.ci/services start redis|garage DIR` prints them). Each run is a separate
//! process, so its peak RSS (`VmHWM`, from `--stats-json`) is its own.
//! Prints time, channels/s and peak RSS beside the native-only run of the
//! same size, measured in the same bench run.
//!
//! Run: `cargo bench --bench pipeline` (needs ~300 MB of disk for the inputs,
//! written once to `target/bench-data/`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../tests/support/derived_playlist.rs"]
mod derived_playlist;

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

struct Setup {
    label: &'static str,
    pressure: &'static str,
    toml: String,
    /// The strategy every stage must report, so a plugin that silently did
    /// not load cannot pass for a measurement of it.
    strategies: [&'static str; 5],
    /// True if it removes channels (dedup): not every channel is written.
    drops: bool,
}

fn target_dir() -> PathBuf {
    Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR"))
        .parent()
        .expect("target/plugins has a parent")
        .to_path_buf()
}

/// The real playlist repeated with rewritten `tvg-id`s and URLs
/// (`tests/support/derived_playlist.rs`), written once to target/bench-data.
fn derived_input(channels: usize) -> PathBuf {
    derived_playlist::derived_input(&target_dir().join("bench-data"), channels)
}

const NATIVE: [&str; 5] = [
    "streaming_source",
    "native_mapping",
    "native_filter",
    "streaming_numbering",
    "streaming_writer",
];
const STREAMING: [&str; 5] = [
    "streaming_source",
    "group_normalizer",
    "passthrough",
    "streaming_numbering",
    "url_rewriter",
];
const NUMBERING_BARRIER: [&str; 5] = [
    "streaming_source",
    "native_mapping",
    "native_filter",
    "inmemory_numbering",
    "streaming_writer",
];
const SORTED: [&str; 5] = [
    "streaming_source",
    "native_mapping",
    "native_filter",
    "streaming_numbering",
    "sorted_writer",
];
const WHOLE_DEDUP: [&str; 5] = [
    "streaming_source",
    "native_mapping",
    "inmemory_filter",
    "streaming_numbering",
    "streaming_writer",
];
const IN_MEMORY: [&str; 5] = [
    "inmemory_full",
    "group_normalizer",
    "passthrough",
    "inmemory_numbering",
    "sorted_writer",
];

fn plugin_config(fuel_metering: bool, workers: usize, strategies: &str) -> String {
    format!(
        "[pipeline]\nworkers = {workers}\n\
         [proxy]\nbase_url = \"http://nas.local:8080\"\n\
         [output]\npath = \"/dev/null\"\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\nfuel_metering = {fuel_metering}\n\
         [proxy_generation.wasm_plugins.security]\n\
         allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
         [proxy_generation.wasm_plugins.strategies]\n{strategies}",
        env!("M3U_EXAMPLE_PLUGIN_DIR")
    )
}

fn setups() -> Vec<Setup> {
    let streaming = "data_mapping = [\"group_normalizer\"]\nfiltering = [\"passthrough\"]\n\
                     m3u_generation = [\"url_rewriter\"]\n";
    let in_memory = "source_loading = [\"inmemory_full\"]\n\
                     data_mapping = [\"group_normalizer\"]\nfiltering = [\"passthrough\"]\n\
                     channel_numbering = [\"inmemory_numbering\"]\n\
                     m3u_generation = [\"sorted_writer\"]\n";
    let spill = target_dir().join("bench-data/spill");
    std::fs::create_dir_all(&spill).expect("create the spill directory");
    let store = |compression: &str| {
        format!("[store]\nspill_directory = {spill:?}\ncompression = \"{compression}\"\n")
    };
    let native =
        "[output]\npath = \"/dev/null\"\n[proxy_generation.wasm_plugins]\nenabled = false\n\
                  [proxy_generation.wasm_plugins.strategies]\n";
    let barrier = format!("{native}channel_numbering = [\"inmemory_numbering\"]\n");
    let sorted = format!("{native}m3u_generation = [\"sorted_writer\"]\n");
    // Names repeat every 10,525 channels in the derived inputs: ~95 copies
    // per name at 1M, far apart, the best resolution kept.
    let whole_dedup = format!(
        "[filtering.dedup]\nkey = \"name\"\nkeep = \"best\"\nmerge_alternates = true\n\
         {native}filtering = [\"inmemory_filter\"]\n"
    );
    let mut remote = Vec::new();
    if let Ok(url) = std::env::var("M3U_TEST_REDIS_URL") {
        remote.push((
            "redis",
            format!("[store.redis]\nurl = {url:?}\nnamespace = \"m3u-bench\"\n"),
        ));
    }
    if let Ok(endpoint) = std::env::var("M3U_TEST_S3_ENDPOINT") {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        remote.push((
            "s3",
            format!(
                "[store.s3]\nendpoint = {endpoint:?}\nbucket = {:?}\nregion = {:?}\n\
                 access_key_id = {:?}\nsecret_access_key = {:?}\nprefix = \"m3u-bench\"\n",
                var("M3U_TEST_S3_BUCKET"),
                var("M3U_TEST_S3_REGION"),
                var("M3U_TEST_S3_ACCESS_KEY_ID"),
                var("M3U_TEST_S3_SECRET_ACCESS_KEY")
            ),
        ));
    }
    if remote.is_empty() {
        println!(
            "(no M3U_TEST_REDIS_URL / M3U_TEST_S3_ENDPOINT: the Redis and S3 rows are left out; \
             `.ci/services start redis DIR` and `start garage DIR` print them)"
        );
    }
    let mut setups = vec![
        Setup {
            label: "native only (baseline)",
            pressure: "high",
            toml: "[pipeline]\nworkers = 1\n[output]\npath = \"/dev/null\"\n\
                   [proxy_generation.wasm_plugins]\nenabled = false\n"
                .into(),
            strategies: NATIVE,
            drops: false,
        },
        Setup {
            label: "3 plugins, streaming",
            pressure: "high",
            toml: plugin_config(true, 1, streaming),
            strategies: STREAMING,
            drops: false,
        },
        // The same on two worker threads (this machine's cores): the
        // plugins of every stage but numbering run on both.
        Setup {
            label: "3 plugins, streaming, 2 workers",
            pressure: "high",
            toml: plugin_config(true, 2, streaming),
            strategies: STREAMING,
            drops: false,
        },
        Setup {
            label: "3 plugins, streaming, fuel off",
            pressure: "high",
            toml: plugin_config(false, 1, streaming),
            strategies: STREAMING,
            drops: false,
        },
        // The numbering barrier holds the whole playlist: plain at low
        // pressure, LZ4-compressed at high pressure (`compress_held`).
        Setup {
            label: "native, numbering barrier, plain",
            pressure: "optimal",
            toml: format!("[pipeline]\ncompress_held = \"never\"\n{barrier}"),
            strategies: NUMBERING_BARRIER,
            drops: false,
        },
        Setup {
            label: "native, numbering barrier, LZ4",
            pressure: "high",
            toml: format!("{}{barrier}", store("lz4")),
            strategies: NUMBERING_BARRIER,
            drops: false,
        },
        Setup {
            label: "native, numbering barrier, zstd",
            pressure: "high",
            toml: format!("{}{barrier}", store("zstd")),
            strategies: NUMBERING_BARRIER,
            drops: false,
        },
        // Critical pressure: the store's disk tier from the first batch.
        Setup {
            label: "native, numbering barrier, disk",
            pressure: "critical",
            toml: format!("{}{barrier}", store("lz4")),
            strategies: NUMBERING_BARRIER,
            drops: false,
        },
        Setup {
            label: "native, sorted, in memory",
            pressure: "optimal",
            toml: format!("{}{sorted}", store("lz4")),
            strategies: SORTED,
            drops: false,
        },
        Setup {
            label: "native, sorted, disk spill",
            pressure: "critical",
            toml: format!("{}{sorted}", store("lz4")),
            strategies: SORTED,
            drops: false,
        },
        Setup {
            label: "native, whole-playlist dedup best",
            pressure: "optimal",
            toml: format!("{}{whole_dedup}", store("lz4")),
            strategies: WHOLE_DEDUP,
            drops: true,
        },
        Setup {
            label: "native, whole-playlist dedup, disk",
            pressure: "critical",
            toml: format!("{}{whole_dedup}", store("lz4")),
            strategies: WHOLE_DEDUP,
            drops: true,
        },
        Setup {
            label: "2 plugins, in-memory (sorted)",
            pressure: "optimal",
            toml: plugin_config(true, 1, in_memory),
            strategies: IN_MEMORY,
            drops: false,
        },
    ];
    // Critical pressure with `spill_to`: every held block goes to the
    // server from the first batch, as the disk rows above go to disk.
    for (backend, section) in remote {
        let spill_to = format!("{}spill_to = {backend:?}\n{section}", store("lz4"));
        let (barrier_label, sorted_label) = match backend {
            "redis" => (
                "native, numbering barrier, redis",
                "native, sorted, redis spill",
            ),
            _ => ("native, numbering barrier, s3", "native, sorted, s3 spill"),
        };
        setups.push(Setup {
            label: barrier_label,
            pressure: "critical",
            toml: format!("{spill_to}{barrier}"),
            strategies: NUMBERING_BARRIER,
            drops: false,
        });
        setups.push(Setup {
            label: sorted_label,
            pressure: "critical",
            toml: format!("{spill_to}{sorted}"),
            strategies: SORTED,
            drops: false,
        });
    }
    setups
}

struct Measured {
    strategies: Vec<String>,
    millis: f64,
    rss_mib: f64,
    written: u64,
    plugin_failures: u64,
    /// Bytes the run's holds kept (compressed blocks, memory or disk).
    held_mib: f64,
}

fn run(config: &Path, input: &Path, pressure: &str) -> Measured {
    let stats_path = config.with_extension("json");
    let status = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
        .env("RUST_LOG", "error")
        .args(["run", "-q", "--config"])
        .arg(config)
        .arg("--input")
        .arg(input)
        .args(["--memory-pressure", pressure, "--stats-json"])
        .arg(&stats_path)
        .status()
        .expect("run m3u-plugin-host");
    assert!(
        status.success(),
        "m3u-plugin-host failed on {}",
        input.display()
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).expect("stats")).expect("json");
    Measured {
        strategies: stats["stages"]
            .as_array()
            .map(|stages| {
                stages
                    .iter()
                    .map(|stage| stage["strategy"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        millis: stats["time_ms"].as_f64().unwrap_or(f64::NAN),
        rss_mib: stats["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
        written: stats["channels_written"].as_u64().unwrap_or(0),
        plugin_failures: stats["plugin_failures"].as_u64().unwrap_or(0),
        held_mib: stats["holds"]
            .as_array()
            .map(|holds| {
                holds
                    .iter()
                    .filter_map(|hold| hold["stored_bytes"].as_f64())
                    .sum::<f64>()
            })
            .unwrap_or(0.0)
            / 1048576.0,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either way. PIPELINE_BENCH_ONLY="native only,3 plugins" keeps
    // the setups whose label contains one of the comma-separated parts (the
    // native baseline always runs).
    let dir = target_dir().join("bench-data");
    let only = std::env::var("PIPELINE_BENCH_ONLY").ok();
    let setups: Vec<_> = setups()
        .into_iter()
        .filter(|setup| {
            setup.label.starts_with("native only")
                || only.as_deref().is_none_or(|parts| {
                    parts
                        .split(',')
                        .any(|part| setup.label.contains(part.trim()))
                })
        })
        .collect();
    println!(
        "{:<9} {:<32} {:>9} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "channels",
        "setup",
        "time ms",
        "channels/s",
        "vs native",
        "RSS MiB",
        "RSS/nat.",
        "held MiB"
    );
    let mut streaming_rss = Vec::new();
    let mut sorted_times = Vec::new();
    // (size, label, ms, RSS MiB, stored MiB) of the disk and remote spills.
    let mut spills = Vec::new();
    // The time the plugin stages add to the native run, with one worker
    // and with two (the native baseline is one thread either way: it has
    // no rules to run in parallel).
    let mut one_worker = None;
    let mut worker_speedups = Vec::new();
    for size in SIZES {
        let input = derived_input(size);
        let mut native = None;
        for (index, setup) in setups.iter().enumerate() {
            let config = dir.join(format!("pipeline-{index}.toml"));
            std::fs::write(&config, &setup.toml).expect("write config");
            // Best of three for the time; RSS is the same each run.
            let runs: Vec<Measured> = (0..3)
                .map(|_| run(&config, &input, setup.pressure))
                .collect();
            let best = runs
                .into_iter()
                .min_by(|a, b| a.millis.total_cmp(&b.millis))
                .expect("three runs");
            if setup.drops {
                assert!(best.written as usize <= size, "{}", setup.label);
            } else {
                assert_eq!(
                    best.written as usize, size,
                    "{}: every channel written",
                    setup.label
                );
            }
            assert_eq!(best.plugin_failures, 0, "{}: no plugin failed", setup.label);
            assert_eq!(
                best.strategies, setup.strategies,
                "{}: strategies used",
                setup.label
            );
            let baseline = *native.get_or_insert((best.millis, best.rss_mib));
            if setup.label == "3 plugins, streaming" {
                streaming_rss.push((size, best.rss_mib));
            }
            if setup.label == "native, sorted, in memory"
                || setup.label == "native, sorted, disk spill"
            {
                sorted_times.push((size, setup.label, best.millis, best.rss_mib));
            }
            if setup.pressure == "critical" && !setup.label.contains("dedup") {
                spills.push((size, setup.label, best.millis, best.rss_mib, best.held_mib));
            }
            if setup.label == "3 plugins, streaming" {
                one_worker = Some(best.millis - baseline.0);
            }
            if setup.label == "3 plugins, streaming, 2 workers" {
                if let Some(added_one) = one_worker.take() {
                    let added_two = best.millis - baseline.0;
                    worker_speedups.push((size, added_one, added_two, best.rss_mib));
                }
            }
            println!(
                "{:<9} {:<32} {:>9.0} {:>12.0} {:>9.2}x {:>10.1} {:>8.2}x {:>9.1}",
                size,
                setup.label,
                best.millis,
                size as f64 / (best.millis / 1e3),
                best.millis / baseline.0,
                best.rss_mib,
                best.rss_mib / baseline.1,
                best.held_mib
            );
        }
    }
    for pair in sorted_times.chunks(2) {
        if let [(size, _, memory_ms, _), (_, _, disk_ms, disk_rss)] = pair {
            println!(
                "sorted output, {size} channels: disk spill takes {:.2}x the in-memory time, \
                 peak RSS {disk_rss:.1} MiB",
                disk_ms / memory_ms
            );
        }
    }
    // Each remote spill beside the disk spill of the same holder and size;
    // every stored byte is written once and read back once.
    for &(size, label, millis, rss, held) in &spills {
        let holder = if label.contains("barrier") {
            "numbering barrier"
        } else {
            "sorted"
        };
        let Some(&(_, _, disk_ms, _, _)) = spills
            .iter()
            .find(|s| s.0 == size && s.1.contains(holder) && s.1.contains("disk"))
        else {
            continue;
        };
        if !label.contains("disk") {
            println!(
                "{label}, {size} channels: {millis:.0} ms ({:.2}x the disk spill), peak RSS \
                 {rss:.1} MiB, {:.1} MiB moved ({held:.1} MiB stored, written and read back)",
                millis / disk_ms,
                2.0 * held
            );
        }
    }
    for (size, added_one, added_two, rss) in worker_speedups {
        println!(
            "3 plugins, {size} channels: the plugin stages add {added_one:.0} ms with one worker, \
             {added_two:.0} ms with two ({:.2}x faster); 2 workers peak RSS {rss:.1} MiB",
            added_one / added_two
        );
    }
    if let [.., (_, rss_100k), (_, rss_1m)] = streaming_rss[..] {
        println!(
            "3 plugins, streaming: RSS(1M) / RSS(100k) = {:.2}",
            rss_1m / rss_100k
        );
    }
}
