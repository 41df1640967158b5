//! The plugin catalogue against the same logic run natively, in one run.
//!
//! Each plugin in `plugins/` keeps its logic in `src/logic.rs`, free of the
//! SDK; this bench compiles those very files natively (`#[path]`) and runs
//! them over the same batches of the real playlist, applying the same
//! changes to the host's channels, so the only difference measured is the
//! sandbox: the boundary (projection, postcard, arena), the interpreter and
//! fuel metering. Every native twin's output is checked against the
//! plugin's before anything is timed.
//!
//! Prints channels/s of the plugin and of its native twin, the time ratio
//! and the fuel per channel. Run: `cargo bench --bench catalogue`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use m3u_plugin_host::abi::{MemoryPressureLevel, Stage, StageContext};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;

#[allow(dead_code)]
#[path = "../plugins/dedup/src/logic.rs"]
mod dedup_logic;
#[allow(dead_code)]
#[path = "../plugins/logo-mapper/src/logic.rs"]
mod logo_logic;
#[allow(dead_code)]
#[path = "../plugins/sports-optimizer/src/logic.rs"]
mod sports_logic;

mod common;
use common::{on_pipeline_thread, real_channels};
const BATCH: usize = 1024;
const ROUNDS: usize = 10;
const BASE_URL: &str = "http://nas.local:8080";

fn batches(channels: &[OwnedChannel]) -> Vec<Vec<OwnedChannel>> {
    channels
        .chunks(BATCH)
        .map(<[OwnedChannel]>::to_vec)
        .collect()
}

fn context(stage: Stage, batch_index: usize) -> StageContext<'static> {
    StageContext {
        stage,
        memory_pressure: MemoryPressureLevel::Optimal,
        base_url: BASE_URL.into(),
        batch_index: batch_index as u32,
        ..StageContext::default()
    }
}

