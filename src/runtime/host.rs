//! What the host offers a plugin: the per-instance [`HostState`] (the data
//! of its `Store`), the memory limiter, and the [`Linker`] holding exactly
//! the allowlisted host functions.
//!
//! Every host function bounds-checks the guest's pointers against the arena
//! and charges fuel for the bytes it moves, so a guest cannot make the host
//! work for free.

use std::collections::BTreeMap;
use std::fmt;

use m3u_proxy_plugin_abi::{host_functions as names, status, MAX_CONFIG_KEY_LEN};
use wasmi::{Caller, Engine, Extern, Linker, ResourceLimiter};
use wasmi_core::LimiterError;

/// Fuel charged for entering any host function.
pub const HOST_CALL_BASE_FUEL: u64 = 20;
/// Bytes moved per unit of fuel charged by host functions. Interpreted Wasm
/// moves roughly one byte per instruction in a copy loop; a host memcpy is far
/// cheaper, so 1 fuel per 8 bytes is still a real cost.
pub const HOST_BYTES_PER_FUEL: u64 = 8;
/// Longest log line kept; the rest is cut.
pub const MAX_LOG_LINE_BYTES: usize = 1024;
/// Log lines accepted per plugin call (for a stage call: per batch, shared by
/// every call the batch is split into); later ones are counted and dropped.
pub const MAX_LOG_LINES_PER_CALL: u32 = 32;
/// Log lines accepted from one plugin instance per run.
pub const MAX_LOG_LINES_PER_RUN: u32 = 256;
/// Log bytes (plugin name prefix included) accepted from one plugin
/// instance per run.
pub const MAX_LOG_BYTES_PER_RUN: usize = 256 << 10;

/// Trap raised by a host function. It becomes an [`crate::ErrorKind`] when
/// the call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostFault {
    /// The plugin has no fuel left for the host function's work.
    OutOfFuel,
    /// A pointer/length from the plugin falls outside the arena.
    OutsideArena { ptr: u64, len: u64 },
    /// The plugin has no usable `memory` export.
    NoMemory,
    /// `claim_keys` failed: malformed keys, or its store failed or is full.
    ClaimKeys(String),
}

impl fmt::Display for HostFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostFault::OutOfFuel => f.write_str("out of fuel in a host function"),
            HostFault::OutsideArena { ptr, len } => {
                write!(f, "range {ptr}+{len} is outside the arena")
            }
            HostFault::NoMemory => f.write_str("plugin has no memory export"),
            HostFault::ClaimKeys(message) => write!(f, "claim_keys: {message}"),
        }
    }
}

impl wasmi::errors::HostError for HostFault {}

