//! Plugin runtime benches, one criterion group per phase: call overhead,
//! load (validate + compile + instantiate), and batch throughput against the
//! same logic run natively. After criterion, a same-run comparison prints
//! channels/s and the wasm/native ratio for each plugin.
//!
//! Run: `cargo bench --bench runtime` (add `-- --quick` for a short pass).

use std::borrow::Cow;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use m3u_plugin_host::abi::{
    encode_stage_input, InputHeader, MemoryPressureLevel, RunContext, Stage, StageContext,
};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginInstance, PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;

mod common;
use common::{on_pipeline_thread, real_channels};
const BATCH: usize = 1024;

fn plugin_bytes(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("M3U_EXAMPLE_PLUGIN_DIR")).join(file);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo build` first)", path.display()))
}

/// A plugin of `tests/plugins/` (the README's example filter lives there).
fn test_plugin(runtime: &PluginRuntime, file: &str) -> PluginInstance {
    let path = PathBuf::from(env!("M3U_TEST_PLUGIN_DIR")).join(file);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo build` first)", path.display()));
    runtime
        .load(&bytes, file, &PluginSettings::new())
        .expect("plugin loads")
}

fn runtime() -> PluginRuntime {
    let allowed: Vec<String> = m3u_plugin_host::abi::host_functions::ALL
        .map(String::from)
        .to_vec();
    PluginRuntime::new(RuntimeLimits::default(), &allowed).expect("runtime")
}

fn load(runtime: &PluginRuntime, file: &str) -> PluginInstance {
    runtime
        .load(&plugin_bytes(file), file, &PluginSettings::new())
        .expect("plugin loads")
}

fn context() -> StageContext<'static> {
    StageContext {
        stage: Stage::Filtering,
        memory_pressure: MemoryPressureLevel::Optimal,
        ..StageContext::default()
    }
}

/// Native twin of plugins/group-normalizer (Title Case, collapse spaces,
/// empty → "Uncategorized"), to measure the same logic without the sandbox.
fn normalize_native(group: &str) -> String {
    let mut out = String::with_capacity(group.len());
    for word in group.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.extend(chars.flat_map(char::to_lowercase));
        }
    }
    if out.is_empty() {
        out.push_str("Uncategorized");
    }
    out
}

fn native_normalize_batch(batch: &mut [OwnedChannel]) {
    for channel in batch {
        let normalized = normalize_native(&channel.group_title);
        if normalized != channel.group_title {
            channel.group_title = Cow::Owned(normalized);
        }
    }
}

/// The least a plugin can be: answers every batch "keep all" (written right
/// after the input) without reading it.
const BARE_PLUGIN: &str = r#"(module
  (@custom "m3u_abi_version" "\02\00\00\00")
  (memory (export "memory") 1)
  (data (i32.const 16)
    "\04" "bare" "\01" "1" "\00" "\00" "\04" "\00" "\00" "\00" "\04" "\00\00")
  (func (export "m3u_arena_ptr") (result i32) (i32.const 1024))
  (func (export "m3u_arena_capacity") (result i32) (i32.const 32768))
  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (i32.const 1024) (i32.const 16) (i32.const 16))
    (i32.const 16))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_execute_stage") (param i32 i32) (result i32)
    (i32.store8 (i32.add (i32.const 1024) (local.get 1)) (i32.const 3))
    (i32.const 1))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_cleanup") (result i32) (i32.const 0)))"#;