/// One plugin loaded with its settings.
fn slot(file: &str, settings: &[(&str, &str)]) -> PluginSlot {
    slot_at(
        &PathBuf::from(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(file),
        settings,
    )
}

/// A plugin file loaded with its settings.
fn slot_at(path: &std::path::Path, settings: &[(&str, &str)]) -> PluginSlot {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let file = file.as_str();
    let allowed: Vec<String> = m3u_plugin_host::abi::host_functions::ALL
        .map(String::from)
        .to_vec();
    let runtime = PluginRuntime::new(RuntimeLimits::default(), &allowed).expect("runtime");
    let path = path.to_path_buf();
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo build` first)", path.display()));
    let name = file.trim_end_matches(".wasm").to_string();
    let values: BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let settings: PluginSettings = [(name, values)].into_iter().collect();
    let instance = runtime.load(&bytes, file, &settings).expect("plugin loads");
    PluginSlot::new(instance, path)
}

/// A run of one plugin stage (or a native twin) over every batch.
type Pass<'a> = dyn FnMut(usize, &mut Vec<OwnedChannel>) + 'a;

/// Best time of `ROUNDS` passes over fresh copies of `input` (each pass is
/// a new run, starting again at batch 0), and the output of the last pass.
fn time(input: &[Vec<OwnedChannel>], pass: &mut Pass<'_>) -> (Duration, Vec<OwnedChannel>) {
    let mut best = Duration::MAX;
    let mut output = Vec::new();
    for _ in 0..ROUNDS {
        let mut copies = input.to_vec();
        let started = Instant::now();
        for (index, batch) in copies.iter_mut().enumerate() {
            pass(index, batch);
        }
        best = best.min(started.elapsed());
        output = copies.concat();
    }
    (best, output)
}

struct Row {
    label: &'static str,
    wasm: Duration,
    native: Duration,
    fuel_per_channel: f64,
}

/// Times `plugin` at `stage` against `native`, after checking both give
/// the same channels.
fn compare(
    label: &'static str,
    input: &[Vec<OwnedChannel>],
    stage: Stage,
    plugin: &mut PluginSlot,
    native: &mut Pass<'_>,
) -> Row {
    let channels: usize = input.iter().map(Vec::len).sum();
    let fuel_before = plugin.total_stats().fuel_consumed;
    let (wasm, wasm_out) = time(input, &mut |index, batch| {
        if index == 0 {
            // A new pipeline run: the host hands the plugin the run's
            // context (ABI 2 sends `base_url` only here) and asks about
            // the pressure, as `Pipeline` does.
            let run = m3u_plugin_host::abi::RunContext {
                memory_pressure: MemoryPressureLevel::Optimal,
                base_url: BASE_URL.into(),
                ..m3u_plugin_host::abi::RunContext::default()
            };
            plugin
                .start_run(MemoryPressureLevel::Optimal, &run)
                .expect("pressure check");
        }
        plugin
            .run(stage, &context(stage, index), batch)
            .unwrap_or_else(|e| panic!("{label}: {e}"))
    });
    let fuel = plugin.total_stats().fuel_consumed - fuel_before;
    let (native, native_out) = time(input, native);
    assert_eq!(
        wasm_out.len(),
        native_out.len(),
        "{label}: plugin and native twin keep the same channels"
    );
    for (w, n) in wasm_out.iter().zip(&native_out) {
        assert_eq!(w, n, "{label}: plugin and native twin agree");
    }
    Row {
        label,
        wasm,
        native,
        fuel_per_channel: fuel as f64 / (channels * ROUNDS) as f64,
    }
}

fn logo_settings() -> Vec<(&'static str, &'static str)> {
    vec![(
        "by_name",
        "CNN | https://logos.example/cnn.png | cnn.us\n\
         BBC One | https://logos.example/bbc1.png | bbcone.uk\n\
         Al Jazeera | https://logos.example/aljazeera.png | aljazeera.qa",
    )]
}

fn logo_row(input: &[Vec<OwnedChannel>]) -> Row {
    let settings = logo_settings();
    let mut plugin = slot("logo_mapper.wasm", &settings);
    let map: BTreeMap<&str, &str> = settings.iter().copied().collect();
    let mapper = logo_logic::LogoMapper::new(|key| map.get(key).map(|v| v.to_string()))
        .expect("logo settings");
    compare(
        "mapping logo_mapper       ",
        input,
        Stage::DataMapping,
        &mut plugin,
        &mut |_, batch| {
            for channel in batch.iter_mut() {
                let changes = mapper.map_channel(
                    &logo_logic::ChannelFields {
                        channel_name: &channel.channel_name,
                        tvg_name: &channel.tvg_name,
                        tvg_id: &channel.tvg_id,
                        tvg_logo: &channel.tvg_logo,
                    },
                    BASE_URL,
                );
                if let Some(tvg_id) = changes.tvg_id {
                    channel.tvg_id = Cow::Owned(tvg_id);
                }
                if let Some(tvg_logo) = changes.tvg_logo {
                    channel.tvg_logo = Cow::Owned(tvg_logo);
                }
            }
        },
    )
}

fn sports_rows(input: &[Vec<OwnedChannel>]) -> [Row; 2] {
    let settings = [
        ("number_block", "1000-1999"),
        ("allowed_countries", "US; UK; CA; ES; FR; DE; IT"),
    ];
    let map: BTreeMap<&str, &str> = settings.iter().copied().collect();
    let get = |key: &str| map.get(key).map(|v| v.to_string());
    let mut plugin = slot("sports_optimizer.wasm", &settings);
    let mut native = sports_logic::SportsOptimizer::new(get).expect("sports settings");
    let mapping = compare(
        "mapping sports_optimizer  ",
        input,
        Stage::DataMapping,
        &mut plugin,
        &mut |index, batch| {
            if index == 0 {
                native.start_run();
            }
            for channel in batch.iter_mut() {
                let Some(mapping) = native.map_channel(
                    &channel.channel_name,
                    &channel.group_title,
                    &channel.tvg_chno,
                    channel.attribute("tvg-country"),
                    channel.attribute("tvg-language"),
                ) else {
                    continue;
                };
                if let Some(group) = mapping.group_title {
                    channel.group_title = Cow::Owned(group);
                }
                for (name, value) in mapping.attributes {
                    channel.set_attribute(Cow::Borrowed(name), Cow::Owned(value));
                }
                if let Some(number) = mapping.tvg_chno {
                    channel.tvg_chno = Cow::Owned(number.to_string());
                }
            }
        },
    );
    let mut native = sports_logic::SportsOptimizer::new(get).expect("sports settings");
    let filtering = compare(
        "filter  sports_optimizer  ",
        input,
        Stage::Filtering,
        &mut plugin,
        &mut |_, batch| {
            batch.retain(|channel| {
                native.keep(
                    &channel.channel_name,
                    &channel.group_title,
                    channel.attribute("tvg-country"),
                    channel.attribute("tvg-language"),
                )
            })
        },
    );
    [mapping, filtering]
}

/// Label, plugin file and settings of one dedup measurement.
type DedupCase<'a> = (&'static str, &'static str, &'a [(&'a str, &'a str)]);

/// The Rust dedup and its hand-written WAT twin (`key = url`), each against
/// the Rust logic natively; and the default key (`tvg_id`).
fn dedup_rows(input: &[Vec<OwnedChannel>]) -> Vec<Row> {
    let url_only = [
        ("key", "url"),
        ("keep", "first"),
        ("mode", "exact"),
        ("merge_alternates", "false"),
    ];
    let cases: [DedupCase<'_>; 3] = [
        ("filter  dedup (tvg_id)    ", "dedup.wasm", &[]),
        ("filter  dedup (url)       ", "dedup.wasm", &url_only),
        ("filter  dedup_wat (url)   ", "dedup_wat.wasm", &url_only),
    ];
    cases
        .into_iter()
        .map(|(label, file, settings)| {
            let mut plugin = slot(file, settings);
            let map: BTreeMap<&str, &str> = settings.iter().copied().collect();
            let config =
                dedup_logic::Config::from_lookup(|key| map.get(key).map(|v| v.to_string()))
                    .expect("dedup settings");
            let mut dedup = dedup_logic::Dedup::new(config);
            let mut decisions = Vec::new();
            compare(
                label,
                input,
                Stage::Filtering,
                &mut plugin,
                &mut |index, batch| {
                    if index == 0 {
                        dedup.start_run(0);
                    }
                    let fields: Vec<dedup_logic::Fields<'_>> = batch
                        .iter()
                        .map(|c| dedup_logic::Fields {
                            tvg_id: &c.tvg_id,
                            name: &c.channel_name,
                            url: &c.stream_url,
                        })
                        .collect();
                    dedup.decide_batch(&fields, &mut decisions);
                    drop(fields);
                    let mut keep = decisions.iter().map(|d| d.is_keep());
                    batch.retain(|_| keep.next().unwrap_or(true));
                },
            )
        })
        .collect()
}

/// The plugins written in C, Zig and AssemblyScript beside their Rust
/// twins (both are Wasm here): `(label, plugin, twin, twin's directory,
/// stage)`.
const FOREIGN: [(&str, &str, &str, &str, Stage); 3] = [
    (
        "url_rewriter_c  vs url_rewriter (Rust)",
        "url_rewriter_c",
        "url_rewriter",
        env!("M3U_EXAMPLE_PLUGIN_DIR"),
        Stage::M3uGeneration,
    ),
    (
        "url_rewriter_as vs url_rewriter (Rust)",
        "url_rewriter_as",
        "url_rewriter",
        env!("M3U_EXAMPLE_PLUGIN_DIR"),
        Stage::M3uGeneration,
    ),
    (
        "drop_adult_zig  vs drop_adult (Rust)  ",
        "drop_adult_zig",
        "drop_adult",
        env!("M3U_TEST_PLUGIN_DIR"),
        Stage::Filtering,
    ),
];

/// Each non-Rust plugin timed against its Rust twin over the same batches
/// (outputs compared first): both go through the same host path, so the
/// ratio is the languages' code, not the boundary.
fn foreign_rows(input: &[Vec<OwnedChannel>]) {
    let channels: usize = input.iter().map(Vec::len).sum();
    for (label, plugin, twin, twin_dir, stage) in FOREIGN {
        let path = PathBuf::from(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(format!("{plugin}.wasm"));
        if !path.is_file() {
            println!("  {label}: {plugin}.wasm not built (see the cargo warnings), left out");
            continue;
        }
        let mut foreign = slot_at(&path, &[]);
        let mut rust = slot_at(&PathBuf::from(twin_dir).join(format!("{twin}.wasm")), &[]);
        let fuel_before = rust.total_stats().fuel_consumed;
        let row = {
            let mut rust_pass = |index: usize, batch: &mut Vec<OwnedChannel>| {
                if index == 0 {
                    let run = m3u_plugin_host::abi::RunContext {
                        memory_pressure: MemoryPressureLevel::Optimal,
                        base_url: BASE_URL.into(),
                        ..m3u_plugin_host::abi::RunContext::default()
                    };
                    rust.start_run(MemoryPressureLevel::Optimal, &run)
                        .expect("pressure check");
                }
                rust.run(stage, &context(stage, index), batch)
                    .unwrap_or_else(|e| panic!("{twin}: {e}"));
            };
            compare(label, input, stage, &mut foreign, &mut rust_pass)
        };
        let twin_fuel =
            (rust.total_stats().fuel_consumed - fuel_before) as f64 / (channels * ROUNDS) as f64;
        println!(
            "  {label}: {:>10.0} ch/s vs {:>10.0} ch/s ({:.2}x the twin's time), fuel/channel {:.0} vs {:.0}",
            channels as f64 / row.wasm.as_secs_f64(),
            channels as f64 / row.native.as_secs_f64(),
            row.wasm.as_secs_f64() / row.native.as_secs_f64(),
            row.fuel_per_channel,
            twin_fuel
        );
    }
}

fn main() {
    on_pipeline_thread(run);
}

fn run() {
    let channels = real_channels();
    let input = batches(&channels);
    let mut rows = vec![logo_row(&input)];
    rows.extend(sports_rows(&input));
    rows.extend(dedup_rows(&input));
    println!(
        "plugin catalogue vs the same logic native, {} real channels in batches of {BATCH}, best of {ROUNDS}:",
        channels.len()
    );
    for row in rows {
        println!(
            "  {} wasm {:>10.0} ch/s   native {:>11.0} ch/s   wasm/native time {:>6.1}x   fuel/channel {:.0}",
            row.label,
            channels.len() as f64 / row.wasm.as_secs_f64(),
            channels.len() as f64 / row.native.as_secs_f64(),
            row.wasm.as_secs_f64() / row.native.as_secs_f64(),
            row.fuel_per_channel
        );
    }
    println!(
        "plugins in C, Zig and AssemblyScript vs their Rust twins (both Wasm, same host path), \
         same batches, best of {ROUNDS}:"
    );
    foreign_rows(&input);
}
