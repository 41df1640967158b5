//! The run loop: batches from the loader through the five stages, and the
//! holds that keep what a stage holds until the input ends.
//!
//! [`Pipeline::run_stage`] runs one stage on one batch with the pipeline's
//! own plugin instances: `candidates.rs` tries the stage's candidates in
//! order, and a failure is recorded (`PluginSlot::record_failure`, which
//! may open the circuit) and logged at once. A streaming run with parallel
//! stages goes through `workers.rs` instead of [`Pipeline::advance`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use m3u_proxy_plugin_abi::{MemoryPressureLevel, RunContext, Stage, StageContext};

use super::candidates::{
    apply_native, run_candidates, FallbackSettings, NativeState, PluginCalls, StageOutcome,
};
use super::registry::aborted_mid_call;
use super::sources::{CollectSink, Loader};
use super::strategy::{Candidate, NativeStrategy, StagePlan};
use super::{
    ChannelSink, HoldStats, PerStage, Pipeline, PluginSlot, PluginStats, RunStats, Source,
    StageStats,
};
use crate::config::Config;
use crate::native::dedup::PlaylistDedup;
use crate::native::filter::FilterSet;
use crate::native::mapping::Mapper;
use crate::native::numbering::{number_the_rest, reserve_explicit_numbers, ChannelNumberer};
use crate::runtime::PluginRuntime;
use crate::store::{BatchQueue, ExternalSorter};
use crate::{Error, ErrorKind, OwnedChannel, Result};

impl Pipeline {
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
        self.declined.clear();
        let mut plans = self.plan_for_input(level, input_bytes);
        if self.start_plugins(&plans, level) {
            // A plugin declined this run: plan again without it (pure).
            plans = self.plan_for_input(level, input_bytes);
        }
        let mut run = RunState {
            stats: RunStats {
                memory_pressure: level.name().to_string(),
                memory_source: snapshot.map(|s| s.source.name().to_string()),
                memory_limit_bytes: snapshot.map(|s| s.limit_bytes),
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
            claims: None,
            stages: PerStage::from_fn(|stage| {
                let plan = &plans[stage];
                StageStats {
                    stage: stage.name().to_string(),
                    strategy: self.candidate_name(&plan.chain[0]),
                    hold: plan.hold.as_ref().map(|(native, tier_plan)| {
                        format!("{} ({})", native.name(), tier_plan.tier.name())
                    }),
                    reason: plan.reason.clone(),
                    ..StageStats::default()
                }
            }),
            holds: PerStage::default(),
            barrier: None,
            sorter: None,
            plans,
            next_index: 0,
        };
        for (stage, plan) in run.plans.iter() {
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
                NativeStrategy::InMemoryFilter if self.rules.dedup.is_some() => {
                    let dedup = self.rules.dedup.clone().expect("checked");
                    run.holds[stage] = Some(StageHold::Dedup(PlaylistDedup::new(
                        dedup,
                        policy,
                        tier,
                        budget,
                        self.config.pipeline.batch_size,
                    )));
                }
                _ => {
                    run.holds[stage] = Some(StageHold::Queue(BatchQueue::new(
                        native.name(),
                        policy,
                        tier,
                        budget,
                    )))
                }
            }
        }
        if self.rules.dedup.is_some()
            && run.plans[Stage::Filtering]
                .chain
                .contains(&Candidate::Native(NativeStrategy::RedisSpill))
        {
            run.claims = Some(self.redis_claims()?);
        }
        let plugin_baseline: Vec<PluginStats> =
            self.plugins.iter().map(PluginStats::from_slot).collect();

