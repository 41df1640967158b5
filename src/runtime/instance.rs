//! One running plugin: its `Store`, its exports, and the call loop that
//! meters fuel in slices and enforces the wall-clock deadline.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use m3u_proxy_plugin_abi::{
    exports, status, BufferFull, ConfigEntry, MemoryPressureLevel, PluginConfig, PluginInfo,
    RunContext, Stage,
};
use wasmi::{Store, TypedFunc, TypedResumableCall};

use super::host::{HostFault, HostState};
use super::{stack_safe_fuel_slice, CompiledPlugin, PluginRuntime, PluginSettings, RuntimeLimits};
use crate::{Error, ErrorKind, Result};

/// Counters of one plugin instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Export calls made (including init/info/cleanup).
    pub calls: u64,
    /// Fuel consumed by all calls.
    pub fuel_consumed: u64,
    /// Fuel consumed by the last call.
    pub last_call_fuel: u64,
    /// Time spent inside the guest.
    pub time: Duration,
    /// Bytes sent to the guest.
    pub bytes_in: u64,
    /// Bytes received from the guest.
    pub bytes_out: u64,
    /// Log lines dropped by the rate limit.
    pub log_lines_dropped: u64,
}

/// The two accepted forms of `m3u_init`.
#[derive(Clone, Copy)]
enum Init {
    /// `() -> i32`: the plugin looks its config up with `get_config`, if at all.
    Plain(TypedFunc<(), i32>),
    /// `(config_len: i32) -> i32`: the host writes the plugin's
    /// [`PluginConfig`] at the arena start first and passes its length.
    WithConfig(TypedFunc<i32, i32>),
}

/// The two accepted forms of `m3u_check_memory_pressure`.
#[derive(Clone, Copy)]
enum PressureCheck {
    /// `(level: i32) -> i32`.
    Plain(TypedFunc<i32, i32>),
    /// `(level: i32, context_len: i32) -> i32`: the host writes the run's
    /// [`RunContext`] at the arena start first and passes its length.
    WithContext(TypedFunc<(i32, i32), i32>),
}

struct Exports {
    plugin_info: TypedFunc<(), i32>,
    init: Init,
    execute_stage: TypedFunc<(i32, i32), i32>,
    check_memory_pressure: PressureCheck,
    cleanup: TypedFunc<(), i32>,
}

/// What the open batch and the current run may still use. Per-call limits
/// alone would multiply with the number of calls, which the plugin chooses
/// through its arena size.
#[derive(Clone, Copy, Debug, Default)]
struct Budget {
    /// The open batch's allowance (`None`: no batch is open).
    batch: Option<BatchBudget>,
    /// Fuel the run's stage calls used so far.
    run_fuel_used: u64,
    /// Wall-clock time the run's stage calls took so far.
    run_time_used: Duration,
    /// Channels the run handed the plugin so far.
    run_channels: u64,
}

/// What the calls of one open batch share.
#[derive(Clone, Copy, Debug)]
struct BatchBudget {
    /// Fuel left.
    fuel: u64,
    /// When the batch's time is up.
    deadline: Instant,
    /// The time the batch was given, for the error message.
    limit: Duration,
}

/// What an instance has used of a run's allowances (see
/// [`PluginInstance::run_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunUsage {
    /// Fuel of the run's stage calls.
    pub fuel: u64,
    /// Wall-clock time of the run's stage calls.
    pub time: Duration,
    /// Channels handed to the plugin.
    pub channels: u64,
    /// Log lines shown.
    pub log_lines: u32,
    /// Log bytes shown (with the name prefix).
    pub log_bytes: usize,
}

