//! The pipeline: source_loading → data_mapping → filtering →
//! channel_numbering → m3u_generation, batch by batch.
//!
//! Each stage runs the first usable strategy of its TOML list; a plugin that
//! fails on a batch hands that same batch to the next candidate, ending with
//! a native strategy that cannot fail. Streaming is the default; a holding
//! strategy keeps what passes its stage in the spill store
//! ([`crate::store`]) and lets it go on once the input has ended.
//!
//! Where things are:
//!
//! - this file: [`Pipeline`] (configuration, rules, plugins, monitor) and
//!   its construction;
//! - [`sources`](self::Source): sources, sinks and the loader that reads
//!   sources into batches;
//! - `registry.rs`: loading plugin files, hot reload;
//! - [`strategy`]: the strategy names and the planning of each stage (which
//!   candidate runs, which holds, and why the others were skipped);
//! - `run.rs`: the run loop — a batch through the stages, the holds;
//! - `candidates.rs`: the failure path: a stage's candidates in order, a
//!   plugin failure (`plugin_stage.rs::record_failure`) re-running the same
//!   batch with the next candidate after `respawn` if the call was aborted;
//! - `workers.rs`: `[pipeline] workers`, parallel-safe stages on threads;
//! - `plugin_stage.rs`: one plugin's call on a batch, its health, circuit
//!   and re-instantiation;
//! - `stats.rs`: what a run reports.

mod candidates;
mod per_stage;
mod plugin_stage;
mod registry;
mod run;
mod sources;
mod stats;
pub mod strategy;
mod workers;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use m3u_proxy_plugin_abi::MemoryPressureLevel;

use crate::config::{CompressHeld, Config};
use crate::memory::MemoryMonitor;
use crate::native::NativeRules;
use crate::runtime::PluginRuntime;
use crate::store::BlockCodec;
use crate::Result;

pub use crate::store::HoldStats;
pub use per_stage::PerStage;
pub use plugin_stage::PluginSlot;
pub use registry::{FileStamp, IdlePlugin};
pub use sources::{ChannelSink, CollectSink, M3uSink, Source};
pub use stats::{PluginStats, RunStats, StageStats};

/// A configured pipeline with its plugins loaded. Reusable for many runs.
pub struct Pipeline {
    config: Config,
    runtime: Option<PluginRuntime>,
    plugins: Vec<PluginSlot>,
    /// Valid plugin files that no strategy needs: not instantiated.
    idle: Vec<IdlePlugin>,
    failed_files: HashMap<PathBuf, FileStamp>,
    /// Plugin files whose current version is not loaded, and why.
    load_problems: std::collections::BTreeMap<PathBuf, String>,
    failed_plugin_names: HashSet<String>,
    /// `[mapping]` and `[filtering]`, parsed once with the configuration.
    rules: Arc<NativeRules>,
    monitor: MemoryMonitor,
    /// Block compression of held data (`[store] compression`).
    codec: BlockCodec,
    /// Block compression of `zstd_compression`'s hold.
    zstd_codec: BlockCodec,
    interrupt: Option<Arc<AtomicBool>>,
    /// Plugins that declined this run at its start (or failed to answer),
    /// with the reason: planning skips them.
    declined: HashMap<usize, String>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("plugins", &self.plugins)
            .field("load_problems", &self.load_problems)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Builds the pipeline: compiles rules and filters, loads every plugin of
    /// `plugin_directory` (a bad file is reported and skipped) and checks the
    /// strategy lists.
    ///
    /// # Errors
    /// Bad rules, an unusable plugin directory, unknown strategy names.
    pub fn new(config: Config) -> Result<Pipeline> {
        let rules = config.native_rules()?;
        let monitor = MemoryMonitor::new(config.memory.thresholds());
        monitor.force_level(config.memory.force_level.map(|level| level.0));
        let never_compress = config.pipeline.compress_held == CompressHeld::Never;
        let codec = config.store.codec(false, never_compress)?;
        let zstd_codec = config.store.codec(true, never_compress)?;
        let mut pipeline = Pipeline {
            config,
            runtime: None,
            plugins: Vec::new(),
            idle: Vec::new(),
            failed_files: HashMap::new(),
            load_problems: std::collections::BTreeMap::new(),
            failed_plugin_names: HashSet::new(),
            rules,
            monitor,
            codec,
            zstd_codec,
            interrupt: None,
            declined: HashMap::new(),
        };
        pipeline.load_plugins()?;
        pipeline.check_strategy_names()?;
        Ok(pipeline)
    }

    /// Forces a memory-pressure level (for tests and `--memory-pressure`).
    pub fn force_memory_pressure(&mut self, level: Option<MemoryPressureLevel>) {
        self.monitor.force_level(level);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The loaded (instantiated) plugins.
    pub fn plugins(&self) -> &[PluginSlot] {
        &self.plugins
    }

    /// Valid plugin files that no strategy names: validated, not
    /// instantiated. A reload instantiates one if a listed name has lost
    /// its plugin (its file was removed).
    pub fn idle_plugins(&self) -> &[IdlePlugin] {
        &self.idle
    }

    /// Plugins that failed to load, with path and cause.
    /// Each plugin file whose current version is not in use, as
    /// `"<path>: <cause>"`: it failed to load, or a changed version was
    /// refused and the previous one keeps running. A problem goes away when
    /// the file loads or is removed.
    pub fn load_errors(&self) -> Vec<String> {
        self.load_problems
            .iter()
            .map(|(path, cause)| format!("{}: {cause}", path.display()))
            .collect()
    }
}