        let batch_size = self.config.pipeline.batch_size;
        let mut loader = Loader::new(sources);
        let mut reader = BatchReader {
            loader: &mut loader,
            batch_size,
            next_id: 1,
            begun: false,
            loading_time: Duration::ZERO,
        };
        match self.plan_flow(&run.plans) {
            Some(flow) => self.run_with_workers(&mut run, &flow, &mut reader, sink)?,
            None => loop {
                self.check_interrupted()?;
                let Some(batch) = reader.next(&mut run, sink)? else {
                    break;
                };
                let index = run.next_batch_index();
                self.advance(&mut run, (index, batch), Stage::SourceLoading, sink)?;
            },
        }
        let (begun, loading_time) = (reader.begun, reader.loading_time);
        run.stats.malformed_entries = loader.malformed;
        run.stages[Stage::SourceLoading].time_ms += loading_time.as_secs_f64() * 1e3;
        if !begun {
            sink.begin(&loader.header)?;
        }
        // The input has ended: let go of what each stage held, in stage
        // order, one batch at a time (each may fill a later stage's hold).
        for (stage, next) in HOLDING_STAGES.into_iter().zip(&Stage::ALL[1..]) {
            let Some(mut hold) = run.holds[stage].take() else {
                continue;
            };
            while let Some(batch) = hold.pop(self.monitor.level(), &mut run.next_index)? {
                self.check_interrupted()?;
                self.advance(&mut run, batch, *next, sink)?;
            }
            run.stats.holds.extend(hold.stats());
        }
        if let Some(mut barrier) = run.barrier.take() {
            // Batch by batch: each is read back, numbered and sent on before
            // the next is touched.
            while let Some((mut channels, (index, explicit))) = barrier.pop()? {
                self.check_interrupted()?;
                let stage_started = Instant::now();
                number_the_rest(&mut run.numberer, &mut channels, &explicit);
                let numbering = &mut run.stages[Stage::ChannelNumbering];
                numbering.channels_out += channels.len() as u64;
                numbering.count_batch(NativeStrategy::InMemoryNumbering.name());
                numbering.time_ms += stage_started.elapsed().as_secs_f64() * 1e3;
                run.context.batch_index = index;
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
                let generation = &mut run.stages[Stage::M3uGeneration];
                generation.channels_out += batch.len() as u64;
                generation.count_batch(NativeStrategy::SortedWriter.name());
                run.stats.channels_written += batch.len() as u64;
                sink.write_batch(&batch)?;
            }
            run.stages[Stage::M3uGeneration].time_ms += sort_time.as_secs_f64() * 1e3;
            run.stats.holds.push(sorted.stats().clone());
        }
        sink.finish()?;

