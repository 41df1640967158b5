//! The hostile-plugin corpus: broken and malicious plugins, each with the
//! error it must produce (see docs/SECURITY.md for the table).
//!
//! [`CORPUS`] is the list. Every row names a module (a WAT fixture in
//! `tests/fixtures/wat/`, a variant of one, a test plugin from
//! `tests/plugins/`, or bytes made here), the `Error::label()` it must fail
//! with and the phase it fails in:
//!
//! - `Load`: compiling or instantiating it (start function, arena, info, init);
//! - `Pressure`: the `m3u_check_memory_pressure` call at the start of a run;
//! - `Call(stage)`: one `m3u_execute_stage` call, through `PluginSlot::run`,
//!   so the answer is decoded and validated as in the pipeline.
//!
//! [`every_corpus_case_fails_as_listed_and_the_pipeline_falls_back`] checks
//! each row twice: directly (the exact error kind, and a batch left
//! untouched), then as the first strategy of its stage in a [`Pipeline`],
//! whose output must equal the native-only run on the same input, with the
//! failures counted under the same label. The behaviours that are not a
//! plain failure (statuses that are not traps, capped logs, cleanup, output
//! limits, unread input, oversized files) have their own tests below.
//!
//! Limits are small (2 000 000 fuel, 4 MiB of memory, 16-channel batches) so
//! the whole corpus runs in well under a second.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use m3u_plugin_host::abi::{
    Channel, Field, FieldSet, MemoryPressureLevel, Patch, PatchOp, PluginInfo, Stage, StageContext,
    StageOutput,
};
use m3u_plugin_host::config::Config;
use m3u_plugin_host::pipeline::{Pipeline, PluginSlot, RunStats, Source};
use m3u_plugin_host::runtime::{
    PluginInstance, PluginRuntime, PluginSettings, RuntimeLimits, HOST_BYTES_PER_FUEL,
    HOST_CALL_BASE_FUEL, MAX_LOG_BYTES_PER_RUN, MAX_LOG_LINES_PER_CALL, MAX_LOG_LINES_PER_RUN,
};
use m3u_plugin_host::{Error, ErrorKind, OwnedChannel};

use super::common::{
    allowlist_with, idle_files, replace_once, repo_path, runtime_with, test_plugin, wat_file,
    wat_str, wat_text,
};
use super::pipeline::{plugin_dir, scratch_dir};

const PLAYLIST: &str = include_str!("../fixtures/m3u/iptv-org-index-2021.m3u");

/// Entries of the real playlist the pipeline runs use, and their batch size:
/// three full batches, so every batch reaches every stage.
const ENTRIES: usize = 48;
const BATCH: usize = 16;

/// The limits of every run here (also what `Config::runtime_limits` gives).
const FUEL: u64 = 2_000_000;
const MEMORY_LIMIT: u64 = 4 << 20;

/// What the host functions allow in these tests: the default list plus
/// `get_config`, so a plugin that uses it gets as far as its calls.
const ALLOWED: &str =
    r#"["log", "get_memory_usage", "read_channels", "write_channels", "get_config"]"#;

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

