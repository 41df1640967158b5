//! One batch through one stage: the stage's candidates in order until one
//! succeeds. The run loop (with the pipeline's own plugin instances) and
//! the workers (with their copies) share this loop; they differ only in how
//! they call a plugin and keep its health ([`PluginCalls`]).

use std::collections::HashSet;
use std::time::Duration;

use m3u_proxy_plugin_abi::StageContext;

use super::strategy::{Candidate, NativeStrategy};
use crate::config::Config;
use crate::native::numbering::ChannelNumberer;
use crate::native::NativeRules;
use crate::{Error, OwnedChannel, Result};

/// `[proxy_generation.wasm_plugins.fallbacks]` and the call timeouts, as
/// the candidate loop uses them.
#[derive(Clone, Copy, Debug)]
pub(super) struct FallbackSettings {
    pub enable_fallbacks: bool,
    pub max_failures: u32,
    pub normal_timeout: Duration,
    pub fallback_timeout: Duration,
}

impl FallbackSettings {
    pub(super) fn from_config(config: &Config) -> Self {
        let plugins = &config.proxy_generation.wasm_plugins;
        FallbackSettings {
            enable_fallbacks: plugins.fallbacks.enable_fallbacks,
            max_failures: plugins.fallbacks.max_plugin_failures,
            normal_timeout: Duration::from_secs(plugins.timeout_seconds),
            fallback_timeout: Duration::from_millis(plugins.fallbacks.fallback_timeout_ms),
        }
    }
}

/// How the candidate loop reaches plugins and their health.
pub(super) trait PluginCalls {
    /// Whether the plugin's circuit is open.
    fn is_disabled(&mut self, index: usize) -> bool;
    /// Runs the plugin on `batch` (unchanged on error).
    fn call(
        &mut self,
        index: usize,
        context: &StageContext<'_>,
        batch: &mut Vec<OwnedChannel>,
        timeout: Duration,
    ) -> Result<()>;
    /// The plugin's call succeeded.
    fn succeeded(&mut self, index: usize);
    /// The plugin's call failed with a plugin failure.
    fn failed(&mut self, index: usize, context: &StageContext<'_>, error: &Error);
}

/// What one stage did with one batch.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StageOutcome {
    /// Position of the candidate that produced the batch.
    pub used: Option<usize>,
    pub plugin_calls: u64,
    pub plugin_failures: u64,
    pub fallbacks: u64,
}

/// Tries `candidates` in order on `batch` until one succeeds. A failing
/// plugin leaves the batch as the stage received it for the next candidate.
///
/// # Errors
/// A host error, or a plugin failure when fallbacks are off.
pub(super) fn run_candidates(
    candidates: &[Candidate],
    plugins: &mut dyn PluginCalls,
    native: &mut dyn FnMut(NativeStrategy, &mut Vec<OwnedChannel>) -> Result<()>,
    settings: &FallbackSettings,
    context: &StageContext<'_>,
    batch: &mut Vec<OwnedChannel>,
) -> Result<StageOutcome> {
    let mut outcome = StageOutcome::default();
    for (position, candidate) in candidates.iter().enumerate() {
        let (chain, then) = match candidate {
            Candidate::Native(strategy) => {
                native(*strategy, batch)?;
                outcome.used = Some(position);
                break;
            }
            Candidate::Plugins { chain, then } => (chain, then),
        };
        if chain.iter().any(|&index| plugins.is_disabled(index)) {
            continue;
        }
        let timeout = if position == 0 {
            settings.normal_timeout
        } else {
            settings.fallback_timeout.min(settings.normal_timeout)
        };
        // A single plugin leaves a batch it fails on untouched; a chain
        // keeps the stage's input to give the next candidate.
        let stage_input = (chain.len() > 1).then(|| batch.clone());
        let mut failed = None;
        for &index in chain {
            outcome.plugin_calls += 1;
            match plugins.call(index, context, batch, timeout) {
                Ok(()) => {}
                Err(error) if error.is_plugin_failure() => {
                    failed = Some((index, error));
                    break;
                }
                Err(error) => {
                    if let Some(input) = stage_input {
                        *batch = input;
                    }
                    return Err(error);
                }
            }
        }
        let Some((index, error)) = failed else {
            for &index in chain {
                plugins.succeeded(index);
            }
            if let Some(strategy) = then {
                native(*strategy, batch)?;
            }
            outcome.used = Some(position);
            break;
        };
        if let Some(input) = stage_input {
            *batch = input;
        }
        outcome.plugin_failures += 1;
        plugins.failed(index, context, &error);
        if !settings.enable_fallbacks {
            return Err(error);
        }
        outcome.fallbacks += 1;
    }
    Ok(outcome)
}

