//! `m3u-proxy-plugin-sdk`: write plugins for `m3u-plugin-host` in safe Rust.
//!
//! A plugin is a `cdylib` built for `wasm32-unknown-unknown`. It implements
//! [`Plugin`] plus one trait per stage it handles, and registers itself with
//! [`export_plugin!`]. The SDK owns every export, the fixed arena and all
//! `unsafe` code: an author writes no `unsafe` and never touches a pointer.
//!
//! ```ignore
//! use m3u_proxy_plugin_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct DropAdult;
//!
//! impl Plugin for DropAdult {
//!     const DESCRIPTION: &'static str = "Drops channels in adult groups";
//!     // Only group-title is sent to this plugin; the rest reads as empty.
//!     const READS: FieldSet = FieldSet::of(&[Field::GroupTitle]);
//!     fn as_filter(&mut self) -> Option<&mut dyn Filter> {
//!         Some(self)
//!     }
//! }
//!
//! impl Filter for DropAdult {
//!     fn keep(&mut self, _ctx: &StageContext<'_>, channel: ChannelRef<'_>) -> bool {
//!         !channel.group_title().to_ascii_lowercase().contains("adult")
//!     }
//! }
//!
//! export_plugin!(DropAdult, "drop_adult");
//! ```
//!
//! The batch arrives as columns (ABI 2, `docs/ABI.md`): a [`ChannelRef`]'s
//! accessors are slice look-ups returning `&str`, and nothing is decoded or
//! allocated per channel. Fields a plugin does not read are not sent: the
//! constant [`Plugin::READS`], or [`Plugin::reads`] decided after `init`
//! from the configuration.
//!
//! Settings: the plugin's `[plugins.<name>]` table reaches it at init; read
//! it with [`config::get`] in [`Plugin::init`]. That needs no host function
//! beyond the default allowlist (`get_config` is imported only by plugins
//! that call [`config::lookup_live`]).
//!
//! Stages and their traits:
//! - [`Filter`]: keep/drop per channel (sent as a bitmask, or "keep all");
//!   filtering by default;
//! - [`Mapper`]: field changes per channel (sent as columns of new values);
//!   data_mapping by default, any stage with [`Mapper::stages`] (e.g. a URL
//!   rewrite at m3u_generation);
//! - [`Numberer`]: a number per channel (channel_numbering);
//! - [`Transformer`]: rebuild the batch (reorder, drop, add channels), for
//!   source_loading and m3u_generation.
//!
//! Natively (not on wasm32) the host functions have fallbacks, so a plugin
//! crate's unit tests run the plugin itself through [`testing::TestHost`].
#![warn(missing_docs)]
#![no_std]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod arena;
mod batch;
pub mod config;
#[doc(hidden)]
pub mod dispatcher;
mod hostcalls;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

pub use m3u_proxy_plugin_abi as abi;
pub use m3u_proxy_plugin_abi::{
    Channel, Field, FieldSet, MemoryPressureLevel, Patch, PatchOp, Stage, StageContext,
};

pub use arena::{ARENA_BYTES, DATA_BYTES, SCRATCH_BYTES};
pub use batch::{Batch, ChannelRef};
pub use hostcalls::{claim_keys, log, memory_usage, MAX_CLAIM_KEY_BYTES};

/// Everything a plugin author needs, in one import.
pub mod prelude {
    pub use crate::{
        config, export_plugin, log_error, log_info, log_warn, push_decimal, Batch, Channel,
        ChannelRef, Field, FieldSet, Filter, KeepMask, Mapper, MemoryPressureLevel, Numberer,
        Patches, Plugin, PluginError, Rebuilt, Stage, StageContext, Transformer,
    };
    pub use alloc::borrow::Cow;
}

/// Appends `value` in decimal, without the formatting machinery.
///
/// Written as a loop whose length LLVM cannot know, on purpose: a digit
/// loop over a fixed 20-byte buffer gets unrolled 20 times, and wasmi
/// charges the fuel of all 20 copies on every call, however few digits the
/// number has.
pub fn push_decimal(out: &mut alloc::string::String, value: u64) {
    let mut divisor = 1u64;
    while value / divisor >= 10 {
        divisor *= 10;
    }
    loop {
        out.push(char::from(b'0' + (value / divisor % 10) as u8));
        if divisor == 1 {
            break;
        }
        divisor /= 10;
    }
}