/// Where a corpus module comes from.
#[derive(Clone, Copy)]
enum Module {
    /// A WAT fixture in `tests/fixtures/wat/`.
    Wat(&'static str),
    /// A WAT fixture with one piece of text replaced (`from`, `to`).
    WatEdit(&'static str, &'static str, &'static str),
    /// `canned_output.wat` answering every call with these bytes.
    Canned(fn() -> Vec<u8>),
    /// A test plugin built by build.rs from `tests/plugins/`.
    TestPlugin(&'static str),
    /// Bytes made by the test, saved as `<name>.wasm`.
    Bytes(&'static str, fn() -> Vec<u8>),
}

impl Module {
    /// File stem in the plugin directory, which is also the name the
    /// strategy list uses (a plugin's own name for the ones that load).
    fn stem(self) -> &'static str {
        match self {
            Module::Wat(file) | Module::WatEdit(file, _, _) => {
                file.strip_suffix(".wat").expect("a .wat fixture")
            }
            Module::Canned(_) => "canned_output",
            Module::TestPlugin(file) => file.strip_suffix(".wasm").expect("a .wasm plugin"),
            Module::Bytes(name, _) => name,
        }
    }

    fn bytes(self) -> Vec<u8> {
        match self {
            Module::Wat(file) => wat_file(file),
            Module::WatEdit(file, from, to) => wat_str(&replace_once(&wat_text(file), from, to)),
            Module::Canned(answer) => canned(&answer()),
            Module::TestPlugin(file) => test_plugin(file).0,
            Module::Bytes(_, make) => make(),
        }
    }

    /// How a failure report names the module.
    fn describe(self) -> String {
        match self {
            Module::Wat(file) => file.to_string(),
            Module::WatEdit(file, from, to) => format!("{file} with `{from}` → `{to}`"),
            Module::Canned(answer) => format!("canned_output.wat answering {:02x?}", answer()),
            Module::TestPlugin(file) => format!("tests/plugins: {file}"),
            Module::Bytes(name, _) => format!("generated: {name}"),
        }
    }
}

/// Where a corpus module fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Compile or instantiate (start function, arena, info, init).
    Load,
    /// The memory-pressure check at the start of a run.
    Pressure,
    /// One `m3u_execute_stage` call at this stage.
    Call(Stage),
}

/// One row of the corpus.
struct Case {
    /// What the module does wrong.
    what: &'static str,
    module: Module,
    /// `Error::label()` of the error it must fail with.
    label: &'static str,
    phase: Phase,
}

const fn case(what: &'static str, module: Module, label: &'static str, phase: Phase) -> Case {
    Case {
        what,
        module,
        label,
        phase,
    }
}

use Module::{Bytes, Canned, TestPlugin, Wat, WatEdit};
use Phase::{Call, Load, Pressure};
use Stage::{ChannelNumbering, DataMapping, Filtering, M3uGeneration, SourceLoading};

const ABI_SECTION: &str = r#"(@custom "m3u_abi_version" "\02\00\00\00")"#;

/// The corpus. Keep docs/SECURITY.md's table in step with it.
#[rustfmt::skip]
const CORPUS: &[Case] = &[
    // --- refused while loading: nothing of it ever runs a stage ---------------------------------
    case("loop in the start function", Wat("start_loop.wat"), "out_of_fuel", Load),
    case("loop in m3u_init", Wat("init_loop.wat"), "out_of_fuel", Load),
    case("m3u_init returns CONFIG_ERROR", Wat("init_fails.wat"), "plugin_status", Load),
    case("host function called from the start function", Wat("start_host_call.wat"), "arena_overflow", Load),
    case("arena reaching past the end of memory", Wat("arena_past_memory.wat"), "malformed_output", Load),
    case("zero-sized arena",
         WatEdit("arena_past_memory.wat", "(result i32) (i32.const 65536))", "(result i32) (i32.const 0))"),
         "malformed_output", Load),
    case("plugin info length past the arena", Wat("info_past_arena.wat"), "arena_overflow", Load),
    case("plugin info that does not decode (non-UTF-8 name)", Wat("info_garbage.wat"), "malformed_output", Load),
    case("plugin info with an empty name",
         WatEdit("info_garbage.wat", r#""\02" "\ff\fe""#, r#""\00" "\00\00""#),
         "malformed_output", Load),
    case("m3u_plugin_info returns an error status",
         WatEdit("info_past_arena.wat", "(i32.const 32769))", "(i32.const -1))"),
         "plugin_status", Load),
    case("initial memory above max_memory_per_plugin (8 MiB)",
         WatEdit("memory_bomb.wat", r#"(memory (export "memory") 1)"#, r#"(memory (export "memory") 128)"#),
         "memory_limit", Load),
    case("initial table above 100 000 elements",
         WatEdit("table_bomb.wat", "(table $slots 1 funcref)", "(table $slots 100001 funcref)"),
         "memory_limit", Load),
    case("ABI version 3 (and a start function that traps)", Wat("abi_v3_start_traps.wat"), "abi_version", Load),
    case("no ABI version section", WatEdit("arena_misuse.wat", ABI_SECTION, ""), "abi_version", Load),
    case("WASI import (wasi_snapshot_preview1.fd_write)", Wat("imports_wasi_fd_write.wat"), "disallowed_import", Load),
    case("env.memcpy import", Wat("imports_env_memcpy.wat"), "disallowed_import", Load),
    case("imported memory (env.memory)", Wat("imports_memory.wat"), "disallowed_import", Load),
    case("allowed host function with the wrong signature", Wat("wrong_import_signature.wat"), "disallowed_import", Load),
    case("host function the host does not have (host.spawn)",
         WatEdit("wrong_import_signature.wat", r#""host" "write_channels""#, r#""host" "spawn""#),
         "disallowed_import", Load),
    case("missing export (m3u_cleanup)",
         WatEdit("arena_misuse.wat", r#"(func (export "m3u_cleanup")"#, "(func $cleanup"),
         "missing_export", Load),
    case("export with the wrong signature (m3u_execute_stage)", Wat("wrong_export_signature.wat"), "missing_export", Load),
    case("m3u_execute_stage re-exporting the read_channels import (arena at 0)", Wat("reexported_import.wat"), "missing_export", Load),
    case("m3u_execute_stage re-exporting the write_channels import",
         WatEdit("reexported_import.wat", "(func $read_channels))", "(func $write_channels))"), "missing_export", Load),
    case("arena of 83 bytes (below the 4 KiB minimum)",
         WatEdit("arena_past_memory.wat", "(result i32) (i32.const 65536))", "(result i32) (i32.const 83))"),
         "malformed_output", Load),
    case("module file larger than max_module_bytes", Bytes("oversized", oversized_module), "invalid_module", Load),
    case("element segments costing more than max_memory_per_plugin to instantiate",
         Bytes("element_bomb", element_bomb), "invalid_module", Load),
    case("data segments larger than max_memory_per_plugin", Bytes("data_bomb", data_bomb), "invalid_module", Load),
    case("a plugin name of 65 bytes", Bytes("long_name", long_name), "malformed_output", Load),
    case("a function with 1025 locals", Bytes("wide_frame", wide_frame), "invalid_module", Load),
    case("a plugin name with a newline", Bytes("newline_name", newline_name), "malformed_output", Load),
    case("WAT text instead of a binary module", Bytes("wat_text", wat_source_as_module), "invalid_module", Load),
    case("truncated module (first half)", Bytes("truncated", truncated_module), "invalid_module", Load),
    case("empty file", Bytes("empty", Vec::new), "invalid_module", Load),
    // --- fails the pressure check at the start of a run -----------------------------------------
    case("m3u_check_memory_pressure traps", Wat("pressure_check_traps.wat"), "trap", Pressure),
    // --- fails a stage call: resource limits ----------------------------------------------------
    case("infinite loop", Wat("infinite_loop.wat"), "out_of_fuel", Call(Filtering)),
    case("deep recursion", Wat("deep_recursion.wat"), "trap", Call(Filtering)),
    case("memory.grow bomb", Wat("memory_bomb.wat"), "memory_limit", Call(Filtering)),
    case("table.grow bomb", Wat("table_bomb.wat"), "memory_limit", Call(Filtering)),
    case("allocation bomb through the guest allocator", TestPlugin("alloc_bomb.wasm"), "memory_limit", Call(Filtering)),
    // --- fails a stage call: host functions misused ---------------------------------------------
    case("write_channels one byte past the arena", Wat("arena_misuse.wat"), "arena_overflow", Call(SourceLoading)),
    case("read_channels outside the arena", Wat("arena_misuse.wat"), "arena_overflow", Call(DataMapping)),
    case("read_channels with length 0xffff_fff0", Wat("huge_lengths.wat"), "arena_overflow", Call(SourceLoading)),
    case("write_channels with length 0xffff_fff0", Wat("huge_lengths.wat"), "arena_overflow", Call(DataMapping)),
    case("log with length 0xffff_fff0", Wat("huge_lengths.wat"), "arena_overflow", Call(Filtering)),
    case("write_channels past the end of memory", Wat("huge_lengths.wat"), "arena_overflow", Call(ChannelNumbering)),
    case("write_channels at pointer 0xffff_fff0", Wat("huge_lengths.wat"), "arena_overflow", Call(M3uGeneration)),
    case("get_config with the key outside the arena", Wat("get_config_abuse.wat"), "arena_overflow", Call(Filtering)),
    case("get_config with the out buffer outside the arena", Wat("get_config_abuse.wat"), "arena_overflow", Call(ChannelNumbering)),
    case("error status -1", Wat("arena_misuse.wat"), "plugin_status", Call(M3uGeneration)),
    // --- fails a stage call: answers the host cannot accept -------------------------------------
    case("garbage: 8 bytes of 0xff", Wat("arena_misuse.wat"), "malformed_output", Call(ChannelNumbering)),
    case("its own input echoed back (a StageInput, not a StageOutput)", Wat("arena_misuse.wat"), "malformed_output", Call(Filtering)),
    case("garbage: a StageOutput variant that does not exist", Canned(|| vec![0x09, 0x00]), "malformed_output", Call(Filtering)),
    case("truncated postcard: Keep claims 2 bytes, has 1", Canned(|| vec![0x01, 0x02, 0xff]), "malformed_output", Call(Filtering)),
    case("nothing written", Canned(Vec::new), "malformed_output", Call(Filtering)),
    case("a keep mask claiming 4 GiB", Canned(|| vec![0x01, 0xff, 0xff, 0xff, 0xff, 0x0f]), "malformed_output", Call(Filtering)),
    case("a patch list claiming 4 billion patches", Canned(|| vec![0x02, 0xff, 0xff, 0xff, 0xff, 0x0f]), "malformed_output", Call(DataMapping)),
    case("valid postcard of the wrong type: PluginInfo", Canned(plugin_info_bytes), "malformed_output", Call(Filtering)),
    case("a valid answer followed by one more byte", Canned(|| vec![0x01, 0x02, 0xff, 0xff, 0x00]), "malformed_output", Call(Filtering)),
    case("keep mask longer than ⌈n/8⌉ (3 bytes for 16)", Canned(|| vec![0x01, 0x03, 0xff, 0xff, 0xff]), "malformed_output", Call(Filtering)),
    case("keep mask shorter than ⌈n/8⌉ (1 byte for 16)", Canned(|| vec![0x01, 0x01, 0xff]), "malformed_output", Call(Filtering)),
    case("keep mask answering data_mapping", Canned(|| vec![0x01, 0x02, 0xff, 0xff]), "malformed_output", Call(DataMapping)),
    case("patches answering filtering (even none)", Canned(|| vec![0x02, 0x00]), "malformed_output", Call(Filtering)),
    case("patch for channel index 16 of 16", Canned(patch_past_the_batch), "malformed_output", Call(DataMapping)),
    case("SetField on a field that is not text (attributes)", Canned(set_attributes_as_text), "malformed_output", Call(DataMapping)),
    case("65 attribute changes to one channel (applying them would be quadratic)",
         Canned(|| many_changes_to_one_channel(65)), "malformed_output", Call(DataMapping)),
    case("non-UTF-8 string in a SetField patch",
         Canned(|| vec![0x02, 0x01, 0x00, 0x00, 0x05, 0x02, 0xc3, 0x28]),
         "malformed_output", Call(DataMapping)),
    case("more channels than the filter was given (17 for 16)", Canned(|| channels(&(1..=17).collect::<Vec<_>>())),
         "malformed_output", Call(Filtering)),
    case("a filter repeating a channel id", Canned(|| channels(&[1, 1])), "malformed_output", Call(Filtering)),
    case("an invented channel id", Canned(|| channels(&[999_999])), "malformed_output", Call(Filtering)),
    case("data_mapping dropping a channel", Canned(|| channels(&(1..=15).collect::<Vec<_>>())), "malformed_output", Call(DataMapping)),
    case("m3u_generation repeating a channel id", Canned(|| channels(&[1, 1])), "malformed_output", Call(M3uGeneration)),
];

/// `canned_output.wat` with `answer` as its canned answer.
fn canned(answer: &[u8]) -> Vec<u8> {
    let escape = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("\\{b:02x}")).collect() };
    let line = format!(
        r#"(data (i32.const 40000) "{}" "{}")"#,
        escape(&(answer.len() as u32).to_le_bytes()),
        escape(answer)
    );
    let text = replace_once(
        &wat_text("canned_output.wat"),
        r#"(data (i32.const 40000) "\02\00\00\00" "\09\00")"#,
        &line,
    );
    wat_str(&text)
}

fn encode(output: &StageOutput<'_>) -> Vec<u8> {
    postcard::to_allocvec(output).expect("encodable")
}

/// `StageOutput::Channels` with bare channels of these ids.
fn channels(ids: &[u64]) -> Vec<u8> {
    let list = ids
        .iter()
        .map(|&id| Channel {
            id,
            ..Channel::default()
        })
        .collect();
    encode(&StageOutput::Channels(list))
}

/// A valid postcard `PluginInfo` (canned_output's own), which is not a
/// `StageOutput`.
fn plugin_info_bytes() -> Vec<u8> {
    let info = PluginInfo {
        name: "canned_output".into(),
        version: "1".into(),
        stages: 0x1f,
        reads: FieldSet::ALL,
        ..PluginInfo::default()
    };
    postcard::to_allocvec(&info).expect("encodable")
}

fn patch_past_the_batch() -> Vec<u8> {
    encode(&StageOutput::Patches(vec![Patch {
        index: BATCH as u32,
        op: PatchOp::SetField(Field::GroupTitle, "G".into()),
    }]))
}

fn set_attributes_as_text() -> Vec<u8> {
    encode(&StageOutput::Patches(vec![Patch {
        index: 0,
        op: PatchOp::SetField(Field::Attributes, "G".into()),
    }]))
}

/// `n` patches setting distinct attributes of channel 0.
fn many_changes_to_one_channel(n: usize) -> Vec<u8> {
    let patches = (0..n)
        .map(|k| Patch {
            index: 0,
            op: PatchOp::SetAttribute(format!("x-{k}").into(), "v".into()),
        })
        .collect();
    encode(&StageOutput::Patches(patches))
}

/// `canned_output.wat` with its canned answer replaced by `extra`.
fn module_with(extra: &str) -> Vec<u8> {
    let text = replace_once(
        &wat_text("canned_output.wat"),
        r#"(data (i32.const 40000) "\02\00\00\00" "\09\00")"#,
        extra,
    );
    wat_str(&text)
}

/// A passive element segment of 131 073 items: 4 MiB + 32 bytes at 32
/// bytes per item, one item more than the corpus's 4 MiB memory limit.
fn element_bomb() -> Vec<u8> {
    let items = (MEMORY_LIMIT / 32 + 1) as usize;
    module_with(&format!(
        "(func $nothing) (elem func{})",
        " $nothing".repeat(items)
    ))
}

/// A function declaring one local more than a function may have.
fn wide_frame() -> Vec<u8> {
    module_with(&format!("(func $wide (local{}))", " i64".repeat(1025)))
}

/// A passive data segment one byte larger than the 4 MiB memory limit.
fn data_bomb() -> Vec<u8> {
    module_with(&format!(
        r#"(data "{}")"#,
        "z".repeat(MEMORY_LIMIT as usize + 1)
    ))
}

/// `canned_output.wat` naming itself `name` (printable ASCII or `\xx`
/// escapes, `len` bytes).
fn named(name: &str, len: usize) -> Vec<u8> {
    let text = replace_once(
        &wat_text("canned_output.wat"),
        r#""\0d" "canned_output""#,
        &format!(r#""\{len:02x}" "{name}""#),
    );
    let info_len = 26 - 13 + len;
    let text = replace_once(
        &text,
        "(i32.const 16) (i32.const 26))\n    (i32.const 26))",
        &format!("(i32.const 16) (i32.const {info_len}))\n    (i32.const {info_len}))"),
    );
    wat_str(&text)
}

/// A plugin name of 65 bytes (the limit is 64).
fn long_name() -> Vec<u8> {
    named(&"n".repeat(65), 65)
}

/// A plugin name with a line break in it (forged log lines).
fn newline_name() -> Vec<u8> {
    named(r"evil\0a[host] fake", 16)
}

/// A valid module padded with a custom section to one byte more than the
/// default `max_module_bytes` (16 MiB).
fn oversized_module() -> Vec<u8> {
    let mut wasm = wat_file("infinite_loop.wat");
    let limit = RuntimeLimits::default().max_module_bytes;
    let name = b"\x07padding";
    // section id 0, size as a 5-byte LEB128, then name and payload.
    let payload_len = limit + 1 - wasm.len() - 1 - 5 - name.len();
    let size = (name.len() + payload_len) as u32;
    wasm.push(0);
    for shift in [0, 7, 14, 21] {
        wasm.push(((size >> shift) & 0x7f) as u8 | 0x80);
    }
    wasm.push((size >> 28) as u8);
    wasm.extend_from_slice(name);
    wasm.resize(limit + 1, 0);
    wasm
}

fn wat_source_as_module() -> Vec<u8> {
    wat_text("infinite_loop.wat").into_bytes()
}

fn truncated_module() -> Vec<u8> {
    let wasm = wat_file("arena_misuse.wat");
    wasm[..wasm.len() / 2].to_vec()
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

/// The first [`ENTRIES`] entries of the real playlist.
fn playlist() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = String::new();
        let mut urls = 0;
        for line in PLAYLIST.lines() {
            text.push_str(line);
            text.push('\n');
            urls += usize::from(!line.starts_with('#'));
            if urls == ENTRIES {
                break;
            }
        }
        let (_, channels, malformed) = m3u_plugin_host::m3u::read_all(&text, 0);
        assert_eq!((channels.len(), malformed), (ENTRIES, 0));
        text
    })
}

fn source() -> Source {
    Source::from_reader(
        "hostile",
        std::io::Cursor::new(playlist().as_bytes().to_vec()),
    )
}

/// The config of every run: small limits, native rules that change the
/// playlist (so a fallback is visible), `strategies` as given.
fn config(plugin_dir: &Path, strategies: &str) -> Config {
    let text = format!(
        r#"[pipeline]
batch_size = {BATCH}
[mapping]
rules = ['group_title == "" SET group_title = "Undefined"']
[[filtering.filters]]
action = "exclude"
expression = 'channel_name contains "[Geo-blocked]"'
[proxy_generation.wasm_plugins]
plugin_directory = {dir:?}
max_memory_per_plugin = {MEMORY_LIMIT}
fuel_per_call = {FUEL}
timeout_seconds = 10
[proxy_generation.wasm_plugins.security]
allowed_host_functions = {ALLOWED}
[proxy_generation.wasm_plugins.strategies]
{strategies}
[proxy_generation.wasm_plugins.fallbacks]
max_plugin_failures = 1000
"#,
        dir = plugin_dir.display().to_string()
    );
    Config::from_toml(&text).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

fn run(config: Config) -> (Vec<OwnedChannel>, RunStats) {
    let mut pipeline = Pipeline::new(config).expect("pipeline");
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    pipeline.run_collect(vec![source()]).expect("run")
}

/// The native-only run: no plugin listed, none in the directory.
fn native_run() -> &'static (Vec<OwnedChannel>, RunStats) {
    static NATIVE: OnceLock<(Vec<OwnedChannel>, RunStats)> = OnceLock::new();
    NATIVE.get_or_init(|| {
        let (out, stats) = run(config(&scratch_dir("hostile-native"), ""));
        // The native rules really do something, so a batch that skipped its
        // fallback would show.
        assert!(out.len() < ENTRIES, "the filter drops geo-blocked channels");
        assert!(out.iter().any(|c| c.group_title == "Undefined"));
        assert_eq!(stats.batches, (ENTRIES / BATCH) as u64);
        (out, stats)
    })
}

/// The runtime a pipeline built from [`config`] uses.
fn runtime() -> PluginRuntime {
    let config = config(Path::new("unused"), "");
    let plugins = &config.proxy_generation.wasm_plugins;
    runtime_with(
        plugins.runtime_limits(),
        &plugins.security.allowed_host_functions,
    )
}

/// The first batch, as the pipeline numbers it.
fn first_batch() -> Vec<OwnedChannel> {
    let (_, mut channels, _) = m3u_plugin_host::m3u::read_all(playlist(), 0);
    channels.truncate(BATCH);
    for (index, channel) in channels.iter_mut().enumerate() {
        channel.id = index as u64 + 1;
    }
    channels
}

/// The native strategy every stage ends with.
fn native_for(stage: Stage) -> &'static str {
    match stage {
        SourceLoading => "streaming_source",
        DataMapping => "native_mapping",
        Filtering => "native_filter",
        ChannelNumbering => "streaming_numbering",
        M3uGeneration => "streaming_writer",
    }
}

fn expect_label(result: Result<(), Error>, label: &str) -> Result<Error, String> {
    match result {
        Ok(()) => Err(format!("succeeded, expected `{label}`")),
        Err(error) if error.label() == label => Ok(error),
        Err(error) => Err(format!(
            "failed with `{}` ({error}), expected `{label}`",
            error.label()
        )),
    }
}

/// Checks one row directly: the right error, and the batch left untouched.
/// Returns the error (for a load failure, the pipeline must report the same).
fn check_directly(case: &Case, wasm: &[u8]) -> Result<Error, String> {
    let runtime = runtime();
    let stem = case.module.stem();
    let settings = PluginSettings::new();
    if case.phase == Load {
        return expect_label(runtime.load(wasm, stem, &settings).map(drop), case.label);
    }
    let instance = runtime
        .load(wasm, stem, &settings)
        .map_err(|error| format!("does not load: {error}"))?;
    if instance.info().name != stem {
        return Err(format!("is named `{}`, not `{stem}`", instance.info().name));
    }
    match case.phase {
        Pressure => {
            let mut instance = instance;
            let result = instance.accepts_pressure(
                MemoryPressureLevel::Optimal,
                &m3u_plugin_host::abi::RunContext::default(),
            );
            expect_label(result.map(drop), case.label)
        }
        Call(stage) => {
            let mut slot = PluginSlot::new(instance, PathBuf::from(stem));
            let original = first_batch();
            let mut batch = original.clone();
            let context = StageContext {
                stage,
                ..StageContext::default()
            };
            let error = expect_label(slot.run(stage, &context, &mut batch), case.label)?;
            if batch != original {
                return Err("the failed call changed the batch".into());
            }
            Ok(error)
        }
        Load => unreachable!(),
    }
}

/// Checks one row in a pipeline: the plugin is the first strategy of its
/// stage; the run succeeds, equals the native-only run and counts the
/// failures under the row's label.
fn check_in_pipeline(case: &Case, wasm: &[u8], direct: &Error) -> Result<(), String> {
    let dir = scratch_dir("hostile");
    let result = run_in_pipeline(case, wasm, direct, &dir);
    // Some modules are large (16 MiB); leave nothing behind.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in_pipeline(case: &Case, wasm: &[u8], direct: &Error, dir: &Path) -> Result<(), String> {
    let stem = case.module.stem();
    let file = dir.join(format!("{stem}.wasm"));
    std::fs::write(&file, wasm).map_err(|error| error.to_string())?;
    let stage = match case.phase {
        Call(stage) => stage,
        Load | Pressure => Filtering,
    };
    let strategies = format!("{} = [\"{stem}\", \"{}\"]", stage.name(), native_for(stage));
    let mut pipeline =
        Pipeline::new(config(dir, &strategies)).map_err(|error| format!("pipeline: {error}"))?;
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let (out, stats) = pipeline
        .run_collect(vec![source()])
        .map_err(|error| format!("the run failed: {error}"))?;
    let (expected, native) = native_run();
    if out != *expected {
        let first = out.iter().zip(expected).position(|(a, b)| a != b);
        return Err(format!(
            "output differs from the native-only run ({} vs {} channels, first difference at \
             {first:?})",
            out.len(),
            expected.len()
        ));
    }
    if stats.stages[2].channels_out != native.stages[2].channels_out {
        return Err("filtering counts differ from the native-only run".into());
    }
    let batches = stats.batches;
    match case.phase {
        Load => {
            let wanted = vec![format!("{}: {direct}", file.display())];
            if stats.plugin_load_errors != wanted {
                return Err(format!(
                    "load errors {:?}, expected {wanted:?}",
                    stats.plugin_load_errors
                ));
            }
            if !stats.plugins.is_empty() || stats.plugin_calls != 0 {
                return Err("a plugin that failed to load was called".into());
            }
        }
        Pressure | Call(_) => {
            let plugin = stats.plugins.first().ok_or("the plugin is not loaded")?;
            let counted = plugin.failures_by_kind.get(case.label).copied();
            let (wanted_failures, wanted_calls) = match case.phase {
                Pressure => (1, 0),
                _ => (batches, batches),
            };
            if counted != Some(wanted_failures) || plugin.failures_by_kind.len() != 1 {
                return Err(format!(
                    "failures by kind {:?}, expected {{\"{}\": {wanted_failures}}}",
                    plugin.failures_by_kind, case.label
                ));
            }
            if stats.plugin_calls != wanted_calls
                || stats.plugin_failures != wanted_calls
                || stats.fallbacks != wanted_calls
            {
                return Err(format!(
                    "{} calls, {} failures, {} fallbacks; expected {wanted_calls} each",
                    stats.plugin_calls, stats.plugin_failures, stats.fallbacks
                ));
            }
            let by_strategy = &stats.stages[stage.as_u32() as usize].batches_by_strategy;
            if *by_strategy != [(native_for(stage).to_string(), batches)] {
                return Err(format!("batches by strategy {by_strategy:?}"));
            }
        }
    }
    Ok(())
}

fn check_case(case: &Case) -> Result<(), String> {
    let wasm = case.module.bytes();
    let direct = check_directly(case, &wasm)?;
    check_in_pipeline(case, &wasm, &direct)
}

#[test]
fn every_corpus_case_fails_as_listed_and_the_pipeline_falls_back() {
    native_run();
    // Every row in its own thread: a panic is reported as that row's failure
    // (and would be a host bug: no hostile module may make the host panic).
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = CORPUS
            .iter()
            .map(|case| (case, scope.spawn(move || check_case(case))))
            .collect();
        handles
            .into_iter()
            .filter_map(|(case, handle)| {
                let outcome = handle
                    .join()
                    .unwrap_or_else(|_| Err("the host panicked".to_string()));
                outcome.err().map(|why| {
                    format!(
                        "{} [{}, {:?}]: {why}",
                        case.what,
                        case.module.describe(),
                        case.phase
                    )
                })
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_is_large_and_uses_every_fixture() {
    assert!(CORPUS.len() >= 25, "only {} cases", CORPUS.len());
    // Fixtures checked by the other tests of this file and of runtime.rs.
    let elsewhere = [
        "get_config_abuse.wat",
        "log_spam.wat",
        "log_loop.wat",
        "cleanup_traps.wat",
        "ignores_input.wat",
        "output_flood.wat",
        "imports_get_config.wat",
        "channels_flood.wat",
    ];
    let dir = repo_path("tests/fixtures/wat");
    let mut unused = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let used = CORPUS.iter().any(|case| match case.module {
            Wat(file) | WatEdit(file, _, _) => file == name,
            Canned(_) => name == "canned_output.wat",
            _ => false,
        });
        if !used && !elsewhere.contains(&name.as_str()) {
            unused.push(name);
        }
    }
    assert!(
        unused.is_empty(),
        "fixtures no test uses: {unused:?}; add them to CORPUS"
    );
    // Every row is distinct.
    for (index, case) in CORPUS.iter().enumerate() {
        assert!(
            CORPUS[..index].iter().all(|other| other.what != case.what),
            "`{}` is listed twice",
            case.what
        );
    }
}

// ---------------------------------------------------------------------------
// Cases that are not a plain failure
// ---------------------------------------------------------------------------

fn load(runtime: &PluginRuntime, fixture: &str, settings: &PluginSettings) -> PluginInstance {
    let name = fixture.strip_suffix(".wat").unwrap();
    runtime
        .load(&wat_file(fixture), name, settings)
        .unwrap_or_else(|error| panic!("{fixture}: {error}"))
}

fn status_of(output: &[u8]) -> i32 {
    i32::from_le_bytes(output.try_into().expect("a 4-byte status"))
}

#[test]
fn get_config_refuses_long_keys_with_a_status_not_a_trap() {
    let runtime = runtime();
    let settings: PluginSettings =
        toml::from_str("[get_config_abuse]\nk = \"value\"\n").expect("settings");
    let mut instance = load(&runtime, "get_config_abuse.wat", &settings);
    // key_len 257 and 0xffff_fff0 (read as unsigned): KEY_TOO_LONG, and the
    // call goes on (it sends the status back).
    for stage in [SourceLoading, DataMapping] {
        let output = instance.execute_stage(stage, b"in").expect("no trap");
        assert_eq!(status_of(output), -11, "{stage:?}: KEY_TOO_LONG");
        // Only the base fee: the key was never read.
        assert!(instance.stats().last_call_fuel < 200, "{stage:?}");
    }
    // A correct look-up, for contrast: the value's length, then NOT_FOUND
    // for a plugin without settings.
    let output = instance.execute_stage(M3uGeneration, b"in").unwrap();
    assert_eq!(status_of(output), "value".len() as i32);
    let mut bare = load(&runtime, "get_config_abuse.wat", &PluginSettings::new());
    let output = bare.execute_stage(M3uGeneration, b"in").unwrap();
    assert_eq!(status_of(output), -10, "NOT_FOUND");
    // Pointers outside the arena trap, whether or not the key exists.
    let arena_overflow = |error: Error| match error.kind() {
        ErrorKind::ArenaOverflow {
            ptr,
            len,
            arena_start,
            arena_len,
        } => (*ptr, *len, *arena_start, *arena_len),
        _ => panic!("expected ArenaOverflow, got {error:?}"),
    };
    let key_outside = instance.execute_stage(Filtering, b"in").unwrap_err();
    assert_eq!(arena_overflow(key_outside), (0, 8, 1024, 32768));
    for instance in [&mut instance, &mut bare] {
        let out_outside = instance.execute_stage(ChannelNumbering, b"in").unwrap_err();
        assert_eq!(arena_overflow(out_outside), (40000, 64, 1024, 32768));
    }
}

#[test]
fn lengths_near_u32_max_are_checked_without_wrapping() {
    let runtime = runtime();
    let mut instance = load(&runtime, "huge_lengths.wat", &PluginSettings::new());
    let cases = [
        (SourceLoading, 1024, 0xffff_fff0),
        (DataMapping, 1024, 0xffff_fff0),
        (Filtering, 1024, 0xffff_fff0),
        (ChannelNumbering, 1024, 65536),
        (M3uGeneration, 0xffff_fff0, 32),
    ];
    for (stage, want_ptr, want_len) in cases {
        let error = instance.execute_stage(stage, b"in").unwrap_err();
        match error.kind() {
            ErrorKind::ArenaOverflow { ptr, len, .. } => {
                assert_eq!((*ptr, *len), (want_ptr, want_len), "{stage:?}")
            }
            _ => panic!("{stage:?}: expected ArenaOverflow, got {error:?}"),
        }
        // The message does the arithmetic in 64 bits too.
        assert!(
            error
                .to_string()
                .contains(&format!("{}", want_ptr + want_len)),
            "{error}"
        );
    }
}

/// Captures the plugins' log lines (target `plugin`); installed once for the
/// test binary, passes every other record by. Each test reads the lines of
/// its own plugin name ([`lines_of`]).
struct PluginLog {
    lines: Mutex<Vec<(log::Level, String)>>,
}

impl log::Log for PluginLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == "plugin"
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target() != "plugin" {
            return;
        }
        self.lines
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

fn plugin_log() -> &'static PluginLog {
    static LOGGER: OnceLock<&'static PluginLog> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static PluginLog = Box::leak(Box::new(PluginLog {
            lines: Mutex::new(Vec::new()),
        }));
        log::set_logger(logger).expect(
            "hostile.rs needs to install the test binary's logger to see plugin log lines; \
             another test installed one first",
        );
        log::set_max_level(log::LevelFilter::Info);
        logger
    })
}

