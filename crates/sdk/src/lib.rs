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
//!     // Only group-title is sent to this plugin; the rest arrives empty.
//!     const READS: FieldSet = FieldSet::of(&[Field::GroupTitle]);
//!     fn as_filter(&mut self) -> Option<&mut dyn Filter> {
//!         Some(self)
//!     }
//! }
//!
//! impl Filter for DropAdult {
//!     fn keep(&mut self, _ctx: &StageContext<'_>, channel: &Channel<'_>) -> bool {
//!         !channel.group_title.to_ascii_lowercase().contains("adult")
//!     }
//! }
//!
//! export_plugin!(DropAdult, "drop_adult");
//! ```
//!
//! Settings: the plugin's `[plugins.<name>]` table reaches it at init; read
//! it with [`config::get`] in [`Plugin::init`]. That needs no host function
//! beyond the default allowlist (`get_config` is imported only by plugins
//! that call [`config::lookup_live`]).
//!
//! Stages and their traits:
//! - filtering → [`Filter`]: answer keep/drop per channel (sent as a bitmask);
//! - data_mapping → [`Mapper`]: push field patches per channel;
//! - channel_numbering → [`Numberer`]: return a number per channel;
//! - source_loading, m3u_generation → [`Transformer`]: rewrite the whole batch
//!   (needs `READS = FieldSet::ALL`, since whole channels come back).
#![warn(missing_docs)]
#![no_std]

extern crate alloc;

mod arena;
pub mod config;
#[doc(hidden)]
pub mod dispatcher;
mod hostcalls;

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

pub use m3u_proxy_plugin_abi as abi;
pub use m3u_proxy_plugin_abi::{
    Channel, Field, FieldSet, MemoryPressureLevel, Patch, PatchOp, Stage, StageContext,
};

pub use arena::{ARENA_BYTES, DATA_BYTES, SCRATCH_BYTES};
pub use hostcalls::{log, memory_usage};

/// Everything a plugin author needs, in one import.
pub mod prelude {
    pub use crate::{
        config, export_plugin, log_error, log_info, log_warn, Channel, Field, FieldSet, Filter,
        KeepMask, Mapper, MemoryPressureLevel, Numberer, Patches, Plugin, PluginError, Stage,
        StageContext, Transformer,
    };
    pub use alloc::borrow::Cow;
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
    /// Version reported to the host.
    const VERSION: &'static str = "0.1.0";
    /// One-line description.
    const DESCRIPTION: &'static str = "";
    /// Author.
    const AUTHOR: &'static str = "";
    /// Fields the host sends; the others arrive empty. Fewer is faster.
    const READS: FieldSet = FieldSet::ALL;
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

    /// Called when the host unloads the plugin.
    fn cleanup(&mut self) {}

    /// A pipeline run starts at memory pressure `level`: forget per-run
    /// state (a dedup key set, a number counter). Called before the run's
    /// first batch, once for each stage the plugin is listed in, right
    /// before [`Plugin::accepts_pressure`]. Default does nothing.
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

    /// `Some(self)` if the plugin maps fields.
    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        None
    }

    /// `Some(self)` if the plugin numbers channels.
    fn as_numberer(&mut self) -> Option<&mut dyn Numberer> {
        None
    }

    /// `Some(self)` if the plugin rewrites whole batches.
    fn as_transformer(&mut self) -> Option<&mut dyn Transformer> {
        None
    }
}

/// The filtering stage: keep or drop each channel.
pub trait Filter {
    /// Per channel: `true` keeps it. Default keeps everything.
    fn keep(&mut self, ctx: &StageContext<'_>, channel: &Channel<'_>) -> bool {
        let _ = (ctx, channel);
        true
    }

