//! The long-running HTTP mode (`m3u-plugin-host serve`): the playlist is
//! generated in the background and served from memory.
//!
//! # Design
//!
//! Two kinds of threads share one state (the served playlist, the latest
//! [`Snapshot`] and a stop flag):
//!
//! - **One regeneration thread** owns the [`Pipeline`] (and with it every
//!   plugin instance; wasmi stores are never shared between threads). It
//!   polls the *stamps* — modification time and length — of the watched files
//!   every [`ServeOptions::watch_interval`]: every source playlist and, when
//!   plugins are enabled with `enable_hot_reload`, every `*.wasm` and `*.sig`
//!   file of `plugin_directory`. It regenerates when a stamp changed, when a
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
//! `Vec<u8>`. Only when the run succeeded is that buffer put behind the shared
//! `RwLock<Option<Arc<Vec<u8>>>>`, replacing the previous `Arc` in one store;
//! a request clones the `Arc` under the read lock and streams it without
//! holding the lock. So a client always receives one complete playlist —
//! never a half-written one, never a mix of two. When a run fails, the previous
//! playlist keeps being served, and the error is logged and recorded.
//!
//! **Snapshot.** After every attempt the regeneration thread publishes a
//! [`Snapshot`] (counts, last error, last [`RunStats`], per-plugin figures
//! copied from [`Pipeline::plugins`], current plugin load problems) as an
//! `Arc` behind a second lock; `/health` and `/metrics` render from it. The
//! playlist is swapped before the snapshot is published, so once `/health`
//! shows a new generation count the new playlist is already being served.
//!
//! **Endpoints.** `GET /playlist.m3u` (`audio/x-mpegurl`; 503 until the first
//! success, which [`Server::start`] already waits for), `GET /health` (JSON,
//! always 200; `status` is `"degraded"` when the last generation failed, a
//! plugin circuit is open or a plugin file on disk failed to load) and
//! `GET /metrics` (Prometheus text format 0.0.4, see [`render_metrics`]).
//! Other paths answer 404, other methods 405.
//!
//! **Shutdown.** A stop flag is checked by the regeneration thread between
//! sleeps of at most [`STOP_CHECK`] and by the HTTP workers, which wait for
//! requests with a timeout of [`STOP_CHECK`]. [`Server::shutdown`] (or
//! dropping the [`Server`]) sets it and joins every thread; a generation that
//! is running is allowed to finish first (plugin calls are bounded by fuel and
//! `timeout_seconds`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::pipeline::{M3uSink, Pipeline, RunStats, Source};
use crate::{Error, Result};

/// Number of HTTP worker threads taking requests from the listener.
pub const HTTP_WORKERS: usize = 4;

/// Longest a thread goes without looking at the stop flag.
pub const STOP_CHECK: Duration = Duration::from_millis(50);

/// Shortest accepted watch interval (a zero interval would spin).
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

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
}