/// The captured lines of plugin `name`.
fn lines_of(logger: &PluginLog, name: &str) -> Vec<(log::Level, String)> {
    let prefix = format!("[{name}] ");
    let lines = logger.lines.lock().unwrap();
    lines
        .iter()
        .filter(|(_, text)| text.starts_with(&prefix))
        .cloned()
        .collect()
}

#[test]
fn log_spam_is_capped_per_call_cut_per_line_and_still_charged() {
    let logger = plugin_log();
    let runtime = runtime();
    let mut instance = load(&runtime, "log_spam.wat", &PluginSettings::new());
    let (lines_per_call, line_bytes) = (100u64, 2000u64);
    let cap = u64::from(MAX_LOG_LINES_PER_CALL);
    for call in 1..=2u64 {
        let output = instance.execute_stage(DataMapping, b"in").unwrap();
        assert_eq!(output, [0x02, 0x00], "the answer still arrives");
        // Lines past the cap are dropped and counted, per call.
        assert_eq!(
            instance.stats().log_lines_dropped,
            call * (lines_per_call - cap)
        );
        // Every line is charged, shown or not: 100 × (20 + 2000 / 8).
        let charged = lines_per_call * (HOST_CALL_BASE_FUEL + line_bytes / HOST_BYTES_PER_FUEL);
        let fuel = instance.stats().last_call_fuel;
        assert!(fuel >= charged, "call {call}: {fuel} fuel < {charged}");
    }
    let lines = lines_of(logger, "log_spam");
    assert_eq!(lines.len() as u64, 2 * cap, "32 lines shown per call");
    let shown = format!("[log_spam] {} [cut]", "x".repeat(1024));
    for (level, text) in lines {
        assert_eq!(level, log::Level::Info);
        assert_eq!(text, shown, "each line cut at 1024 bytes");
    }
}

