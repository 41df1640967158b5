//! The seed's `[proxy_generation.wasm_plugins]` section with its keys kept
//! as they are (limits, security, strategies, fallbacks), plugin config
//! values (`[plugins.<name>]`) and byte sizes (`"64MB"`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::Result;

/// `[proxy_generation]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyGeneration {
    /// `[proxy_generation.wasm_plugins]`.
    #[serde(default)]
    pub wasm_plugins: WasmPlugins,
}

/// `[proxy_generation.wasm_plugins]`: the seed's keys, kept as they are.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmPlugins {
    /// Load plugins at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Directory scanned for `*.wasm`.
    #[serde(default = "default_plugin_directory")]
    pub plugin_directory: PathBuf,
    /// Linear-memory limit per plugin (`"64MB"`, `"64 MiB"`, bytes).
    #[serde(default = "default_memory", deserialize_with = "deserialize_size")]
    pub max_memory_per_plugin: u64,
    /// Wall-clock limit per plugin call.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Watch the plugin directory in long-running mode (`serve`).
    #[serde(default = "yes")]
    pub enable_hot_reload: bool,
    /// Fuel (≈ Wasm instructions) per plugin call; the calls one batch is
    /// split into share it.
    #[serde(default = "default_fuel")]
    pub fuel_per_call: u64,
    /// Fuel a run may use per channel it hands a plugin, on top of one
    /// `fuel_per_call` (the per-run budget).
    #[serde(default = "default_fuel_per_channel")]
    pub fuel_per_channel: u64,
    /// Wall-clock microseconds a run's stage calls may take per channel
    /// handed to a plugin, on top of one `timeout_seconds` (the per-run
    /// deadline).
    #[serde(default = "default_time_per_channel_us")]
    pub time_per_channel_us: u64,
    /// Deepest Wasm call stack.
    #[serde(default = "default_recursion")]
    pub max_recursion_depth: usize,
    /// Fuel metering; `false` also disables `timeout_seconds` (benchmarks only).
    #[serde(default = "yes")]
    pub fuel_metering: bool,
    /// `[…security]`.
    #[serde(default)]
    pub security: Security,
    /// `[…strategies]`.
    #[serde(default)]
    pub strategies: Strategies,
    /// `[…fallbacks]`.
    #[serde(default)]
    pub fallbacks: Fallbacks,
}

impl Default for WasmPlugins {
    fn default() -> Self {
        WasmPlugins {
            enabled: true,
            plugin_directory: default_plugin_directory(),
            max_memory_per_plugin: default_memory(),
            timeout_seconds: default_timeout(),
            enable_hot_reload: true,
            fuel_per_call: default_fuel(),
            fuel_per_channel: default_fuel_per_channel(),
            time_per_channel_us: default_time_per_channel_us(),
            max_recursion_depth: default_recursion(),
            fuel_metering: true,
            security: Security::default(),
            strategies: Strategies::default(),
            fallbacks: Fallbacks::default(),
        }
    }
}

impl WasmPlugins {
    /// The runtime limits these keys describe.
    pub fn runtime_limits(&self) -> crate::runtime::RuntimeLimits {
        let defaults = crate::runtime::RuntimeLimits::default();
        crate::runtime::RuntimeLimits {
            fuel_per_call: self.fuel_per_call,
            fuel_per_channel: self.fuel_per_channel,
            timeout: Duration::from_secs(self.timeout_seconds),
            time_per_channel: Duration::from_micros(self.time_per_channel_us),
            max_memory_bytes: self.max_memory_per_plugin,
            max_recursion_depth: self.max_recursion_depth,
            fuel_metering: self.fuel_metering,
            ..defaults
        }
    }
}

fn yes() -> bool {
    true
}
fn default_plugin_directory() -> PathBuf {
    PathBuf::from("./plugins")
}
// The limits' defaults live in one place, `RuntimeLimits::default()`.
fn default_memory() -> u64 {
    crate::runtime::RuntimeLimits::default().max_memory_bytes
}
fn default_timeout() -> u64 {
    crate::runtime::RuntimeLimits::default().timeout.as_secs()
}
fn default_fuel() -> u64 {
    crate::runtime::RuntimeLimits::default().fuel_per_call
}
fn default_fuel_per_channel() -> u64 {
    crate::runtime::RuntimeLimits::default().fuel_per_channel
}
fn default_time_per_channel_us() -> u64 {
    crate::runtime::RuntimeLimits::default()
        .time_per_channel
        .as_micros() as u64
}
fn default_recursion() -> usize {
    crate::runtime::RuntimeLimits::default().max_recursion_depth
}

/// `[proxy_generation.wasm_plugins.security]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// No host function offers network access; `true` is reported.
    #[serde(default)]
    pub allow_network_access: bool,
    /// No host function offers file access; `true` is reported.
    #[serde(default)]
    pub allow_file_system_access: bool,
    /// The only host functions the linker defines.
    #[serde(default = "default_allowed")]
    pub allowed_host_functions: Vec<String>,
    /// Ed25519 public keys (64 hex digits each) whose signatures are trusted.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Refuse plugins without a valid signature by a trusted key.
    #[serde(default)]
    pub require_signatures: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            allow_network_access: false,
            allow_file_system_access: false,
            allowed_host_functions: default_allowed(),
            trusted_keys: Vec::new(),
            require_signatures: false,
        }
    }
}

