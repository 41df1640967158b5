//! wasmi (the host's engine) and wasmtime (Cranelift JIT) side by side, in
//! one run, on the same plugins and the same playlist. Prints a Markdown table.
//!
//! ```sh
//! cd benches/jit-peer && cargo run --release -- [--plugins DIR] [--playlist FILE] [--rounds N]
//! ```
//!
//! Four columns: wasmi and wasmtime with fuel (the host's configuration, the
//! fair comparison), then both without fuel (`RuntimeLimits::fuel_metering`
//! off for wasmi, `Config::consume_fuel(false)` for wasmtime). Every
//! measurement is interleaved (one sample of each column per round) so that
//! drift on a shared machine hits all columns alike, and the table shows the
//! best sample of each: other load only ever slows a sample down (on a busy
//! two-core machine, by up to 2×, in streaks). `JIT_PEER_SAMPLES=1` prints
//! every sample to stderr.

mod wasmtime_host;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use m3u_plugin_host::abi::{
    host_functions, FieldSet, MemoryPressureLevel, Stage, StageContext, StageInput,
};
use m3u_plugin_host::m3u::read_all;
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginInstance, PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;
use wasmtime_host::{WasmtimeInstance, WasmtimeRuntime};

const BATCH: usize = 1024;
const PLUGINS: [&str; 2] = ["passthrough.wasm", "group_normalizer.wasm"];

struct Args {
    plugins: PathBuf,
    playlist: PathBuf,
    rounds: usize,
}

fn args() -> Args {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let mut args = Args {
        plugins: root.join("target/plugins"),
        playlist: root.join("tests/fixtures/m3u/iptv-org-index-2021.m3u"),
        rounds: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--plugins" => args.plugins = value().into(),
            "--playlist" => args.playlist = value().into(),
            "--rounds" => args.rounds = value().parse().expect("--rounds N"),
            other => {
                panic!("unknown argument {other}; use --plugins DIR, --playlist FILE, --rounds N")
            }
        }
    }
    args
}

/// One sample (a time) of each column per round; returns the shortest of each.
fn interleaved<const N: usize>(
    rounds: usize,
    mut samples: [&mut dyn FnMut() -> f64; N],
) -> [f64; N] {
    let mut all: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for _ in 0..rounds {
        for (sample, out) in samples.iter_mut().zip(all.iter_mut()) {
            out.push(sample());
        }
    }
    if std::env::var_os("JIT_PEER_SAMPLES").is_some() {
        eprintln!("samples: {all:?}");
    }
    all.map(|values| values.into_iter().fold(f64::INFINITY, f64::min))
}

fn seconds(f: impl FnOnce()) -> f64 {
    let started = Instant::now();
    f();
    started.elapsed().as_secs_f64()
}

enum Unit {
    Time,
    PerSecond,
    Count,
}

struct Row {
    name: String,
    unit: Unit,
    /// wasmi and wasmtime with fuel, then both without (NaN = not applicable).
    values: [f64; 4],
}

fn show(unit: &Unit, value: f64) -> String {
    if value.is_nan() {
        return "—".into();
    }
    match unit {
        Unit::Time if value >= 1e-3 => format!("{:.2} ms", value * 1e3),
        Unit::Time if value >= 1e-6 => format!("{:.1} µs", value * 1e6),
        Unit::Time => format!("{:.0} ns", value * 1e9),
        Unit::PerSecond => format!("{:.2} M ch/s", value / 1e6),
        Unit::Count => format!("{value:.0}"),
    }
}

fn ratio(value: f64, base: f64) -> String {
    if value.is_nan() || base.is_nan() {
        "—".into()
    } else {
        format!("{:.2}×", value / base)
    }
}

fn context(stage: Stage) -> StageContext<'static> {
    StageContext {
        stage,
        memory_pressure: MemoryPressureLevel::Optimal,
        ..StageContext::default()
    }
}

/// Time to instantiate (drop not timed).
fn timed<T>(f: impl FnOnce() -> T) -> f64 {
    let started = Instant::now();
    let value = f();
    let elapsed = started.elapsed().as_secs_f64();
    drop(black_box(value));
    elapsed
}

const CALLS: usize = 2000;

/// Mean time of one call over `CALLS` calls.
fn per_call(mut f: impl FnMut()) -> f64 {
    seconds(|| (0..CALLS).for_each(|_| f())) / CALLS as f64
}

