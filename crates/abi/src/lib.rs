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
//! use m3u_proxy_plugin_abi::{Channel, ChannelBatch};
//! let batch = ChannelBatch { channels: vec![Channel { id: 7, ..Channel::default() }] };
//! let bytes = postcard::to_allocvec(&batch).unwrap();
//! let back: ChannelBatch = postcard::from_bytes(&bytes).unwrap();
//! assert_eq!(back.channels[0].id, 7);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::borrow::Cow;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Version of the boundary described in `docs/ABI.md`. A plugin carries the
/// version it was built for in the `m3u_abi_version` custom section; the host
/// refuses any other value before it runs a single guest instruction.
pub const ABI_VERSION: u32 = 1;

/// Name of the custom section holding [`ABI_VERSION`] as 4 little-endian bytes.
pub const ABI_VERSION_SECTION: &str = "m3u_abi_version";

/// Names of the functions a plugin exports.
pub mod exports {
    /// `() -> i32`: address of the arena in linear memory.
    pub const ARENA_PTR: &str = "m3u_arena_ptr";
    /// `() -> i32`: capacity of the arena in bytes.
    pub const ARENA_CAPACITY: &str = "m3u_arena_capacity";
    /// `() -> i32`: writes [`crate::PluginInfo`] to the arena start, returns its length.
    pub const PLUGIN_INFO: &str = "m3u_plugin_info";
    /// `() -> i32` or `(config_len: i32) -> i32`: one-time initialisation;
    /// returns a [`crate::status`] code. With the parameter, the host first
    /// writes the plugin's [`crate::PluginConfig`] at the arena start and
    /// passes its encoded length.
    pub const INIT: &str = "m3u_init";
    /// `(stage: i32, input_len: i32) -> i32`: runs one stage call; returns a status code.
    pub const EXECUTE_STAGE: &str = "m3u_execute_stage";
    /// `(level: i32) -> i32`: 1 if the plugin will run at this pressure level, else 0.
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
    /// Every host function the host knows, in the order of `docs/ABI.md`.
    pub const ALL: [&str; 5] = [
        LOG,
        GET_MEMORY_USAGE,
        READ_CHANNELS,
        WRITE_CHANNELS,
        GET_CONFIG,
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

/// A channel with the number the numbering stage gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberedChannel<'a> {
    /// The assigned channel number (`tvg-chno`).
    pub number: u32,
    /// The channel.
    #[serde(borrow)]
    pub channel: Channel<'a>,
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

/// What the host sends to `execute_stage`: the context and one batch.
///
/// Channels are **projected** on the wire: after `id` and `source_id`, only
/// the fields in `fields` are present, in [`Field`] order; the others are
/// absent and decode as empty. A plugin that reads two fields therefore
/// decodes two strings per channel, not fourteen. The host encodes it from a
/// borrowed slice with [`StageInputView`]; both give the same bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageInput<'a> {
    /// Context of this call.
    pub context: StageContext<'a>,
    /// The fields present in `channels`; the others are empty.
    pub fields: FieldSet,
    /// The batch.
    pub channels: Vec<Channel<'a>>,
}

/// Encodes like [`StageInput`] from borrowed parts, without copying channels.
#[derive(Clone, Copy, Debug)]
pub struct StageInputView<'v, 'a> {
    /// Context of this call.
    pub context: &'v StageContext<'a>,
    /// The fields to send.
    pub fields: FieldSet,
    /// The batch.
    pub channels: &'v [Channel<'a>],
}

