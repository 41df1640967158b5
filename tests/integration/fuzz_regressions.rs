//! Every input the fuzz targets in `fuzz/` ever failed on, replayed under
//! `cargo test` (see `fuzz/README.md`). The files live in
//! `tests/fixtures/fuzz/<target>/`, named after the libFuzzer artifact (for
//! `module_exec` the generated module as WAT); the raw artifacts are also in
//! `fuzz/regressions/<target>/` for the fuzzers.

use std::time::Duration;

use m3u_plugin_host::abi::host_functions;
use m3u_plugin_host::runtime::{
    stack_safe_fuel_slice, PluginRuntime, PluginSettings, RuntimeLimits, MIN_FUEL_SLICE,
};

use super::common::{repo_path, wat_str};

/// A generated module crasher, kept as the text `wasmprinter` printed for
/// it (compiled `.wasm` files are never committed).
fn module_fixture(name: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("module_exec", name)).expect("WAT is UTF-8");
    wat_str(&text)
}

fn fixture(target: &str, name: &str) -> Vec<u8> {
    let path = repo_path("tests/fixtures/fuzz").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

// ---------------------------------------------------------------- m3u_reader

#[path = "../support/m3u_round_trip.rs"]
mod m3u_round_trip;

use m3u_round_trip::{assert_round_trip, parse};

/// Not found by the fuzzer (its inputs stay under 4 KiB) but by its
/// property: an `#EXTINF` line under `MAX_LINE_LEN` (64 KiB) with 30 000 bare
/// attributes (`a`) is accepted, and the writer quotes each one (` a=""`),
/// so the written line is 150 KB; reading it back skips the entry as a line
/// longer than 64 KiB. Open: not a small fix in one file (the writer always
/// quotes, so any attribute-heavy line can grow past the reader's limit).
#[test]
#[ignore = "known: the writer can produce lines longer than the reader accepts"]
fn m3u_reader_written_line_outgrows_max_line_len() {
    let input = format!("#EXTINF:-1 {},T\nhttp://x\n", "a ".repeat(30_000));
    assert!(input.len() < m3u_plugin_host::m3u::MAX_LINE_LEN);
    assert_round_trip(input.as_bytes());
}

/// A URL line without `#EXTINF` whose last path segment starts with a space
/// (`9/08/ grm23…`): the reader named the channel " grm23…", the writer put
/// that after the EXTINF comma, and reading it back trimmed the space. Fixed
/// in `name_from_url` (src/m3u/reader.rs), which now trims the name.
#[test]
fn m3u_reader_url_segment_with_leading_space() {
    assert_round_trip(&fixture(
        "m3u_reader",
        "crash-f2d8899f5921424f0e5894571d01f54151ac3643",
    ));
    let (_, channels, _) = parse(b"9/08/ grm23\nhttp://h/a/ b \t?q\n");
    let names: Vec<&str> = channels.iter().map(|c| c.channel_name.as_ref()).collect();
    assert_eq!(names, ["grm23", "b"]);
    assert_round_trip(b"9/08/ grm23\nhttp://h/a/ b \t?q\n");
}

// --------------------------------------------------------------- module_exec

fn fuzz_runtime() -> PluginRuntime {
    let limits = RuntimeLimits {
        fuel_per_call: 100_000,
        fuel_slice: 10_000,
        timeout: Duration::from_secs(1),
        max_memory_bytes: 2 << 20,
        ..RuntimeLimits::default()
    };
    let all: Vec<String> = host_functions::ALL.iter().map(|s| s.to_string()).collect();
    PluginRuntime::new(limits, &all).unwrap()
}

/// Runs every exported function of `wasm` on an engine configured like the
/// host's (`runtime::engine_config`: fuel, translation, recursion limit) with one host fuel slice
/// each, as the `module_exec` target does; returns each call's outcome.
fn run_exports_directly(wasm: &[u8]) -> Vec<(String, Result<(), wasmi::Error>)> {
    let config = m3u_plugin_host::runtime::engine_config(&RuntimeLimits::default());
    let engine = wasmi::Engine::new(&config);
    let module = wasmi::Module::new(&engine, wasm).unwrap();
    let limits = wasmi::StoreLimitsBuilder::new()
        .memory_size(2 << 20)
        .memories(1)
        .tables(4)
        .table_elements(100_000)
        .instances(1)
        .build();
    let mut store = wasmi::Store::new(&engine, limits);
    store.limiter(|limits| limits);
    store.set_fuel(MIN_FUEL_SLICE).unwrap();
    let instance = wasmi::Linker::new(&engine)
        .instantiate_and_start(&mut store, &module)
        .unwrap();
    let names: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
    let mut outcomes = Vec::new();
    for name in names {
        let Some(wasmi::Extern::Func(func)) = instance.get_export(&store, &name) else {
            continue;
        };
        let ty = func.ty(&store);
        let params: Vec<wasmi::Val> = ty
            .params()
            .iter()
            .map(|t| wasmi::Val::default_for_ty(*t))
            .collect();
        let mut results: Vec<wasmi::Val> = ty
            .results()
            .iter()
            .map(|t| wasmi::Val::default_for_ty(*t))
            .collect();
        store.set_fuel(MIN_FUEL_SLICE).unwrap();
        outcomes.push((name, func.call(&mut store, &params, &mut results)));
    }
    outcomes
}

/// `wasm`'s host outcome (`PluginRuntime::load` error label) and, on the
/// engine, the trap code of each export, sorted by export name.
fn replay_module(wasm: &[u8]) -> (&'static str, Vec<(String, Option<wasmi::TrapCode>)>) {
    let error = fuzz_runtime()
        .load(wasm, "fuzz", &PluginSettings::default())
        .unwrap_err();
    let mut outcomes: Vec<(String, Option<wasmi::TrapCode>)> = run_exports_directly(wasm)
        .into_iter()
        .map(|(name, outcome)| (name, outcome.unwrap_err().as_trap_code()))
        .collect();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    (error.label(), outcomes)
}

fn expected_traps(out_of_fuel: &[&str]) -> Vec<(String, Option<wasmi::TrapCode>)> {
    let mut names = [
        "m3u_arena_capacity",
        "m3u_arena_ptr",
        "m3u_check_memory_pressure",
        "m3u_cleanup",
        "m3u_execute_stage",
        "m3u_init",
        "m3u_plugin_info",
    ];
    names.sort();
    names
        .iter()
        .map(|name| {
            let code = if out_of_fuel.contains(name) {
                wasmi::TrapCode::OutOfFuel
            } else {
                wasmi::TrapCode::UnreachableCodeReached
            };
            (name.to_string(), Some(code))
        })
        .collect()
}

/// wasm-smith made `m3u_plugin_info` an endless self tail call
/// (`(local f32) return_call 0`). wasmi 2.0 dispatches instructions by
/// handler-to-handler tail calls and relies on LLVM turning them into jumps;
/// a build with debug assertions (cargo-fuzz's default) or AddressSanitizer
/// does not, so every executed instruction took native stack until it
/// overflowed (SIGSEGV) long before the 100 000 fuel ran out. With the
/// project's profiles (wasmi at opt-level 3 without debug assertions, see
/// Cargo.toml) the loop ends with `OutOfFuel`, which this test checks: it
/// would crash the test binary if that profile override were lost.
/// fuzz/README.md explains how module_exec is run because of this.
#[test]
fn module_exec_endless_tail_call_runs_out_of_fuel() {
    let wasm = module_fixture("crash-000436e4b9f6a1481420d64b0e2db75c5783791a.wat");
    // This one has no ABI section: the host refuses it before running any
    // of it; the engine runs its exports.
    let (host, engine) = replay_module(&wasm);
    assert_eq!(host, "abi_version");
    assert_eq!(engine, expected_traps(&["m3u_plugin_info"]));

    // The same loop where the host runs it first, in fuel slices: the call
    // is paused and resumed ten times, then fails with out_of_fuel.
    let wasm = wat_str(
        r#"(module
          (@custom "m3u_abi_version" "\02\00\00\00")
          (memory (export "memory") 1)
          (func $spin (export "m3u_arena_ptr") (result i32) (local f32) (return_call $spin))
          (func (export "m3u_arena_capacity") (result i32) (i32.const 1024))
          (func (export "m3u_plugin_info") (result i32) (i32.const -1))
          (func (export "m3u_init") (result i32) (i32.const 0))
          (func (export "m3u_execute_stage") (param i32 i32) (result i32) (i32.const 0))
          (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
          (func (export "m3u_cleanup") (result i32) (i32.const 0)))"#,
    );
    let error = fuzz_runtime()
        .load(&wasm, "spin", &PluginSettings::default())
        .unwrap_err();
    assert_eq!(error.label(), "out_of_fuel", "{error}");
}

/// Found by module_exec built like the host (`-O -s none`, wasmi's
/// tail-call dispatch): `m3u_arena_ptr` and `m3u_arena_capacity` loop
/// (`return_call 0`) through twenty `memory.grow`s that fail. In wasmi 2.0
/// a `memory.grow` (or `table.grow`) that fails and returns -1 does not
/// tail-dispatch to the next instruction, so each one leaves a native stack
/// frame behind until the call returns or runs out of fuel; with 100 000
/// fuel at a time this overflowed a 4 MiB stack and aborted the process.
/// Fixed in the host: a fuel slice is cut to what the free native stack can
/// take at `STACK_BYTES_PER_FUEL`, and a call gets a fresh stack segment when
/// the thread has less than room for `MIN_FUEL_SLICE` (src/runtime/mod.rs).
/// The engine path below runs each export on `MIN_FUEL_SLICE` fuel.
#[test]
fn module_exec_failing_memory_grow_loop() {
    let wasm = module_fixture("crash-aad6e15007327f5ea13ec4890d75fcb5267f3d22.wat");
    let (host, engine) = replay_module(&wasm);
    assert_eq!(host, "memory_limit");
    assert_eq!(
        engine,
        expected_traps(&["m3u_arena_capacity", "m3u_arena_ptr"])
    );
}

/// A plugin whose `m3u_arena_ptr` loops over failing `memory.grow`s: past
/// the module's own maximum (wasmi answers -1 without asking the host's
/// limiter), by -1 pages, and a failing `table.grow`, in one straight run
/// of 300 per iteration so nearly every unit of fuel leaves a frame.
fn failing_grow_loop_plugin() -> Vec<u8> {
    let grows = "(drop (memory.grow (i32.const 100))) (drop (memory.grow (i32.const -1))) \
                 (drop (table.grow (ref.null func) (i32.const -1)))"
        .repeat(100);
    wat_str(&format!(
        r#"(module
          (@custom "m3u_abi_version" "\02\00\00\00")
          (memory (export "memory") 1 2)
          (table 1 funcref)
          (func (export "m3u_arena_ptr") (result i32)
            (loop $l {grows} (br $l))
            (i32.const 0))
          (func (export "m3u_arena_capacity") (result i32) (i32.const 1024))
          (func (export "m3u_plugin_info") (result i32) (i32.const -1))
          (func (export "m3u_init") (result i32) (i32.const 0))
          (func (export "m3u_execute_stage") (param i32 i32) (result i32) (i32.const 0))
          (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
          (func (export "m3u_cleanup") (result i32) (i32.const 0)))"#
    ))
}

fn load_failing_grow_loop() -> m3u_plugin_host::Error {
    let limits = RuntimeLimits {
        // Far more frames than any stack holds, were they kept; the
        // configured slice (20 000 000 by default) is far too large too.
        fuel_per_call: 2_000 * MIN_FUEL_SLICE,
        ..RuntimeLimits::default()
    };
    PluginRuntime::new(limits, &[])
        .unwrap()
        .load(
            &failing_grow_loop_plugin(),
            "grow",
            &PluginSettings::default(),
        )
        .unwrap_err()
}

/// The same through the host with its default slice on a test thread
/// (2 MiB of stack): it used to kill `m3u-plugin-host plugins inspect`
/// (release build, 8 MiB main thread) with "thread 'main' has overflowed its
/// stack". Now it runs out of fuel like any other loop.
#[test]
fn host_survives_a_failing_memory_grow_loop() {
    let error = load_failing_grow_loop();
    assert_eq!(error.label(), "out_of_fuel", "{error}");
}

/// `f` on a new thread with `stack` bytes of stack.
fn on_thread<T: Send + 'static>(stack: usize, f: fn() -> T) -> T {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .unwrap()
        .join()
        .expect("the thread survives")
}