    /// Per batch: fill `keep`. The default asks [`Filter::keep`] per channel.
    fn filter_batch(
        &mut self,
        ctx: &StageContext<'_>,
        channels: &[Channel<'_>],
        keep: &mut KeepMask,
    ) {
        for (index, channel) in channels.iter().enumerate() {
            if self.keep(ctx, channel) {
                keep.keep(index);
            }
        }
    }
}

/// The data-mapping stage: change fields of channels.
pub trait Mapper {
    /// Per channel: record changes in `patches` (already pointed at this
    /// channel). Default changes nothing.
    fn map<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        channel: &Channel<'a>,
        patches: &mut Patches<'a>,
    ) {
        let _ = (ctx, channel, patches);
    }

    /// Per batch; the default calls [`Mapper::map`] for each channel.
    fn map_batch<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        channels: &[Channel<'a>],
        patches: &mut Patches<'a>,
    ) {
        for (index, channel) in channels.iter().enumerate() {
            patches.current = index as u32;
            self.map(ctx, channel, patches);
        }
    }
}

/// The channel-numbering stage.
pub trait Numberer {
    /// The number for this channel, or `None` to leave it to the host.
    fn number(&mut self, ctx: &StageContext<'_>, channel: &Channel<'_>) -> Option<u32>;
}

/// Whole-batch rewriting, for source_loading and m3u_generation.
pub trait Transformer {
    /// The stages this transformer handles.
    fn stages(&self) -> &'static [Stage] {
        &[Stage::SourceLoading, Stage::M3uGeneration]
    }

    /// Returns the new batch. Default returns it unchanged.
    fn transform<'a>(
        &mut self,
        ctx: &StageContext<'_>,
        channels: Vec<Channel<'a>>,
    ) -> Vec<Channel<'a>> {
        let _ = ctx;
        channels
    }
}

/// Keep/drop answers for one batch; starts with every channel dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepMask {
    bits: Vec<u8>,
}

impl KeepMask {
    /// A mask for `channels` channels, all dropped.
    pub fn new(channels: usize) -> Self {
        KeepMask {
            bits: vec![0; m3u_proxy_plugin_abi::keep_mask_len(channels)],
        }
    }

    /// Keeps channel `index` (ignored when out of range).
    pub fn keep(&mut self, index: usize) {
        if index / 8 < self.bits.len() {
            m3u_proxy_plugin_abi::keep_mask_set(&mut self.bits, index);
        }
    }

    /// Whether channel `index` is kept.
    pub fn is_kept(&self, index: usize) -> bool {
        m3u_proxy_plugin_abi::keep_mask_get(&self.bits, index)
    }

    /// The encoded mask.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bits
    }
}

/// Field changes for one batch. [`Mapper::map`] receives it pointed at the
/// channel being mapped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patches<'a> {
    current: u32,
    patches: Vec<Patch<'a>>,
}

impl<'a> Patches<'a> {
    /// Sets a text field of the current channel.
    pub fn set(&mut self, field: Field, value: impl Into<Cow<'a, str>>) {
        self.push(PatchOp::SetField(field, value.into()));
    }

    /// Sets (or adds) an extra attribute of the current channel.
    pub fn set_attribute(&mut self, name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        self.push(PatchOp::SetAttribute(name.into(), value.into()));
    }

    /// Removes an extra attribute of the current channel.
    pub fn remove_attribute(&mut self, name: impl Into<Cow<'a, str>>) {
        self.push(PatchOp::RemoveAttribute(name.into()));
    }

    /// Number of patches so far.
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    fn push(&mut self, op: PatchOp<'a>) {
        self.patches.push(Patch {
            index: self.current,
            op,
        });
    }

    /// The patches, for the wire.
    pub fn into_vec(self) -> Vec<Patch<'a>> {
        self.patches
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
/// init (see [`config`]).
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
            $crate::dispatcher::plugin_info::<$plugin>($name)
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
        pub extern "C" fn m3u_check_memory_pressure(level: i32) -> i32 {
            $crate::dispatcher::check_memory_pressure::<$plugin>(level)
        }

        #[no_mangle]
        pub extern "C" fn m3u_cleanup() -> i32 {
            $crate::dispatcher::cleanup::<$plugin>()
        }
    };
}