#[test]
fn cleanup_that_traps_is_reported_and_the_instance_stays_usable() {
    let runtime = runtime();
    let mut instance = load(&runtime, "cleanup_traps.wat", &PluginSettings::new());
    let error = instance.cleanup().unwrap_err();
    assert_eq!(error.label(), "trap", "{error}");
    assert_eq!(
        error.as_trap_code(),
        Some(wasmi::TrapCode::UnreachableCodeReached)
    );
    // Nothing is poisoned: the next call works, and cleanup fails the same way.
    assert_eq!(
        instance.execute_stage(DataMapping, b"in").unwrap(),
        [0x02, 0x00]
    );
    assert_eq!(instance.cleanup().unwrap_err().label(), "trap");

    // The pipeline never calls cleanup: the plugin serves every batch.
    let dir = scratch_dir("hostile-cleanup");
    std::fs::write(
        dir.join("cleanup_traps.wasm"),
        wat_file("cleanup_traps.wat"),
    )
    .unwrap();
    let (out, stats) = run(config(
        &dir,
        "data_mapping = [\"cleanup_traps\", \"native_mapping\"]",
    ));
    assert_eq!(stats.plugin_failures, 0);
    assert_eq!(
        stats.stages[1].batches_by_strategy,
        [("cleanup_traps".to_string(), stats.batches)]
    );
    // "change nothing": the native mapping rule did not run.
    assert_eq!(out.len(), native_run().0.len());
    assert!(out.iter().all(|c| c.group_title != "Undefined"));
}

