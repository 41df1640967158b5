//! The plugin runtime on wasmi: one shared [`PluginRuntime`] (engine, limits,
//! allowlist) compiles modules into [`CompiledPlugin`]s and instantiates them
//! into [`PluginInstance`]s, each with its own `Store`.
//!
//! Where each limit is set:
//! - fuel: [`RuntimeLimits::fuel_per_call`], handed out in slices of at
//!   most [`RuntimeLimits::fuel_slice`] by `PluginInstance::call`, which
//!   checks the wall-clock deadline between slices;
//! - native stack: each slice is also cut to what the thread's free stack
//!   can take ([`stack_safe_fuel_slice`], [`STACK_BYTES_PER_FUEL`] says
//!   why), and a call on a thread with less than [`GUEST_STACK_RED_ZONE`]
//!   free runs on a fresh stack segment;
//! - memory: [`RuntimeLimits::max_memory_bytes`], enforced by the store's
//!   limiter (`host::MemoryLimiter`);
//! - recursion: [`RuntimeLimits::max_recursion_depth`], in the engine config;
//! - host functions: [`PluginRuntime::new`]'s allowlist, checked against the
//!   module's imports at compile time and the only thing the linker defines.

mod host;
mod instance;
mod shape;

use std::time::Duration;

use m3u_proxy_plugin_abi::{exports, host_functions, ABI_VERSION, ABI_VERSION_SECTION};
use wasmi::{CompilationMode, Config, CustomFuelCosts, Engine, ExternType, Linker, Module};

use crate::{Error, ErrorKind, Result};

pub use host::{
    HOST_BYTES_PER_FUEL, HOST_CALL_BASE_FUEL, MAX_LOG_BYTES_PER_RUN, MAX_LOG_LINES_PER_CALL,
    MAX_LOG_LINES_PER_RUN,
};
pub use instance::{CallStats, Encoded, PluginInstance, RunUsage};

/// Native stack that one unit of fuel may take, at worst, until its slice
/// ends.
///
/// wasmi 2.0 dispatches Wasm instructions by native tail calls, but a
/// `memory.grow` or `table.grow` that fails (answers -1) does not return to
/// the dispatcher: it leaves its native stack frame behind until the call
/// finishes or runs out of fuel. A plugin looping over failing grows (past
/// its own declared maximum, or by a huge delta: cases wasmi decides without
/// asking the host's limiter) would overflow the host's stack and abort the
/// whole process. Running out of fuel unwinds those frames, so a slice of `n`
/// fuel takes at most `n` such frames: about 75 bytes each measured on
/// x86_64, 128 assumed here.
pub const STACK_BYTES_PER_FUEL: usize = 128;

/// The smallest fuel slice: every guest call gets at least this much native
/// stack room ([`GUEST_STACK_RED_ZONE`]), moving to a fresh stack segment
/// when the calling thread has less.
pub const MIN_FUEL_SLICE: u64 = 10_000;

/// Native stack kept for the host, wasmi's own frames and host functions,
/// on top of what the guest's fuel slice may take.
const STACK_MARGIN: usize = 256 << 10;

/// Free stack below which a guest call runs on a fresh segment: room for a
/// [`MIN_FUEL_SLICE`] slice and the margin (about 1.5 MiB).
pub const GUEST_STACK_RED_ZONE: usize =
    MIN_FUEL_SLICE as usize * STACK_BYTES_PER_FUEL + STACK_MARGIN;

/// Size of that fresh segment (reserved address space; pages are only
/// touched as used).
pub const GUEST_STACK_SIZE: usize = 16 << 20;

/// The fuel slice a guest call on the current stack can afford: `wanted`,
/// cut to what the free native stack can hold at [`STACK_BYTES_PER_FUEL`],
/// and never below [`MIN_FUEL_SLICE`] (the red zone guarantees room for
/// that). So a pipeline on a thread with a large stack (the CLI runs on a
/// 64 MiB one) gets large slices and pays the ~100 ns of a pause-and-resume
/// rarely; a small thread gets small slices and stays safe.
pub fn stack_safe_fuel_slice(wanted: u64) -> u64 {
    let free = stacker::remaining_stack().unwrap_or(0);
    let room = (free.saturating_sub(STACK_MARGIN) / STACK_BYTES_PER_FUEL) as u64;
    wanted.min(room.max(MIN_FUEL_SLICE))
}

