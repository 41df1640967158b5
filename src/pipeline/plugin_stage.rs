//! Running one batch through a plugin: write the fields it reads into its
//! arena as columns, call it, check its answer against the batch, and only
//! then apply it. A rejected answer leaves the batch untouched, so the next
//! strategy sees the same input.

use std::sync::atomic::{AtomicU64, Ordering};

use m3u_proxy_plugin_abi::{
    apply, encode_stage_input, wire_tags, AnswerLimits, InputHeader, MemoryPressureLevel,
    RunContext, Stage, StageContext, StageOutput,
};

use crate::runtime::{Encoded, PluginInstance};
use crate::{Error, OwnedChannel, Result};

/// Ids of the channels plugins add (a rebuilt batch), unique in the process
/// and far above the ones sources hand out (which count from 1 per run).
static NEXT_ADDED_ID: AtomicU64 = AtomicU64::new(1 << 48);

/// A loaded plugin and its health.
///
/// The circuit opens (`disabled`) after `max_plugin_failures` failures; it
/// closes again when the file is reloaded or, with `circuit_reset_seconds`,
/// after that back-off. A plugin that trapped, ran out of fuel or time, or hit
/// its memory limit is re-instantiated from its compiled module before its
/// next call, since its memory may be left mid-update.
#[derive(Debug)]
pub struct PluginSlot {
    /// The instance.
    pub instance: PluginInstance,
    /// Path it was loaded from.
    pub path: std::path::PathBuf,
    /// Failures since the circuit last closed.
    pub failures: u32,
    /// Failures in a row (reset by a success).
    pub consecutive_failures: u32,
    /// Failures over the slot's life, by error kind (`Error::label`).
    pub failures_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Circuit open: switched off after too many failures.
    pub disabled: bool,
    /// When the circuit opened.
    pub disabled_since: Option<std::time::Instant>,
    /// Last failure, for the summary.
    pub last_error: Option<String>,
    /// Whether the file was signed by a trusted key.
    pub signature: crate::signing::SignatureState,
    /// Version of the file this instance was loaded from (hot reload).
    pub(crate) stamp: super::FileStamp,
    /// The compiled module, to re-instantiate after a fatal failure.
    pub(crate) compiled: Option<crate::runtime::CompiledPlugin>,
    /// Counters of instances this slot has replaced.
    retired: crate::runtime::CallStats,
    /// The instance's last call was aborted while the circuit opened: it
    /// is made again when the circuit closes.
    pub(crate) needs_respawn: bool,
    /// The current run's start (pressure and context), replayed to an
    /// instance that replaces a failed one mid-run.
    run: Option<(MemoryPressureLevel, RunContext<'static>)>,
}

impl PluginSlot {
    /// Wraps an instance loaded from `path`.
    pub fn new(instance: PluginInstance, path: std::path::PathBuf) -> Self {
        PluginSlot {
            instance,
            path,
            failures: 0,
            consecutive_failures: 0,
            failures_by_kind: std::collections::BTreeMap::new(),
            disabled: false,
            disabled_since: None,
            last_error: None,
            signature: crate::signing::SignatureState::Unsigned,
            stamp: super::FileStamp::default(),
            compiled: None,
            retired: crate::runtime::CallStats::default(),
            needs_respawn: false,
            run: None,
        }
    }

    /// Counters over every instance this slot has run (survives re-instantiation).
    pub fn total_stats(&self) -> crate::runtime::CallStats {
        let current = self.instance.stats();
        let retired = &self.retired;
        crate::runtime::CallStats {
            calls: retired.calls + current.calls,
            fuel_consumed: retired.fuel_consumed + current.fuel_consumed,
            last_call_fuel: current.last_call_fuel,
            time: retired.time + current.time,
            bytes_in: retired.bytes_in + current.bytes_in,
            bytes_out: retired.bytes_out + current.bytes_out,
            log_lines_dropped: retired.log_lines_dropped + current.log_lines_dropped,
        }
    }

    /// Records a success: the failure streak ends.
    pub(crate) fn record_success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Records a failure; returns true if it opened the circuit.
    pub(crate) fn record_failure(&mut self, error: &Error, max_failures: u32) -> bool {
        self.record_failure_as(error.label(), error.to_string(), max_failures)
    }

    /// [`PluginSlot::record_failure`] from the error's label and message
    /// (a failure a worker saw, recorded when its batch's turn comes).
    pub(crate) fn record_failure_as(
        &mut self,
        label: &'static str,
        message: String,
        max_failures: u32,
    ) -> bool {
        self.failures += 1;
        self.consecutive_failures += 1;
        *self.failures_by_kind.entry(label).or_default() += 1;
        self.last_error = Some(message);
        if !self.disabled && self.failures >= max_failures {
            self.disabled = true;
            self.disabled_since = Some(std::time::Instant::now());
            return true;
        }
        false
    }