#[test]
fn a_plugin_that_never_reads_its_input_is_trusted_only_as_far_as_its_answer_fits() {
    // The host does not make a plugin read its input: an answer is judged
    // only against the batch. `ignores_input` always answers "keep all" for
    // 9..=16 channels.
    let runtime = runtime();
    let wasm = wat_file("ignores_input.wat");
    let instance = runtime
        .load(&wasm, "ignores_input", &PluginSettings::new())
        .unwrap();
    let mut slot = PluginSlot::new(instance, PathBuf::from("ignores_input"));
    let context = StageContext {
        stage: Filtering,
        ..StageContext::default()
    };
    let all = first_batch();
    // 16 channels: the mask fits, so it is applied (everything kept).
    let mut batch = all.clone();
    slot.run(Filtering, &context, &mut batch)
        .expect("a fitting answer");
    assert_eq!(batch, all);
    // 9 channels: 2 mask bytes still fit; bits past the batch are ignored.
    let mut batch = all[..9].to_vec();
    slot.run(Filtering, &context, &mut batch)
        .expect("a fitting answer");
    assert_eq!(batch, all[..9]);
    // 8 channels need 1 byte: the same answer is malformed, the batch untouched.
    let mut batch = all[..8].to_vec();
    let error = slot.run(Filtering, &context, &mut batch).unwrap_err();
    assert_eq!(error.label(), "malformed_output", "{error}");
    assert_eq!(batch, all[..8]);
    // The unread input does not leak into the next call: each call starts
    // with its own input and an empty output.
    let mut batch = all.clone();
    slot.run(Filtering, &context, &mut batch).expect("again");
    assert_eq!(batch, all);

    // In a pipeline with 16-channel batches it serves every batch, so the
    // native filter never runs and nothing is dropped.
    let dir = scratch_dir("hostile-ignores-input");
    std::fs::write(dir.join("ignores_input.wasm"), &wasm).unwrap();
    let (out, stats) = run(config(
        &dir,
        "filtering = [\"ignores_input\", \"native_filter\"]",
    ));
    assert_eq!(stats.plugin_failures, 0);
    assert_eq!(out.len(), ENTRIES);
    // With batches of 10 (10, 10, 10, 10, 8) the last one does not fit the
    // answer and falls back alone.
    let mut config = config(&dir, "filtering = [\"ignores_input\", \"native_filter\"]");
    config.pipeline.batch_size = 10;
    let (out, stats) = run(config);
    assert_eq!(stats.plugin_failures, 1);
    assert_eq!(
        stats.stages[2].batches_by_strategy,
        [
            ("ignores_input".to_string(), 4),
            ("native_filter".to_string(), 1)
        ]
    );
    let ids_after_40 = |channels: &[OwnedChannel]| -> Vec<u64> {
        channels
            .iter()
            .map(|c| c.id)
            .filter(|&id| id > 40)
            .collect()
    };
    assert_eq!(
        ids_after_40(&out),
        ids_after_40(&native_run().0),
        "the last batch went through the native filter"
    );
    assert_eq!(out.iter().filter(|c| c.id <= 40).count(), 40);
}

