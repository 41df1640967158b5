//! Parallel stages: a pool of worker threads runs the stages whose every
//! candidate is parallel-safe (plugins that declare `parallel_safe`, the
//! native mapping and filters without dedup) on several batches at once,
//! each worker with its own instance of each such plugin. Everything else
//! (numbering, stateful plugins, holds) stays on the pipeline's thread.
//!
//! The output and every counter are those of a run on one thread:
//!
//! - Batches pass each group of stages in input order: a worker's result
//!   waits until every earlier batch has passed the group, and a batch's
//!   turn ("the cursor") moves through (batch, group) in the order one
//!   thread would take.
//! - What a worker learns about a plugin's health (calls that failed or
//!   succeeded, circuits it found open) is recorded as events and replayed
//!   on the pipeline's plugin slots at the batch's turn, so failures are
//!   counted and logged in input order and `max_plugin_failures` opens a
//!   circuit on the same batch as on one thread.
//! - A batch is handed to a worker ahead of its turn only if no circuit
//!   can open before its turn: for every plugin it may call, the failures
//!   counted so far plus the most the batches ahead and its own earlier
//!   calls could add stay within `max_plugin_failures` (else the pipeline waits for those
//!   batches first). So a worker never needs a health it cannot know.
//! - At most `2 × workers` batches are between reading and the sink.
//! - When the last group runs on the workers and the sink writes M3U, the
//!   worker also formats the batch (`FormattedBatch`): the pipeline's
//!   thread, which reads, numbers and takes every turn, only copies text.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use m3u_proxy_plugin_abi::{MemoryPressureLevel, RunContext, Stage, StageContext};

use super::candidates::{
    apply_native, native_has_work, parallel_safe_native, run_candidates, FallbackSettings,
    PluginCalls,
};
use super::plugin_stage::run_on_instance;
use super::registry::aborted_mid_call;
use super::run::{note_failure, BatchReader, RunState, StageTally};
use super::strategy::{Candidate, StagePlan};
use super::{ChannelSink, PerStage, Pipeline};
use crate::m3u::FormattedBatch;
use crate::native::NativeRules;
use crate::runtime::{
    CallStats, CompiledPlugin, PluginInstance, PluginRuntime, PluginSettings, RunUsage,
};
use crate::{Error, ErrorKind, OwnedChannel, Result};

/// Stack of a worker thread: like the CLI's pipeline thread, so fuel slices
/// stay long (see `runtime::stack_safe_fuel_slice`). Only touched pages
/// cost memory.
const WORKER_STACK_BYTES: usize = 64 << 20;

/// The streaming stages in the order a batch takes them.
const FLOW: [Stage; 5] = [
    Stage::SourceLoading,
    Stage::DataMapping,
    Stage::Filtering,
    Stage::ChannelNumbering,
    Stage::M3uGeneration,
];

/// Consecutive stages that run together: on a worker, or on the
/// pipeline's thread at the batch's turn.
#[derive(Debug)]
pub(super) struct Group {
    stages: Vec<Stage>,
    parallel: bool,
}

/// How a run's stages are split between the workers and the pipeline's
/// thread.
#[derive(Debug)]
pub(super) struct Flow {
    groups: Vec<Group>,
    workers: usize,
    /// Per plugin: how many failures one batch can add before its turn is
    /// over (its places in the stage lists; `max_plugin_failures` if it also
    /// runs on the pipeline's thread, where a failed re-instantiation
    /// switches it off without counting).
    failures_per_batch: Vec<u32>,
    /// `max_plugin_failures`.
    max_failures: u32,
}