impl Snapshot {
    /// True when the last generation failed, a plugin circuit is open, or a
    /// plugin file failed to load.
    pub fn is_degraded(&self) -> bool {
        self.last_generation_failed
            || self.plugins.iter().any(|plugin| plugin.circuit_open)
            || !self.plugin_load_errors.is_empty()
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

/// Figures of one loaded plugin, copied from its [`crate::pipeline::PluginSlot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginSnapshot {
    /// Plugin name (from the module's info).
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// File it was loaded from.
    pub path: PathBuf,
    /// Export calls since it was loaded.
    pub calls: u64,
    /// Fuel consumed since it was loaded.
    pub fuel: u64,
    /// Failed batches.
    pub failures: u32,
    /// Switched off after too many failures (`max_plugin_failures`).
    pub circuit_open: bool,
    /// Last failure, if any.
    pub last_error: Option<String>,
    /// Time spent inside the plugin.
    pub time: Duration,
    /// Bytes sent to the plugin.
    pub bytes_in: u64,
    /// Bytes received from the plugin.
    pub bytes_out: u64,
    /// Signature state label: `unsigned` or `signed`.
    pub signature: String,
}

/// State shared by the regeneration thread and the HTTP workers.
#[derive(Default)]
struct Shared {
    /// The playlist being served; replaced whole, only after a successful run.
    playlist: RwLock<Option<Arc<Vec<u8>>>>,
    /// The latest snapshot.
    snapshot: RwLock<Arc<Snapshot>>,
    /// Set once by shutdown.
    stop: AtomicBool,
}

impl Shared {
    fn playlist(&self) -> Option<Arc<Vec<u8>>> {
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
        let plugins = &config.proxy_generation.wasm_plugins;
        let plugin_directory = plugins.enabled.then(|| plugins.plugin_directory.clone());
        let hot_reload = plugins.enabled && plugins.enable_hot_reload;
        let watch = Watch {
            inputs: inputs.clone(),
            plugin_directory: plugin_directory.filter(|_| hot_reload),
        };
        // Stamped before the plugins are loaded, so a change during the first
        // load or generation still triggers a regeneration.
        let stamps = watch.stamps();

        let shared = Arc::new(Shared::default());
        let pipeline = Pipeline::new(config)?;
        let mut regenerator = Regenerator {
            pipeline,
            inputs,
            regenerate_interval: options.regenerate_interval,
            watch_interval: options.watch_interval.max(MIN_WATCH_INTERVAL),
            watch,
            shared: Arc::clone(&shared),
            snapshot: Snapshot::default(),
        };
        let started = Instant::now();
        let (playlist, stats) = regenerator.render()?;
        regenerator.record_success(playlist, stats, started.elapsed());

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
                .spawn(move || http_worker(&http, &shared))
                .map_err(|error| Error::io("thread m3u-http", error))?;
            server.threads.push(handle);
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

fn resolve_inputs(config: &Config, options: &ServeOptions) -> Result<Vec<PathBuf>> {
    let inputs: Vec<PathBuf> = if options.inputs.is_empty() {
        config.sources.iter().map(|s| s.path.clone()).collect()
    } else {
        options.inputs.clone()
    };
    if inputs.is_empty() {
        return Err(Error::config_key(
            "sources",
            "no sources: add a [[sources]] table with a `path`, or pass --input",
        ));
    }
    if inputs.iter().any(|path| path.as_os_str() == "-") {
        return Err(Error::config_key(
            "sources",
            "serve re-reads its sources on every regeneration, and standard input (`-`) can \
             only be read once: give a file path",
        ));
    }
    Ok(inputs)
}

/// Modification time and length: what identifies a version of a file.
type Stamp = (Option<SystemTime>, u64);

/// Stamps of the watched files; `None` for a source that does not exist.
type Stamps = BTreeMap<PathBuf, Option<Stamp>>;

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok(), metadata.len()))
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| extensions.contains(&ext))
}

/// Files of `directory` with one of `extensions`, with their stamps (none if
/// the directory cannot be read).
fn directory_stamps(directory: &Path, extensions: &[&str]) -> BTreeMap<PathBuf, Stamp> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| has_extension(path, extensions))
        .filter_map(|path| stamp(&path).map(|s| (path, s)))
        .collect()
}

/// What the regeneration thread watches.
struct Watch {
    inputs: Vec<PathBuf>,
    /// Set when plugins are enabled with hot reload.
    plugin_directory: Option<PathBuf>,
}

impl Watch {
    fn stamps(&self) -> Stamps {
        let mut stamps: Stamps = self
            .inputs
            .iter()
            .map(|path| (path.clone(), stamp(path)))
            .collect();
        if let Some(directory) = &self.plugin_directory {
            stamps.extend(
                directory_stamps(directory, &["wasm", "sig"])
                    .into_iter()
                    .map(|(path, s)| (path, Some(s))),
            );
        }
        stamps
    }
}

/// Says what differs between two stamp sets, for the log.
fn describe_change(before: &Stamps, after: &Stamps) -> String {
    let mut changes = Vec::new();
    for (path, now) in after {
        match (before.get(path), now) {
            (None | Some(None), Some(_)) => changes.push(format!("{} appeared", path.display())),
            (Some(Some(_)), None) => changes.push(format!("{} disappeared", path.display())),
            (Some(old), now) if old != now => changes.push(format!("{} changed", path.display())),
            _ => {}
        }
    }
    for path in before.keys().filter(|path| !after.contains_key(*path)) {
        changes.push(format!("{} disappeared", path.display()));
    }
    let total = changes.len();
    changes.truncate(3);
    if total > changes.len() {
        changes.push(format!("{} more", total - changes.len()));
    }
    changes.join(", ")
}

/// The regeneration thread's state: it owns the pipeline.
struct Regenerator {
    pipeline: Pipeline,
    inputs: Vec<PathBuf>,
    regenerate_interval: Option<Duration>,
    watch_interval: Duration,
    watch: Watch,
    shared: Arc<Shared>,
    snapshot: Snapshot,
}