mod projected {
    //! The projected channel encoding of [`super::StageInput`].
    use super::*;
    use core::fmt;
    use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, SerializeTuple};
    use serde::{Deserializer, Serializer};

    /// Number of wire elements of a projected channel.
    fn element_count(fields: FieldSet) -> usize {
        2 + Field::ALL.iter().filter(|f| fields.contains(**f)).count()
    }

    struct ProjectedChannel<'v, 'a> {
        channel: &'v Channel<'a>,
        fields: FieldSet,
    }

    impl Serialize for ProjectedChannel<'_, '_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut tuple = serializer.serialize_tuple(element_count(self.fields))?;
            tuple.serialize_element(&self.channel.id)?;
            tuple.serialize_element(&self.channel.source_id)?;
            for field in Field::ALL {
                if !self.fields.contains(field) {
                    continue;
                }
                match field {
                    Field::Attributes => tuple.serialize_element(&self.channel.attributes)?,
                    Field::Extras => tuple.serialize_element(&self.channel.extras)?,
                    text => tuple.serialize_element(self.channel.text(text))?,
                }
            }
            tuple.end()
        }
    }

    struct ProjectedChannels<'v, 'a> {
        channels: &'v [Channel<'a>],
        fields: FieldSet,
    }

    impl Serialize for ProjectedChannels<'_, '_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(self.channels.len()))?;
            for channel in self.channels {
                seq.serialize_element(&ProjectedChannel {
                    channel,
                    fields: self.fields,
                })?;
            }
            seq.end()
        }
    }

    impl Serialize for StageInputView<'_, '_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut tuple = serializer.serialize_tuple(3)?;
            tuple.serialize_element(self.context)?;
            tuple.serialize_element(&self.fields)?;
            tuple.serialize_element(&ProjectedChannels {
                channels: self.channels,
                fields: self.fields,
            })?;
            tuple.end()
        }
    }

    impl Serialize for StageInput<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            StageInputView {
                context: &self.context,
                fields: self.fields,
                channels: &self.channels,
            }
            .serialize(serializer)
        }
    }

    struct ChannelSeed(FieldSet);

    impl<'de> DeserializeSeed<'de> for ChannelSeed {
        type Value = Channel<'de>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_tuple(element_count(self.0), self)
        }
    }

    fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(seq: &mut A) -> Result<T, A::Error> {
        seq.next_element()?
            .ok_or_else(|| A::Error::custom("projected channel ends early"))
    }

    impl<'de> Visitor<'de> for ChannelSeed {
        type Value = Channel<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a projected channel")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Channel<'de>, A::Error> {
            let mut channel = Channel {
                id: next(&mut seq)?,
                source_id: next(&mut seq)?,
                ..Channel::default()
            };
            for field in Field::ALL {
                if !self.0.contains(field) {
                    continue;
                }
                match field {
                    Field::Attributes => channel.attributes = next(&mut seq)?,
                    Field::Extras => channel.extras = next(&mut seq)?,
                    text => {
                        let value: &'de str = next(&mut seq)?;
                        if let Some(slot) = channel.text_mut(text) {
                            *slot = Cow::Borrowed(value);
                        }
                    }
                }
            }
            Ok(channel)
        }
    }

    struct ChannelsSeed(FieldSet);

    impl<'de> DeserializeSeed<'de> for ChannelsSeed {
        type Value = Vec<Channel<'de>>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for ChannelsSeed {
        type Value = Vec<Channel<'de>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of projected channels")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // Cap the up-front allocation: the length prefix comes from the
            // other side and must not decide how much we reserve.
            let mut channels = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(channel) = seq.next_element_seed(ChannelSeed(self.0))? {
                channels.push(channel);
            }
            Ok(channels)
        }
    }

    struct StageInputVisitor;

    impl<'de> Visitor<'de> for StageInputVisitor {
        type Value = StageInput<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a StageInput")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StageInput<'de>, A::Error> {
            let context = next(&mut seq)?;
            let fields: FieldSet = next(&mut seq)?;
            let channels = seq
                .next_element_seed(ChannelsSeed(fields))?
                .ok_or_else(|| A::Error::custom("StageInput ends before its channels"))?;
            Ok(StageInput {
                context,
                fields,
                channels,
            })
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for StageInput<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_tuple(3, StageInputVisitor)
        }
    }
}