/// A plugin instantiated in its own store. Not shared between threads; the
/// pipeline owns it and calls it one batch at a time.
pub struct PluginInstance {
    store: Store<HostState>,
    exports: Exports,
    memory: wasmi::Memory,
    limits: RuntimeLimits,
    info: PluginInfo<'static>,
    arena: (u32, u32),
    stats: CallStats,
    budget: Budget,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("info", &self.info)
            .field("arena", &self.arena)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PluginInstance {
    pub(super) fn new(
        runtime: &PluginRuntime,
        compiled: &CompiledPlugin,
        name_hint: &str,
        settings: &PluginSettings,
    ) -> Result<Self> {
        let limits = runtime.limits().clone();
        let state = HostState::new(
            name_hint.to_string(),
            usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX),
            limits.max_output_bytes,
        );
        let mut state = state;
        state.claims_backend = runtime.claims_backend();
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.data_mut().fuel_metering = limits.fuel_metering;
        // The start function (if any) cannot be paused to check the deadline,
        // so it gets one fuel slice: enough for initialising globals, not for
        // work (SDK plugins have no start function at all).
        let instance = on_guest_stack(|| {
            if limits.fuel_metering {
                store.set_fuel(stack_safe_fuel_slice(
                    limits.fuel_slice.min(limits.fuel_per_call),
                ))?;
            }
            runtime
                .linker()
                .instantiate_and_start(&mut store, &compiled.module)
        })
        .map_err(|error| classify(&store, &limits, &error))?;
        let typed = |name: &'static str| -> Result<TypedFunc<(), i32>> {
            instance
                .get_typed_func(&store, name)
                .map_err(|e| missing(name, e))
        };
        let memory = instance
            .get_memory(&store, exports::MEMORY)
            .ok_or_else(|| missing(exports::MEMORY, "not a memory"))?;
        let arena_ptr = typed(exports::ARENA_PTR)?;
        let arena_capacity = typed(exports::ARENA_CAPACITY)?;
        let exports = Exports {
            plugin_info: typed(exports::PLUGIN_INFO)?,
            init: init_export(&instance, &store)?,
            execute_stage: instance
                .get_typed_func(&store, exports::EXECUTE_STAGE)
                .map_err(|e| missing(exports::EXECUTE_STAGE, e))?,
            check_memory_pressure: pressure_export(&instance, &store)?,
            cleanup: typed(exports::CLEANUP)?,
        };
        let mut plugin = PluginInstance {
            store,
            exports,
            memory,
            limits,
            info: PluginInfo::default(),
            arena: (0, 0),
            stats: CallStats::default(),
            budget: Budget::default(),
        };
        let ptr = plugin.call(&arena_ptr, ())?;
        let capacity = plugin.call(&arena_capacity, ())?;
        plugin.set_arena(ptr, capacity)?;
        plugin.info = plugin.read_info(name_hint)?;
        let name = plugin.info.name.to_string();
        plugin.store.data_mut().config = settings.get(&name).cloned().unwrap_or_default();
        plugin.store.data_mut().plugin_name = name;
        // Fuel, deadline and memory limits apply to init like to any call;
        // writing the table before it is host work the operator's config
        // sizes, not the plugin, so it is not charged.
        let code = match plugin.exports.init {
            Init::Plain(init) => plugin.call(&init, ())?,
            Init::WithConfig(init) => {
                let len = plugin.write_config_table()?;
                plugin.call(&init, len)?
            }
        };
        plugin.check_status(exports::INIT, code)?;
        // Asked again after init: the fields read may follow the config.
        let configured = plugin.read_info(name_hint)?;
        if configured.name != plugin.info.name {
            return Err(Error::malformed(format!(
                "plugin info changed its name from `{}` to `{}` during init",
                plugin.info.name, configured.name
            )));
        }
        plugin.info = configured;
        Ok(plugin)
    }

    /// Writes the plugin's config table (its `[plugins.<name>]` values, as a
    /// postcard [`PluginConfig`] sorted by key) at the arena start and
    /// returns its length, for `m3u_init(config_len)`.
    ///
    /// # Errors
    /// A table larger than the arena ([`ErrorKind::Config`] naming the
    /// plugin's table and both sizes).
    fn write_config_table(&mut self) -> Result<i32> {
        let state = self.store.data();
        let name = &state.plugin_name;
        let table = PluginConfig {
            entries: state
                .config
                .iter()
                .map(|(key, value)| ConfigEntry {
                    key: Cow::Borrowed(key),
                    value: Cow::Borrowed(value),
                })
                .collect(),
        };
        let bytes = postcard::to_allocvec(&table).map_err(|error| {
            Error::config_key(
                format!("plugins.{name}"),
                format!("cannot encode the configuration of plugin `{name}`: {error}"),
            )
        })?;
        let capacity = self.arena.1;
        if bytes.len() > capacity as usize {
            return Err(Error::config_key(
                format!("plugins.{name}"),
                format!(
                    "the configuration table of plugin `{name}` is {} bytes encoded, more \
                     than its {capacity}-byte arena, so it cannot be handed over at init; \
                     shorten the values in [plugins.{name}]",
                    bytes.len()
                ),
            ));
        }
        self.write_arena_start(&bytes, "the configuration table")
    }

    /// Writes `bytes` (which fit the arena) at the arena start and returns
    /// their length as the `i32` an export takes.
    fn write_arena_start(&mut self, bytes: &[u8], what: &str) -> Result<i32> {
        let len = bytes.len();
        self.memory
            .write(&mut self.store, self.arena.0 as usize, bytes)
            .map_err(|error| {
                Error::malformed(format!("cannot write {what} into the arena: {error}"))
            })?;
        self.stats.bytes_in += len as u64;
        // `len` fits the arena, whose capacity is a positive i32.
        Ok(len as i32)
    }

    fn set_arena(&mut self, ptr: i32, capacity: i32) -> Result<()> {
        let memory_len = self.memory.data(&self.store).len() as u64;
        let (start, len) = (ptr as u32, capacity as u32);
        if ptr < 0 || capacity <= 0 || u64::from(start) + u64::from(len) > memory_len {
            return Err(ErrorKind::MalformedOutput(format!(
                "arena {ptr}+{capacity} does not fit the plugin's {memory_len} bytes of memory"
            ))
            .into());
        }
        if len < super::MIN_ARENA_BYTES {
            return Err(ErrorKind::MalformedOutput(format!(
                "arena of {capacity} bytes is below the minimum of {}",
                super::MIN_ARENA_BYTES
            ))
            .into());
        }
        self.arena = (start, len);
        self.store.data_mut().arena = Some(self.arena);
        Ok(())
    }

    fn read_info(&mut self, name_hint: &str) -> Result<PluginInfo<'static>> {
        let plugin_info = self.exports.plugin_info;
        let len = self.call(&plugin_info, ())?;
        if len < 0 {
            return Err(self.status_error(exports::PLUGIN_INFO, len));
        }
        let bytes = self.arena_bytes(len as u32)?;
        let info: PluginInfo<'_> = postcard::from_bytes(bytes).map_err(|error| {
            Error::malformed(format!(
                "plugin info of `{name_hint}` does not decode: {error}"
            ))
        })?;
        if info.name.is_empty() {
            return Err(Error::malformed("plugin info has an empty name"));
        }
        check_info_text("name", &info.name, MAX_NAME_BYTES)?;
        check_info_text("version", &info.version, MAX_VERSION_BYTES)?;
        check_info_text("description", &info.description, MAX_DESCRIPTION_BYTES)?;
        check_info_text("author", &info.author, MAX_AUTHOR_BYTES)?;
        Ok(PluginInfo {
            name: info.name.into_owned().into(),
            version: info.version.into_owned().into(),
            description: info.description.into_owned().into(),
            author: info.author.into_owned().into(),
            stages: info.stages,
            reads: info.reads,
            memory: info.memory,
            parallel_safe: info.parallel_safe,
            stage_reads: info.stage_reads,
        })
    }

    /// The first `len` bytes of the arena, checked.
    fn arena_bytes(&self, len: u32) -> Result<&[u8]> {
        let (start, capacity) = self.arena;
        if len > capacity {
            return Err(ErrorKind::ArenaOverflow {
                ptr: u64::from(start),
                len: u64::from(len),
                arena_start: u64::from(start),
                arena_len: u64::from(capacity),
            }
            .into());
        }
        let range = start as usize..(start + len) as usize;
        Ok(&self.memory.data(&self.store)[range])
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo<'static> {
        &self.info
    }

    /// The plugin's arena capacity in bytes: the most input one call takes.
    pub fn arena_capacity(&self) -> u32 {
        self.arena.1
    }

    /// Sets the wall-clock limit of later calls (e.g. when run as a fallback).
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.limits.timeout = timeout;
    }

    /// Counters so far.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// Starts a run: the per-run fuel and log allowances start over.
    pub fn begin_run(&mut self) {
        self.budget = Budget::default();
        self.store.data_mut().begin_run();
    }

    /// What the current run has used of the per-run allowances.
    pub fn run_usage(&self) -> RunUsage {
        let state = self.store.data();
        RunUsage {
            fuel: self.budget.run_fuel_used,
            time: self.budget.run_time_used,
            channels: self.budget.run_channels,
            log_lines: state.run_log_lines,
            log_bytes: state.run_log_bytes,
        }
    }

    /// Goes on with a run another instance has used `usage` of (an
    /// instance that replaces a failed one mid-run gets no fresh budget).
    pub fn continue_run(&mut self, usage: RunUsage) {
        self.budget.run_fuel_used = usage.fuel;
        self.budget.run_time_used = usage.time;
        self.budget.run_channels = usage.channels;
        let state = self.store.data_mut();
        state.run_log_lines = usage.log_lines;
        state.run_log_bytes = usage.log_bytes;
    }

    /// Opens a batch of `channels` channels: until [`Self::end_batch`], the
    /// stage calls share one fuel budget (`fuel_per_call`, cut to what the
    /// run has left: `fuel_per_call + fuel_per_channel ×` channels so far −
    /// fuel used), one deadline (`timeout`, cut likewise to `timeout +
    /// time_per_channel ×` channels − time used), one log and one output
    /// allowance.
    pub fn begin_batch(&mut self, channels: usize) {
        let limits = &self.limits;
        let budget = &mut self.budget;
        budget.run_channels += channels as u64;
        let fuel_allowance = limits
            .fuel_per_call
            .saturating_add(limits.fuel_per_channel.saturating_mul(budget.run_channels));
        let fuel_left = fuel_allowance.saturating_sub(budget.run_fuel_used);
        let channels_u32 = u32::try_from(budget.run_channels).unwrap_or(u32::MAX);
        let time_allowance = limits
            .timeout
            .saturating_add(limits.time_per_channel.saturating_mul(channels_u32));
        let time_left = time_allowance.saturating_sub(budget.run_time_used);
        let limit = time_left.min(limits.timeout);
        budget.batch = Some(BatchBudget {
            fuel: fuel_left.min(limits.fuel_per_call),
            deadline: Instant::now() + limit,
            limit,
        });
        self.store.data_mut().begin_batch();
    }

    /// Closes the batch [`Self::begin_batch`] opened.
    pub fn end_batch(&mut self) {
        self.budget.batch = None;
        self.store.data_mut().end_batch();
    }

    /// Runs `execute_stage` on `input` (an encoded `StageInput`, copied to
    /// the arena start) and returns the plugin's answer.
    ///
    /// # Errors
    /// Any plugin failure: out of fuel, timeout, memory limit, trap, arena
    /// violation, error status, or an input larger than the arena.
    pub fn execute_stage(&mut self, stage: Stage, input: &[u8]) -> Result<&[u8]> {
        let (start, capacity) = self.arena;
        self.execute_stage_with(stage, capacity as usize, |arena| {
            arena
                .get_mut(..input.len())
                .ok_or(BufferFull)?
                .copy_from_slice(input);
            Ok(input.len())
        })
        .map_err(|error| match error {
            Encoded::Full => ErrorKind::ArenaOverflow {
                ptr: u64::from(start),
                len: input.len() as u64,
                arena_start: u64::from(start),
                arena_len: u64::from(capacity),
            }
            .into(),
            Encoded::Failed(error) => error,
        })
    }

    /// Runs `execute_stage` on the input `encode` writes straight into the
    /// first `input_limit` bytes of the arena (returning its length), and
    /// returns the plugin's answer: the bytes it wrote after the input, or
    /// what it sent with `write_channels`.
    ///
    /// # Errors
    /// [`Encoded::Full`] if the input does not fit `input_limit` (nothing
    /// was called: split the batch); [`Encoded::Failed`] for any plugin
    /// failure, including an answer outside the arena.
    pub fn execute_stage_with(
        &mut self,
        stage: Stage,
        input_limit: usize,
        encode: impl FnOnce(&mut [u8]) -> std::result::Result<usize, BufferFull>,
    ) -> std::result::Result<&[u8], Encoded> {
        let (start, capacity) = (self.arena.0 as usize, self.arena.1 as usize);
        let limit = input_limit.min(capacity);
        let arena = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start + limit)
            .ok_or(Encoded::Full)?;
        let input_len = encode(arena).map_err(|BufferFull| Encoded::Full)?;
        self.store.data_mut().input_len = input_len;
        let execute = self.exports.execute_stage;
        let code = self.call(&execute, (stage.as_u32() as i32, input_len as i32))?;
        self.stats.bytes_in += input_len as u64;
        if code < 0 {
            return Err(Encoded::Failed(
                self.status_error(exports::EXECUTE_STAGE, code),
            ));
        }
        if code == 0 {
            let output = &self.store.data().output;
            self.stats.bytes_out += output.len() as u64;
            return Ok(output);
        }
        let answer_len = code as usize;
        if input_len + answer_len > capacity {
            return Err(Encoded::Failed(
                ErrorKind::ArenaOverflow {
                    ptr: (start + input_len) as u64,
                    len: answer_len as u64,
                    arena_start: start as u64,
                    arena_len: capacity as u64,
                }
                .into(),
            ));
        }
        self.stats.bytes_out += answer_len as u64;
        let answer = start + input_len..start + input_len + answer_len;
        Ok(&self.memory.data(&self.store)[answer])
    }

    /// Asks the plugin whether it runs at this memory pressure.
    ///
    /// # Errors
    /// Any plugin failure.
    pub fn accepts_pressure(
        &mut self,
        level: MemoryPressureLevel,
        context: &RunContext<'_>,
    ) -> Result<bool> {
        if level > self.info.memory.max_pressure {
            return Ok(false);
        }
        let answer = match self.exports.check_memory_pressure {
            PressureCheck::Plain(check) => self.call(&check, level.as_u32() as i32)?,
            PressureCheck::WithContext(check) => {
                let bytes = postcard::to_allocvec(context).map_err(|error| {
                    Error::malformed(format!("cannot encode the run context: {error}"))
                })?;
                if bytes.len() > self.arena.1 as usize {
                    return Err(Error::malformed(format!(
                        "the run context is {} bytes encoded, more than the plugin's \
                         {}-byte arena; shorten [proxy] name and base_url",
                        bytes.len(),
                        self.arena.1
                    )));
                }
                let len = self.write_arena_start(&bytes, "the run context")?;
                self.call(&check, (level.as_u32() as i32, len))?
            }
        };
        Ok(answer == 1)
    }

    /// Runs the plugin's `cleanup`.
    ///
    /// # Errors
    /// Any plugin failure.
    pub fn cleanup(&mut self) -> Result<()> {
        let cleanup = self.exports.cleanup;
        let code = self.call(&cleanup, ())?;
        self.check_status(exports::CLEANUP, code)
    }

    /// `Ok` for status OK, else the error, with the reason the plugin logged.
    fn check_status(&self, function: &'static str, code: i32) -> Result<()> {
        if code == status::OK {
            Ok(())
        } else {
            Err(self.status_error(function, code))
        }
    }

    fn status_error(&self, function: &'static str, code: i32) -> Error {
        ErrorKind::PluginStatus {
            function,
            status: code,
            message: self.store.data().last_error_line.clone(),
        }
        .into()
    }

    /// Calls an export under the fuel budget, in slices, checking the
    /// wall-clock deadline between slices.
    fn call<P, R>(&mut self, func: &TypedFunc<P, R>, params: P) -> Result<R>
    where
        P: wasmi::WasmParams,
        R: wasmi::WasmResults,
    {
        if !self.limits.fuel_metering {
            return self.call_unmetered(func, params);
        }
        on_guest_stack(|| self.call_in_slices(func, params))
    }

    /// [`PluginInstance::call`] on a stack with room for its slices.
    fn call_in_slices<P, R>(&mut self, func: &TypedFunc<P, R>, params: P) -> Result<R>
    where
        P: wasmi::WasmParams,
        R: wasmi::WasmResults,
    {
        let started = Instant::now();
        let (budget, deadline, limit) = match self.budget.batch {
            Some(batch) => (batch.fuel, batch.deadline, batch.limit),
            None => (
                self.limits.fuel_per_call,
                started + self.limits.timeout,
                self.limits.timeout,
            ),
        };
        let timeout = || -> Error {
            ErrorKind::Timeout {
                limit_ms: limit.as_millis() as u64,
            }
            .into()
        };
        if budget == 0 {
            return Err(ErrorKind::OutOfFuel { budget }.into());
        }
        if started >= deadline {
            return Err(timeout());
        }
        let slice = stack_safe_fuel_slice(self.limits.fuel_slice.min(budget));
        self.store.data_mut().begin_call();
        self.store.data_mut().fuel_reserve = budget.saturating_sub(slice);
        self.store.set_fuel(slice).map_err(fuel_error)?;
        self.stats.calls += 1;
        let mut outcome = func.call_resumable(&mut self.store, params);
        let result = loop {
            match outcome {
                Ok(TypedResumableCall::Finished(results)) => break Ok(results),
                Ok(TypedResumableCall::OutOfFuel(invocation)) => {
                    let reserve = self.store.data().fuel_reserve;
                    if reserve == 0 {
                        break Err(ErrorKind::OutOfFuel { budget }.into());
                    }
                    if Instant::now() >= deadline {
                        break Err(timeout());
                    }
                    // One instruction may need more than a slice (a
                    // `memory.grow`, `memory.copy` or `memory.fill` pays per
                    // 64 bytes): give it what it needs, no more, so the
                    // fuel left after it stays within a slice.
                    let available = reserve + self.store.get_fuel().unwrap_or(0);
                    let needed = invocation.required_fuel();
                    if needed > available {
                        break Err(ErrorKind::OutOfFuel { budget }.into());
                    }
                    let next = slice.max(needed).min(available);
                    self.store.data_mut().fuel_reserve = available - next;
                    if let Err(error) = self.store.set_fuel(next) {
                        break Err(fuel_error(error));
                    }
                    outcome = invocation.resume(&mut self.store);
                }
                Ok(TypedResumableCall::HostTrap(invocation)) => {
                    break Err(classify(&self.store, &self.limits, invocation.host_error()))
                }
                Err(error) => break Err(classify(&self.store, &self.limits, &error)),
            }
        };
        let left = self.store.get_fuel().unwrap_or(0) + self.store.data().fuel_reserve;
        let used = budget.saturating_sub(left);
        let took = started.elapsed();
        if let Some(batch) = &mut self.budget.batch {
            batch.fuel = batch.fuel.saturating_sub(used);
            self.budget.run_fuel_used += used;
            self.budget.run_time_used += took;
        }
        self.stats.last_call_fuel = used;
        self.stats.fuel_consumed += used;
        self.stats.time += took;
        self.stats.log_lines_dropped = self.store.data().log_lines_dropped;
        result
    }
}

