//! ABI 2's stage input: a batch as one column per projected field.
//!
//! A plugin reads a channel's field by two offset look-ups into one UTF-8
//! blob: decoding a batch costs O(fields), not O(channels), nothing is
//! allocated per channel on either side, and a plugin that reads no field
//! does no per-channel work at all. The host writes the encoding straight
//! into the plugin's arena with [`encode_stage_input`]; it is exactly the
//! postcard encoding of [`StageInput`] (a test pins the two together), so a
//! guest may decode it with postcard and view it with [`BatchView`].

use alloc::vec::Vec;
use core::cell::Cell;
use serde::{Deserialize, Serialize};

use crate::{Attribute, Channel, Field, FieldSet, MemoryPressureLevel};

/// Serializes a byte slice as postcard bytes (a varint length, then the
/// bytes in one copy). serde's default for `[u8]` is a sequence, which
/// postcard encodes identically but one element call at a time.
pub(crate) mod bytes {
    pub(crate) fn serialize<S: serde::Serializer, B: AsRef<[u8]> + ?Sized>(
        value: &B,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value.as_ref())
    }
}

/// One column of a batch: three byte slices.
///
/// - `offsets`: little-endian `u32`s, one more than the column's items;
///   item `i` is `data[offsets[i]..offsets[i + 1]]` (UTF-8). `offsets[0]` is
///   0 and the last one is `data.len()`.
/// - `starts`: empty for a text field (one item per channel). For a list
///   field (`attributes`, `extras`) it holds `count + 1` little-endian
///   `u32`s: channel `i`'s items are `starts[i]..starts[i + 1]`. Attributes
///   are two items each, name then value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column<'a> {
    /// Item range per channel (list fields only).
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub starts: &'a [u8],
    /// Item boundaries in `data`.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub offsets: &'a [u8],
    /// The items, concatenated.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub data: &'a [u8],
}

/// What the host writes at the arena start before `m3u_execute_stage`.
///
/// `ids` holds `count` little-endian `u64`s, `source_ids` `count`
/// little-endian `u32`s; `columns` has one [`Column`] per field in
/// `fields`, in [`Field`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInput<'a> {
    /// Index of this batch in the run, from 0 (kept through holds).
    pub batch_index: u32,
    /// Memory pressure when the batch was sent.
    pub memory_pressure: MemoryPressureLevel,
    /// The fields present as columns.
    pub fields: FieldSet,
    /// Channels in the batch.
    pub count: u32,
    /// Channel ids.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub ids: &'a [u8],
    /// Source ids.
    #[serde(borrow, serialize_with = "bytes::serialize")]
    pub source_ids: &'a [u8],
    /// One column per field in `fields`.
    #[serde(borrow)]
    pub columns: Vec<Column<'a>>,
}

/// Why a [`StageInput`] cannot be viewed as a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `ids` or `source_ids` has the wrong length for `count`.
    Ids,
    /// `columns` does not have one entry per field of `fields`.
    ColumnCount,
    /// The column of this field has inconsistent lengths.
    Column(Field),
    /// The bytes are not a postcard `StageInput` (cut short, trailing
    /// bytes, or an impossible value).
    Encoding,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::Ids => f.write_str("ids or source ids do not match the channel count"),
            LayoutError::ColumnCount => f.write_str("not one column per projected field"),
            LayoutError::Column(field) => {
                write!(f, "the `{}` column has inconsistent lengths", field.name())
            }
            LayoutError::Encoding => f.write_str("the input is not a postcard StageInput"),
        }
    }
}

/// Reads little-endian `u32` number `index` of `bytes` (0 past the end).
fn u32_at(bytes: &[u8], index: usize) -> usize {
    match bytes.get(index * 4..index * 4 + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => 0,
    }
}

