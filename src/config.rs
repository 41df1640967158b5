//! The TOML configuration: the seed's `[proxy_generation.wasm_plugins]`
//! section with its keys kept as they are, plus what the pipeline needs.
//!
//! Unknown keys are errors; every error names the file, line, column and key
//! path. Relative paths are resolved against the config file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::abi::MemoryPressureLevel;
use crate::memory::MemoryThresholds;
use crate::{Error, ErrorKind, Result};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of the generated proxy.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Playlists to read, in order; each gets its own source id.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Where the playlist goes.
    #[serde(default)]
    pub output: OutputConfig,
    /// Batching.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Native data-mapping rules.
    #[serde(default)]
    pub mapping: MappingConfig,
    /// Native include/exclude filters.
    #[serde(default)]
    pub filtering: FilteringConfig,
    /// Channel numbering.
    #[serde(default)]
    pub numbering: NumberingConfig,
    /// Memory-pressure thresholds.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// The spill store: tiers, compression, spill directory.
    #[serde(default)]
    pub store: StoreConfig,
    /// The seed's plugin section.
    #[serde(default)]
    pub proxy_generation: ProxyGeneration,
    /// Per-plugin settings, `[plugins.<name>]`, passed to `get_config`.
    #[serde(default)]
    pub plugins: BTreeMap<String, BTreeMap<String, ConfigValue>>,
    /// The long-running `serve` mode.
    #[serde(default)]
    pub serve: ServeConfig,
    /// The native rules, parsed once when the file was read.
    #[serde(skip)]
    native_rules: Option<std::sync::Arc<crate::native::NativeRules>>,
}

/// `[serve]`: the HTTP server of `m3u-plugin-host serve`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (loopback by default).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Regenerate at least this often, in seconds (0 = only on changes).
    #[serde(default)]
    pub regenerate_interval_seconds: u64,
    /// How often sources and plugin files are checked for changes, in ms.
    #[serde(default = "default_watch_interval")]
    pub watch_interval_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            regenerate_interval_seconds: 0,
            watch_interval_ms: default_watch_interval(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_watch_interval() -> u64 {
    1000
}

/// Identity of the generated proxy (sent to plugins in the stage context).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Name of the proxy.
    #[serde(default = "default_proxy_name")]
    pub name: String,
    /// Base URL the proxy is served from.
    #[serde(default)]
    pub base_url: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            name: default_proxy_name(),
            base_url: String::new(),
        }
    }
}

fn default_proxy_name() -> String {
    "m3u-proxy".into()
}

/// One playlist source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name shown in logs.
    #[serde(default)]
    pub name: String,
    /// File path, or `-` for standard input.
    pub path: PathBuf,
}

/// Where the playlist goes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// File path, or `-` for standard output.
    #[serde(default = "default_output")]
    pub path: PathBuf,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            path: default_output(),
        }
    }
}

fn default_output() -> PathBuf {
    PathBuf::from("-")
}

/// Batching of the streaming pipeline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Channels per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How `inmemory_numbering` holds the playlist until the input ends.
    #[serde(default)]
    pub compress_held: CompressHeld,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: default_batch_size(),
            compress_held: CompressHeld::default(),
        }
    }
}

/// `[pipeline] compress_held`: whether held batches are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressHeld {
    /// Compressed at `high` pressure and above, which also keeps
    /// `inmemory_numbering` available up to `critical` (default).
    #[default]
    Auto,
    /// Always compressed (and available up to `critical`).
    Always,
    /// Never compressed: `inmemory_numbering` only up to `moderate`.
    Never,
}

fn default_batch_size() -> usize {
    1024
}

/// Native mapping rules, e.g. `'group_title equals "" SET group_title = "Other"'`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Rules, applied in order.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// Native filters.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilteringConfig {
    /// Filters, applied in order.
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Duplicate removal by the native filtering strategies
    /// (`[filtering.dedup]`, see [`crate::native::dedup`]).
    #[serde(default)]
    pub dedup: Option<crate::native::dedup::DedupConfig>,
}

/// One include or exclude filter.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// `include` or `exclude`.
    pub action: FilterActionConfig,
    /// Expression, e.g. `channel_name contains "sport" AND group_title not contains "adult"`.
    pub expression: String,
}

