//! Plugins written in C, Zig and AssemblyScript (`plugins/*-c`, `*-zig`,
//! `*-as`, built by build.rs with their `build.sh`) against their Rust
//! twins: the same channels out of every batch of the real playlist, in
//! batches of 1, 7 and 1,024 channels (split batches), with a base URL with
//! and without a trailing slash and none, and on hostile inputs (empty and
//! huge fields, multi-byte text, an empty batch, the largest ids).
//!
//! Without the compilers the plugins are not built and the tests print
//! SKIPPED, unless `M3U_REQUIRE_FOREIGN_PLUGINS=1` (as `.ci/run` sets).

use std::path::{Path, PathBuf};

use m3u_plugin_host::abi::{MemoryPressureLevel, RunContext, Stage, StageContext};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;

use super::common::playlist;

/// A non-Rust plugin and its Rust twin.
struct Twin {
    foreign: &'static str,
    rust: &'static str,
    /// The Rust twin's directory (`M3U_EXAMPLE_PLUGIN_DIR` or
    /// `M3U_TEST_PLUGIN_DIR`).
    rust_dir: &'static str,
    stage: Stage,
    /// How to install its compiler.
    install: &'static str,
}

const TWINS: [Twin; 3] = [
    Twin {
        foreign: "url_rewriter_c",
        rust: "url_rewriter",
        rust_dir: env!("M3U_EXAMPLE_PLUGIN_DIR"),
        stage: Stage::M3uGeneration,
        install: "apt-get install clang lld",
    },
    Twin {
        foreign: "drop_adult_zig",
        rust: "drop_adult",
        rust_dir: env!("M3U_TEST_PLUGIN_DIR"),
        stage: Stage::Filtering,
        install: "pip install ziglang (version in plugins/drop-adult-zig/build.sh)",
    },
    Twin {
        foreign: "url_rewriter_as",
        rust: "url_rewriter",
        rust_dir: env!("M3U_EXAMPLE_PLUGIN_DIR"),
        stage: Stage::M3uGeneration,
        install: "Node.js and npm (build.sh runs npm ci)",
    },
];

fn foreign_path(twin: &Twin) -> Option<PathBuf> {
    let path = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(format!("{}.wasm", twin.foreign));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("M3U_REQUIRE_FOREIGN_PLUGINS").is_err(),
        "{} was not built (M3U_REQUIRE_FOREIGN_PLUGINS is set): see the cargo warnings; {}",
        path.display(),
        twin.install
    );
    eprintln!(
        "SKIPPED: {} was not built ({}; cargo prints why as a warning)",
        twin.foreign, twin.install
    );
    None
}

fn slot(path: &Path) -> PluginSlot {
    let allowed: Vec<String> = ["log", "get_memory_usage", "read_channels", "write_channels"]
        .map(String::from)
        .to_vec();
    let runtime = PluginRuntime::new(RuntimeLimits::default(), &allowed).expect("runtime");
    let bytes = std::fs::read(path).unwrap();
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    let instance = runtime
        .load(&bytes, &stem, &PluginSettings::default())
        .unwrap_or_else(|error| panic!("{} does not load: {error}", path.display()));
    PluginSlot::new(instance, path.to_path_buf())
}

