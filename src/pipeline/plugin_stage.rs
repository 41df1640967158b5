//! Running one batch through a plugin: encode the fields it reads, call it,
//! check its answer against the batch, and only then apply it. A rejected
//! answer leaves the batch untouched, so the next strategy sees the same input.

use std::borrow::Cow;
use std::collections::HashSet;

use m3u_proxy_plugin_abi::{
    keep_mask_get, keep_mask_len, wire_tags, Channel, FieldSet, Patch, PatchOp, Stage,
    StageContext, StageInputView, StageOutput,
};

use crate::runtime::PluginInstance;
use crate::{Error, OwnedChannel, Result};

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
    /// Reusable encode buffer, as large as the plugin's arena.
    buffer: Vec<u8>,
}

impl PluginSlot {
    /// Wraps an instance loaded from `path`.
    pub fn new(instance: PluginInstance, path: std::path::PathBuf) -> Self {
        // Input gets half the arena, so the plugin's answer has room beside it.
        let capacity = instance.arena_capacity() as usize / 2;
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
            buffer: vec![0; capacity],
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
        self.failures += 1;
        self.consecutive_failures += 1;
        *self.failures_by_kind.entry(error.label()).or_default() += 1;
        self.last_error = Some(error.to_string());
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

    /// Swaps in a fresh instance, keeping the counters of the old one.
    pub(crate) fn replace_instance(&mut self, instance: PluginInstance) {
        let old = std::mem::replace(&mut self.instance, instance);
        let stats = old.stats();
        self.retired.calls += stats.calls;
        self.retired.fuel_consumed += stats.fuel_consumed;
        self.retired.time += stats.time;
        self.retired.bytes_in += stats.bytes_in;
        self.retired.bytes_out += stats.bytes_out;
        self.retired.log_lines_dropped += stats.log_lines_dropped;
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
        if batch.is_empty() {
            return Ok(());
        }
        let reads = self.instance.info().reads;
        let input = StageInputView {
            context,
            fields: reads,
            channels: batch,
        };
        let encoded_len = match postcard::to_slice(&input, &mut self.buffer) {
            Ok(bytes) => bytes.len(),
            Err(postcard::Error::SerializeBufferFull) if batch.len() > 1 => {
                return self.run_split(stage, context, batch);
            }
            Err(error) => {
                return Err(Error::malformed(format!(
                    "one channel does not fit the plugin's {} byte arena: {error}",
                    self.buffer.len()
                )))
            }
        };
        let output = self
            .instance
            .execute_stage(stage, &self.buffer[..encoded_len])?;
        check_answer_size(output, batch.len())?;
        let (answer, rest): (StageOutput<'_>, &[u8]) = postcard::take_from_bytes(output)
            .map_err(|error| Error::malformed(format!("output does not decode: {error}")))?;
        if !rest.is_empty() {
            return Err(Error::malformed(format!(
                "{} bytes after the end of the output",
                rest.len()
            )));
        }
        apply(stage, reads, answer, batch)
    }

    /// A batch too large for the arena goes in two halves, in order.
    fn run_split(
        &mut self,
        stage: Stage,
        context: &StageContext<'_>,
        batch: &mut Vec<OwnedChannel>,
    ) -> Result<()> {
        // Rare path: keep the original so a failure in the second half
        // leaves the batch exactly as it came in.
        let original = batch.clone();
        let mut second = batch.split_off(batch.len() / 2);
        let mut first = std::mem::take(batch);
        let result = self
            .run(stage, context, &mut first)
            .and_then(|()| self.run(stage, context, &mut second));
        *batch = match result {
            Ok(()) => {
                first.append(&mut second);
                first
            }
            Err(_) => original,
        };
        result
    }
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

/// Checks `answer` against `batch` and applies it; touches nothing on error.
fn apply(
    stage: Stage,
    reads: FieldSet,
    answer: StageOutput<'_>,
    batch: &mut Vec<OwnedChannel>,
) -> Result<()> {
    match answer {
        StageOutput::Keep(mask) => {
            if stage != Stage::Filtering {
                return Err(Error::malformed(format!(
                    "a keep mask only answers the filtering stage, not {}",
                    stage.name()
                )));
            }
            if mask.len() != keep_mask_len(batch.len()) {
                return Err(Error::malformed(format!(
                    "keep mask has {} bytes for {} channels (expected {})",
                    mask.len(),
                    batch.len(),
                    keep_mask_len(batch.len())
                )));
            }
            let mut index = 0;
            batch.retain(|_| {
                let keep = keep_mask_get(&mask, index);
                index += 1;
                keep
            });
            Ok(())
        }
        StageOutput::Patches(patches) => {
            if stage == Stage::Filtering {
                return Err(Error::malformed(
                    "a filter answers with a keep mask or channels",
                ));
            }
            for patch in &patches {
                check_patch(patch, batch.len())?;
            }
            for patch in patches {
                apply_patch(&mut batch[patch.index as usize], patch.op);
            }
            Ok(())
        }
        StageOutput::Channels(channels) => {
            if !reads.is_all() {
                return Err(Error::malformed(
                    "the plugin returned whole channels but reads only some fields; \
                     it must declare READS = FieldSet::ALL or answer with patches/a keep mask",
                ));
            }
            check_channel_ids(stage, &channels, batch)?;
            *batch = channels.into_iter().map(Channel::into_owned).collect();
            Ok(())
        }
    }
}

fn check_patch(patch: &Patch<'_>, batch_len: usize) -> Result<()> {
    if patch.index as usize >= batch_len {
        return Err(Error::malformed(format!(
            "patch for channel {} but the batch has {batch_len}",
            patch.index
        )));
    }
    if let PatchOp::SetField(field, _) = &patch.op {
        if !field.is_text() {
            return Err(Error::malformed(format!(
                "field `{}` cannot be set as text",
                field.name()
            )));
        }
    }
    Ok(())
}

fn apply_patch(channel: &mut OwnedChannel, op: PatchOp<'_>) {
    match op {
        PatchOp::SetField(field, value) => {
            if let Some(slot) = channel.text_mut(field) {
                *slot = Cow::Owned(value.into_owned());
            }
        }
        PatchOp::SetAttribute(name, value) => channel.set_attribute(
            Cow::Owned(name.into_owned()),
            Cow::Owned(value.into_owned()),
        ),
        PatchOp::RemoveAttribute(name) => channel
            .attributes
            .retain(|attribute| !attribute.name.eq_ignore_ascii_case(&name)),
    }
}

/// A plugin may not invent or duplicate channels: a filter returns a
/// subsequence of its input, a mapper or numberer the same ids in order,
/// and a transformer each input id at most once.
fn check_channel_ids(stage: Stage, output: &[Channel<'_>], input: &[OwnedChannel]) -> Result<()> {
    let invented = |id: u64| {
        Error::malformed(format!(
            "output has channel id {id}, which was not in the input batch"
        ))
    };
    match stage {
        Stage::Filtering => {
            let mut inputs = input.iter().map(|c| c.id);
            for channel in output {
                if !inputs.any(|id| id == channel.id) {
                    return Err(invented(channel.id));
                }
            }
        }
        Stage::DataMapping | Stage::ChannelNumbering => {
            if output.len() != input.len()
                || output.iter().zip(input).any(|(out, inp)| out.id != inp.id)
            {
                return Err(Error::malformed(format!(
                    "{} must return the same {} channels in the same order, got {}",
                    stage.name(),
                    input.len(),
                    output.len()
                )));
            }
        }
        Stage::SourceLoading | Stage::M3uGeneration => {
            let known: HashSet<u64> = input.iter().map(|c| c.id).collect();
            let mut seen = HashSet::with_capacity(output.len());
            for channel in output {
                if !known.contains(&channel.id) {
                    return Err(invented(channel.id));
                }
                if !seen.insert(channel.id) {
                    return Err(Error::malformed(format!(
                        "output repeats channel id {}",
                        channel.id
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3u_proxy_plugin_abi::Field;

    fn batch(n: u64) -> Vec<OwnedChannel> {
        (1..=n)
            .map(|id| Channel {
                id,
                channel_name: format!("c{id}").into(),
                ..Channel::default()
            })
            .collect()
    }

    #[test]
    fn keep_mask_filters_by_position() {
        let mut channels = batch(10);
        let answer = StageOutput::Keep(Cow::Owned(vec![0b0000_0101, 0b10]));
        apply(Stage::Filtering, FieldSet::NONE, answer, &mut channels).unwrap();
        let ids: Vec<u64> = channels.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 3, 10]);
    }

    #[test]
    fn wrong_mask_length_leaves_the_batch_alone() {
        let mut channels = batch(10);
        let answer = StageOutput::Keep(Cow::Owned(vec![0xff]));
        let error = apply(Stage::Filtering, FieldSet::NONE, answer, &mut channels).unwrap_err();
        assert!(
            error.to_string().contains("1 bytes for 10 channels"),
            "{error}"
        );
        assert_eq!(channels, batch(10));
    }

    #[test]
    fn patches_are_checked_before_any_is_applied() {
        let mut channels = batch(3);
        let answer = StageOutput::Patches(vec![
            Patch {
                index: 0,
                op: PatchOp::SetField(Field::GroupTitle, "G".into()),
            },
            Patch {
                index: 7,
                op: PatchOp::SetField(Field::GroupTitle, "G".into()),
            },
        ]);
        assert!(apply(Stage::DataMapping, FieldSet::ALL, answer, &mut channels).is_err());
        assert_eq!(channels, batch(3), "first patch was not applied");
    }

    #[test]
    fn filters_cannot_invent_or_reorder_channels() {
        let input = batch(3);
        let out = |ids: &[u64]| -> Vec<Channel<'static>> {
            ids.iter()
                .map(|&id| Channel {
                    id,
                    ..Channel::default()
                })
                .collect()
        };
        assert!(check_channel_ids(Stage::Filtering, &out(&[1, 3]), &input).is_ok());
        assert!(check_channel_ids(Stage::Filtering, &out(&[3, 1]), &input).is_err());
        assert!(check_channel_ids(Stage::Filtering, &out(&[4]), &input).is_err());
        assert!(check_channel_ids(Stage::DataMapping, &out(&[1, 2]), &input).is_err());
        assert!(check_channel_ids(Stage::M3uGeneration, &out(&[2, 2]), &input).is_err());
        assert!(check_channel_ids(Stage::M3uGeneration, &out(&[3, 1]), &input).is_ok());
    }

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

    #[test]
    fn whole_channels_need_a_plugin_that_reads_everything() {
        let mut channels = batch(2);
        let answer = StageOutput::Channels(vec![]);
        let reads = FieldSet::of(&[Field::ChannelName]);
        assert!(apply(Stage::Filtering, reads, answer, &mut channels).is_err());
        assert_eq!(channels.len(), 2);
    }
}
