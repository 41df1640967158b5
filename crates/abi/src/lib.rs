//! Wire types shared by the `m3u-plugin-host` and its WebAssembly plugins.
//!
//! Everything that crosses the host/guest boundary is one of these types,
//! encoded with [postcard]. Host and SDK both depend on this crate so the two
//! sides cannot drift; the golden-byte tests at the bottom pin the encoding.
//! `docs/ABI.md` describes the same layout byte by byte for authors who do not
//! use Rust.
//!
//! Rules of the format:
//! - integers are `u8`/`u32`/`u64` (postcard varints), never `usize`;
//! - enum variant order is part of the format: append, never reorder;
//! - strings are `Cow<str>` so a guest can decode them borrowed from its arena.
//!
//! ```
//! use m3u_proxy_plugin_abi::*;
//! let channels = [Channel { id: 7, group_title: "News".into(), ..Channel::default() }];
//! let header = InputHeader { fields: FieldSet::of(&[Field::GroupTitle]), ..InputHeader::default() };
//! let mut arena = [0u8; 256];
//! let len = encode_stage_input(&mut arena, header, &channels).unwrap();
//! let input: StageInput = postcard::from_bytes(&arena[..len]).unwrap();
//! let batch = BatchView::new(&input).unwrap();
//! assert_eq!((batch.id(0), batch.text(0, Field::GroupTitle)), (7, "News"));
//! assert_eq!(batch.text(0, Field::ChannelName), ""); // not projected
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::borrow::Cow;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

mod answer;
mod batch;

pub use answer::{
    apply, check_channel_ids, wire_tags, AnswerError, AnswerLimits, AttributeValues, Changes,
    FieldValues, Patch, PatchOp, Rebuild, StageOutput, Values,
};
pub use batch::{
    encode_stage_input, BatchView, BufferFull, Column, InputHeader, LayoutError, StageInput,
};

/// Version of the boundary described in `docs/ABI.md`. A plugin carries the
/// version it was built for in the `m3u_abi_version` custom section; the host
/// refuses any other value before it runs a single guest instruction.
pub const ABI_VERSION: u32 = 2;

/// Name of the custom section holding [`ABI_VERSION`] as 4 little-endian bytes.
pub const ABI_VERSION_SECTION: &str = "m3u_abi_version";

/// Names of the functions a plugin exports.
pub mod exports {
    /// `() -> i32`: address of the arena in linear memory.
    pub const ARENA_PTR: &str = "m3u_arena_ptr";
    /// `() -> i32`: capacity of the arena in bytes.
    pub const ARENA_CAPACITY: &str = "m3u_arena_capacity";
    /// `() -> i32`: writes [`crate::PluginInfo`] to the arena start, returns
    /// its length. Called before `m3u_init` (name, stages, memory) and again
    /// after it: the fields read are taken from the second answer, so they
    /// can follow the plugin's configuration.
    pub const PLUGIN_INFO: &str = "m3u_plugin_info";
    /// `() -> i32` or `(config_len: i32) -> i32`: one-time initialisation;
    /// returns a [`crate::status`] code. With the parameter, the host first
    /// writes the plugin's [`crate::PluginConfig`] at the arena start and
    /// passes its encoded length.
    pub const INIT: &str = "m3u_init";
    /// `(stage: i32, input_len: i32) -> i32`: runs one stage call on the
    /// [`crate::StageInput`] the host wrote at the arena start. Returns the
    /// length of the [`crate::StageOutput`] the plugin wrote right after the
    /// input (> 0), `0` if it sent its answer with `write_channels` instead,
    /// or a negative status code.
    pub const EXECUTE_STAGE: &str = "m3u_execute_stage";
    /// `(level: i32, context_len: i32) -> i32` (or `(level: i32) -> i32`):
    /// a run starts; 1 if the plugin will run at this pressure level, else 0.
    /// With the second parameter, the host first writes the run's
    /// [`crate::RunContext`] at the arena start and passes its length.
    pub const CHECK_MEMORY_PRESSURE: &str = "m3u_check_memory_pressure";
    /// `() -> i32`: releases what `init` set up; returns a status code.
    pub const CLEANUP: &str = "m3u_cleanup";
    /// The guest's linear memory.
    pub const MEMORY: &str = "memory";
}

/// Names of the host functions (all in module [`host_functions::MODULE`]).
pub mod host_functions {
    /// Import module of every host function.
    pub const MODULE: &str = "host";
    /// `(level: i32, ptr: i32, len: i32)`: log a UTF-8 message.
    pub const LOG: &str = "log";
    /// `() -> i64`: bytes of linear memory the plugin currently uses.
    pub const GET_MEMORY_USAGE: &str = "get_memory_usage";
    /// `(ptr: i32, cap: i32) -> i32`: copy the next bytes of the pending input.
    pub const READ_CHANNELS: &str = "read_channels";
    /// `(ptr: i32, len: i32) -> i32`: append bytes to the stage output.
    pub const WRITE_CHANNELS: &str = "write_channels";
    /// `(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32`: read a config value.
    pub const GET_CONFIG: &str = "get_config";
    /// `(keys_ptr: i32, keys_len: i32, out_ptr: i32, out_cap: i32) -> i32`:
    /// claim dedup keys (a postcard `Vec<&[u8]>`) in the plugin's own shared
    /// set; writes one byte per key (1 = keep: first claim, 0 = already
    /// claimed) and returns the count.
    pub const CLAIM_KEYS: &str = "claim_keys";
    /// Every host function the host knows, in the order of `docs/ABI.md`.
    pub const ALL: [&str; 6] = [
        LOG,
        GET_MEMORY_USAGE,
        READ_CHANNELS,
        WRITE_CHANNELS,
        GET_CONFIG,
        CLAIM_KEYS,
    ];
}

/// Status codes returned by guest exports and host functions (`i32`).
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// The plugin failed for a reason of its own.
    pub const PLUGIN_ERROR: i32 = -1;
    /// The plugin could not decode its input.
    pub const DECODE_ERROR: i32 = -2;
    /// The plugin does not implement the requested stage.
    pub const UNSUPPORTED_STAGE: i32 = -3;
    /// The input did not fit the arena.
    pub const INPUT_TOO_LARGE: i32 = -4;
    /// A required configuration key was missing or invalid.
    pub const CONFIG_ERROR: i32 = -5;
    /// `get_config`: no value for that key.
    pub const NOT_FOUND: i32 = -10;
    /// `get_config`: the key is longer than [`crate::MAX_CONFIG_KEY_LEN`].
    pub const KEY_TOO_LONG: i32 = -11;
    /// `write_channels`: the output would exceed the host's output limit.
    pub const OUTPUT_LIMIT: i32 = -12;
}

/// Longest configuration key `get_config` accepts.
pub const MAX_CONFIG_KEY_LEN: u32 = 256;

/// The five pipeline stages, in pipeline order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Reading sources into channels.
    SourceLoading,
    /// Rewriting channel fields.
    DataMapping,
    /// Keeping or dropping channels.
    Filtering,
    /// Assigning channel numbers.
    ChannelNumbering,
    /// Last transformation before the M3U is written.
    M3uGeneration,
}

