//! Strategy choice: the native strategy names, and the planning of each
//! stage: the TOML preference list filtered by health, stage support, memory
//! pressure and (for holding strategies) the estimated need, with a native
//! strategy as last resort; the plan says why each skipped name was skipped.

use std::time::Duration;

use m3u_proxy_plugin_abi::{MemoryPressureLevel, Stage};

use super::{PerStage, Pipeline};
use crate::config::CompressHeld;
use crate::store::{StorePolicy, Tier};
use crate::{Error, Result};

/// The built-in strategies.
///
/// Some *hold* what passes through their stage until the input ends (see
/// [`NativeStrategy::holds`]); they keep it in the run's spill store
/// ([`crate::store`]), whose tier (plain, compressed, disk) is chosen by the
/// estimated need and moves down when memory pressure rises, so they are
/// usable at every pressure level while a spill directory is available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeStrategy {
    /// Reads sources batch by batch (default).
    StreamingSource,
    /// Reads every source fully before the first batch moves on (releases
    /// a slow provider connection early), held in the store.
    InMemorySource,
    /// `inmemory_full` held in S3-compatible object storage; needs an
    /// object store endpoint.
    CloudSpill,
    /// The `[mapping]` rules, per channel.
    Mapping,
    /// The `[mapping]` rules on a pool of worker threads.
    ParallelMapping,
    /// Holds what data_mapping hands on, zstd-compressed, until the input
    /// ends; the mapping itself is done by the next usable candidate.
    ZstdCompression,
    /// The `[filtering]` filters, per channel.
    Filter,
    /// The `[filtering]` filters evaluated into a keep bitmask per batch.
    BitmaskFilter,
    /// The `[filtering]` filters over the whole playlist, held in the store
    /// until the input ends.
    InMemoryFilter,
    /// Filtering whose state lives in Redis; needs a Redis endpoint.
    RedisSpill,
    /// Numbers channels as they stream past (default).
    StreamingNumbering,
    /// Reserves every explicit `tvg-chno` first, then numbers the rest.
    InMemoryNumbering,
    /// Writes channels in arrival order (default).
    StreamingWriter,
    /// Writes channels sorted by number (an external merge sort).
    SortedWriter,
}

impl NativeStrategy {
    /// Every native strategy.
    pub const ALL: [NativeStrategy; 14] = [
        NativeStrategy::StreamingSource,
        NativeStrategy::InMemorySource,
        NativeStrategy::CloudSpill,
        NativeStrategy::Mapping,
        NativeStrategy::ParallelMapping,
        NativeStrategy::ZstdCompression,
        NativeStrategy::Filter,
        NativeStrategy::BitmaskFilter,
        NativeStrategy::InMemoryFilter,
        NativeStrategy::RedisSpill,
        NativeStrategy::StreamingNumbering,
        NativeStrategy::InMemoryNumbering,
        NativeStrategy::StreamingWriter,
        NativeStrategy::SortedWriter,
    ];