fn default_allowed() -> Vec<String> {
    ["log", "get_memory_usage", "read_channels", "write_channels"]
        .map(String::from)
        .to_vec()
}

/// `[proxy_generation.wasm_plugins.strategies]`: per stage, strategy names in
/// order of preference (plugin names or native strategies).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategies {
    /// Candidates for source loading.
    #[serde(default)]
    pub source_loading: Vec<String>,
    /// Candidates for data mapping.
    #[serde(default)]
    pub data_mapping: Vec<String>,
    /// Candidates for filtering.
    #[serde(default)]
    pub filtering: Vec<String>,
    /// Candidates for channel numbering.
    #[serde(default)]
    pub channel_numbering: Vec<String>,
    /// Candidates for M3U generation.
    #[serde(default)]
    pub m3u_generation: Vec<String>,
}

impl Strategies {
    /// The list for `stage`.
    pub fn for_stage(&self, stage: crate::abi::Stage) -> &[String] {
        use crate::abi::Stage;
        match stage {
            Stage::SourceLoading => &self.source_loading,
            Stage::DataMapping => &self.data_mapping,
            Stage::Filtering => &self.filtering,
            Stage::ChannelNumbering => &self.channel_numbering,
            Stage::M3uGeneration => &self.m3u_generation,
        }
    }
}

/// `[proxy_generation.wasm_plugins.fallbacks]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallbacks {
    /// Re-run a failed batch with the next strategy (else the run fails).
    #[serde(default = "yes")]
    pub enable_fallbacks: bool,
    /// Wall-clock limit of a plugin call made as a fallback.
    #[serde(default = "default_fallback_timeout")]
    pub fallback_timeout_ms: u64,
    /// Consecutive failures after which a plugin is switched off (circuit open).
    #[serde(default = "default_max_failures")]
    pub max_plugin_failures: u32,
    /// Seconds after which a switched-off plugin is tried again (0 = only
    /// after its file is reloaded).
    #[serde(default = "default_circuit_reset")]
    pub circuit_reset_seconds: u64,
}

impl Default for Fallbacks {
    fn default() -> Self {
        Fallbacks {
            enable_fallbacks: true,
            fallback_timeout_ms: default_fallback_timeout(),
            max_plugin_failures: default_max_failures(),
            circuit_reset_seconds: default_circuit_reset(),
        }
    }
}

fn default_circuit_reset() -> u64 {
    300
}

fn default_fallback_timeout() -> u64 {
    5000
}
fn default_max_failures() -> u32 {
    3
}

/// A plugin config value: strings, numbers and booleans reach the plugin as text.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    untagged,
    expecting = "must be a string, integer, float or boolean: plugin settings reach the plugin as text"
)]
pub enum ConfigValue {
    /// A string.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::Text(text) => f.write_str(text),
            ConfigValue::Integer(value) => write!(f, "{value}"),
            ConfigValue::Float(value) => write!(f, "{value}"),
            ConfigValue::Bool(value) => write!(f, "{value}"),
        }
    }
}

/// Parses sizes like `"64MB"`, `"64 MiB"`, `"512k"`, `"1.5 GB"` or a bare
/// number of bytes. K/M/G units are binary (1 MB = 1 MiB = 1,048,576 bytes),
/// as memory limits usually are.
///
/// # Errors
/// Text that is not a number followed by an optional known unit.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. \"64MB\" or \"64 MiB\""))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KB, MB, GB (or KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size `{text}` is out of range"));
    }
    Ok(bytes as u64)
}

pub(super) fn deserialize_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "must be a size: a number of bytes, or text such as \"64MB\" or \"64 MiB\""
    )]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SEED: &str = r#"
[proxy_generation.wasm_plugins]
enabled = true
plugin_directory = "./plugins"
max_memory_per_plugin = "64MB"
timeout_seconds = 30
enable_hot_reload = true

[proxy_generation.wasm_plugins.security]
allow_network_access = false
allow_file_system_access = false
allowed_host_functions = ["log", "get_memory_usage", "read_channels", "write_channels"]

[proxy_generation.wasm_plugins.strategies]
source_loading = ["cloud_spill", "inmemory_full"]
data_mapping = ["zstd_compression", "sports_optimizer", "parallel_mapping"]
filtering = ["redis_spill", "bitmask_filter", "inmemory_filter"]

[proxy_generation.wasm_plugins.fallbacks]
enable_fallbacks = true
fallback_timeout_ms = 5000
max_plugin_failures = 3
"#;

    #[test]
    fn the_seed_section_parses_with_its_keys() {
        let config = Config::from_toml(SEED).unwrap();
        let plugins = &config.proxy_generation.wasm_plugins;
        assert_eq!(plugins.max_memory_per_plugin, 64 << 20);
        assert_eq!(plugins.timeout_seconds, 30);
        assert_eq!(plugins.strategies.filtering[1], "bitmask_filter");
        assert_eq!(plugins.fallbacks.max_plugin_failures, 3);
        assert_eq!(plugins.security.allowed_host_functions.len(), 4);
    }

    #[test]
    fn sizes_accept_common_spellings() {
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1.5GB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("64 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("lots").is_err());
    }
}
