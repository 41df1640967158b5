//! Arbitrary bytes as a plugin's answer, and as the stage input a guest
//! reads (ABI 2).
//!
//! Input layout: byte 0 picks the stage, byte 1 the echo plugin's shape
//! (bits 0–1: the fields it reads, all / none / name / name+attributes;
//! bit 2: answer in place instead of with `write_channels`; bit 3:
//! `m3u_check_memory_pressure(level, context_len)` instead of `(level)`;
//! bit 4: `m3u_init(config_len)`; bit 5: declare the fields through
//! `PluginInfo.stage_reads` for the stage rather than `reads`; bit 6:
//! `parallel_safe`), byte 2 the batch size (bits 0–2: 1..=8) and whether
//! an answer that does not decode goes through the plugin too (bit 7); the
//! rest is `out`.
//!
//! 1. The decoders alone, on `out`: `StageOutput` (a plugin's answer),
//!    `StageInput`, `PluginInfo` and `RunContext` never panic, and whatever
//!    decodes survives a round trip: it re-encodes to something that decodes
//!    to the same value, and that encoding is the consumed prefix of `out`
//!    byte for byte unless `out` used longer-than-needed varints (postcard
//!    accepts e.g. `80 00` for 0 but always writes the shortest form), so the
//!    re-encoding is never longer than the prefix, and at equal length it is
//!    identical.
//! 2. The guest's reader: `BatchView::parse(out)` never panics and agrees
//!    with `postcard` + `BatchView::new`: either both refuse, or both accept
//!    with the same header, length, fields and, for every index, the same
//!    channel.
//! 3. The host's writer: channels built from `out` (`arbitrary`) are written
//!    by `encode_stage_input`; `BatchView::parse` reads back the same header
//!    and each channel projected on the fields, postcard decodes the same
//!    bytes and re-encodes them identically, and a buffer one byte short is
//!    `BufferFull`.
//! 4. `abi::apply` directly on `out` decoded as an answer, for the stage and
//!    a small batch: on error the batch (and the id counter) is untouched; on
//!    success the stage's rules hold (a filter only drops channels, in
//!    order; mapping and numbering keep ids and order; whole-batch stages
//!    repeat no id, and ids not from the input are the ones handed to added
//!    channels, from 2^48 up) and the batch is exactly what a simple model of
//!    the answer gives.
//! 5. The public path: an "echo" plugin (built here as WAT) answers
//!    `m3u_execute_stage` with `out`, in place (copied right after the
//!    input, returning its length) or through `write_channels` (returning
//!    0); `PluginSlot::start_run` then `PluginSlot::run` must succeed exactly
//!    when (4) did, leave the batch untouched when it fails, and give (4)'s
//!    batch when it succeeds (added channels' ids up to one common offset:
//!    the host's counter is process-wide). Building and loading the plugin
//!    costs far more than 1–4, so an answer that does not decode (most
//!    inputs; the host decodes it with the same `take_from_bytes` as above)
//!    takes this path only with bit 7 of byte 2.
#![no_main]

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use m3u_plugin_host::abi::{
    apply, encode_stage_input, keep_mask_get, keep_mask_len, AnswerLimits, Attribute,
    AttributeValues, BatchView, BufferFull, Channel, Field, FieldSet, FieldValues, InputHeader,
    MemoryPressureLevel, Patch, PatchOp, PluginInfo, PluginMemoryRequirements, RunContext, Stage,
    StageContext, StageInput, StageOutput, StageReads, Values,
};
use m3u_plugin_host::pipeline::PluginSlot;
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;

/// The first id the host hands to channels a plugin adds (docs/ABI.md §8).
const ADDED_FROM: u64 = 1 << 48;

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

/// Little-endian `u32` number `k` of `bytes`.
fn le32(bytes: &[u8], k: usize) -> usize {
    let chunk: [u8; 4] = bytes[k * 4..k * 4 + 4].try_into().expect("4 bytes");
    u32::from_le_bytes(chunk) as usize
}

