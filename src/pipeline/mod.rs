//! The pipeline: source_loading → data_mapping → filtering →
//! channel_numbering → m3u_generation, batch by batch.
//!
//! Each stage runs the first usable strategy of its TOML list (see
//! [`strategy`]); a plugin that fails on a batch hands that same batch to the
//! next candidate, ending with a native strategy that cannot fail. Streaming is
//! the default; an in-memory strategy (chosen only under low memory pressure)
//! holds the playlist at its stage and lets it go on once all has arrived.

mod plugin_stage;
mod stats;
pub mod strategy;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use m3u_proxy_plugin_abi::{MemoryPressureLevel, Stage, StageContext};

use crate::config::{CompressHeld, Config};
use crate::m3u::{M3uReader, M3uWriter, PlaylistHeader};
use crate::memory::MemoryMonitor;
use crate::native::dedup::{Dedup, PlaylistDedup};
use crate::native::filter::{FilterAction, FilterRule, FilterSet};
use crate::native::mapping::Mapper;
use crate::native::numbering::{number_the_rest, reserve_explicit_numbers, ChannelNumberer};
use crate::runtime::PluginRuntime;
use crate::{Error, ErrorKind, OwnedChannel, Result};

pub use crate::store::HoldStats;
use crate::store::{BatchQueue, BlockCodec, ExternalSorter, StorePolicy, Tier};
pub use plugin_stage::PluginSlot;
pub use stats::{PluginStats, RunStats, StageStats};
use strategy::{Candidate, NativeStrategy, PluginChain, StagePlan};
use strategy::{CHAIN_SEPARATOR, MAX_CHAIN_LEN};

/// One playlist input.
pub struct Source {
    /// Name for logs.
    pub name: String,
    /// Its size in bytes, if known (a file's length): what the planner
    /// estimates a holding strategy's need from.
    pub size_hint: Option<u64>,
    reader: Box<dyn BufRead + Send>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// A file, or standard input for `-`.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path) -> Result<Source> {
        if path.as_os_str() == "-" {
            return Ok(Source::from_reader(
                "stdin",
                BufReader::new(std::io::stdin()),
            ));
        }
        let file = std::fs::File::open(path).map_err(|error| Error::io(path, error))?;
        let size = file
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|metadata| metadata.len());
        let mut source = Source::from_reader(
            path.display().to_string(),
            BufReader::with_capacity(256 << 10, file),
        );
        source.size_hint = size;
        Ok(source)
    }

    /// Any reader.
    pub fn from_reader(name: impl Into<String>, reader: impl BufRead + Send + 'static) -> Source {
        Source {
            name: name.into(),
            size_hint: None,
            reader: Box::new(reader),
        }
    }
}

/// Where finished batches go.
pub trait ChannelSink {
    /// Called once, before the first batch, with the merged playlist header.
    ///
    /// # Errors
    /// Output errors.
    fn begin(&mut self, header: &PlaylistHeader) -> Result<()>;
    /// A finished batch, in output order.
    ///
    /// # Errors
    /// Output errors.
    fn write_batch(&mut self, batch: &[OwnedChannel]) -> Result<()>;
    /// Called once at the end.
    ///
    /// # Errors
    /// Output errors.
    fn finish(&mut self) -> Result<()>;
}

/// Writes M3U to any `Write`.
pub struct M3uSink<W: Write> {
    out: Option<W>,
    writer: Option<M3uWriter<W>>,
}

impl<W: Write> M3uSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        M3uSink {
            out: Some(out),
            writer: None,
        }
    }
}

impl<W: Write> ChannelSink for M3uSink<W> {
    fn begin(&mut self, header: &PlaylistHeader) -> Result<()> {
        if let Some(out) = self.out.take() {
            self.writer = Some(M3uWriter::new(out, header)?);
        }
        Ok(())
    }

    fn write_batch(&mut self, batch: &[OwnedChannel]) -> Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::config("m3u sink used before begin()"))?;
        batch
            .iter()
            .try_for_each(|channel| writer.write_channel(channel))
    }

    fn finish(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(writer) => writer.finish().map(drop),
            None => Ok(()),
        }
    }
}

/// Collects channels in memory.
#[derive(Debug, Default)]
pub struct CollectSink {
    /// The header seen.
    pub header: PlaylistHeader,
    /// The channels, in output order.
    pub channels: Vec<OwnedChannel>,
}

impl ChannelSink for CollectSink {
    fn begin(&mut self, header: &PlaylistHeader) -> Result<()> {
        self.header = header.clone();
        Ok(())
    }

