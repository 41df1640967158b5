//! The batch a stage call receives, read in place from the arena.

use m3u_proxy_plugin_abi::{BatchView, Channel, Field, FieldSet};

/// One batch of channels, as the host sent it (only the fields the plugin
/// reads; the others read as empty).
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    view: BatchView<'a>,
}

impl<'a> Batch<'a> {
    /// An empty batch to read a call's input into, in place.
    pub(crate) fn empty() -> Self {
        Batch {
            view: BatchView::empty(),
        }
    }

    /// Reads and checks a call's input (see [`BatchView::read`]).
    pub(crate) fn read(
        &mut self,
        bytes: &'a [u8],
    ) -> Result<m3u_proxy_plugin_abi::InputHeader, m3u_proxy_plugin_abi::LayoutError> {
        self.view.read(bytes)
    }

    /// Channels in the batch.
    pub fn len(&self) -> usize {
        self.view.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// The fields the host sent.
    pub fn fields(&self) -> FieldSet {
        self.view.fields()
    }

    /// Channel `index` (its fields read as empty past the end).
    pub fn get(&'a self, index: usize) -> ChannelRef<'a> {
        ChannelRef {
            view: &self.view,
            index,
        }
    }

    /// Every channel, in order.
    pub fn iter(&'a self) -> impl Iterator<Item = ChannelRef<'a>> + 'a {
        (0..self.len()).map(move |index| self.get(index))
    }
}

/// One channel of a [`Batch`]: every accessor is a slice look-up.
#[derive(Clone, Copy, Debug)]
pub struct ChannelRef<'a> {
    view: &'a BatchView<'a>,
    index: usize,
}

impl<'a> ChannelRef<'a> {
    /// Position in the batch (what patches and keep masks refer to).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's id of the channel (unique in a run).
    pub fn id(&self) -> u64 {
        self.view.id(self.index)
    }

    /// Index of the source the channel came from.
    pub fn source_id(&self) -> u32 {
        self.view.source_id(self.index)
    }

    /// A text field ("" if not sent).
    pub fn text(&self, field: Field) -> &'a str {
        self.view.text(self.index, field)
    }

    /// `tvg-id`.
    pub fn tvg_id(&self) -> &'a str {
        self.text(Field::TvgId)
    }

    /// `tvg-name`.
    pub fn tvg_name(&self) -> &'a str {
        self.text(Field::TvgName)
    }

    /// `tvg-chno`.
    pub fn tvg_chno(&self) -> &'a str {
        self.text(Field::TvgChno)
    }

    /// `tvg-logo`.
    pub fn tvg_logo(&self) -> &'a str {
        self.text(Field::TvgLogo)
    }

    /// `tvg-shift`.
    pub fn tvg_shift(&self) -> &'a str {
        self.text(Field::TvgShift)
    }

    /// `group-title`.
    pub fn group_title(&self) -> &'a str {
        self.text(Field::GroupTitle)
    }

    /// The channel's name (the title after the EXTINF comma).
    pub fn name(&self) -> &'a str {
        self.text(Field::ChannelName)
    }

    /// The stream URL.
    pub fn url(&self) -> &'a str {
        self.text(Field::StreamUrl)
    }

    /// The EXTINF duration.
    pub fn duration(&self) -> &'a str {
        self.text(Field::Duration)
    }

    /// An extra EXTINF attribute, matched case-insensitively.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.view.attribute(self.index, name)
    }

    /// Every extra EXTINF attribute as (name, value).
    pub fn attributes(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.view.attributes(self.index)
    }

    /// Companion lines (`#EXTVLCOPT` and the like).
    pub fn extras(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.view.extras(self.index)
    }

    /// The channel as a [`Channel`] value borrowing from the batch (for a
    /// [`crate::Transformer`] that adds a changed copy). Allocates.
    pub fn to_channel(&self) -> Channel<'a> {
        self.view.channel(self.index)
    }
}