/// A checked view of a [`StageInput`]: per-channel accessors that are slice
/// look-ups. Fields not projected read as empty.
///
/// A column's data is checked to be UTF-8 once, as a whole, the first time
/// one of its values is read (a long run checks far faster than many short
/// ones, and a column nobody reads is never checked); each value is then a
/// slice of the checked text.
#[derive(Clone, Debug)]
pub struct BatchView<'a> {
    count: usize,
    fields: FieldSet,
    ids: &'a [u8],
    source_ids: &'a [u8],
    columns: [Column<'a>; Field::ALL.len()],
    texts: [Cell<Option<&'a str>>; Field::ALL.len()],
}

/// Reads a postcard `StageInput` by hand: the same bytes
/// `postcard::from_bytes::<StageInput>` accepts (a test checks both agree),
/// without serde's per-value calls or the `columns` vector. This is what a
/// guest runs on every call, so it is kept to a few varint reads.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self, max_bytes: usize) -> Result<u64, LayoutError> {
        let mut value = 0u64;
        for (index, &byte) in self.bytes.iter().take(max_bytes).enumerate() {
            // The tenth byte of a u64 holds one bit; postcard refuses more.
            if index == 9 && byte > 1 {
                return Err(LayoutError::Encoding);
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[index + 1..];
                return Ok(value);
            }
        }
        Err(LayoutError::Encoding)
    }

    fn u32(&mut self) -> Result<u32, LayoutError> {
        u32::try_from(self.varint(5)?).map_err(|_| LayoutError::Encoding)
    }

    fn slice(&mut self) -> Result<&'a [u8], LayoutError> {
        let len = usize::try_from(self.varint(10)?).map_err(|_| LayoutError::Encoding)?;
        if len > self.bytes.len() {
            return Err(LayoutError::Encoding);
        }
        let (slice, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(slice)
    }
}

impl<'a> BatchView<'a> {
    /// Reads and checks a batch straight from its postcard bytes; returns
    /// the per-call header too. Equivalent to `postcard::from_bytes` of a
    /// [`StageInput`] then [`BatchView::new`], in O(fields).
    ///
    /// # Errors
    /// [`LayoutError::Encoding`] for bytes that are not a `StageInput`,
    /// else what [`BatchView::new`] refuses.
    pub fn parse(bytes: &'a [u8]) -> Result<(InputHeader, Self), LayoutError> {
        let mut view = BatchView::empty();
        let header = view.read(bytes)?;
        Ok((header, view))
    }

    /// An empty batch (no channel, no field), to [`BatchView::read`] into.
    pub fn empty() -> Self {
        BatchView {
            count: 0,
            fields: FieldSet::NONE,
            ids: &[],
            source_ids: &[],
            columns: [Column::default(); Field::ALL.len()],
            texts: Default::default(),
        }
    }

    /// [`BatchView::parse`] into this view, in place (a guest keeps one
    /// view per call and avoids moving it around). On error the view is
    /// empty.
    ///
    /// # Errors
    /// See [`BatchView::parse`].
    pub fn read(&mut self, bytes: &'a [u8]) -> Result<InputHeader, LayoutError> {
        let result = self.read_unchecked(bytes).and_then(|header| {
            self.check()?;
            Ok(header)
        });
        if result.is_err() {
            self.count = 0;
            self.fields = FieldSet::NONE;
        }
        result
    }

    fn read_unchecked(&mut self, bytes: &'a [u8]) -> Result<InputHeader, LayoutError> {
        let mut reader = Reader { bytes };
        let batch_index = reader.u32()?;
        let memory_pressure = u32::try_from(reader.varint(5)?)
            .ok()
            .and_then(MemoryPressureLevel::from_u32)
            .ok_or(LayoutError::Encoding)?;
        let fields = FieldSet(reader.u32()?);
        self.count = reader.u32()? as usize;
        self.fields = fields;
        self.ids = reader.slice()?;
        self.source_ids = reader.slice()?;
        let columns_given = reader.varint(10)?;
        let mut read = 0u64;
        for field in Field::ALL {
            let column = &mut self.columns[field as usize];
            self.texts[field as usize].set(None);
            if !fields.contains(field) {
                *column = Column::default();
                continue;
            }
            if read == columns_given {
                return Err(LayoutError::ColumnCount);
            }
            *column = Column {
                starts: reader.slice()?,
                offsets: reader.slice()?,
                data: reader.slice()?,
            };
            read += 1;
        }
        if read != columns_given {
            return Err(LayoutError::ColumnCount);
        }
        if !reader.bytes.is_empty() {
            return Err(LayoutError::Encoding);
        }
        Ok(InputHeader {
            batch_index,
            memory_pressure,
            fields,
        })
    }