impl Stage {
    /// All stages in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::SourceLoading,
        Stage::DataMapping,
        Stage::Filtering,
        Stage::ChannelNumbering,
        Stage::M3uGeneration,
    ];

    /// The stage's number on the wire (`execute_stage`'s first argument).
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The stage for a wire number.
    pub fn from_u32(value: u32) -> Option<Stage> {
        Stage::ALL.get(value as usize).copied()
    }

    /// The snake_case name used in TOML (`source_loading`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Stage::SourceLoading => "source_loading",
            Stage::DataMapping => "data_mapping",
            Stage::Filtering => "filtering",
            Stage::ChannelNumbering => "channel_numbering",
            Stage::M3uGeneration => "m3u_generation",
        }
    }

    /// The bit of this stage in [`PluginInfo::stages`].
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// How close the host is to running out of memory.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum MemoryPressureLevel {
    /// Plenty of memory.
    #[default]
    Optimal,
    /// Some pressure; in-memory strategies still fine.
    Moderate,
    /// Prefer streaming strategies.
    High,
    /// Streaming only, smallest buffers.
    Critical,
    /// Last resort: native streaming strategies only.
    Emergency,
}

impl MemoryPressureLevel {
    /// All levels, least to most pressure.
    pub const ALL: [MemoryPressureLevel; 5] = [
        MemoryPressureLevel::Optimal,
        MemoryPressureLevel::Moderate,
        MemoryPressureLevel::High,
        MemoryPressureLevel::Critical,
        MemoryPressureLevel::Emergency,
    ];

    /// The level's number on the wire (`check_memory_pressure`'s argument).
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The level for a wire number.
    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.get(value as usize).copied()
    }

    /// Lowercase name used in TOML and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Optimal => "optimal",
            Self::Moderate => "moderate",
            Self::High => "high",
            Self::Critical => "critical",
            Self::Emergency => "emergency",
        }
    }
}

/// The channel fields a plugin can read, patch or be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Field {
    /// `tvg-id`.
    TvgId,
    /// `tvg-name`.
    TvgName,
    /// `tvg-chno`.
    TvgChno,
    /// `tvg-logo`.
    TvgLogo,
    /// `tvg-shift`.
    TvgShift,
    /// `group-title`.
    GroupTitle,
    /// The title after the EXTINF comma.
    ChannelName,
    /// The URL line.
    StreamUrl,
    /// The EXTINF duration (usually `-1`).
    Duration,
    /// Probe result: video codec.
    VideoCodec,
    /// Probe result: audio codec.
    AudioCodec,
    /// Probe result: resolution.
    Resolution,
    /// Every other EXTINF attribute (not patchable as a string).
    Attributes,
    /// Companion lines (not patchable as a string).
    Extras,
}

impl Field {
    /// Every field, in wire order.
    pub const ALL: [Field; 14] = [
        Field::TvgId,
        Field::TvgName,
        Field::TvgChno,
        Field::TvgLogo,
        Field::TvgShift,
        Field::GroupTitle,
        Field::ChannelName,
        Field::StreamUrl,
        Field::Duration,
        Field::VideoCodec,
        Field::AudioCodec,
        Field::Resolution,
        Field::Attributes,
        Field::Extras,
    ];

    /// The field's name as used in mapping rules and filter expressions.
    pub const fn name(self) -> &'static str {
        match self {
            Field::TvgId => "tvg_id",
            Field::TvgName => "tvg_name",
            Field::TvgChno => "tvg_chno",
            Field::TvgLogo => "tvg_logo",
            Field::TvgShift => "tvg_shift",
            Field::GroupTitle => "group_title",
            Field::ChannelName => "channel_name",
            Field::StreamUrl => "stream_url",
            Field::Duration => "duration",
            Field::VideoCodec => "video_codec",
            Field::AudioCodec => "audio_codec",
            Field::Resolution => "resolution",
            Field::Attributes => "attributes",
            Field::Extras => "extras",
        }
    }

    /// The field for a name (`tvg_id` or `tvg-id`, any case).
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| {
            let canonical = field.name();
            canonical.len() == name.len()
                && canonical
                    .bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'_' && b == b'-'))
        })
    }

    /// True for the fields that hold a single string.
    pub const fn is_text(self) -> bool {
        !matches!(self, Field::Attributes | Field::Extras)
    }

    /// This field's bit in a [`FieldSet`].
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of [`Field`]s as a bitmask (bit n = `Field` with wire index n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldSet(pub u32);

impl FieldSet {
    /// No field.
    pub const NONE: FieldSet = FieldSet(0);
    /// Every field.
    pub const ALL: FieldSet = FieldSet((1 << Field::ALL.len()) - 1);

    /// A set of the given fields.
    pub const fn of(fields: &[Field]) -> FieldSet {
        let mut bits = 0;
        let mut i = 0;
        while i < fields.len() {
            bits |= fields[i].bit();
            i += 1;
        }
        FieldSet(bits)
    }

    /// True if `field` is in the set.
    pub const fn contains(self, field: Field) -> bool {
        self.0 & field.bit() != 0
    }

    /// True if every field is in the set.
    pub const fn is_all(self) -> bool {
        self.0 & FieldSet::ALL.0 == FieldSet::ALL.0
    }
}

/// An EXTINF attribute the typed fields do not cover, e.g. `tvg-country`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attribute<'a> {
    /// Attribute name as written in the source (original case).
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Attribute value, unquoted.
    #[serde(borrow)]
    pub value: Cow<'a, str>,
}

/// One playlist entry with every field of the source, so that a parse → write
/// round trip loses nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Channel<'a> {
    /// Host-assigned id, unique within one pipeline run.
    pub id: u64,
    /// Index of the source this channel came from.
    pub source_id: u32,
    /// `tvg-id`.
    #[serde(borrow)]
    pub tvg_id: Cow<'a, str>,
    /// `tvg-name`.
    #[serde(borrow)]
    pub tvg_name: Cow<'a, str>,
    /// `tvg-chno` (empty when unnumbered).
    #[serde(borrow)]
    pub tvg_chno: Cow<'a, str>,
    /// `tvg-logo`.
    #[serde(borrow)]
    pub tvg_logo: Cow<'a, str>,
    /// `tvg-shift`.
    #[serde(borrow)]
    pub tvg_shift: Cow<'a, str>,
    /// `group-title`.
    #[serde(borrow)]
    pub group_title: Cow<'a, str>,
    /// The title after the EXTINF comma.
    #[serde(borrow)]
    pub channel_name: Cow<'a, str>,
    /// The URL line, including any `|header=value` suffix.
    #[serde(borrow)]
    pub stream_url: Cow<'a, str>,
    /// The EXTINF duration as written (usually `-1`).
    #[serde(borrow)]
    pub duration: Cow<'a, str>,
    /// Probe result: video codec (empty when not probed).
    #[serde(borrow)]
    pub video_codec: Cow<'a, str>,
    /// Probe result: audio codec (empty when not probed).
    #[serde(borrow)]
    pub audio_codec: Cow<'a, str>,
    /// Probe result: resolution (empty when not probed).
    #[serde(borrow)]
    pub resolution: Cow<'a, str>,
    /// Every other EXTINF attribute, in source order.
    #[serde(borrow)]
    pub attributes: Vec<Attribute<'a>>,
    /// Companion lines (`#EXTVLCOPT:…`, `#KODIPROP:…`, `#EXTGRP:…`), verbatim, in order.
    #[serde(borrow)]
    pub extras: Vec<Cow<'a, str>>,
}