/// The state a native strategy may keep across batches (the pipeline's
/// thread only: strategies that use it are never run by a worker).
pub(super) struct NativeState<'a> {
    pub numberer: &'a mut ChannelNumberer,
    pub seen_keys: &'a mut HashSet<u64>,
    /// `redis_spill`'s dedup claims, if that strategy runs with
    /// `[filtering.dedup]`.
    pub claims: Option<&'a mut crate::remote::RedisClaims>,
}

/// Runs a native strategy as a stage step. Without `state` (a worker),
/// only the strategies [`parallel_safe_native`] accepts may be asked for.
///
/// # Errors
/// Only `redis_spill` can fail (Redis lost): the run must stop.
pub(super) fn apply_native(
    rules: &NativeRules,
    strategy: NativeStrategy,
    batch: &mut Vec<OwnedChannel>,
    state: Option<&mut NativeState<'_>>,
) -> Result<()> {
    match strategy {
        NativeStrategy::Mapping | NativeStrategy::ZstdCompression => {
            if !rules.mapper.is_empty() {
                for channel in batch.iter_mut() {
                    rules.mapper.apply(channel);
                }
            }
        }
        NativeStrategy::ParallelMapping => {
            if !rules.mapper.is_empty() {
                match state {
                    // On the pipeline's thread: the batch is split over the cores.
                    Some(_) => super::run::map_in_parallel(&rules.mapper, batch),
                    // A worker is one of the cores already.
                    None => {
                        for channel in batch.iter_mut() {
                            rules.mapper.apply(channel);
                        }
                    }
                }
            }
        }
        // inmemory_filter filters each batch as it comes; the stage's
        // hold keeps the result until the input ends (and removes
        // duplicates over the whole playlist there).
        NativeStrategy::InMemoryFilter => {
            if !rules.filters.is_empty() {
                batch.retain(|channel| rules.filters.keeps(channel));
            }
        }
        NativeStrategy::Filter | NativeStrategy::RedisSpill | NativeStrategy::BitmaskFilter => {
            if !rules.filters.is_empty() {
                match strategy {
                    NativeStrategy::BitmaskFilter => {
                        let keep = super::run::keep_bitmask(&rules.filters, batch);
                        let mut index = 0;
                        batch.retain(|_| {
                            let kept = keep[index / 64] & (1 << (index % 64)) != 0;
                            index += 1;
                            kept
                        });
                    }
                    _ => batch.retain(|channel| rules.filters.keeps(channel)),
                }
            }
            if let Some(dedup) = &rules.dedup {
                let state = state.expect("a filter with dedup runs on the pipeline's thread");
                match (strategy, state.claims.as_deref_mut()) {
                    (NativeStrategy::RedisSpill, Some(claims)) => {
                        dedup.retain_claimed(batch, claims)?;
                    }
                    _ => dedup.retain_first(batch, state.seen_keys),
                }
            }
        }
        // As a per-batch fallback the in-memory numbering runs streaming:
        // the barrier (where it differs) only exists when it runs first.
        NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => {
            let state = state.expect("numbering runs on the pipeline's thread");
            for channel in batch.iter_mut() {
                state.numberer.assign(channel);
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
    Ok(())
}

/// Whether a native strategy can run on a worker: it keeps nothing from one
/// batch to the next (numbering counts, a streaming dedup remembers keys).
pub(super) fn parallel_safe_native(rules: &NativeRules, strategy: NativeStrategy) -> bool {
    match strategy {
        NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => false,
        NativeStrategy::Filter | NativeStrategy::RedisSpill | NativeStrategy::BitmaskFilter => {
            rules.dedup.is_none()
        }
        _ => true,
    }
}

/// Whether a native strategy does anything to a batch as a stage step.
pub(super) fn native_has_work(rules: &NativeRules, strategy: NativeStrategy) -> bool {
    match strategy {
        NativeStrategy::Mapping
        | NativeStrategy::ZstdCompression
        | NativeStrategy::ParallelMapping => !rules.mapper.is_empty(),
        NativeStrategy::InMemoryFilter => !rules.filters.is_empty(),
        NativeStrategy::Filter | NativeStrategy::RedisSpill | NativeStrategy::BitmaskFilter => {
            !rules.filters.is_empty() || rules.dedup.is_some()
        }
        NativeStrategy::StreamingNumbering | NativeStrategy::InMemoryNumbering => true,
        NativeStrategy::StreamingSource
        | NativeStrategy::InMemorySource
        | NativeStrategy::CloudSpill
        | NativeStrategy::StreamingWriter
        | NativeStrategy::SortedWriter => false,
    }
}
