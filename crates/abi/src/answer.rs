//! What a plugin answers for one batch, and how an answer is checked and
//! applied to the batch. Host and SDK (its native test harness) apply answers
//! with the same [`apply`], so the two cannot disagree.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::batch::bytes;
use crate::{keep_mask_get, keep_mask_len, Channel, Field, FieldSet, Stage};

/// One change to one channel of the input batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatchOp<'a> {
    /// Replace a text field.
    SetField(Field, #[serde(borrow)] Cow<'a, str>),
    /// Set or add an extra attribute (name, value).
    SetAttribute(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>),
    /// Remove an extra attribute by name (case-insensitive).
    RemoveAttribute(#[serde(borrow)] Cow<'a, str>),
}

/// A [`PatchOp`] for the channel at `index` in the input batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch<'a> {
    /// Position of the channel in the input batch.
    pub index: u32,
    /// The change.
    #[serde(borrow)]
    pub op: PatchOp<'a>,
}

/// New values for some channels of the batch, as columns: channel
/// `indices[k]` (little-endian `u32`s, positions in the input batch) gets
/// `data[offsets[k]..offsets[k + 1]]` (`offsets`: little-endian `u32`s, one
/// more than the indices, first 0, last `data.len()`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values<'a> {
    /// Positions of the changed channels.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub indices: Cow<'a, [u8]>,
    /// Value boundaries in `data`.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub offsets: Cow<'a, [u8]>,
    /// The values, concatenated (UTF-8).
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub data: Cow<'a, [u8]>,
}

impl Default for Values<'_> {
    fn default() -> Self {
        Values {
            indices: Cow::Owned(Vec::new()),
            offsets: Cow::Owned(vec![0; 4]),
            data: Cow::Owned(Vec::new()),
        }
    }
}

/// `cow.to_mut()`, with the copy of borrowed bytes out of line: a guest
/// pushes values per channel, and wasmi charges the fuel of inlined code
/// that does not run (the copy) on every push.
fn owned<'c>(cow: &'c mut Cow<'_, [u8]>) -> &'c mut Vec<u8> {
    #[cold]
    #[inline(never)]
    fn to_owned(cow: &mut Cow<'_, [u8]>) {
        *cow = Cow::Owned(cow.to_vec());
    }
    if let Cow::Borrowed(_) = cow {
        to_owned(cow);
    }
    match cow {
        Cow::Owned(bytes) => bytes,
        Cow::Borrowed(_) => unreachable!("made owned above"),
    }
}

impl<'a> Values<'a> {
    /// Records `value` for the channel at `index`.
    pub fn push(&mut self, index: u32, value: &str) {
        owned(&mut self.indices).extend_from_slice(&index.to_le_bytes());
        let data = owned(&mut self.data);
        data.extend_from_slice(value.as_bytes());
        let end = data.len() as u32;
        owned(&mut self.offsets).extend_from_slice(&end.to_le_bytes());
    }

    /// Removes the last value if it is for the channel at `index`; returns
    /// whether it did.
    pub fn pop_for(&mut self, index: u32) -> bool {
        let count = self.len();
        if count == 0 || u32_le(&self.indices, count - 1) != index as usize {
            return false;
        }
        let start = u32_le(&self.offsets, count - 1);
        self.indices.to_mut().truncate((count - 1) * 4);
        self.offsets.to_mut().truncate(count * 4);
        self.data.to_mut().truncate(start);
        true
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.indices.len() / 4
    }

    /// True if there is no value.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The (index, value) pairs, or an error message naming `what` if the
    /// columns are inconsistent (lengths, bounds, UTF-8).
    fn entries(&self, what: &str) -> Result<impl Iterator<Item = (usize, &str)> + '_, String> {
        let count = self.indices.len() / 4;
        if !self.indices.len().is_multiple_of(4) || self.offsets.len() != (count + 1) * 4 {
            return Err(format!(
                "the {what} values have {} index bytes and {} offset bytes",
                self.indices.len(),
                self.offsets.len()
            ));
        }
        let text = core::str::from_utf8(&self.data)
            .map_err(|_| format!("the {what} values are not UTF-8"))?;
        let offset = |k: usize| u32_le(&self.offsets, k);
        if offset(0) != 0 || offset(count) != text.len() {
            return Err(format!("the {what} offsets do not cover the values"));
        }
        for k in 0..count {
            if text.get(offset(k)..offset(k + 1)).is_none() {
                return Err(format!("{what} value {k} has bad offsets"));
            }
        }
        Ok((0..count).map(move |k| {
            (
                u32_le(&self.indices, k),
                text.get(offset(k)..offset(k + 1)).unwrap_or(""),
            )
        }))
    }
}