impl<'a> Channel<'a> {
    /// The value of a text field (empty for `Attributes`/`Extras`).
    pub fn text(&self, field: Field) -> &str {
        match field {
            Field::TvgId => &self.tvg_id,
            Field::TvgName => &self.tvg_name,
            Field::TvgChno => &self.tvg_chno,
            Field::TvgLogo => &self.tvg_logo,
            Field::TvgShift => &self.tvg_shift,
            Field::GroupTitle => &self.group_title,
            Field::ChannelName => &self.channel_name,
            Field::StreamUrl => &self.stream_url,
            Field::Duration => &self.duration,
            Field::VideoCodec => &self.video_codec,
            Field::AudioCodec => &self.audio_codec,
            Field::Resolution => &self.resolution,
            Field::Attributes | Field::Extras => "",
        }
    }

    /// Mutable access to a text field (`None` for `Attributes`/`Extras`).
    pub fn text_mut(&mut self, field: Field) -> Option<&mut Cow<'a, str>> {
        Some(match field {
            Field::TvgId => &mut self.tvg_id,
            Field::TvgName => &mut self.tvg_name,
            Field::TvgChno => &mut self.tvg_chno,
            Field::TvgLogo => &mut self.tvg_logo,
            Field::TvgShift => &mut self.tvg_shift,
            Field::GroupTitle => &mut self.group_title,
            Field::ChannelName => &mut self.channel_name,
            Field::StreamUrl => &mut self.stream_url,
            Field::Duration => &mut self.duration,
            Field::VideoCodec => &mut self.video_codec,
            Field::AudioCodec => &mut self.audio_codec,
            Field::Resolution => &mut self.resolution,
            Field::Attributes | Field::Extras => return None,
        })
    }

    /// The value of an extra attribute, matched case-insensitively.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map(|a| a.value.as_ref())
    }

    /// Sets (or adds) an extra attribute, matched case-insensitively.
    pub fn set_attribute(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        match self
            .attributes
            .iter_mut()
            .find(|a| a.name.eq_ignore_ascii_case(&name))
        {
            Some(existing) => existing.value = value,
            None => self.attributes.push(Attribute { name, value }),
        }
    }

    /// A copy that owns its strings, independent of the input buffer.
    pub fn into_owned(self) -> Channel<'static> {
        fn own(s: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(s.into_owned())
        }
        Channel {
            id: self.id,
            source_id: self.source_id,
            tvg_id: own(self.tvg_id),
            tvg_name: own(self.tvg_name),
            tvg_chno: own(self.tvg_chno),
            tvg_logo: own(self.tvg_logo),
            tvg_shift: own(self.tvg_shift),
            group_title: own(self.group_title),
            channel_name: own(self.channel_name),
            stream_url: own(self.stream_url),
            duration: own(self.duration),
            video_codec: own(self.video_codec),
            audio_codec: own(self.audio_codec),
            resolution: own(self.resolution),
            attributes: self
                .attributes
                .into_iter()
                .map(|a| Attribute {
                    name: own(a.name),
                    value: own(a.value),
                })
                .collect(),
            extras: self.extras.into_iter().map(own).collect(),
        }
    }

    /// A copy that keeps only `fields` (others empty), borrowing from `self`.
    /// This is what the host sends a plugin that declared what it reads.
    pub fn project(&self, fields: FieldSet) -> Channel<'_> {
        let pick = |field: Field| -> Cow<'_, str> {
            if fields.contains(field) {
                Cow::Borrowed(self.text(field))
            } else {
                Cow::Borrowed("")
            }
        };
        Channel {
            id: self.id,
            source_id: self.source_id,
            tvg_id: pick(Field::TvgId),
            tvg_name: pick(Field::TvgName),
            tvg_chno: pick(Field::TvgChno),
            tvg_logo: pick(Field::TvgLogo),
            tvg_shift: pick(Field::TvgShift),
            group_title: pick(Field::GroupTitle),
            channel_name: pick(Field::ChannelName),
            stream_url: pick(Field::StreamUrl),
            duration: pick(Field::Duration),
            video_codec: pick(Field::VideoCodec),
            audio_codec: pick(Field::AudioCodec),
            resolution: pick(Field::Resolution),
            attributes: if fields.contains(Field::Attributes) {
                self.attributes
                    .iter()
                    .map(|a| Attribute {
                        name: Cow::Borrowed(&a.name),
                        value: Cow::Borrowed(&a.value),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            extras: if fields.contains(Field::Extras) {
                self.extras
                    .iter()
                    .map(|e| Cow::Borrowed(e.as_ref()))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// The serializable part of a stage's context, sent with every batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageContext<'a> {
    /// The stage being run.
    pub stage: Stage,
    /// Memory pressure when the batch was sent.
    pub memory_pressure: MemoryPressureLevel,
    /// Memory the host still has available, in bytes.
    pub available_memory: u64,
    /// Name of the proxy being generated.
    #[serde(borrow)]
    pub proxy_name: Cow<'a, str>,
    /// Base URL of the proxy (for URL rewriting).
    #[serde(borrow)]
    pub base_url: Cow<'a, str>,
    /// Index of this batch within the stage run, from 0.
    pub batch_index: u32,
}

#[allow(clippy::derivable_impls)]
impl Default for Stage {
    fn default() -> Self {
        Stage::SourceLoading
    }
}

/// What the host sends once per run, before the run's first batch: the
/// plugin's `m3u_check_memory_pressure(level, context_len)` finds it at the
/// arena start. The per-batch part (batch index, current pressure) travels
/// in each [`StageInput`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContext<'a> {
    /// Memory pressure when the run started.
    pub memory_pressure: MemoryPressureLevel,
    /// Memory the host had available when the run started, in bytes.
    pub available_memory: u64,
    /// Name of the proxy being generated.
    #[serde(borrow)]
    pub proxy_name: Cow<'a, str>,
    /// Base URL of the proxy (for URL rewriting).
    #[serde(borrow)]
    pub base_url: Cow<'a, str>,
}

/// Memory a plugin needs, declared in its [`PluginInfo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMemoryRequirements {
    /// Linear memory below which the plugin cannot work, in bytes.
    pub min_bytes: u64,
    /// Linear memory the plugin is comfortable with, in bytes.
    pub recommended_bytes: u64,
    /// Highest memory pressure at which the plugin agrees to run.
    pub max_pressure: MemoryPressureLevel,
}

/// What a plugin says about itself (`m3u_plugin_info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo<'a> {
    /// Unique name, used in the TOML strategy lists.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Version string.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// One-line description.
    #[serde(borrow)]
    pub description: Cow<'a, str>,
    /// Author.
    #[serde(borrow)]
    pub author: Cow<'a, str>,
    /// Supported stages as a bitmask of [`Stage::bit`].
    pub stages: u32,
    /// Fields the plugin reads at stages `stage_reads` does not name; the
    /// host sends only these.
    pub reads: FieldSet,
    /// Memory needs.
    pub memory: PluginMemoryRequirements,
    /// True if the plugin keeps no state from one batch to the next, so the
    /// host may run several instances of it on worker threads.
    pub parallel_safe: bool,
    /// Fields read at particular stages (overrides `reads` there).
    pub stage_reads: Vec<StageReads>,
}

/// The fields a plugin reads at one stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReads {
    /// The stage.
    pub stage: Stage,
    /// The fields.
    pub fields: FieldSet,
}