/// Whether a filter adds or removes matching channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterActionConfig {
    /// Matching channels are kept.
    Include,
    /// Matching channels are dropped.
    Exclude,
}

/// Channel numbering.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberingConfig {
    /// First number given to channels without a `tvg-chno`.
    #[serde(default = "default_start")]
    pub start: u32,
}

impl Default for NumberingConfig {
    fn default() -> Self {
        NumberingConfig {
            start: default_start(),
        }
    }
}

fn default_start() -> u32 {
    1
}

/// Memory-pressure thresholds (fractions of the limit in use).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// From this fraction on: Moderate.
    #[serde(default = "t_moderate")]
    pub moderate: f64,
    /// From this fraction on: High.
    #[serde(default = "t_high")]
    pub high: f64,
    /// From this fraction on: Critical.
    #[serde(default = "t_critical")]
    pub critical: f64,
    /// From this fraction on: Emergency.
    #[serde(default = "t_emergency")]
    pub emergency: f64,
    /// Pretend this level (for testing); the CLI's `--memory-pressure` wins.
    #[serde(default)]
    pub force_level: Option<LevelName>,
}

fn t_moderate() -> f64 {
    MemoryThresholds::default().moderate
}
fn t_high() -> f64 {
    MemoryThresholds::default().high
}
fn t_critical() -> f64 {
    MemoryThresholds::default().critical
}
fn t_emergency() -> f64 {
    MemoryThresholds::default().emergency
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            moderate: t_moderate(),
            high: t_high(),
            critical: t_critical(),
            emergency: t_emergency(),
            force_level: None,
        }
    }
}

impl MemoryConfig {
    /// The thresholds as the memory monitor takes them.
    pub fn thresholds(&self) -> MemoryThresholds {
        MemoryThresholds {
            moderate: self.moderate,
            high: self.high,
            critical: self.critical,
            emergency: self.emergency,
        }
    }
}

/// `[store]`: where and how a run holds what it must keep across batches
/// (see [`crate::store`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the disk tier's spill files (default: the system's
    /// temporary directory). Spill files are unlinked as soon as they are
    /// created, so nothing is left there after a run.
    #[serde(default)]
    pub spill_directory: Option<PathBuf>,
    /// `false`: no disk tier (what does not fit in memory compressed is not
    /// held at all: the holding strategy is skipped).
    #[serde(default = "default_true")]
    pub spill_to_disk: bool,
    /// Block compression: `lz4` (default, fastest) or `zstd`.
    #[serde(default)]
    pub compression: CompressionName,
    /// zstd level, 1 (fast) to 19 (small); default 3.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// A zstd dictionary trained from your own playlists
    /// (`m3u-plugin-host store train-dictionary`); zstd only.
    #[serde(default)]
    pub zstd_dictionary: Option<PathBuf>,
    /// Pressure from which held data is compressed (default `high`).
    #[serde(default = "default_compress_from")]
    pub compress_from: LevelName,
    /// Pressure from which held data goes to disk (default `critical`).
    #[serde(default = "default_disk_from")]
    pub disk_from: LevelName,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            spill_directory: None,
            spill_to_disk: true,
            compression: CompressionName::default(),
            zstd_level: default_zstd_level(),
            zstd_dictionary: None,
            compress_from: default_compress_from(),
            disk_from: default_disk_from(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_zstd_level() -> i32 {
    3
}
fn default_compress_from() -> LevelName {
    LevelName(MemoryPressureLevel::High)
}
fn default_disk_from() -> LevelName {
    LevelName(MemoryPressureLevel::Critical)
}

/// `[store] compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionName {
    /// LZ4 (pure Rust).
    #[default]
    Lz4,
    /// zstd.
    Zstd,
}

impl StoreConfig {
    /// The spill directory the disk tier uses, `None` if disabled.
    pub fn spill_directory(&self) -> Option<PathBuf> {
        self.spill_to_disk.then(|| {
            self.spill_directory
                .clone()
                .unwrap_or_else(std::env::temp_dir)
        })
    }