/// Log levels of the host's `log` function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Progress worth telling the operator.
    Info = 3,
    /// Details for plugin authors.
    Debug = 4,
}

/// Why a plugin call failed; each maps to a status code of the ABI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginError {
    /// The plugin does not handle this stage.
    UnsupportedStage,
    /// A configuration value is missing or invalid (the message is logged).
    Config(String),
    /// Any other failure (the message is logged).
    Failed(String),
}

impl PluginError {
    /// The ABI status code for this error (logging its message first).
    pub fn status(&self) -> i32 {
        use m3u_proxy_plugin_abi::status;
        match self {
            PluginError::UnsupportedStage => status::UNSUPPORTED_STAGE,
            PluginError::Config(message) => {
                log(LogLevel::Error, message);
                status::CONFIG_ERROR
            }
            PluginError::Failed(message) => {
                log(LogLevel::Error, message);
                status::PLUGIN_ERROR
            }
        }
    }
}

/// What every plugin implements. All items have defaults except the stage
/// hooks you want: return `Some(self)` from the ones your type implements.
pub trait Plugin: Default + 'static {
    /// Version reported to the host; empty (the default) reports the
    /// plugin crate's own version (`CARGO_PKG_VERSION`).
    const VERSION: &'static str = "";
    /// One-line description.
    const DESCRIPTION: &'static str = "";
    /// Author.
    const AUTHOR: &'static str = "";
    /// Fields the host sends; the others read as empty. Fewer is faster.
    /// See [`Plugin::reads`] to decide them from the configuration.
    const READS: FieldSet = FieldSet::ALL;
    /// True if the plugin keeps no state from one batch to the next, so a
    /// host may run several instances of it in parallel (each sees some of
    /// the batches; this host reports it but does not do that yet). Leave `false` for a plugin that remembers
    /// anything across batches (a dedup key set, a counter).
    const PARALLEL_SAFE: bool = false;
    /// Highest memory pressure at which the plugin agrees to run.
    const MAX_PRESSURE: MemoryPressureLevel = MemoryPressureLevel::Emergency;
    /// Linear memory the plugin needs at least, in bytes.
    const MIN_MEMORY_BYTES: u64 = 0;

    /// Called once before the first stage call: read your settings here
    /// with [`config::get`] (the host has handed the plugin's
    /// `[plugins.<name>]` table over by then; no host function needed) and
    /// return [`PluginError::Config`] for a bad one.
    fn init(&mut self) -> Result<(), PluginError> {
        Ok(())
    }

    /// The fields to send at `stage`, asked after [`Plugin::init`] (so they
    /// can follow the configuration). Default: [`Plugin::READS`].
    fn reads(&self, stage: Stage) -> FieldSet {
        let _ = stage;
        Self::READS
    }

    /// Called when the host unloads the plugin.
    fn cleanup(&mut self) {}

    /// A pipeline run starts at memory pressure `level`: forget per-run
    /// state (a dedup key set, a number counter). Called before the run's
    /// first batch, right before [`Plugin::accepts_pressure`]; the run's
    /// context (proxy name, base URL) is in every later call's
    /// [`StageContext`]. Default does nothing.
    fn start_run(&mut self, level: MemoryPressureLevel) {
        let _ = level;
    }

    /// Whether to run at `level`; the default compares with `MAX_PRESSURE`.
    fn accepts_pressure(&self, level: MemoryPressureLevel) -> bool {
        level <= Self::MAX_PRESSURE
    }

    /// `Some(self)` if the plugin filters.
    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        None
    }

    /// `Some(self)` if the plugin changes fields.
    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        None
    }

    /// `Some(self)` if the plugin numbers channels.
    fn as_numberer(&mut self) -> Option<&mut dyn Numberer> {
        None
    }

    /// `Some(self)` if the plugin rebuilds whole batches.
    fn as_transformer(&mut self) -> Option<&mut dyn Transformer> {
        None
    }
}