/// New values of one text field, as [`Values`] columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldValues<'a> {
    /// The field (a text field).
    pub field: Field,
    /// The values.
    #[serde(borrow)]
    pub values: Values<'a>,
}

impl<'a> FieldValues<'a> {
    /// An empty column of changes for `field`.
    pub fn new(field: Field) -> Self {
        FieldValues {
            field,
            values: Values::default(),
        }
    }

    /// Records `value` for the channel at `index`.
    pub fn push(&mut self, index: u32, value: &str) {
        self.values.push(index, value);
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True if there is no value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Values of one extra attribute (set or added, matched case-insensitively),
/// as [`Values`] columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeValues<'a> {
    /// The attribute's name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// The values.
    #[serde(borrow)]
    pub values: Values<'a>,
}

/// Little-endian `u32` number `k` of `bytes` (0 past the end).
fn u32_le(bytes: &[u8], k: usize) -> usize {
    match bytes.get(k * 4..k * 4 + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => 0,
    }
}

/// Changes to channels of the batch, applied in this order: the text
/// columns, then the patches in order, then the attribute columns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes<'a> {
    /// Text values, one entry per changed field.
    #[serde(borrow)]
    pub fields: Vec<FieldValues<'a>>,
    /// Patches (attribute removals, and any change as a list).
    #[serde(borrow)]
    pub patches: Vec<Patch<'a>>,
    /// Attribute values, one entry per attribute name set.
    #[serde(borrow)]
    pub attributes: Vec<AttributeValues<'a>>,
}

impl Changes<'_> {
    /// True if nothing changes.
    pub fn is_empty(&self) -> bool {
        self.fields.iter().all(FieldValues::is_empty)
            && self.patches.is_empty()
            && self.attributes.iter().all(|a| a.values.is_empty())
    }
}

/// A new batch built from the input: `order` (little-endian `u32`s) lists
/// the output channels; a value `i` below the input's length is input
/// channel `i` (each at most once; the ones not listed are dropped), a value
/// `n + k` is `added[k]`. `changes` apply to input channels before the order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuild<'a> {
    /// The output, as positions.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub order: Cow<'a, [u8]>,
    /// Changes to input channels.
    #[serde(borrow)]
    pub changes: Changes<'a>,
    /// New channels (the host gives each a new id).
    #[serde(borrow)]
    pub added: Vec<Channel<'a>>,
}