    /// The block codec: `compression`, with the dictionary file read.
    /// `zstd` is forced by a stage's `zstd_compression` strategy.
    ///
    /// # Errors
    /// A dictionary file that cannot be read.
    pub fn codec(
        &self,
        force_zstd: bool,
        never_compress: bool,
    ) -> Result<crate::store::BlockCodec> {
        use crate::store::BlockCodec;
        if never_compress && !force_zstd {
            return Ok(BlockCodec::None);
        }
        if self.compression == CompressionName::Lz4 && !force_zstd {
            return Ok(BlockCodec::Lz4);
        }
        let dictionary = match &self.zstd_dictionary {
            Some(path) => Some(std::sync::Arc::new(std::fs::read(path).map_err(
                |error| {
                    Error::config_key(
                        "store.zstd_dictionary",
                        format!(
                            "cannot read {}: {error}; train one with `m3u-plugin-host store \
                         train-dictionary`",
                            path.display()
                        ),
                    )
                },
            )?)),
            None => None,
        };
        Ok(BlockCodec::Zstd {
            level: self.zstd_level,
            dictionary,
        })
    }
}

/// A memory-pressure level by name (`optimal` … `emergency`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelName(pub MemoryPressureLevel);

impl<'de> Deserialize<'de> for LevelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_level(&text)
            .map(LevelName)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `optimal`, `moderate`, `high`, `critical` or `emergency`.
///
/// # Errors
/// Any other text, with the list of levels.
pub fn parse_level(text: &str) -> std::result::Result<MemoryPressureLevel, String> {
    MemoryPressureLevel::ALL
        .into_iter()
        .find(|level| level.name().eq_ignore_ascii_case(text.trim()))
        .ok_or_else(|| {
            format!(
                "unknown memory pressure level `{text}`; known: optimal, moderate, high, \
                 critical, emergency"
            )
        })
}

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
    /// Fuel (≈ Wasm instructions) per plugin call.
    #[serde(default = "default_fuel")]
    pub fuel_per_call: u64,
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
            timeout: Duration::from_secs(self.timeout_seconds),
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

fn deserialize_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
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

