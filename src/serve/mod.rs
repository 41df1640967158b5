//! The long-running HTTP mode (`m3u-plugin-host serve`): its public API
//! ([`ServeOptions`], [`Server`], [`serve_forever`], [`Snapshot`]) and
//! starting and stopping the server; the playlist is generated in the
//! background and served from memory.
//!
//! # Layout
//!
//! - `mod.rs` (this file): options, the snapshot, the state the threads
//!   share, [`Server::start`] and shutdown.
//! - `regenerator.rs`: the regeneration thread (what it watches, the watch
//!   loop, the atomic swap, publishing snapshots).
//! - `routes.rs`: the HTTP workers, routing and the `/health` JSON
//!   ([`render_health`]).
//! - `metrics.rs`: the Prometheus exposition of `/metrics`
//!   ([`render_metrics`]).
//! - `served.rs`: one generation as served (gzip copy, `ETag`,
//!   `Last-Modified`, conditional requests).
//! - `logos.rs`: the logo cache of `/logos/{sha256}`.
//!
//! File stamps and change descriptions come from [`crate::watch`]; the
//! per-plugin figures are the pipeline's [`PluginStats`].
//!
//! # Design
//!
//! Two kinds of threads share one state (the served playlist, the latest
//! [`Snapshot`] and a stop flag):
//!
//! - **One regeneration thread** owns the [`Pipeline`] (and with it every
//!   plugin instance; wasmi stores are never shared between threads). It
//!   polls the *stamps* ([`crate::watch::Stamp`]: modification time and
//!   length) of the watched files every [`ServeOptions::watch_interval`]:
//!   every source playlist and, when plugins are enabled with
//!   `enable_hot_reload`, every `*.wasm` and `*.sig` file of
//!   `plugin_directory`. It regenerates when a stamp changed, when a
//!   watched file appeared or disappeared, or when
//!   [`ServeOptions::regenerate_interval`] has elapsed since the last attempt.
//!   A change is acted on once the stamps have *settled* (two polls in a row
//!   saw the same stamps), so a file caught in the middle of being written is
//!   not read half-way; replacing files by rename is still the safest way to
//!   update them. [`Pipeline::run`] itself reloads changed, new and removed
//!   plugin files at the start of the run, so a new plugin version is picked up
//!   between runs and no run mixes versions.
//! - **A small fixed pool of HTTP worker threads** ([`HTTP_WORKERS`]) take
//!   requests from one `tiny_http` listener and answer them from the shared
//!   state only; they never wait for a generation.
//!
//! **Atomic swap.** A generation renders the whole playlist into a fresh
//! `Vec<u8>`. Only when the run succeeded is that buffer (with its gzip
//! copy, `ETag` and `Last-Modified`, see `served.rs`) put behind the shared
//! `RwLock<Option<Arc<Served>>>`, replacing the previous `Arc` in one store;
//! a request clones the `Arc` under the read lock and streams it without
//! holding the lock. So a client always receives one complete playlist —
//! never a half-written one, never a mix of two. When a run fails, the previous
//! playlist keeps being served, and the error is logged and recorded.
//!
//! **Snapshot.** After every attempt the regeneration thread publishes a
//! [`Snapshot`] (counts, last error, last [`RunStats`], per-plugin
//! [`PluginStats`] since load taken from [`Pipeline::plugins`], current plugin
//! load problems) as an `Arc` behind a second lock; `/health` and `/metrics`
//! render from it. The playlist is swapped before the snapshot is published,
//! so once `/health` shows a new generation count the new playlist is already
//! being served.
//!
//! **Endpoints.** `GET /playlist.m3u` (`audio/x-mpegurl`; 503 until the first
//! success, which [`Server::start`] already waits for; `ETag` from the
//! content, `Last-Modified` from when that content first appeared, 304 for a
//! matching `If-None-Match` or `If-Modified-Since`, the gzip copy for
//! `Accept-Encoding: gzip`), `GET /health` (JSON,
//! always 200; `status` is `"degraded"` when the last generation failed, a
//! plugin circuit is open or a plugin file on disk failed to load) and
//! `GET /metrics` (Prometheus text format 0.0.4, see [`render_metrics`]).
//! `GET /logos/{sha256}` serves the logo cache (`logos.rs`: downloaded by
//! `[serve] logo_downloads` worker threads after each generation, 302 to the
//! original URL until then or when refused). `HEAD` is answered like `GET`
//! without the body. Other paths answer 404, other methods 405.
//!
//! **Shutdown.** A stop flag is checked by the regeneration thread between
//! sleeps of at most [`STOP_CHECK`] and by the HTTP workers, which wait for
//! requests with a timeout of [`STOP_CHECK`]. [`Server::shutdown`] (or
//! dropping the [`Server`]) sets it and joins every thread; a generation that
//! is running is allowed to finish first (plugin calls are bounded by fuel and
//! `timeout_seconds`).

