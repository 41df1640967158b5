//! The one dispatcher that owns every export. `export_plugin!` forwards each
//! exported function here; nothing in this file is `unsafe`.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use m3u_proxy_plugin_abi::{
    status, FieldSet, FieldValues, MemoryPressureLevel, PluginInfo, PluginMemoryRequirements,
    RunContext, Stage, StageContext, StageOutput, StageReads,
};

use crate::arena::{arena_ptr, release_all, with_data, GuestCell, ARENA_BYTES, DATA_BYTES};
use crate::{
    hostcalls, Batch, Filter, KeepMask, Mapper, Numberer, Patches, Plugin, PluginError, Rebuilt,
    Transformer,
};

/// The plugin, type-erased so the SDK can own the single instance.
trait Dispatch {
    fn init(&mut self) -> Result<(), PluginError>;
    fn accepts(&mut self, level: MemoryPressureLevel) -> bool;
    fn stages(&mut self) -> u32;
    fn reads(&self, stage: Stage) -> FieldSet;
    fn run<'a>(
        &mut self,
        stage: Stage,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
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

    fn stages(&mut self) -> u32 {
        let mut stages = 0;
        let mut add = |list: &[Stage]| {
            for stage in list {
                stages |= stage.bit();
            }
        };
        if let Some(filter) = self.as_filter() {
            add(filter.stages());
        }
        if let Some(mapper) = self.as_mapper() {
            add(mapper.stages());
        }
        if self.as_numberer().is_some() {
            add(&[Stage::ChannelNumbering]);
        }
        if let Some(transformer) = self.as_transformer() {
            add(transformer.stages());
        }
        stages
    }

    fn reads(&self, stage: Stage) -> FieldSet {
        Plugin::reads(self, stage)
    }

    fn run<'a>(
        &mut self,
        stage: Stage,
        ctx: &StageContext<'_>,
        batch: &'a Batch<'a>,
    ) -> Result<StageOutput<'a>, PluginError> {
        // A stage goes to the first trait that lists it. Each runs in a
        // function of its own, so a call is charged only the fuel of the
        // one it takes (see `encode_answer`).
        if let Some(filter) = self.as_filter().filter(|f| f.stages().contains(&stage)) {
            return Ok(run_filter(filter, ctx, batch));
        }
        if let Some(mapper) = self.as_mapper().filter(|m| m.stages().contains(&stage)) {
            return Ok(run_mapper(mapper, ctx, batch));
        }
        if stage == Stage::ChannelNumbering {
            if let Some(numberer) = self.as_numberer() {
                return Ok(run_numberer(numberer, ctx, batch));
            }
        }
        if let Some(transformer) = self
            .as_transformer()
            .filter(|t| t.stages().contains(&stage))
        {
            return Ok(run_transformer(transformer, ctx, batch));
        }
        Err(PluginError::UnsupportedStage)
    }

    fn cleanup(&mut self) {
        Plugin::cleanup(self)
    }
}

#[inline(never)]
fn run_filter<'a>(
    filter: &mut dyn Filter,
    ctx: &StageContext<'_>,
    batch: &'a Batch<'a>,
) -> StageOutput<'a> {
    let mut keep = KeepMask::new(batch.len());
    filter.filter_batch(ctx, batch, &mut keep);
    keep.into_answer()
}

#[inline(never)]
fn run_mapper<'a>(
    mapper: &mut dyn Mapper,
    ctx: &StageContext<'_>,
    batch: &'a Batch<'a>,
) -> StageOutput<'a> {
    let mut patches = Patches::default();
    mapper.map_batch(ctx, batch, &mut patches);
    patches.into_answer()
}

