//! A minimal host for the plugin ABI (docs/ABI.md) on wasmtime, written only
//! for this bench. It mirrors what `src/runtime` and
//! `src/pipeline/plugin_stage.rs` do on wasmi, as far as it matters for speed:
//!
//! - the five host functions with the same arena bounds checks and the same
//!   fuel charge (`HOST_CALL_BASE_FUEL + bytes / HOST_BYTES_PER_FUEL`);
//! - the memory limit through a `ResourceLimiter` that traps;
//! - `m3u_init` in both forms: for `(config_len: i32) -> i32` the plugin's
//!   config table (postcard `PluginConfig`) is written at the arena start
//!   first, as the host does;
//! - per call: a fresh fuel budget (when fuel is on), input copied in, output
//!   collected from `write_channels`;
//! - per batch: `StageInputView` with the plugin's `reads` encoded into half
//!   the arena (split in two when it does not fit), `StageOutput` decoded with
//!   no trailing bytes, checked, then applied.
//!
//! Left out (none of it runs on the measured paths): the wall-clock deadline
//! (wasmtime would use epoch interruption), fuel slicing, the log-line rate
//! limit, the ABI custom-section check and the import allowlist check at
//! compile time (the linker refuses unknown imports anyway), failure
//! accounting and fallbacks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use m3u_plugin_host::runtime::{RuntimeLimits, HOST_BYTES_PER_FUEL, HOST_CALL_BASE_FUEL};
use m3u_plugin_host::OwnedChannel;
use m3u_proxy_plugin_abi::{
    exports, host_functions as names, keep_mask_get, keep_mask_len, status, Channel, ConfigEntry,
    FieldSet, PatchOp, PluginConfig, PluginInfo, Stage, StageContext, StageInputView, StageOutput,
    MAX_CONFIG_KEY_LEN,
};
use wasmtime::{
    bail, format_err, Caller, Config, Engine, Extern, Linker, Memory, Module, ResourceLimiter,
    Result, Store, TypedFunc,
};

/// One wasmtime engine with a linker holding the five host functions.
pub struct WasmtimeRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: RuntimeLimits,
    fuel: bool,
}

/// Traps for the memory limit (like the wasmi host) instead of returning -1.
struct Limiter {
    limit_bytes: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _: usize, desired: usize, max: Option<usize>) -> Result<bool> {
        if desired > self.limit_bytes || max.is_some_and(|max| desired > max) {
            bail!("memory limit: {desired} bytes requested");
        }
        Ok(true)
    }

    fn table_growing(&mut self, _: usize, desired: usize, max: Option<usize>) -> Result<bool> {
        if desired > 100_000 || max.is_some_and(|max| desired > max) {
            bail!("table limit: {desired} elements requested");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The two accepted forms of `m3u_init` (docs/ABI.md §3 step 5).
enum Init {
    /// `() -> i32`: nothing is written; the plugin may ask `get_config`.
    Plain(TypedFunc<(), i32>),
    /// `(config_len: i32) -> i32`: the plugin's `PluginConfig` is written at
    /// the arena start first and its length passed.
    WithConfig(TypedFunc<i32, i32>),
}

/// The data of one instance's `Store`.
pub struct HostState {
    name: String,
    fuel: bool,
    limiter: Limiter,
    arena: Option<(u32, u32)>,
    input: Vec<u8>,
    cursor: usize,
    output: Vec<u8>,
    max_output_bytes: usize,
    config: BTreeMap<String, String>,
}

type Ctx<'a> = Caller<'a, HostState>;

/// Charges host work to the guest's fuel (nothing when fuel is off).
fn charge(caller: &mut Ctx<'_>, bytes: usize) -> Result<()> {
    if !caller.data().fuel {
        return Ok(());
    }
    let cost = HOST_CALL_BASE_FUEL + bytes as u64 / HOST_BYTES_PER_FUEL;
    let fuel = caller.get_fuel()?;
    if fuel < cost {
        caller.set_fuel(0)?;
        bail!("out of fuel in a host function");
    }
    caller.set_fuel(fuel - cost)
}

/// `ptr..ptr+len` as a range if it lies inside the arena; a trap otherwise.
fn arena_range(state: &HostState, ptr: i32, len: i32) -> Result<std::ops::Range<usize>> {
    let (ptr, len) = (u64::from(ptr as u32), u64::from(len as u32));
    let outside = || format_err!("range {ptr}+{len} is outside the arena");
    let (start, capacity) = state.arena.ok_or_else(outside)?;
    let end = u64::from(start) + u64::from(capacity);
    if len > u64::from(u32::MAX >> 1) || ptr < u64::from(start) || ptr + len > end {
        return Err(outside());
    }
    Ok(ptr as usize..(ptr + len) as usize)
}

fn memory(caller: &mut Ctx<'_>) -> Result<Memory> {
    match caller.get_export(exports::MEMORY) {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => bail!("plugin has no memory export"),
    }
}

fn host_log(mut caller: Ctx<'_>, level: i32, ptr: i32, len: i32) -> Result<()> {
    let range = arena_range(caller.data(), ptr, len)?;
    charge(&mut caller, range.len())?;
    let memory = memory(&mut caller)?;
    let bytes = &memory.data(&caller)[range];
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]);
    let level = match level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        _ => log::Level::Debug,
    };
    // Like the wasmi host: the `log` facade, no logger installed here.
    log::log!(target: "plugin", level, "[{}] {text}", caller.data().name);
    Ok(())
}