#[test]
fn output_past_max_output_bytes_is_refused_chunk_by_chunk() {
    let limit = 100_000;
    let limits = RuntimeLimits {
        fuel_per_call: FUEL,
        max_output_bytes: limit,
        ..RuntimeLimits::default()
    };
    let runtime = runtime_with(limits, &allowlist_with(&[]));
    let mut instance = load(&runtime, "output_flood.wat", &PluginSettings::new());
    let error = instance.execute_stage(Filtering, b"in").unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::PluginStatus { status: -12, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("-12"), "{error}");
    // Three 32 KiB chunks fitted; the fourth was refused, not appended, and
    // the failed call's output was not counted.
    assert_eq!(instance.stats().bytes_out, 0);
    assert!(instance.stats().last_call_fuel < 100_000);
}

#[test]
fn plugins_no_strategy_names_are_validated_but_not_instantiated() {
    let dir = plugin_dir(&["passthrough"]);
    // Each of these misbehaves only once instantiated: a garbage info
    // answer, an init that loops until its deadline, a start function that
    // loops. None is named, so none is instantiated.
    for fixture in ["info_garbage", "init_loop", "start_loop"] {
        let wasm = wat_file(&format!("{fixture}.wat"));
        std::fs::write(dir.join(format!("{fixture}.wasm")), wasm).unwrap();
    }
    // A module that is not valid is still reported, named or not.
    std::fs::write(dir.join("wasi.wasm"), wat_file("imports_wasi_fd_write.wat")).unwrap();
    let config = config(&dir, r#"filtering = ["passthrough+native_filter"]"#);
    let started = Instant::now();
    let mut pipeline = Pipeline::new(config).expect("pipeline");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "init_loop's init was run: {:?}",
        started.elapsed()
    );
    let loaded: Vec<&str> = pipeline.plugins().iter().map(PluginSlot::name).collect();
    assert_eq!(loaded, ["passthrough"]);
    assert_eq!(
        idle_files(&pipeline),
        ["info_garbage.wasm", "init_loop.wasm", "start_loop.wasm"]
    );
    let errors = pipeline.load_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("wasi.wasm") && errors[0].contains("wasi_snapshot_preview1"));
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let (out, stats) = pipeline.run_collect(vec![source()]).expect("run");
    assert_eq!(out, native_run().0);
    assert_eq!(stats.plugins.len(), 1, "idle files have no stats");

    // A second copy of passthrough under another stem stays idle (loaded,
    // it would be refused as a duplicate name) until the named file goes
    // away: then a reload instantiates it, since `passthrough` is listed.
    let dir = plugin_dir(&["passthrough"]);
    std::fs::copy(dir.join("passthrough.wasm"), dir.join("spare.wasm")).unwrap();
    let mut pipeline = Pipeline::new(config_named(&dir)).expect("pipeline");
    assert_eq!(idle_files(&pipeline), ["spare.wasm"]);
    assert!(
        pipeline.load_errors().is_empty(),
        "{:?}",
        pipeline.load_errors()
    );
    std::fs::remove_file(dir.join("passthrough.wasm")).unwrap();
    pipeline.reload_changed_plugins();
    assert!(idle_files(&pipeline).is_empty());
    let loaded: Vec<_> = pipeline.plugins().iter().map(|slot| &slot.path).collect();
    assert_eq!(loaded, [&dir.join("spare.wasm")]);
    assert_eq!(pipeline.plugins()[0].name(), "passthrough");
}

fn config_named(dir: &Path) -> Config {
    config(dir, r#"filtering = ["passthrough+native_filter"]"#)
}

#[test]
fn huge_module_and_signature_files_are_refused_without_being_read() {
    // Sparse files: a terabyte each, no disk used. Reading either whole
    // would fail (or exhaust memory) long before the size limit applied.
    let dir = scratch_dir("hostile-huge-files");
    let sparse = |path: PathBuf| {
        std::fs::File::create(&path)
            .and_then(|file| file.set_len(1 << 40))
            .unwrap_or_else(|error| panic!("sparse file {}: {error}", path.display()));
    };
    sparse(dir.join("huge.wasm"));
    std::fs::write(dir.join("looping.wasm"), wat_file("infinite_loop.wat")).unwrap();
    sparse(dir.join("looping.wasm.sig"));
    let started = Instant::now();
    let (out, stats) = run(config(&dir, ""));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out, native_run().0);
    let errors = &stats.plugin_load_errors;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].ends_with(&format!(
            "invalid plugin module: module is {} bytes, more than the limit of {} bytes",
            1u64 << 40,
            RuntimeLimits::default().max_module_bytes
        )),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("malformed signature file")
            && errors[1].contains("it is more than 1024 bytes long"),
        "{errors:?}"
    );
    // Terabyte-sized files, even sparse ones, are not worth leaving around.
    let _ = std::fs::remove_dir_all(&dir);
}

