//! The regeneration thread of `serve`: what it watches, the watch loop, one
//! generation into a fresh buffer, the atomic swap of the served playlist and
//! publishing the [`Snapshot`] after every attempt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::{PluginSnapshot, ServeOptions, Served, Shared, Snapshot, STOP_CHECK};
use crate::config::Config;
use crate::inputs::{Inputs, SourceStatus};
use crate::pipeline::{M3uSink, Pipeline, PluginSlot, PluginStats, RunStats};
use crate::watch::{self, Stamps};
use crate::Result;

/// Shortest accepted watch interval (a zero interval would spin).
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// What the regeneration thread watches: the source playlists and, when
/// plugins are enabled with hot reload, the `*.wasm` and `*.sig` files of
/// the plugin directory.
pub(super) struct Watch {
    inputs: Inputs,
    /// Set when plugins are enabled with hot reload.
    plugin_directory: Option<PathBuf>,
}

impl Watch {
    pub(super) fn new(config: &Config, inputs: Inputs) -> Watch {
        let plugins = &config.proxy_generation.wasm_plugins;
        let hot_reload = plugins.enabled && plugins.enable_hot_reload;
        Watch {
            inputs,
            plugin_directory: hot_reload.then(|| plugins.plugin_directory.clone()),
        }
    }

    /// The current stamps of every watched file (a missing source as `None`).
    pub(super) fn stamps(&self) -> Stamps {
        let mut stamps = watch::stamps(&self.inputs.files());
        if let Some(directory) = &self.plugin_directory {
            stamps.extend(
                watch::directory_stamps(directory, &["wasm", "sig"])
                    .into_iter()
                    .map(|(path, stamp)| (path, Some(stamp))),
            );
        }
        stamps
    }
}

/// The figures of one loaded plugin for the snapshot.
fn plugin_snapshot(slot: &PluginSlot) -> PluginSnapshot {
    PluginSnapshot {
        path: slot.path.clone(),
        signature: slot.signature.label().to_string(),
        stats: PluginStats::from_slot(slot),
    }
}

/// The regeneration thread's state: it owns the pipeline.
pub(super) struct Regenerator {
    pipeline: Pipeline,
    regenerate_interval: Option<Duration>,
    watch_interval: Duration,
    watch: Watch,
    shared: Arc<Shared>,
    snapshot: Snapshot,
}

impl Regenerator {
    pub(super) fn new(
        pipeline: Pipeline,
        watch: Watch,
        options: &ServeOptions,
        shared: Arc<Shared>,
    ) -> Regenerator {
        Regenerator {
            pipeline,
            regenerate_interval: options.regenerate_interval,
            watch_interval: options.watch_interval.max(MIN_WATCH_INTERVAL),
            watch,
            shared,
            snapshot: Snapshot::default(),
        }
    }

    /// The generation [`super::Server::start`] waits for: its error is
    /// returned, not recorded.
    pub(super) fn first_generation(&mut self) -> Result<()> {
        let started = Instant::now();
        let (playlist, stats) = self.render()?;
        self.record_success(playlist, stats, started.elapsed());
        Ok(())
    }

    /// One run into a fresh buffer.
    fn render(&mut self) -> Result<(Vec<u8>, RunStats)> {
        let (sources, reports) = self.watch.inputs.open()?;
        let capacity = self.snapshot.playlist_bytes as usize + 4096;
        let mut playlist = Vec::with_capacity(capacity);
        let mut stats = self
            .pipeline
            .run(sources, &mut M3uSink::new(&mut playlist))?;
        stats.sources = reports;
        Ok((playlist, stats))
    }

    /// One attempt in the background: never panics out of the thread (in a
    /// build that unwinds; the release CLI aborts on panic, see Cargo.toml),
    /// never replaces the playlist unless the run succeeded.
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
        self.update_logos(&playlist);
        // The gzip copy and the validators, then the swap: one store of a
        // complete generation.
        let served = Served::new(playlist, self.shared.playlist().as_deref());
        *self
            .shared
            .playlist
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(served));
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
        for source in &stats.sources {
            if source.status == SourceStatus::Stale {
                *snapshot
                    .stale_sources_total
                    .entry(source.name.clone())
                    .or_default() += 1;
            }
        }
        snapshot.last_run = Some(stats);
        self.publish();
    }

    /// Tells the logo cache which logos the new playlist refers to.
    fn update_logos(&self, playlist: &[u8]) {
        let Some(logos) = &self.shared.logos else {
            return;
        };
        let settings: Vec<String> = self
            .pipeline
            .config()
            .plugin_settings()
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect();
        let inputs = self.watch.inputs.read_paths();
        logos.update(super::logos::referenced_logos(playlist, &inputs, &settings));
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
            .map(plugin_snapshot)
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
    pub(super) fn watch_loop(mut self, mut generated_from: Stamps) {
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
                    reason = Some(watch::describe_change(&generated_from, &stamps));
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
