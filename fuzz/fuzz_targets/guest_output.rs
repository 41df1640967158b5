//! Arbitrary bytes as a plugin's answer.
//!
//! Input layout: byte 0 picks the stage, byte 1 the fields the plugin reads
//! (`PluginInfo.reads`), byte 2 the batch size (1..=8); the rest is `out`.
//!
//! 1. The decoders alone, on `out`: `StageOutput` (what the host decodes from
//!    `write_channels`), `StageInput` (the hand-written projected
//!    deserializer, run by every guest) and `PluginInfo` (read at load time).
//!    None may panic. Whatever decodes must survive a round trip: it
//!    re-encodes to something that decodes to the same value, and that
//!    encoding is the consumed prefix of `out` byte for byte unless `out`
//!    used longer-than-needed varints (postcard accepts e.g. `80 00` for 0
//!    but always writes the shortest form), so the re-encoding is never
//!    longer than the prefix, and at equal length it is identical.
//! 2. The public path: an "echo" plugin (built here as WAT) answers every
//!    `m3u_execute_stage` with `out` through `write_channels`;
//!    `PluginSlot::run` then decodes and applies it to a small batch. `apply`
//!    itself stays private. Checked: a decode failure or trailing bytes is an
//!    error; on error the batch is untouched; on success the ids obey the
//!    stage's rules (docs/ABI.md §8) and keep masks / whole channels give
//!    exactly the expected batch.
#![no_main]

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use m3u_plugin_host::abi::{
    keep_mask_get, keep_mask_len, Attribute, Channel, Field, FieldSet, MemoryPressureLevel,
    PluginInfo, PluginMemoryRequirements, Stage, StageContext, StageInput, StageOutput,
};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;

/// Decodes a prefix of `bytes` as `$ty`; if it decodes, checks the round trip.
macro_rules! round_trip {
    ($ty:ident, $bytes:expr) => {{
        let bytes: &[u8] = $bytes;
        if let Ok((value, rest)) = postcard::take_from_bytes::<$ty>(bytes) {
            let consumed = &bytes[..bytes.len() - rest.len()];
            let encoded = postcard::to_allocvec(&value).expect("a decoded value encodes");
            let again: $ty = postcard::from_bytes(&encoded).expect("the re-encoding decodes");
            assert_eq!(again, value, "decode(encode(x)) != x");
            assert!(
                encoded.len() <= consumed.len(),
                "re-encoding is longer than the input: {} > {}",
                encoded.len(),
                consumed.len()
            );
            if encoded.len() == consumed.len() {
                assert_eq!(encoded, consumed, "same length, different bytes");
            }
        }
    }};
}

/// A fresh runtime per input: a wasmi `Engine` keeps the code of every module
/// it compiled until it is dropped, so a shared one would grow without bound.
fn runtime() -> PluginRuntime {
    let limits = RuntimeLimits {
        fuel_per_call: 1_000_000,
        fuel_slice: 10_000,
        timeout: Duration::from_secs(1),
        max_memory_bytes: 2 << 20,
        ..RuntimeLimits::default()
    };
    PluginRuntime::new(limits, &["write_channels".to_string()]).expect("runtime")
}

fn wat_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        let _ = write!(s, "\\{b:02x}");
    }
    s
}

/// A plugin that answers every stage call with `output`.
fn echo_plugin(reads: FieldSet, output: &[u8]) -> Vec<u8> {
    let info = PluginInfo {
        name: "echo".into(),
        version: "1".into(),
        description: "".into(),
        author: "".into(),
        stages: 0x1f,
        reads,
        memory: PluginMemoryRequirements {
            min_bytes: 0,
            recommended_bytes: 0,
            max_pressure: MemoryPressureLevel::Emergency,
        },
    };
    let info = postcard::to_allocvec(&info).expect("info encodes");
    const OUT: usize = 1024;
    let pages = (OUT + output.len()) / 65536 + 1;
    let wat = format!(
        r#"(module
  (@custom "m3u_abi_version" "\02\00\00\00")
  (import "host" "write_channels" (func $write (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 0) "{info_data}")
  (data (i32.const {OUT}) "{out_data}")
  (func (export "m3u_arena_ptr") (result i32) (i32.const 0))
  (func (export "m3u_arena_capacity") (result i32) (i32.const {cap}))
  (func (export "m3u_plugin_info") (result i32) (i32.const {info_len}))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param i32 i32) (result i32)
    (call $write (i32.const {OUT}) (i32.const {out_len}))))"#,
        info_data = wat_bytes(&info),
        out_data = wat_bytes(output),
        cap = pages * 65536,
        info_len = info.len(),
        out_len = output.len(),
    );
    wat::parse_str(&wat).expect("echo plugin assembles")
}