// ---------------------------------------------------------------------------
// 2. BatchView::parse against postcard + BatchView::new

/// True if every list column of `input` has non-decreasing `starts`, so
/// `BatchView::channel` walks at most as many items as the column holds.
/// (Decreasing starts make a channel's range wrap to a huge one; the host
/// never writes that, and both readers would walk it alike, just slowly.)
fn list_ranges_bounded(input: &StageInput<'_>) -> bool {
    let present = Field::ALL.iter().filter(|f| input.fields.contains(**f));
    present.zip(&input.columns).all(|(field, column)| {
        field.is_text()
            || (0..input.count as usize)
                .all(|i| le32(column.starts, i) <= le32(column.starts, i + 1))
    })
}

fn check_parse(bytes: &[u8]) {
    let parsed = BatchView::parse(bytes);
    let decoded = match postcard::take_from_bytes::<StageInput>(bytes) {
        Ok((input, [])) => Some(input),
        _ => None,
    };
    let viewed = decoded.as_ref().map(|input| (input, BatchView::new(input)));
    let (header, view, input, other) = match (parsed, viewed) {
        (Ok((header, view)), Some((input, Ok(other)))) => (header, view, input, other),
        (Err(_), None | Some((_, Err(_)))) => return,
        (Ok((header, _)), viewed) => panic!(
            "BatchView::parse accepts ({header:?}) what postcard + BatchView::new refuse: \
             postcard {}, new {:?}",
            if viewed.is_some() {
                "decodes"
            } else {
                "refuses"
            },
            viewed.map(|(_, new)| new.err())
        ),
        (Err(error), Some((_, Ok(_)))) => {
            panic!("BatchView::parse refuses ({error:?}) what postcard + BatchView::new accept")
        }
    };
    assert_eq!(header.batch_index, input.batch_index);
    assert_eq!(header.memory_pressure, input.memory_pressure);
    assert_eq!(header.fields, input.fields);
    assert_eq!(view.fields(), other.fields());
    assert_eq!(view.len(), input.count as usize);
    assert_eq!(view.len(), other.len());
    // Any honest item count is below the input's length.
    let most = bytes.len() + 1;
    let whole = list_ranges_bounded(input);
    for i in 0..view.len() {
        if whole {
            assert_eq!(view.channel(i), other.channel(i), "channel {i}");
            continue;
        }
        assert_eq!(
            (view.id(i), view.source_id(i)),
            (other.id(i), other.source_id(i))
        );
        for field in Field::ALL.into_iter().filter(|f| f.is_text()) {
            assert_eq!(view.text(i, field), other.text(i, field));
        }
        assert!(view
            .attributes(i)
            .take(most)
            .eq(other.attributes(i).take(most)));
        assert!(view.extras(i).take(most).eq(other.extras(i).take(most)));
    }
}

// ---------------------------------------------------------------------------
// 3. encode_stage_input on arbitrary channels

fn arbitrary_batch<'a>(
    u: &mut Unstructured<'a>,
) -> arbitrary::Result<(InputHeader, Vec<Channel<'a>>)> {
    let header = InputHeader {
        batch_index: u.arbitrary()?,
        memory_pressure: *u.choose(&MemoryPressureLevel::ALL)?,
        fields: match u.int_in_range(0u8..=3)? {
            0 => FieldSet::ALL,
            1 => FieldSet::NONE,
            // Any bits, including the 18 above the known fields.
            _ => FieldSet(u.arbitrary()?),
        },
    };
    let mut channels = Vec::new();
    for _ in 0..u.int_in_range(0u8..=8)? {
        let mut channel = Channel {
            id: u.arbitrary()?,
            source_id: u.arbitrary()?,
            ..Channel::default()
        };
        for field in Field::ALL {
            if let Some(slot) = channel.text_mut(field) {
                *slot = Cow::Borrowed(<&str>::arbitrary(u)?);
            }
        }
        for _ in 0..u.int_in_range(0u8..=3)? {
            channel.attributes.push(Attribute {
                name: Cow::Borrowed(<&str>::arbitrary(u)?),
                value: Cow::Borrowed(<&str>::arbitrary(u)?),
            });
        }
        for _ in 0..u.int_in_range(0u8..=2)? {
            channel.extras.push(Cow::Borrowed(<&str>::arbitrary(u)?));
        }
        channels.push(channel);
    }
    Ok((header, channels))
}

