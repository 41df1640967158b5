//! Hostile call patterns (issue 12): a plugin built per input chooses its
//! arena size (so how many calls the host splits a batch into), how many log
//! lines of what length it writes per call, how much fuel it burns, how many
//! bytes it pushes with `write_channels`, and its answer: "keep all", bytes
//! from the input, or a patch list of up to 70 000 patches on one channel.
//! Three batches of up to 64 channels (long names, so small arenas split
//! them) run through `PluginSlot::run` in one run.
//!
//! Checked, whatever the plugin does: no panic; an arena below
//! `MIN_ARENA_BYTES` is refused at load; each batch finishes within a few
//! seconds (1 s deadline per batch); its fuel stays within `fuel_per_call`
//! and the run's within `fuel_per_call + fuel_per_channel × channels`; at
//! most 32 plugin log lines per batch and 256 lines / 256 KiB per run reach
//! the log; a failed batch is unchanged; an accepted answer grows the
//! batch's text by at most 4 KiB per channel (plus 64 KiB per added channel).
#![no_main]

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use m3u_plugin_host::abi::{
    Channel, Field, MemoryPressureLevel, Patch, PatchOp, PluginInfo, PluginMemoryRequirements,
    RunContext, Stage, StageContext, StageOutput,
};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{
    PluginRuntime, PluginSettings, RuntimeLimits, MAX_LOG_BYTES_PER_RUN, MAX_LOG_LINES_PER_CALL,
    MAX_LOG_LINES_PER_RUN, MIN_ARENA_BYTES,
};
use m3u_plugin_host::OwnedChannel;

const FUEL_PER_CALL: u64 = 2_000_000;
const FUEL_PER_CHANNEL: u64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(1);

/// Counts the plugin log lines and bytes that reach the log.
struct CountingLog {
    lines: AtomicUsize,
    bytes: AtomicUsize,
}

impl log::Log for CountingLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == "plugin"
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.target() == "plugin" {
            let text = record.args().to_string();
            if !text.ends_with("log allowance spent") {
                self.lines.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(text.len(), Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

fn counting_log() -> &'static CountingLog {
    static LOG: OnceLock<&'static CountingLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static CountingLog = Box::leak(Box::new(CountingLog {
            lines: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }));
        log::set_logger(log).expect("the only logger");
        log::set_max_level(log::LevelFilter::Debug);
        log
    })
}

fn counts(log: &CountingLog) -> (usize, usize) {
    (
        log.lines.load(Ordering::Relaxed),
        log.bytes.load(Ordering::Relaxed),
    )
}

/// What the plugin does on every call.
#[derive(Debug)]
struct Pattern {
    arena: u32,
    log_lines: u32,
    log_len: u32,
    burn: u32,
    pushes: u32,
    push_len: u32,
    answer: Vec<u8>,
    answer_pushed: bool,
    name_len: usize,
    channels: usize,
}

impl Pattern {
    fn arbitrary(u: &mut Unstructured<'_>) -> Result<Self> {
        let arena = match u.int_in_range(0u8..=3)? {
            0 => u.int_in_range(1u32..=MIN_ARENA_BYTES + 16)?,
            1 => u.int_in_range(MIN_ARENA_BYTES..=16 << 10)?,
            _ => u.int_in_range(MIN_ARENA_BYTES..=1 << 20)?,
        };
        let answer = match u.int_in_range(0u8..=3)? {
            0 => vec![3], // keep all
            1 => many_patches(u.int_in_range(0u32..=70_000)?, u.int_in_range(0usize..=64)?),
            2 => big_value(u.int_in_range(0usize..=80_000)?),
            _ => {
                let len = u.int_in_range(0usize..=256)?;
                u.bytes(len)?.to_vec()
            }
        };
        Ok(Pattern {
            arena,
            log_lines: u.int_in_range(0u32..=300)?,
            log_len: u.int_in_range(0u32..=3000)?.min(arena),
            burn: u.int_in_range(0u32..=400_000)?,
            pushes: u.int_in_range(0u32..=8)?,
            push_len: u.int_in_range(0u32..=1 << 20)?.min(arena),
            answer,
            answer_pushed: u.arbitrary()?,
            name_len: u.int_in_range(0usize..=3000)?,
            channels: u.int_in_range(1usize..=64)?,
        })
    }
}