#[inline(never)]
fn run_numberer<'a>(
    numberer: &mut dyn Numberer,
    ctx: &StageContext<'_>,
    batch: &'a Batch<'a>,
) -> StageOutput<'a> {
    let mut numbers = FieldValues::new(m3u_proxy_plugin_abi::Field::TvgChno);
    let mut digits = String::new();
    for channel in batch.iter() {
        if let Some(number) = numberer.number(ctx, channel) {
            digits.clear();
            crate::push_decimal(&mut digits, number.into());
            numbers.push(channel.index() as u32, &digits);
        }
    }
    if numbers.is_empty() {
        return StageOutput::KeepAll;
    }
    StageOutput::Changes(m3u_proxy_plugin_abi::Changes {
        fields: alloc::vec![numbers],
        ..Default::default()
    })
}

#[inline(never)]
fn run_transformer<'a>(
    transformer: &mut dyn Transformer,
    ctx: &StageContext<'_>,
    batch: &'a Batch<'a>,
) -> StageOutput<'a> {
    let mut out = Rebuilt::new(batch.len());
    transformer.transform(ctx, batch, &mut out);
    out.into_answer()
}

/// Encodes `output` into `spare`, or `None` if it does not fit.
///
/// wasmi charges a function's straight-line code (everything outside its
/// `if`s and `loop`s) when the function is entered, whether it runs or not.
/// postcard's encoder of `StageOutput` is one large `match`, so calling it
/// for the one-byte "keep all" cost thousands of fuel; that answer is
/// written here, and the encoder is only entered for the others.
fn encode_answer(output: &StageOutput<'_>, spare: &mut [u8]) -> Option<usize> {
    match output {
        StageOutput::KeepAll => {
            *spare.first_mut()? = m3u_proxy_plugin_abi::wire_tags::ANSWER_KEEP_ALL;
            Some(1)
        }
        other => encode_with_postcard(other, spare),
    }
}

#[inline(never)]
fn encode_with_postcard(output: &StageOutput<'_>, spare: &mut [u8]) -> Option<usize> {
    postcard::to_slice(output, spare)
        .ok()
        .map(|encoded| encoded.len())
}

/// An answer larger than the free part of the arena: encoded on the heap
/// and sent through the arena in chunks (`write_channels`).
#[cold]
#[inline(never)]
fn send_in_chunks(output: StageOutput<'_>, spare: &mut [u8]) -> i32 {
    let Ok(encoded) = postcard::to_allocvec(&output) else {
        return status::PLUGIN_ERROR;
    };
    drop(output);
    if spare.is_empty() {
        return status::OUTPUT_LIMIT;
    }
    for chunk in encoded.chunks(spare.len()) {
        let staged = &mut spare[..chunk.len()];
        staged.copy_from_slice(chunk);
        let status = hostcalls::write_channels(staged);
        if status != status::OK {
            return status;
        }
    }
    status::OK
}

static INSTANCE: GuestCell<Option<Box<dyn Dispatch>>> = GuestCell::new(None);

/// The context of the current run (`m3u_check_memory_pressure`).
struct OwnedRunContext {
    memory_pressure: MemoryPressureLevel,
    available_memory: u64,
    proxy_name: String,
    base_url: String,
}

static RUN: GuestCell<OwnedRunContext> = GuestCell::new(OwnedRunContext {
    memory_pressure: MemoryPressureLevel::Optimal,
    available_memory: 0,
    proxy_name: String::new(),
    base_url: String::new(),
});

fn with_instance<P: Plugin>(f: impl FnOnce(&mut dyn Dispatch) -> i32) -> i32 {
    release_all();
    INSTANCE.with(|slot| {
        let plugin = slot.get_or_insert_with(|| Box::new(P::default()));
        f(plugin.as_mut())
    })
}