fn call_overhead(c: &mut Criterion) {
    let runtime = runtime();
    let mut instance = load(&runtime, "passthrough.wasm");
    let mut empty = vec![0u8; 64];
    let len = encode_stage_input(&mut empty, InputHeader::default(), &[]).unwrap();
    empty.truncate(len);
    let mut group = c.benchmark_group("call_overhead");
    group.bench_function("empty_stage_call", |b| {
        b.iter(|| {
            instance
                .execute_stage(Stage::Filtering, black_box(&empty))
                .map(|out| out.len())
                .unwrap()
        })
    });
    println!(
        "empty stage call: {} fuel in the guest (passthrough)",
        instance.stats().last_call_fuel
    );
    // The host's share: the same call into a plugin whose execute_stage
    // only writes "keep all" and returns (the floor of any stage call).
    let mut bare = runtime
        .load(
            &wat::parse_str(BARE_PLUGIN).unwrap(),
            "bare",
            &PluginSettings::new(),
        )
        .expect("bare plugin loads");
    group.bench_function("empty_stage_call_bare_plugin", |b| {
        b.iter(|| {
            bare.execute_stage(Stage::Filtering, black_box(&empty))
                .map(|out| out.len())
                .unwrap()
        })
    });
    println!(
        "empty stage call: {} fuel in the guest (bare plugin)",
        bare.stats().last_call_fuel
    );
    group.bench_function("check_memory_pressure", |b| {
        b.iter(|| {
            instance
                .accepts_pressure(
                    black_box(MemoryPressureLevel::Moderate),
                    &RunContext::default(),
                )
                .unwrap()
        })
    });
    group.finish();
}