impl Regenerator {
    /// One run into a fresh buffer.
    fn render(&mut self) -> Result<(Vec<u8>, RunStats)> {
        let sources = self
            .inputs
            .iter()
            .map(|path| Source::open(path))
            .collect::<Result<Vec<Source>>>()?;
        let capacity = self.snapshot.playlist_bytes as usize + 4096;
        let mut playlist = Vec::with_capacity(capacity);
        let stats = self
            .pipeline
            .run(sources, &mut M3uSink::new(&mut playlist))?;
        Ok((playlist, stats))
    }

    /// One attempt in the background: never panics out of the thread, never
    /// replaces the playlist unless the run succeeded.
    fn regenerate(&mut self, reason: &str) {
        log::info!("regenerating the playlist: {reason}");
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.render()));
        match result {
            Ok(Ok((playlist, stats))) => self.record_success(playlist, stats, started.elapsed()),
            Ok(Err(error)) => self.record_failure(error.to_string()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                self.record_failure(format!("playlist generation panicked: {message}"))
            }
        }
    }

    fn record_success(&mut self, playlist: Vec<u8>, stats: RunStats, took: Duration) {
        let bytes = playlist.len() as u64;
        // The swap: one store of a complete buffer.
        *self
            .shared
            .playlist
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(playlist));
        let snapshot = &mut self.snapshot;
        snapshot.generations += 1;
        snapshot.last_generation_failed = false;
        snapshot.last_success = Some(SystemTime::now());
        snapshot.playlist_bytes = bytes;
        log::info!(
            "playlist generation {} ready: {} channels, {bytes} bytes, {:.1} ms",
            snapshot.generations,
            stats.channels_written,
            took.as_secs_f64() * 1e3
        );
        snapshot.last_run = Some(stats);
        self.publish();
    }

    fn record_failure(&mut self, error: String) {
        log::error!(
            "playlist generation failed, still serving generation {}: {error}",
            self.snapshot.generations
        );
        self.snapshot.failures += 1;
        self.snapshot.last_generation_failed = true;
        self.snapshot.last_error = Some(error);
        self.publish();
    }

    /// Copies the plugin figures into the snapshot and publishes it.
    fn publish(&mut self) {
        self.snapshot.plugins = self
            .pipeline
            .plugins()
            .iter()
            .map(|slot| {
                let stats = slot.total_stats();
                PluginSnapshot {
                    name: slot.name().to_string(),
                    version: slot.instance.info().version.to_string(),
                    path: slot.path.clone(),
                    calls: stats.calls,
                    fuel: stats.fuel_consumed,
                    failures: slot.failures,
                    circuit_open: slot.disabled,
                    last_error: slot.last_error.clone(),
                    time: stats.time,
                    bytes_in: stats.bytes_in,
                    bytes_out: stats.bytes_out,
                    signature: slot.signature.label().to_string(),
                }
            })
            .collect();
        self.snapshot.plugin_load_errors = self.pipeline.load_errors();
        *self
            .shared
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(self.snapshot.clone());
    }

    /// Polls the watched files until stopped; regenerates on settled changes
    /// and when the interval is due.
    fn watch_loop(mut self, mut generated_from: Stamps) {
        let mut previous_poll = generated_from.clone();
        let mut last_poll = Instant::now();
        let mut last_attempt = Instant::now();
        while !self.shared.stopped() {
            let next_poll = last_poll + self.watch_interval;
            let next_due = self.regenerate_interval.map(|every| last_attempt + every);
            let wake = next_due.map_or(next_poll, |due| due.min(next_poll));
            if !self.sleep_until(wake) {
                break;
            }
            let now = Instant::now();
            let mut reason = None;
            if now >= next_poll {
                last_poll = now;
                let stamps = self.watch.stamps();
                // Act on a change once two polls in a row agree on it.
                if stamps != generated_from && stamps == previous_poll {
                    reason = Some(describe_change(&generated_from, &stamps));
                    generated_from = stamps.clone();
                }
                previous_poll = stamps;
            }
            if reason.is_none() && next_due.is_some_and(|due| now >= due) {
                reason = Some("regenerate_interval elapsed".to_string());
            }
            if let Some(reason) = reason {
                self.regenerate(&reason);
                last_attempt = Instant::now();
            }
        }
        log::debug!("regeneration thread stopped");
    }

    /// Sleeps until `wake` in steps of at most [`STOP_CHECK`]; false when
    /// asked to stop.
    fn sleep_until(&self, wake: Instant) -> bool {
        loop {
            if self.shared.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= wake {
                return true;
            }
            std::thread::sleep((wake - now).min(STOP_CHECK));
        }
    }
}