    /// Checks the lengths of every column (O(fields), not O(channels)).
    ///
    /// # Errors
    /// A [`LayoutError`] naming what does not fit.
    pub fn new(input: &StageInput<'a>) -> Result<Self, LayoutError> {
        let mut columns = [Column::default(); Field::ALL.len()];
        let mut given = input.columns.iter();
        for field in Field::ALL {
            if input.fields.contains(field) {
                columns[field as usize] = *given.next().ok_or(LayoutError::ColumnCount)?;
            }
        }
        if given.next().is_some() {
            return Err(LayoutError::ColumnCount);
        }
        let view = BatchView {
            count: input.count as usize,
            fields: input.fields,
            ids: input.ids,
            source_ids: input.source_ids,
            columns,
            texts: Default::default(),
        };
        view.check()?;
        Ok(view)
    }

    /// The checks of [`BatchView::new`] on columns indexed by field.
    fn check(&self) -> Result<(), LayoutError> {
        let count = self.count;
        if self.ids.len() != count.saturating_mul(8)
            || self.source_ids.len() != count.saturating_mul(4)
        {
            return Err(LayoutError::Ids);
        }
        for field in Field::ALL {
            if !self.fields.contains(field) {
                continue;
            }
            let column = &self.columns[field as usize];
            let items = if field.is_text() {
                if !column.starts.is_empty() {
                    return Err(LayoutError::Column(field));
                }
                count
            } else {
                if column.starts.len() != (count + 1) * 4 || u32_at(column.starts, 0) != 0 {
                    return Err(LayoutError::Column(field));
                }
                u32_at(column.starts, count)
            };
            if items.checked_add(1).and_then(|n| n.checked_mul(4)) != Some(column.offsets.len())
                || u32_at(column.offsets, 0) != 0
                || u32_at(column.offsets, items) != column.data.len()
            {
                return Err(LayoutError::Column(field));
            }
        }
        Ok(())
    }

    /// Channels in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The fields present.
    pub fn fields(&self) -> FieldSet {
        self.fields
    }

    /// Id of channel `index` (0 past the end).
    pub fn id(&self, index: usize) -> u64 {
        match self.ids.get(index * 8..index * 8 + 8) {
            Some(&[a, b, c, d, e, f, g, h]) => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => 0,
        }
    }

    /// Source id of channel `index` (0 past the end).
    pub fn source_id(&self, index: usize) -> u32 {
        u32_at(self.source_ids, index) as u32
    }