/// What a plugin answers for one batch: the bytes after its input in the
/// arena (or what it sent with `write_channels`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOutput<'a> {
    /// The batch, replaced whole. Only for plugins that read every field;
    /// a filter may only return a subsequence of its input (same ids).
    Channels(#[serde(borrow)] Vec<Channel<'a>>),
    /// Keep/drop bitmask, bit `i % 8` of byte `i / 8` for channel `i`
    /// (1 = keep). Exactly `ceil(n / 8)` bytes.
    Keep(#[serde(borrow, serialize_with = "bytes::serialize")] Cow<'a, [u8]>),
    /// Field changes as a list; channels not named are unchanged.
    Patches(#[serde(borrow)] Vec<Patch<'a>>),
    /// Everything stays as it is (a filter that keeps all, a mapper that
    /// changes nothing).
    KeepAll,
    /// Field changes as columns plus patches.
    Changes(#[serde(borrow)] Changes<'a>),
    /// Reorder, drop, change and add channels.
    Rebuild(#[serde(borrow)] Rebuild<'a>),
}

/// Variant tags of the enums that carry data, as they appear on the wire.
///
/// postcard writes an enum as its variant index (a varint) followed by the
/// variant's fields; every index here is below `0x80`, so the tag is the
/// encoding's first byte. Use these to look at an encoded value before
/// decoding it (as the host does to bound a length prefix). They follow the
/// declaration order of the variants, which only ever grows at the end
/// (`docs/ABI.md` §1); a test pins each against the actual encoding.
pub mod wire_tags {
    /// First byte of [`crate::StageOutput::Channels`].
    pub const ANSWER_CHANNELS: u8 = 0;
    /// First byte of [`crate::StageOutput::Keep`].
    pub const ANSWER_KEEP: u8 = 1;
    /// First byte of [`crate::StageOutput::Patches`].
    pub const ANSWER_PATCHES: u8 = 2;
    /// The only byte of [`crate::StageOutput::KeepAll`].
    pub const ANSWER_KEEP_ALL: u8 = 3;
    /// First byte of [`crate::StageOutput::Changes`].
    pub const ANSWER_CHANGES: u8 = 4;
    /// First byte of [`crate::StageOutput::Rebuild`].
    pub const ANSWER_REBUILD: u8 = 5;
    /// First byte of [`crate::PatchOp::SetField`].
    pub const PATCH_SET_FIELD: u8 = 0;
    /// First byte of [`crate::PatchOp::SetAttribute`].
    pub const PATCH_SET_ATTRIBUTE: u8 = 1;
    /// First byte of [`crate::PatchOp::RemoveAttribute`].
    pub const PATCH_REMOVE_ATTRIBUTE: u8 = 2;
}

/// An answer that does not fit its batch; the batch is left untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerError(pub String);

impl core::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bounds an answer must respect beyond its batch. They hold per channel,
/// so however a plugin splits a batch into calls, what it can make the host
/// do and hold grows only with the channels it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerLimits {
    /// Most changes (patches and attribute-column values) per channel, and
    /// most patch-list entries per input channel.
    pub max_patches_per_channel: usize,
    /// Longest value a plugin may write into one field or attribute, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes (values and attribute names) one answer may write, per
    /// channel of its batch, summed over the answer (one channel may take
    /// more, up to `max_value_bytes` per value, if others take less); whole
    /// channels sent back may grow the batch's text by at most this much per
    /// channel.
    pub max_bytes_per_channel: usize,
    /// Most channels a rebuild may add, per input channel.
    pub max_added_per_channel: usize,
}

impl Default for AnswerLimits {
    fn default() -> Self {
        AnswerLimits {
            max_patches_per_channel: 64,
            max_value_bytes: 64 << 10,
            max_bytes_per_channel: 4 << 10,
            max_added_per_channel: 1,
        }
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, AnswerError> {
    Err(AnswerError(message.into()))
}

/// Checks `answer` against `batch` and the stage, then applies it; touches
/// nothing on error. `reads` is what the plugin was sent (whole channels
/// back need every field); `next_id` numbers added channels.
///
/// # Errors
/// An [`AnswerError`] saying what does not fit.
pub fn apply(
    stage: Stage,
    reads: FieldSet,
    answer: StageOutput<'_>,
    batch: &mut Vec<Channel<'static>>,
    next_id: &mut u64,
    limits: &AnswerLimits,
) -> Result<(), AnswerError> {
    let whole_batch = matches!(stage, Stage::SourceLoading | Stage::M3uGeneration);
    match answer {
        StageOutput::KeepAll => Ok(()),
        StageOutput::Keep(mask) => {
            if !(stage == Stage::Filtering || whole_batch) {
                return err(format!(
                    "a keep mask does not answer the {} stage",
                    stage.name()
                ));
            }
            if mask.len() != keep_mask_len(batch.len()) {
                return err(format!(
                    "keep mask has {} bytes for {} channels (expected {})",
                    mask.len(),
                    batch.len(),
                    keep_mask_len(batch.len())
                ));
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
            let changes = Changes {
                patches,
                ..Changes::default()
            };
            apply_changes(stage, changes, batch, limits)
        }
        StageOutput::Changes(changes) => apply_changes(stage, changes, batch, limits),
        StageOutput::Rebuild(rebuild) => {
            if !whole_batch {
                return err(format!(
                    "a rebuilt batch only answers source_loading or m3u_generation, not {}",
                    stage.name()
                ));
            }
            apply_rebuild(rebuild, batch, next_id, limits)
        }
        StageOutput::Channels(channels) => {
            if !reads.is_all() {
                return err(
                    "the plugin returned whole channels but reads only some fields; \
                     it must read every field or answer with changes, a keep mask or a rebuild",
                );
            }
            check_channel_ids(stage, &channels, batch)?;
            check_whole_channels(&channels, batch, limits)?;
            *batch = channels.into_iter().map(Channel::into_owned).collect();
            Ok(())
        }
    }
}

fn check_value(what: &str, value: &str, limits: &AnswerLimits) -> Result<(), AnswerError> {
    if value.len() > limits.max_value_bytes {
        return err(format!(
            "{what} is {} bytes, more than the {} a plugin may write into one value",
            value.len(),
            limits.max_value_bytes
        ));
    }
    Ok(())
}

/// The text a channel holds: every field, attribute and extra line.
fn channel_text_bytes(channel: &Channel<'_>) -> usize {
    let fields: usize = Field::ALL
        .into_iter()
        .filter(|f| f.is_text())
        .map(|field| channel.text(field).len())
        .sum();
    let attributes: usize = channel
        .attributes
        .iter()
        .map(|attribute| attribute.name.len() + attribute.value.len())
        .sum();
    fields
        + attributes
        + channel
            .extras
            .iter()
            .map(|extra| extra.len())
            .sum::<usize>()
}

/// Longest channel a plugin may add: the longest line the reader accepts.
pub const MAX_ADDED_CHANNEL_BYTES: usize = 64 << 10;

/// Whole channels sent back may not grow the batch by more than
/// `max_bytes_per_channel` per channel.
fn check_whole_channels(
    output: &[Channel<'_>],
    input: &[Channel<'_>],
    limits: &AnswerLimits,
) -> Result<(), AnswerError> {
    let before: usize = input.iter().map(channel_text_bytes).sum();
    let after: usize = output.iter().map(channel_text_bytes).sum();
    let most = before.saturating_add(input.len().saturating_mul(limits.max_bytes_per_channel));
    if after > most {
        return err(format!(
            "channels sent back grew from {before} to {after} bytes"
        ));
    }
    Ok(())
}

/// A channel a rebuild adds: at most one reader line's worth of text.
fn check_added_channel(channel: &Channel<'_>) -> Result<(), AnswerError> {
    let bytes = channel_text_bytes(channel);
    if bytes > MAX_ADDED_CHANNEL_BYTES {
        return err(format!(
            "an added channel holds {bytes} bytes of text, more than {MAX_ADDED_CHANNEL_BYTES}"
        ));
    }
    Ok(())
}

/// Checks `changes` against a batch of `len` channels.
fn check_changes(
    stage: Stage,
    changes: &Changes<'_>,
    len: usize,
    limits: &AnswerLimits,
) -> Result<(), AnswerError> {
    if stage == Stage::Filtering {
        return err("a filter answers with a keep mask (or keep all), not with changes");
    }
    let most = len.saturating_mul(limits.max_patches_per_channel);
    if changes.patches.len() > most {
        return err(format!(
            "{} patches for a batch of {len} (at most {most})",
            changes.patches.len()
        ));
    }
    let mut per_channel = PerChannel::new(len, limits);
    for values in &changes.fields {
        if !values.field.is_text() {
            return err(format!(
                "field `{}` cannot be set as text",
                values.field.name()
            ));
        }
        let what = values.field.name();
        check_values(&values.values, what, "", len, limits, &mut per_channel)?;
    }
    for column in &changes.attributes {
        check_value("an attribute name", &column.name, limits)?;
        check_values(
            &column.values,
            &column.name,
            &column.name,
            len,
            limits,
            &mut per_channel,
        )?;
    }
    for patch in &changes.patches {
        let index = patch.index as usize;
        if index >= len {
            return err(format!(
                "patch for channel {} but the batch has {len}",
                patch.index
            ));
        }
        match &patch.op {
            PatchOp::SetField(field, value) => {
                if !field.is_text() {
                    return err(format!("field `{}` cannot be set as text", field.name()));
                }
                check_value(field.name(), value, limits)?;
                per_channel.count(index, value.len())?;
            }
            PatchOp::SetAttribute(name, value) => {
                check_value("an attribute name", name, limits)?;
                check_value("an attribute value", value, limits)?;
                per_channel.count(index, name.len() + value.len())?;
            }
            PatchOp::RemoveAttribute(name) => per_channel.count(index, name.len())?,
        }
    }
    Ok(())
}

/// What one answer does: changes per channel and bytes written in all,
/// bounded by [`AnswerLimits`] (so applying it costs O(answer), and what a
/// plugin can make the host hold grows only with the channels it was given).
struct PerChannel {
    changes: Vec<u16>,
    most_changes: usize,
    written: usize,
    most_written: usize,
}

impl PerChannel {
    fn new(len: usize, limits: &AnswerLimits) -> Self {
        PerChannel {
            changes: alloc::vec![0; len],
            most_changes: limits.max_patches_per_channel,
            written: 0,
            most_written: len.saturating_mul(limits.max_bytes_per_channel),
        }
    }

    /// One more change of `bytes` bytes to channel `index` (< len).
    fn count(&mut self, index: usize, bytes: usize) -> Result<(), AnswerError> {
        let Some(changes) = self.changes.get_mut(index) else {
            return err(format!("a change for channel {index} outside the batch"));
        };
        *changes = changes.saturating_add(1);
        if usize::from(*changes) > self.most_changes {
            return err(format!(
                "more than {} changes to channel {index} in one answer",
                self.most_changes
            ));
        }
        self.written = self.written.saturating_add(bytes);
        if self.written > self.most_written {
            return err(format!(
                "the answer writes more than {} bytes into a batch of {}",
                self.most_written,
                self.changes.len()
            ));
        }
        Ok(())
    }
}

fn apply_changes(
    stage: Stage,
    changes: Changes<'_>,
    batch: &mut [Channel<'static>],
    limits: &AnswerLimits,
) -> Result<(), AnswerError> {
    check_changes(stage, &changes, batch.len(), limits)?;
    write_changes(changes, batch);
    Ok(())
}

/// Checks one column of values against a batch of `len` channels; each
/// value counts as one change of its length plus `name`'s (an attribute
/// column's name).
fn check_values(
    values: &Values<'_>,
    what: &str,
    name: &str,
    len: usize,
    limits: &AnswerLimits,
    per_channel: &mut PerChannel,
) -> Result<(), AnswerError> {
    for (index, value) in values.entries(what).map_err(AnswerError)? {
        if index >= len {
            return err(format!(
                "a `{what}` value for channel {index} but the batch has {len}"
            ));
        }
        check_value(what, value, limits)?;
        per_channel.count(index, name.len() + value.len())?;
    }
    Ok(())
}

/// Sets attribute `name` of `channel` to `value` (matched
/// case-insensitively; added if absent).
fn set_attribute(channel: &mut Channel<'static>, name: &str, value: &str) {
    match channel
        .attributes
        .iter_mut()
        .find(|attribute| attribute.name.eq_ignore_ascii_case(name))
    {
        Some(existing) => assign(&mut existing.value, value),
        None => channel.attributes.push(crate::Attribute {
            name: Cow::Owned(String::from(name)),
            value: Cow::Owned(String::from(value)),
        }),
    }
}

/// Applies checked changes.
fn write_changes(changes: Changes<'_>, batch: &mut [Channel<'static>]) {
    for column in &changes.fields {
        let Ok(entries) = column.values.entries("") else {
            continue; // checked before
        };
        for (index, value) in entries {
            if let Some(slot) = batch.get_mut(index).and_then(|c| c.text_mut(column.field)) {
                assign(slot, value);
            }
        }
    }
    for patch in changes.patches {
        let Some(channel) = batch.get_mut(patch.index as usize) else {
            continue;
        };
        match patch.op {
            PatchOp::SetField(field, value) => {
                if let Some(slot) = channel.text_mut(field) {
                    assign(slot, &value);
                }
            }
            PatchOp::SetAttribute(name, value) => set_attribute(channel, &name, &value),
            PatchOp::RemoveAttribute(name) => channel
                .attributes
                .retain(|attribute| !attribute.name.eq_ignore_ascii_case(&name)),
        }
    }
    for column in &changes.attributes {
        let Ok(entries) = column.values.entries("") else {
            continue; // checked before
        };
        for (index, value) in entries {
            if let Some(channel) = batch.get_mut(index) {
                set_attribute(channel, &column.name, value);
            }
        }
    }
}

/// Sets `slot` to `value`, reusing its allocation when it owns one.
fn assign(slot: &mut Cow<'static, str>, value: &str) {
    match slot {
        Cow::Owned(owned) => {
            owned.clear();
            owned.push_str(value);
        }
        Cow::Borrowed(_) => *slot = Cow::Owned(String::from(value)),
    }
}

fn apply_rebuild(
    rebuild: Rebuild<'_>,
    batch: &mut Vec<Channel<'static>>,
    next_id: &mut u64,
    limits: &AnswerLimits,
) -> Result<(), AnswerError> {
    let len = batch.len();
    let most_added = len.max(1).saturating_mul(limits.max_added_per_channel);
    if rebuild.added.len() > most_added {
        return err(format!(
            "the rebuild adds {} channels to a batch of {len} (at most {most_added})",
            rebuild.added.len()
        ));
    }
    if !rebuild.order.len().is_multiple_of(4) {
        return err("the rebuild's order is not a list of u32");
    }
    let total = len + rebuild.added.len();
    let mut used = vec![false; total];
    for k in 0..rebuild.order.len() / 4 {
        let position = u32_le(&rebuild.order, k);
        match used.get_mut(position) {
            None => {
                return err(format!(
                    "the rebuild's order names position {position} of {total}"
                ))
            }
            Some(true) => return err(format!("the rebuild's order repeats position {position}")),
            Some(seen) => *seen = true,
        }
    }
    check_changes(Stage::M3uGeneration, &rebuild.changes, len, limits)?;
    for channel in &rebuild.added {
        check_added_channel(channel)?;
    }
    write_changes(rebuild.changes, batch);
    let mut input: Vec<Option<Channel<'static>>> = batch.drain(..).map(Some).collect();
    let mut added: Vec<Option<Channel<'static>>> = rebuild
        .added
        .into_iter()
        .map(|channel| {
            let mut channel = channel.into_owned();
            channel.id = *next_id;
            *next_id += 1;
            Some(channel)
        })
        .collect();
    for k in 0..rebuild.order.len() / 4 {
        let position = u32_le(&rebuild.order, k);
        let slot = if position < len {
            input.get_mut(position)
        } else {
            added.get_mut(position - len)
        };
        if let Some(channel) = slot.and_then(Option::take) {
            batch.push(channel);
        }
    }
    Ok(())
}

/// A plugin may not invent or duplicate channels: a filter returns a
/// subsequence of its input, a mapper or numberer the same ids in order,
/// and a whole-batch stage each input id at most once.
pub fn check_channel_ids(
    stage: Stage,
    output: &[Channel<'_>],
    input: &[Channel<'_>],
) -> Result<(), AnswerError> {
    let invented = |id: u64| {
        err(format!(
            "output has channel id {id}, which was not in the input batch"
        ))
    };
    match stage {
        Stage::Filtering => {
            let mut inputs = input.iter().map(|c| c.id);
            for channel in output {
                if !inputs.any(|id| id == channel.id) {
                    return invented(channel.id);
                }
            }
        }
        Stage::DataMapping | Stage::ChannelNumbering => {
            if output.len() != input.len()
                || output.iter().zip(input).any(|(out, inp)| out.id != inp.id)
            {
                return err(format!(
                    "{} must return the same {} channels in the same order, got {}",
                    stage.name(),
                    input.len(),
                    output.len()
                ));
            }
        }
        Stage::SourceLoading | Stage::M3uGeneration => {
            let mut known: Vec<u64> = input.iter().map(|c| c.id).collect();
            known.sort_unstable();
            let mut seen: Vec<u64> = Vec::with_capacity(output.len());
            for channel in output {
                if known.binary_search(&channel.id).is_err() {
                    return invented(channel.id);
                }
                seen.push(channel.id);
            }
            seen.sort_unstable();
            if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
                return err(format!("output repeats channel id {}", pair[0]));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apply` with default limits and a fresh id counter.
    fn run(
        stage: Stage,
        reads: FieldSet,
        answer: StageOutput<'_>,
        batch: &mut Vec<Channel<'static>>,
    ) -> Result<(), AnswerError> {
        apply(
            stage,
            reads,
            answer,
            batch,
            &mut 1000,
            &AnswerLimits::default(),
        )
    }

    fn batch(n: u64) -> Vec<Channel<'static>> {
        (1..=n)
            .map(|id| Channel {
                id,
                channel_name: alloc::format!("c{id}").into(),
                ..Channel::default()
            })
            .collect()
    }

    #[test]
    fn keep_mask_filters_by_position() {
        let mut channels = batch(10);
        let answer = StageOutput::Keep(Cow::Owned(vec![0b0000_0101, 0b10]));
        run(Stage::Filtering, FieldSet::NONE, answer, &mut channels).unwrap();
        let ids: Vec<u64> = channels.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 3, 10]);
    }

    #[test]
    fn wrong_mask_length_leaves_the_batch_alone() {
        let mut channels = batch(10);
        let answer = StageOutput::Keep(Cow::Owned(vec![0xff]));
        let error = run(Stage::Filtering, FieldSet::NONE, answer, &mut channels).unwrap_err();
        assert!(error.0.contains("1 bytes for 10 channels"), "{error}");
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
        assert!(run(Stage::DataMapping, FieldSet::ALL, answer, &mut channels).is_err());
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
    fn whole_channels_need_a_plugin_that_reads_everything() {
        let mut channels = batch(2);
        let answer = StageOutput::Channels(vec![]);
        let reads = FieldSet::of(&[Field::ChannelName]);
        assert!(run(Stage::Filtering, reads, answer, &mut channels).is_err());
        assert_eq!(channels.len(), 2);
    }

    #[test]
    fn changes_set_columns_then_patches_and_keep_the_rest() {
        let mut channels = batch(3);
        let mut groups = FieldValues::new(Field::GroupTitle);
        groups.push(0, "News");
        groups.push(2, "Sport");
        let answer = StageOutput::Changes(Changes {
            fields: vec![groups],
            patches: vec![Patch {
                index: 2,
                op: PatchOp::SetAttribute("x".into(), "y".into()),
            }],
            attributes: vec![AttributeValues {
                name: "Z".into(),
                values: {
                    let mut values = Values::default();
                    values.push(1, "1");
                    values.push(2, "2");
                    values
                },
            }],
        });
        run(Stage::DataMapping, FieldSet::NONE, answer, &mut channels).unwrap();
        assert_eq!(channels[0].attribute("z"), None);
        assert_eq!(channels[1].attribute("z"), Some("1"));
        assert_eq!(channels[2].attribute("z"), Some("2"));
        assert_eq!(channels[0].group_title, "News");
        assert_eq!(channels[1].group_title, "");
        assert_eq!(channels[2].group_title, "Sport");
        assert_eq!(channels[2].attribute("x"), Some("y"));
        assert_eq!(channels[1].channel_name, "c2", "untouched");
    }

    #[test]
    fn bad_change_columns_leave_the_batch_alone() {
        let bad = |values: FieldValues<'static>| {
            let mut channels = batch(2);
            let answer = StageOutput::Changes(Changes {
                fields: vec![values],
                ..Changes::default()
            });
            let error = run(Stage::DataMapping, FieldSet::NONE, answer, &mut channels);
            assert_eq!(channels, batch(2));
            error.unwrap_err().0
        };
        let mut past_the_end = FieldValues::new(Field::GroupTitle);
        past_the_end.push(0, "ok");
        past_the_end.push(2, "x");
        assert!(bad(past_the_end).contains("channel 2 but the batch has 2"));
        let mut list_field = FieldValues::new(Field::Attributes);
        list_field.push(0, "x");
        assert!(bad(list_field).contains("cannot be set as text"));
        let mut cut = FieldValues::new(Field::GroupTitle);
        cut.push(0, "é");
        cut.values.offsets.to_mut()[4] = 1; // inside the two-byte character
        assert!(bad(cut).contains("offsets"));
        let mut not_utf8 = FieldValues::new(Field::GroupTitle);
        not_utf8.push(0, "a");
        not_utf8.values.data.to_mut()[0] = 0xff;
        assert!(bad(not_utf8).contains("UTF-8"));
        let mut long = FieldValues::new(Field::GroupTitle);
        long.push(0, &"x".repeat(AnswerLimits::default().max_value_bytes + 1));
        assert!(bad(long).contains("more than the"));
    }

    #[test]
    fn an_answer_writes_at_most_4_kib_per_channel_of_its_batch_and_64_changes_per_channel() {
        let limits = AnswerLimits::default();
        let value = "v".repeat(3000);
        let answer = |patches: Vec<Patch<'static>>| StageOutput::Patches(patches);
        let set = |index: u32, field| Patch {
            index,
            op: PatchOp::SetField(field, value.clone().into()),
        };
        // Three channels may take 12 KiB in all, however it is shared.
        let mut channels = batch(3);
        let four = vec![
            set(0, Field::GroupTitle),
            set(0, Field::TvgName),
            set(0, Field::TvgLogo),
            set(1, Field::GroupTitle),
        ];
        run(
            Stage::DataMapping,
            FieldSet::NONE,
            answer(four),
            &mut channels,
        )
        .unwrap();
        assert_eq!(channels[0].tvg_logo.len(), 3000);
        let mut channels = batch(3);
        let five = vec![
            set(0, Field::GroupTitle),
            set(0, Field::TvgName),
            set(0, Field::TvgLogo),
            set(1, Field::GroupTitle),
            set(2, Field::GroupTitle),
        ];
        let error = run(
            Stage::DataMapping,
            FieldSet::NONE,
            answer(five),
            &mut channels,
        );
        assert!(error.unwrap_err().0.contains("more than 12288 bytes"));
        assert_eq!(channels, batch(3));
        // 65 changes to one channel are refused before any is applied.
        let many = (0..=limits.max_patches_per_channel)
            .map(|k| Patch {
                index: 0,
                op: PatchOp::SetAttribute(alloc::format!("x-{k}").into(), "1".into()),
            })
            .collect();
        let mut channels = batch(2);
        let error = run(
            Stage::DataMapping,
            FieldSet::NONE,
            answer(many),
            &mut channels,
        );
        assert!(error
            .unwrap_err()
            .0
            .contains("more than 64 changes to channel 0"));
        assert_eq!(channels, batch(2));
    }

    #[test]
    fn a_filter_cannot_answer_with_changes() {
        let mut channels = batch(1);
        let mut values = FieldValues::new(Field::GroupTitle);
        values.push(0, "x");
        let answer = StageOutput::Changes(Changes {
            fields: vec![values],
            ..Changes::default()
        });
        assert!(run(Stage::Filtering, FieldSet::NONE, answer, &mut channels).is_err());
        assert_eq!(channels, batch(1));
    }

    #[test]
    fn keep_all_changes_nothing_at_any_stage() {
        for stage in Stage::ALL {
            let mut channels = batch(3);
            run(stage, FieldSet::NONE, StageOutput::KeepAll, &mut channels).unwrap();
            assert_eq!(channels, batch(3));
        }
    }

    #[test]
    fn rebuild_reorders_drops_changes_and_adds() {
        let mut channels = batch(3);
        let mut names = FieldValues::new(Field::ChannelName);
        names.push(0, "first");
        let order: Vec<u8> = [2u32, 3, 0].iter().flat_map(|p| p.to_le_bytes()).collect();
        let answer = StageOutput::Rebuild(Rebuild {
            order: Cow::Owned(order),
            changes: Changes {
                fields: vec![names],
                ..Changes::default()
            },
            added: vec![Channel {
                id: 2, // ignored: the host numbers added channels
                channel_name: "new".into(),
                ..Channel::default()
            }],
        });
        let mut next_id = 1000;
        apply(
            Stage::M3uGeneration,
            FieldSet::NONE,
            answer,
            &mut channels,
            &mut next_id,
            &AnswerLimits::default(),
        )
        .unwrap();
        let got: Vec<(u64, &str)> = channels
            .iter()
            .map(|c| (c.id, c.channel_name.as_ref()))
            .collect();
        assert_eq!(got, [(3, "c3"), (1000, "new"), (1, "first")]);
        assert_eq!(next_id, 1001);
    }

    #[test]
    fn a_bad_rebuild_leaves_the_batch_alone() {
        let order = |positions: &[u32]| -> Cow<'static, [u8]> {
            Cow::Owned(positions.iter().flat_map(|p| p.to_le_bytes()).collect())
        };
        for (positions, stage, expected) in [
            (&[0u32, 0][..], Stage::M3uGeneration, "repeats position 0"),
            (&[3][..], Stage::SourceLoading, "position 3 of 2"),
            (&[0][..], Stage::DataMapping, "only answers source_loading"),
        ] {
            let mut channels = batch(2);
            let answer = StageOutput::Rebuild(Rebuild {
                order: order(positions),
                ..Rebuild::default()
            });
            let error = run(stage, FieldSet::NONE, answer, &mut channels).unwrap_err();
            assert!(error.0.contains(expected), "{error}");
            assert_eq!(channels, batch(2));
        }
        let mut channels = batch(1);
        let answer = StageOutput::Rebuild(Rebuild {
            order: order(&[]),
            added: vec![Channel::default(); 2],
            ..Rebuild::default()
        });
        let error = run(Stage::M3uGeneration, FieldSet::NONE, answer, &mut channels).unwrap_err();
        assert!(error.0.contains("adds 2 channels"), "{error}");
    }
}