/// Refuses memory growth past the limit and remembers that it did, so the
/// resulting trap is reported as a memory-limit error.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) limit_bytes: usize,
    pub(crate) denied: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if desired > self.limit_bytes || maximum.is_some_and(|max| desired > max) {
            self.denied = true;
            // Trap instead of returning -1: a module that ignores -1 would
            // otherwise spin until its fuel runs out and hide the cause.
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        const MAX_TABLE_ELEMENTS: usize = 100_000;
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            self.denied = true;
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
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

/// The data of one plugin instance's `Store`.
pub(crate) struct HostState {
    pub(crate) plugin_name: String,
    pub(crate) limiter: MemoryLimiter,
    /// Arena bounds, set once the guest has declared them.
    pub(crate) arena: Option<(u32, u32)>,
    /// Input bytes of the current call and how far the guest has read.
    /// Length of the input the host wrote at the arena start for the
    /// current call (`read_channels` copies from it).
    pub(crate) input_len: usize,
    pub(crate) input_cursor: usize,
    /// Output bytes pushed by the guest during the current call.
    pub(crate) output: Vec<u8>,
    pub(crate) max_output_bytes: usize,
    /// Fuel of the current call not yet handed to the store (see `instance.rs`).
    pub(crate) fuel_reserve: u64,
    /// False when the engine runs without fuel (benchmarks only).
    pub(crate) fuel_metering: bool,
    pub(crate) config: BTreeMap<String, String>,
    /// Log lines of the current call, or of the current batch while one is
    /// open (`begin_batch`).
    pub(crate) log_lines_this_call: u32,
    pub(crate) log_lines_dropped: u64,
    /// Log lines and bytes of the current run (`begin_run`).
    pub(crate) run_log_lines: u32,
    pub(crate) run_log_bytes: usize,
    /// The run's log allowance is spent (announced once).
    pub(crate) run_allowance_spent: bool,
    /// Output pushed during the current batch (or call, outside a batch).
    pub(crate) output_this_batch: usize,
    /// A batch is open: the calls until `end_batch` share its limits.
    pub(crate) batch_open: bool,
    /// The last error-level line the plugin logged in the current call: the
    /// reason it gives for an error status (`ErrorKind::PluginStatus`).
    pub(crate) last_error_line: Option<String>,
    /// Where `claim_keys` keeps this plugin's claims.
    pub(crate) claims_backend: std::sync::Arc<crate::remote::ClaimsBackend>,
    /// This run's claims, opened by the first `claim_keys` of the run.
    pub(crate) claims: Option<crate::remote::KeyClaims>,
}

impl HostState {
    pub(crate) fn new(plugin_name: String, memory_limit: usize, max_output_bytes: usize) -> Self {
        HostState {
            plugin_name,
            limiter: MemoryLimiter {
                limit_bytes: memory_limit,
                denied: false,
            },
            arena: None,
            input_len: 0,
            input_cursor: 0,
            output: Vec::new(),
            max_output_bytes,
            fuel_reserve: 0,
            fuel_metering: true,
            config: BTreeMap::new(),
            log_lines_this_call: 0,
            log_lines_dropped: 0,
            run_log_lines: 0,
            run_log_bytes: 0,
            run_allowance_spent: false,
            output_this_batch: 0,
            batch_open: false,
            last_error_line: None,
            claims_backend: std::sync::Arc::default(),
            claims: None,
        }
    }

    /// Prepares for a new guest call. Inside a batch the log and output
    /// allowances go on from the batch's earlier calls.
    pub(crate) fn begin_call(&mut self) {
        self.input_cursor = 0;
        self.output.clear();
        if !self.batch_open {
            self.log_lines_this_call = 0;
            self.output_this_batch = 0;
        }
        self.last_error_line = None;
        self.limiter.denied = false;
    }

    /// Opens a batch: its calls share one log and one output allowance.
    pub(crate) fn begin_batch(&mut self) {
        self.log_lines_this_call = 0;
        self.output_this_batch = 0;
        self.batch_open = true;
    }

    /// Closes the batch `begin_batch` opened. A large pushed answer's
    /// buffer is given back rather than kept for the instance's life.
    pub(crate) fn end_batch(&mut self) {
        self.batch_open = false;
        if self.output.capacity() > 1 << 20 {
            self.output = Vec::new();
        }
    }

    /// Starts the per-run log allowance.
    pub(crate) fn begin_run(&mut self) {
        // The previous run's claims end (a Redis run set is deleted).
        self.claims = None;
        self.run_log_lines = 0;
        self.run_log_bytes = 0;
        self.run_allowance_spent = false;
    }
}

/// Charges `bytes` worth of host work to the calling guest's fuel.
fn charge(caller: &mut Caller<'_, HostState>, bytes: usize) -> Result<(), wasmi::Error> {
    if !caller.data().fuel_metering {
        return Ok(());
    }
    let cost = HOST_CALL_BASE_FUEL + bytes as u64 / HOST_BYTES_PER_FUEL;
    let fuel = caller.get_fuel()?;
    if fuel >= cost {
        caller.set_fuel(fuel - cost)?;
        return Ok(());
    }
    // The store holds one slice of the budget; draw the rest from the
    // reserve the call loop has not handed out yet.
    let missing = cost - fuel;
    let state = caller.data_mut();
    if state.fuel_reserve < missing {
        state.fuel_reserve = 0;
        caller.set_fuel(0)?;
        return Err(wasmi::Error::host(HostFault::OutOfFuel));
    }
    state.fuel_reserve -= missing;
    caller.set_fuel(0)?;
    Ok(())
}

/// Checks that `ptr..ptr+len` lies inside the arena; returns it as a range.
fn arena_range(
    state: &HostState,
    ptr: i32,
    len: i32,
) -> Result<std::ops::Range<usize>, wasmi::Error> {
    let fault = || {
        wasmi::Error::host(HostFault::OutsideArena {
            ptr: ptr as u32 as u64,
            len: len as u32 as u64,
        })
    };
    let (start, capacity) = state.arena.ok_or_else(fault)?;
    let (ptr, len) = (ptr as u32 as u64, len as u32 as u64);
    let (start, end) = (u64::from(start), u64::from(start) + u64::from(capacity));
    if len > u64::from(u32::MAX >> 1) || ptr < start || ptr + len > end {
        return Err(fault());
    }
    Ok(ptr as usize..(ptr + len) as usize)
}

fn memory(caller: &Caller<'_, HostState>) -> Result<wasmi::Memory, wasmi::Error> {
    match caller.get_export(m3u_proxy_plugin_abi::exports::MEMORY) {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmi::Error::host(HostFault::NoMemory)),
    }
}