/// And on a thread whose stack is far too small for one slice's frames (the
/// host moves the call to a fresh stack segment), and on one with a large
/// stack, where the slices are large too.
#[test]
fn host_survives_a_failing_memory_grow_loop_on_small_and_large_threads() {
    for stack in [256 << 10, 64 << 20] {
        let error = on_thread(stack, load_failing_grow_loop);
        assert_eq!(error.label(), "out_of_fuel", "{stack}: {error}");
    }
}

/// Slices follow the free stack: never below `MIN_FUEL_SLICE`, never above
/// what was asked, larger on a larger stack.
#[test]
fn fuel_slices_follow_the_free_native_stack() {
    let on_thread = |stack| on_thread(stack, || stack_safe_fuel_slice(u64::MAX));
    let (small, default, large) = (
        on_thread(256 << 10),
        on_thread(2 << 20),
        on_thread(64 << 20),
    );
    assert_eq!(small, MIN_FUEL_SLICE);
    assert!(
        (MIN_FUEL_SLICE..(2 << 20) / 64).contains(&default),
        "{default}"
    );
    assert!(large > 20 * MIN_FUEL_SLICE, "{large}");
    assert!(large < (64 << 20) / 64, "{large}");
    assert_eq!(stack_safe_fuel_slice(7), 7);
}