impl PluginInstance {
    /// A plain call with no fuel and therefore no deadline (benchmarks).
    fn call_unmetered<P, R>(&mut self, func: &TypedFunc<P, R>, params: P) -> Result<R>
    where
        P: wasmi::WasmParams,
        R: wasmi::WasmResults,
    {
        let started = Instant::now();
        self.store.data_mut().begin_call();
        self.stats.calls += 1;
        // The same entry point as metered calls: without fuel it simply runs
        // to the end, and errors are classified the same way.
        let result = match func.call_resumable(&mut self.store, params) {
            Ok(TypedResumableCall::Finished(results)) => Ok(results),
            Ok(TypedResumableCall::HostTrap(invocation)) => {
                Err(classify(&self.store, &self.limits, invocation.host_error()))
            }
            Ok(TypedResumableCall::OutOfFuel(_)) => Err(ErrorKind::OutOfFuel {
                budget: self.limits.fuel_per_call,
            }
            .into()),
            Err(error) => Err(classify(&self.store, &self.limits, &error)),
        };
        self.stats.last_call_fuel = 0;
        self.stats.time += started.elapsed();
        self.stats.log_lines_dropped = self.store.data().log_lines_dropped;
        result
    }
}

/// Runs guest code with at least
/// [`GUEST_STACK_RED_ZONE`](super::GUEST_STACK_RED_ZONE) bytes of native
/// stack free, on a fresh segment if the thread has less (see
/// [`STACK_BYTES_PER_FUEL`](super::STACK_BYTES_PER_FUEL) for why).
fn on_guest_stack<R>(guest_code: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(
        super::GUEST_STACK_RED_ZONE,
        super::GUEST_STACK_SIZE,
        guest_code,
    )
}

