//! The one dispatcher that owns every export. `export_plugin!` forwards each
//! exported function here; nothing in this file is `unsafe`.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::vec::Vec;

use m3u_proxy_plugin_abi::{
    status, MemoryPressureLevel, Patch, PatchOp, PluginInfo, PluginMemoryRequirements, Stage,
    StageInput, StageOutput,
};

use crate::arena::{arena_ptr, release_all, with_data, GuestCell, ARENA_BYTES, DATA_BYTES};
use crate::{hostcalls, KeepMask, Patches, Plugin, PluginError};

/// The plugin, type-erased so the SDK can own the single instance.
trait Dispatch {
    fn init(&mut self) -> Result<(), PluginError>;
    fn accepts(&mut self, level: MemoryPressureLevel) -> bool;
    fn run<'a>(
        &mut self,
        stage: Stage,
        input: StageInput<'a>,
    ) -> Result<StageOutput<'a>, PluginError>;
    fn cleanup(&mut self);
}

impl<P: Plugin> Dispatch for P {
    fn init(&mut self) -> Result<(), PluginError> {
        Plugin::init(self)
    }

    fn accepts(&mut self, level: MemoryPressureLevel) -> bool {
        self.start_run(level);
        self.accepts_pressure(level)
    }

    fn run<'a>(
        &mut self,
        stage: Stage,
        input: StageInput<'a>,
    ) -> Result<StageOutput<'a>, PluginError> {
        let ctx = &input.context;
        let channels = input.channels;
        match stage {
            Stage::Filtering => {
                let filter = self.as_filter().ok_or(PluginError::UnsupportedStage)?;
                let mut keep = KeepMask::new(channels.len());
                filter.filter_batch(ctx, &channels, &mut keep);
                Ok(StageOutput::Keep(Cow::Owned(keep.into_bytes())))
            }
            Stage::DataMapping => {
                let mapper = self.as_mapper().ok_or(PluginError::UnsupportedStage)?;
                let mut patches = Patches::default();
                mapper.map_batch(ctx, &channels, &mut patches);
                Ok(StageOutput::Patches(patches.into_vec()))
            }
            Stage::ChannelNumbering => {
                let numberer = self.as_numberer().ok_or(PluginError::UnsupportedStage)?;
                let mut patches = Vec::new();
                for (index, channel) in channels.iter().enumerate() {
                    if let Some(number) = numberer.number(ctx, channel) {
                        patches.push(Patch {
                            index: index as u32,
                            op: PatchOp::SetField(
                                m3u_proxy_plugin_abi::Field::TvgChno,
                                Cow::Owned(alloc::format!("{number}")),
                            ),
                        });
                    }
                }
                Ok(StageOutput::Patches(patches))
            }
            Stage::SourceLoading | Stage::M3uGeneration => {
                let transformer = self.as_transformer().ok_or(PluginError::UnsupportedStage)?;
                if !transformer.stages().contains(&stage) {
                    return Err(PluginError::UnsupportedStage);
                }
                Ok(StageOutput::Channels(transformer.transform(ctx, channels)))
            }
        }
    }

    fn cleanup(&mut self) {
        Plugin::cleanup(self)
    }
}

static INSTANCE: GuestCell<Option<Box<dyn Dispatch>>> = GuestCell::new(None);

fn with_instance<P: Plugin>(f: impl FnOnce(&mut dyn Dispatch) -> i32) -> i32 {
    release_all();
    INSTANCE.with(|slot| {
        let plugin = slot.get_or_insert_with(|| Box::new(P::default()));
        f(plugin.as_mut())
    })
}

/// `m3u_arena_ptr`.
pub fn arena_address() -> i32 {
    arena_ptr() as i32
}

/// `m3u_arena_capacity`.
pub fn arena_capacity() -> i32 {
    ARENA_BYTES as i32
}

