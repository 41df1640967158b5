//! The small sections of the configuration: `[proxy]`, `[[sources]]`,
//! `[output]`, `[pipeline]`, `[mapping]`, `[filtering]`, `[numbering]` and
//! `[serve]`.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// Threads that run the parallel-safe stages (plugins that declare
    /// `parallel_safe`, the native mapping and filters) on several batches
    /// at once; the output is the same as with one. 0 (the default) = the
    /// machine's cores; 1 = everything on the pipeline's own thread.
    #[serde(default)]
    pub workers: usize,
}

impl PipelineConfig {
    /// Worker threads to use: `workers`, or the available cores when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: default_batch_size(),
            compress_held: CompressHeld::default(),
            workers: 0,
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