fn host_get_memory_usage(mut caller: Ctx<'_>) -> Result<i64> {
    charge(&mut caller, 0)?;
    let memory = memory(&mut caller)?;
    Ok(memory.data_size(&caller) as i64)
}

fn host_read_channels(mut caller: Ctx<'_>, ptr: i32, cap: i32) -> Result<i32> {
    let range = arena_range(caller.data(), ptr, cap)?;
    let state = caller.data();
    let count = (state.input.len() - state.cursor).min(range.len());
    charge(&mut caller, count)?;
    let memory = memory(&mut caller)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let from = state.cursor;
    data.get_mut(range.start..range.start + count)
        .ok_or_else(|| format_err!("arena is outside memory"))?
        .copy_from_slice(&state.input[from..from + count]);
    state.cursor += count;
    Ok(count as i32)
}

fn host_write_channels(mut caller: Ctx<'_>, ptr: i32, len: i32) -> Result<i32> {
    let range = arena_range(caller.data(), ptr, len)?;
    charge(&mut caller, range.len())?;
    let memory = memory(&mut caller)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    if state.output.len() + range.len() > state.max_output_bytes {
        return Ok(status::OUTPUT_LIMIT);
    }
    let bytes = data
        .get(range)
        .ok_or_else(|| format_err!("arena is outside memory"))?;
    state.output.extend_from_slice(bytes);
    Ok(status::OK)
}

fn host_get_config(
    mut caller: Ctx<'_>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> Result<i32> {
    if key_len as u32 > MAX_CONFIG_KEY_LEN {
        charge(&mut caller, 0)?;
        return Ok(status::KEY_TOO_LONG);
    }
    let key_range = arena_range(caller.data(), key_ptr, key_len)?;
    let out_range = arena_range(caller.data(), out_ptr, out_cap)?;
    let memory = memory(&mut caller)?;
    let key = String::from_utf8_lossy(&memory.data(&caller)[key_range]).into_owned();
    let Some(value) = caller.data().config.get(&key).cloned() else {
        charge(&mut caller, key.len())?;
        return Ok(status::NOT_FOUND);
    };
    charge(&mut caller, key.len() + value.len())?;
    let copied = value.len().min(out_range.len());
    memory.data_mut(&mut caller)[out_range.start..out_range.start + copied]
        .copy_from_slice(&value.as_bytes()[..copied]);
    Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
}