impl Pipeline {
    /// The parallel plan of a run, or `None` when it runs on one thread:
    /// one worker, a holding strategy (holds regroup batches), or no stage
    /// with parallel work.
    pub(super) fn plan_flow(&self, plans: &PerStage<StagePlan>) -> Option<Flow> {
        let workers = self.config.pipeline.worker_count();
        if workers < 2 || plans.iter().any(|(_, plan)| plan.hold.is_some()) {
            return None;
        }
        let rules = &self.rules;
        let parallel_safe = |candidate: &Candidate| match candidate {
            Candidate::Native(native) => parallel_safe_native(rules, *native),
            Candidate::Plugins { chain, then } => {
                chain
                    .iter()
                    .all(|&index| self.plugins[index].instance.info().parallel_safe)
                    && then.is_none_or(|native| parallel_safe_native(rules, native))
            }
        };
        let has_work = |candidate: &Candidate| match candidate {
            Candidate::Native(native) => native_has_work(rules, *native),
            Candidate::Plugins { .. } => true,
        };
        let mut groups: Vec<Group> = Vec::new();
        let mut failures_per_batch = vec![0u32; self.plugins.len()];
        let max_failures = FallbackSettings::from_config(&self.config).max_failures;
        for stage in FLOW {
            let chain = &plans[stage].chain;
            let parallel = stage != Stage::ChannelNumbering && chain.iter().all(parallel_safe);
            for candidate in chain {
                if let Candidate::Plugins { chain, .. } = candidate {
                    for &index in chain {
                        failures_per_batch[index] = match parallel {
                            true => failures_per_batch[index].saturating_add(1),
                            false => max_failures,
                        };
                    }
                }
            }
            match groups.last_mut() {
                Some(group) if group.parallel == parallel => group.stages.push(stage),
                _ => groups.push(Group {
                    stages: vec![stage],
                    parallel,
                }),
            }
        }
        let any_work = groups.iter().any(|group| {
            group.parallel
                && group
                    .stages
                    .iter()
                    .any(|&stage| plans[stage].chain.first().is_some_and(has_work))
        });
        any_work.then_some(Flow {
            groups,
            workers,
            failures_per_batch,
            max_failures,
        })
    }

    /// The streaming run with workers: reads every batch of `loader` and
    /// takes it through the stages into `sink`, with the same result as
    /// [`Pipeline::run`] on one thread.
    pub(super) fn run_with_workers(
        &mut self,
        run: &mut RunState,
        flow: &Flow,
        reader: &mut BatchReader<'_>,
        sink: &mut dyn ChannelSink,
    ) -> Result<()> {
        let shared = self.worker_shared(run, flow);
        let queue = JobQueue::default();
        std::thread::scope(|scope| {
            // The pipeline's thread counts as one of the workers: it reads,
            // numbers, writes, takes each batch's turn and runs waiting jobs
            // between turns.
            for number in 1..flow.workers {
                let (queue, shared) = (&queue, &shared);
                queue
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .running += 1;
                let spawned = std::thread::Builder::new()
                    .name(format!("m3u-worker-{number}"))
                    .stack_size(WORKER_STACK_BYTES)
                    .spawn_scoped(scope, move || {
                        let mut worker = Worker::new(shared);
                        while let Some(job) = queue.pop_wait() {
                            let (seq, group) = (job.seq, job.group);
                            let result = worker.run(job);
                            queue.answer(Done::Job { seq, group, result });
                        }
                        queue.answer(Done::Stopped(worker.into_stats()));
                    });
                if let Err(error) = spawned {
                    queue
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .running -= 1;
                    log::warn!("could not start worker thread {number}: {error}");
                }
            }
            let mut driver = Driver {
                flow,
                queue: &queue,
                helper: Worker::new(&shared),
                tickets: FewByKey::default(),
                results: FewByKey::default(),
                cursor: 0,
                format_last: sink.takes_formatted(),
                next_seq: 0,
                stats: Vec::new(),
            };
            // The input is read here, on the pipeline's thread, when a
            // batch may be taken (a reader thread beside the workers made no
            // measurable difference on two cores).
            let outcome = driver.drive(self, run, reader, sink);
            // Closing the queue ends the workers; their counters come back
            // with their last message.
            queue.close();
            let Driver {
                helper, mut stats, ..
            } = driver;
            stats.push(helper.into_stats());
            loop {
                let answers = queue.wait_answers();
                if answers.is_empty() {
                    break;
                }
                for answer in answers {
                    if let Done::Stopped(worker_stats) = answer {
                        stats.push(worker_stats);
                    }
                }
            }
            for (index, call_stats) in stats.into_iter().flatten() {
                self.plugins[index].absorb_stats(&call_stats);
            }
            outcome
        })
    }

