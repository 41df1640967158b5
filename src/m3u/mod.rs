//! Streaming M3U / M3U8 playlist reading and writing.
//!
//! The dialect is the de-facto one of Kodi's `pvr.iptvsimple` (which is also
//! what iptv-org, Xtream panels and most players emit):
//!
//! ```text
//! #EXTM3U x-tvg-url="http://example.com/epg.xml.gz" catchup="default"
//! #EXTINF:-1 tvg-id="One.uk" tvg-name="One" tvg-logo="http://…/1.png" group-title="News",One HD
//! #EXTVLCOPT:http-user-agent=Mozilla/5.0
//! http://example.com/one.m3u8|user-agent=Mozilla
//! ```
//!
//! - [`M3uReader`] turns any [`std::io::BufRead`] into an iterator of
//!   [`OwnedChannel`]s in constant memory (one line buffer of at most
//!   [`MAX_LINE_LEN`] bytes plus the entry being assembled). Malformed entries
//!   are logged, counted and skipped; only I/O errors end the iteration.
//! - [`M3uWriter`] writes channels back; parse → write → parse yields equal
//!   channels for every playlist the reader accepts (see the writer's docs for
//!   the few characters M3U cannot represent).
//! - [`read_all`] is a convenience for tests and small in-memory playlists.

mod reader;
mod writer;

pub use reader::M3uReader;
pub use writer::{FormattedBatch, M3uWriter};

use crate::OwnedChannel;

/// Longest line the reader accepts, in bytes (without the line feed). Longer
/// lines are never buffered whole: the reader keeps their first
/// `MAX_LINE_LEN` bytes to classify them and skips the entry they belong to.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// The attributes of the playlist's `#EXTM3U` line, e.g. `x-tvg-url`,
/// `url-tvg`, `tvg-shift`, `catchup`, `catchup-days`, `catchup-source`.
///
/// Names keep their original spelling and case, values are unquoted, and the
/// order is the source order. A playlist without an `#EXTM3U` line (plain
/// M3U) has an empty header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PlaylistHeader {
    /// `(name, value)` pairs in source order.
    pub attributes: Vec<(String, String)>,
}

impl PlaylistHeader {
    /// The value of the first attribute called `name` (ASCII case-insensitive).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a whole in-memory playlist: its header, every valid channel (with
/// `source_id` set and `id` 0) and the number of malformed entries skipped.
///
/// ```
/// let (header, channels, malformed) = m3u_plugin_host::m3u::read_all(
///     "#EXTM3U x-tvg-url=\"http://epg\"\n#EXTINF:-1 tvg-id=\"a\",A\nhttp://a\n",
///     3,
/// );
/// assert_eq!(header.attribute("x-tvg-url"), Some("http://epg"));
/// assert_eq!(channels[0].channel_name, "A");
/// assert_eq!(channels[0].source_id, 3);
/// assert_eq!(malformed, 0);
/// ```
pub fn read_all(input: &str, source_id: u32) -> (PlaylistHeader, Vec<OwnedChannel>, u64) {
    let mut reader = M3uReader::new(input.as_bytes(), source_id);
    let mut channels = Vec::new();
    // Reading from a byte slice cannot fail, so `Err` never occurs here.
    for channel in reader.by_ref().flatten() {
        channels.push(channel);
    }
    let header = reader.header().clone();
    (header, channels, reader.malformed())
}