impl WasmtimeRuntime {
    /// An engine with Cranelift at its default settings, fuel on or off.
    pub fn new(limits: RuntimeLimits, fuel: bool) -> Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        let host = names::MODULE;
        linker.func_wrap(host, names::LOG, host_log)?;
        linker.func_wrap(host, names::GET_MEMORY_USAGE, host_get_memory_usage)?;
        linker.func_wrap(host, names::READ_CHANNELS, host_read_channels)?;
        linker.func_wrap(host, names::WRITE_CHANNELS, host_write_channels)?;
        linker.func_wrap(host, names::GET_CONFIG, host_get_config)?;
        Ok(WasmtimeRuntime {
            engine,
            linker,
            limits,
            fuel,
        })
    }

    /// Validates and compiles a module (Cranelift, to native code).
    pub fn compile(&self, wasm: &[u8]) -> Result<Module> {
        if wasm.len() > self.limits.max_module_bytes || !wasm.starts_with(b"\0asm") {
            bail!("not a plugin module");
        }
        Module::new(&self.engine, wasm)
    }

    /// Instantiates, reads the arena and `PluginInfo`, runs `m3u_init`
    /// (handing the config table over first if it takes its length).
    pub fn instantiate(
        &self,
        module: &Module,
        settings: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<WasmtimeInstance> {
        let state = HostState {
            name: String::new(),
            fuel: self.fuel,
            limiter: Limiter {
                limit_bytes: self.limits.max_memory_bytes as usize,
            },
            arena: None,
            input: Vec::new(),
            cursor: 0,
            output: Vec::new(),
            max_output_bytes: self.limits.max_output_bytes,
            config: BTreeMap::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        if self.fuel {
            // The start function gets one slice, as on wasmi.
            let limits = &self.limits;
            store.set_fuel(limits.fuel_slice.min(limits.fuel_per_call))?;
        }
        let instance = self.linker.instantiate(&mut store, module)?;
        let memory = instance
            .get_memory(&mut store, exports::MEMORY)
            .ok_or_else(|| format_err!("no memory export"))?;
        let func = |store: &mut Store<HostState>, name| -> Result<TypedFunc<(), i32>> {
            instance.get_typed_func(store, name)
        };
        let arena_ptr = func(&mut store, exports::ARENA_PTR)?;
        let arena_capacity = func(&mut store, exports::ARENA_CAPACITY)?;
        let plugin_info = func(&mut store, exports::PLUGIN_INFO)?;
        // `m3u_init` is `(config_len: i32) -> i32` (SDK plugins) or `() -> i32`.
        let init = match instance.get_typed_func::<i32, i32>(&mut store, exports::INIT) {
            Ok(init) => Init::WithConfig(init),
            Err(_) => Init::Plain(func(&mut store, exports::INIT)?),
        };
        let execute_stage = instance.get_typed_func(&mut store, exports::EXECUTE_STAGE)?;
        let check_memory_pressure =
            instance.get_typed_func(&mut store, exports::CHECK_MEMORY_PRESSURE)?;
        let mut plugin = WasmtimeInstance {
            store,
            memory,
            execute_stage,
            check_memory_pressure,
            fuel_per_call: self.limits.fuel_per_call,
            info: PluginInfo::default(),
            arena: (0, 0),
            fuel_consumed: 0,
            buffer: Vec::new(),
        };
        let (ptr, capacity) = (
            plugin.call(&arena_ptr, ())?,
            plugin.call(&arena_capacity, ())?,
        );
        let memory_len = plugin.memory.data_size(&plugin.store) as u64;
        if ptr < 0 || capacity <= 0 || ptr as u64 + capacity as u64 > memory_len {
            bail!("arena {ptr}+{capacity} does not fit {memory_len} bytes of memory");
        }
        plugin.arena = (ptr as u32, capacity as u32);
        plugin.store.data_mut().arena = Some(plugin.arena);
        let len = plugin.call(&plugin_info, ())?;
        if len < 0 || len as u32 > capacity as u32 {
            bail!("m3u_plugin_info returned {len}");
        }
        let start = ptr as usize;
        let bytes = &plugin.memory.data(&plugin.store)[start..start + len as usize];
        let info: PluginInfo<'_> = postcard::from_bytes(bytes)?;
        plugin.info = PluginInfo {
            name: info.name.into_owned().into(),
            version: info.version.into_owned().into(),
            description: info.description.into_owned().into(),
            author: info.author.into_owned().into(),
            stages: info.stages,
            reads: info.reads,
            memory: info.memory,
        };
        let name = plugin.info.name.to_string();
        plugin.store.data_mut().config = settings.get(&name).cloned().unwrap_or_default();
        plugin.store.data_mut().name = name;
        // As on wasmi, writing the table is not charged; init's fuel is.
        let code = match init {
            Init::Plain(init) => plugin.call(&init, ())?,
            Init::WithConfig(init) => {
                let len = plugin.write_config_table()?;
                plugin.call(&init, len)?
            }
        };
        if code != status::OK {
            bail!("m3u_init returned {code}");
        }
        // Input gets half the arena, as in `PluginSlot`.
        plugin.buffer = vec![0; capacity as usize / 2];
        Ok(plugin)
    }
}

/// One instantiated plugin with its own `Store`.
pub struct WasmtimeInstance {
    store: Store<HostState>,
    memory: Memory,
    execute_stage: TypedFunc<(i32, i32), i32>,
    check_memory_pressure: TypedFunc<i32, i32>,
    fuel_per_call: u64,
    info: PluginInfo<'static>,
    arena: (u32, u32),
    /// Fuel used by every call so far (0 with fuel off).
    pub fuel_consumed: u64,
    buffer: Vec<u8>,
}

impl WasmtimeInstance {
    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo<'static> {
        &self.info
    }

    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R> {
        let state = self.store.data_mut();
        state.cursor = 0;
        state.output.clear();
        let fuel = state.fuel;
        if fuel {
            self.store.set_fuel(self.fuel_per_call)?;
        }
        let result = func.call(&mut self.store, params);
        if fuel {
            self.fuel_consumed += self.fuel_per_call - self.store.get_fuel()?;
        }
        result
    }

    /// Writes the plugin's config table (postcard `PluginConfig`, entries
    /// sorted by key as the `BTreeMap` holds them; an empty table is the one
    /// byte `00`) at the arena start and returns its length, for
    /// `m3u_init(config_len)`. A table larger than the arena fails, as on
    /// wasmi.
    fn write_config_table(&mut self) -> Result<i32> {
        let bytes = {
            let table = PluginConfig {
                entries: self
                    .store
                    .data()
                    .config
                    .iter()
                    .map(|(key, value)| ConfigEntry {
                        key: Cow::Borrowed(key),
                        value: Cow::Borrowed(value),
                    })
                    .collect(),
            };
            postcard::to_allocvec(&table)?
        };
        let (start, capacity) = self.arena;
        if bytes.len() > capacity as usize {
            bail!(
                "the configuration table of plugin `{}` is {} bytes encoded, more than its \
                 {capacity}-byte arena",
                self.store.data().name,
                bytes.len()
            );
        }
        // The arena lies inside memory (checked when it was declared) and
        // the table fits it.
        let start = start as usize;
        self.memory.data_mut(&mut self.store)[start..start + bytes.len()].copy_from_slice(&bytes);
        // At most the arena capacity, a positive i32.
        Ok(bytes.len() as i32)
    }

    /// `m3u_check_memory_pressure`: the smallest export round trip.
    pub fn accepts_pressure(&mut self, level: u32) -> Result<bool> {
        let check = self.check_memory_pressure.clone();
        Ok(self.call(&check, level as i32)? == 1)
    }

    /// `m3u_execute_stage` on encoded input; the bytes sent back.
    pub fn execute_stage(&mut self, stage: Stage, input: &[u8]) -> Result<&[u8]> {
        if input.len() > self.arena.1 as usize {
            bail!("input larger than the arena");
        }
        let state = self.store.data_mut();
        state.input.clear();
        state.input.extend_from_slice(input);
        let execute = self.execute_stage.clone();
        let code = self.call(&execute, (stage.as_u32() as i32, input.len() as i32))?;
        if code != status::OK {
            bail!("m3u_execute_stage returned {code}");
        }
        Ok(&self.store.data().output)
    }

    /// Runs `stage` on `batch` in place, like `PluginSlot::run`.
    pub fn run(
        &mut self,
        stage: Stage,
        context: &StageContext<'_>,
        batch: &mut Vec<OwnedChannel>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let reads = self.info.reads;
        let view = StageInputView {
            context,
            fields: reads,
            channels: batch,
        };
        let mut buffer = std::mem::take(&mut self.buffer);
        let encoded = postcard::to_slice(&view, &mut buffer).map(|bytes| bytes.len());
        let result = match encoded {
            Ok(len) => self
                .execute_stage(stage, &buffer[..len])
                .and_then(|output| apply(stage, reads, output, batch)),
            Err(postcard::Error::SerializeBufferFull) if batch.len() > 1 => {
                let mut second = batch.split_off(batch.len() / 2);
                let result = self
                    .run(stage, context, batch)
                    .and_then(|()| self.run(stage, context, &mut second));
                batch.append(&mut second);
                result
            }
            Err(error) => Err(error.into()),
        };
        self.buffer = buffer;
        result
    }
}