    /// The data of `field`'s column as text, checked on first use ("" if
    /// it is not UTF-8, which the host never sends).
    fn text_of(&self, field: Field) -> &'a str {
        let cache = &self.texts[field as usize];
        if let Some(text) = cache.get() {
            return text;
        }
        let text = core::str::from_utf8(self.columns[field as usize].data).unwrap_or("");
        cache.set(Some(text));
        text
    }

    /// Item `item` of a column, given its checked text and offsets ("" if
    /// out of range or not on a character boundary).
    fn item(text: &'a str, offsets: &[u8], item: usize) -> &'a str {
        text.get(u32_at(offsets, item)..u32_at(offsets, item + 1))
            .unwrap_or("")
    }

    /// Text field `field` of channel `index` ("" if not projected, out of
    /// range, or a list field).
    pub fn text(&self, index: usize, field: Field) -> &'a str {
        if !field.is_text() || index >= self.count {
            return "";
        }
        Self::item(
            self.text_of(field),
            self.columns[field as usize].offsets,
            index,
        )
    }

    /// The item range of channel `index` in list column `field`.
    fn items(&self, index: usize, field: Field) -> core::ops::Range<usize> {
        let column = &self.columns[field as usize];
        if index >= self.count || column.starts.is_empty() {
            return 0..0;
        }
        // The host writes non-decreasing starts; anything else reads as
        // no items rather than a range past the column.
        let (start, end) = (
            u32_at(column.starts, index),
            u32_at(column.starts, index + 1),
        );
        if start > end || end > u32_at(column.starts, self.count) {
            return 0..0;
        }
        start..end
    }

    /// Extra attributes of channel `index` as (name, value) pairs.
    pub fn attributes(&self, index: usize) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let range = self.items(index, Field::Attributes);
        let text = if range.is_empty() {
            ""
        } else {
            self.text_of(Field::Attributes)
        };
        let offsets = self.columns[Field::Attributes as usize].offsets;
        (range.start..range.end)
            .step_by(2)
            .filter(move |item| item + 1 < range.end)
            .map(move |item| {
                (
                    Self::item(text, offsets, item),
                    Self::item(text, offsets, item + 1),
                )
            })
    }

    /// The value of extra attribute `name` of channel `index`, matched
    /// case-insensitively.
    pub fn attribute(&self, index: usize, name: &str) -> Option<&'a str> {
        self.attributes(index)
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Extra lines of channel `index`.
    pub fn extras(&self, index: usize) -> impl Iterator<Item = &'a str> + 'a {
        let range = self.items(index, Field::Extras);
        let text = if range.is_empty() {
            ""
        } else {
            self.text_of(Field::Extras)
        };
        let offsets = self.columns[Field::Extras as usize].offsets;
        range.map(move |item| Self::item(text, offsets, item))
    }

    /// Channel `index` as a [`Channel`] borrowing from the batch (projected
    /// fields only). Allocates its attribute and extra lists.
    pub fn channel(&self, index: usize) -> Channel<'a> {
        let mut channel = Channel {
            id: self.id(index),
            source_id: self.source_id(index),
            ..Channel::default()
        };
        for field in Field::ALL {
            if let Some(slot) = channel.text_mut(field) {
                *slot = self.text(index, field).into();
            }
        }
        channel.attributes = self
            .attributes(index)
            .map(|(name, value)| Attribute {
                name: name.into(),
                value: value.into(),
            })
            .collect();
        channel.extras = self.extras(index).map(Into::into).collect();
        channel
    }
}

/// The output buffer is too small for the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull;

/// Appends to a fixed buffer.
struct Writer<'b> {
    buffer: &'b mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), BufferFull> {
        let end = self.len.checked_add(bytes.len()).ok_or(BufferFull)?;
        self.buffer
            .get_mut(self.len..end)
            .ok_or(BufferFull)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn varint(&mut self, mut value: u64) -> Result<(), BufferFull> {
        let mut encoded = [0u8; 10];
        let mut used = 0;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                encoded[used] = byte;
                used += 1;
                break;
            }
            encoded[used] = byte | 0x80;
            used += 1;
        }
        self.bytes(&encoded[..used])
    }

    /// A postcard byte slice of `len` bytes whose content `fill` writes.
    fn slice(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), BufferFull>,
    ) -> Result<(), BufferFull> {
        self.varint(len as u64)?;
        let end = self.len.checked_add(len).ok_or(BufferFull)?;
        let target = self.buffer.get_mut(self.len..end).ok_or(BufferFull)?;
        fill(target)?;
        self.len = end;
        Ok(())
    }

    /// A column of `items` strings, given as an iterator twice (once for the
    /// offsets, once for the data).
    fn text_items<'s, I>(&mut self, items: usize, strings: impl Fn() -> I) -> Result<(), BufferFull>
    where
        I: Iterator<Item = &'s str>,
    {
        let mut total = 0usize;
        self.slice((items + 1) * 4, |out| {
            let mut chunks = out.chunks_exact_mut(4);
            let mut put = |value: usize| -> Result<(), BufferFull> {
                let value = u32::try_from(value).map_err(|_| BufferFull)?;
                chunks
                    .next()
                    .ok_or(BufferFull)?
                    .copy_from_slice(&value.to_le_bytes());
                Ok(())
            };
            put(0)?;
            for string in strings() {
                total += string.len();
                put(total)?;
            }
            Ok(())
        })?;
        self.slice(total, |out| {
            let mut at = 0;
            for string in strings() {
                let end = at + string.len();
                out.get_mut(at..end)
                    .ok_or(BufferFull)?
                    .copy_from_slice(string.as_bytes());
                at = end;
            }
            Ok(())
        })
    }

    /// The `starts` slice of a list column.
    fn starts(
        &mut self,
        counts: impl Iterator<Item = usize>,
        channels: usize,
    ) -> Result<usize, BufferFull> {
        let mut total = 0usize;
        self.slice((channels + 1) * 4, |out| {
            let mut chunks = out.chunks_exact_mut(4);
            let mut put = |value: usize| -> Result<(), BufferFull> {
                let value = u32::try_from(value).map_err(|_| BufferFull)?;
                chunks
                    .next()
                    .ok_or(BufferFull)?
                    .copy_from_slice(&value.to_le_bytes());
                Ok(())
            };
            put(0)?;
            for count in counts {
                total += count;
                put(total)?;
            }
            Ok(())
        })?;
        Ok(total)
    }
}