fn load_and_instantiate(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("load");
    for file in [
        "passthrough.wasm",
        "group_normalizer.wasm",
        "url_rewriter.wasm",
    ] {
        let bytes = plugin_bytes(file);
        group.bench_function(format!("validate_compile_instantiate/{file}"), |b| {
            b.iter(|| {
                runtime
                    .load(black_box(&bytes), file, &PluginSettings::new())
                    .unwrap()
            })
        });
        let compiled = runtime.compile(&bytes).unwrap();
        group.bench_function(format!("instantiate_only/{file}"), |b| {
            b.iter(|| {
                runtime
                    .instantiate(&compiled, file, &PluginSettings::new())
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let runtime = runtime();
    let channels = real_channels();
    let batch: Vec<OwnedChannel> = channels[..BATCH].to_vec();
    let ctx = context();
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut passthrough = PluginSlot::new(load(&runtime, "passthrough.wasm"), PathBuf::new());
    group.bench_function("filter/passthrough_wasm", |b| {
        b.iter_batched_ref(
            || batch.clone(),
            |batch| passthrough.run(Stage::Filtering, &ctx, batch).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut drop_adult = PluginSlot::new(test_plugin(&runtime, "drop_adult.wasm"), PathBuf::new());
    group.bench_function("filter/drop_adult_wasm", |b| {
        b.iter_batched_ref(
            || batch.clone(),
            |batch| drop_adult.run(Stage::Filtering, &ctx, batch).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut normalizer = PluginSlot::new(load(&runtime, "group_normalizer.wasm"), PathBuf::new());
    group.bench_function("mapping/group_normalizer_wasm", |b| {
        b.iter_batched_ref(
            || batch.clone(),
            |batch| normalizer.run(Stage::DataMapping, &ctx, batch).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("mapping/group_normalizer_native", |b| {
        b.iter_batched_ref(
            || batch.clone(),
            |batch| native_normalize_batch(batch),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Same-run comparison: channels/s of each plugin over the whole real
/// playlist against its native twin, and the ratio.
fn ratios() {
    let runtime = runtime();
    let channels = real_channels();
    let ctx = context();
    let rounds = 20;
    let time = |f: &mut dyn FnMut(&mut Vec<OwnedChannel>)| -> Duration {
        let mut best = Duration::MAX;
        for _ in 0..rounds {
            let mut copies: Vec<Vec<OwnedChannel>> =
                channels.chunks(BATCH).map(|c| c.to_vec()).collect();
            let started = Instant::now();
            for batch in &mut copies {
                f(batch);
            }
            best = best.min(started.elapsed());
        }
        best
    };
    let per_second = |d: Duration| channels.len() as f64 / d.as_secs_f64();

    let fuel_of = |slot: &PluginSlot| slot.total_stats().fuel_consumed;
    let per_channel = |fuel: u64| fuel as f64 / (channels.len() * rounds) as f64;

    let mut passthrough = PluginSlot::new(load(&runtime, "passthrough.wasm"), PathBuf::new());
    let fuel_before = fuel_of(&passthrough);
    let wasm_filter = time(&mut |batch| passthrough.run(Stage::Filtering, &ctx, batch).unwrap());
    let filter_fuel = per_channel(fuel_of(&passthrough) - fuel_before);
    let native_filter = time(&mut |batch| batch.retain(|c| black_box(c).id != 0));

    let mut drop_adult = PluginSlot::new(test_plugin(&runtime, "drop_adult.wasm"), PathBuf::new());
    let fuel_before = fuel_of(&drop_adult);
    let wasm_one_field = time(&mut |batch| drop_adult.run(Stage::Filtering, &ctx, batch).unwrap());
    let one_field_fuel = per_channel(fuel_of(&drop_adult) - fuel_before);
    let native_one_field =
        time(&mut |batch| batch.retain(|c| !c.group_title.to_ascii_lowercase().contains("adult")));

    let mut normalizer = PluginSlot::new(load(&runtime, "group_normalizer.wasm"), PathBuf::new());
    let fuel_before = fuel_of(&normalizer);
    let wasm_map = time(&mut |batch| normalizer.run(Stage::DataMapping, &ctx, batch).unwrap());
    let map_fuel = per_channel(fuel_of(&normalizer) - fuel_before);
    let native_map = time(&mut |batch| native_normalize_batch(batch));

    let mut rewriter = PluginSlot::new(load(&runtime, "url_rewriter.wasm"), PathBuf::new());
    // The base URL reaches the plugin with the run's context.
    let run = RunContext {
        base_url: "http://nas.local:8080".into(),
        ..RunContext::default()
    };
    assert!(rewriter
        .instance
        .accepts_pressure(MemoryPressureLevel::Optimal, &run)
        .unwrap());
    let rewrite_ctx = StageContext {
        stage: Stage::M3uGeneration,
        ..context()
    };
    let fuel_before = fuel_of(&rewriter);
    let wasm_rewrite = time(&mut |batch| {
        rewriter
            .run(Stage::M3uGeneration, &rewrite_ctx, batch)
            .unwrap()
    });
    let rewrite_fuel = per_channel(fuel_of(&rewriter) - fuel_before);
    let native_rewrite = time(&mut |batch| native_rewrite_batch(batch, "http://nas.local:8080"));

    println!();
    println!(
        "same-run comparison over {} real channels, batches of {BATCH}, best of {rounds}:",
        channels.len()
    );
    let rows = [
        (
            "filter  passthrough     ",
            wasm_filter,
            native_filter,
            filter_fuel,
        ),
        (
            "filter  drop_adult      ",
            wasm_one_field,
            native_one_field,
            one_field_fuel,
        ),
        ("mapping group_normalizer", wasm_map, native_map, map_fuel),
        (
            "patch   url_rewriter    ",
            wasm_rewrite,
            native_rewrite,
            rewrite_fuel,
        ),
    ];
    for (label, wasm, native, fuel) in rows {
        println!(
            "  {label} wasm {:>10.0} ch/s   native {:>11.0} ch/s   wasm/native time ratio {:>6.1}x   fuel/channel {:.0}",
            per_second(wasm),
            per_second(native),
            wasm.as_secs_f64() / native.as_secs_f64(),
            fuel
        );
    }
}

/// Native twin of plugins/url-rewriter.
fn native_rewrite_batch(batch: &mut [OwnedChannel], base: &str) {
    for channel in batch {
        let upstream = std::mem::take(&mut channel.stream_url);
        channel.stream_url = Cow::Owned(format!("{base}/stream/{}", channel.id));
        channel.set_attribute(Cow::Borrowed("x-upstream-url"), upstream);
    }
}

fn main() {
    on_pipeline_thread(|| {
        let mut criterion = Criterion::default().configure_from_args();
        call_overhead(&mut criterion);
        load_and_instantiate(&mut criterion);
        throughput(&mut criterion);
        criterion.final_summary();
        ratios();
    });
}