fn batch(n: u64) -> Vec<OwnedChannel> {
    (1..=n)
        .map(|id| Channel {
            id,
            source_id: 0,
            channel_name: format!("c{id}").into(),
            stream_url: format!("http://h/{id}").into(),
            attributes: vec![Attribute {
                name: "tvg-country".into(),
                value: "X".into(),
            }],
            ..Channel::default()
        })
        .collect()
}

fn ids(channels: &[OwnedChannel]) -> Vec<u64> {
    channels.iter().map(|c| c.id).collect()
}

fuzz_target!(|data: &[u8]| {
    let [stage, reads, size, out @ ..] = data else {
        return;
    };
    round_trip!(StageOutput, out);
    round_trip!(StageInput, out);
    round_trip!(PluginInfo, out);

    let stage = Stage::ALL[usize::from(*stage) % 5];
    let reads = match reads % 4 {
        0 => FieldSet::ALL,
        1 => FieldSet::NONE,
        2 => FieldSet::of(&[Field::ChannelName]),
        _ => FieldSet::of(&[Field::ChannelName, Field::Attributes]),
    };
    let n = 1 + u64::from(*size % 8);

    let wasm = echo_plugin(reads, out);
    let instance = runtime()
        .load(&wasm, "echo", &PluginSettings::default())
        .expect("echo plugin loads");
    let mut slot = PluginSlot::new(instance, "echo.wasm".into());
    let original = batch(n);
    let mut channels = original.clone();
    let context = StageContext {
        stage,
        proxy_name: Cow::Borrowed("fuzz"),
        ..StageContext::default()
    };
    let result = slot.run(stage, &context, &mut channels);

    let decoded = match postcard::take_from_bytes::<StageOutput>(out) {
        Ok((answer, [])) => Some(answer),
        _ => None,
    };
    let Ok(()) = result else {
        assert_eq!(channels, original, "a failed call changed the batch");
        return;
    };
    let answer = decoded.expect("run succeeded on output that does not decode whole");
    match answer {
        StageOutput::Keep(mask) => {
            assert_eq!(stage, Stage::Filtering);
            assert_eq!(mask.len(), keep_mask_len(original.len()));
            let expected: Vec<OwnedChannel> = original
                .iter()
                .enumerate()
                .filter(|(i, _)| keep_mask_get(&mask, *i))
                .map(|(_, c)| c.clone())
                .collect();
            assert_eq!(channels, expected);
        }
        StageOutput::Patches(_) => {
            assert_ne!(stage, Stage::Filtering);
            assert_eq!(ids(&channels), ids(&original), "patches changed the ids");
        }
        StageOutput::Channels(list) => {
            assert!(reads.is_all());
            let expected: Vec<OwnedChannel> = list.into_iter().map(Channel::into_owned).collect();
            assert_eq!(channels, expected);
            let known: HashSet<u64> = ids(&original).into_iter().collect();
            let got = ids(&channels);
            let unique: HashSet<u64> = got.iter().copied().collect();
            assert!(got.iter().all(|id| known.contains(id)), "invented id");
            assert_eq!(unique.len(), got.len(), "repeated id");
            match stage {
                Stage::Filtering => {
                    let mut input = ids(&original).into_iter();
                    assert!(
                        got.iter().all(|id| input.any(|i| i == *id)),
                        "not a subsequence"
                    );
                }
                Stage::DataMapping | Stage::ChannelNumbering => {
                    assert_eq!(got, ids(&original), "ids changed");
                }
                Stage::SourceLoading | Stage::M3uGeneration => {}
            }
        }
    }
});