fn main() {
    let args = args();
    let limits = RuntimeLimits::default();
    let no_fuel = RuntimeLimits {
        fuel_metering: false,
        ..limits.clone()
    };
    let allowed: Vec<String> = host_functions::ALL.map(String::from).to_vec();
    let wasmi = PluginRuntime::new(limits.clone(), &allowed).expect("wasmi runtime");
    let wasmi_free = PluginRuntime::new(no_fuel.clone(), &allowed).expect("wasmi runtime");
    let wt = WasmtimeRuntime::new(limits, true).expect("wasmtime runtime");
    let wt_free = WasmtimeRuntime::new(no_fuel, false).expect("wasmtime runtime");
    let settings = PluginSettings::new();
    let bytes: Vec<Vec<u8>> = PLUGINS
        .iter()
        .map(|file| {
            let path = args.plugins.join(file);
            std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run `cargo build` at the repository root first)",
                    path.display()
                )
            })
        })
        .collect();
    let mut rows = Vec::new();

    // Compile: bytes → module. wasmi: the host's checks + eager translation;
    // wasmtime: validation + Cranelift to native code.
    for (file, wasm) in PLUGINS.iter().zip(&bytes) {
        let values = interleaved(
            30,
            [
                &mut || timed(|| wasmi.compile(wasm).unwrap()),
                &mut || timed(|| wt.compile(wasm).unwrap()),
                &mut || timed(|| wasmi_free.compile(wasm).unwrap()),
                &mut || timed(|| wt_free.compile(wasm).unwrap()),
            ],
        );
        rows.push(Row {
            name: format!("compile `{file}` ({} KB)", wasm.len() / 1000),
            unit: Unit::Time,
            values,
        });
    }

    // Instantiate a compiled module, read arena + info, run init.
    for (file, wasm) in PLUGINS.iter().zip(&bytes) {
        let (m1, m3) = (
            wasmi.compile(wasm).unwrap(),
            wasmi_free.compile(wasm).unwrap(),
        );
        let (m2, m4) = (wt.compile(wasm).unwrap(), wt_free.compile(wasm).unwrap());
        let values = interleaved(
            200,
            [
                &mut || timed(|| wasmi.instantiate(&m1, file, &settings).unwrap()),
                &mut || timed(|| wt.instantiate(&m2, &settings).unwrap()),
                &mut || timed(|| wasmi_free.instantiate(&m3, file, &settings).unwrap()),
                &mut || timed(|| wt_free.instantiate(&m4, &settings).unwrap()),
            ],
        );
        rows.push(Row {
            name: format!("instantiate + arena/info/init `{file}`"),
            unit: Unit::Time,
            values,
        });
    }

    // Call overhead on passthrough: the bare export round trip, and
    // `execute_stage` on an empty batch through the whole host path.
    let passthrough = &bytes[0];
    let wasmi_load = |rt: &PluginRuntime, file: &str, wasm: &[u8]| -> PluginInstance {
        rt.instantiate(&rt.compile(wasm).unwrap(), file, &settings)
            .unwrap()
    };
    let wt_load = |rt: &WasmtimeRuntime, wasm: &[u8]| -> WasmtimeInstance {
        rt.instantiate(&rt.compile(wasm).unwrap(), &settings)
            .unwrap()
    };
    let (mut a, mut c) = (
        wasmi_load(&wasmi, PLUGINS[0], passthrough),
        wasmi_load(&wasmi_free, PLUGINS[0], passthrough),
    );
    let (mut b, mut d) = (wt_load(&wt, passthrough), wt_load(&wt_free, passthrough));
    let level = MemoryPressureLevel::Moderate;
    let lv = level.as_u32();
    let values = interleaved(
        60,
        [
            &mut || per_call(|| assert!(a.accepts_pressure(black_box(level)).unwrap())),
            &mut || per_call(|| assert!(b.accepts_pressure(black_box(lv)).unwrap())),
            &mut || per_call(|| assert!(c.accepts_pressure(black_box(level)).unwrap())),
            &mut || per_call(|| assert!(d.accepts_pressure(black_box(lv)).unwrap())),
        ],
    );
    rows.push(Row {
        name: "`m3u_check_memory_pressure` round trip".into(),
        unit: Unit::Time,
        values,
    });
    let empty = postcard::to_allocvec(&StageInput {
        context: context(Stage::Filtering),
        fields: FieldSet::NONE,
        channels: Vec::new(),
    })
    .unwrap();
    let st = Stage::Filtering;
    let values = interleaved(
        60,
        [
            &mut || per_call(|| _ = black_box(a.execute_stage(st, &empty).unwrap().len())),
            &mut || per_call(|| _ = black_box(b.execute_stage(st, &empty).unwrap().len())),
            &mut || per_call(|| _ = black_box(c.execute_stage(st, &empty).unwrap().len())),
            &mut || per_call(|| _ = black_box(d.execute_stage(st, &empty).unwrap().len())),
        ],
    );
    rows.push(Row {
        name: "empty stage call (`execute_stage`, 0 channels)".into(),
        unit: Unit::Time,
        values,
    });
    drop((a, b, c, d));

    // Throughput over the real playlist, batches of 1,024.
    let text = std::fs::read_to_string(&args.playlist)
        .unwrap_or_else(|e| panic!("{}: {e}", args.playlist.display()));
    let (_, mut channels, _) = read_all(&text, 0);
    for (id, channel) in channels.iter_mut().enumerate() {
        channel.id = id as u64 + 1;
    }
    let batches =
        || -> Vec<Vec<OwnedChannel>> { channels.chunks(BATCH).map(<[_]>::to_vec).collect() };
    let n = channels.len() as f64;
    for ((file, wasm), stage) in PLUGINS
        .iter()
        .zip(&bytes)
        .zip([Stage::Filtering, Stage::DataMapping])
    {
        let ctx = context(stage);
        let slot = |rt: &PluginRuntime| PluginSlot::new(wasmi_load(rt, file, wasm), file.into());
        let (mut a, mut c) = (slot(&wasmi), slot(&wasmi_free));
        let (mut b, mut d) = (wt_load(&wt, wasm), wt_load(&wt_free, wasm));
        // One pass of each: warm-up, and the check that all four agree
        // channel for channel.
        let wasmi_pass = |slot: &mut PluginSlot| {
            let mut copies = batches();
            let took = seconds(|| {
                for batch in &mut copies {
                    slot.run(stage, &ctx, batch).unwrap();
                }
            });
            (took, copies)
        };
        let wasmtime_pass = |instance: &mut WasmtimeInstance| {
            let mut copies = batches();
            let took = seconds(|| {
                for batch in &mut copies {
                    instance.run(stage, &ctx, batch).unwrap();
                }
            });
            (took, copies)
        };
        let reference = wasmi_pass(&mut a).1;
        assert!(
            wasmtime_pass(&mut b).1 == reference,
            "{file}: wasmtime differs"
        );
        assert!(
            wasmi_pass(&mut c).1 == reference,
            "{file}: wasmi without fuel differs"
        );
        assert!(
            wasmtime_pass(&mut d).1 == reference,
            "{file}: wasmtime without fuel differs"
        );
        let kept: usize = reference.iter().map(Vec::len).sum();
        let changed = reference
            .iter()
            .flatten()
            .zip(&channels)
            .filter(|(out, input)| out != input)
            .count();
        drop(reference);
        let fuel_before = (a.instance.stats().fuel_consumed, b.fuel_consumed);
        let values = interleaved(
            args.rounds,
            [
                &mut || wasmi_pass(&mut a).0,
                &mut || wasmtime_pass(&mut b).0,
                &mut || wasmi_pass(&mut c).0,
                &mut || wasmtime_pass(&mut d).0,
            ],
        )
        .map(|took| n / took);
        rows.push(Row {
            name: format!(
                "throughput `{file}` ({}, reads {:#x}; {kept} kept, {changed} changed)",
                stage.name(),
                b.info().reads.0
            ),
            unit: Unit::PerSecond,
            values,
        });
        let per_channel = |fuel: u64| fuel as f64 / (n * args.rounds as f64);
        rows.push(Row {
            name: format!("fuel per channel `{file}` (each engine's own fuel model)"),
            unit: Unit::Count,
            values: [
                per_channel(a.instance.stats().fuel_consumed - fuel_before.0),
                per_channel(b.fuel_consumed - fuel_before.1),
                f64::NAN,
                f64::NAN,
            ],
        });
    }

    println!(
        "{} channels from {}, batches of {BATCH}; best of interleaved rounds \
         ({} throughput rounds). Ratio = wasmtime figure / wasmi figure with the same \
         fuel setting: below 1× is faster for times, above 1× is faster for ch/s. \
         All outputs identical.\n",
        channels.len(),
        args.playlist.file_name().unwrap().to_string_lossy(),
        args.rounds
    );
    println!(
        "| measurement | wasmi 2.0.0 fuel | wasmtime 48.0.8 fuel | ratio \
         | wasmi no fuel | wasmtime no fuel | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let [w, t, w0, t0] = row.values;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            show(&row.unit, w),
            show(&row.unit, t),
            ratio(t, w),
            show(&row.unit, w0),
            show(&row.unit, t0),
            ratio(t0, w0)
        );
    }
}