/// Known limitation (docs/SECURITY.md): output decoding amplifies memory.
/// Not a pass/fail check; run with `--ignored --nocapture` to see the cost.
#[test]
fn an_answer_announcing_more_channels_than_the_batch_is_refused_before_decoding() {
    let runtime = runtime_with(RuntimeLimits::default(), &allowlist_with(&[]));
    let instance = load(&runtime, "channels_flood.wat", &PluginSettings::new());
    let mut slot = PluginSlot::new(instance, PathBuf::from("channels_flood"));
    let mut batch = first_batch();
    let context = StageContext {
        stage: Filtering,
        ..StageContext::default()
    };
    let error = slot.run(Filtering, &context, &mut batch).unwrap_err();
    // The 64 MiB answer no longer fits the 16 MiB a batch may push: the
    // plugin gets OUTPUT_LIMIT and returns it. Below that limit, an answer
    // announcing more channels than the batch is refused from its length
    // prefix before decoding (`answer_size_is_checked_by_the_wire_tag`).
    assert!(
        matches!(error.kind(), ErrorKind::PluginStatus { status: -12, .. }),
        "{error}"
    );
    assert_eq!(RuntimeLimits::default().max_output_bytes, 16 << 20);
}

/// `ignores_input.wat` whose `m3u_execute_stage` first calls `$big`, a
/// function of `repeats` × 4 instructions (7 bytes together): wasmi
/// translates it on its first call, in the middle of the stage call.
fn large_callee_plugin(repeats: usize) -> Vec<u8> {
    let body = "    local.get 0 i32.const 1 i32.add local.set 0\n".repeat(repeats);
    let text = replace_once(
        &wat_text("ignores_input.wat"),
        "  (func (export \"m3u_execute_stage\") (param i32 i32) (result i32)\n",
        &format!(
            "  (func $big (param i32) (result i32)\n{body}    local.get 0)\n\
             (func (export \"m3u_execute_stage\") (param i32 i32) (result i32)\n\
             (drop (call $big (i32.const 0)))\n"
        ),
    );
    wat_str(&text)
}

fn filtering_context() -> StageContext<'static> {
    StageContext {
        stage: Filtering,
        ..StageContext::default()
    }
}

#[test]
fn a_large_function_translated_during_a_call_runs_across_fuel_slices() {
    // 5,000 repeats: ~35 KB of code, which wasmi's default costs would
    // charge ~245,000 fuel to translate, mid-call, out of a 10,000 slice.
    // Charged, that ends the call with an error that cannot be resumed;
    // the host charges translation nothing, so the call goes on.
    let wasm = large_callee_plugin(5_000);
    assert!(wasm.len() > 35_000, "{}", wasm.len());
    let limits = RuntimeLimits {
        fuel_slice: m3u_plugin_host::runtime::MIN_FUEL_SLICE,
        ..RuntimeLimits::default()
    };
    let runtime = runtime_with(limits, &allowlist_with(&[]));
    let instance = runtime
        .load(&wasm, "large_callee", &PluginSettings::new())
        .unwrap();
    let mut slot = PluginSlot::new(instance, PathBuf::from("large_callee"));
    let all = first_batch();
    for call in 0..3 {
        let mut batch = all.clone();
        slot.run(Filtering, &filtering_context(), &mut batch)
            .unwrap_or_else(|error| panic!("call {call}: {error}"));
        assert_eq!(batch, all);
    }
    // ~20,000 instructions of $big: several slices per call, the same fuel
    // on the first call (which translated $big) as on the next ones.
    let fuel = slot.instance.stats().fuel_consumed;
    assert!(fuel > 60_000, "{fuel}");
    assert_eq!(fuel % 3, 0, "each call costs the same: {fuel}");
}

#[test]
fn running_out_of_fuel_in_a_lazily_translated_function_fails_cleanly() {
    let wasm = large_callee_plugin(5_000);
    let tight = RuntimeLimits {
        fuel_per_call: 12_000,
        fuel_slice: m3u_plugin_host::runtime::MIN_FUEL_SLICE,
        ..RuntimeLimits::default()
    };
    let runtime = runtime_with(tight, &allowlist_with(&[]));
    let instance = runtime
        .load(&wasm, "large_callee", &PluginSettings::new())
        .unwrap();
    let mut slot = PluginSlot::new(instance, PathBuf::from("large_callee"));
    let all = first_batch();
    let mut batch = all.clone();
    let error = slot
        .run(Filtering, &filtering_context(), &mut batch)
        .unwrap_err();
    assert_eq!(error.label(), "out_of_fuel", "{error}");
    assert_eq!(batch, all, "the batch is untouched");
    // The host stays usable: a new instance of the same compiled code fails
    // the same way, and with enough fuel the same module runs.
    let again = runtime
        .load(&wasm, "large_callee", &PluginSettings::new())
        .unwrap();
    let mut again = PluginSlot::new(again, PathBuf::from("large_callee"));
    let error = again
        .run(Filtering, &filtering_context(), &mut batch)
        .unwrap_err();
    assert_eq!(error.label(), "out_of_fuel", "{error}");
    let generous = runtime_with(RuntimeLimits::default(), &allowlist_with(&[]));
    let instance = generous
        .load(&wasm, "large_callee", &PluginSettings::new())
        .unwrap();
    let mut slot = PluginSlot::new(instance, PathBuf::from("large_callee"));
    slot.run(Filtering, &filtering_context(), &mut batch)
        .expect("enough fuel");
    assert_eq!(batch, all);
}

// ---------------------------------------------------------------------------
// Round 2: limits that hold per batch and per run, however many calls the
// plugin makes the host split the work into (docs/SECURITY.md, "Bounds").
// ---------------------------------------------------------------------------

/// `log_spam.wat` under another name of the same length, so its lines are
/// told apart from those of the per-call test running beside it.
fn log_flood(runtime: &PluginRuntime) -> PluginInstance {
    let text = replace_once(
        &wat_text("log_spam.wat"),
        r#""\08" "log_spam""#,
        r#""\08" "logflood""#,
    );
    runtime
        .load(&wat_str(&text), "logflood", &PluginSettings::new())
        .expect("loads")
}

#[test]
fn log_lines_are_capped_per_batch_and_per_run_however_the_batch_is_split() {
    let logger = plugin_log();
    let runtime = runtime();
    let mut instance = log_flood(&runtime);
    instance.begin_run();
    // 20 batches of 3 calls each (as a small arena would split them), 100
    // lines per call: 6000 lines written.
    let (batches, calls_per_batch, lines_per_call) = (20u64, 3u64, 100u64);
    for _ in 0..batches {
        instance.begin_batch(16);
        for _ in 0..calls_per_batch {
            assert_eq!(instance.execute_stage(DataMapping, b"in").unwrap(), [2, 0]);
        }
        instance.end_batch();
    }
    let lines = lines_of(logger, "logflood");
    let text_lines: Vec<_> = lines.iter().filter(|(_, t)| t.contains("xxx")).collect();
    let bytes: usize = text_lines.iter().map(|(_, t)| t.len()).sum();
    // Per batch, not per call: 32 lines of the batch's 300 at most; per run
    // at most 256 lines and 256 KiB, whichever comes first (here the bytes:
    // 1024 shown + the name prefix per line).
    assert!(text_lines.len() <= MAX_LOG_LINES_PER_RUN as usize);
    assert!(bytes <= MAX_LOG_BYTES_PER_RUN, "{bytes} bytes of log");
    let line_len = "[logflood] ".len() + 1024 + " [cut]".len();
    assert_eq!(text_lines.len(), MAX_LOG_BYTES_PER_RUN / line_len);
    let spent: Vec<_> = lines
        .iter()
        .filter(|(_, t)| t.contains("allowance spent"))
        .collect();
    assert_eq!(
        spent.len(),
        1,
        "the spent allowance is said once: {spent:?}"
    );
    let written = batches * calls_per_batch * lines_per_call;
    assert_eq!(
        instance.stats().log_lines_dropped,
        written - text_lines.len() as u64,
        "every line not shown is counted"
    );
    // A new run gets a new allowance.
    instance.begin_run();
    instance.begin_batch(16);
    instance.execute_stage(DataMapping, b"in").unwrap();
    instance.end_batch();
    let after = lines_of(logger, "logflood").len() - lines.len();
    assert_eq!(after as u32, MAX_LOG_LINES_PER_CALL);
}