    /// Closes the circuit if it has been open for at least `back_off`
    /// (zero = never by time). Returns true if it closed.
    pub(crate) fn maybe_close_circuit(&mut self, back_off: std::time::Duration) -> bool {
        let expired = self
            .disabled_since
            .is_some_and(|since| !back_off.is_zero() && since.elapsed() >= back_off);
        if self.disabled && expired {
            self.disabled = false;
            self.disabled_since = None;
            self.failures = 0;
            self.consecutive_failures = 0;
            return true;
        }
        false
    }

    /// Starts a pipeline run: hands the plugin the run's context and asks
    /// whether it runs at `level` (`m3u_check_memory_pressure`). The slot
    /// remembers both for an instance that replaces a failed one mid-run.
    ///
    /// # Errors
    /// Any plugin failure.
    pub fn start_run(
        &mut self,
        level: MemoryPressureLevel,
        context: &RunContext<'_>,
    ) -> Result<bool> {
        let owned = RunContext {
            memory_pressure: context.memory_pressure,
            available_memory: context.available_memory,
            proxy_name: context.proxy_name.clone().into_owned().into(),
            base_url: context.base_url.clone().into_owned().into(),
        };
        self.run = Some((level, owned));
        self.instance.begin_run();
        self.instance.accepts_pressure(level, context)
    }

    /// Swaps in a fresh instance, keeping the counters of the old one; a
    /// run in progress is started on it too (it needs the run's context).
    ///
    /// # Errors
    /// The fresh instance failed its start of the run (it is in place, and
    /// the caller switches the plugin off).
    pub(crate) fn replace_instance(&mut self, instance: PluginInstance) -> Result<()> {
        let old = std::mem::replace(&mut self.instance, instance);
        self.instance.continue_run(old.run_usage());
        self.absorb_stats(old.stats());
        if let Some((level, context)) = &self.run {
            self.instance.accepts_pressure(*level, context)?;
        }
        Ok(())
    }

    /// Replaces an instance whose call was aborted (its memory may be
    /// half-updated) with a fresh one from the compiled module; if that
    /// fails, the plugin is switched off.
    pub(crate) fn respawn(
        &mut self,
        runtime: &crate::runtime::PluginRuntime,
        settings: &crate::runtime::PluginSettings,
    ) {
        let stem = self.name().to_string();
        let fresh = match &self.compiled {
            Some(compiled) => runtime.instantiate(compiled, &stem, settings),
            None => return,
        };
        self.needs_respawn = false;
        if let Err(error) = fresh.and_then(|instance| self.replace_instance(instance)) {
            log::warn!("plugin `{stem}` could not be re-instantiated, switching it off: {error}");
            self.disabled = true;
            self.disabled_since = Some(std::time::Instant::now());
            self.last_error = Some(error.to_string());
        }
    }

    /// True while the instance awaits being made again: its last call was
    /// aborted as its circuit opened, and it is made again only when the
    /// circuit closes (so a switched-off plugin's `init` does not run for
    /// nothing).
    pub fn needs_respawn(&self) -> bool {
        self.needs_respawn
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.instance.info().name
    }

    /// Runs `stage` on `batch` in place. On error the batch is unchanged.
    ///
    /// # Errors
    /// Any plugin failure or malformed answer.
    pub fn run(
        &mut self,
        stage: Stage,
        context: &StageContext<'_>,
        batch: &mut Vec<OwnedChannel>,
    ) -> Result<()> {
        run_on_instance(&mut self.instance, stage, context, batch)
    }