/// Decodes the answer, checks it against the batch, applies it.
fn apply(
    stage: Stage,
    reads: FieldSet,
    output: &[u8],
    batch: &mut Vec<OwnedChannel>,
) -> Result<()> {
    let (answer, rest): (StageOutput<'_>, _) = postcard::take_from_bytes(output)?;
    if !rest.is_empty() {
        bail!("{} bytes after the output", rest.len());
    }
    match answer {
        StageOutput::Keep(mask) => {
            if stage != Stage::Filtering || mask.len() != keep_mask_len(batch.len()) {
                bail!("bad keep mask");
            }
            let mut index = 0;
            batch.retain(|_| {
                index += 1;
                keep_mask_get(&mask, index - 1)
            });
        }
        StageOutput::Patches(patches) => {
            let bad = |p: &m3u_proxy_plugin_abi::Patch<'_>| {
                p.index as usize >= batch.len()
                    || matches!(&p.op, PatchOp::SetField(field, _) if !field.is_text())
            };
            if stage == Stage::Filtering || patches.iter().any(bad) {
                bail!("bad patches");
            }
            for patch in patches {
                let channel = &mut batch[patch.index as usize];
                match patch.op {
                    PatchOp::SetField(field, value) => {
                        if let Some(slot) = channel.text_mut(field) {
                            *slot = Cow::Owned(value.into_owned());
                        }
                    }
                    PatchOp::SetAttribute(name, value) => channel.set_attribute(
                        Cow::Owned(name.into_owned()),
                        Cow::Owned(value.into_owned()),
                    ),
                    PatchOp::RemoveAttribute(name) => channel
                        .attributes
                        .retain(|attribute| !attribute.name.eq_ignore_ascii_case(&name)),
                }
            }
        }
        StageOutput::Channels(channels) => {
            // Only the id rule of filtering/mapping is checked here.
            let mut ids = batch.iter().map(|c| c.id);
            if !reads.is_all() || !channels.iter().all(|c| ids.any(|id| id == c.id)) {
                bail!("bad channels answer");
            }
            *batch = channels.into_iter().map(Channel::into_owned).collect();
        }
    }
    Ok(())
}