/// Drops the plugin instance (the native test host starts each test with a
/// fresh one).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn reset() {
    INSTANCE.with(|slot| *slot = None);
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
/// Asked before `init` and after it; the fields read come from the plugin
/// instance, so the second answer follows its configuration.
pub fn plugin_info<P: Plugin>(name: &str, crate_version: &str) -> i32 {
    with_instance::<P>(|plugin| {
        let stages = plugin.stages();
        let stage_reads: Vec<StageReads> = Stage::ALL
            .into_iter()
            .filter(|stage| stages & stage.bit() != 0)
            .map(|stage| StageReads {
                stage,
                fields: plugin.reads(stage),
            })
            .filter(|reads| reads.fields != P::READS)
            .collect();
        let version = if P::VERSION.is_empty() {
            crate_version
        } else {
            P::VERSION
        };
        let info = PluginInfo {
            name: Cow::Borrowed(name),
            version: Cow::Borrowed(version),
            description: Cow::Borrowed(P::DESCRIPTION),
            author: Cow::Borrowed(P::AUTHOR),
            stages,
            reads: P::READS,
            memory: PluginMemoryRequirements {
                min_bytes: P::MIN_MEMORY_BYTES,
                recommended_bytes: P::MIN_MEMORY_BYTES.max(4 * ARENA_BYTES as u64),
                max_pressure: P::MAX_PRESSURE,
            },
            parallel_safe: P::PARALLEL_SAFE,
            stage_reads,
        };
        with_data(|arena| match postcard::to_slice(&info, arena) {
            Ok(bytes) => bytes.len() as i32,
            Err(_) => status::PLUGIN_ERROR,
        })
        .unwrap_or(status::PLUGIN_ERROR)
    })
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

/// `m3u_check_memory_pressure(level, context_len)`: a run starts; keeps the
/// run's context from the arena start, then 1 if the plugin runs at `level`.
pub fn check_memory_pressure<P: Plugin>(level: i32, context_len: i32) -> i32 {
    let Some(level) = u32::try_from(level)
        .ok()
        .and_then(MemoryPressureLevel::from_u32)
    else {
        return 0;
    };
    release_all();
    let received = usize::try_from(context_len)
        .ok()
        .filter(|len| *len <= DATA_BYTES)
        .and_then(|len| {
            with_data(|arena| {
                let context: RunContext<'_> = postcard::from_bytes(&arena[..len]).ok()?;
                RUN.with(|run| {
                    run.memory_pressure = context.memory_pressure;
                    run.available_memory = context.available_memory;
                    run.proxy_name.clear();
                    run.proxy_name.push_str(&context.proxy_name);
                    run.base_url.clear();
                    run.base_url.push_str(&context.base_url);
                });
                Some(())
            })
            .flatten()
        });
    if received.is_none() {
        crate::log(
            crate::LogLevel::Error,
            "the run context from the host does not decode",
        );
        return 0;
    }
    with_instance::<P>(|plugin| i32::from(plugin.accepts(level)))
}

/// `m3u_cleanup`.
pub fn cleanup<P: Plugin>() -> i32 {
    with_instance::<P>(|plugin| {
        plugin.cleanup();
        status::OK
    })
}

/// `m3u_execute_stage(stage, input_len)`: views the input the host wrote at
/// the arena start, runs the plugin, and writes the answer right after the
/// input (returning its length), or pushes a larger one with
/// `write_channels` (returning 0).
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
            let (input_bytes, spare) = arena.split_at_mut(input_len);
            let mut batch = Batch::empty();
            let Ok(input) = batch.read(input_bytes) else {
                return status::DECODE_ERROR;
            };
            let output = RUN.with(|run| {
                let ctx = StageContext {
                    stage,
                    memory_pressure: input.memory_pressure,
                    available_memory: run.available_memory,
                    proxy_name: Cow::Borrowed(&run.proxy_name),
                    base_url: Cow::Borrowed(&run.base_url),
                    batch_index: input.batch_index,
                };
                plugin.run(stage, &ctx, &batch)
            });
            let output = match output {
                Ok(output) => output,
                Err(error) => return error.status(),
            };
            // Fast path: encode straight into the free part of the arena.
            if let Some(len) = encode_answer(&output, spare) {
                return len as i32;
            }
            send_in_chunks(output, spare)
        })
        .unwrap_or(status::PLUGIN_ERROR)
    })
}