/// The other side of small slices: one instruction that costs more than a
/// slice (growing by 40 pages costs 40 960 fuel, filling 2 MiB 32 768) gets
/// the fuel it needs instead of running out of fuel slice after slice.
#[test]
fn an_instruction_dearer_than_a_slice_still_runs() {
    let wasm = wat_str(
        r#"(module
          (@custom "m3u_abi_version" "\02\00\00\00")
          (memory (export "memory") 1)
          (func (export "m3u_arena_ptr") (result i32)
            (if (i32.ne (memory.grow (i32.const 40)) (i32.const 1)) (then unreachable))
            (memory.fill (i32.const 0) (i32.const 7) (i32.const 0x200000))
            (i32.const 0))
          (func (export "m3u_arena_capacity") (result i32) (i32.const 4096))
          (func (export "m3u_plugin_info") (result i32) (i32.const -7))
          (func (export "m3u_init") (result i32) (i32.const 0))
          (func (export "m3u_execute_stage") (param i32 i32) (result i32) (i32.const 0))
          (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
          (func (export "m3u_cleanup") (result i32) (i32.const 0)))"#,
    );
    let limits = RuntimeLimits {
        fuel_per_call: 100_000,
        fuel_slice: MIN_FUEL_SLICE,
        ..RuntimeLimits::default()
    };
    let error = PluginRuntime::new(limits, &[])
        .unwrap()
        .load(&wasm, "dear", &PluginSettings::default())
        .unwrap_err();
    // The arena call finished; the load stops at the info status it asked for.
    assert!(
        matches!(
            error.kind(),
            m3u_plugin_host::ErrorKind::PluginStatus { status: -7, .. }
        ),
        "{error:?}"
    );
}