    /// What every worker needs, owned (the workers borrow it for the run).
    fn worker_shared(&self, run: &RunState, flow: &Flow) -> WorkerShared {
        let mut specs: Vec<Option<WorkerPlugin>> = (0..self.plugins.len()).map(|_| None).collect();
        let mut stages = PerStage::default();
        for group in flow.groups.iter().filter(|group| group.parallel) {
            for &stage in &group.stages {
                let chain = run.plans[stage].chain.clone();
                for candidate in &chain {
                    if let Candidate::Plugins { chain, .. } = candidate {
                        for &index in chain {
                            let slot = &self.plugins[index];
                            specs[index] = slot.compiled.clone().map(|compiled| WorkerPlugin {
                                compiled,
                                name: slot.name().to_string(),
                            });
                        }
                    }
                }
                stages[stage] = chain;
            }
        }
        WorkerShared {
            runtime: self.runtime.clone(),
            settings: self.config.plugin_settings(),
            rules: self.rules.clone(),
            plugins: specs,
            stages,
            groups: flow
                .groups
                .iter()
                .map(|group| group.stages.clone())
                .collect(),
            fallbacks: FallbackSettings::from_config(&self.config),
            run_context: RunContext {
                memory_pressure: run.context.memory_pressure,
                available_memory: run.context.available_memory,
                proxy_name: run.context.proxy_name.clone(),
                base_url: run.context.base_url.clone(),
            },
            context: run.context.clone(),
        }
    }
}

/// What the workers share for a run.
struct WorkerShared {
    runtime: Option<PluginRuntime>,
    settings: PluginSettings,
    rules: std::sync::Arc<NativeRules>,
    /// Per plugin index: what a worker needs to instantiate it, for the
    /// plugins of parallel stages.
    plugins: Vec<Option<WorkerPlugin>>,
    /// The candidates of each parallel stage.
    stages: PerStage<Vec<Candidate>>,
    /// The stages of each group, by group index.
    groups: Vec<Vec<Stage>>,
    fallbacks: FallbackSettings,
    run_context: RunContext<'static>,
    context: StageContext<'static>,
}

struct WorkerPlugin {
    compiled: CompiledPlugin,
    name: String,
}

/// A batch for a worker: run the stages of `group` on it.
struct Job {
    seq: u64,
    group: usize,
    index: u32,
    level: MemoryPressureLevel,
    batch: Vec<OwnedChannel>,
    /// The last group: format the result as M3U text for the sink.
    format: bool,
    /// Each plugin's (failures so far, circuit open) when the job was sent.
    health: Vec<(u32, bool)>,
}

/// A worker's answer.
enum Done {
    Job {
        seq: u64,
        group: usize,
        result: JobResult,
    },
    /// A worker stops: its instances' counters.
    Stopped(Vec<(usize, CallStats)>),
}

/// Jobs waiting for a worker, the earliest in input order first (the
/// batch whose turn it is never waits behind batches read ahead), and the
/// workers' answers.
#[derive(Default)]
struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    answered: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: FewByKey<(u64, usize), Job>,
    closed: bool,
    answers: Vec<Done>,
    /// Worker threads that have not stopped.
    running: usize,
}

impl JobQueue {
    /// A worker's answer (`Done::Stopped` is its last).
    fn answer(&self, done: Done) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(done, Done::Stopped(_)) {
            state.running -= 1;
        }
        state.answers.push(done);
        self.answered.notify_one();
    }

    /// Waits for answers; empty once every worker thread has stopped.
    fn wait_answers(&self) -> Vec<Done> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.answers.is_empty() && state.running > 0 {
            state = self
                .answered
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        std::mem::take(&mut state.answers)
    }

    fn push(&self, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.jobs.insert((job.seq, job.group), job);
        self.ready.notify_one();
    }

    /// The next job, waiting for one; `None` once closed.
    fn pop_wait(&self) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state.jobs.pop_first() {
                return Some(job);
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn try_pop(&self) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.jobs.pop_first()
    }

    fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.closed = true;
        state.jobs.clear();
        self.ready.notify_all();
    }
}

struct JobResult {
    /// The batch, or nothing if it was formatted.
    batch: Vec<OwnedChannel>,
    formatted: Option<FormattedBatch>,
    tallies: Vec<(Stage, super::candidates::StageOutcome, u64, u64, Duration)>,
    events: Vec<HealthEvent>,
    /// Where the job stopped early: the stage the pipeline's thread runs
    /// the rest from (the batch is as that stage received it), or the
    /// error that ends the run.
    stopped: Option<Stopped>,
}