/// Takes requests until the stop flag is set.
fn http_worker(http: &tiny_http::Server, shared: &Shared) {
    while !shared.stopped() {
        match http.recv_timeout(STOP_CHECK) {
            Ok(Some(request)) => {
                let reply = route(request.method(), request.url(), shared);
                log::debug!("{} {} -> {}", request.method(), request.url(), reply.status);
                if let Err(error) = request.respond(reply.into_response()) {
                    log::debug!("could not send a response: {error}");
                }
            }
            Ok(None) => {}
            Err(error) => {
                log::warn!("http listener: {error}");
                std::thread::sleep(STOP_CHECK);
            }
        }
    }
}

/// A response body: the shared playlist without copying it, or owned bytes.
enum Body {
    Playlist(Arc<Vec<u8>>),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Playlist(bytes) => bytes,
            Body::Owned(bytes) => bytes,
        }
    }
}

/// What a request is answered with.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Body,
    allow_get: bool,
}

impl Reply {
    fn text(status: u16, message: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Body::Owned(format!("{message}\n").into_bytes()),
            allow_get: false,
        }
    }

    fn into_response(self) -> tiny_http::Response<Cursor<Body>> {
        let header = |name: &str, value: &str| {
            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                .expect("static header names and values are valid")
        };
        let mut headers = vec![
            header("Content-Type", self.content_type),
            header("Cache-Control", "no-cache"),
        ];
        if self.allow_get {
            headers.push(header("Allow", "GET"));
        }
        let length = self.body.as_ref().len();
        tiny_http::Response::new(
            tiny_http::StatusCode(self.status),
            headers,
            Cursor::new(self.body),
            Some(length),
            None,
        )
        // Always send Content-Length, never chunked.
        .with_chunked_threshold(usize::MAX)
    }
}

/// Answers one request from the shared state.
fn route(method: &tiny_http::Method, url: &str, shared: &Shared) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    if !matches!(path, "/playlist.m3u" | "/health" | "/metrics") {
        return Reply::text(404, "not found: try /playlist.m3u, /health or /metrics");
    }
    if *method != tiny_http::Method::Get {
        let mut reply = Reply::text(405, "method not allowed: use GET");
        reply.allow_get = true;
        return reply;
    }
    match path {
        "/playlist.m3u" => match shared.playlist() {
            Some(playlist) => Reply {
                status: 200,
                content_type: "audio/x-mpegurl",
                body: Body::Playlist(playlist),
                allow_get: false,
            },
            None => Reply::text(503, "the playlist has not been generated yet"),
        },
        "/health" => Reply {
            status: 200,
            content_type: "application/json",
            body: Body::Owned(render_health(&shared.snapshot()).into_bytes()),
            allow_get: false,
        },
        _ => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: Body::Owned(render_metrics(&shared.snapshot()).into_bytes()),
            allow_get: false,
        },
    }
}