fn check_encode(data: &[u8]) {
    let Ok((header, channels)) = arbitrary_batch(&mut Unstructured::new(data)) else {
        return;
    };
    // Generous: the strings come from `data`; each field adds at most
    // (channels + 1) offsets, list fields as many starts, a few varints.
    let bound = 64 + data.len() * 8 + (channels.len() + 1) * 4 * 2 * 14 * 2 + channels.len() * 12;
    let mut buffer = vec![0u8; bound];
    let len = encode_stage_input(&mut buffer, header, &channels)
        .expect("the batch fits a buffer of its bound");
    let bytes = &buffer[..len];
    let (read, view) = BatchView::parse(bytes).expect("parse reads what encode_stage_input wrote");
    assert_eq!(read, header);
    assert_eq!(view.len(), channels.len());
    for (i, channel) in channels.iter().enumerate() {
        assert_eq!(
            view.channel(i),
            channel.project(header.fields),
            "channel {i}"
        );
    }
    let input: StageInput = postcard::from_bytes(bytes).expect("postcard decodes the encoding");
    assert_eq!(
        postcard::to_allocvec(&input).expect("encodes"),
        bytes,
        "encode_stage_input differs from postcard's encoding"
    );
    if len > 0 {
        let mut short = vec![0u8; len - 1];
        assert_eq!(
            encode_stage_input(&mut short, header, &channels),
            Err(BufferFull),
            "a buffer one byte short"
        );
    }
    let mut exact = vec![0u8; len];
    assert_eq!(encode_stage_input(&mut exact, header, &channels), Ok(len));
    assert_eq!(exact, bytes);
}

// ---------------------------------------------------------------------------
// 4. apply