        let mut stats = run.stats;
        stats.stages = run.stages.into_values().collect();
        for (slot, before) in self.plugins.iter().zip(&plugin_baseline) {
            let plugin = PluginStats::from_slot(slot).since(before);
            stats.fuel_consumed += plugin.fuel;
            stats.plugins.push(plugin);
        }
        stats.time_ms = started.elapsed().as_secs_f64() * 1e3;
        stats.peak_rss_bytes = crate::memory::peak_rss_bytes();
        Ok(stats)
    }

    /// Signals the start of a run to every plugin the plan uses, exactly
    /// once per run: the plugin's `m3u_check_memory_pressure` (where the SDK
    /// calls `Plugin::start_run`), whose answer can still decline the run.
    /// Returns true if one declined or failed (it is then in `declined`).
    fn start_plugins(&mut self, plans: &PerStage<StagePlan>, level: MemoryPressureLevel) -> bool {
        let mut used: Vec<usize> = plans
            .iter()
            .flat_map(|(_, plan)| &plan.chain)
            .filter_map(|candidate| match candidate {
                Candidate::Plugins { chain, .. } => Some(chain.iter().copied()),
                Candidate::Native(_) => None,
            })
            .flatten()
            .collect();
        used.sort_unstable();
        used.dedup();
        let max_failures = self
            .config
            .proxy_generation
            .wasm_plugins
            .fallbacks
            .max_plugin_failures;
        let snapshot = self.monitor.snapshot().ok();
        let context = RunContext {
            memory_pressure: level,
            available_memory: snapshot.map_or(0, |s| s.available_bytes),
            proxy_name: self.config.proxy.name.as_str().into(),
            base_url: self.config.proxy.base_url.as_str().into(),
        };
        for index in used {
            let slot = &mut self.plugins[index];
            match slot.start_run(level, &context) {
                Ok(true) => {}
                Ok(false) => {
                    self.declined
                        .insert(index, format!("declines pressure {}", level.name()));
                }
                Err(error) => {
                    slot.record_failure(&error, max_failures);
                    self.declined
                        .insert(index, format!("failed its pressure check: {error}"));
                }
            }
        }
        !self.declined.is_empty()
    }

    /// Stops the run between batches once `flag` is set (the CLI sets it on
    /// Ctrl-C): the run returns [`ErrorKind::Interrupted`], its spill files
    /// are gone, and a sink that writes a file leaves the old one in place.
    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    pub(super) fn check_interrupted(&self) -> Result<()> {
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
    /// context, and holders move down a tier when it rises. A batch keeps
    /// its index (the context's `batch_index`) through the holds.
    fn advance(
        &mut self,
        run: &mut RunState,
        (index, mut batch): (u32, Vec<OwnedChannel>),
        from: Stage,
        sink: &mut dyn ChannelSink,
    ) -> Result<()> {
        let level = self.monitor.level();
        run.context.memory_pressure = level;
        run.context.batch_index = index;
        for stage in HOLDING_STAGES.into_iter().filter(|stage| *stage >= from) {
            self.run_stage(run, stage, &mut batch)?;
            if let Some(hold) = &mut run.holds[stage] {
                return hold.push(index, batch, level);
            }
        }
        if from <= Stage::ChannelNumbering {
            if let Some(barrier) = &mut run.barrier {
                let stage_started = Instant::now();
                let explicit = reserve_explicit_numbers(&mut run.numberer, &mut batch);
                run.stages[Stage::ChannelNumbering].channels_in += batch.len() as u64;
                barrier.push(batch, (index, explicit), level)?;
                run.stages[Stage::ChannelNumbering].time_ms +=
                    stage_started.elapsed().as_secs_f64() * 1e3;
                return Ok(());
            }
            self.run_stage(run, Stage::ChannelNumbering, &mut batch)?;
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
            run.stages[Stage::M3uGeneration].channels_in += batch.len() as u64;
            sorter.push(batch, self.monitor.level())?;
            run.stages[Stage::M3uGeneration].time_ms += started.elapsed().as_secs_f64() * 1e3;
            return Ok(());
        }
        self.run_stage(run, Stage::M3uGeneration, &mut batch)?;
        run.stats.channels_written += batch.len() as u64;
        sink.write_batch(&batch)
    }

    /// One batch through one stage: the chain's candidates in order until
    /// one succeeds, with the pipeline's own plugin instances.
    pub(super) fn run_stage(
        &mut self,
        run: &mut RunState,
        stage: Stage,
        batch: &mut Vec<OwnedChannel>,
    ) -> Result<()> {
        let started = Instant::now();
        run.context.stage = stage;
        let channels_in = batch.len() as u64;
        let settings = FallbackSettings::from_config(&self.config);
        let mut calls = PipelineCalls {
            plugins: &mut self.plugins,
            runtime: self.runtime.as_ref(),
            config: &self.config,
            max_failures: settings.max_failures,
        };
        let rules = &self.rules;
        let mut state = NativeState {
            numberer: &mut run.numberer,
            seen_keys: &mut run.seen_keys,
            claims: run.claims.as_mut(),
        };
        let outcome = run_candidates(
            &run.plans[stage].chain,
            &mut calls,
            &mut |strategy, batch| apply_native(rules, strategy, batch, Some(&mut state)),
            &settings,
            &run.context,
            batch,
        );
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                run.stats.plugin_failures += u64::from(error.is_plugin_failure());
                return Err(error);
            }
        };
        let used = outcome
            .used
            .map(|position| self.candidate_name(&run.plans[stage].chain[position]));
        let tally = StageTally {
            stage,
            outcome,
            used,
            channels_in,
            channels_out: batch.len() as u64,
            time: started.elapsed(),
        };
        run.count_stage(tally);
        Ok(())
    }
}

