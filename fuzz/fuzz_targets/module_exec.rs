//! wasm-smith modules through the plugin runtime and through the engine
//! settings it uses. Expected: errors and traps, never a panic or a hang.
//!
//! The first bytes choose the shape of the module:
//! - plugin-shaped (exports exactly the ABI's `memory` and seven functions,
//!   bodies random) or free-form (any exports, up to 2 memories and 5 tables,
//!   so the store limits are hit too); a plugin-shaped module's
//!   `m3u_check_memory_pressure` is `(level)` or `(level, context_len)` and
//!   its `m3u_init` `()` or `(config_len)`, the two forms ABI 2 accepts of
//!   each (bits 1 and 2 of the first byte, which `bool` leaves unused);
//! - whether the `m3u_abi_version` section is appended (almost always);
//! - now and then invalid function bodies, for the validator.
//!
//! Imports: none, or `host.*` functions with their exact ABI signatures.
//! Memories are at most 4 MiB (32- or 64-bit), tables at most 200 000
//! elements, both above the limits below, so the limiters are exercised.
//!
//! 1. The host: `PluginRuntime::compile` then `instantiate` (arena, info,
//!    init) under fuel_per_call 100 000, fuel_slice 10 000, 1 s timeout and
//!    2 MiB of memory; if that loads, `PluginSlot::start_run` (the run
//!    context for `accepts_pressure`), `PluginSlot::run` for two stages on a
//!    two-channel batch (a positive return is an answer written in place
//!    after the input, 0 one pushed with `write_channels`), and `cleanup`.
//! 2. The engine directly (wasmi with the host's settings: fuel on, eager
//!    compilation, recursion limit 1000, `StoreLimits` of 2 MiB / 1 memory /
//!    4 tables / 100 000 elements): instantiate with stub `host.*` functions,
//!    then call every exported function — nullary ones as they are, others
//!    with zero arguments — each with `MIN_FUEL_SLICE` fuel: wasmi 2.0 leaks
//!    native stack on failing grows in proportion to the fuel of a slice, so
//!    the host cuts slices to its free stack (Findings 2 in fuzz/README.md)
//!    and this path must too.
#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use m3u_plugin_host::abi::{
    host_functions, Channel, MemoryPressureLevel, RunContext, Stage, StageContext, ABI_VERSION,
    ABI_VERSION_SECTION,
};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits, MIN_FUEL_SLICE};
use m3u_plugin_host::OwnedChannel;
use wasmi::{
    Engine, Extern, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Val,
};

const FUEL: u64 = 100_000;
const MEMORY_LIMIT: usize = 2 << 20;
/// The custom section `m3u_abi_version` holding [`ABI_VERSION`] (docs/ABI.md §1).
fn abi_section() -> Vec<u8> {
    let name = ABI_VERSION_SECTION.as_bytes();
    let mut section = vec![0, (1 + name.len() + 4) as u8, name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&ABI_VERSION.to_le_bytes());
    section
}

/// The ABI's exports; `m3u_init` and `m3u_check_memory_pressure` have two
/// accepted signatures each.
fn plugin_exports(pressure_with_context: bool, init_with_config: bool) -> String {
    let pressure = if pressure_with_context {
        "(param i32 i32)"
    } else {
        "(param i32)"
    };
    let init = if init_with_config { "(param i32)" } else { "" };
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "m3u_arena_ptr") (result i32) unreachable)
  (func (export "m3u_arena_capacity") (result i32) unreachable)
  (func (export "m3u_plugin_info") (result i32) unreachable)
  (func (export "m3u_init") {init} (result i32) unreachable)
  (func (export "m3u_execute_stage") (param i32 i32) (result i32) unreachable)
  (func (export "m3u_check_memory_pressure") {pressure} (result i32) unreachable)
  (func (export "m3u_cleanup") (result i32) unreachable))"#
    )
}

const HOST_IMPORTS: &str = r#"(module
  (import "host" "log" (func (param i32 i32 i32)))
  (import "host" "get_memory_usage" (func (result i64)))
  (import "host" "read_channels" (func (param i32 i32) (result i32)))
  (import "host" "write_channels" (func (param i32 i32) (result i32)))
  (import "host" "get_config" (func (param i32 i32 i32 i32) (result i32))))"#;