/// What `answer` should turn `original` into, if `apply` accepts it.
/// Written from docs/ABI.md §8, independently of `apply`; indexing panics if
/// `apply` accepted an answer that names a channel the batch lacks.
fn model(answer: &StageOutput<'_>, original: &[OwnedChannel]) -> Vec<OwnedChannel> {
    /// The (index, value) pairs of checked columns.
    fn entries<'v>(values: &'v Values<'_>) -> impl Iterator<Item = (usize, &'v str)> + 'v {
        (0..values.indices.len() / 4).map(move |k| {
            let (start, end) = (le32(&values.offsets, k), le32(&values.offsets, k + 1));
            let value = std::str::from_utf8(&values.data[start..end]).expect("UTF-8 value");
            (le32(&values.indices, k), value)
        })
    }
    fn changes(
        fields: &[FieldValues<'_>],
        patches: &[Patch<'_>],
        attributes: &[AttributeValues<'_>],
        original: &[OwnedChannel],
    ) -> Vec<OwnedChannel> {
        let mut batch = original.to_vec();
        for column in fields {
            for (index, value) in entries(&column.values) {
                let slot = batch[index].text_mut(column.field).expect("a text field");
                *slot = Cow::Owned(value.to_string());
            }
        }
        for patch in patches {
            let channel = &mut batch[patch.index as usize];
            match &patch.op {
                PatchOp::SetField(field, value) => {
                    *channel.text_mut(*field).expect("a text field") =
                        Cow::Owned(value.to_string());
                }
                PatchOp::SetAttribute(name, value) => channel
                    .set_attribute(Cow::Owned(name.to_string()), Cow::Owned(value.to_string())),
                PatchOp::RemoveAttribute(name) => channel
                    .attributes
                    .retain(|attribute| !attribute.name.eq_ignore_ascii_case(name)),
            }
        }
        for column in attributes {
            for (index, value) in entries(&column.values) {
                batch[index].set_attribute(
                    Cow::Owned(column.name.to_string()),
                    Cow::Owned(value.to_string()),
                );
            }
        }
        batch
    }
    match answer {
        StageOutput::KeepAll => original.to_vec(),
        StageOutput::Keep(mask) => original
            .iter()
            .enumerate()
            .filter(|(i, _)| keep_mask_get(mask, *i))
            .map(|(_, c)| c.clone())
            .collect(),
        StageOutput::Channels(list) => list.iter().cloned().map(Channel::into_owned).collect(),
        StageOutput::Patches(patches) => changes(&[], patches, &[], original),
        StageOutput::Changes(c) => changes(&c.fields, &c.patches, &c.attributes, original),
        StageOutput::Rebuild(rebuild) => {
            let c = &rebuild.changes;
            let changed = changes(&c.fields, &c.patches, &c.attributes, original);
            let added: Vec<OwnedChannel> = rebuild
                .added
                .iter()
                .zip(ADDED_FROM..)
                .map(|(channel, id)| Channel {
                    id,
                    ..channel.clone().into_owned()
                })
                .collect();
            (0..rebuild.order.len() / 4)
                .map(|k| le32(&rebuild.order, k))
                .map(|p| match p.checked_sub(changed.len()) {
                    None => changed[p].clone(),
                    Some(k) => added[k].clone(),
                })
                .collect()
        }
    }
}

fn ids(channels: &[OwnedChannel]) -> Vec<u64> {
    channels.iter().map(|c| c.id).collect()
}

/// `apply` on a copy of `original`: checks the invariants and the model,
/// returns the batch it gave (`None` if it refused).
fn check_apply(
    stage: Stage,
    reads: FieldSet,
    answer: &StageOutput<'_>,
    original: &[OwnedChannel],
) -> Option<Vec<OwnedChannel>> {
    let mut batch = original.to_vec();
    let mut next_id = ADDED_FROM;
    let result = apply(
        stage,
        reads,
        answer.clone(),
        &mut batch,
        &mut next_id,
        &AnswerLimits::default(),
    );
    if result.is_err() {
        assert_eq!(batch, original, "a refused answer changed the batch");
        assert_eq!(next_id, ADDED_FROM, "a refused answer used ids");
        return None;
    }
    let whole_batch = matches!(stage, Stage::SourceLoading | Stage::M3uGeneration);
    match answer {
        StageOutput::KeepAll => {}
        StageOutput::Keep(mask) => {
            assert!(
                stage == Stage::Filtering || whole_batch,
                "keep mask at {stage:?}"
            );
            assert_eq!(
                mask.len(),
                keep_mask_len(original.len()),
                "keep mask length"
            );
        }
        StageOutput::Patches(_) | StageOutput::Changes(_) => {
            assert_ne!(stage, Stage::Filtering, "changes from a filter");
        }
        StageOutput::Rebuild(_) => assert!(whole_batch, "a rebuild at {stage:?}"),
        StageOutput::Channels(_) => assert!(reads.is_all(), "whole channels, partial reads"),
    }
    let added = match answer {
        StageOutput::Rebuild(rebuild) => rebuild.added.len() as u64,
        _ => 0,
    };
    assert_eq!(next_id, ADDED_FROM + added, "ids handed out");
    let (before, after) = (ids(original), ids(&batch));
    match stage {
        Stage::Filtering => {
            let mut input = before.iter();
            assert!(
                after.iter().all(|id| input.any(|i| i == id)),
                "not a subsequence: {before:?} -> {after:?}"
            );
        }
        Stage::DataMapping | Stage::ChannelNumbering => {
            assert_eq!(after, before, "ids changed");
        }
        Stage::SourceLoading | Stage::M3uGeneration => {
            let known: HashSet<u64> = before.iter().copied().collect();
            let unique: HashSet<u64> = after.iter().copied().collect();
            assert_eq!(unique.len(), after.len(), "repeated id: {after:?}");
            assert!(
                after
                    .iter()
                    .all(|id| known.contains(id) || (ADDED_FROM..next_id).contains(id)),
                "invented id: {after:?}"
            );
        }
    }
    assert_eq!(
        batch,
        model(answer, original),
        "apply differs from the model"
    );
    Some(batch)
}

// ---------------------------------------------------------------------------
// 5. The echo plugin through PluginSlot

/// A fresh runtime per input: a wasmi `Engine` keeps the code of every module
/// it compiled until it is dropped, so a shared one would grow without bound.
fn runtime() -> PluginRuntime {
    let limits = RuntimeLimits {
        fuel_per_call: 1_000_000,
        fuel_slice: 10_000,
        timeout: Duration::from_secs(1),
        max_memory_bytes: 4 << 20,
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

/// How the echo plugin is built (byte 1 of the input).
#[derive(Clone, Copy, Debug)]
struct Shape {
    reads: FieldSet,
    in_place: bool,
    pressure_with_context: bool,
    init_with_config: bool,
    via_stage_reads: bool,
    parallel_safe: bool,
}

impl Shape {
    fn from_byte(byte: u8) -> Shape {
        Shape {
            reads: match byte % 4 {
                0 => FieldSet::ALL,
                1 => FieldSet::NONE,
                2 => FieldSet::of(&[Field::ChannelName]),
                _ => FieldSet::of(&[Field::ChannelName, Field::Attributes]),
            },
            in_place: byte & 0x04 != 0,
            pressure_with_context: byte & 0x08 != 0,
            init_with_config: byte & 0x10 != 0,
            via_stage_reads: byte & 0x20 != 0,
            parallel_safe: byte & 0x40 != 0,
        }
    }
}

/// A plugin that answers every stage call with `output`.
///
/// Memory = arena = `[0, 2H)`. The host writes inputs (at most `H` bytes),
/// the run context and the info at the arena start; the info and the answer
/// are kept in the upper half (`H`, `H + 1024`) and copied down: the info to
/// 0, the answer right after the input (in place) or pushed from where it is
/// (`write_channels` takes arena ranges only).
fn echo_plugin(stage: Stage, shape: Shape, output: &[u8]) -> Vec<u8> {
    let (reads, stage_reads) = if shape.via_stage_reads {
        // `reads` says something else; the stage's entry must win.
        let other = if shape.reads.is_all() {
            FieldSet::NONE
        } else {
            FieldSet::ALL
        };
        let entry = StageReads {
            stage,
            fields: shape.reads,
        };
        (other, vec![entry])
    } else {
        (shape.reads, vec![])
    };
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
        parallel_safe: shape.parallel_safe,
        stage_reads,
    };
    let info = postcard::to_allocvec(&info).expect("info encodes");
    assert!(info.len() <= 1024);
    let half = 65536 * (1 + (1024 + output.len()) / 65536);
    let (info_at, out_at) = (half, half + 1024);
    let answer = if shape.in_place {
        format!(
            "(memory.copy (local.get 1) (i32.const {out_at}) (i32.const {len})) (i32.const {len})",
            len = output.len()
        )
    } else {
        format!(
            "(drop (call $write (i32.const {out_at}) (i32.const {len}))) (i32.const 0)",
            len = output.len()
        )
    };
    let pressure_params = if shape.pressure_with_context {
        "(param i32 i32)"
    } else {
        "(param i32)"
    };
    let init_params = if shape.init_with_config {
        "(param i32)"
    } else {
        ""
    };
    let wat = format!(
        r#"(module
  (@custom "m3u_abi_version" "{abi}")
  (import "host" "write_channels" (func $write (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const {info_at}) "{info_data}")
  (data (i32.const {out_at}) "{out_data}")
  (func (export "m3u_arena_ptr") (result i32) (i32.const 0))
  (func (export "m3u_arena_capacity") (result i32) (i32.const {cap}))
  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (i32.const 0) (i32.const {info_at}) (i32.const {info_len}))
    (i32.const {info_len}))
  (func (export "m3u_init") {init_params} (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") {pressure_params} (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param i32 i32) (result i32)
    {answer}))"#,
        abi = wat_bytes(&m3u_plugin_host::abi::ABI_VERSION.to_le_bytes()),
        pages = 2 * half / 65536,
        info_data = wat_bytes(&info),
        out_data = wat_bytes(output),
        cap = 2 * half,
        info_len = info.len(),
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

/// `got` equals `want` except that the ids of added channels (>= 2^48) may
/// differ by one common offset.
fn same_up_to_added_ids(got: &[OwnedChannel], want: &[OwnedChannel]) -> bool {
    let mut offset = None;
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            let ids_fit = if w.id >= ADDED_FROM && g.id >= ADDED_FROM {
                let delta = g.id.wrapping_sub(w.id);
                *offset.get_or_insert(delta) == delta
            } else {
                g.id == w.id
            };
            ids_fit && Channel { id: 0, ..g.clone() } == Channel { id: 0, ..w.clone() }
        })
}

fuzz_target!(|data: &[u8]| {
    let [stage, shape, size, out @ ..] = data else {
        return;
    };
    // 1. Decoders.
    round_trip!(StageOutput, out);
    round_trip!(StageInput, out);
    round_trip!(PluginInfo, out);
    round_trip!(RunContext, out);
    // 2, 3. The stage input's reader and writer.
    check_parse(out);
    check_encode(out);

    // 4. apply, directly.
    let stage = Stage::ALL[usize::from(*stage) % 5];
    let shape = Shape::from_byte(*shape);
    let n = 1 + u64::from(*size % 8);
    let original = batch(n);
    let direct = match postcard::take_from_bytes::<StageOutput>(out) {
        Ok((answer, [])) => check_apply(stage, shape.reads, &answer, &original),
        _ if size & 0x80 == 0 => return,
        _ => None,
    };

    // 5. The same answer from a plugin, through the host.
    let wasm = echo_plugin(stage, shape, out);
    let instance = runtime()
        .load(&wasm, "echo", &PluginSettings::default())
        .expect("echo plugin loads");
    let mut slot = PluginSlot::new(instance, "echo.wasm".into());
    assert_eq!(slot.instance.info().reads_at(stage), shape.reads);
    assert_eq!(slot.instance.info().parallel_safe, shape.parallel_safe);
    let run_context = RunContext {
        proxy_name: Cow::Borrowed("fuzz"),
        base_url: Cow::Borrowed("http://fuzz/"),
        ..RunContext::default()
    };
    let started = slot.start_run(MemoryPressureLevel::Optimal, &run_context);
    assert!(matches!(started, Ok(true)), "start_run: {started:?}");
    let mut channels = original.clone();
    let context = StageContext {
        stage,
        proxy_name: Cow::Borrowed("fuzz"),
        ..StageContext::default()
    };
    let result = slot.run(stage, &context, &mut channels);
    match (result, direct) {
        (Err(_), None) => assert_eq!(channels, original, "a failed call changed the batch"),
        (Ok(()), Some(expected)) => assert!(
            same_up_to_added_ids(&channels, &expected),
            "PluginSlot::run gave {channels:?}, apply {expected:?}"
        ),
        (Ok(()), None) => panic!("PluginSlot::run accepted an answer apply refuses"),
        (Err(error), Some(_)) => panic!("PluginSlot::run refused an answer apply accepts: {error}"),
    }
});