#[test]
fn fuel_is_shared_by_the_calls_of_a_batch_and_bounded_per_run() {
    // Each call of log_spam costs at least 100 × 270 = 27 000 fuel.
    let limits = RuntimeLimits {
        fuel_per_call: 100_000,
        fuel_per_channel: 10_000,
        ..RuntimeLimits::default()
    };
    let runtime = runtime_with(limits, &allowlist_with(&[]));
    let mut instance = log_flood(&runtime);
    // Outside a batch every call gets the whole budget, forever.
    for _ in 0..10 {
        instance.execute_stage(DataMapping, b"in").unwrap();
    }
    // Inside one batch the calls share it: the fourth call runs out.
    instance.begin_run();
    instance.begin_batch(1);
    for _ in 0..3 {
        instance.execute_stage(DataMapping, b"in").unwrap();
    }
    let error = instance.execute_stage(DataMapping, b"in").unwrap_err();
    assert_eq!(error.label(), "out_of_fuel", "{error}");
    instance.end_batch();
    // Per run: a batch of one channel at a time, one call each, stays under
    // the per-batch budget, but the run's allowance (100 000 + 10 000 per
    // channel) is spent by the sixth batch.
    let runtime = runtime_with(
        RuntimeLimits {
            fuel_per_call: 100_000,
            fuel_per_channel: 10_000,
            ..RuntimeLimits::default()
        },
        &allowlist_with(&[]),
    );
    let mut instance = log_flood(&runtime);
    instance.begin_run();
    let mut succeeded = 0;
    let failed_at = (1..=20).find(|_| {
        instance.begin_batch(1);
        let ok = instance.execute_stage(DataMapping, b"in").is_ok();
        instance.end_batch();
        succeeded += u32::from(ok);
        !ok
    });
    assert!(succeeded >= 3, "{succeeded} batches ran");
    assert!(
        failed_at.is_some_and(|batch| batch <= 6),
        "the run's fuel allowance stops it: {failed_at:?}"
    );
    // The fuel used stays within the run's allowance.
    let used = instance.run_usage().fuel;
    let channels = instance.run_usage().channels;
    assert!(
        used <= 100_000 + 10_000 * channels,
        "{used} fuel for {channels} channels"
    );
}

#[test]
fn wall_clock_time_is_bounded_per_run_not_only_per_batch() {
    // infinite_loop spins until its batch's time is up. Each batch may take
    // 200 ms, the run 200 ms + 5 ms per channel: twenty one-channel batches
    // would take 4 s under a per-batch deadline alone, but the run stops at
    // about 0.3 s and its later batches fail at once.
    let limits = RuntimeLimits {
        fuel_per_call: u64::MAX / 2,
        fuel_per_channel: u64::MAX / 4,
        fuel_slice: 100_000,
        timeout: Duration::from_millis(200),
        time_per_channel: Duration::from_millis(5),
        ..RuntimeLimits::default()
    };
    let runtime = runtime_with(limits, &allowlist_with(&[]));
    let mut instance = runtime
        .load(
            &wat_file("infinite_loop.wat"),
            "infinite_loop",
            &PluginSettings::new(),
        )
        .expect("loads");
    instance.begin_run();
    let started = Instant::now();
    let mut labels = Vec::new();
    for _ in 0..20 {
        instance.begin_batch(1);
        let error = instance.execute_stage(Filtering, b"in").unwrap_err();
        instance.end_batch();
        labels.push(error.label());
    }
    let took = started.elapsed();
    assert!(labels.iter().all(|label| *label == "timeout"), "{labels:?}");
    let used = instance.run_usage().time;
    assert!(
        used <= Duration::from_millis(200 + 5 * 20 + 100),
        "the run's stage calls took {used:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "twenty batches took {took:?}"
    );
    // The instance that replaces a failed one goes on with the run's time.
    let usage = instance.run_usage();
    let mut fresh = runtime
        .load(
            &wat_file("infinite_loop.wat"),
            "infinite_loop",
            &PluginSettings::new(),
        )
        .expect("loads");
    fresh.continue_run(usage);
    fresh.begin_batch(1);
    let started = Instant::now();
    let error = fresh.execute_stage(Filtering, b"in").unwrap_err();
    assert_eq!(error.label(), "timeout", "{error}");
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn output_is_bounded_per_batch_not_per_call() {
    // canned_output pushes its 10 000-byte answer with write_channels and
    // returns that call's status; the limit is 15 000 bytes.
    let limits = RuntimeLimits {
        fuel_per_call: FUEL,
        max_output_bytes: 15_000,
        ..RuntimeLimits::default()
    };
    let runtime = runtime_with(limits, &allowlist_with(&[]));
    let wasm = canned(&[0x5a; 10_000]);
    let mut instance = runtime
        .load(&wasm, "canned_output", &PluginSettings::new())
        .unwrap();
    // Call by call, each answer fits.
    for _ in 0..3 {
        assert_eq!(
            instance.execute_stage(Filtering, b"in").unwrap().len(),
            10_000
        );
    }
    // In one batch the calls share the limit: the second is refused.
    instance.begin_batch(16);
    assert_eq!(
        instance.execute_stage(Filtering, b"in").unwrap().len(),
        10_000
    );
    let error = instance.execute_stage(Filtering, b"in").unwrap_err();
    instance.end_batch();
    assert!(
        matches!(error.kind(), ErrorKind::PluginStatus { status: -12, .. }),
        "{error:?}"
    );
    // The next batch starts over.
    instance.begin_batch(16);
    assert_eq!(
        instance.execute_stage(Filtering, b"in").unwrap().len(),
        10_000
    );
    instance.end_batch();
}

#[test]
fn a_fifo_in_the_plugin_directory_is_refused_without_blocking() {
    let dir = scratch_dir("hostile-fifo");
    let fifo = dir.join("x.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let (sender, receiver) = std::sync::mpsc::channel();
    let config = config(&dir, "filtering = [\"native_filter\"]");
    std::thread::spawn(move || {
        let _ = sender.send(run(config));
    });
    let (out, stats) = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the run finishes: opening the FIFO did not block");
    assert_eq!(out, native_run().0);
    assert_eq!(stats.plugin_load_errors.len(), 1);
    assert!(
        stats.plugin_load_errors[0].contains("not a regular file"),
        "{:?}",
        stats.plugin_load_errors
    );
}

#[test]
fn a_plugin_switched_off_is_not_made_again_until_its_circuit_closes() {
    // infinite_loop fails every call (out of fuel, an aborted call): with
    // max_plugin_failures = 2 it is made again after the first failure
    // only; the second opens the circuit, and no third instance is made.
    let dir = scratch_dir("hostile-circuit");
    std::fs::write(
        dir.join("infinite_loop.wasm"),
        wat_file("infinite_loop.wat"),
    )
    .unwrap();
    let text = config(&dir, "filtering = [\"infinite_loop\", \"native_filter\"]");
    let mut config = text;
    config
        .proxy_generation
        .wasm_plugins
        .fallbacks
        .max_plugin_failures = 2;
    let mut pipeline = Pipeline::new(config).expect("pipeline");
    pipeline.force_memory_pressure(Some(MemoryPressureLevel::Optimal));
    let (out, stats) = pipeline.run_collect(vec![source()]).expect("run");
    assert_eq!(out, native_run().0);
    let plugin = &stats.plugins[0];
    assert!(plugin.disabled);
    assert_eq!(plugin.failures, 2);
    let slot = &pipeline.plugins()[0];
    assert!(
        slot.needs_respawn(),
        "made again only when the circuit closes"
    );
}