    /// Name used in the TOML strategy lists.
    pub const fn name(self) -> &'static str {
        match self {
            NativeStrategy::StreamingSource => "streaming_source",
            NativeStrategy::InMemorySource => "inmemory_full",
            NativeStrategy::CloudSpill => "cloud_spill",
            NativeStrategy::Mapping => "native_mapping",
            NativeStrategy::ParallelMapping => "parallel_mapping",
            NativeStrategy::ZstdCompression => "zstd_compression",
            NativeStrategy::Filter => "native_filter",
            NativeStrategy::BitmaskFilter => "bitmask_filter",
            NativeStrategy::InMemoryFilter => "inmemory_filter",
            NativeStrategy::RedisSpill => "redis_spill",
            NativeStrategy::StreamingNumbering => "streaming_numbering",
            NativeStrategy::InMemoryNumbering => "inmemory_numbering",
            NativeStrategy::StreamingWriter => "streaming_writer",
            NativeStrategy::SortedWriter => "sorted_writer",
        }
    }

    /// The stage it implements.
    pub const fn stage(self) -> Stage {
        match self {
            NativeStrategy::StreamingSource
            | NativeStrategy::InMemorySource
            | NativeStrategy::CloudSpill => Stage::SourceLoading,
            NativeStrategy::Mapping
            | NativeStrategy::ParallelMapping
            | NativeStrategy::ZstdCompression => Stage::DataMapping,
            NativeStrategy::Filter
            | NativeStrategy::BitmaskFilter
            | NativeStrategy::InMemoryFilter
            | NativeStrategy::RedisSpill => Stage::Filtering,
            NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => {
                Stage::ChannelNumbering
            }
            NativeStrategy::StreamingWriter | NativeStrategy::SortedWriter => Stage::M3uGeneration,
        }
    }

    /// True if it holds the whole playlist (in the store) until the input
    /// ends.
    pub const fn holds(self) -> bool {
        matches!(
            self,
            NativeStrategy::InMemorySource
                | NativeStrategy::CloudSpill
                | NativeStrategy::ZstdCompression
                | NativeStrategy::InMemoryFilter
                | NativeStrategy::InMemoryNumbering
                | NativeStrategy::SortedWriter
        )
    }

    /// True for a strategy that only says how the stage's output is held:
    /// the stage's work is done by the next usable candidate of its list.
    pub const fn only_holds(self) -> bool {
        matches!(self, NativeStrategy::ZstdCompression)
    }

    /// The external service it needs, if any (`None`: runs anywhere).
    pub const fn needs_endpoint(self) -> Option<&'static str> {
        match self {
            NativeStrategy::CloudSpill => Some("an S3-compatible object store"),
            NativeStrategy::RedisSpill => Some("a Redis server"),
            _ => None,
        }
    }

    /// The streaming strategy every stage falls back to.
    pub const fn streaming_default(stage: Stage) -> NativeStrategy {
        match stage {
            Stage::SourceLoading => NativeStrategy::StreamingSource,
            Stage::DataMapping => NativeStrategy::Mapping,
            Stage::Filtering => NativeStrategy::Filter,
            Stage::ChannelNumbering => NativeStrategy::StreamingNumbering,
            Stage::M3uGeneration => NativeStrategy::StreamingWriter,
        }
    }

    /// The native strategy with this name.
    pub fn from_name(name: &str) -> Option<NativeStrategy> {
        NativeStrategy::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Most members in one chained strategy (`"a+b+c"`).
pub const MAX_CHAIN_LEN: usize = 8;

/// Separates the members of a chained strategy name:
/// `"sports_optimizer+logo_mapper"` runs both, in that order, on every batch
/// of the stage; `"dedup+native_filter"` runs the plugin, then the native
/// strategy.
pub const CHAIN_SEPARATOR: char = '+';

/// Plugins of one candidate, by index in the pipeline's plugin list, in the
/// order they run.
pub type PluginChain = heapless::Vec<usize, MAX_CHAIN_LEN>;

/// One usable candidate of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// One plugin, or several run one after another on the same batch,
    /// optionally followed by a streaming native strategy. If any plugin
    /// fails, the batch goes to the next candidate as it was before the
    /// first one ran.
    Plugins {
        /// The plugins, in order.
        chain: PluginChain,
        /// A native strategy run after them (the last member of the name).
        then: Option<NativeStrategy>,
    },
    /// A native strategy.
    Native(NativeStrategy),
}

/// What was chosen for a stage, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    /// The stage.
    pub stage: Stage,
    /// The holding strategy of this stage and the tier it starts in, if the
    /// stage holds what passes through it (`inmemory_full`,
    /// `zstd_compression`, `inmemory_filter`, `inmemory_numbering`,
    /// `sorted_writer`).
    pub hold: Option<(NativeStrategy, crate::store::TierPlan)>,
    /// Usable candidates in order; the first runs, the rest are fallbacks.
    /// Always ends with a native strategy.
    pub chain: Vec<Candidate>,
    /// Human-readable reason for the choice (what was skipped and why).
    pub reason: String,
}

impl Pipeline {
    pub(super) fn check_strategy_names(&self) -> Result<()> {
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
        let s3 = || {
            let settings = store.s3.as_ref()?.settings().ok()?;
            Some(crate::store::RemoteSpill::S3(Box::new(settings)))
        };
        let remote = match store.spill_to {
            _ if native == NativeStrategy::CloudSpill => s3(),
            crate::config::SpillTo::Disk => None,
            crate::config::SpillTo::Redis => store
                .redis
                .clone()
                .map(|redis| crate::store::RemoteSpill::Redis(Box::new(redis))),
            crate::config::SpillTo::S3 => s3(),
        };
        StorePolicy {
            codec: if native == NativeStrategy::ZstdCompression {
                self.zstd_codec.clone()
            } else {
                self.codec.clone()
            },
            spill_directory: store.spill_directory(),
            remote,
            compress_from: store.compress_from.0,
            disk_from: store.disk_from.0,
            // zstd_compression is a promise to hold compressed.
            floor: match self.config.pipeline.compress_held {
                _ if native == NativeStrategy::ZstdCompression => Tier::Compressed,
                // cloud_spill is a promise to hold in the bucket.
                _ if native == NativeStrategy::CloudSpill => Tier::S3,
                CompressHeld::Always => Tier::Compressed,
                CompressHeld::Auto | CompressHeld::Never => Tier::Plain,
            },
        }
    }