/// `count` patches setting distinct attributes of channel `index`.
fn many_patches(count: u32, index: usize) -> Vec<u8> {
    let patches = (0..count)
        .map(|k| Patch {
            index: index as u32,
            op: PatchOp::SetAttribute(Cow::Owned(format!("x-{k}")), Cow::Borrowed("v")),
        })
        .collect();
    postcard::to_allocvec(&StageOutput::Patches(patches)).expect("encodes")
}

/// One patch setting channel 0's group title to `len` bytes.
fn big_value(len: usize) -> Vec<u8> {
    let patch = Patch {
        index: 0,
        op: PatchOp::SetField(Field::GroupTitle, Cow::Owned("g".repeat(len))),
    };
    postcard::to_allocvec(&StageOutput::Patches(vec![patch])).expect("encodes")
}

fn wat_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        let _ = write!(s, "\\{b:02x}");
    }
    s
}

/// The plugin: info and the canned answer in the first pages, the arena
/// after them.
fn plugin(pattern: &Pattern) -> Vec<u8> {
    let info = PluginInfo {
        name: "pattern".into(),
        version: "1".into(),
        stages: 0x1f,
        reads: m3u_plugin_host::abi::FieldSet::ALL,
        memory: PluginMemoryRequirements {
            max_pressure: MemoryPressureLevel::Emergency,
            ..PluginMemoryRequirements::default()
        },
        ..PluginInfo::default()
    };
    let info = postcard::to_allocvec(&info).expect("info encodes");
    let answer_at = 1024;
    let data_pages = (answer_at + pattern.answer.len()) / 65536 + 1;
    let arena_at = data_pages * 65536;
    let pages = (arena_at + pattern.arena as usize) / 65536 + 1;
    let answer_len = pattern.answer.len();
    let answer = if pattern.answer_pushed {
        format!(
            "(drop (call $write (i32.const {answer_at}) (i32.const {answer_len}))) (i32.const 0)"
        )
    } else {
        format!(
            "(memory.copy (i32.add (i32.const {arena_at}) (local.get 1)) (i32.const {answer_at}) \
             (i32.const {answer_len})) (i32.const {answer_len})"
        )
    };
    let wat = format!(
        r#"(module
  (@custom "m3u_abi_version" "{abi}")
  (import "host" "log" (func $log (param i32 i32 i32)))
  (import "host" "write_channels" (func $write (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 0) "{info_data}")
  (data (i32.const {answer_at}) "{answer_data}")
  (func (export "m3u_arena_ptr") (result i32) (i32.const {arena_at}))
  (func (export "m3u_arena_capacity") (result i32) (i32.const {arena}))
  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (i32.const {arena_at}) (i32.const 0) (i32.const {info_len}))
    (i32.const {info_len}))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param i32 i32) (result i32)
    (local $i i32)
    (block $logged (loop $log_more
      (br_if $logged (i32.ge_u (local.get $i) (i32.const {log_lines})))
      (call $log (i32.const 3) (i32.const {arena_at}) (i32.const {log_len}))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $log_more)))
    (local.set $i (i32.const 0))
    (block $burnt (loop $burn_more
      (br_if $burnt (i32.ge_u (local.get $i) (i32.const {burn})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $burn_more)))
    (local.set $i (i32.const 0))
    (block $pushed (loop $push_more
      (br_if $pushed (i32.ge_u (local.get $i) (i32.const {pushes})))
      (drop (call $write (i32.const {arena_at}) (i32.const {push_len})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $push_more)))
    {answer}))"#,
        abi = wat_bytes(&m3u_plugin_host::abi::ABI_VERSION.to_le_bytes()),
        info_data = wat_bytes(&info),
        answer_data = wat_bytes(&pattern.answer),
        arena = pattern.arena,
        info_len = info.len(),
        log_lines = pattern.log_lines,
        log_len = pattern.log_len,
        burn = pattern.burn,
        pushes = pattern.pushes,
        push_len = pattern.push_len,
    );
    wat::parse_str(&wat).expect("the pattern plugin assembles")
}