enum Stopped {
    /// The worker could not make an instance of a plugin of this stage.
    Unavailable(Stage),
    /// A host error, or a plugin failure with fallbacks off.
    Error(Error),
}

/// What a worker saw of a plugin's health, replayed at the batch's turn.
enum HealthEvent {
    Checked {
        index: usize,
        disabled: bool,
    },
    Succeeded {
        index: usize,
    },
    Failed {
        index: usize,
        stage: Stage,
        label: &'static str,
        message: String,
    },
}

/// A worker's side of the candidate loop: its own instances, the health
/// it was sent (updated as a single thread would), and the events.
struct WorkerCalls<'w> {
    shared: &'w WorkerShared,
    instances: &'w mut Vec<Option<PluginInstance>>,
    health: Vec<(u32, bool)>,
    events: Vec<HealthEvent>,
    unavailable: bool,
    /// Counters of instances replaced after an aborted call.
    retired: &'w mut Vec<(usize, CallStats)>,
    /// What replaced instances had used of the run's allowances, handed to
    /// the instance made in their place.
    run_usage: &'w mut Vec<RunUsage>,
}

impl WorkerCalls<'_> {
    fn instance(&mut self, index: usize) -> Result<&mut PluginInstance> {
        if self.instances[index].is_none() {
            let mut fresh = self.fresh_instance(index)?;
            fresh.continue_run(self.run_usage[index]);
            self.instances[index] = Some(fresh);
        }
        Ok(self.instances[index].as_mut().expect("just made"))
    }

    fn fresh_instance(&self, index: usize) -> Result<PluginInstance> {
        let shared = self.shared;
        let (Some(runtime), Some(Some(plugin))) = (&shared.runtime, shared.plugins.get(index))
        else {
            return Err(Error::config("no compiled module for a worker"));
        };
        let mut instance = runtime.instantiate(&plugin.compiled, &plugin.name, &shared.settings)?;
        // Started like the pipeline's own instance at the start of the run.
        let level = shared.run_context.memory_pressure;
        match instance.accepts_pressure(level, &shared.run_context)? {
            true => Ok(instance),
            false => Err(ErrorKind::PluginStatus {
                function: m3u_proxy_plugin_abi::exports::CHECK_MEMORY_PRESSURE,
                status: 0,
                message: Some(format!(
                    "a worker's instance of `{}` declined the run",
                    plugin.name
                )),
            }
            .into()),
        }
    }
}

impl PluginCalls for WorkerCalls<'_> {
    fn is_disabled(&mut self, index: usize) -> bool {
        let disabled = self.health[index].1;
        self.events.push(HealthEvent::Checked { index, disabled });
        disabled
    }

    fn call(
        &mut self,
        index: usize,
        context: &StageContext<'_>,
        batch: &mut Vec<OwnedChannel>,
        timeout: Duration,
    ) -> Result<()> {
        let instance = match self.instance(index) {
            Ok(instance) => instance,
            Err(error) => {
                log::warn!("worker: {error}; the pipeline's thread runs this stage");
                self.unavailable = true;
                return Err(Error::config("worker instance unavailable"));
            }
        };
        instance.set_call_timeout(timeout);
        run_on_instance(instance, context.stage, context, batch)
    }

    fn succeeded(&mut self, index: usize) {
        self.events.push(HealthEvent::Succeeded { index });
    }

    fn failed(&mut self, index: usize, context: &StageContext<'_>, error: &Error) {
        let max = self.shared.fallbacks.max_failures;
        let health = &mut self.health[index];
        health.0 += 1;
        if health.0 >= max {
            health.1 = true;
        }
        self.events.push(HealthEvent::Failed {
            index,
            stage: context.stage,
            label: error.label(),
            message: error.to_string(),
        });
        if aborted_mid_call(error) {
            // Made again before its next call (on this worker).
            if let Some(old) = self.instances[index].take() {
                self.retired.push((index, old.stats().clone()));
                self.run_usage[index] = old.run_usage();
            }
        }
    }
}

/// One worker's instances (made on first use) and counters.
struct Worker<'s> {
    shared: &'s WorkerShared,
    instances: Vec<Option<PluginInstance>>,
    retired: Vec<(usize, CallStats)>,
    run_usage: Vec<RunUsage>,
    context: StageContext<'static>,
}