/// `m3u_plugin_info`: encodes the info into the arena, returns its length.
pub fn plugin_info<P: Plugin>(name: &str) -> i32 {
    release_all();
    let mut stages = 0;
    let mut probe = P::default();
    if probe.as_filter().is_some() {
        stages |= Stage::Filtering.bit();
    }
    if probe.as_mapper().is_some() {
        stages |= Stage::DataMapping.bit();
    }
    if probe.as_numberer().is_some() {
        stages |= Stage::ChannelNumbering.bit();
    }
    if let Some(transformer) = probe.as_transformer() {
        for stage in transformer.stages() {
            stages |= stage.bit();
        }
    }
    let info = PluginInfo {
        name: Cow::Borrowed(name),
        version: Cow::Borrowed(P::VERSION),
        description: Cow::Borrowed(P::DESCRIPTION),
        author: Cow::Borrowed(P::AUTHOR),
        stages,
        reads: P::READS,
        memory: PluginMemoryRequirements {
            min_bytes: P::MIN_MEMORY_BYTES,
            recommended_bytes: P::MIN_MEMORY_BYTES.max(4 * ARENA_BYTES as u64),
            max_pressure: P::MAX_PRESSURE,
        },
    };
    with_data(|arena| match postcard::to_slice(&info, arena) {
        Ok(bytes) => bytes.len() as i32,
        Err(_) => status::PLUGIN_ERROR,
    })
    .unwrap_or(status::PLUGIN_ERROR)
}

/// `m3u_init(config_len)`: takes over the config table the host wrote at
/// the arena start (see [`crate::config`]), then runs the plugin's `init`.
pub fn init<P: Plugin>(config_len: i32) -> i32 {
    release_all();
    if let Err(code) = crate::config::receive_table(config_len) {
        return code;
    }
    with_instance::<P>(|plugin| match plugin.init() {
        // A value `config::lookup_live` could not read makes the
        // configuration invalid even if the plugin went on without it.
        Ok(()) if crate::config::live_error_seen() => status::CONFIG_ERROR,
        Ok(()) => status::OK,
        Err(error) => error.status(),
    })
}

/// `m3u_check_memory_pressure`: 1 if the plugin runs at `level`.
pub fn check_memory_pressure<P: Plugin>(level: i32) -> i32 {
    let Some(level) = u32::try_from(level)
        .ok()
        .and_then(MemoryPressureLevel::from_u32)
    else {
        return 0;
    };
    with_instance::<P>(|plugin| i32::from(plugin.accepts(level)))
}

/// `m3u_cleanup`.
pub fn cleanup<P: Plugin>() -> i32 {
    with_instance::<P>(|plugin| {
        plugin.cleanup();
        status::OK
    })
}

/// `m3u_execute_stage`: pulls the input into the arena, runs the plugin,
/// pushes the encoded output back with `write_channels`.
pub fn execute_stage<P: Plugin>(stage: i32, input_len: i32) -> i32 {
    let Some(stage) = u32::try_from(stage).ok().and_then(Stage::from_u32) else {
        return status::UNSUPPORTED_STAGE;
    };
    let Ok(input_len) = usize::try_from(input_len) else {
        return status::DECODE_ERROR;
    };
    if input_len > DATA_BYTES {
        return status::INPUT_TOO_LARGE;
    }
    with_instance::<P>(|plugin| {
        with_data(|arena| {
            let mut filled = 0;
            while filled < input_len {
                let read = hostcalls::read_channels(&mut arena[filled..input_len]);
                if read <= 0 {
                    break;
                }
                filled += read as usize;
            }
            let (input_bytes, spare) = arena.split_at_mut(filled);
            let input: StageInput<'_> = match postcard::from_bytes(input_bytes) {
                Ok(input) => input,
                Err(_) => return status::DECODE_ERROR,
            };
            let output = match plugin.run(stage, input) {
                Ok(output) => output,
                Err(error) => return error.status(),
            };
            // Fast path: encode straight into the free part of the arena.
            if let Ok(encoded) = postcard::to_slice(&output, spare) {
                return push(encoded);
            }
            // The output is larger than what is left: encode it on the heap,
            // release the input, and send it through the arena in chunks.
            let Ok(encoded) = postcard::to_allocvec(&output) else {
                return status::PLUGIN_ERROR;
            };
            drop(output);
            for chunk in encoded.chunks(arena.len()) {
                let staged = &mut arena[..chunk.len()];
                staged.copy_from_slice(chunk);
                let status = push(staged);
                if status != status::OK {
                    return status;
                }
            }
            status::OK
        })
        .unwrap_or(status::PLUGIN_ERROR)
    })
}

fn push(bytes: &[u8]) -> i32 {
    hostcalls::write_channels(bytes)
}