mod logos;
mod metrics;
mod regenerator;
mod routes;
mod served;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::inputs::{Inputs, Location, SourceSpec};
use crate::pipeline::{Pipeline, PluginStats, RunStats};
use crate::{Error, Result};

pub use metrics::render_metrics;
use regenerator::{Regenerator, Watch};
pub use routes::render_health;
use served::Served;

/// Number of HTTP worker threads taking requests from the listener.
pub const HTTP_WORKERS: usize = 4;

/// Longest a thread goes without looking at the stop flag.
pub const STOP_CHECK: Duration = Duration::from_millis(50);

/// How `serve` runs: what it reads, where it listens, when it regenerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// Playlists to read, in order; empty means the config's `[[sources]]`.
    /// Standard input (`-`) is refused: it cannot be read again.
    pub inputs: Vec<PathBuf>,
    /// Address to listen on, e.g. `127.0.0.1:8080`; port 0 picks a free port
    /// (see [`Server::local_addr`]).
    pub listen: String,
    /// Regenerate at least this often even when nothing changed.
    pub regenerate_interval: Option<Duration>,
    /// How often the stamps of sources and plugin files are polled.
    pub watch_interval: Duration,
}

impl ServeOptions {
    /// The options of the config's `[serve]` table, reading the config's
    /// `[[sources]]`.
    pub fn from_config(config: &Config) -> Self {
        let serve = &config.serve;
        ServeOptions {
            inputs: Vec::new(),
            listen: serve.listen.clone(),
            regenerate_interval: (serve.regenerate_interval_seconds > 0)
                .then(|| Duration::from_secs(serve.regenerate_interval_seconds)),
            watch_interval: Duration::from_millis(serve.watch_interval_ms),
        }
    }
}

/// What `/health` and `/metrics` report: the state after the latest
/// generation attempt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Successful generations since start.
    pub generations: u64,
    /// Failed generations since start.
    pub failures: u64,
    /// Error of the most recent failed generation (kept after later successes).
    pub last_error: Option<String>,
    /// Whether the most recent attempt failed (the previous playlist is served).
    pub last_generation_failed: bool,
    /// When the last successful generation finished.
    pub last_success: Option<SystemTime>,
    /// Statistics of the last successful run.
    pub last_run: Option<RunStats>,
    /// Size of the playlist being served, in bytes.
    pub playlist_bytes: u64,
    /// The loaded plugins, with their counters since they were (re)loaded.
    pub plugins: Vec<PluginSnapshot>,
    /// Plugin files that failed to load and are not running as they are on
    /// disk (path and cause); cleared once the file changes and loads.
    pub plugin_load_errors: Vec<String>,
    /// Per source name: generations that used its last good copy because
    /// the source itself failed or was refused.
    pub stale_sources_total: std::collections::BTreeMap<String, u64>,
}

impl Snapshot {
    /// True when the last generation failed, a plugin circuit is open, a
    /// plugin file failed to load, or the last run read a stale source.
    pub fn is_degraded(&self) -> bool {
        self.last_generation_failed
            || self.plugins.iter().any(|plugin| plugin.stats.disabled)
            || !self.plugin_load_errors.is_empty()
            || !self.stale_sources().is_empty()
    }

    /// The sources the last successful run read from their last good copy.
    pub fn stale_sources(&self) -> Vec<&crate::inputs::SourceReport> {
        self.last_run.as_ref().map_or_else(Vec::new, |run| {
            run.sources
                .iter()
                .filter(|source| source.status == crate::inputs::SourceStatus::Stale)
                .collect()
        })
    }

    /// `"ok"` or `"degraded"` (see [`Snapshot::is_degraded`]).
    pub fn status(&self) -> &'static str {
        if self.is_degraded() {
            "degraded"
        } else {
            "ok"
        }
    }

    /// Seconds since the last successful generation, if there was one.
    pub fn seconds_since_last_success(&self) -> Option<f64> {
        self.last_success.map(|at| {
            SystemTime::now()
                .duration_since(at)
                .unwrap_or_default()
                .as_secs_f64()
        })
    }
}

/// One loaded plugin as `/health` and `/metrics` show it: the file it runs
/// from, its signature state and its figures since the file was (re)loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginSnapshot {
    /// File it was loaded from.
    pub path: PathBuf,
    /// Signature state label: `unsigned` or `signed`.
    pub signature: String,
    /// Its counters, failures and circuit state (`disabled`) since it was
    /// loaded: the pipeline's per-plugin type, [`PluginStats::from_slot`].
    pub stats: PluginStats,
}