/// The `[filtering]` filters as a keep bitmask (bit `i % 64` of word
/// `i / 64` set: keep channel `i`), the form a plugin filter answers in.
pub(super) fn keep_bitmask(filters: &FilterSet, batch: &[OwnedChannel]) -> Vec<u64> {
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
pub(super) fn map_in_parallel(mapper: &Mapper, batch: &mut [OwnedChannel]) {
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

/// The stages that can hold what passes them as a queue (the numbering
/// barrier and the sorted writer have holds of their own).
const HOLDING_STAGES: [Stage; 3] = [Stage::SourceLoading, Stage::DataMapping, Stage::Filtering];

pub(super) struct RunState {
    pub(super) stats: RunStats,
    /// Each stage's counters (moved into `stats` when the run ends).
    stages: PerStage<StageStats>,
    pub(super) context: StageContext<'static>,
    numberer: ChannelNumberer,
    /// Keys seen by the streaming native dedup (`[filtering.dedup]`).
    seen_keys: HashSet<u64>,
    /// The dedup claims in Redis, when `redis_spill` filters with dedup.
    claims: Option<crate::remote::RedisClaims>,
    /// What source_loading, data_mapping and filtering hold until the input
    /// ends (`inmemory_full`, `zstd_compression`, `inmemory_filter`).
    holds: PerStage<Option<StageHold>>,
    /// The numbering barrier (`inmemory_numbering`), with each batch's
    /// explicit-number bits.
    barrier: Option<BatchQueue<(u32, Vec<u64>)>>,
    /// The external sort (`sorted_writer`).
    sorter: Option<ExternalSorter>,
    pub(super) plans: PerStage<StagePlan>,
    /// The index the next batch read (or made by a hold that regroups
    /// channels) gets.
    next_index: u32,
}

impl RunState {
    /// Adds what one stage did with one batch to the run's counters.
    pub(super) fn count_stage(&mut self, tally: StageTally) {
        self.stats.plugin_calls += tally.outcome.plugin_calls;
        self.stats.plugin_failures += tally.outcome.plugin_failures;
        self.stats.fallbacks += tally.outcome.fallbacks;
        let stage_stats = &mut self.stages[tally.stage];
        if let Some(name) = &tally.used {
            stage_stats.count_batch(name);
        }
        stage_stats.channels_in += tally.channels_in;
        stage_stats.channels_out += tally.channels_out;
        stage_stats.time_ms += tally.time.as_secs_f64() * 1e3;
    }

    pub(super) fn next_batch_index(&mut self) -> u32 {
        let index = self.next_index;
        self.next_index = self.next_index.saturating_add(1);
        index
    }
}

/// The loader and what reading batches updates.
pub(super) struct BatchReader<'l> {
    pub loader: &'l mut Loader,
    pub batch_size: usize,
    /// Id of the next channel read.
    pub next_id: u64,
    /// Whether the sink has begun (with the first batch).
    pub begun: bool,
    pub loading_time: Duration,
}

impl BatchReader<'_> {
    /// Reads the next batch; the sink begins with the first.
    pub(super) fn next(
        &mut self,
        run: &mut RunState,
        sink: &mut dyn ChannelSink,
    ) -> Result<Option<Vec<OwnedChannel>>> {
        let started = Instant::now();
        let next = self.loader.next_batch(self.batch_size, &mut self.next_id)?;
        self.loading_time += started.elapsed();
        let Some(batch) = next else {
            return Ok(None);
        };
        if !self.begun {
            // The header of the first source is known once it has been
            // read; headers of later sources are merged when known by now.
            sink.begin(&self.loader.header)?;
            self.begun = true;
        }
        run.stats.batches += 1;
        run.stats.channels_loaded += batch.len() as u64;
        Ok(Some(batch))
    }
}