impl Config {
    /// Reads and checks a config file; relative paths in it are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, wrong types, unknown keys, bad values.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::io(path, error))?;
        let mut config = Config::from_toml(&text).map_err(|error| error.in_config_file(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses TOML text (paths stay as written).
    ///
    /// # Errors
    /// TOML syntax, wrong types, unknown keys, bad values — with line, column
    /// and key path.
    pub fn from_toml(text: &str) -> Result<Config> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let inner = error.into_inner();
            let location = inner.span().map(|span| line_column(text, span.start));
            Error::from(ErrorKind::Config {
                path: None,
                location,
                key: (key != "." && !key.is_empty()).then_some(key),
                message: inner.message().to_string(),
            })
        })?;
        config.validate()?;
        let mut config = config;
        config.native_rules = Some(std::sync::Arc::new(crate::native::NativeRules::parse(
            &config,
        )?));
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=19).contains(&self.store.zstd_level) {
            return Err(Error::config_key(
                "store.zstd_level",
                format!(
                    "{} is not a zstd level: use 1 (fast) to 19 (small)",
                    self.store.zstd_level
                ),
            ));
        }
        if self.store.disk_from.0 < self.store.compress_from.0 {
            return Err(Error::config_key(
                "store.disk_from",
                "must not be below store.compress_from (data is compressed before it spills)",
            ));
        }
        if self.pipeline.batch_size == 0 {
            return Err(Error::config_key(
                "pipeline.batch_size",
                "must be at least 1",
            ));
        }
        let m = &self.memory;
        let ordered = [m.moderate, m.high, m.critical, m.emergency];
        if ordered.iter().any(|t| !(0.0..=1.0).contains(t))
            || ordered.windows(2).any(|pair| pair[0] > pair[1])
        {
            return Err(Error::config_key(
                "memory",
                "thresholds must be fractions between 0 and 1 with \
                 moderate <= high <= critical <= emergency",
            ));
        }
        let plugins = &self.proxy_generation.wasm_plugins;
        if plugins.max_memory_per_plugin < (2 << 20) {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.max_memory_per_plugin",
                "must be at least 2MB: an SDK plugin's stack and arena alone take about 1.3 MiB",
            ));
        }
        if plugins.timeout_seconds == 0 {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.timeout_seconds",
                "must be at least 1",
            ));
        }
        if plugins.fuel_per_call == 0 {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.fuel_per_call",
                "must be at least 1",
            ));
        }
        crate::runtime::check_allowlist(&plugins.security.allowed_host_functions)?;
        for key in &plugins.security.trusted_keys {
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::config_key(
                    "proxy_generation.wasm_plugins.security.trusted_keys",
                    format!(
                        "`{key}` is not an ed25519 public key: expected 64 hex digits, as \
                         printed by `m3u-plugin-host keygen`"
                    ),
                ));
            }
        }
        if plugins.security.require_signatures && plugins.security.trusted_keys.is_empty() {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.security.require_signatures",
                "require_signatures = true needs at least one key in trusted_keys",
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.as_os_str() != "-" && path.is_relative() {
                *path = base.join(&*path);
            }
        };
        for source in &mut self.sources {
            resolve(&mut source.path);
        }
        resolve(&mut self.output.path);
        resolve(&mut self.proxy_generation.wasm_plugins.plugin_directory);
        if let Some(path) = &mut self.store.spill_directory {
            resolve(path);
        }
        if let Some(path) = &mut self.store.zstd_dictionary {
            resolve(path);
        }
    }

    /// The native rules (`[mapping]`, `[filtering]`): those parsed when the
    /// file was read, or parsed now for a configuration built in code (or
    /// changed since).
    ///
    /// # Errors
    /// A rule that does not parse, naming its key.
    pub fn native_rules(&self) -> Result<std::sync::Arc<crate::native::NativeRules>> {
        match &self.native_rules {
            Some(rules) if rules.parsed_from(self) => Ok(rules.clone()),
            _ => crate::native::NativeRules::parse(self).map(std::sync::Arc::new),
        }
    }

    /// Config values of every plugin as text, for `get_config`.
    pub fn plugin_settings(&self) -> crate::runtime::PluginSettings {
        self.plugins
            .iter()
            .map(|(plugin, values)| {
                let values = values
                    .iter()
                    .map(|(key, value)| (key.clone(), value.to_string()))
                    .collect();
                (plugin.clone(), values)
            })
            .collect()
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unknown_keys_are_errors_with_location_and_path() {
        let text = "[proxy_generation.wasm_plugins]\nenabled = true\ntimeout_secs = 3\n";
        let error = Config::from_toml(text).unwrap_err();
        let ErrorKind::Config {
            location,
            key,
            message,
            ..
        } = error.kind()
        else {
            panic!("not a config error: {error}")
        };
        assert_eq!(*location, Some((3, 1)));
        assert_eq!(
            key.as_deref(),
            Some("proxy_generation.wasm_plugins.timeout_secs")
        );
        assert!(
            message.contains("unknown field `timeout_secs`"),
            "{message}"
        );
        assert!(
            message.contains("timeout_seconds"),
            "lists the known keys: {message}"
        );
    }

    #[test]
    fn wrong_types_and_bad_sizes_name_the_key() {
        let error = Config::from_toml("[proxy_generation.wasm_plugins]\ntimeout_seconds = \"x\"\n")
            .unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(error.to_string().contains("timeout_seconds"), "{error}");
        let error = Config::from_toml(
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"64 parsecs\"\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("max_memory_per_plugin"),
            "{error}"
        );
        assert!(error.to_string().contains("unknown size unit"), "{error}");
    }

    #[test]
    fn unknown_host_functions_and_bad_rules_are_refused() {
        let error = Config::from_toml(
            "[proxy_generation.wasm_plugins.security]\nallowed_host_functions = [\"fd_write\"]\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("known: log"), "{error}");
        let error = Config::from_toml(
            "[[filtering.filters]]\naction = \"include\"\nexpression = 'channel_name frobs \"x\"'\n",
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("filtering.filters[0].expression"),
            "{error}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let mut config =
            Config::from_toml("[[sources]]\npath = \"a.m3u\"\n[output]\npath = \"-\"\n").unwrap();
        config.resolve_paths(Path::new("/etc/m3u"));
        assert_eq!(config.sources[0].path, Path::new("/etc/m3u/a.m3u"));
        assert_eq!(config.output.path, Path::new("-"));
        assert_eq!(
            config.proxy_generation.wasm_plugins.plugin_directory,
            Path::new("/etc/m3u/./plugins")
        );
    }
}
