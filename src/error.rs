//! The host crate's one error type.
//!
//! [`Error`] boxes an [`ErrorKind`] so it stays one pointer wide on the hot
//! path; callers match on [`Error::kind`]. Messages are lowercase and say what
//! to do next where there is something to do.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in the host.
pub struct Error {
    kind: Box<ErrorKind>,
}

/// The kinds of [`Error`], for callers that react differently to each.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A plugin imports something the allowlist does not offer.
    DisallowedImport {
        /// Import module, e.g. `wasi_snapshot_preview1`.
        module: String,
        /// Import name, e.g. `fd_write`.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The plugin was built for another ABI version (or carries none).
    AbiVersionMismatch {
        /// Version the plugin declares, `None` if it has no version section.
        found: Option<u32>,
        /// Version this host speaks.
        expected: u32,
    },
    /// A required export is missing or has the wrong type.
    MissingExport {
        /// Export name.
        name: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The plugin used up its fuel budget.
    OutOfFuel {
        /// The budget it had for this call.
        budget: u64,
    },
    /// The plugin's call ran past its wall-clock deadline.
    Timeout {
        /// The deadline in milliseconds.
        limit_ms: u64,
    },
    /// The plugin tried to grow its memory past `max_memory_per_plugin`.
    MemoryLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The plugin trapped.
    Trap {
        /// wasmi's trap code, when it was a Wasm trap.
        code: Option<wasmi::TrapCode>,
        /// wasmi's message.
        message: String,
    },
    /// The plugin answered something the host cannot accept.
    MalformedOutput(String),
    /// The plugin reported an error status.
    PluginStatus {
        /// Export that returned it.
        function: &'static str,
        /// The status code (see `m3u_proxy_plugin_abi::status`).
        status: i32,
        /// The last error line the plugin logged during that call, which is
        /// how SDK plugins say why (e.g. which config key is wrong).
        message: Option<String>,
    },
    /// A pointer/length pair from the plugin falls outside its arena.
    ArenaOverflow {
        /// Pointer the plugin passed.
        ptr: u64,
        /// Length the plugin passed.
        len: u64,
        /// Arena start.
        arena_start: u64,
        /// Arena length.
        arena_len: u64,
    },
    /// The module is not valid WebAssembly or failed to instantiate.
    InvalidModule(String),
    /// A plugin is switched off after too many failures.
    PluginDisabled {
        /// Plugin name.
        name: String,
        /// Failures counted.
        failures: u32,
    },
    /// A plugin's signature is missing (when required), malformed, made by
    /// an untrusted key, or does not match the module bytes.
    Signature {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The configuration is wrong.
    Config {
        /// File the error is in, if it came from a file.
        path: Option<PathBuf>,
        /// Line and column (1-based), if known.
        location: Option<(usize, usize)>,
        /// Dotted key path, if known.
        key: Option<String>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A filter expression or mapping rule does not parse.
    Rule {
        /// The rule text.
        rule: String,
        /// What is wrong.
        message: String,
    },
    /// An M3U input could not be read at all (malformed entries are skipped
    /// and counted, not reported as this error).
    M3u {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The spill store failed (disk full, unreadable block): the run stops
    /// without writing a truncated playlist.
    Store {
        /// The backend: `memory`, `disk`, …
        store: String,
        /// Where it keeps its blocks (the spill directory, …).
        location: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// A source playlist could not be used: its download failed, or what
    /// it gave was not a playlist, and no last good copy stands in for it.
    Source {
        /// The source's name (a URL with its credentials masked).
        source: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The run was interrupted (Ctrl-C) before it finished; nothing was
    /// written in place of the output.
    Interrupted,
    /// An I/O error, with the path involved.
    Io {
        /// File involved, if any.
        path: Option<PathBuf>,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// What went wrong, for matching.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The wasmi trap code, if this error is a Wasm trap.
    pub fn as_trap_code(&self) -> Option<wasmi::TrapCode> {
        match *self.kind {
            ErrorKind::Trap { code, .. } => code,
            _ => None,
        }
    }

    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ErrorKind::Io {
            path: Some(path.into()),
            source,
        }
        .into()
    }

    /// A configuration error with only a message.
    pub fn config(message: impl Into<String>) -> Self {
        ErrorKind::Config {
            path: None,
            location: None,
            key: None,
            message: message.into(),
        }
        .into()
    }

    /// A configuration error about a key path.
    pub fn config_key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorKind::Config {
            path: None,
            location: None,
            key: Some(key.into()),
            message: message.into(),
        }
        .into()
    }

    /// A rule (filter expression / mapping rule) error.
    pub fn rule(rule: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorKind::Rule {
            rule: rule.into(),
            message: message.into(),
        }
        .into()
    }

    /// Malformed plugin output.
    pub fn malformed(message: impl Into<String>) -> Self {
        ErrorKind::MalformedOutput(message.into()).into()
    }

    /// True for failures that are the plugin's fault (the batch falls back).
    /// The load kinds count too: a module that loaded once can still fail
    /// them mid-run (an instance made again after a trap, or on a worker).
    pub fn is_plugin_failure(&self) -> bool {
        matches!(
            *self.kind,
            ErrorKind::DisallowedImport { .. }
                | ErrorKind::AbiVersionMismatch { .. }
                | ErrorKind::MissingExport { .. }
                | ErrorKind::InvalidModule(_)
                | ErrorKind::Signature { .. }
                | ErrorKind::OutOfFuel { .. }
                | ErrorKind::Timeout { .. }
                | ErrorKind::MemoryLimit { .. }
                | ErrorKind::Trap { .. }
                | ErrorKind::MalformedOutput(_)
                | ErrorKind::PluginStatus { .. }
                | ErrorKind::ArenaOverflow { .. }
                | ErrorKind::PluginDisabled { .. }
        )
    }

    /// A short, stable label of the kind, for counters and metrics.
    pub fn label(&self) -> &'static str {
        match *self.kind {
            ErrorKind::DisallowedImport { .. } => "disallowed_import",
            ErrorKind::AbiVersionMismatch { .. } => "abi_version",
            ErrorKind::MissingExport { .. } => "missing_export",
            ErrorKind::OutOfFuel { .. } => "out_of_fuel",
            ErrorKind::Timeout { .. } => "timeout",
            ErrorKind::MemoryLimit { .. } => "memory_limit",
            ErrorKind::Trap { .. } => "trap",
            ErrorKind::MalformedOutput(_) => "malformed_output",
            ErrorKind::PluginStatus { .. } => "plugin_status",
            ErrorKind::ArenaOverflow { .. } => "arena_overflow",
            ErrorKind::InvalidModule(_) => "invalid_module",
            ErrorKind::PluginDisabled { .. } => "disabled",
            ErrorKind::Signature { .. } => "signature",
            ErrorKind::Config { .. } => "config",
            ErrorKind::Rule { .. } => "rule",
            ErrorKind::M3u { .. } => "m3u",
            ErrorKind::Store { .. } => "store",
            ErrorKind::Source { .. } => "source",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Io { .. } => "io",
        }
    }

    /// A source that cannot be used (`source` is its display name, with any
    /// credentials masked).
    pub fn source(source: impl Into<String>, message: impl Into<String>) -> Self {
        Error::from(ErrorKind::Source {
            source: source.into(),
            message: message.into(),
        })
    }

    /// Adds the file path to a configuration error.
    pub(crate) fn in_config_file(mut self, file: &std::path::Path) -> Self {
        if let ErrorKind::Config { path, .. } = &mut *self.kind {
            if path.is_none() {
                *path = Some(file.to_path_buf());
            }
        }
        self
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error {
            kind: Box::new(kind),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ErrorKind::DisallowedImport {
                module,
                name,
                reason,
            } => write!(
                f,
                "plugin imports `{module}.{name}`, which this host does not offer: {reason}"
            ),
            ErrorKind::AbiVersionMismatch {
                found: Some(found),
                expected,
            } => write!(
                f,
                "plugin was built for ABI version {found}, this host speaks version {expected}: \
                 rebuild it against m3u-proxy-plugin-sdk for ABI {expected}"
            ),
            ErrorKind::AbiVersionMismatch {
                found: None,
                expected,
            } => write!(
                f,
                "plugin has no `{}` custom section: build it with m3u-proxy-plugin-sdk's \
                 export_plugin! (ABI {expected}) or see docs/ABI.md",
                m3u_proxy_plugin_abi::ABI_VERSION_SECTION
            ),
            ErrorKind::MissingExport { name, detail } => {
                write!(f, "plugin export `{name}` is unusable: {detail}")
            }
            ErrorKind::OutOfFuel { budget } => write!(
                f,
                "plugin ran out of fuel (budget {budget}): it loops or does too much work per \
                 batch; raise `fuel_per_call` only if the plugin is trusted"
            ),
            ErrorKind::Timeout { limit_ms } => {
                write!(
                    f,
                    "plugin call exceeded its wall-clock limit of {limit_ms} ms \
                     (`timeout_seconds` per batch, cut to what the run has left of \
                     `timeout_seconds + time_per_channel_us` per channel)"
                )
            }
            ErrorKind::MemoryLimit { limit } => write!(
                f,
                "plugin tried to grow its memory past the limit of {limit} bytes \
                 (`max_memory_per_plugin`)"
            ),
            ErrorKind::Trap {
                code: Some(code),
                message,
            } => {
                write!(f, "plugin trapped ({code:?}): {message}")
            }
            ErrorKind::Trap {
                code: None,
                message,
            } => write!(f, "plugin trapped: {message}"),
            ErrorKind::MalformedOutput(message) => write!(f, "malformed plugin output: {message}"),
            ErrorKind::PluginStatus {
                function,
                status,
                message,
            } => {
                write!(
                    f,
                    "plugin export `{function}` returned error status {status} ({})",
                    status_name(*status)
                )?;
                match message {
                    Some(message) => write!(f, ": {message}"),
                    None => Ok(()),
                }
            }
            ErrorKind::ArenaOverflow {
                ptr,
                len,
                arena_start,
                arena_len,
            } => write!(
                f,
                "plugin passed the range {ptr}..{} which is outside its arena \
                 {arena_start}..{}",
                ptr + len,
                arena_start + arena_len
            ),
            ErrorKind::InvalidModule(message) => write!(f, "invalid plugin module: {message}"),
            ErrorKind::PluginDisabled { name, failures } => write!(
                f,
                "plugin `{name}` is switched off after {failures} failures \
                 (`max_plugin_failures`); reload it to try again"
            ),
            ErrorKind::Signature { path, reason } => {
                write!(f, "signature check of {} failed: {reason}", path.display())
            }
            ErrorKind::Config {
                path,
                location,
                key,
                message,
            } => {
                f.write_str("configuration error")?;
                if let Some(path) = path {
                    write!(f, " in {}", path.display())?;
                }
                if let Some((line, column)) = location {
                    write!(f, " at line {line}, column {column}")?;
                }
                if let Some(key) = key {
                    write!(f, " (key `{key}`)")?;
                }
                write!(f, ": {message}")
            }
            ErrorKind::Rule { rule, message } => write!(f, "invalid rule `{rule}`: {message}"),
            ErrorKind::M3u { line, message } => write!(f, "m3u line {line}: {message}"),
            ErrorKind::Store {
                store,
                location,
                message,
            } => write!(f, "spill store `{store}` ({location}): {message}"),
            ErrorKind::Source { source, message } => write!(f, "source {source}: {message}"),
            ErrorKind::Interrupted => write!(
                f,
                "interrupted before the run finished: the output was not replaced"
            ),
            ErrorKind::Io {
                path: Some(path),
                source,
            } => write!(f, "{}: {source}", path.display()),
            ErrorKind::Io { path: None, source } => write!(f, "i/o error: {source}"),
        }
    }
}

fn status_name(status: i32) -> &'static str {
    use m3u_proxy_plugin_abi::status;
    match status {
        status::PLUGIN_ERROR => "plugin error",
        status::DECODE_ERROR => "could not decode its input",
        status::UNSUPPORTED_STAGE => "stage not supported",
        status::INPUT_TOO_LARGE => "input larger than its arena",
        status::CONFIG_ERROR => "configuration missing or invalid",
        _ => "unknown status",
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        ErrorKind::Io { path: None, source }.into()
    }
}

/// Result with the host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