/// State shared by the regeneration thread and the HTTP workers.
#[derive(Default)]
struct Shared {
    /// The playlist being served; replaced whole, only after a successful run.
    playlist: RwLock<Option<Arc<Served>>>,
    /// `/logos/{sha256}`: the logos of the playlist being served.
    logos: Option<logos::LogoCache>,
    /// The latest snapshot.
    snapshot: RwLock<Arc<Snapshot>>,
    /// Set once by shutdown.
    stop: AtomicBool,
}

impl Shared {
    fn playlist(&self) -> Option<Arc<Served>> {
        self.playlist
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A running server: the HTTP workers and the regeneration thread. Dropping
/// it shuts it down like [`Server::shutdown`].
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("generations", &self.generations())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the pipeline, generates the playlist once (an error here is
    /// returned), binds `listen` (port 0 allowed), starts the HTTP worker
    /// threads and the regeneration thread.
    ///
    /// # Errors
    /// No sources or standard input as a source, a pipeline that cannot be
    /// built (bad rules, plugin directory, strategy names), a first generation
    /// that fails, an address that cannot be bound, threads that cannot be
    /// spawned.
    pub fn start(config: Config, options: ServeOptions) -> Result<Server> {
        let inputs = resolve_inputs(&config, &options)?;
        let watch = Watch::new(&config, inputs);
        // Stamped before the plugins are loaded, so a change during the first
        // load or generation still triggers a regeneration.
        let stamps = watch.stamps();

        let logo_cache = config.serve.logo_cache.then(|| {
            logos::LogoCache::new(config.logo_cache_directory(), config.serve.logo_max_bytes)
        });
        let shared = Arc::new(Shared {
            logos: logo_cache,
            ..Shared::default()
        });
        let logo_downloads = config.serve.logo_downloads.max(1);
        let pipeline = Pipeline::new(config)?;
        let mut regenerator = Regenerator::new(pipeline, watch, &options, Arc::clone(&shared));
        regenerator.first_generation()?;

        let http = tiny_http::Server::http(options.listen.as_str()).map_err(|error| {
            Error::config_key(
                "serve.listen",
                format!("cannot listen on `{}`: {error}", options.listen),
            )
        })?;
        let addr = http.server_addr().to_ip().ok_or_else(|| {
            Error::config_key(
                "serve.listen",
                format!("`{}` is not an IP address and port", options.listen),
            )
        })?;
        let http = Arc::new(http);

        let mut server = Server {
            addr,
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(HTTP_WORKERS + 1),
        };
        for index in 0..HTTP_WORKERS {
            let http = Arc::clone(&http);
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("m3u-http-{index}"))
                .spawn(move || routes::http_worker(&http, &shared))
                .map_err(|error| Error::io("thread m3u-http", error))?;
            server.threads.push(handle);
        }
        if shared
            .logos
            .as_ref()
            .is_some_and(logos::LogoCache::downloads)
        {
            for index in 0..logo_downloads {
                let shared = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name(format!("m3u-logos-{index}"))
                    .spawn(move || {
                        if let Some(logos) = &shared.logos {
                            logos.work(&|| shared.stopped());
                        }
                    })
                    .map_err(|error| Error::io("thread m3u-logos", error))?;
                server.threads.push(handle);
            }
        }
        let handle = std::thread::Builder::new()
            .name("m3u-regenerate".into())
            .stack_size(crate::PIPELINE_THREAD_STACK)
            .spawn(move || regenerator.watch_loop(stamps))
            .map_err(|error| Error::io("thread m3u-regenerate", error))?;
        server.threads.push(handle);
        log::info!(
            "serving http://{addr}/playlist.m3u, /health and /metrics ({} bytes, generation 1)",
            shared.snapshot().playlist_bytes
        );
        Ok(server)
    }

    /// The address the server listens on (with the real port when `listen`
    /// asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of successful generations so far.
    pub fn generations(&self) -> u64 {
        self.shared.snapshot().generations
    }

    /// The latest snapshot (what `/health` and `/metrics` show).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Stops both threads and waits for them.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for handle in self.threads.drain(..) {
            let name = handle
                .thread()
                .name()
                .unwrap_or("server thread")
                .to_string();
            if handle.join().is_err() {
                log::error!("{name} panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Runs until the process is stopped (for the CLI): [`Server::start`], then
/// parks the calling thread.
///
/// # Errors
/// See [`Server::start`]; once started it does not return.
pub fn serve_forever(config: Config, options: ServeOptions) -> Result<()> {
    let server = Server::start(config, options)?;
    eprintln!(
        "serving http://{addr}/playlist.m3u (also /health, /metrics); stop with Ctrl-C",
        addr = server.local_addr()
    );
    loop {
        std::thread::park();
    }
}

fn resolve_inputs(config: &Config, options: &ServeOptions) -> Result<Inputs> {
    let inputs = if options.inputs.is_empty() {
        Inputs::from_config(config)?
    } else {
        let specs = options
            .inputs
            .iter()
            .map(|argument| SourceSpec::from_argument(argument))
            .collect::<Result<Vec<_>>>()?;
        Inputs::new(specs, config)
    };
    if inputs
        .specs()
        .iter()
        .any(|spec| spec.location == Location::Stdin)
    {
        return Err(Error::config_key(
            "sources",
            "serve re-reads its sources on every regeneration, and standard input (`-`) can \
             only be read once: give a file path or a URL",
        ));
    }
    let has_url = inputs
        .specs()
        .iter()
        .any(|spec| matches!(spec.location, Location::Url(_)));
    if has_url && options.regenerate_interval.is_none() {
        log::warn!(
            "URL sources are fetched again only when a regeneration runs: set [serve] \
             regenerate_interval_seconds (e.g. 3600) to follow the provider's changes"
        );
    }
    Ok(inputs)
}

/// Tests of the snapshot, and a snapshot with every field set that the tests of
/// `/health` and `/metrics` share.
#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, UNIX_EPOCH};

    use super::{PluginSnapshot, Snapshot};
    use crate::inputs::{SourceReport, SourceStatus};
    use crate::pipeline::{PluginStats, RunStats, StageStats};

    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            generations: 7,
            failures: 2,
            last_error: Some("boom".into()),
            last_generation_failed: false,
            last_success: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            last_run: Some(RunStats {
                memory_pressure: "high".into(),
                channels_loaded: 10_525,
                channels_written: 10_000,
                time_ms: 1500.0,
                stages: vec![StageStats {
                    stage: "data_mapping".into(),
                    channels_in: 10_525,
                    channels_out: 10_525,
                    time_ms: 250.0,
                    batches_by_strategy: vec![("group_normalizer".into(), 11)],
                    ..StageStats::default()
                }],
                ..RunStats::default()
            }),
            playlist_bytes: 123,
            plugins: vec![PluginSnapshot {
                path: PathBuf::from("/p/weird.wasm"),
                signature: "unsigned".into(),
                stats: PluginStats {
                    name: "we\"ird\\na\nme".into(),
                    version: "1.0.0".into(),
                    calls: 12,
                    fuel: 18_446_744_073_709_551_615,
                    failures: 3,
                    disabled: true,
                    time_us: 1_500_000,
                    bytes_in: 5,
                    bytes_out: 6,
                    ..PluginStats::default()
                },
            }],
            plugin_load_errors: Vec::new(),
            stale_sources_total: [("provider \"b\"".to_string(), 2)].into(),
        }
    }

    #[test]
    fn an_open_circuit_or_a_load_error_degrades_the_status() {
        let mut snapshot = snapshot();
        assert_eq!(snapshot.status(), "degraded", "circuit open");
        snapshot.plugins[0].stats.disabled = false;
        assert_eq!(snapshot.status(), "ok");
        snapshot.plugin_load_errors.push("/p/x.wasm: bad".into());
        assert_eq!(snapshot.status(), "degraded");
        snapshot.plugin_load_errors.clear();
        let stale = SourceReport {
            name: "provider".into(),
            status: SourceStatus::Stale,
            reason: Some("it is empty (0 bytes)".into()),
            channels: Some(10),
            copy_saved_unix: Some(1),
        };
        snapshot.last_run.as_mut().unwrap().sources = vec![stale.clone()];
        assert_eq!(snapshot.status(), "degraded", "a stale source");
        snapshot.last_run.as_mut().unwrap().sources[0].status = SourceStatus::Fresh;
        assert_eq!(snapshot.status(), "ok");
        assert_eq!(Snapshot::default().status(), "ok");
        snapshot.last_run.as_mut().unwrap().sources = vec![stale];
        let metrics = crate::serve::render_metrics(&snapshot);
        assert!(
            metrics.contains("m3u_source_stale{source=\"provider\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("m3u_source_stale_total{source=\"provider \\\"b\\\"\"} 2\n"),
            "{metrics}"
        );
        let health: serde_json::Value =
            serde_json::from_str(&crate::serve::render_health(&snapshot)).unwrap();
        assert_eq!(health["stale_sources"][0], "provider");
        assert_eq!(health["sources"][0]["reason"], "it is empty (0 bytes)");
    }
}