    /// Adds the counters of an instance that ran beside this slot's own (a
    /// worker's copy) to the slot's totals.
    pub(crate) fn absorb_stats(&mut self, stats: &crate::runtime::CallStats) {
        self.retired.calls += stats.calls;
        self.retired.fuel_consumed += stats.fuel_consumed;
        self.retired.time += stats.time;
        self.retired.bytes_in += stats.bytes_in;
        self.retired.bytes_out += stats.bytes_out;
        self.retired.log_lines_dropped += stats.log_lines_dropped;
    }
}

/// Runs `stage` of the plugin `instance` on `batch` in place (the slot's own
/// instance, or a worker's copy). On error the batch is unchanged. However
/// many calls the batch takes, they share one batch's limits.
///
/// # Errors
/// Any plugin failure or malformed answer.
pub(crate) fn run_on_instance(
    instance: &mut PluginInstance,
    stage: Stage,
    context: &StageContext<'_>,
    batch: &mut Vec<OwnedChannel>,
) -> Result<()> {
    instance.begin_batch(batch.len());
    let result = run_calls(instance, stage, context, batch);
    instance.end_batch();
    result
}

/// [`run_on_instance`] inside the open batch.
fn run_calls(
    instance: &mut PluginInstance,
    stage: Stage,
    context: &StageContext<'_>,
    batch: &mut Vec<OwnedChannel>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let reads = instance.info().reads_at(stage);
    let header = InputHeader {
        batch_index: context.batch_index,
        memory_pressure: context.memory_pressure,
        fields: reads,
    };
    // Input gets half the arena, so the plugin's answer has room beside it.
    let input_limit = instance.arena_capacity() as usize / 2;
    let output = match instance.execute_stage_with(stage, input_limit, |arena| {
        encode_stage_input(arena, header, batch)
    }) {
        Ok(output) => output,
        Err(Encoded::Full) if batch.len() > 1 => {
            return run_split(instance, stage, context, batch);
        }
        Err(Encoded::Full) => {
            return Err(Error::malformed(format!(
                "one channel does not fit half the plugin's {} byte arena",
                instance.arena_capacity()
            )))
        }
        Err(Encoded::Failed(error)) => return Err(error),
    };
    check_answer_size(output, batch.len())?;
    let (answer, rest): (StageOutput<'_>, &[u8]) = postcard::take_from_bytes(output)
        .map_err(|error| Error::malformed(format!("output does not decode: {error}")))?;
    if !rest.is_empty() {
        return Err(Error::malformed(format!(
            "{} bytes after the end of the output",
            rest.len()
        )));
    }
    let mut next_id = NEXT_ADDED_ID.load(Ordering::Relaxed);
    let limits = AnswerLimits::default();
    apply(stage, reads, answer, batch, &mut next_id, &limits)
        .map_err(|error| Error::malformed(error.0))?;
    NEXT_ADDED_ID.fetch_max(next_id, Ordering::Relaxed);
    Ok(())
}

/// A batch too large for the arena goes in two halves, in order.
fn run_split(
    instance: &mut PluginInstance,
    stage: Stage,
    context: &StageContext<'_>,
    batch: &mut Vec<OwnedChannel>,
) -> Result<()> {
    // Rare path: keep the original so a failure in the second half
    // leaves the batch exactly as it came in.
    let original = batch.clone();
    let mut second = batch.split_off(batch.len() / 2);
    let mut first = std::mem::take(batch);
    let result = run_calls(instance, stage, context, &mut first)
        .and_then(|()| run_calls(instance, stage, context, &mut second));
    *batch = match result {
        Ok(()) => {
            first.append(&mut second);
            first
        }
        Err(_) => original,
    };
    result
}

/// Most patches one channel may receive in one answer.
pub const MAX_PATCHES_PER_CHANNEL: usize = 64;

/// Refuses, before decoding, an answer whose length prefix promises more
/// channels or patches than the batch allows: decoding it first would let a
/// plugin make the host allocate far more than the plugin wrote.
fn check_answer_size(output: &[u8], batch_len: usize) -> Result<()> {
    let Some((&variant, rest)) = output.split_first() else {
        return Ok(()); // empty: the decoder reports it
    };
    let (limit, what) = match variant {
        wire_tags::ANSWER_CHANNELS => (batch_len, "channels"),
        wire_tags::ANSWER_PATCHES => (batch_len.saturating_mul(MAX_PATCHES_PER_CHANNEL), "patches"),
        // A keep mask's length is checked against the batch after decoding;
        // an unknown tag is the decoder's to refuse.
        _ => return Ok(()),
    };
    if let Ok((count, _)) = postcard::take_from_bytes::<u32>(rest) {
        if count as usize > limit {
            return Err(Error::malformed(format!(
                "answer announces {count} {what} for a batch of {batch_len} (at most {limit})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3u_proxy_plugin_abi::{Channel, Patch, PatchOp};
    use std::borrow::Cow;

    #[test]
    fn answer_size_is_checked_by_the_wire_tag() {
        let encode = |answer: &StageOutput<'_>| postcard::to_allocvec(answer).unwrap();
        // Channels: at most one per input channel.
        let two = encode(&StageOutput::Channels(vec![Channel::default(); 2]));
        assert_eq!(two[0], wire_tags::ANSWER_CHANNELS);
        assert!(check_answer_size(&two, 2).is_ok());
        let error = check_answer_size(&two, 1).unwrap_err().to_string();
        assert!(error.contains("2 channels for a batch of 1"), "{error}");
        // Patches: at most MAX_PATCHES_PER_CHANNEL per input channel.
        let patch = Patch {
            index: 0,
            op: PatchOp::RemoveAttribute("x".into()),
        };
        let many = encode(&StageOutput::Patches(vec![
            patch;
            MAX_PATCHES_PER_CHANNEL + 1
        ]));
        assert_eq!(many[0], wire_tags::ANSWER_PATCHES);
        assert!(check_answer_size(&many, 2).is_ok());
        let error = check_answer_size(&many, 1).unwrap_err().to_string();
        assert!(error.contains("65 patches for a batch of 1"), "{error}");
        // A keep mask is not bounded here (its length is checked after decoding).
        let keep = encode(&StageOutput::Keep(Cow::Owned(vec![0xff; 100])));
        assert_eq!(keep[0], wire_tags::ANSWER_KEEP);
        assert!(check_answer_size(&keep, 1).is_ok());
    }
}