struct Templates {
    /// Indexed by `pressure_with_context as usize | (init_with_config as usize) << 1`.
    exports: [Vec<u8>; 4],
    imports: Vec<u8>,
    abi_section: Vec<u8>,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| Templates {
        exports: [0, 1, 2, 3].map(|forms: usize| {
            wat::parse_str(plugin_exports(forms & 1 != 0, forms & 2 != 0))
                .expect("exports template")
        }),
        imports: wat::parse_str(HOST_IMPORTS).expect("imports template"),
        abi_section: abi_section(),
    })
}

/// A fresh runtime (and engine) per input: a wasmi `Engine` keeps the code
/// of every module it compiled until it is dropped.
fn runtime() -> PluginRuntime {
    let limits = RuntimeLimits {
        fuel_per_call: FUEL,
        fuel_slice: MIN_FUEL_SLICE,
        timeout: Duration::from_secs(1),
        max_memory_bytes: MEMORY_LIMIT as u64,
        ..RuntimeLimits::default()
    };
    let all: Vec<String> = host_functions::ALL.iter().map(|s| s.to_string()).collect();
    PluginRuntime::new(limits, &all).expect("runtime")
}

/// The engine settings `PluginRuntime::new` uses (fresh per input, as above).
fn engine() -> Engine {
    Engine::new(&m3u_plugin_host::runtime::engine_config(
        &RuntimeLimits::default(),
    ))
}

fn smith_config(u: &mut Unstructured<'_>) -> arbitrary::Result<(wasm_smith::Config, bool, bool)> {
    // `bool` reads bit 0 of the first byte; bits 1 and 2 pick the export
    // forms without shifting what the rest of the input means (the saved
    // crashers in fuzz/regressions/module_exec keep their modules).
    let export_forms = usize::from(u.peek_bytes(1).map_or(0, |b| b[0]) >> 1) & 3;
    let plugin_shaped: bool = u.arbitrary()?;
    let with_abi = u.ratio(15u8, 16u8)?;
    let invalid = u.ratio(1u8, 16u8)?;
    let mut config = wasm_smith::Config {
        available_imports: u.arbitrary::<bool>()?.then(|| templates().imports.clone()),
        exports: plugin_shaped.then(|| templates().exports[export_forms].clone()),
        // What wasmi 2.0 validates by default (docs/ABI.md §2), plus
        // memory64 and multi-memory, which the host's wasmi also accepts.
        simd_enabled: false,
        relaxed_simd_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        wide_arithmetic_enabled: false,
        custom_page_sizes_enabled: false,
        memory64_enabled: true,
        bulk_memory_enabled: true,
        reference_types_enabled: true,
        tail_call_enabled: true,
        extended_const_enabled: true,
        multi_value_enabled: true,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        generate_custom_sections: true,
        // A newer encoding than wasmi 2.0's wasmparser (0.228) reads.
        compact_imports_enabled: false,
        allow_invalid_funcs: invalid,
        max_memories: if plugin_shaped { 1 } else { 2 },
        max_tables: 5,
        max_memory32_bytes: 4 << 20,
        max_memory64_bytes: 4 << 20,
        max_table_elements: 200_000,
        max_funcs: 30,
        max_instructions: 200,
        max_data_segments: 10,
        ..wasm_smith::Config::default()
    };
    if !plugin_shaped {
        config.max_exports = 20;
    }
    Ok((config, plugin_shaped, with_abi))
}

fn batch() -> Vec<OwnedChannel> {
    (1..=2)
        .map(|id| Channel {
            id,
            channel_name: format!("c{id}").into(),
            stream_url: format!("http://h/{id}").into(),
            ..Channel::default()
        })
        .collect()
}