/// The `/health` JSON of a snapshot.
pub fn render_health(snapshot: &Snapshot) -> String {
    let plugins: Vec<serde_json::Value> = snapshot
        .plugins
        .iter()
        .map(|plugin| {
            serde_json::json!({
                "name": plugin.name,
                "version": plugin.version,
                "path": plugin.path.display().to_string(),
                "calls": plugin.calls,
                "fuel": plugin.fuel,
                "failures": plugin.failures,
                "circuit_open": plugin.circuit_open,
                "last_error": plugin.last_error,
                "time_seconds": plugin.time.as_secs_f64(),
                "bytes_in": plugin.bytes_in,
                "bytes_out": plugin.bytes_out,
                "signature": plugin.signature,
            })
        })
        .collect();
    let run = snapshot.last_run.as_ref();
    let health = serde_json::json!({
        "status": snapshot.status(),
        "generations": snapshot.generations,
        "failures": snapshot.failures,
        "last_error": snapshot.last_error,
        "last_generation_failed": snapshot.last_generation_failed,
        "seconds_since_last_success": snapshot.seconds_since_last_success(),
        "playlist_bytes": snapshot.playlist_bytes,
        "channels_written": run.map(|r| r.channels_written),
        "memory_pressure": run.map(|r| r.memory_pressure.clone()),
        "plugin_load_errors": snapshot.plugin_load_errors,
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&health).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

/// Writes the Prometheus text exposition format, one family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (index, (name, value)) in labels.iter().enumerate() {
            if index > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{name}=\"{}\"", escape_label_value(value));
        }
        self.out.push('}');
    }

    fn int(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
    }

    fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.raw(name, labels, &format_float(value));
    }

    fn raw(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

/// Prometheus text exposition (format 0.0.4) of a snapshot. Pure: the same
/// snapshot always renders the same text.
///
/// Counters (`_total`) count since the server started; per-plugin counters
/// since the plugin was (re)loaded, so they restart at zero after a hot
/// reload, which Prometheus treats as a counter reset. Gauges describe the
/// last successful run. Plugin series carry the labels `plugin` (its name)
/// and `file` (its file name), which keeps them unique even when two files
/// declare the same name.
pub fn render_metrics(snapshot: &Snapshot) -> String {
    let mut m = Exposition { out: String::new() };
    m.family(
        "m3u_generations_total",
        "counter",
        "Successful playlist generations since start.",
    );
    m.int("m3u_generations_total", &[], snapshot.generations);
    m.family(
        "m3u_generation_failures_total",
        "counter",
        "Failed playlist generations since start (the previous playlist kept being served).",
    );
    m.int("m3u_generation_failures_total", &[], snapshot.failures);
    m.family(
        "m3u_degraded",
        "gauge",
        "1 when the last generation failed, a plugin circuit is open or a plugin file failed \
         to load.",
    );
    m.int("m3u_degraded", &[], u64::from(snapshot.is_degraded()));
    m.family(
        "m3u_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful generation.",
    );
    if let Some(at) = snapshot.last_success {
        let seconds = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        m.float("m3u_last_success_timestamp_seconds", &[], seconds);
    }
    m.family(
        "m3u_playlist_bytes",
        "gauge",
        "Size of the playlist being served.",
    );
    m.int("m3u_playlist_bytes", &[], snapshot.playlist_bytes);
    m.family(
        "m3u_plugin_load_errors",
        "gauge",
        "Plugin files that failed to load and are not running as they are on disk.",
    );
    m.int(
        "m3u_plugin_load_errors",
        &[],
        snapshot.plugin_load_errors.len() as u64,
    );

    let run = snapshot.last_run.as_ref();
    let run_gauges: [(&str, &str, Option<String>); 4] = [
        (
            "m3u_channels_loaded",
            "Channels read from the sources by the last successful run.",
            run.map(|r| r.channels_loaded.to_string()),
        ),
        (
            "m3u_channels_written",
            "Channels in the playlist being served.",
            run.map(|r| r.channels_written.to_string()),
        ),
        (
            "m3u_malformed_entries",
            "Malformed entries skipped by the last successful run.",
            run.map(|r| r.malformed_entries.to_string()),
        ),
        (
            "m3u_generation_duration_seconds",
            "Wall-clock time of the last successful run.",
            run.map(|r| format_float(r.time_ms / 1e3)),
        ),
    ];
    for (name, help, value) in run_gauges {
        m.family(name, "gauge", help);
        if let Some(value) = value {
            m.raw(name, &[], &value);
        }
    }
    m.family(
        "m3u_memory_pressure_level",
        "gauge",
        "Memory pressure when the last successful run was planned: 0 optimal, 1 moderate, \
         2 high, 3 critical, 4 emergency.",
    );
    if let Some(Ok(level)) = run.map(|r| crate::config::parse_level(&r.memory_pressure)) {
        m.int(
            "m3u_memory_pressure_level",
            &[("level", level.name())],
            u64::from(level.as_u32()),
        );
    }
    let stages = run.map_or(&[][..], |run| &run.stages[..]);
    m.family(
        "m3u_stage_duration_seconds",
        "gauge",
        "Time spent in each stage by the last successful run.",
    );
    for stage in stages {
        m.float(
            "m3u_stage_duration_seconds",
            &[("stage", &stage.stage)],
            stage.time_ms / 1e3,
        );
    }
    m.family(
        "m3u_stage_channels_in",
        "gauge",
        "Channels that entered each stage in the last successful run.",
    );
    for stage in stages {
        m.int(
            "m3u_stage_channels_in",
            &[("stage", &stage.stage)],
            stage.channels_in,
        );
    }
    m.family(
        "m3u_stage_channels_out",
        "gauge",
        "Channels that left each stage in the last successful run.",
    );
    for stage in stages {
        m.int(
            "m3u_stage_channels_out",
            &[("stage", &stage.stage)],
            stage.channels_out,
        );
    }
    m.family(
        "m3u_stage_batches",
        "gauge",
        "Batches each strategy ran per stage in the last successful run (fallbacks show up \
         here).",
    );
    for stage in stages {
        for (strategy, batches) in &stage.batches_by_strategy {
            m.int(
                "m3u_stage_batches",
                &[("stage", &stage.stage), ("strategy", strategy)],
                *batches,
            );
        }
    }

    let plugins: Vec<(&PluginSnapshot, String)> = snapshot
        .plugins
        .iter()
        .map(|plugin| {
            let file = plugin
                .path
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            (plugin, file)
        })
        .collect();
    let mut per_plugin =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&PluginSnapshot) -> String| {
            m.family(name, kind, help);
            for (plugin, file) in &plugins {
                m.raw(
                    name,
                    &[("plugin", &plugin.name), ("file", file)],
                    &value(plugin),
                );
            }
        };
    per_plugin(
        "m3u_plugin_calls_total",
        "counter",
        "Export calls made to the plugin since it was loaded.",
        &|p| p.calls.to_string(),
    );
    per_plugin(
        "m3u_plugin_failures_total",
        "counter",
        "Batches the plugin failed on since it was loaded.",
        &|p| p.failures.to_string(),
    );
    per_plugin(
        "m3u_plugin_fuel_total",
        "counter",
        "Fuel (about one unit per Wasm instruction) the plugin consumed since it was loaded.",
        &|p| p.fuel.to_string(),
    );
    per_plugin(
        "m3u_plugin_time_seconds_total",
        "counter",
        "Time spent inside the plugin since it was loaded.",
        &|p| format_float(p.time.as_secs_f64()),
    );
    per_plugin(
        "m3u_plugin_bytes_in_total",
        "counter",
        "Bytes sent to the plugin since it was loaded.",
        &|p| p.bytes_in.to_string(),
    );
    per_plugin(
        "m3u_plugin_bytes_out_total",
        "counter",
        "Bytes received from the plugin since it was loaded.",
        &|p| p.bytes_out.to_string(),
    );
    per_plugin(
        "m3u_plugin_circuit_open",
        "gauge",
        "1 when the plugin is switched off after max_plugin_failures failures.",
        &|p| u8::from(p.circuit_open).to_string(),
    );
    m.family(
        "m3u_plugin_info",
        "gauge",
        "Loaded plugins with their version and signature state (always 1).",
    );
    for (plugin, file) in &plugins {
        m.int(
            "m3u_plugin_info",
            &[
                ("plugin", &plugin.name),
                ("file", file),
                ("version", &plugin.version),
                ("signature", &plugin.signature),
            ],
            1,
        );
    }
    m.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::StageStats;

    fn snapshot() -> Snapshot {
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
                name: "we\"ird\\na\nme".into(),
                version: "1.0.0".into(),
                path: PathBuf::from("/p/weird.wasm"),
                calls: 12,
                fuel: 18_446_744_073_709_551_615,
                failures: 3,
                circuit_open: true,
                time: Duration::from_millis(1500),
                bytes_in: 5,
                bytes_out: 6,
                signature: "unsigned".into(),
                ..PluginSnapshot::default()
            }],
            plugin_load_errors: Vec::new(),
        }
    }

    fn sample<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn counters_and_gauges_carry_the_snapshot_values() {
        let text = render_metrics(&snapshot());
        assert_eq!(
            sample(&text, "m3u_generations_total "),
            ["m3u_generations_total 7"]
        );
        assert_eq!(
            sample(&text, "m3u_generation_failures_total "),
            ["m3u_generation_failures_total 2"]
        );
        assert_eq!(
            sample(&text, "m3u_channels_written "),
            ["m3u_channels_written 10000"]
        );
        assert_eq!(
            sample(&text, "m3u_generation_duration_seconds "),
            ["m3u_generation_duration_seconds 1.5"]
        );
        assert_eq!(
            sample(&text, "m3u_memory_pressure_level"),
            ["m3u_memory_pressure_level{level=\"high\"} 2"]
        );
        assert_eq!(
            sample(&text, "m3u_stage_duration_seconds{"),
            ["m3u_stage_duration_seconds{stage=\"data_mapping\"} 0.25"]
        );
        assert_eq!(
            sample(&text, "m3u_stage_batches{"),
            ["m3u_stage_batches{stage=\"data_mapping\",strategy=\"group_normalizer\"} 11"]
        );
        assert_eq!(
            sample(&text, "m3u_degraded "),
            ["m3u_degraded 1"],
            "circuit open"
        );
        assert_eq!(
            sample(&text, "m3u_last_success_timestamp_seconds "),
            ["m3u_last_success_timestamp_seconds 1700000000"]
        );
        assert!(text.contains("# TYPE m3u_generations_total counter\n"));
        assert!(text.contains("# TYPE m3u_channels_loaded gauge\n"));
        assert!(text.contains("# TYPE m3u_plugin_fuel_total counter\n"));
        assert!(text.contains("# TYPE m3u_plugin_circuit_open gauge\n"));
    }

    #[test]
    fn every_sample_follows_its_help_and_type() {
        let text = render_metrics(&snapshot());
        let mut typed = Vec::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.last().is_some_and(|h| h == name), "{line}");
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                typed.push(name.to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.last().is_some_and(|t| t == name), "{line}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let text = render_metrics(&snapshot());
        let calls = sample(&text, "m3u_plugin_calls_total{");
        assert_eq!(
            calls,
            ["m3u_plugin_calls_total{plugin=\"we\\\"ird\\\\na\\nme\",file=\"weird.wasm\"} 12"]
        );
        assert!(
            text.lines().all(|line| !line.is_empty()),
            "no raw newline inside a value"
        );
        assert_eq!(
            sample(&text, "m3u_plugin_circuit_open{").len(),
            1,
            "one series per plugin"
        );
    }

    #[test]
    fn large_counters_and_odd_floats_stay_parseable() {
        let text = render_metrics(&snapshot());
        let fuel = sample(&text, "m3u_plugin_fuel_total{")[0];
        let value: f64 = fuel.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value > 1.8e19);
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(0.000_001), "0.000001");
    }

    #[test]
    fn an_empty_snapshot_renders_families_without_run_samples() {
        let text = render_metrics(&Snapshot::default());
        assert!(text.contains("m3u_generations_total 0\n"));
        assert!(text.contains("# TYPE m3u_stage_duration_seconds gauge\n"));
        assert!(sample(&text, "m3u_channels_loaded ").is_empty());
    }

    #[test]
    fn routes_answer_404_405_and_503_before_the_first_playlist() {
        let shared = Shared::default();
        let get = tiny_http::Method::Get;
        assert_eq!(route(&get, "/playlist.m3u", &shared).status, 503);
        assert_eq!(route(&get, "/nope", &shared).status, 404);
        assert_eq!(route(&get, "/", &shared).status, 404);
        let post = route(&tiny_http::Method::Post, "/playlist.m3u", &shared);
        assert_eq!((post.status, post.allow_get), (405, true));
        *shared.playlist.write().unwrap() = Some(Arc::new(b"#EXTM3U\n".to_vec()));
        let reply = route(&get, "/playlist.m3u?x=1", &shared);
        assert_eq!((reply.status, reply.content_type), (200, "audio/x-mpegurl"));
        assert_eq!(reply.body.as_ref(), b"#EXTM3U\n");
        let health = route(&get, "/health", &shared);
        let json: serde_json::Value = serde_json::from_slice(health.body.as_ref()).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["generations"], 0);
    }

    #[test]
    fn health_reports_degraded_and_the_plugin_figures() {
        let json: serde_json::Value = serde_json::from_str(&render_health(&snapshot())).unwrap();
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["plugins"][0]["circuit_open"], true);
        assert_eq!(json["plugins"][0]["signature"], "unsigned");
        assert_eq!(json["last_error"], "boom");
        assert!(json["seconds_since_last_success"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn changes_are_described_for_the_log() {
        let a = Path::new("/a.m3u").to_path_buf();
        let b = Path::new("/p/b.wasm").to_path_buf();
        let before: Stamps = [(a.clone(), Some((None, 1))), (b.clone(), Some((None, 2)))].into();
        let after: Stamps = [(a, Some((None, 3)))].into();
        assert_eq!(
            describe_change(&before, &after),
            "/a.m3u changed, /p/b.wasm disappeared"
        );
    }
}