/// The Wasm signature of each host function, as `(params, results)`.
pub(crate) fn signature(
    name: &str,
) -> Option<(&'static [wasmi::ValType], &'static [wasmi::ValType])> {
    use wasmi::ValType::{I32, I64};
    Some(match name {
        names::LOG => (&[I32, I32, I32], &[]),
        names::GET_MEMORY_USAGE => (&[], &[I64]),
        names::READ_CHANNELS => (&[I32, I32], &[I32]),
        names::WRITE_CHANNELS => (&[I32, I32], &[I32]),
        names::GET_CONFIG => (&[I32, I32, I32, I32], &[I32]),
        names::CLAIM_KEYS => (&[I32, I32, I32, I32], &[I32]),
        _ => return None,
    })
}

/// A linker that defines exactly the host functions in `allowed`.
pub(crate) fn linker(engine: &Engine, allowed: &[String]) -> Linker<HostState> {
    let mut linker = Linker::new(engine);
    let module = names::MODULE;
    for name in allowed {
        let defined = match name.as_str() {
            names::LOG => linker.func_wrap(module, names::LOG, host_log),
            names::GET_MEMORY_USAGE => {
                linker.func_wrap(module, names::GET_MEMORY_USAGE, host_get_memory_usage)
            }
            names::READ_CHANNELS => {
                linker.func_wrap(module, names::READ_CHANNELS, host_read_channels)
            }
            names::WRITE_CHANNELS => {
                linker.func_wrap(module, names::WRITE_CHANNELS, host_write_channels)
            }
            names::GET_CONFIG => linker.func_wrap(module, names::GET_CONFIG, host_get_config),
            names::CLAIM_KEYS => linker.func_wrap(module, names::CLAIM_KEYS, host_claim_keys),
            // The config loader rejects unknown names before we get here.
            _ => continue,
        };
        if let Err(error) = defined {
            log::error!("could not define host function `{name}`: {error}");
        }
    }
    linker
}

fn host_log(
    mut caller: Caller<'_, HostState>,
    level: i32,
    ptr: i32,
    len: i32,
) -> Result<(), wasmi::Error> {
    let range = arena_range(caller.data(), ptr, len)?;
    charge(&mut caller, range.len())?;
    let state = caller.data();
    if state.log_lines_this_call >= MAX_LOG_LINES_PER_CALL
        || state.run_log_lines >= MAX_LOG_LINES_PER_RUN
    {
        drop_log_line(caller.data_mut());
        return Ok(());
    }
    let memory = memory(&caller)?;
    let bytes = memory.data(&caller).get(range.clone()).unwrap_or_default();
    let shown = &bytes[..bytes.len().min(MAX_LOG_LINE_BYTES)];
    // Lossy: an invalid byte shows as U+FFFD (3 bytes), so the run's
    // allowance counts the text as written to the log, prefix included.
    let text = String::from_utf8_lossy(shown);
    let cut = if bytes.len() > MAX_LOG_LINE_BYTES {
        " [cut]"
    } else {
        ""
    };
    let state = caller.data();
    let line_bytes = "[] ".len() + state.plugin_name.len() + text.len() + cut.len();
    if state.run_log_bytes + line_bytes > MAX_LOG_BYTES_PER_RUN {
        drop_log_line(caller.data_mut());
        return Ok(());
    }
    let level = match level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        _ => log::Level::Debug,
    };
    log::log!(target: "plugin", level, "[{}] {text}{cut}", state.plugin_name);
    let last_error_line = (level == log::Level::Error).then(|| format!("{text}{cut}"));
    let state = caller.data_mut();
    state.log_lines_this_call += 1;
    state.run_log_lines += 1;
    state.run_log_bytes += line_bytes;
    if last_error_line.is_some() {
        state.last_error_line = last_error_line;
    }
    Ok(())
}

/// Counts a log line past an allowance; the first one past the run's
/// allowance (lines or bytes) is announced once.
fn drop_log_line(state: &mut HostState) {
    state.log_lines_dropped += 1;
    let per_call = state.log_lines_this_call >= MAX_LOG_LINES_PER_CALL;
    if !per_call && !state.run_allowance_spent {
        state.run_allowance_spent = true;
        log::warn!(target: "plugin", "[{}] log allowance spent", state.plugin_name);
    }
}

fn host_get_memory_usage(mut caller: Caller<'_, HostState>) -> Result<i64, wasmi::Error> {
    charge(&mut caller, 0)?;
    let memory = memory(&caller)?;
    Ok(memory.data(&caller).len() as i64)
}