/// The host path: compile, instantiate, and use what loads.
fn through_runtime(wasm: &[u8]) {
    let runtime = &runtime();
    let Ok(compiled) = runtime.compile(wasm) else {
        return;
    };
    let Ok(instance) = runtime.instantiate(&compiled, "fuzz", &PluginSettings::default()) else {
        return;
    };
    let mut slot = PluginSlot::new(instance, "fuzz.wasm".into());
    let run_context = RunContext {
        proxy_name: Cow::Borrowed("fuzz"),
        base_url: Cow::Borrowed("http://fuzz/"),
        ..RunContext::default()
    };
    let _ = slot.start_run(MemoryPressureLevel::Optimal, &run_context);
    for stage in [Stage::DataMapping, Stage::Filtering] {
        let context = StageContext {
            stage,
            proxy_name: Cow::Borrowed("fuzz"),
            ..StageContext::default()
        };
        let original = batch();
        let mut channels = original.clone();
        if slot.run(stage, &context, &mut channels).is_err() {
            assert_eq!(channels, original, "a failed call changed the batch");
        }
    }
    let _ = slot.instance.cleanup();
}

fn stub_linker(engine: &Engine) -> Linker<StoreLimits> {
    let mut linker = Linker::new(engine);
    let host = host_functions::MODULE;
    linker
        .func_wrap(host, host_functions::LOG, |_: i32, _: i32, _: i32| {})
        .and_then(|l| l.func_wrap(host, host_functions::GET_MEMORY_USAGE, || 0i64))
        .and_then(|l| l.func_wrap(host, host_functions::READ_CHANNELS, |_: i32, _: i32| 0i32))
        .and_then(|l| l.func_wrap(host, host_functions::WRITE_CHANNELS, |_: i32, _: i32| 0i32))
        .and_then(|l| {
            l.func_wrap(
                host,
                host_functions::GET_CONFIG,
                |_: i32, _: i32, _: i32, _: i32| -10i32,
            )
        })
        .expect("stub host functions");
    linker
}

/// The engine path: run every exported function under fuel and limits.
fn through_engine(wasm: &[u8]) {
    let engine = &engine();
    let Ok(module) = Module::new(engine, wasm) else {
        return;
    };
    let limits = StoreLimitsBuilder::new()
        .memory_size(MEMORY_LIMIT)
        .memories(1)
        .tables(4)
        .table_elements(100_000)
        .instances(1)
        .build();
    let mut store = Store::new(engine, limits);
    store.limiter(|limits| limits);
    store.set_fuel(MIN_FUEL_SLICE).expect("fuel is on");
    let linker = stub_linker(engine);
    let Ok(instance) = linker.instantiate_and_start(&mut store, &module) else {
        return;
    };
    let names: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
    for name in names {
        let Some(Extern::Func(func)) = instance.get_export(&store, &name) else {
            continue;
        };
        let ty = func.ty(&store);
        let params: Vec<Val> = ty
            .params()
            .iter()
            .map(|t| Val::default_for_ty(*t))
            .collect();
        let mut results: Vec<Val> = ty
            .results()
            .iter()
            .map(|t| Val::default_for_ty(*t))
            .collect();
        store.set_fuel(MIN_FUEL_SLICE).expect("fuel is on");
        let _ = func.call(&mut store, &params, &mut results);
    }
}

fuzz_target!(|data: &[u8]| {
    // A native stack overflow kills a build without ASan before libFuzzer
    // can save the input; with this set, every input is written there first.
    if let Some(path) = std::env::var_os("M3U_FUZZ_LAST_INPUT") {
        std::fs::write(path, data).expect("write M3U_FUZZ_LAST_INPUT");
    }
    let mut u = Unstructured::new(data);
    let Ok((config, _plugin_shaped, with_abi)) = smith_config(&mut u) else {
        return;
    };
    let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
        return;
    };
    let mut wasm = module.to_bytes();
    if with_abi {
        wasm.extend_from_slice(&templates().abi_section);
    }
    // To turn a crasher into a test fixture: run the target binary on it
    // with this set, and the module is written there before it runs.
    if let Some(path) = std::env::var_os("M3U_FUZZ_DUMP_WASM") {
        std::fs::write(path, &wasm).expect("write M3U_FUZZ_DUMP_WASM");
    }
    through_runtime(&wasm);
    through_engine(&wasm);
});
