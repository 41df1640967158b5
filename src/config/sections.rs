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
    /// Serve `/logos/{sha256}` (the URLs `logo_mapper`'s `rewrite_logos`
    /// makes) from a cache of downloaded logos.
    #[serde(default = "super::pressure::default_true")]
    pub logo_cache: bool,
    /// Where logos are kept (default: `logo-cache/` beside the config file;
    /// a configuration built in code keeps none and redirects every logo).
    #[serde(default)]
    pub logo_cache_directory: Option<PathBuf>,
    /// Largest logo downloaded: `"1MB"`, or bytes.
    #[serde(
        default = "default_logo_max",
        deserialize_with = "super::plugins::deserialize_size"
    )]
    pub logo_max_bytes: u64,
    /// Logos downloaded at once.
    #[serde(default = "default_logo_downloads")]
    pub logo_downloads: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            regenerate_interval_seconds: 0,
            watch_interval_ms: default_watch_interval(),
            logo_cache: true,
            logo_cache_directory: None,
            logo_max_bytes: default_logo_max(),
            logo_downloads: default_logo_downloads(),
        }
    }
}

fn default_logo_max() -> u64 {
    1 << 20
}

fn default_logo_downloads() -> usize {
    4
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

/// One playlist source: a file (`path`), standard input (`path = "-"`) or
/// an HTTP(S) URL (`url`), with the settings of its download.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name shown in logs, stats, `/health` and `/metrics` (default: the
    /// path, or the URL with its credentials masked).
    #[serde(default)]
    pub name: String,
    /// File path, or `-` for standard input.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `http://` or `https://` URL (https needs a build with the `https`
    /// feature, see README).
    #[serde(default)]
    pub url: Option<String>,
    /// `User-Agent` of the download (providers often refuse unknown ones).
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Further request headers, e.g. `{ Referer = "http://provider/" }`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Longest wait for a connection to each of the host's addresses, in
    /// seconds (name resolution has the system resolver's own timeout).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Longest wait for any read of the response, in seconds.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_seconds: u64,
    /// Further attempts after a connection error, a timeout, a cut-off body
    /// or a 5xx/429 answer (4xx answers are not retried).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry, in ms; doubled for each further one.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_ms: u64,
    /// Redirects followed.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// Largest body accepted (after decompression): `"1GiB"`, `"300MB"`, or bytes.
    #[serde(
        default = "default_max_body",
        deserialize_with = "super::plugins::deserialize_size"
    )]
    pub max_bytes: u64,
}

impl SourceConfig {
    /// A file source with every download setting at its default.
    pub fn file(path: impl Into<PathBuf>) -> SourceConfig {
        SourceConfig {
            name: String::new(),
            path: Some(path.into()),
            url: None,
            user_agent: None,
            headers: std::collections::BTreeMap::new(),
            connect_timeout_seconds: default_connect_timeout(),
            read_timeout_seconds: default_read_timeout(),
            retries: default_retries(),
            retry_backoff_ms: default_retry_backoff(),
            max_redirects: default_max_redirects(),
            max_bytes: default_max_body(),
        }
    }

    /// A URL source with every download setting at its default.
    pub fn url(url: impl Into<String>) -> SourceConfig {
        SourceConfig {
            path: None,
            url: Some(url.into()),
            ..SourceConfig::file("")
        }
    }
}

fn default_connect_timeout() -> u64 {
    10
}

fn default_read_timeout() -> u64 {
    30
}

fn default_retries() -> u32 {
    2
}

fn default_retry_backoff() -> u64 {
    1000
}

fn default_max_redirects() -> u32 {
    5
}

fn default_max_body() -> u64 {
    1 << 30
}

/// `[last_good]`: keeping each source's last good copy and using it when a
/// source fails or collapses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastGoodConfig {
    /// Check every source and keep its last good copy (default true). Off:
    /// sources are read as they are, URLs streamed straight into the reader.
    #[serde(default = "super::pressure::default_true")]
    pub enabled: bool,
    /// Where the copies are kept (default: `<output>.last-good/` beside the
    /// output file; with the output on standard output, `last-good/` beside
    /// the config file; a configuration built in code keeps none).
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// A source whose channel count fell by more than this share of its
    /// last good copy's is not used (0.5 = lost more than half; 1.0 = never
    /// refused for shrinking).
    #[serde(default = "default_max_shrink")]
    pub max_shrink: f64,
    /// A source file modified less than this long ago is looked at again
    /// after this long, and read only once two looks agree on its size and
    /// modification time, in ms.
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
    /// `run`: fail (exit non-zero, the output left as it was) instead of
    /// writing a playlist with a stale source (also `run --fail-on-stale`).
    #[serde(default)]
    pub fail_on_stale: bool,
}

impl Default for LastGoodConfig {
    fn default() -> Self {
        LastGoodConfig {
            enabled: true,
            directory: None,
            max_shrink: default_max_shrink(),
            settle_ms: default_settle(),
            fail_on_stale: false,
        }
    }
}

fn default_max_shrink() -> f64 {
    0.5
}

fn default_settle() -> u64 {
    500
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