/// The per-call part of a [`StageInput`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputHeader {
    /// See [`StageInput::batch_index`].
    pub batch_index: u32,
    /// See [`StageInput::memory_pressure`].
    pub memory_pressure: MemoryPressureLevel,
    /// The fields to send.
    pub fields: FieldSet,
}

/// Writes the [`StageInput`] of `channels` (only `header.fields`) into
/// `buffer`; returns the length written. The bytes equal
/// `postcard::to_slice(&StageInput { .. })` of the same batch.
///
/// # Errors
/// [`BufferFull`] if it does not fit (the caller splits the batch).
pub fn encode_stage_input(
    buffer: &mut [u8],
    header: InputHeader,
    channels: &[Channel<'_>],
) -> Result<usize, BufferFull> {
    let count = channels.len();
    let mut out = Writer { buffer, len: 0 };
    out.varint(u64::from(header.batch_index))?;
    out.varint(u64::from(header.memory_pressure.as_u32()))?;
    out.varint(u64::from(header.fields.0))?;
    out.varint(count as u64)?;
    out.slice(count * 8, |ids| {
        for (slot, channel) in ids.chunks_exact_mut(8).zip(channels) {
            slot.copy_from_slice(&channel.id.to_le_bytes());
        }
        Ok(())
    })?;
    out.slice(count * 4, |ids| {
        for (slot, channel) in ids.chunks_exact_mut(4).zip(channels) {
            slot.copy_from_slice(&channel.source_id.to_le_bytes());
        }
        Ok(())
    })?;
    let projected = Field::ALL
        .iter()
        .filter(|field| header.fields.contains(**field))
        .count();
    out.varint(projected as u64)?;
    for field in Field::ALL {
        if !header.fields.contains(field) {
            continue;
        }
        match field {
            Field::Attributes => {
                let pairs = out.starts(channels.iter().map(|c| c.attributes.len() * 2), count)?;
                out.text_items(pairs, || {
                    channels.iter().flat_map(|c| {
                        c.attributes
                            .iter()
                            .flat_map(|a| [a.name.as_ref(), a.value.as_ref()])
                    })
                })?;
            }
            Field::Extras => {
                let lines = out.starts(channels.iter().map(|c| c.extras.len()), count)?;
                out.text_items(lines, || {
                    channels
                        .iter()
                        .flat_map(|c| c.extras.iter().map(|e| e.as_ref()))
                })?;
            }
            text => {
                out.varint(0)?; // no `starts`
                out.text_items(count, || channels.iter().map(move |c| c.text(text)))?;
            }
        }
    }
    Ok(out.len)
}