/// Keep or drop each channel.
pub trait Filter {
    /// The stages this filter handles.
    fn stages(&self) -> &'static [Stage] {
        &[Stage::Filtering]
    }

    /// Per channel: `true` keeps it. Default keeps everything.
    fn keep(&mut self, ctx: &StageContext<'_>, channel: ChannelRef<'_>) -> bool {
        let _ = (ctx, channel);
        true
    }

    /// Per batch: drop channels from `keep` (which starts with every channel
    /// kept). The default asks [`Filter::keep`] per channel.
    fn filter_batch<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
        keep: &mut KeepMask,
    ) {
        for channel in batch.iter() {
            if !self.keep(ctx, channel) {
                keep.drop(channel.index());
            }
        }
    }
}

/// Change fields of channels.
pub trait Mapper {
    /// The stages this mapper handles (a URL rewrite may map at
    /// m3u_generation, for example).
    fn stages(&self) -> &'static [Stage] {
        &[Stage::DataMapping]
    }

    /// Per channel: record changes in `patches` (already pointed at this
    /// channel). Default changes nothing.
    fn map<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        channel: ChannelRef<'a>,
        patches: &mut Patches<'a>,
    ) {
        let _ = (ctx, channel, patches);
    }

    /// Per batch; the default calls [`Mapper::map`] for each channel.
    fn map_batch<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
        patches: &mut Patches<'a>,
    ) {
        for channel in batch.iter() {
            patches.point_at(channel.index());
            self.map(ctx, channel, patches);
        }
    }
}

/// The channel-numbering stage.
pub trait Numberer {
    /// The number for this channel, or `None` to leave it to the host.
    fn number(&mut self, ctx: &StageContext<'_>, channel: ChannelRef<'_>) -> Option<u32>;
}

/// Whole-batch rebuilding, for source_loading and m3u_generation: reorder,
/// drop, change and add channels. Only for plugins that really do that; a
/// plugin that changes fields is a [`Mapper`] at that stage.
pub trait Transformer {
    /// The stages this transformer handles.
    fn stages(&self) -> &'static [Stage] {
        &[Stage::SourceLoading, Stage::M3uGeneration]
    }

    /// Builds the new batch in `out`, which starts empty: list the input
    /// channels to keep, in the new order, with [`Rebuilt::keep`], add new
    /// ones with [`Rebuilt::add`]. Default keeps the batch as it is.
    fn transform<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
        out: &mut Rebuilt<'a>,
    ) {
        let _ = ctx;
        out.keep_all(batch.len());
    }
}

/// Keep/drop answers for one batch; starts with every channel kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepMask {
    channels: usize,
    /// `None` while every channel is kept (answered as "keep all").
    bits: Option<Vec<u8>>,
}

impl KeepMask {
    /// A mask for `channels` channels, all kept.
    pub fn new(channels: usize) -> Self {
        KeepMask {
            channels,
            bits: None,
        }
    }

    /// Drops channel `index` (ignored when out of range).
    pub fn drop(&mut self, index: usize) {
        if index >= self.channels {
            return;
        }
        let channels = self.channels;
        let bits = self.bits.get_or_insert_with(|| {
            let mut bits = vec![0xff; m3u_proxy_plugin_abi::keep_mask_len(channels)];
            if !channels.is_multiple_of(8) {
                if let Some(last) = bits.last_mut() {
                    *last = (1u8 << (channels % 8)) - 1;
                }
            }
            bits
        });
        bits[index / 8] &= !(1 << (index % 8));
    }

    /// Keeps channel `index` again (ignored when out of range).
    pub fn keep(&mut self, index: usize) {
        if let Some(bits) = &mut self.bits {
            if index < self.channels {
                m3u_proxy_plugin_abi::keep_mask_set(bits, index);
            }
        }
    }

    /// Whether channel `index` is kept.
    pub fn is_kept(&self, index: usize) -> bool {
        match &self.bits {
            None => index < self.channels,
            Some(bits) => m3u_proxy_plugin_abi::keep_mask_get(bits, index),
        }
    }