fn runtime() -> PluginRuntime {
    let limits = RuntimeLimits {
        fuel_per_call: FUEL_PER_CALL,
        fuel_per_channel: FUEL_PER_CHANNEL,
        fuel_slice: 10_000,
        timeout: TIMEOUT,
        max_memory_bytes: 8 << 20,
        max_output_bytes: 1 << 20,
        ..RuntimeLimits::default()
    };
    let allowed = vec!["log".to_string(), "write_channels".to_string()];
    PluginRuntime::new(limits, &allowed).expect("runtime")
}

fn batch(first_id: u64, n: usize, name_len: usize) -> Vec<OwnedChannel> {
    (0..n as u64)
        .map(|k| Channel {
            id: first_id + k,
            channel_name: Cow::Owned("n".repeat(name_len)),
            stream_url: Cow::Owned(format!("http://h/{k}")),
            ..Channel::default()
        })
        .collect()
}

fn text_bytes(channels: &[OwnedChannel]) -> usize {
    channels
        .iter()
        .map(|c| {
            Field::ALL
                .into_iter()
                .filter(|f| f.is_text())
                .map(|f| c.text(f).len())
                .sum::<usize>()
                + c.attributes
                    .iter()
                    .map(|a| a.name.len() + a.value.len())
                    .sum::<usize>()
                + c.extras.iter().map(|e| e.len()).sum::<usize>()
        })
        .sum()
}

fuzz_target!(|data: &[u8]| {
    let Ok(pattern) = Pattern::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let log = counting_log();
    let wasm = plugin(&pattern);
    let loaded = runtime().load(&wasm, "pattern", &PluginSettings::default());
    if pattern.arena < MIN_ARENA_BYTES {
        assert!(loaded.is_err(), "an arena of {} bytes loaded", pattern.arena);
        return;
    }
    let instance = loaded.expect("the pattern plugin loads");
    let mut slot = PluginSlot::new(instance, "pattern.wasm".into());
    let (run_lines, run_bytes) = counts(log);
    let started = slot.start_run(MemoryPressureLevel::Optimal, &RunContext::default());
    assert!(matches!(started, Ok(true)), "start_run: {started:?}");
    let stage = Stage::DataMapping;
    let context = StageContext {
        stage,
        ..StageContext::default()
    };
    let mut channels_sent = 0u64;
    for batch_index in 0..3u64 {
        let original = batch(1 + 100 * batch_index, pattern.channels, pattern.name_len);
        let mut channels = original.clone();
        let (lines_before, _) = counts(log);
        let fuel_before = slot.total_stats().fuel_consumed;
        let clock = Instant::now();
        let result = slot.run(stage, &context, &mut channels);
        let elapsed = clock.elapsed();
        channels_sent += original.len() as u64;
        assert!(
            elapsed < TIMEOUT * 5,
            "batch {batch_index} took {elapsed:?} ({pattern:?})"
        );
        let fuel = slot.total_stats().fuel_consumed - fuel_before;
        assert!(fuel <= FUEL_PER_CALL, "batch {batch_index}: {fuel} fuel");
        let (lines_after, _) = counts(log);
        assert!(
            lines_after - lines_before <= MAX_LOG_LINES_PER_CALL as usize,
            "batch {batch_index}: {} log lines",
            lines_after - lines_before
        );
        match result {
            Err(_) => assert_eq!(channels, original, "a failed batch changed"),
            Ok(()) => {
                let added = channels.iter().filter(|c| c.id >= 1 << 48).count();
                let most = text_bytes(&original) + original.len() * 4096 + added * 65536;
                let got = text_bytes(&channels);
                assert!(got <= most, "batch grew to {got} bytes (at most {most})");
            }
        }
    }
    let usage = slot.instance.run_usage();
    assert!(usage.channels <= channels_sent);
    assert!(
        usage.fuel <= FUEL_PER_CALL + FUEL_PER_CHANNEL * usage.channels,
        "run fuel {} for {} channels",
        usage.fuel,
        usage.channels
    );
    let (lines, bytes) = counts(log);
    assert!(lines - run_lines <= MAX_LOG_LINES_PER_RUN as usize);
    assert!(bytes - run_bytes <= MAX_LOG_BYTES_PER_RUN);
});