impl<'s> Worker<'s> {
    fn new(shared: &'s WorkerShared) -> Self {
        Worker {
            shared,
            instances: (0..shared.plugins.len()).map(|_| None).collect(),
            retired: Vec::new(),
            run_usage: vec![RunUsage::default(); shared.plugins.len()],
            context: shared.context.clone(),
        }
    }

    /// Runs a job's stages on its batch.
    fn run(&mut self, job: Job) -> JobResult {
        let shared = self.shared;
        let mut batch = job.batch;
        let stages = &shared.groups[job.group];
        let mut tallies = Vec::with_capacity(stages.len());
        let mut calls = WorkerCalls {
            shared,
            instances: &mut self.instances,
            health: job.health,
            events: Vec::new(),
            unavailable: false,
            retired: &mut self.retired,
            run_usage: &mut self.run_usage,
        };
        let context = &mut self.context;
        context.batch_index = job.index;
        context.memory_pressure = job.level;
        let mut stopped = None;
        for &stage in stages {
            context.stage = stage;
            let started = Instant::now();
            let channels_in = batch.len() as u64;
            let events_before = calls.events.len();
            let rules = &*shared.rules;
            let outcome = run_candidates(
                &shared.stages[stage],
                &mut calls,
                &mut |strategy, batch| apply_native(rules, strategy, batch, None),
                &shared.fallbacks,
                context,
                &mut batch,
            );
            match outcome {
                Ok(outcome) => tallies.push((
                    stage,
                    outcome,
                    channels_in,
                    batch.len() as u64,
                    started.elapsed(),
                )),
                Err(_) if calls.unavailable => {
                    // The pipeline's thread runs this stage from its start.
                    calls.events.truncate(events_before);
                    stopped = Some(Stopped::Unavailable(stage));
                    break;
                }
                Err(error) => {
                    stopped = Some(Stopped::Error(error));
                    break;
                }
            }
        }
        // The sink's formatting, here rather than on the pipeline's thread
        // (and the batch freed here too).
        let formatted = (job.format && stopped.is_none()).then(|| {
            let formatted = FormattedBatch::format(&batch);
            batch = Vec::new();
            formatted
        });
        JobResult {
            batch,
            formatted,
            tallies,
            events: calls.events,
            stopped,
        }
    }

    /// The counters of every instance this worker ran.
    fn into_stats(self) -> Vec<(usize, CallStats)> {
        let mut stats = self.retired;
        for (index, instance) in self.instances.into_iter().enumerate() {
            if let Some(instance) = instance {
                stats.push((index, instance.stats().clone()));
            }
        }
        stats
    }
}

/// Where a batch is between reading and the sink.
enum Ticket {
    /// On the pipeline's thread, before `group`.
    Waiting {
        group: usize,
        index: u32,
        level: MemoryPressureLevel,
        batch: Vec<OwnedChannel>,
        /// The batch as M3U text, once a worker formatted it (then `batch`
        /// is empty and every group done).
        formatted: Option<FormattedBatch>,
    },
    /// With a worker, running `group`.
    Sent {
        group: usize,
        index: u32,
        level: MemoryPressureLevel,
    },
}

/// The pipeline's thread in a run with workers.
struct Driver<'f, 's> {
    flow: &'f Flow,
    queue: &'f JobQueue,
    /// The pipeline's thread as a worker: between turns it runs a waiting
    /// job rather than idle (the only worker when no thread started).
    helper: Worker<'s>,
    /// Batches between reading and the sink, by sequence number.
    tickets: FewByKey<u64, Ticket>,
    /// Results that came back before their turn.
    results: FewByKey<(u64, usize), JobResult>,
    /// The batch whose turn it is.
    cursor: u64,
    /// The sink takes M3U text: the last group's workers format it.
    format_last: bool,
    next_seq: u64,
    stats: Vec<Vec<(usize, CallStats)>>,
}