/// Configuration values per plugin name (`[plugins.<name>]`), as text. A
/// plugin receives its own table at init (as a `PluginConfig` in the arena,
/// if its `m3u_init` takes a length) and can look values up with
/// `get_config`.
pub type PluginSettings =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

/// The smallest arena a plugin may declare. The host splits a batch into as
/// many calls as the arena needs; limits hold per batch and per run, so a
/// tiny arena cannot multiply them, but an arena smaller than one ordinary
/// channel is nonsense and is refused at load.
pub const MIN_ARENA_BYTES: u32 = 4 << 10;

/// Resource limits applied to every plugin call.
///
/// Fuel, time, log lines and output bytes hold per *batch* (all the calls
/// the host splits one batch into share them) and fuel also per *run*
/// ([`RuntimeLimits::fuel_per_channel`]), so a plugin cannot raise them by
/// declaring a small arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Fuel (≈ Wasm instructions) one export call may use; a stage call
    /// shares it with the other calls of its batch.
    pub fuel_per_call: u64,
    /// Fuel a run may use per channel it hands the plugin, on top of one
    /// `fuel_per_call`: a plugin that stays under the per-batch budget but
    /// uses it on every batch runs out here.
    pub fuel_per_channel: u64,
    /// Most fuel handed to the store at a time; the deadline is checked
    /// between slices. The slice is also cut to what the native stack can
    /// take ([`stack_safe_fuel_slice`]).
    pub fuel_slice: u64,
    /// Wall-clock limit of one export call (a stage call: of its batch).
    pub timeout: Duration,
    /// Wall-clock time a run's stage calls may take per channel handed to
    /// the plugin, on top of one `timeout`: a plugin that stays under the
    /// batch's deadline but uses most of it on every batch runs out here.
    pub time_per_channel: Duration,
    /// Most linear memory a plugin may have, in bytes.
    pub max_memory_bytes: u64,
    /// Deepest Wasm call stack, in frames.
    pub max_recursion_depth: usize,
    /// Largest module file accepted, in bytes.
    pub max_module_bytes: usize,
    /// Most output bytes the stage calls of one batch may push.
    pub max_output_bytes: usize,
    /// Fuel metering. Off removes the fuel budget **and** the wall-clock
    /// deadline (which is checked between fuel slices): for measuring what
    /// metering costs, not for plugins you do not trust.
    pub fuel_metering: bool,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            fuel_per_call: 2_000_000_000,
            fuel_per_channel: 100_000,
            fuel_slice: 20_000_000,
            timeout: Duration::from_secs(30),
            time_per_channel: Duration::from_millis(1),
            max_memory_bytes: 64 << 20,
            max_recursion_depth: 1000,
            max_module_bytes: 16 << 20,
            max_output_bytes: 16 << 20,
            fuel_metering: true,
        }
    }
}

/// One engine, its limits and the host-function allowlist; cheap to clone,
/// `Send + Sync`, shared by every plugin of a pipeline.
#[derive(Clone)]
pub struct PluginRuntime {
    engine: Engine,
    limits: RuntimeLimits,
    allowed: Vec<String>,
    linker: std::sync::Arc<Linker<host::HostState>>,
    claims_backend: std::sync::Arc<crate::remote::ClaimsBackend>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("limits", &self.limits)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// A validated module: ABI version, imports and exports checked, compiled.
#[derive(Clone, Debug)]
pub struct CompiledPlugin {
    module: Module,
    size_bytes: usize,
}

impl CompiledPlugin {
    /// Size of the module file in bytes.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// `module.name` of every import.
    pub fn imports(&self) -> Vec<String> {
        self.module
            .imports()
            .map(|import| format!("{}.{}", import.module(), import.name()))
            .collect()
    }