    /// The answer: "keep all" if nothing was dropped, else the bitmask.
    pub fn into_answer(self) -> abi::StageOutput<'static> {
        match self.bits {
            None => abi::StageOutput::KeepAll,
            Some(bits) => abi::StageOutput::Keep(Cow::Owned(bits)),
        }
    }
}

/// Field changes for one batch. [`Mapper::map`] receives it pointed at the
/// channel being mapped; text values and attribute values go out as one
/// column per field or attribute name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patches<'a> {
    current: u32,
    fields: [Option<abi::FieldValues<'static>>; Field::ALL.len()],
    attributes: Vec<abi::AttributeValues<'a>>,
    patches: Vec<Patch<'a>>,
}

impl<'a> Patches<'a> {
    /// Points later changes at channel `index` of the batch.
    pub fn point_at(&mut self, index: usize) {
        self.current = index as u32;
    }

    /// Sets a text field of the current channel (the value is copied; a
    /// list field is ignored).
    pub fn set(&mut self, field: Field, value: impl AsRef<str>) {
        if !field.is_text() {
            return;
        }
        let current = self.current;
        match &mut self.fields[field as usize] {
            Some(column) => column.push(current, value.as_ref()),
            empty => first_field_value(empty, field, current, value.as_ref()),
        }
    }

    /// Sets (or adds) an extra attribute of the current channel (the value
    /// is copied).
    pub fn set_attribute(&mut self, name: impl Into<Cow<'a, str>>, value: impl AsRef<str>) {
        let name = name.into();
        match self.attributes.iter_mut().find(|c| c.name == name) {
            Some(column) => column.values.push(self.current, value.as_ref()),
            None => first_attribute_value(&mut self.attributes, name, self.current, value.as_ref()),
        }
    }

    /// Removes an extra attribute of the current channel.
    pub fn remove_attribute(&mut self, name: impl Into<Cow<'a, str>>) {
        let name = name.into();
        // Attribute values are applied after patches: a value set earlier
        // for this channel is taken back instead of outliving the removal.
        for column in &mut self.attributes {
            if column.name.eq_ignore_ascii_case(&name) {
                column.values.pop_for(self.current);
            }
        }
        self.patches.push(Patch {
            index: self.current,
            op: PatchOp::RemoveAttribute(name),
        });
    }

    /// Number of changes so far.
    pub fn len(&self) -> usize {
        self.fields.iter().flatten().map(|f| f.len()).sum::<usize>()
            + self
                .attributes
                .iter()
                .map(|a| a.values.len())
                .sum::<usize>()
            + self.patches.len()
    }

    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes, for the wire.
    pub fn into_changes(self) -> abi::Changes<'a> {
        abi::Changes {
            fields: self.fields.into_iter().flatten().collect(),
            patches: self.patches,
            attributes: self
                .attributes
                .into_iter()
                .filter(|column| !column.values.is_empty())
                .collect(),
        }
    }

    /// The answer: "keep all" if nothing changed, else the changes.
    pub fn into_answer(self) -> abi::StageOutput<'a> {
        if self.is_empty() {
            abi::StageOutput::KeepAll
        } else {
            abi::StageOutput::Changes(self.into_changes())
        }
    }
}

// The first value of a column, out of line: `Patches::set` and
// `set_attribute` run per channel, and wasmi charges the fuel of inlined code
// that does not run on every call.
#[cold]
#[inline(never)]
fn first_field_value(
    empty: &mut Option<abi::FieldValues<'static>>,
    field: Field,
    index: u32,
    value: &str,
) {
    empty
        .get_or_insert_with(|| abi::FieldValues::new(field))
        .push(index, value);
}

#[cold]
#[inline(never)]
fn first_attribute_value<'a>(
    columns: &mut Vec<abi::AttributeValues<'a>>,
    name: Cow<'a, str>,
    index: u32,
    value: &str,
) {
    let mut values = abi::Values::default();
    values.push(index, value);
    columns.push(abi::AttributeValues { name, values });
}

/// A rebuilt batch: input channels by position (in the new order, each at
/// most once), new channels, and changes to input channels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt<'a> {
    input_len: usize,
    order: Vec<u8>,
    added: Vec<Channel<'a>>,
    /// Changes to input channels (point them with [`Patches::point_at`]).
    pub patches: Patches<'a>,
}