    fn write_batch(&mut self, batch: &[OwnedChannel]) -> Result<()> {
        self.channels.extend_from_slice(batch);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A configured pipeline with its plugins loaded. Reusable for many runs.
pub struct Pipeline {
    config: Config,
    runtime: Option<PluginRuntime>,
    plugins: Vec<PluginSlot>,
    failed_files: HashMap<PathBuf, FileStamp>,
    /// Plugin files whose current version is not loaded, and why.
    load_problems: std::collections::BTreeMap<PathBuf, String>,
    failed_plugin_names: HashSet<String>,
    mapper: Mapper,
    filters: FilterSet,
    /// `[filtering.dedup]`, if set.
    dedup: Option<Dedup>,
    monitor: MemoryMonitor,
    /// Block compression of held data (`[store] compression`).
    codec: BlockCodec,
    /// Block compression of `zstd_compression`'s hold.
    zstd_codec: BlockCodec,
    interrupt: Option<Arc<AtomicBool>>,
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
        let mapper = Mapper::parse(&config.mapping.rules)?;
        let filters = config
            .filtering
            .filters
            .iter()
            .map(|filter| {
                let action = match filter.action {
                    crate::config::FilterActionConfig::Include => FilterAction::Include,
                    crate::config::FilterActionConfig::Exclude => FilterAction::Exclude,
                };
                FilterRule::parse(action, &filter.expression)
            })
            .collect::<Result<FilterSet>>()?;
        let dedup = config
            .filtering
            .dedup
            .as_ref()
            .map(Dedup::parse)
            .transpose()?;
        let monitor = MemoryMonitor::new(config.memory.thresholds());
        monitor.force_level(config.memory.force_level.map(|level| level.0));
        let never_compress = config.pipeline.compress_held == CompressHeld::Never;
        let codec = config.store.codec(false, never_compress)?;
        let zstd_codec = config.store.codec(true, never_compress)?;
        let mut pipeline = Pipeline {
            config,
            runtime: None,
            plugins: Vec::new(),
            failed_files: HashMap::new(),
            load_problems: std::collections::BTreeMap::new(),
            failed_plugin_names: HashSet::new(),
            mapper,
            filters,
            dedup,
            monitor,
            codec,
            zstd_codec,
            interrupt: None,
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

    /// The loaded plugins.
    pub fn plugins(&self) -> &[PluginSlot] {
        &self.plugins
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

    fn load_plugins(&mut self) -> Result<()> {
        let settings = &self.config.proxy_generation.wasm_plugins;
        if !settings.enabled {
            return Ok(());
        }
        let security = &settings.security;
        if security.allow_network_access || security.allow_file_system_access {
            log::warn!(
                "allow_network_access / allow_file_system_access are set, but no host function \
                 offers network or file access: plugins still get neither"
            );
        }
        if !settings.fuel_metering {
            log::warn!(
                "fuel_metering = false: plugins run without fuel budgets or wall-clock timeouts"
            );
        }
        let runtime =
            PluginRuntime::new(settings.runtime_limits(), &security.allowed_host_functions)?;
        let directory = settings.plugin_directory.clone();
        let wants_plugins = Stage::ALL.iter().any(|&stage| {
            settings
                .strategies
                .for_stage(stage)
                .iter()
                .any(|name| NativeStrategy::from_name(name).is_none())
        });
        self.runtime = Some(runtime);
        match plugin_files(&directory) {
            Ok(files) => {
                for path in files {
                    self.load_file(path);
                }
                Ok(())
            }
            Err(error) if !wants_plugins => {
                log::debug!("no plugins loaded from {}: {error}", directory.display());
                Ok(())
            }
            Err(error) => Err(Error::config_key(
                "proxy_generation.wasm_plugins.plugin_directory",
                format!(
                    "cannot read plugin directory {}: {error}; create it, or build the \
                     example plugins with `cargo build`",
                    directory.display()
                ),
            )),
        }
    }

    /// Validates, instantiates and initialises one plugin file.
    fn instantiate_file(&self, path: &Path) -> Result<PluginSlot> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::config("wasm plugins are disabled"))?;
        let stamp = file_stamp(path).map_err(|error| Error::io(path, error))?;
        let bytes = read_module(path, runtime.limits().max_module_bytes)?;
        let signature = crate::signing::check_plugin(
            &bytes,
            path,
            &self.config.proxy_generation.wasm_plugins.security,
        )?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let compiled = runtime.compile(&bytes)?;
        let instance = runtime.instantiate(&compiled, &stem, &self.config.plugin_settings())?;
        let mut slot = PluginSlot::new(instance, path.to_path_buf());
        slot.stamp = stamp;
        slot.signature = signature;
        slot.compiled = Some(compiled);
        Ok(slot)
    }

    /// Loads a file that is not loaded yet; a failure is reported and kept.
    fn load_file(&mut self, path: PathBuf) {
        let loaded = self.instantiate_file(&path).and_then(|slot| {
            let name = slot.name().to_string();
            match self.plugins.iter().any(|other| other.name() == name) {
                true => Err(Error::config(format!(
                    "a plugin named `{name}` is already loaded"
                ))),
                false => Ok(slot),
            }
        });
        match loaded {
            Ok(slot) => {
                log::info!(
                    "loaded plugin `{}` {} from {}",
                    slot.name(),
                    slot.instance.info().version,
                    path.display()
                );
                self.failed_files.remove(&path);
                self.load_problems.remove(&path);
                self.plugins.push(slot);
            }
            Err(error) => self.record_load_failure(&path, &error),
        }
    }

    fn record_load_failure(&mut self, path: &Path, error: &Error) {
        log::warn!("plugin {} not loaded: {error}", path.display());
        self.load_problems
            .insert(path.to_path_buf(), error.to_string());
        if let Some(stem) = path.file_stem() {
            self.failed_plugin_names
                .insert(stem.to_string_lossy().into_owned());
        }
        if let Ok(stamp) = file_stamp(path) {
            self.failed_files.insert(path.to_path_buf(), stamp);
        }
    }

    /// Replaces a plugin's instance with a fresh one from its compiled module
    /// (its memory may be inconsistent after an aborted call). If that fails,
    /// the plugin is switched off.
    fn respawn(&mut self, index: usize) {
        let settings = self.config.plugin_settings();
        let Some(runtime) = &self.runtime else {
            return;
        };
        let slot = &mut self.plugins[index];
        let stem = slot.name().to_string();
        let fresh = match &slot.compiled {
            Some(compiled) => runtime.instantiate(compiled, &stem, &settings),
            None => return,
        };
        match fresh {
            Ok(instance) => slot.replace_instance(instance),
            Err(error) => {
                log::warn!(
                    "plugin `{stem}` could not be re-instantiated, switching it off: {error}"
                );
                slot.disabled = true;
                slot.disabled_since = Some(Instant::now());
                slot.last_error = Some(error.to_string());
            }
        }
    }

    /// Hot reload (`enable_hot_reload`): picks up plugin files that changed,
    /// appeared or disappeared since the last run. A changed file is fully
    /// validated before it replaces the running version; a broken one leaves
    /// the old version in place and says why. Runs only between pipeline
    /// runs, so no run mixes versions. A replaced plugin starts with fresh
    /// health counters.
    pub fn reload_changed_plugins(&mut self) {
        let directory = self
            .config
            .proxy_generation
            .wasm_plugins
            .plugin_directory
            .clone();
        if self.runtime.is_none() {
            return;
        }
        let mut index = 0;
        while index < self.plugins.len() {
            let path = self.plugins[index].path.clone();
            match file_stamp(&path) {
                Err(_) => {
                    log::warn!(
                        "plugin file {} was removed: unloading `{}`",
                        path.display(),
                        self.plugins[index].name()
                    );
                    self.plugins.remove(index);
                    self.load_problems.remove(&path);
                    continue;
                }
                Ok(stamp) if stamp != self.plugins[index].stamp => {
                    match self.instantiate_file(&path) {
                        Ok(slot) => {
                            log::info!(
                                "reloaded plugin `{}` {} from {}",
                                slot.name(),
                                slot.instance.info().version,
                                path.display()
                            );
                            self.plugins[index] = slot;
                            self.load_problems.remove(&path);
                        }
                        Err(error) => {
                            log::warn!(
                                "changed plugin {} is refused, `{}` keeps running the \
                                 previous version: {error}",
                                path.display(),
                                self.plugins[index].name()
                            );
                            self.load_problems
                                .insert(path.clone(), format!("{error} (previous version kept)"));
                            // Do not retry this exact file on every run.
                            self.plugins[index].stamp = stamp;
                        }
                    }
                }
                Ok(_) => {}
            }
            index += 1;
        }
        let Ok(files) = plugin_files(&directory) else {
            return;
        };
        // Problems of files that are gone are gone too.
        self.load_problems.retain(|path, _| files.contains(path));
        self.failed_files.retain(|path, _| files.contains(path));
        for path in files.iter().cloned() {
            let known = self.plugins.iter().any(|slot| slot.path == path);
            let failed_unchanged = self
                .failed_files
                .get(&path)
                .is_some_and(|stamp| file_stamp(&path).is_ok_and(|now| now == *stamp));
            if !known && !failed_unchanged {
                self.load_file(path);
            }
        }
    }

    fn check_strategy_names(&self) -> Result<()> {
        let plugins_enabled = self.config.proxy_generation.wasm_plugins.enabled;
        for stage in Stage::ALL {
            let names = self
                .config
                .proxy_generation
                .wasm_plugins
                .strategies
                .for_stage(stage);
            for name in names {
                if let Some(native) = NativeStrategy::from_name(name) {
                    if native.stage() != stage {
                        return Err(Error::config_key(
                            format!("proxy_generation.wasm_plugins.strategies.{}", stage.name()),
                            format!(
                                "`{name}` is a {} strategy, not a {} one",
                                native.stage().name(),
                                stage.name()
                            ),
                        ));
                    }
                    continue;
                }
                let members: Vec<&str> = name.split(CHAIN_SEPARATOR).collect();
                if members.len() > MAX_CHAIN_LEN {
                    return Err(Error::config_key(
                        format!("proxy_generation.wasm_plugins.strategies.{}", stage.name()),
                        format!(
                            "`{name}` chains {} plugins; at most {MAX_CHAIN_LEN}",
                            members.len()
                        ),
                    ));
                }
                if members.len() > 1 {
                    self.check_chain(stage, name, &members)?;
                }
                let unknown = members.iter().find(|member| {
                    NativeStrategy::from_name(member).is_none()
                        && plugins_enabled
                        && !self.plugins.iter().any(|slot| slot.name() == **member)
                        && !self.failed_plugin_names.contains(**member)
                });
                if let Some(member) = unknown {
                    let name = member;
                    let natives: Vec<&str> = NativeStrategy::ALL
                        .iter()
                        .filter(|s| s.stage() == stage)
                        .map(|s| s.name())
                        .collect();
                    let plugins: Vec<&str> = self.plugins.iter().map(|s| s.name()).collect();
                    return Err(Error::config_key(
                        format!("proxy_generation.wasm_plugins.strategies.{}", stage.name()),
                        format!(
                            "unknown strategy `{name}`; native strategies for this stage: {}; \
                             loaded plugins: {}",
                            natives.join(", "),
                            if plugins.is_empty() {
                                "none".to_string()
                            } else {
                                plugins.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A chained name: plugins, then at most one streaming native strategy
    /// of this stage, last.
    fn check_chain(&self, stage: Stage, name: &str, members: &[&str]) -> Result<()> {
        let key = format!("proxy_generation.wasm_plugins.strategies.{}", stage.name());
        let (last, plugins) = members.split_last().expect("a chain has members");
        if let Some(native) = plugins
            .iter()
            .find(|m| NativeStrategy::from_name(m).is_some())
        {
            return Err(Error::config_key(
                key,
                format!(
                    "`{name}` has the native strategy `{native}` before a plugin; a native \
                     strategy can only end a chain"
                ),
            ));
        }
        if let Some(native) = NativeStrategy::from_name(last) {
            if native.stage() != stage || native.holds() {
                let streaming: Vec<&str> = NativeStrategy::ALL
                    .iter()
                    .filter(|s| s.stage() == stage && !s.holds())
                    .map(|s| s.name())
                    .collect();
                return Err(Error::config_key(
                    key,
                    format!(
                        "`{name}` ends with `{last}`; a chain can end only with a streaming \
                         native strategy of {}: {}",
                        stage.name(),
                        streaming.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The store policy of a holding strategy: `zstd_compression` holds
    /// zstd-compressed, the others with `[store] compression`.
    pub fn store_policy(&self, native: NativeStrategy) -> StorePolicy {
        let store = &self.config.store;
        StorePolicy {
            codec: if native == NativeStrategy::ZstdCompression {
                self.zstd_codec.clone()
            } else {
                self.codec.clone()
            },
            spill_directory: store.spill_directory(),
            compress_from: store.compress_from.0,
            disk_from: store.disk_from.0,
            // zstd_compression is a promise to hold compressed.
            floor: match self.config.pipeline.compress_held {
                _ if native == NativeStrategy::ZstdCompression => Tier::Compressed,
                CompressHeld::Always => Tier::Compressed,
                CompressHeld::Auto | CompressHeld::Never => Tier::Plain,
            },
        }
    }

    /// Memory the run's holders may use before pressure reaches `high`,
    /// shared among the holding strategies the configuration lists.
    fn spare_bytes_per_holder(&self) -> u64 {
        let holders = Stage::ALL
            .iter()
            .flat_map(|&stage| {
                self.config
                    .proxy_generation
                    .wasm_plugins
                    .strategies
                    .for_stage(stage)
            })
            .filter(|name| NativeStrategy::from_name(name).is_some_and(NativeStrategy::holds))
            .count()
            .max(1) as u64;
        let spare = match self.monitor.snapshot() {
            Ok(snapshot) => {
                let high = (snapshot.limit_bytes as f64 * self.config.memory.high) as u64;
                high.saturating_sub(snapshot.used_bytes)
            }
            // Nothing to measure: adapt by pressure only (which then reads
            // optimal, unless forced).
            Err(_) => u64::MAX,
        };
        spare / holders
    }

    /// Chooses the strategy chain of every stage for this pressure level,
    /// for inputs of unknown size.
    pub fn plan(&mut self, level: MemoryPressureLevel) -> Vec<StagePlan> {
        self.plan_for_input(level, None)
    }

    /// Chooses the strategy chain of every stage for this pressure level
    /// and an input of `input_bytes` (the sources' size, if known): a
    /// holding strategy is chosen only if its estimated need fits.
    pub fn plan_for_input(
        &mut self,
        level: MemoryPressureLevel,
        input_bytes: Option<u64>,
    ) -> Vec<StagePlan> {
        let spare = self.spare_bytes_per_holder();
        Stage::ALL
            .into_iter()
            .map(|stage| self.plan_stage(stage, level, input_bytes, spare))
            .collect()
    }

    fn plan_stage(
        &mut self,
        stage: Stage,
        level: MemoryPressureLevel,
        input_bytes: Option<u64>,
        spare: u64,
    ) -> StagePlan {
        let names = self
            .config
            .proxy_generation
            .wasm_plugins
            .strategies
            .for_stage(stage)
            .to_vec();
        let mut chain = Vec::new();
        let mut skipped = Vec::new();
        let mut hold = None;
        let mut notes = Vec::new();
        for name in &names {
            if let Some(native) = NativeStrategy::from_name(name) {
                if let Some(service) = native.needs_endpoint() {
                    skipped.push(format!(
                        "{name} (needs {service}; none is configured in this build)"
                    ));
                    continue;
                }
                if native.holds() {
                    if hold.is_some() {
                        skipped.push(format!("{name} (the stage already holds)"));
                        continue;
                    }
                    let policy = self.store_policy(native);
                    match crate::store::plan_tier(&policy, level, input_bytes, spare) {
                        Some(tier_plan) => {
                            notes.push(format!(
                                "{name} holds {} ({})",
                                tier_plan.tier.name(),
                                tier_plan.reason
                            ));
                            hold = Some((native, tier_plan));
                        }
                        None => {
                            skipped.push(format!(
                                "{name} (its estimated need does not fit in memory and \
                                 [store] spill_to_disk is off)"
                            ));
                            continue;
                        }
                    }
                    if native.only_holds() {
                        continue;
                    }
                }
                chain.push(Candidate::Native(native));
                break; // natives do not fail: nothing after one is reachable
            }
            let mut plugins = PluginChain::new();
            let mut then = None;
            let mut unusable = None;
            for member in name.split(CHAIN_SEPARATOR) {
                // check_strategy_names lets a native only end a chain, and
                // bounds the chain's length.
                if let Some(native) = NativeStrategy::from_name(member) {
                    then = Some(native);
                    break;
                }
                match self.usable_plugin(member, stage, level) {
                    Ok(index) => plugins.push(index).expect("chain length checked"),
                    Err(why) => {
                        unusable = Some(why);
                        break;
                    }
                }
            }
            match unusable {
                None => chain.push(Candidate::Plugins {
                    chain: plugins,
                    then,
                }),
                Some(why) if name.contains(CHAIN_SEPARATOR) => {
                    skipped.push(format!("{name} ({why})"))
                }
                Some(why) => skipped.push(why),
            }
        }
        if !matches!(chain.last(), Some(Candidate::Native(_))) {
            chain.push(Candidate::Native(NativeStrategy::streaming_default(stage)));
        }
        let first = self.candidate_name(&chain[0]);
        let mut reason = match (names.is_empty(), skipped.is_empty()) {
            (true, _) => "nothing listed: native streaming default".to_string(),
            (false, true) => "first listed candidate".to_string(),
            (false, false) => format!("skipped {}", skipped.join("; ")),
        };
        if !notes.is_empty() {
            reason = format!("{reason}; {}", notes.join("; "));
        }
        log::info!("stage {}: using {first} ({reason})", stage.name());
        StagePlan {
            stage,
            hold,
            chain,
            reason,
        }
    }

    /// The index of plugin `name` if it can run `stage` at `level`, else
    /// why not (for the plan's reason).
    fn usable_plugin(
        &mut self,
        name: &str,
        stage: Stage,
        level: MemoryPressureLevel,
    ) -> std::result::Result<usize, String> {
        let fallbacks = &self.config.proxy_generation.wasm_plugins.fallbacks;
        let back_off = Duration::from_secs(fallbacks.circuit_reset_seconds);
        let max_failures = fallbacks.max_plugin_failures;
        let Some(index) = self.plugins.iter().position(|slot| slot.name() == name) else {
            return Err(format!("{name} (not loaded)"));
        };
        let slot = &mut self.plugins[index];
        if slot.maybe_close_circuit(back_off) {
            log::info!("plugin `{name}`: back-off over, trying it again");
        }
        if slot.disabled {
            return Err(format!(
                "{name} (switched off after {} failures)",
                slot.failures
            ));
        }
        if !slot.instance.info().supports(stage) {
            return Err(format!("{name} (does not implement {})", stage.name()));
        }
        match slot.instance.accepts_pressure(level) {
            Ok(true) => Ok(index),
            Ok(false) => Err(format!("{name} (declines pressure {})", level.name())),
            Err(error) => {
                slot.record_failure(&error, max_failures);
                Err(format!("{name} (failed its pressure check: {error})"))
            }
        }
    }

    fn candidate_name(&self, candidate: &Candidate) -> String {
        match candidate {
            Candidate::Plugins { chain, then } => {
                let plugins = chain.iter().map(|&i| self.plugins[i].name());
                let names: Vec<&str> = plugins.chain(then.map(NativeStrategy::name)).collect();
                names.join(&CHAIN_SEPARATOR.to_string())
            }
            Candidate::Native(native) => native.name().to_string(),
        }
    }

    /// Opens the sources named in the config.
    ///
    /// # Errors
    /// A source that cannot be opened, or none configured.
    pub fn configured_sources(&self) -> Result<Vec<Source>> {
        if self.config.sources.is_empty() {
            return Err(Error::config_key(
                "sources",
                "no sources: add a [[sources]] table with a `path`, or pass --input",
            ));
        }
        self.config
            .sources
            .iter()
            .map(|s| Source::open(&s.path))
            .collect()
    }

    /// Runs the pipeline over `sources` into `sink`.
    ///
    /// # Errors
    /// I/O errors, a spill store that fails, an interruption (see
    /// [`Pipeline::set_interrupt_flag`]), or a plugin failure when
    /// `enable_fallbacks = false`.
    pub fn run(&mut self, sources: Vec<Source>, sink: &mut dyn ChannelSink) -> Result<RunStats> {
        let started = Instant::now();
        if self.config.proxy_generation.wasm_plugins.enable_hot_reload {
            self.reload_changed_plugins();
        }
        let level = self.monitor.level();
        let snapshot = self.monitor.snapshot().ok();
        let input_bytes = sources
            .iter()
            .map(|source| source.size_hint)
            .sum::<Option<u64>>();
        let plans = self.plan_for_input(level, input_bytes);
        let mut run = RunState {
            stats: RunStats {
                memory_pressure: level.name().to_string(),
                memory_source: snapshot.map(|s| s.source.name().to_string()),
                memory_limit_bytes: snapshot.map(|s| s.limit_bytes),
                stages: plans
                    .iter()
                    .map(|plan| StageStats {
                        stage: plan.stage.name().to_string(),
                        strategy: self.candidate_name(&plan.chain[0]),
                        hold: plan.hold.as_ref().map(|(native, tier_plan)| {
                            format!("{} ({})", native.name(), tier_plan.tier.name())
                        }),
                        reason: plan.reason.clone(),
                        ..StageStats::default()
                    })
                    .collect(),
                plugin_load_errors: self.load_errors(),
                ..RunStats::default()
            },
            context: StageContext {
                stage: Stage::SourceLoading,
                memory_pressure: level,
                available_memory: snapshot.map_or(0, |s| s.available_bytes),
                proxy_name: self.config.proxy.name.clone().into(),
                base_url: self.config.proxy.base_url.clone().into(),
                batch_index: 0,
            },
            numberer: ChannelNumberer::new(self.config.numbering.start),
            seen_keys: HashSet::new(),
            holds: Default::default(),
            barrier: None,
            sorter: None,
            plans,
        };
        for (index, plan) in run.plans.iter().enumerate() {
            let Some((native, tier_plan)) = &plan.hold else {
                continue;
            };
            let policy = self.store_policy(*native);
            let (tier, budget) = (tier_plan.tier, tier_plan.plain_budget);
            match native {
                NativeStrategy::InMemoryNumbering => {
                    run.barrier = Some(BatchQueue::new(native.name(), policy, tier, budget));
                }
                NativeStrategy::SortedWriter => {
                    run.sorter = Some(ExternalSorter::new(policy, tier, budget));
                }
                NativeStrategy::InMemoryFilter if self.dedup.is_some() => {
                    let dedup = self.dedup.clone().expect("checked");
                    run.holds[index] = Some(StageHold::Dedup(PlaylistDedup::new(
                        dedup,
                        policy,
                        tier,
                        budget,
                        self.config.pipeline.batch_size,
                    )));
                }
                _ => {
                    run.holds[index] = Some(StageHold::Queue(BatchQueue::new(
                        native.name(),
                        policy,
                        tier,
                        budget,
                    )))
                }
            }
        }
        let plugin_baseline: Vec<(u64, u64)> = self
            .plugins
            .iter()
            .map(|p| {
                let stats = p.total_stats();
                (stats.calls, stats.fuel_consumed)
            })
            .collect();

        let batch_size = self.config.pipeline.batch_size;
        let mut loader = Loader::new(sources);
        let mut loading_time = Duration::ZERO;
        let mut begun = false;
        let mut next_id = 1u64;
        loop {
            self.check_interrupted()?;
            let batch_started = Instant::now();
            let next = loader.next_batch(batch_size, &mut next_id)?;
            loading_time += batch_started.elapsed();
            let Some(batch) = next else {
                break;
            };
            if !begun {
                // The header of the first source is known once it has been
                // read; headers of later sources are merged when known by now.
                sink.begin(&loader.header)?;
                begun = true;
            }
            run.stats.batches += 1;
            run.stats.channels_loaded += batch.len() as u64;
            self.advance(&mut run, batch, 0, sink)?;
        }
        run.stats.malformed_entries = loader.malformed;
        run.stats.stages[0].time_ms += loading_time.as_secs_f64() * 1e3;
        if !begun {
            sink.begin(&loader.header)?;
        }
        // The input has ended: let go of what each stage held, in stage
        // order, one batch at a time (each may fill a later stage's hold).
        for index in 0..3 {
            let Some(mut hold) = run.holds[index].take() else {
                continue;
            };
            while let Some(batch) = hold.pop(self.monitor.level())? {
                self.check_interrupted()?;
                self.advance(&mut run, batch, index + 1, sink)?;
            }
            run.stats.holds.extend(hold.stats());
        }
        if let Some(mut barrier) = run.barrier.take() {
            // Batch by batch: each is read back, numbered and sent on before
            // the next is touched.
            while let Some((mut channels, explicit)) = barrier.pop()? {
                self.check_interrupted()?;
                let stage_started = Instant::now();
                number_the_rest(&mut run.numberer, &mut channels, &explicit);
                let numbering = &mut run.stats.stages[3];
                numbering.channels_out += channels.len() as u64;
                numbering.count_batch(NativeStrategy::InMemoryNumbering.name());
                numbering.time_ms += stage_started.elapsed().as_secs_f64() * 1e3;
                self.finish_batch(&mut run, channels, sink)?;
            }
            run.stats.holds.push(barrier.stats());
        }
        if let Some(sorter) = run.sorter.take() {
            let stage_started = Instant::now();
            let mut sorted = sorter.finish(batch_size)?;
            let mut sort_time = stage_started.elapsed();
            loop {
                self.check_interrupted()?;
                let batch_started = Instant::now();
                let next = sorted.next_batch()?;
                sort_time += batch_started.elapsed();
                let Some(batch) = next else {
                    break;
                };
                let generation = &mut run.stats.stages[4];
                generation.channels_out += batch.len() as u64;
                generation.count_batch(NativeStrategy::SortedWriter.name());
                run.stats.channels_written += batch.len() as u64;
                sink.write_batch(&batch)?;
            }
            run.stats.stages[4].time_ms += sort_time.as_secs_f64() * 1e3;
            run.stats.holds.push(sorted.stats().clone());
        }
        sink.finish()?;

        let mut stats = run.stats;
        for (slot, (calls_before, fuel_before)) in self.plugins.iter().zip(plugin_baseline) {
            let instance_stats = slot.total_stats();
            let fuel = instance_stats.fuel_consumed - fuel_before;
            stats.fuel_consumed += fuel;
            stats.plugins.push(PluginStats {
                name: slot.name().to_string(),
                version: slot.instance.info().version.to_string(),
                calls: instance_stats.calls - calls_before,
                fuel,
                failures: slot.failures,
                failures_by_kind: slot
                    .failures_by_kind
                    .iter()
                    .map(|(kind, count)| (kind.to_string(), *count))
                    .collect(),
                bytes_in: instance_stats.bytes_in,
                bytes_out: instance_stats.bytes_out,
                disabled: slot.disabled,
                last_error: slot.last_error.clone(),
                time_us: instance_stats.time.as_micros() as u64,
            });
        }
        stats.time_ms = started.elapsed().as_secs_f64() * 1e3;
        stats.peak_rss_bytes = crate::memory::peak_rss_bytes();
        Ok(stats)
    }

    /// Stops the run between batches once `flag` is set (the CLI sets it on
    /// Ctrl-C): the run returns [`ErrorKind::Interrupted`], its spill files
    /// are gone, and a sink that writes a file leaves the old one in place.
    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    fn check_interrupted(&self) -> Result<()> {
        match &self.interrupt {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(ErrorKind::Interrupted.into()),
            _ => Ok(()),
        }
    }

    /// Runs the pipeline and collects the channels.
    ///
    /// # Errors
    /// See [`Pipeline::run`].
    pub fn run_collect(&mut self, sources: Vec<Source>) -> Result<(Vec<OwnedChannel>, RunStats)> {
        let mut sink = CollectSink::default();
        let stats = self.run(sources, &mut sink)?;
        Ok((sink.channels, stats))
    }

    /// Takes a batch through the stages from `from` on, until a stage holds
    /// it or it reaches the sink. The memory pressure is read again for
    /// each batch (the monitor caches it briefly): plugins see it in their
    /// context, and holders move down a tier when it rises.
    fn advance(
        &mut self,
        run: &mut RunState,
        mut batch: Vec<OwnedChannel>,
        from: usize,
        sink: &mut dyn ChannelSink,
    ) -> Result<()> {
        let level = self.monitor.level();
        run.context.memory_pressure = level;
        for index in from..3 {
            self.run_stage(run, index, &mut batch)?;
            if let Some(hold) = &mut run.holds[index] {
                return hold.push(batch, level);
            }
        }
        if from <= 3 {
            if let Some(barrier) = &mut run.barrier {
                let stage_started = Instant::now();
                let explicit = reserve_explicit_numbers(&mut run.numberer, &mut batch);
                run.stats.stages[3].channels_in += batch.len() as u64;
                barrier.push(batch, explicit, level)?;
                run.stats.stages[3].time_ms += stage_started.elapsed().as_secs_f64() * 1e3;
                return Ok(());
            }
            self.run_stage(run, 3, &mut batch)?;
        }
        self.finish_batch(run, batch, sink)
    }

    /// The generation stage, then the sink (or the sorter).
    fn finish_batch(
        &mut self,
        run: &mut RunState,
        mut batch: Vec<OwnedChannel>,
        sink: &mut dyn ChannelSink,
    ) -> Result<()> {
        if let Some(sorter) = &mut run.sorter {
            let started = Instant::now();
            run.stats.stages[4].channels_in += batch.len() as u64;
            sorter.push(batch, self.monitor.level())?;
            run.stats.stages[4].time_ms += started.elapsed().as_secs_f64() * 1e3;
            return Ok(());
        }
        self.run_stage(run, 4, &mut batch)?;
        run.stats.channels_written += batch.len() as u64;
        sink.write_batch(&batch)
    }

    /// One batch through one stage: the chain's candidates in order until
    /// one succeeds.
    fn run_stage(
        &mut self,
        run: &mut RunState,
        stage_index: usize,
        batch: &mut Vec<OwnedChannel>,
    ) -> Result<()> {
        let started = Instant::now();
        let stage = run.plans[stage_index].stage;
        run.context.stage = stage;
        run.context.batch_index = (run.stats.batches.saturating_sub(1)) as u32;
        let channels_in = batch.len() as u64;
        let fallbacks = &self.config.proxy_generation.wasm_plugins.fallbacks;
        let (enable_fallbacks, max_failures) =
            (fallbacks.enable_fallbacks, fallbacks.max_plugin_failures);
        let normal_timeout =
            Duration::from_secs(self.config.proxy_generation.wasm_plugins.timeout_seconds);
        let fallback_timeout = Duration::from_millis(fallbacks.fallback_timeout_ms);
        let mut used = None;
        // Taken out for the loop (which updates `run`), put back after it;
        // an error ends the run, so nothing needs it then.
        let candidates = std::mem::take(&mut run.plans[stage_index].chain);
        for (position, candidate) in candidates.iter().enumerate() {
            let (chain, then) = match candidate {
                Candidate::Native(native) => {
                    self.apply_native(*native, batch, &mut run.numberer, &mut run.seen_keys);
                    used = Some(native.name().to_string());
                    break;
                }
                Candidate::Plugins { chain, then } => (chain, then),
            };
            if chain.iter().any(|&index| self.plugins[index].disabled) {
                continue;
            }
            let timeout = if position == 0 {
                normal_timeout
            } else {
                fallback_timeout.min(normal_timeout)
            };
            // A single plugin leaves a batch it fails on untouched; a chain
            // keeps the stage's input to give the next candidate.
            let stage_input = (chain.len() > 1).then(|| batch.clone());
            let mut failed = None;
            for &index in chain {
                let slot = &mut self.plugins[index];
                slot.instance.set_call_timeout(timeout);
                run.stats.plugin_calls += 1;
                match slot.run(stage, &run.context, batch) {
                    Ok(()) => {}
                    Err(error) if error.is_plugin_failure() => {
                        failed = Some((index, error));
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
            let Some((index, error)) = failed else {
                for &index in chain {
                    self.plugins[index].record_success();
                }
                if let Some(native) = then {
                    self.apply_native(*native, batch, &mut run.numberer, &mut run.seen_keys);
                }
                used = Some(self.candidate_name(candidate));
                break;
            };
            if let Some(input) = stage_input {
                *batch = input;
            }
            run.stats.plugin_failures += 1;
            let slot = &mut self.plugins[index];
            log::warn!(
                "plugin `{}` failed on batch {} of {}: {error}",
                slot.name(),
                run.context.batch_index,
                stage.name()
            );
            if slot.record_failure(&error, max_failures) {
                log::warn!(
                    "plugin `{}` switched off after {} failures (max_plugin_failures)",
                    slot.name(),
                    slot.failures
                );
            }
            if aborted_mid_call(&error) {
                self.respawn(index);
            }
            if !enable_fallbacks {
                return Err(error);
            }
            run.stats.fallbacks += 1;
        }
        run.plans[stage_index].chain = candidates;
        let stage_stats = &mut run.stats.stages[stage_index];
        if let Some(name) = used {
            stage_stats.count_batch(&name);
        }
        stage_stats.channels_in += channels_in;
        stage_stats.channels_out += batch.len() as u64;
        stage_stats.time_ms += started.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    fn apply_native(
        &self,
        native: NativeStrategy,
        batch: &mut Vec<OwnedChannel>,
        numberer: &mut ChannelNumberer,
        seen_keys: &mut HashSet<u64>,
    ) {
        match native {
            NativeStrategy::Mapping | NativeStrategy::ZstdCompression => {
                if !self.mapper.is_empty() {
                    for channel in batch.iter_mut() {
                        self.mapper.apply(channel);
                    }
                }
            }
            NativeStrategy::ParallelMapping => {
                if !self.mapper.is_empty() {
                    map_in_parallel(&self.mapper, batch);
                }
            }
            // inmemory_filter filters each batch as it comes; the stage's
            // hold keeps the result until the input ends (and removes
            // duplicates over the whole playlist there).
            NativeStrategy::InMemoryFilter => {
                if !self.filters.is_empty() {
                    batch.retain(|channel| self.filters.keeps(channel));
                }
            }
            NativeStrategy::Filter | NativeStrategy::RedisSpill => {
                if !self.filters.is_empty() {
                    batch.retain(|channel| self.filters.keeps(channel));
                }
                if let Some(dedup) = &self.dedup {
                    dedup.retain_first(batch, seen_keys);
                }
            }
            NativeStrategy::BitmaskFilter => {
                if !self.filters.is_empty() {
                    let keep = keep_bitmask(&self.filters, batch);
                    let mut index = 0;
                    batch.retain(|_| {
                        let kept = keep[index / 64] & (1 << (index % 64)) != 0;
                        index += 1;
                        kept
                    });
                }
                if let Some(dedup) = &self.dedup {
                    dedup.retain_first(batch, seen_keys);
                }
            }
            // As a per-batch fallback the in-memory numbering runs streaming:
            // the barrier (where it differs) only exists when it runs first.
            NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => {
                for channel in batch.iter_mut() {
                    numberer.assign(channel);
                }
            }
            // Reading, holding and writing happen around the stages; as
            // stage steps these leave the batch as it is.
            NativeStrategy::StreamingSource
            | NativeStrategy::InMemorySource
            | NativeStrategy::CloudSpill
            | NativeStrategy::StreamingWriter
            | NativeStrategy::SortedWriter => {}
        }
    }
}

/// The `[filtering]` filters as a keep bitmask (bit `i % 64` of word
/// `i / 64` set: keep channel `i`), the form a plugin filter answers in.
fn keep_bitmask(filters: &FilterSet, batch: &[OwnedChannel]) -> Vec<u64> {
    let mut keep = vec![0u64; batch.len().div_ceil(64)];
    for (index, channel) in batch.iter().enumerate() {
        if filters.keeps(channel) {
            keep[index / 64] |= 1 << (index % 64);
        }
    }
    keep
}

/// Below this many channels per worker, threads cost more than they save.
const PARALLEL_MIN_CHANNELS_PER_WORKER: usize = 256;

/// The `[mapping]` rules over a batch split among the machine's cores;
/// channels stay in place, so the order is the input's.
fn map_in_parallel(mapper: &Mapper, batch: &mut [OwnedChannel]) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = cores
        .min(batch.len() / PARALLEL_MIN_CHANNELS_PER_WORKER)
        .max(1);
    if workers == 1 {
        for channel in batch.iter_mut() {
            mapper.apply(channel);
        }
        return;
    }
    let chunk = batch.len().div_ceil(workers);
    std::thread::scope(|scope| {
        for part in batch.chunks_mut(chunk) {
            scope.spawn(move || {
                for channel in part.iter_mut() {
                    mapper.apply(channel);
                }
            });
        }
    });
}

struct RunState {
    stats: RunStats,
    context: StageContext<'static>,
    numberer: ChannelNumberer,
    /// Keys seen by the streaming native dedup (`[filtering.dedup]`).
    seen_keys: HashSet<u64>,
    /// What source_loading, data_mapping and filtering hold until the input
    /// ends (`inmemory_full`, `zstd_compression`, `inmemory_filter`).
    holds: [Option<StageHold>; 3],
    /// The numbering barrier (`inmemory_numbering`), with each batch's
    /// explicit-number bits.
    barrier: Option<BatchQueue<Vec<u64>>>,
    /// The external sort (`sorted_writer`).
    sorter: Option<ExternalSorter>,
    plans: Vec<StagePlan>,
}

/// What a stage holds until the input ends.
enum StageHold {
    /// The batches as they came (`inmemory_full`, `zstd_compression`,
    /// `inmemory_filter` without dedup).
    Queue(BatchQueue),
    /// `inmemory_filter` with `[filtering.dedup]`: duplicates removed over
    /// the whole playlist.
    Dedup(PlaylistDedup),
}

impl StageHold {
    fn push(&mut self, batch: Vec<OwnedChannel>, level: MemoryPressureLevel) -> Result<()> {
        match self {
            StageHold::Queue(queue) => queue.push(batch, (), level),
            StageHold::Dedup(dedup) => dedup.push(batch, level),
        }
    }

    fn pop(&mut self, level: MemoryPressureLevel) -> Result<Option<Vec<OwnedChannel>>> {
        match self {
            StageHold::Queue(queue) => Ok(queue.pop()?.map(|(batch, ())| batch)),
            StageHold::Dedup(dedup) => dedup.pop(level),
        }
    }

    fn stats(&self) -> Vec<HoldStats> {
        match self {
            StageHold::Queue(queue) => vec![queue.stats()],
            StageHold::Dedup(dedup) => dedup.stats(),
        }
    }
}

/// Reads the sources one after another, in batches, assigning ids.
struct Loader {
    readers: std::vec::IntoIter<(u32, M3uReader<Box<dyn BufRead + Send>>)>,
    current: Option<(u32, M3uReader<Box<dyn BufRead + Send>>)>,
    header: PlaylistHeader,
    malformed: u64,
}

impl Loader {
    fn new(sources: Vec<Source>) -> Loader {
        let readers: Vec<_> = sources
            .into_iter()
            .enumerate()
            .map(|(index, source)| (index as u32, M3uReader::new(source.reader, index as u32)))
            .collect();
        Loader {
            readers: readers.into_iter(),
            current: None,
            header: PlaylistHeader::default(),
            malformed: 0,
        }
    }

    fn next_batch(&mut self, size: usize, next_id: &mut u64) -> Result<Option<Vec<OwnedChannel>>> {
        let mut batch = Vec::with_capacity(size.min(4096));
        while batch.len() < size {
            if self.current.is_none() {
                self.current = self.readers.next();
            }
            let Some((_, reader)) = &mut self.current else {
                break;
            };
            let next = reader.next();
            // A reader knows its header once it has read its first line.
            merge_header(&mut self.header, reader.header());
            match next {
                Some(channel) => {
                    let mut channel = channel?;
                    channel.id = *next_id;
                    *next_id += 1;
                    batch.push(channel);
                }
                None => {
                    self.malformed += reader.malformed();
                    self.current = None;
                }
            }
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

fn merge_header(into: &mut PlaylistHeader, from: &PlaylistHeader) {
    for (name, value) in &from.attributes {
        if !into
            .attributes
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            into.attributes.push((name.clone(), value.clone()));
        }
    }
}

/// What identifies one version of a plugin: modification time and size of
/// the module, and of its detached signature if it has one.
pub type FileStamp = (Option<std::time::SystemTime>, u64);

fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = std::fs::metadata(path)?;
    let signature = std::fs::metadata(crate::signing::signature_path(path)).ok();
    let newest = match (
        metadata.modified().ok(),
        signature.as_ref().and_then(|s| s.modified().ok()),
    ) {
        (Some(module), Some(sig)) => Some(module.max(sig)),
        (module, sig) => module.or(sig),
    };
    Ok((
        newest,
        metadata.len() + signature.map_or(0, |s| s.len() + 1),
    ))
}

/// Reads a plugin file without ever holding more than `limit + 1` bytes of
/// it: a larger file is refused from its size (a file that grows meanwhile
/// is still cut there, and refused by `PluginRuntime::compile`).
fn read_module(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|error| Error::io(path, error))?;
    let size = file
        .metadata()
        .map_err(|error| Error::io(path, error))?
        .len();
    if size > limit as u64 {
        return Err(ErrorKind::InvalidModule(format!(
            "module is {size} bytes, more than the limit of {limit} bytes"
        ))
        .into());
    }
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::io(path, error))?;
    Ok(bytes)
}

/// The `*.wasm` files of a directory, sorted.
fn plugin_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

/// Failures that stop guest code in the middle of its work, possibly with
/// its heap half-updated: the instance is replaced before its next call.
fn aborted_mid_call(error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Trap { .. }
            | ErrorKind::OutOfFuel { .. }
            | ErrorKind::Timeout { .. }
            | ErrorKind::MemoryLimit { .. }
            | ErrorKind::ArenaOverflow { .. }
    )
}