    /// Names of every export.
    pub fn exports(&self) -> Vec<String> {
        self.module
            .exports()
            .map(|export| export.name().to_string())
            .collect()
    }
}

/// Exported functions every plugin must have, with the accepted counts of
/// `i32` parameters and the count of `i32` results. `m3u_init` comes in two
/// forms: `() -> i32`, or `(config_len: i32) -> i32` to receive the config
/// table at init; `m3u_check_memory_pressure` too: `(level)`, or `(level,
/// context_len)` to receive the run's context (docs/ABI.md §3).
const REQUIRED_FUNCTIONS: [(&str, &[usize], usize); 7] = [
    (exports::ARENA_PTR, &[0], 1),
    (exports::ARENA_CAPACITY, &[0], 1),
    (exports::PLUGIN_INFO, &[0], 1),
    (exports::INIT, &[0, 1], 1),
    (exports::EXECUTE_STAGE, &[2], 1),
    (exports::CHECK_MEMORY_PRESSURE, &[1, 2], 1),
    (exports::CLEANUP, &[0], 1),
];

/// Checks that every name of an `allowed_host_functions` list is a host
/// function this host has (the one place this is checked: the configuration
/// and the runtime both call it).
///
/// # Errors
/// A configuration error naming the unknown function and listing the known.
pub fn check_allowlist(allowed_host_functions: &[String]) -> Result<()> {
    match allowed_host_functions
        .iter()
        .find(|name| !host_functions::ALL.contains(&name.as_str()))
    {
        Some(name) => Err(Error::config_key(
            "proxy_generation.wasm_plugins.security.allowed_host_functions",
            format!(
                "unknown host function `{name}`; known: {}",
                host_functions::ALL.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The wasmi settings every plugin runs under (the fuzz targets use them
/// too): fuel metering, the recursion limit, and how code is translated.
pub fn engine_config(limits: &RuntimeLimits) -> Config {
    let mut config = Config::default();
    config
        .consume_fuel(limits.fuel_metering)
        .set_max_recursion_depth(limits.max_recursion_depth)
        // Validated when loaded, each function translated on its first
        // call: loading costs what the plugin uses, not its whole code.
        .compilation_mode(CompilationMode::LazyTranslation)
        // Translation is charged no fuel. Charged, a fuel slice that ends
        // while a callee is being translated ends the whole call with an
        // error that cannot be resumed (wasmi #2032), so a plugin would
        // fail at random slice boundaries. Uncharged, it is host work
        // bounded by the module's size (`max_module_bytes`), done once
        // per function and module: what eager translation did at load.
        // Instructions cost what they did (copies: 64 bytes per fuel).
        .fuel_cost(CustomFuelCosts {
            bytes_copied_per_fuel: 64,
            fuel_per_bytes_translated: 0,
            fuel_per_bytes_validated: 0,
        });
    config
}

impl PluginRuntime {
    /// A runtime with these limits whose linker offers only `allowed_host_functions`.
    ///
    /// # Errors
    /// A name in the allowlist that is not a host function this host has.
    pub fn new(limits: RuntimeLimits, allowed_host_functions: &[String]) -> Result<Self> {
        check_allowlist(allowed_host_functions)?;
        if limits.fuel_per_call == 0 || limits.fuel_slice == 0 {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.fuel_per_call",
                "fuel_per_call and fuel_slice must be at least 1",
            ));
        }
        let engine = Engine::new(&engine_config(&limits));
        let linker = std::sync::Arc::new(host::linker(&engine, allowed_host_functions));
        Ok(PluginRuntime {
            engine,
            limits,
            allowed: allowed_host_functions.to_vec(),
            linker,
            claims_backend: std::sync::Arc::default(),
        })
    }

    /// Where instantiated plugins' `claim_keys` keep their claims (default:
    /// the host's memory, per run).
    pub fn set_claims_backend(&mut self, backend: crate::remote::ClaimsBackend) {
        self.claims_backend = std::sync::Arc::new(backend);
    }

    pub(crate) fn claims_backend(&self) -> std::sync::Arc<crate::remote::ClaimsBackend> {
        std::sync::Arc::clone(&self.claims_backend)
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &RuntimeLimits {
        &self.limits
    }

    /// The host functions plugins may import.
    pub fn allowed_host_functions(&self) -> &[String] {
        &self.allowed
    }

    /// Validates and compiles a module without running any of its code:
    /// size, Wasm validity, ABI version section, imports against the
    /// allowlist, required exports.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidModule`], [`ErrorKind::AbiVersionMismatch`],
    /// [`ErrorKind::DisallowedImport`] or [`ErrorKind::MissingExport`].
    pub fn compile(&self, wasm: &[u8]) -> Result<CompiledPlugin> {
        self.check_container(wasm)?;
        // Before compiling: a module for another ABI costs no translation.
        check_abi_version(wasm)?;
        let module = self.validate(wasm)?;
        if let Some(problem) = self.import_problems(&module).into_iter().next() {
            return Err(problem);
        }
        if let Some(problem) = export_problems(&module).into_iter().next() {
            return Err(problem);
        }
        Ok(CompiledPlugin {
            module,
            size_bytes: wasm.len(),
        })
    }

    /// Every reason `compile` would refuse `wasm`, not only the first
    /// (`plugins inspect`): the ABI section, then each disallowed import
    /// and each missing export. Checks that guard the host (size, magic,
    /// the shape of sections, Wasm validation) still stop at the first
    /// failure, as nothing after them can be read safely. Empty when
    /// `compile` accepts the module.
    pub fn problems(&self, wasm: &[u8]) -> Vec<Error> {
        let mut problems = Vec::new();
        if let Err(problem) = self.check_container(wasm) {
            return vec![problem];
        }
        if let Err(problem) = check_abi_version(wasm) {
            problems.push(problem);
        }
        match self.validate(wasm) {
            Ok(module) => {
                problems.extend(self.import_problems(&module));
                problems.extend(export_problems(&module));
            }
            Err(problem) => problems.push(problem),
        }
        problems
    }

    /// Size and magic: whether `wasm` may be looked at all.
    fn check_container(&self, wasm: &[u8]) -> Result<()> {
        if wasm.len() > self.limits.max_module_bytes {
            return Err(ErrorKind::InvalidModule(format!(
                "module is {} bytes, more than the limit of {} bytes",
                wasm.len(),
                self.limits.max_module_bytes
            ))
            .into());
        }
        if !wasm.starts_with(b"\0asm") {
            return Err(ErrorKind::InvalidModule(
                "not a WebAssembly module (missing `\\0asm` magic); build plugins for \
                 wasm32-unknown-unknown"
                    .into(),
            )
            .into());
        }
        Ok(())
    }

    /// The section shapes (before wasmi sees them), then wasmi's
    /// validation.
    fn validate(&self, wasm: &[u8]) -> Result<Module> {
        let required = REQUIRED_FUNCTIONS.map(|(name, _, _)| name);
        shape::check_module_shape(wasm, &required, self.limits.max_memory_bytes)?;
        Module::new(&self.engine, wasm)
            .map_err(|error| ErrorKind::InvalidModule(error.to_string()).into())
    }

    /// Each import the allowlist refuses, with why.
    fn import_problems(&self, module: &Module) -> Vec<Error> {
        module
            .imports()
            .filter_map(|import| {
                let (module_name, name) = (import.module(), import.name());
                let reason = if module_name != host_functions::MODULE {
                    format!(
                        "plugins get no WASI and no other modules; only `{}` functions from \
                         `allowed_host_functions` ({}) can be imported",
                        host_functions::MODULE,
                        self.allowed.join(", ")
                    )
                } else if let Some((params, results)) = host::signature(name) {
                    if !self.allowed.iter().any(|allowed| allowed == name) {
                        format!(
                            "`{name}` is not in allowed_host_functions ({}); add it there if \
                             you trust this plugin with it",
                            self.allowed.join(", ")
                        )
                    } else {
                        match import.ty() {
                            ExternType::Func(ty)
                                if ty.params() == params && ty.results() == results =>
                            {
                                return None
                            }
                            other => format!(
                                "wrong type {other:?}, expected a function {params:?} -> \
                                 {results:?}"
                            ),
                        }
                    }
                } else {
                    format!(
                        "no such host function; known: {}",
                        host_functions::ALL.join(", ")
                    )
                };
                Some(
                    ErrorKind::DisallowedImport {
                        module: module_name.to_string(),
                        name: name.to_string(),
                        reason,
                    }
                    .into(),
                )
            })
            .collect()
    }

    /// Instantiates a compiled plugin, reads its arena and info, and runs
    /// its `init`, all under the fuel and memory limits.
    ///
    /// # Errors
    /// Any failure of the guest code (see [`PluginInstance::call`]), a bad
    /// arena declaration or unreadable info.
    pub fn instantiate(
        &self,
        compiled: &CompiledPlugin,
        name_hint: &str,
        settings: &PluginSettings,
    ) -> Result<PluginInstance> {
        PluginInstance::new(self, compiled, name_hint, settings)
    }

    /// [`PluginRuntime::compile`] then [`PluginRuntime::instantiate`].
    ///
    /// # Errors
    /// See both.
    pub fn load(
        &self,
        wasm: &[u8],
        name_hint: &str,
        settings: &PluginSettings,
    ) -> Result<PluginInstance> {
        let compiled = self.compile(wasm)?;
        self.instantiate(&compiled, name_hint, settings)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<host::HostState> {
        &self.linker
    }
}

/// Finds the ABI version custom section by walking the module's sections
/// (id byte, LEB128 size) without compiling anything.
fn check_abi_version(wasm: &[u8]) -> Result<()> {
    let truncated = || Error::from(ErrorKind::InvalidModule("truncated section header".into()));
    let mut found = None;
    let mut at = 8; // magic + version
    while at < wasm.len() {
        let id = wasm[at];
        let (size, after_size) = read_leb_u32(wasm, at + 1).ok_or_else(truncated)?;
        let end = after_size
            .checked_add(size as usize)
            .filter(|end| *end <= wasm.len())
            .ok_or_else(truncated)?;
        if id == 0 {
            let (name_len, name_start) = read_leb_u32(wasm, after_size).ok_or_else(truncated)?;
            let name_end = name_start.saturating_add(name_len as usize);
            if name_end <= end && &wasm[name_start..name_end] == ABI_VERSION_SECTION.as_bytes() {
                found = match &wasm[name_end..end] {
                    &[a, b, c, d] => Some(u32::from_le_bytes([a, b, c, d])),
                    _ => None,
                };
                break;
            }
        }
        at = end;
    }
    if found != Some(ABI_VERSION) {
        return Err(ErrorKind::AbiVersionMismatch {
            found,
            expected: ABI_VERSION,
        }
        .into());
    }
    Ok(())
}

/// An unsigned LEB128 `u32` at `at`; returns it and the offset after it.
fn read_leb_u32(bytes: &[u8], mut at: usize) -> Option<(u32, usize)> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u32::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

/// Each required export that is missing or of the wrong type.
fn export_problems(module: &Module) -> Vec<Error> {
    let mut problems = Vec::new();
    if !matches!(
        module.get_export(exports::MEMORY),
        Some(ExternType::Memory(_))
    ) {
        problems.push(
            ErrorKind::MissingExport {
                name: exports::MEMORY.into(),
                detail: "a plugin must export its linear memory as `memory`".into(),
            }
            .into(),
        );
    }
    for (name, params, results) in REQUIRED_FUNCTIONS {
        let ok = match module.get_export(name) {
            Some(ExternType::Func(ty)) => {
                params.contains(&ty.params().len())
                    && ty.results().len() == results
                    && ty
                        .params()
                        .iter()
                        .chain(ty.results())
                        .all(|t| *t == wasmi::ValType::I32)
            }
            _ => false,
        };
        if !ok {
            let params = params
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            problems.push(
                ErrorKind::MissingExport {
                    name: name.into(),
                    detail: format!(
                        "expected a function taking {params} i32 and returning {results} i32 \
                         (see docs/ABI.md)"
                    ),
                }
                .into(),
            );
        }
    }
    problems
}