/// Runs `batches` through both plugins, as one pipeline run with this
/// base URL, and compares every batch's result.
fn same_batches(
    twin: &Twin,
    foreign: &mut PluginSlot,
    rust: &mut PluginSlot,
    base_url: &str,
    batches: &[Vec<OwnedChannel>],
) {
    let run = RunContext {
        memory_pressure: MemoryPressureLevel::Optimal,
        base_url: base_url.to_string().into(),
        ..RunContext::default()
    };
    for slot in [&mut *foreign, &mut *rust] {
        assert!(slot.start_run(MemoryPressureLevel::Optimal, &run).unwrap());
    }
    for (index, batch) in batches.iter().enumerate() {
        let context = StageContext {
            stage: twin.stage,
            memory_pressure: MemoryPressureLevel::Optimal,
            base_url: base_url.to_string().into(),
            batch_index: index as u32,
            ..StageContext::default()
        };
        let mut by_foreign = batch.clone();
        let mut by_rust = batch.clone();
        let foreign_result = foreign.run(twin.stage, &context, &mut by_foreign);
        let rust_result = rust.run(twin.stage, &context, &mut by_rust);
        // Both succeed, or both fail (a channel larger than an arena), with
        // the batch left as it was.
        assert_eq!(
            foreign_result.is_ok(),
            rust_result.is_ok(),
            "{} {:?} but {} {:?} on batch {index}",
            twin.foreign,
            foreign_result.err().map(|e| e.to_string()),
            twin.rust,
            rust_result.err().map(|e| e.to_string()),
        );
        assert!(
            by_foreign == by_rust,
            "{} and {} differ on batch {index} of {} channels (base URL {base_url:?}): first \
             difference {:?}",
            twin.foreign,
            twin.rust,
            batch.len(),
            by_foreign
                .iter()
                .zip(&by_rust)
                .find(|(a, b)| a != b)
                .map(|(a, b)| (a.id, a.stream_url.clone(), b.stream_url.clone()))
        );
    }
}

/// Channels meant to break a parser or a buffer.
fn hostile() -> Vec<OwnedChannel> {
    let huge = "u".repeat(200_000);
    let cases: Vec<(u64, String, String)> = vec![
        (0, String::new(), String::new()),
        (u64::MAX, "ADULT".into(), "http://x/ä€😀".into()),
        (
            u64::MAX - 1,
            "Adult Swim".into(),
            format!("http://x/{huge}"),
        ),
        (
            1,
            "Âdult xxx".into(),
            "rtmp://x:1935/live?token=a&b=c".into(),
        ),
        (2, "adul t".into(), " http://spaces/ ".into()),
        (3, huge.clone(), "\u{0}nul".into()),
        (
            4,
            "Für Erwachsene / adult".into(),
            "http://x/\"quoted\"".into(),
        ),
    ];
    cases
        .into_iter()
        .map(|(id, group, url)| OwnedChannel {
            id,
            group_title: group.into(),
            stream_url: url.into(),
            channel_name: "hostile".into(),
            ..OwnedChannel::default()
        })
        .collect()
}

#[test]
fn each_non_rust_plugin_gives_its_rust_twins_batches_on_the_real_playlist() {
    let channels = playlist();
    for twin in &TWINS {
        let Some(path) = foreign_path(twin) else {
            continue;
        };
        let mut foreign = slot(&path);
        assert_eq!(foreign.name(), twin.foreign);
        let mut rust = slot(&Path::new(twin.rust_dir).join(format!("{}.wasm", twin.rust)));
        for batch_size in [1024, 7, 1] {
            // Batches of one channel: the first 2,000 channels suffice.
            let input = if batch_size == 1 {
                &channels[..2000]
            } else {
                &channels[..]
            };
            let batches: Vec<Vec<OwnedChannel>> =
                input.chunks(batch_size).map(<[_]>::to_vec).collect();
            for base_url in ["http://proxy.local:8080/", "http://p", ""] {
                same_batches(twin, &mut foreign, &mut rust, base_url, &batches);
            }
        }
    }
}

#[test]
fn each_non_rust_plugin_gives_its_rust_twins_answer_on_hostile_input() {
    for twin in &TWINS {
        let Some(path) = foreign_path(twin) else {
            continue;
        };
        let mut foreign = slot(&path);
        let mut rust = slot(&Path::new(twin.rust_dir).join(format!("{}.wasm", twin.rust)));
        let cases = hostile();
        let batches = vec![Vec::new(), cases.clone(), cases[..1].to_vec(), cases];
        for base_url in ["http://proxy.local:8080/", "", "/", "http://ü.example/"] {
            same_batches(twin, &mut foreign, &mut rust, base_url, &batches);
        }
    }
}