impl Driver<'_, '_> {
    fn drive(
        &mut self,
        pipeline: &mut Pipeline,
        run: &mut RunState,
        reader: &mut BatchReader<'_>,
        sink: &mut dyn ChannelSink,
    ) -> Result<()> {
        let mut input_ended = false;
        loop {
            pipeline.check_interrupted()?;
            self.take_turns(pipeline, run, sink)?;
            let mut read_any = false;
            while !input_ended && self.may_read_ahead(pipeline) {
                let Some(batch) = reader.next(run, sink)? else {
                    input_ended = true;
                    break;
                };
                let index = run.next_batch_index();
                let level = pipeline.monitor.level();
                let seq = self.next_seq;
                self.next_seq += 1;
                let ticket = Ticket::Waiting {
                    group: 0,
                    index,
                    level,
                    batch,
                    formatted: None,
                };
                self.tickets.insert(seq, ticket);
                if self.flow.groups[0].parallel {
                    self.send(pipeline, seq)?;
                }
                read_any = true;
            }
            if self.tickets.is_empty() && input_ended {
                return Ok(());
            }
            if read_any {
                continue;
            }
            // Nothing to read or write until a job is done: run one here
            // if one waits. Since the workers also format the M3U text, the
            // worker threads' share is the larger one (two workers on two
            // cores: ~2.4 s of a 1M run against ~1.4 s on this thread), so
            // helping shortens the run (BENCHMARKS.md, 2026-12-04).
            let job = self.queue.try_pop();
            let answers = match job {
                Some(job) => {
                    let (seq, group) = (job.seq, job.group);
                    let result = self.helper.run(job);
                    vec![Done::Job { seq, group, result }]
                }
                None => self.queue.wait_answers(),
            };
            if answers.is_empty() {
                return Err(Error::config(
                    "every worker thread stopped; set [pipeline] workers = 1",
                ));
            }
            for answer in answers {
                match answer {
                    Done::Job { seq, group, result } => {
                        self.results.insert((seq, group), result);
                    }
                    Done::Stopped(stats) => self.stats.push(stats),
                }
            }
        }
    }

    /// Whether one more batch may be read now: room in flight, and no
    /// circuit can open before its turn (see the module's notes).
    fn may_read_ahead(&self, pipeline: &Pipeline) -> bool {
        let ahead = self.tickets.len();
        if ahead == 0 {
            return true;
        }
        if ahead >= 2 * self.flow.workers {
            return false;
        }
        let max = self.flow.max_failures;
        pipeline
            .plugins
            .iter()
            .zip(&self.flow.failures_per_batch)
            .all(|(slot, &per_batch)| {
                // Its last decision about this plugin must come before a
                // circuit could open: the batches ahead and its own earlier
                // places may all fail.
                slot.disabled
                    || per_batch == 0
                    || u64::from(slot.failures) + (ahead as u64 + 1) * u64::from(per_batch)
                        <= u64::from(max)
            })
    }

    /// Hands the batch `seq` (waiting before a parallel group) to a worker.
    fn send(&mut self, pipeline: &Pipeline, seq: u64) -> Result<()> {
        let Some(Ticket::Waiting {
            group,
            index,
            level,
            batch,
            ..
        }) = self.tickets.remove(&seq)
        else {
            return Ok(());
        };
        let health = pipeline
            .plugins
            .iter()
            .map(|slot| (slot.failures, slot.disabled))
            .collect();
        let job = Job {
            seq,
            group,
            index,
            level,
            batch,
            format: self.format_last && group + 1 == self.flow.groups.len(),
            health,
        };
        self.tickets.insert(
            seq,
            Ticket::Sent {
                group,
                index,
                level,
            },
        );
        self.queue.push(job);
        Ok(())
    }