fn host_read_channels(
    mut caller: Caller<'_, HostState>,
    ptr: i32,
    cap: i32,
) -> Result<i32, wasmi::Error> {
    let range = arena_range(caller.data(), ptr, cap)?;
    let state = caller.data();
    let remaining = state.input_len.saturating_sub(state.input_cursor);
    let count = remaining.min(range.len());
    charge(&mut caller, count)?;
    let memory = memory(&caller)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let arena_start = state.arena.map_or(0, |(start, _)| start as usize);
    let from = arena_start + state.input_cursor;
    if range.start + count > data.len() || from + count > data.len() {
        return Err(wasmi::Error::host(HostFault::OutsideArena {
            ptr: range.start as u64,
            len: count as u64,
        }));
    }
    // The input is already in the arena; this copies it again for a plugin
    // that reads it in pieces (ABI 1's way).
    data.copy_within(from..from + count, range.start);
    state.input_cursor += count;
    Ok(count as i32)
}

fn host_write_channels(
    mut caller: Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<i32, wasmi::Error> {
    let range = arena_range(caller.data(), ptr, len)?;
    charge(&mut caller, range.len())?;
    let memory = memory(&caller)?;
    let (data, state) = memory.data_and_store_mut(&mut caller);
    if state.output_this_batch + range.len() > state.max_output_bytes {
        return Ok(status::OUTPUT_LIMIT);
    }
    let bytes = data
        .get(range.clone())
        .ok_or(wasmi::Error::host(HostFault::OutsideArena {
            ptr: range.start as u64,
            len: range.len() as u64,
        }))?;
    state.output.extend_from_slice(bytes);
    state.output_this_batch += bytes.len();
    Ok(status::OK)
}

fn host_get_config(
    mut caller: Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> Result<i32, wasmi::Error> {
    if key_len as u32 > MAX_CONFIG_KEY_LEN {
        charge(&mut caller, 0)?;
        return Ok(status::KEY_TOO_LONG);
    }
    let key_range = arena_range(caller.data(), key_ptr, key_len)?;
    let out_range = arena_range(caller.data(), out_ptr, out_cap)?;
    let memory = memory(&caller)?;
    let key = String::from_utf8_lossy(memory.data(&caller).get(key_range).unwrap_or_default())
        .into_owned();
    let Some(value) = caller.data().config.get(&key).cloned() else {
        charge(&mut caller, key.len())?;
        return Ok(status::NOT_FOUND);
    };
    charge(&mut caller, key.len() + value.len())?;
    let copied = value.len().min(out_range.len());
    let data = memory.data_mut(&mut caller);
    if let Some(target) = data.get_mut(out_range.start..out_range.start + copied) {
        target.copy_from_slice(&value.as_bytes()[..copied]);
    }
    Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
}

/// Fuel charged per key by `claim_keys`, on top of its bytes: a lookup in a
/// hash set or a Redis round trip's share.
pub const CLAIM_FUEL_PER_KEY: u64 = 50;

fn host_claim_keys(
    mut caller: Caller<'_, HostState>,
    keys_ptr: i32,
    keys_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> Result<i32, wasmi::Error> {
    let keys_range = arena_range(caller.data(), keys_ptr, keys_len)?;
    let out_range = arena_range(caller.data(), out_ptr, out_cap)?;
    let memory = memory(&caller)?;
    let fault = |message: String| wasmi::Error::host(HostFault::ClaimKeys(message));
    let encoded = memory
        .data(&caller)
        .get(keys_range.clone())
        .unwrap_or_default()
        .to_vec();
    let keys: Vec<&[u8]> = postcard::from_bytes(&encoded).map_err(|error| {
        fault(format!(
            "the keys are not a postcard list of byte strings: {error}"
        ))
    })?;
    if keys.len() > out_range.len() {
        return Err(fault(format!(
            "{} keys but room for {} answers",
            keys.len(),
            out_range.len()
        )));
    }
    let per_key = (keys.len() as u64).saturating_mul(CLAIM_FUEL_PER_KEY * HOST_BYTES_PER_FUEL);
    charge(
        &mut caller,
        keys_range
            .len()
            .saturating_add(usize::try_from(per_key).unwrap_or(usize::MAX)),
    )?;
    let state = caller.data_mut();
    if state.claims.is_none() {
        let opened = state
            .claims_backend
            .open(&state.plugin_name)
            .map_err(|error| fault(error.to_string()))?;
        state.claims = Some(opened);
    }
    let max_bytes = state.limiter.limit_bytes;
    let claims = state.claims.as_mut().expect("opened above");
    let keep = match claims.claim(&keys, max_bytes) {
        Ok(keep) => keep,
        Err(error) => {
            // A broken connection is opened again by the next call.
            state.claims = None;
            return Err(fault(error.to_string()));
        }
    };
    let answers: Vec<u8> = keep.iter().map(|&kept| u8::from(kept)).collect();
    let data = memory.data_mut(&mut caller);
    if let Some(target) = data.get_mut(out_range.start..out_range.start + answers.len()) {
        target.copy_from_slice(&answers);
    }
    Ok(i32::try_from(answers.len()).unwrap_or(i32::MAX))
}