impl PluginInfo<'_> {
    /// True if the plugin implements `stage`.
    pub fn supports(&self, stage: Stage) -> bool {
        self.stages & stage.bit() != 0
    }

    /// The fields the plugin reads at `stage`.
    pub fn reads_at(&self, stage: Stage) -> FieldSet {
        self.stage_reads
            .iter()
            .find(|reads| reads.stage == stage)
            .map_or(self.reads, |reads| reads.fields)
    }
}

/// One `key = value` of a plugin's configuration table, the value as text
/// (TOML strings as they are, integers, floats and booleans formatted:
/// `5000`, `0.01`, `true`), exactly what `get_config` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigEntry<'a> {
    /// The key.
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    /// The value, as text.
    #[serde(borrow)]
    pub value: Cow<'a, str>,
}

/// A plugin's `[plugins.<name>]` table, handed over at init: if the plugin's
/// `m3u_init` takes one `i32`, the host writes this at the arena start and
/// passes its encoded length.
///
/// The host sends the entries sorted by key (byte-wise) with no key twice;
/// an empty table is the single byte `00`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PluginConfig<'a> {
    /// The entries, sorted by key.
    #[serde(borrow)]
    pub entries: Vec<ConfigEntry<'a>>,
}

impl PluginConfig<'_> {
    /// The value for `key`, if the table has one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| entry.value.as_ref())
    }
}

/// Sets bit `index` of a [`StageOutput::Keep`] mask.
pub fn keep_mask_set(mask: &mut [u8], index: usize) {
    mask[index / 8] |= 1 << (index % 8);
}