    /// Why a strategy that needs a server cannot run now (`None`: it can,
    /// or it needs none): no server configured, or the server does not
    /// answer (checked once per plan).
    fn endpoint_unusable(&self, native: NativeStrategy) -> Option<String> {
        let service = native.needs_endpoint()?;
        let store = &self.config.store;
        let checked = match native {
            NativeStrategy::CloudSpill => {
                let Some(s3) = &store.s3 else {
                    return Some(format!("needs {service}; add a [store.s3] section"));
                };
                s3.settings()
                    .and_then(crate::remote::S3Client::new)
                    .and_then(|client| client.check())
            }
            NativeStrategy::RedisSpill => {
                let Some(redis) = &store.redis else {
                    return Some(format!("needs {service}; add a [store.redis] section"));
                };
                crate::remote::Redis::open(redis).map(drop)
            }
            _ => Ok(()),
        };
        checked
            .err()
            .map(|error| format!("needs {service}, which does not answer: {error}"))
    }

    /// `redis_spill`'s dedup claims for one run, connected.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub(super) fn redis_claims(&self) -> Result<crate::remote::RedisClaims> {
        let redis = self.config.store.redis.as_ref().ok_or_else(|| {
            Error::config_key("store.redis", "redis_spill needs a [store.redis] section")
        })?;
        let connection = crate::remote::Redis::open(redis)?;
        let instance = self.config.redis_instance();
        Ok(crate::remote::RedisClaims::new(
            connection,
            &redis.namespace,
            &instance,
            &crate::remote::run_id(),
            redis.claim_ttl_seconds,
        ))
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
    pub fn plan(&mut self, level: MemoryPressureLevel) -> PerStage<StagePlan> {
        self.plan_for_input(level, None)
    }

    /// Chooses the strategy chain of every stage for this pressure level
    /// and an input of `input_bytes` (the sources' size, if known): a
    /// holding strategy is chosen only if its estimated need fits.
    pub fn plan_for_input(
        &mut self,
        level: MemoryPressureLevel,
        input_bytes: Option<u64>,
    ) -> PerStage<StagePlan> {
        let spare = self.spare_bytes_per_holder();
        PerStage::from_fn(|stage| self.plan_stage(stage, level, input_bytes, spare))
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
                if let Some(why) = self.endpoint_unusable(native) {
                    skipped.push(format!("{name} ({why})"));
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
        let Some(index) = self.plugins.iter().position(|slot| slot.name() == name) else {
            return Err(format!("{name} (not loaded)"));
        };
        let slot = &mut self.plugins[index];
        if slot.maybe_close_circuit(back_off) {
            log::info!("plugin `{name}`: back-off over, trying it again");
            if slot.needs_respawn {
                if let Some(runtime) = &self.runtime {
                    slot.respawn(runtime, &self.config.plugin_settings());
                }
            }
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
        // What the plugin declared (`PluginInfo.memory.max_pressure`):
        // planning never runs guest code. The plugin's own answer comes
        // once per run, at its start (`Pipeline::start_plugins`).
        if level > slot.instance.info().memory.max_pressure {
            return Err(format!("{name} (declines pressure {})", level.name()));
        }
        if let Some(why) = self.declined.get(&index) {
            return Err(format!("{name} ({why})"));
        }
        Ok(index)
    }

    pub(super) fn candidate_name(&self, candidate: &Candidate) -> String {
        match candidate {
            Candidate::Plugins { chain, then } => {
                let plugins = chain.iter().map(|&i| self.plugins[i].name());
                let names: Vec<&str> = plugins.chain(then.map(NativeStrategy::name)).collect();
                names.join(&CHAIN_SEPARATOR.to_string())
            }
            Candidate::Native(native) => native.name().to_string(),
        }
    }
}