impl<'a> Rebuilt<'a> {
    fn new(input_len: usize) -> Self {
        Rebuilt {
            input_len,
            ..Rebuilt::default()
        }
    }

    /// Appends input channel `index` to the output.
    pub fn keep(&mut self, index: usize) {
        self.order.extend_from_slice(&(index as u32).to_le_bytes());
    }

    /// Appends every input channel `0..len`, in order.
    pub fn keep_all(&mut self, len: usize) {
        for index in 0..len {
            self.keep(index);
        }
    }

    /// Appends a new channel (the host gives it a new id).
    pub fn add(&mut self, channel: Channel<'a>) {
        let position = self.input_len + self.added.len();
        self.order
            .extend_from_slice(&(position as u32).to_le_bytes());
        self.added.push(channel);
    }

    /// The answer.
    pub fn into_answer(self) -> abi::StageOutput<'a> {
        abi::StageOutput::Rebuild(abi::Rebuild {
            order: Cow::Owned(self.order),
            changes: self.patches.into_changes(),
            added: self.added,
        })
    }
}

/// Logs at info level through the host: `log_info!("kept {}", n)`.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        $crate::log($crate::LogLevel::Info, &$crate::__format(format_args!($($arg)*)))
    };
}

/// Logs at warn level through the host.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        $crate::log($crate::LogLevel::Warn, &$crate::__format(format_args!($($arg)*)))
    };
}

/// Logs at error level through the host.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => {
        $crate::log($crate::LogLevel::Error, &$crate::__format(format_args!($($arg)*)))
    };
}

#[doc(hidden)]
pub fn __format(args: core::fmt::Arguments<'_>) -> String {
    alloc::fmt::format(args)
}

/// Registers `$plugin` (a `Default + Plugin` type) under `$name`: emits the
/// ABI version section and every export of `docs/ABI.md`, with
/// `m3u_init(config_len: i32)` so the host hands the config table over at
/// init (see [`config`]) and `m3u_check_memory_pressure(level, context_len)`
/// so it hands the run's context over once per run. The reported version is
/// [`Plugin::VERSION`], or the calling crate's own version if that is empty.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty, $name:expr) => {
        #[link_section = "m3u_abi_version"]
        #[used]
        static __M3U_ABI_VERSION: [u8; 4] = $crate::abi::ABI_VERSION.to_le_bytes();

        #[no_mangle]
        pub extern "C" fn m3u_arena_ptr() -> i32 {
            $crate::dispatcher::arena_address()
        }

        #[no_mangle]
        pub extern "C" fn m3u_arena_capacity() -> i32 {
            $crate::dispatcher::arena_capacity()
        }

        #[no_mangle]
        pub extern "C" fn m3u_plugin_info() -> i32 {
            $crate::dispatcher::plugin_info::<$plugin>($name, env!("CARGO_PKG_VERSION"))
        }

        #[no_mangle]
        pub extern "C" fn m3u_init(config_len: i32) -> i32 {
            $crate::dispatcher::init::<$plugin>(config_len)
        }

        #[no_mangle]
        pub extern "C" fn m3u_execute_stage(stage: i32, input_len: i32) -> i32 {
            $crate::dispatcher::execute_stage::<$plugin>(stage, input_len)
        }

        #[no_mangle]
        pub extern "C" fn m3u_check_memory_pressure(level: i32, context_len: i32) -> i32 {
            $crate::dispatcher::check_memory_pressure::<$plugin>(level, context_len)
        }

        #[no_mangle]
        pub extern "C" fn m3u_cleanup() -> i32 {
            $crate::dispatcher::cleanup::<$plugin>()
        }
    };
}

#[cfg(test)]
mod decimal_tests {
    use super::push_decimal;
    use alloc::string::String;

    #[test]
    fn push_decimal_writes_every_digit() {
        for value in [0, 7, 9, 10, 99, 100, 101, 4_294_967_295, u64::MAX] {
            let mut out = String::from("x");
            push_decimal(&mut out, value);
            assert_eq!(out, alloc::format!("x{value}"));
        }
    }
}