/// What one stage did with one batch, counted when the batch's turn comes.
pub(super) struct StageTally {
    pub stage: Stage,
    pub outcome: StageOutcome,
    /// Name of the candidate used.
    pub used: Option<String>,
    pub channels_in: u64,
    pub channels_out: u64,
    pub time: Duration,
}

/// The pipeline's own plugin instances, as the candidate loop calls them: a
/// failure is recorded at once, and an aborted instance replaced.
struct PipelineCalls<'p> {
    plugins: &'p mut [PluginSlot],
    runtime: Option<&'p PluginRuntime>,
    config: &'p Config,
    max_failures: u32,
}

impl PluginCalls for PipelineCalls<'_> {
    fn is_disabled(&mut self, index: usize) -> bool {
        self.plugins[index].disabled
    }

    fn call(
        &mut self,
        index: usize,
        context: &StageContext<'_>,
        batch: &mut Vec<OwnedChannel>,
        timeout: Duration,
    ) -> Result<()> {
        let slot = &mut self.plugins[index];
        slot.instance.set_call_timeout(timeout);
        slot.run(context.stage, context, batch)
    }

    fn succeeded(&mut self, index: usize) {
        self.plugins[index].record_success();
    }

    fn failed(&mut self, index: usize, context: &StageContext<'_>, error: &Error) {
        let slot = &mut self.plugins[index];
        note_failure(
            slot,
            context,
            error.label(),
            error.to_string(),
            self.max_failures,
        );
        if aborted_mid_call(error) {
            // A plugin just switched off is made again only when its
            // circuit closes (its init would otherwise run for nothing).
            if slot.disabled {
                slot.needs_respawn = true;
            } else if let Some(runtime) = self.runtime {
                slot.respawn(runtime, &self.config.plugin_settings());
            }
        }
    }
}

/// Logs a plugin's failure on a batch and counts it against its circuit.
pub(super) fn note_failure(
    slot: &mut PluginSlot,
    context: &StageContext<'_>,
    label: &'static str,
    message: String,
    max_failures: u32,
) {
    log::warn!(
        "plugin `{}` failed on batch {} of {}: {message}",
        slot.name(),
        context.batch_index,
        context.stage.name()
    );
    if slot.record_failure_as(label, message, max_failures) {
        log::warn!(
            "plugin `{}` switched off after {} failures (max_plugin_failures)",
            slot.name(),
            slot.failures
        );
    }
}

/// What a stage holds until the input ends.
enum StageHold {
    /// The batches as they came, each with its index (`inmemory_full`,
    /// `zstd_compression`, `inmemory_filter` without dedup).
    Queue(BatchQueue<u32>),
    /// `inmemory_filter` with `[filtering.dedup]`: duplicates removed over
    /// the whole playlist.
    Dedup(PlaylistDedup),
}

impl StageHold {
    fn push(
        &mut self,
        index: u32,
        batch: Vec<OwnedChannel>,
        level: MemoryPressureLevel,
    ) -> Result<()> {
        match self {
            StageHold::Queue(queue) => queue.push(batch, index, level),
            StageHold::Dedup(dedup) => dedup.push(batch, level),
        }
    }

    /// The next held batch with its index; the dedup hold regroups
    /// channels, so its batches get new indexes from `next_index`.
    fn pop(
        &mut self,
        level: MemoryPressureLevel,
        next_index: &mut u32,
    ) -> Result<Option<(u32, Vec<OwnedChannel>)>> {
        match self {
            StageHold::Queue(queue) => Ok(queue.pop()?.map(|(batch, index)| (index, batch))),
            StageHold::Dedup(dedup) => Ok(dedup.pop(level)?.map(|batch| {
                let index = *next_index;
                *next_index = next_index.saturating_add(1);
                (index, batch)
            })),
        }
    }

    fn stats(&self) -> Vec<HoldStats> {
        match self {
            StageHold::Queue(queue) => vec![queue.stats()],
            StageHold::Dedup(dedup) => dedup.stats(),
        }
    }
}