/// Reads bit `index` of a [`StageOutput::Keep`] mask.
pub fn keep_mask_get(mask: &[u8], index: usize) -> bool {
    mask.get(index / 8)
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

/// Length in bytes of a keep mask for `channels` channels.
pub const fn keep_mask_len(channels: usize) -> usize {
    channels.div_ceil(8)
}

#[cfg(test)]
mod tests {
    //! Loopback tests in the style of postcard's `tests/loopback.rs`: every
    //! wire type and every enum variant goes through [`loopback`], which pins
    //! the encoded bytes (golden bytes) and decodes them back. If one fails,
    //! the format changed: bump [`ABI_VERSION`] and update `docs/ABI.md`.
    //!
    //! Reading the byte comments: integers and lengths are varints (7 bits a
    //! byte, low group first, `0x80` = more follows), strings and vectors are
    //! a varint length then the bytes/elements, structs are their fields in
    //! order, enums are the varint variant index then the variant's fields.
    use super::*;
    use alloc::vec;
    use core::fmt::Debug;

    /// Encodes `value` and checks the bytes are exactly `expected`; decodes
    /// `expected` back, checks every byte is consumed and the result equals
    /// `value`; checks every strict prefix of `expected` fails to decode.
    /// Returns the decoded value (borrowing from `expected`).
    #[track_caller]
    fn loopback<'de, T>(value: &T, expected: &'de [u8]) -> T
    where
        T: Serialize + Deserialize<'de> + PartialEq + Debug,
    {
        let bytes = postcard::to_allocvec(value).unwrap();
        assert_eq!(bytes, expected, "encoding of {value:?}");
        // `expected` equals `bytes` now; decoding it lets the result borrow.
        let (back, rest) = postcard::take_from_bytes::<T>(expected)
            .unwrap_or_else(|error| panic!("decoding {value:?}: {error}"));
        assert!(rest.is_empty(), "{} bytes left after {value:?}", rest.len());
        assert_eq!(&back, value, "decoded value");
        for cut in 0..expected.len() {
            assert!(
                postcard::from_bytes::<T>(&expected[..cut]).is_err(),
                "the first {cut} bytes of {value:?} decode"
            );
        }
        back
    }

    fn sample_channel() -> Channel<'static> {
        Channel {
            id: 300,
            source_id: 1,
            tvg_id: "a.b".into(),
            channel_name: "A".into(),
            stream_url: "u".into(),
            attributes: vec![Attribute {
                name: "x".into(),
                value: "y".into(),
            }],
            extras: vec!["#E".into()],
            ..Channel::default()
        }
    }

    /// A channel with only an id: what a `reads = NONE` plugin sees.
    fn bare_channel(id: u64) -> Channel<'static> {
        Channel {
            id,
            ..Channel::default()
        }
    }

    #[test]
    fn stage_loopback() {
        loopback(&Stage::SourceLoading, &[0]); // variant 0
        loopback(&Stage::DataMapping, &[1]); // variant 1
        loopback(&Stage::Filtering, &[2]); // variant 2
        loopback(&Stage::ChannelNumbering, &[3]); // variant 3
        loopback(&Stage::M3uGeneration, &[4]); // variant 4
    }

    #[test]
    fn memory_pressure_level_loopback() {
        loopback(&MemoryPressureLevel::Optimal, &[0]); // variant 0
        loopback(&MemoryPressureLevel::Moderate, &[1]); // variant 1
        loopback(&MemoryPressureLevel::High, &[2]); // variant 2
        loopback(&MemoryPressureLevel::Critical, &[3]); // variant 3
        loopback(&MemoryPressureLevel::Emergency, &[4]); // variant 4
    }

    #[test]
    fn field_loopback() {
        loopback(&Field::TvgId, &[0]); // variant 0
        loopback(&Field::TvgName, &[1]); // variant 1
        loopback(&Field::TvgChno, &[2]); // variant 2
        loopback(&Field::TvgLogo, &[3]); // variant 3
        loopback(&Field::TvgShift, &[4]); // variant 4
        loopback(&Field::GroupTitle, &[5]); // variant 5
        loopback(&Field::ChannelName, &[6]); // variant 6
        loopback(&Field::StreamUrl, &[7]); // variant 7
        loopback(&Field::Duration, &[8]); // variant 8
        loopback(&Field::VideoCodec, &[9]); // variant 9
        loopback(&Field::AudioCodec, &[10]); // variant 10
        loopback(&Field::Resolution, &[11]); // variant 11
        loopback(&Field::Attributes, &[12]); // variant 12
        loopback(&Field::Extras, &[13]); // variant 13
    }

    #[test]
    fn enums_encode_as_their_index() {
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&stage).unwrap(), [i as u8]);
            assert_eq!(Stage::from_u32(i as u32), Some(stage));
        }
        for (i, level) in MemoryPressureLevel::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&level).unwrap(), [i as u8]);
        }
        for (i, field) in Field::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&field).unwrap(), [i as u8]);
        }
        assert_eq!(Stage::from_u32(5), None);
    }

    #[test]
    fn unknown_variant_indices_are_errors() {
        assert!(postcard::from_bytes::<Stage>(&[5]).is_err());
        assert!(postcard::from_bytes::<MemoryPressureLevel>(&[5]).is_err());
        assert!(postcard::from_bytes::<Field>(&[14]).is_err());
        assert!(postcard::from_bytes::<PatchOp>(&[3, 1, b'x']).is_err());
        assert!(postcard::from_bytes::<StageOutput>(&[6, 0]).is_err());
    }

    #[test]
    fn field_set_loopback() {
        // u32 0
        loopback(&FieldSet::NONE, &[0x00]);
        // bit 0 = 1
        loopback(&FieldSet::of(&[Field::TvgId]), &[0x01]);
        // bits 0 and 6 = 0x41, below 0x80: one byte
        loopback(&FieldSet::of(&[Field::TvgId, Field::ChannelName]), &[0x41]);
        // bit 7 = 0x80 = 128: low group 0 with the continuation bit, then 1
        loopback(&FieldSet::of(&[Field::StreamUrl]), &[0x80, 0x01]);
        // bits 6 and 13 = 0x2040 = 8256: low group 0x40 | 0x80, then 8256 >> 7 = 0x40
        loopback(
            &FieldSet::of(&[Field::ChannelName, Field::Extras]),
            &[0xc0, 0x40],
        );
        // bits 0..=13 = 0x3fff: low group 0x7f | 0x80, then 0x3fff >> 7 = 0x7f
        loopback(&FieldSet::ALL, &[0xff, 0x7f]);
        // u32::MAX: four full groups, then the top 4 bits; unknown bits decode as sent
        loopback(&FieldSet(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    #[test]
    fn attribute_loopback() {
        // name "" (len 0), value "" (len 0)
        loopback(&Attribute::default(), &[0, 0]);
        // name: len 1, "x"; value: len 1, "y"
        let back = loopback(
            &Attribute {
                name: "x".into(),
                value: "y".into(),
            },
            &[1, b'x', 1, b'y'],
        );
        assert!(
            matches!(back.name, Cow::Borrowed(_)),
            "strings decode borrowed"
        );
        // name: len 1, "x"; value "é": len 2 (UTF-8 bytes, not chars), c3 a9
        loopback(
            &Attribute {
                name: "x".into(),
                value: "é".into(),
            },
            &[1, b'x', 2, 0xc3, 0xa9],
        );
    }

    #[test]
    fn channel_golden_bytes() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0xac, 0x02,          // id 300 (varint)
            0x01,                // source_id 1
            3, b'a', b'.', b'b', // tvg_id
            0,                   // tvg_name
            0, 0, 0, 0,          // tvg_chno, tvg_logo, tvg_shift, group_title
            1, b'A',             // channel_name
            1, b'u',             // stream_url
            0, 0, 0, 0,          // duration, video_codec, audio_codec, resolution
            1, 1, b'x', 1, b'y', // attributes: [("x","y")]
            1, 2, b'#', b'E',    // extras: ["#E"]
        ];
        let back = loopback(&sample_channel(), expected);
        assert!(
            matches!(back.tvg_id, Cow::Borrowed(_)),
            "strings decode borrowed"
        );
    }

    #[test]
    fn channel_loopback_default_and_every_field() {
        // id 0, source_id 0, 12 empty strings, no attributes, no extras
        loopback(&Channel::default(), &[0; 16]);
        // Every field set, each to a different letter, so the order is pinned.
        let full = Channel {
            id: u64::MAX,
            source_id: u32::MAX,
            tvg_id: "a".into(),
            tvg_name: "b".into(),
            tvg_chno: "c".into(),
            tvg_logo: "d".into(),
            tvg_shift: "e".into(),
            group_title: "f".into(),
            channel_name: "g".into(),
            stream_url: "h".into(),
            duration: "i".into(),
            video_codec: "j".into(),
            audio_codec: "k".into(),
            resolution: "l".into(),
            attributes: vec![
                Attribute {
                    name: "m".into(),
                    value: "n".into(),
                },
                Attribute {
                    name: "o".into(),
                    value: "p".into(),
                },
            ],
            extras: vec!["q".into(), "r".into()],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // id u64::MAX: 9 × 7 bits, then 1
            0xff, 0xff, 0xff, 0xff, 0x0f,   // source_id u32::MAX: 4 × 7 bits, then 4
            1, b'a',                        // tvg_id
            1, b'b',                        // tvg_name
            1, b'c',                        // tvg_chno
            1, b'd',                        // tvg_logo
            1, b'e',                        // tvg_shift
            1, b'f',                        // group_title
            1, b'g',                        // channel_name
            1, b'h',                        // stream_url
            1, b'i',                        // duration
            1, b'j',                        // video_codec
            1, b'k',                        // audio_codec
            1, b'l',                        // resolution
            2, 1, b'm', 1, b'n', 1, b'o', 1, b'p', // attributes: 2 × (name, value)
            2, 1, b'q', 1, b'r',            // extras: 2 strings
        ];
        loopback(&full, expected);
    }

    #[test]
    fn run_context_loopback() {
        // memory_pressure, available_memory, proxy_name "", base_url ""
        loopback(&RunContext::default(), &[0, 0, 0, 0]);
        let context = RunContext {
            memory_pressure: MemoryPressureLevel::Emergency,
            available_memory: 300,
            proxy_name: "p".into(),
            base_url: "http://h".into(),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            4,                   // memory_pressure Emergency
            0xac, 0x02,          // available_memory 300
            1, b'p',             // proxy_name "p"
            8, b'h', b't', b't', b'p', b':', b'/', b'/', b'h', // base_url "http://h"
        ];
        let back = loopback(&context, expected);
        assert!(matches!(back.base_url, Cow::Borrowed(_)));
    }

    /// Encodes `channels` with [`encode_stage_input`] and checks the bytes
    /// are `expected` and equal postcard's encoding of the decoded value.
    #[track_caller]
    fn encoded_input(header: InputHeader, channels: &[Channel<'_>], expected: &[u8]) {
        let mut buffer = [0u8; 512];
        let len = encode_stage_input(&mut buffer, header, channels).unwrap();
        assert_eq!(&buffer[..len], expected, "encoder output");
        let input = loopback(
            &postcard::from_bytes::<StageInput>(expected).unwrap(),
            expected,
        );
        assert_eq!(input.count as usize, channels.len());
        // Every shorter buffer is refused, never half-written as a success.
        for cut in 0..len {
            assert_eq!(
                encode_stage_input(&mut buffer[..cut], header, channels),
                Err(BufferFull)
            );
        }
    }

    #[test]
    fn stage_input_golden_bytes_empty_batch() {
        let header = InputHeader {
            batch_index: 3,
            memory_pressure: MemoryPressureLevel::High,
            fields: FieldSet::of(&[Field::TvgId, Field::ChannelName]),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            3,                   // batch_index 3
            2,                   // memory_pressure High
            0x41,                // fields: TvgId (bit 0) | ChannelName (bit 6)
            0,                   // count 0
            0, 0,                // ids, source_ids: empty
            2,                   // two columns
            0, 4, 0, 0, 0, 0, 0, //   tvg_id: no starts, offsets [0], no data
            0, 4, 0, 0, 0, 0, 0, //   channel_name: the same
        ];
        encoded_input(header, &[], expected);
    }

    #[test]
    fn stage_input_reads_none_golden_bytes() {
        // The `reads = NONE` example of docs/ABI.md: ids only.
        let header = InputHeader::default();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 0, 0,             // batch_index 0, Optimal, fields NONE
            2,                   // count 2
            16, 1, 0, 0, 0, 0, 0, 0, 0, 0x2c, 0x01, 0, 0, 0, 0, 0, 0, // ids 1, 300 (u64 LE)
            8, 0, 0, 0, 0, 1, 0, 0, 0,  // source_ids 0, 1 (u32 LE)
            0,                   // no column
        ];
        let mut second = bare_channel(300);
        second.source_id = 1;
        encoded_input(header, &[bare_channel(1), second], expected);
    }

    #[test]
    fn stage_input_golden_bytes_text_and_list_columns() {
        let header = InputHeader {
            fields: FieldSet::of(&[Field::ChannelName, Field::Attributes, Field::Extras]),
            ..InputHeader::default()
        };
        let mut second = sample_channel();
        second.id = 2;
        second.channel_name = "BC".into();
        second.attributes.clear();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 0,                // batch_index 0, Optimal
            0xc0, 0x60,          // fields: bits 6, 12 and 13 (0x3040)
            2,                   // count 2
            16, 0x2c, 0x01, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, // ids 300, 2
            8, 1, 0, 0, 0, 1, 0, 0, 0, // source_ids 1, 1
            3,                   // three columns
            // channel_name: no starts; offsets 0, 1, 3; data "ABC"
            0, 12, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 3, b'A', b'B', b'C',
            // attributes: starts 0, 2, 2 (one pair, then none); offsets 0, 1, 2; "xy"
            12, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0,
            12, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, b'x', b'y',
            // extras: starts 0, 1, 2; offsets 0, 2, 4; "#E#E"
            12, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0,
            12, 0, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4, b'#', b'E', b'#', b'E',
        ];
        let channels = [sample_channel(), second];
        encoded_input(header, &channels, expected);
        let input: StageInput = postcard::from_bytes(expected).unwrap();
        let view = BatchView::new(&input).unwrap();
        assert_eq!(view.len(), 2);
        assert_eq!((view.id(1), view.source_id(1)), (2, 1));
        assert_eq!(view.text(0, Field::ChannelName), "A");
        assert_eq!(view.text(1, Field::ChannelName), "BC");
        assert_eq!(view.text(0, Field::TvgId), "", "not projected");
        assert_eq!(view.attribute(0, "X"), Some("y"));
        assert_eq!(view.attributes(1).count(), 0);
        assert_eq!(view.extras(1).collect::<Vec<_>>(), ["#E"]);
        assert_eq!(view.text(2, Field::ChannelName), "", "past the end");
        let fields = FieldSet::of(&[Field::ChannelName, Field::Attributes, Field::Extras]);
        assert_eq!(view.channel(0), channels[0].project(fields));
    }

    #[test]
    fn the_reader_refuses_a_tenth_varint_byte_postcard_refuses() {
        // fuzz/README.md Findings 4: a length whose tenth byte is above 1.
        // Header 0, Optimal, NONE, count 0; then the ids' length as ten
        // varint bytes ending in 0x02; no source ids; no column.
        let bytes = [
            0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 0, 0,
        ];
        assert!(postcard::from_bytes::<StageInput>(&bytes).is_err());
        assert_eq!(BatchView::parse(&bytes).unwrap_err(), LayoutError::Encoding);
    }

    #[test]
    fn every_field_round_trips_through_the_columns() {
        let mut channel = sample_channel();
        for (n, field) in Field::ALL.into_iter().enumerate() {
            if let Some(slot) = channel.text_mut(field) {
                *slot = alloc::format!("v{n}é").into();
            }
        }
        let channels = [channel.clone(), bare_channel(9), channel];
        let mut buffer = vec![0u8; 4096];
        let header = InputHeader {
            fields: FieldSet::ALL,
            ..InputHeader::default()
        };
        let len = encode_stage_input(&mut buffer, header, &channels).unwrap();
        let input: StageInput = postcard::from_bytes(&buffer[..len]).unwrap();
        let view = BatchView::new(&input).unwrap();
        for (index, channel) in channels.iter().enumerate() {
            assert_eq!(&view.channel(index), channel);
        }
    }

    #[test]
    fn inconsistent_columns_are_refused_by_the_view() {
        let header = InputHeader {
            fields: FieldSet::of(&[Field::ChannelName]),
            ..InputHeader::default()
        };
        let mut buffer = [0u8; 128];
        let len = encode_stage_input(&mut buffer, header, &[sample_channel()]).unwrap();
        let good: StageInput = postcard::from_bytes(&buffer[..len]).unwrap();
        assert!(BatchView::new(&good).is_ok());
        let mut bad = good.clone();
        bad.count = 2;
        assert_eq!(BatchView::new(&bad).unwrap_err(), LayoutError::Ids);
        let mut bad = good.clone();
        bad.columns.clear();
        assert_eq!(BatchView::new(&bad).unwrap_err(), LayoutError::ColumnCount);
        let mut bad = good.clone();
        bad.columns[0].data = b"";
        assert_eq!(
            BatchView::new(&bad).unwrap_err(),
            LayoutError::Column(Field::ChannelName)
        );
        // Bytes that are not UTF-8 read as empty instead of failing.
        let mut odd = good.clone();
        odd.columns[0].data = &[0xff];
        assert_eq!(
            BatchView::new(&odd).unwrap().text(0, Field::ChannelName),
            ""
        );
    }

    #[test]
    fn patch_op_loopback() {
        // variant 0 SetField, field 5 GroupTitle, value: len 1, "G"
        loopback(
            &PatchOp::SetField(Field::GroupTitle, "G".into()),
            &[0, 5, 1, b'G'],
        );
        // variant 1 SetAttribute, name: len 1, "x", value: len 1, "y"
        let back = loopback(
            &PatchOp::SetAttribute("x".into(), "y".into()),
            &[1, 1, b'x', 1, b'y'],
        );
        assert!(matches!(
            back,
            PatchOp::SetAttribute(Cow::Borrowed(_), Cow::Borrowed(_))
        ));
        // variant 2 RemoveAttribute, name: len 1, "x"
        loopback(&PatchOp::RemoveAttribute("x".into()), &[2, 1, b'x']);
    }

    #[test]
    fn patch_loopback() {
        // index 2, op: SetField (0), GroupTitle (5), len 1, "G"
        loopback(
            &Patch {
                index: 2,
                op: PatchOp::SetField(Field::GroupTitle, "G".into()),
            },
            &[2, 0, 5, 1, b'G'],
        );
        // index 300 (ac 02), op: RemoveAttribute (2), len 1, "x"
        loopback(
            &Patch {
                index: 300,
                op: PatchOp::RemoveAttribute("x".into()),
            },
            &[0xac, 0x02, 2, 1, b'x'],
        );
    }

    #[test]
    fn stage_output_golden_bytes() {
        // variant 1 Keep, mask: len 1, 0b101
        let back = loopback(&StageOutput::Keep(Cow::Borrowed(&[0b101])), &[1, 1, 0b101]);
        assert!(matches!(back, StageOutput::Keep(Cow::Borrowed(_))));
        // variant 1 Keep, mask: len 2, 0b0000_0101, 0b10 (10 channels, keep 0, 2, 9)
        loopback(
            &StageOutput::Keep(Cow::Borrowed(&[0b0000_0101, 0b10])),
            &[1, 2, 0b0000_0101, 0b10],
        );
        // variant 1 Keep, mask: len 0
        loopback(&StageOutput::Keep(Cow::Borrowed(&[])), &[1, 0]);
        // variant 2 Patches, 1 patch: index 2, SetField (0), GroupTitle (5), len 1, "G"
        loopback(
            &StageOutput::Patches(vec![Patch {
                index: 2,
                op: PatchOp::SetField(Field::GroupTitle, "G".into()),
            }]),
            &[2, 1, 2, 0, 5, 1, b'G'],
        );
        // variant 2 Patches, 0 patches: change nothing
        loopback(&StageOutput::Patches(vec![]), &[2, 0]);
        // variant 0 Channels, 0 channels
        loopback(&StageOutput::Channels(vec![]), &[0, 0]);
        // variant 3 KeepAll: nothing else
        loopback(&StageOutput::KeepAll, &[3]);
    }

    #[test]
    fn changes_and_rebuild_golden_bytes() {
        let mut values = FieldValues::new(Field::GroupTitle);
        values.push(1, "News");
        values.push(300, "");
        let changes = Changes {
            fields: vec![values],
            patches: vec![Patch {
                index: 0,
                op: PatchOp::RemoveAttribute("x".into()),
            }],
            attributes: vec![AttributeValues {
                name: "a".into(),
                values: {
                    let mut values = Values::default();
                    values.push(2, "v");
                    values
                },
            }],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            4,                          // variant 4 Changes
            1,                          // one field column:
            5,                          //   GroupTitle
            8, 1, 0, 0, 0, 0x2c, 1, 0, 0,  // indices 1, 300 (u32 LE)
            12, 0, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, // offsets 0, 4, 4
            4, b'N', b'e', b'w', b's', //   data "News"
            1, 0, 2, 1, b'x',           // one patch: index 0, RemoveAttribute "x"
            1, 1, b'a',                 // one attribute column: name "a",
            4, 2, 0, 0, 0,              //   indices 2,
            8, 0, 0, 0, 0, 1, 0, 0, 0,  //   offsets 0, 1,
            1, b'v',                    //   data "v"
        ];
        let back = loopback(&StageOutput::Changes(changes.clone()), expected);
        assert!(matches!(
            back,
            StageOutput::Changes(Changes { ref fields, .. }) if matches!(fields[0].values.data, Cow::Borrowed(_))
        ));
        let rebuild = StageOutput::Rebuild(Rebuild {
            order: Cow::Borrowed(&[1, 0, 0, 0, 0, 0, 0, 0]),
            changes: Changes::default(),
            added: vec![bare_channel(5)],
        });
        #[rustfmt::skip]
        let expected: &[u8] = &[
            5,                          // variant 5 Rebuild
            8, 1, 0, 0, 0, 0, 0, 0, 0,  // order: positions 1, 0
            0, 0, 0,                    // no changes (no columns, patches or attributes)
            1,                          // one added channel:
            5, 0,                       //   id 5, source_id 0
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 12 empty strings, no lists
        ];
        loopback(&rebuild, expected);
    }

    #[test]
    fn stage_output_loopback_every_patch_op_and_a_channel() {
        let patches = StageOutput::Patches(vec![
            Patch {
                index: 0,
                op: PatchOp::SetField(Field::TvgChno, "7".into()),
            },
            Patch {
                index: 1,
                op: PatchOp::SetAttribute("x".into(), "y".into()),
            },
            Patch {
                index: 300,
                op: PatchOp::RemoveAttribute("x".into()),
            },
        ]);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            2,                          // variant 2 Patches
            3,                          // 3 patches:
            0, 0, 2, 1, b'7',           //   index 0, SetField (0), TvgChno (2), "7"
            1, 1, 1, b'x', 1, b'y',     //   index 1, SetAttribute (1), "x", "y"
            0xac, 0x02, 2, 1, b'x',     //   index 300, RemoveAttribute (2), "x"
        ];
        loopback(&patches, expected);
        let channels = StageOutput::Channels(vec![bare_channel(1)]);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0,                          // variant 0 Channels
            1,                          // 1 channel:
            1, 0,                       //   id 1, source_id 0
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 12 empty strings
            0, 0,                       //   no attributes, no extras
        ];
        loopback(&channels, expected);
    }

    #[test]
    fn wire_tags_are_the_encoded_variant_indices() {
        // Exhaustive matches: a new variant does not compile until it has a tag.
        fn answer_tag(answer: &StageOutput<'_>) -> u8 {
            match answer {
                StageOutput::Channels(_) => wire_tags::ANSWER_CHANNELS,
                StageOutput::Keep(_) => wire_tags::ANSWER_KEEP,
                StageOutput::Patches(_) => wire_tags::ANSWER_PATCHES,
                StageOutput::KeepAll => wire_tags::ANSWER_KEEP_ALL,
                StageOutput::Changes(_) => wire_tags::ANSWER_CHANGES,
                StageOutput::Rebuild(_) => wire_tags::ANSWER_REBUILD,
            }
        }
        fn patch_tag(op: &PatchOp<'_>) -> u8 {
            match op {
                PatchOp::SetField(..) => wire_tags::PATCH_SET_FIELD,
                PatchOp::SetAttribute(..) => wire_tags::PATCH_SET_ATTRIBUTE,
                PatchOp::RemoveAttribute(_) => wire_tags::PATCH_REMOVE_ATTRIBUTE,
            }
        }
        for answer in [
            StageOutput::Channels(vec![bare_channel(1)]),
            StageOutput::Keep(Cow::Borrowed(&[1])),
            StageOutput::Patches(vec![]),
            StageOutput::KeepAll,
            StageOutput::Changes(Changes::default()),
            StageOutput::Rebuild(Rebuild::default()),
        ] {
            let tag = answer_tag(&answer);
            assert!(tag < 0x80, "a one-byte varint");
            assert_eq!(
                postcard::to_allocvec(&answer).unwrap()[0],
                tag,
                "{answer:?}"
            );
        }
        for op in [
            PatchOp::SetField(Field::TvgId, "".into()),
            PatchOp::SetAttribute("".into(), "".into()),
            PatchOp::RemoveAttribute("".into()),
        ] {
            let tag = patch_tag(&op);
            assert!(tag < 0x80, "a one-byte varint");
            assert_eq!(postcard::to_allocvec(&op).unwrap()[0], tag, "{op:?}");
        }
    }

    #[test]
    fn plugin_memory_requirements_loopback() {
        // min_bytes 0, recommended_bytes 0, max_pressure Optimal (0)
        loopback(&PluginMemoryRequirements::default(), &[0, 0, 0]);
        // min_bytes 0, recommended_bytes 128 (80 01), max_pressure Critical (3)
        loopback(
            &PluginMemoryRequirements {
                min_bytes: 0,
                recommended_bytes: 128,
                max_pressure: MemoryPressureLevel::Critical,
            },
            &[0, 0x80, 0x01, 3],
        );
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x80, 0x80, 0x80, 0x01,     // min_bytes 2 MiB = 1 << 21: three empty groups, then 1
            0x80, 0x80, 0x80, 0x20,     // recommended_bytes 64 MiB = 1 << 26: three empty groups, then 1 << 5
            4,                          // max_pressure Emergency
        ];
        loopback(
            &PluginMemoryRequirements {
                min_bytes: 2 << 20,
                recommended_bytes: 64 << 20,
                max_pressure: MemoryPressureLevel::Emergency,
            },
            expected,
        );
    }

    #[test]
    fn plugin_info_golden_bytes() {
        let info = PluginInfo {
            name: "n".into(),
            version: "1".into(),
            description: "".into(),
            author: "".into(),
            stages: Stage::Filtering.bit(),
            reads: FieldSet::of(&[Field::StreamUrl]),
            memory: PluginMemoryRequirements {
                min_bytes: 0,
                recommended_bytes: 128,
                max_pressure: MemoryPressureLevel::Critical,
            },
            parallel_safe: true,
            stage_reads: vec![StageReads {
                stage: Stage::Filtering,
                fields: FieldSet::of(&[Field::TvgId]),
            }],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            1, b'n', 1, b'1',    // name "n", version "1"
            0, 0,                // description "", author ""
            4,                   // stages: 1 << 2 (Filtering)
            0x80, 0x01,          // reads: 0x80 (StreamUrl)
            0,                   // memory.min_bytes 0
            0x80, 0x01,          // memory.recommended_bytes 128
            3,                   // memory.max_pressure Critical
            1,                   // parallel_safe true
            1, 2, 1,             // stage_reads: one, Filtering reads TvgId (bit 0)
        ];
        let back = loopback(&info, expected);
        assert_eq!(
            back.reads_at(Stage::Filtering),
            FieldSet::of(&[Field::TvgId])
        );
        assert_eq!(
            back.reads_at(Stage::DataMapping),
            FieldSet::of(&[Field::StreamUrl])
        );
    }

    #[test]
    fn plugin_info_loopback_default_and_full() {
        // 4 empty strings, stages 0, reads NONE, memory 0, 0, Optimal,
        // parallel_safe false, no stage_reads
        loopback(&PluginInfo::default(), &[0; 11]);
        let info = PluginInfo {
            name: "dedup".into(),
            version: "0.1.0".into(),
            description: "d".into(),
            author: "a".into(),
            stages: Stage::ALL.iter().map(|s| s.bit()).sum(),
            reads: FieldSet::ALL,
            memory: PluginMemoryRequirements {
                min_bytes: 1,
                recommended_bytes: 2,
                max_pressure: MemoryPressureLevel::Optimal,
            },
            parallel_safe: false,
            stage_reads: vec![],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            5, b'd', b'e', b'd', b'u', b'p', // name "dedup"
            5, b'0', b'.', b'1', b'.', b'0', // version "0.1.0"
            1, b'd',                         // description "d"
            1, b'a',                         // author "a"
            0x1f,                            // stages: bits 0..=4, every stage
            0xff, 0x7f,                      // reads: ALL = 0x3fff
            1, 2, 0,                         // memory: min 1, recommended 2, Optimal
            0, 0,                            // not parallel-safe, no stage_reads
        ];
        let back = loopback(&info, expected);
        assert!(Stage::ALL.into_iter().all(|stage| back.supports(stage)));
    }

    #[test]
    fn config_entry_loopback() {
        // key "", value ""
        loopback(&ConfigEntry::default(), &[0, 0]);
        // key: len 1, "k"; value: len 1, "v"
        loopback(
            &ConfigEntry {
                key: "k".into(),
                value: "v".into(),
            },
            &[1, b'k', 1, b'v'],
        );
    }

    #[test]
    fn plugin_config_golden_bytes() {
        let config = PluginConfig {
            entries: vec![
                ConfigEntry {
                    key: "case".into(),
                    value: "upper".into(),
                },
                ConfigEntry {
                    key: "n".into(),
                    value: "300".into(),
                },
            ],
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            2,                                  // two entries
            4, b'c', b'a', b's', b'e',          // key "case"
            5, b'u', b'p', b'p', b'e', b'r',    // value "upper"
            1, b'n',                            // key "n"
            3, b'3', b'0', b'0',                // value "300" (text, not a varint)
        ];
        // loopback also checks that a cut table is an error, not a shorter one.
        let back = loopback(&config, expected);
        assert!(
            matches!(back.entries[1].value, Cow::Borrowed(_)),
            "strings decode borrowed"
        );
        assert_eq!(back.get("n"), Some("300"));
        assert_eq!(back.get("missing"), None);
    }

    #[test]
    fn plugin_config_empty_and_long_value_golden_bytes() {
        // 0 entries
        loopback(&PluginConfig::default(), &[0]);
        // A 200-byte value: its length is the two-byte varint c8 01
        // (200 = 0x48 | 0x80, then 200 >> 7 = 1).
        let long = "v".repeat(200);
        let config = PluginConfig {
            entries: vec![ConfigEntry {
                key: "k".into(),
                value: long.as_str().into(),
            }],
        };
        // 1 entry, key: len 1, "k", value: len 200 (c8 01), 200 × "v"
        let mut expected = vec![1, 1, b'k', 0xc8, 0x01];
        expected.extend_from_slice(long.as_bytes());
        loopback(&config, &expected);
    }

    #[test]
    fn field_names_round_trip_and_accept_dashes() {
        for field in Field::ALL {
            assert_eq!(Field::from_name(field.name()), Some(field));
        }
        assert_eq!(Field::from_name("TVG-ID"), Some(Field::TvgId));
        assert_eq!(Field::from_name("tvg_idx"), None);
    }

    #[test]
    fn projection_keeps_only_requested_fields() {
        let channel = sample_channel();
        let projected = channel.project(FieldSet::of(&[Field::ChannelName]));
        assert_eq!(projected.channel_name, "A");
        assert_eq!(projected.tvg_id, "");
        assert!(projected.attributes.is_empty() && projected.extras.is_empty());
        assert_eq!(projected.id, 300);
        assert_eq!(channel.project(FieldSet::ALL), channel);
    }

    #[test]
    fn keep_mask_helpers() {
        let mut mask = vec![0u8; keep_mask_len(10)];
        assert_eq!(mask.len(), 2);
        keep_mask_set(&mut mask, 9);
        assert!(keep_mask_get(&mask, 9) && !keep_mask_get(&mask, 8));
        assert!(!keep_mask_get(&mask, 100));
    }
}