    /// Moves the cursor as far as it goes: the current batch's next group
    /// runs here or has come back from a worker.
    fn take_turns(
        &mut self,
        pipeline: &mut Pipeline,
        run: &mut RunState,
        sink: &mut dyn ChannelSink,
    ) -> Result<()> {
        loop {
            let seq = self.cursor;
            let Some(ticket) = self.tickets.remove(&seq) else {
                return Ok(());
            };
            let (group, index, level, batch, formatted) = match ticket {
                Ticket::Waiting {
                    group,
                    batch,
                    formatted,
                    ..
                } if !self.groups_left(group) => {
                    // Every group done: to the sink.
                    match formatted {
                        Some(text) => {
                            run.stats.channels_written += text.channels();
                            sink.write_formatted(&text)?;
                        }
                        None => {
                            run.stats.channels_written += batch.len() as u64;
                            sink.write_batch(&batch)?;
                        }
                    }
                    self.cursor += 1;
                    continue;
                }
                Ticket::Waiting {
                    group,
                    index,
                    level,
                    batch,
                    ..
                } if !self.flow.groups[group].parallel => {
                    let mut batch = batch;
                    run.context.batch_index = index;
                    run.context.memory_pressure = level;
                    for &stage in &self.flow.groups[group].stages {
                        pipeline.run_stage(run, stage, &mut batch)?;
                    }
                    (group + 1, index, level, batch, None)
                }
                waiting @ Ticket::Waiting { .. } => {
                    // Its turn came before it was sent (a later group).
                    self.tickets.insert(seq, waiting);
                    self.send(pipeline, seq)?;
                    return Ok(());
                }
                Ticket::Sent {
                    group,
                    index,
                    level,
                } => {
                    let Some(result) = self.results.remove(&(seq, group)) else {
                        self.tickets.insert(
                            seq,
                            Ticket::Sent {
                                group,
                                index,
                                level,
                            },
                        );
                        return Ok(());
                    };
                    run.context.batch_index = index;
                    run.context.memory_pressure = level;
                    let (batch, formatted) = self.commit(pipeline, run, group, result)?;
                    (group + 1, index, level, batch, formatted)
                }
            };
            self.tickets.insert(
                seq,
                Ticket::Waiting {
                    group,
                    index,
                    level,
                    batch,
                    formatted,
                },
            );
            if self.groups_left(group) && self.flow.groups[group].parallel {
                self.send(pipeline, seq)?;
            }
        }
    }

    fn groups_left(&self, group: usize) -> bool {
        group < self.flow.groups.len()
    }

    /// A worker's result at its batch's turn: its health events replayed on
    /// the pipeline's slots, its counters added, and the rest of the group
    /// run here if the worker stopped early.
    fn commit(
        &mut self,
        pipeline: &mut Pipeline,
        run: &mut RunState,
        group: usize,
        result: JobResult,
    ) -> Result<(Vec<OwnedChannel>, Option<FormattedBatch>)> {
        let max = self.flow.max_failures;
        for event in &result.events {
            match event {
                HealthEvent::Checked { index, disabled } => {
                    if pipeline.plugins[*index].disabled != *disabled {
                        return Err(Error::config(format!(
                            "internal error: a worker ran batch {} with an outdated state of \
                             plugin `{}`; set [pipeline] workers = 1 and report this",
                            run.context.batch_index,
                            pipeline.plugins[*index].name()
                        )));
                    }
                }
                HealthEvent::Succeeded { index } => pipeline.plugins[*index].record_success(),
                HealthEvent::Failed {
                    index,
                    stage,
                    label,
                    message,
                } => {
                    run.context.stage = *stage;
                    let slot = &mut pipeline.plugins[*index];
                    note_failure(slot, &run.context, label, message.clone(), max);
                }
            }
        }
        for (stage, outcome, channels_in, channels_out, time) in result.tallies {
            let used = outcome
                .used
                .map(|position| pipeline.candidate_name(&run.plans[stage].chain[position]));
            run.count_stage(StageTally {
                stage,
                outcome,
                used,
                channels_in,
                channels_out,
                time,
            });
        }
        let mut batch = result.batch;
        match result.stopped {
            None => return Ok((batch, result.formatted)),
            Some(Stopped::Error(error)) => return Err(error),
            Some(Stopped::Unavailable(from)) => {
                for &stage in self.flow.groups[group]
                    .stages
                    .iter()
                    .filter(|&&stage| stage >= from)
                {
                    pipeline.run_stage(run, stage, &mut batch)?;
                }
            }
        }
        Ok((batch, None))
    }
}

/// A few values by key (never more than 2 × workers here): a vector
/// searched from end to end, which is smaller code than a map.
struct FewByKey<K, V>(Vec<(K, V)>);

impl<K, V> Default for FewByKey<K, V> {
    fn default() -> Self {
        FewByKey(Vec::new())
    }
}

impl<K: Ord + Copy, V> FewByKey<K, V> {
    fn insert(&mut self, key: K, value: V) {
        self.remove(&key);
        self.0.push((key, value));
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let position = self.0.iter().position(|(other, _)| other == key)?;
        Some(self.0.swap_remove(position).1)
    }

    /// The value with the smallest key.
    fn pop_first(&mut self) -> Option<V> {
        let position = (0..self.0.len()).min_by_key(|&position| self.0[position].0)?;
        Some(self.0.swap_remove(position).1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}