/// Longest plugin name accepted (it prefixes every log line and names the
/// plugin in stats and metrics).
pub const MAX_NAME_BYTES: usize = 64;
/// Longest plugin version accepted.
pub const MAX_VERSION_BYTES: usize = 64;
/// Longest plugin description accepted.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Longest plugin author accepted.
pub const MAX_AUTHOR_BYTES: usize = 256;

/// Refuses a plugin-info string longer than `limit` bytes, or one holding
/// control characters (a name or version is printed in logs and metrics).
fn check_info_text(what: &str, text: &str, limit: usize) -> Result<()> {
    if text.len() > limit {
        return Err(Error::malformed(format!(
            "plugin info {what} is {} bytes, more than the {limit} allowed",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::malformed(format!(
            "plugin info {what} holds control characters"
        )));
    }
    Ok(())
}

/// `m3u_init` in whichever of its two forms the module exports (the compile
/// step has already refused any other signature).
fn init_export(instance: &wasmi::Instance, store: &Store<HostState>) -> Result<Init> {
    let func = instance
        .get_func(store, exports::INIT)
        .ok_or_else(|| missing(exports::INIT, "not a function"))?;
    let init = if func.ty(store).params().is_empty() {
        Init::Plain(func.typed(store).map_err(|e| missing(exports::INIT, e))?)
    } else {
        Init::WithConfig(func.typed(store).map_err(|e| missing(exports::INIT, e))?)
    };
    Ok(init)
}

/// `m3u_check_memory_pressure` in whichever of its two forms the module
/// exports (the compile step has already refused any other signature).
fn pressure_export(instance: &wasmi::Instance, store: &Store<HostState>) -> Result<PressureCheck> {
    let name = exports::CHECK_MEMORY_PRESSURE;
    let func = instance
        .get_func(store, name)
        .ok_or_else(|| missing(name, "not a function"))?;
    let check = if func.ty(store).params().len() == 1 {
        PressureCheck::Plain(func.typed(store).map_err(|e| missing(name, e))?)
    } else {
        PressureCheck::WithContext(func.typed(store).map_err(|e| missing(name, e))?)
    };
    Ok(check)
}

/// Why [`PluginInstance::execute_stage_with`] returned no answer.
#[derive(Debug)]
pub enum Encoded {
    /// The input did not fit; the plugin was not called.
    Full,
    /// The plugin failed.
    Failed(Error),
}

impl From<Error> for Encoded {
    fn from(error: Error) -> Self {
        Encoded::Failed(error)
    }
}

fn missing(name: &str, error: impl std::fmt::Display) -> Error {
    ErrorKind::MissingExport {
        name: name.to_string(),
        detail: error.to_string(),
    }
    .into()
}

fn fuel_error(error: wasmi::Error) -> Error {
    ErrorKind::InvalidModule(format!("fuel metering unavailable: {error}")).into()
}

/// Turns a wasmi error into the host's error kind.
fn classify(store: &Store<HostState>, limits: &RuntimeLimits, error: &wasmi::Error) -> Error {
    if store.data().limiter.denied {
        return ErrorKind::MemoryLimit {
            limit: limits.max_memory_bytes,
        }
        .into();
    }
    if let Some(fault) = error.downcast_ref::<HostFault>() {
        return match fault {
            HostFault::OutOfFuel => ErrorKind::OutOfFuel {
                budget: limits.fuel_per_call,
            }
            .into(),
            HostFault::OutsideArena { ptr, len } => {
                let (arena_start, arena_len) = store.data().arena.unwrap_or((0, 0));
                ErrorKind::ArenaOverflow {
                    ptr: *ptr,
                    len: *len,
                    arena_start: u64::from(arena_start),
                    arena_len: u64::from(arena_len),
                }
                .into()
            }
            // Loading checked the memory export, so this is a host function
            // called with no plugin code around it (a re-exported import).
            HostFault::ClaimKeys(_) => ErrorKind::Trap {
                code: None,
                message: fault.to_string(),
            }
            .into(),
            HostFault::NoMemory => ErrorKind::Trap {
                code: None,
                message: format!(
                    "{fault}: a host function was called directly, not from the plugin's code"
                ),
            }
            .into(),
        };
    }
    if let Some(code) = error.as_trap_code() {
        if code == wasmi::TrapCode::OutOfFuel {
            return ErrorKind::OutOfFuel {
                budget: limits.fuel_per_call,
            }
            .into();
        }
        return ErrorKind::Trap {
            code: Some(code),
            message: error.to_string(),
        }
        .into();
    }
    match error.kind() {
        wasmi::errors::ErrorKind::Linker(_) | wasmi::errors::ErrorKind::Instantiation(_) => {
            ErrorKind::InvalidModule(error.to_string()).into()
        }
        _ => ErrorKind::Trap {
            code: None,
            message: error.to_string(),
        }
        .into(),
    }
}