/// One change to one channel of the input batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatchOp<'a> {
    /// Replace a text field.
    SetField(Field, #[serde(borrow)] Cow<'a, str>),
    /// Set or add an extra attribute (name, value).
    SetAttribute(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>),
    /// Remove an extra attribute by name (case-insensitive).
    RemoveAttribute(#[serde(borrow)] Cow<'a, str>),
}

/// A [`PatchOp`] for the channel at `index` in the input batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch<'a> {
    /// Position of the channel in the input batch.
    pub index: u32,
    /// The change.
    #[serde(borrow)]
    pub op: PatchOp<'a>,
}

/// What a plugin answers for one batch (sent with `write_channels`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOutput<'a> {
    /// The batch, replaced whole. Only for plugins that read every field;
    /// a filter may only return a subsequence of its input (same ids).
    Channels(#[serde(borrow)] Vec<Channel<'a>>),
    /// Keep/drop bitmask, bit `i % 8` of byte `i / 8` for channel `i`
    /// (1 = keep). Exactly `ceil(n / 8)` bytes.
    Keep(#[serde(borrow)] Cow<'a, [u8]>),
    /// Field changes; channels not named are unchanged.
    Patches(#[serde(borrow)] Vec<Patch<'a>>),
}

/// A batch of channels (the host's unit of work, also handy in tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelBatch<'a> {
    /// The channels.
    #[serde(borrow)]
    pub channels: Vec<Channel<'a>>,
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
    /// Fields the plugin reads; the host sends only these.
    pub reads: FieldSet,
    /// Memory needs.
    pub memory: PluginMemoryRequirements,
}

impl PluginInfo<'_> {
    /// True if the plugin implements `stage`.
    pub fn supports(&self, stage: Stage) -> bool {
        self.stages & stage.bit() != 0
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

/// Counters of one pipeline run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStats {
    /// Channels read from the sources.
    pub channels_loaded: u64,
    /// Channels written to the playlist.
    pub channels_written: u64,
    /// Channels dropped by filtering.
    pub channels_filtered_out: u64,
    /// Entries skipped as malformed while reading sources.
    pub malformed_entries: u64,
    /// Batches that went through the pipeline.
    pub batches: u64,
    /// Plugin calls made.
    pub plugin_calls: u64,
    /// Plugin calls that failed.
    pub plugin_failures: u64,
    /// Batches re-run by a fallback strategy.
    pub fallbacks: u64,
    /// Fuel consumed by all plugins.
    pub fuel_consumed: u64,
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
    //! Golden bytes: these pin the wire format. If one fails, the format
    //! changed: bump [`ABI_VERSION`] and update `docs/ABI.md`.
    use super::*;
    use alloc::vec;

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

    #[test]
    fn channel_golden_bytes() {
        let bytes = postcard::to_allocvec(&sample_channel()).unwrap();
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
        assert_eq!(bytes, expected);
        let back: Channel = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, sample_channel());
        assert!(
            matches!(back.tvg_id, Cow::Borrowed(_)),
            "strings decode borrowed"
        );
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
    fn stage_output_golden_bytes() {
        let keep = StageOutput::Keep(Cow::Borrowed(&[0b101]));
        assert_eq!(postcard::to_allocvec(&keep).unwrap(), [1, 1, 0b101]);
        let patches = StageOutput::Patches(vec![Patch {
            index: 2,
            op: PatchOp::SetField(Field::GroupTitle, "G".into()),
        }]);
        assert_eq!(
            postcard::to_allocvec(&patches).unwrap(),
            [2, 1, 2, 0, 5, 1, b'G']
        );
        let channels = StageOutput::Channels(vec![]);
        assert_eq!(postcard::to_allocvec(&channels).unwrap(), [0, 0]);
    }

    #[test]
    fn stage_input_golden_bytes() {
        let input = StageInput {
            context: StageContext {
                stage: Stage::Filtering,
                memory_pressure: MemoryPressureLevel::High,
                available_memory: 1,
                proxy_name: "p".into(),
                base_url: "".into(),
                batch_index: 3,
            },
            fields: FieldSet::of(&[Field::TvgId, Field::ChannelName]),
            channels: vec![],
        };
        let bytes = postcard::to_allocvec(&input).unwrap();
        assert_eq!(bytes, [2, 2, 1, 1, b'p', 0, 3, 0x41, 0]);
    }

    #[test]
    fn stage_input_sends_only_the_declared_fields() {
        let channel = sample_channel();
        let context = StageContext::default();
        let fields = FieldSet::of(&[Field::ChannelName, Field::Extras]);
        let view = StageInputView {
            context: &context,
            fields,
            channels: core::slice::from_ref(&channel),
        };
        let bytes = postcard::to_allocvec(&view).unwrap();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 0, 0, 0, 0, 0,    // StageContext::default()
            0xc0, 0x40,          // fields: bits 6 and 13 (8256)
            1,                   // one channel
            0xac, 0x02, 0x01,    // id 300, source_id 1
            1, b'A',             // channel_name
            1, 2, b'#', b'E',    // extras
        ];
        assert_eq!(bytes, expected);
        let back: StageInput = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.channels, [channel.project(fields)]);
        assert!(matches!(back.channels[0].channel_name, Cow::Borrowed(_)));
        // The owned form encodes the same way.
        assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
        // Every field: the same as a full channel after id and source_id.
        let all = StageInputView {
            context: &context,
            fields: FieldSet::ALL,
            channels: core::slice::from_ref(&channel),
        };
        let full = postcard::to_allocvec(&all).unwrap();
        assert!(full.ends_with(&postcard::to_allocvec(&channel).unwrap()));
    }

    #[test]
    fn truncated_stage_input_is_an_error_not_a_panic() {
        let channel = sample_channel();
        let context = StageContext::default();
        let view = StageInputView {
            context: &context,
            fields: FieldSet::ALL,
            channels: core::slice::from_ref(&channel),
        };
        let bytes = postcard::to_allocvec(&view).unwrap();
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<StageInput>(&bytes[..cut]).is_err());
        }
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
        };
        let bytes = postcard::to_allocvec(&info).unwrap();
        assert_eq!(
            bytes,
            [1, b'n', 1, b'1', 0, 0, 4, 0x80, 0x01, 0, 0x80, 0x01, 3]
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
        let bytes = postcard::to_allocvec(&config).unwrap();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            2,                                  // two entries
            4, b'c', b'a', b's', b'e',          // key "case"
            5, b'u', b'p', b'p', b'e', b'r',    // value "upper"
            1, b'n',                            // key "n"
            3, b'3', b'0', b'0',                // value "300" (text, not a varint)
        ];
        assert_eq!(bytes, expected);
        let back: PluginConfig = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, config);
        assert!(
            matches!(back.entries[1].value, Cow::Borrowed(_)),
            "strings decode borrowed"
        );
        assert_eq!(back.get("n"), Some("300"));
        assert_eq!(back.get("missing"), None);
        // Cut anywhere, it is an error, not a shorter table.
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<PluginConfig>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn plugin_config_empty_and_long_value_golden_bytes() {
        let empty = PluginConfig::default();
        let bytes = postcard::to_allocvec(&empty).unwrap();
        assert_eq!(bytes, [0]);
        assert_eq!(postcard::from_bytes::<PluginConfig>(&bytes).unwrap(), empty);
        // A 200-byte value: its length is the two-byte varint c8 01.
        let long = "v".repeat(200);
        let config = PluginConfig {
            entries: vec![ConfigEntry {
                key: "k".into(),
                value: long.as_str().into(),
            }],
        };
        let bytes = postcard::to_allocvec(&config).unwrap();
        assert_eq!(bytes[..5], [1, 1, b'k', 0xc8, 0x01]);
        assert_eq!(bytes.len(), 5 + 200);
        assert!(bytes[5..].iter().all(|b| *b == b'v'));
        let back: PluginConfig = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, config);
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
