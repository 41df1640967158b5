//! The streaming M3U writer.
//!
//! Output is written through an internal 64 KiB [`BufWriter`] in small
//! slices, with no per-channel allocation. Each channel becomes:
//!
//! ```text
//! #EXTINF:<duration or -1> tvg-id="…" tvg-name="…" tvg-chno="…" tvg-logo="…" tvg-shift="…" group-title="…" <other attributes>,<channel_name>
//! <extras, one per line>
//! <stream_url>
//! ```
//!
//! Typed attributes are written only when non-empty, in that order; other
//! attributes are always written, quoted, in their order. Companion lines go
//! between the `#EXTINF` line and the URL, where players look for them.
//!
//! M3U cannot represent every string, so the writer changes the few
//! characters that would corrupt the playlist:
//! - `"` inside an attribute value becomes `'` (values are always quoted and
//!   M3U has no escape);
//! - a line break (`\r` or `\n`) in any field becomes a space;
//! - in attribute names, whitespace, `=`, `,` and `"` become `_`;
//! - a duration that is empty or contains whitespace, `,`, `=` or `"` is
//!   written as `-1`;
//! - an extras line that does not start with `#` gets a `#` prefix; extras
//!   that are `#EXTINF`/`#EXTM3U` lines or blank are left out.
//!
//! A channel whose `stream_url` is blank or starts with `#` cannot be written
//! at all; it is skipped, logged and counted ([`M3uWriter::skipped`]).

use std::io::{BufWriter, Write};

use super::PlaylistHeader;
use crate::abi::Channel;
use crate::{Error, Result};

/// Skipped-channel warnings logged individually.
const MAX_WARNINGS: u64 = 20;

/// Writes an M3U playlist, one channel at a time.
///
/// ```
/// use m3u_plugin_host::m3u::{M3uWriter, PlaylistHeader};
/// use m3u_plugin_host::OwnedChannel;
/// let header = PlaylistHeader { attributes: vec![("x-tvg-url".into(), "http://epg".into())] };
/// let mut writer = M3uWriter::new(Vec::new(), &header).unwrap();
/// writer
///     .write_channel(&OwnedChannel {
///         tvg_id: "a.uk".into(),
///         channel_name: "A".into(),
///         stream_url: "http://a".into(),
///         ..OwnedChannel::default()
///     })
///     .unwrap();
/// let out = writer.finish().unwrap();
/// assert_eq!(
///     String::from_utf8(out).unwrap(),
///     "#EXTM3U x-tvg-url=\"http://epg\"\n#EXTINF:-1 tvg-id=\"a.uk\",A\nhttp://a\n"
/// );
/// ```
pub struct M3uWriter<W: Write> {
    out: BufWriter<W>,
    written: u64,
    skipped: u64,
}

impl<W: Write> M3uWriter<W> {
    /// Starts a playlist on `writer`: writes the `#EXTM3U` line with
    /// `header`'s attributes (quoted, in order).
    pub fn new(writer: W, header: &PlaylistHeader) -> Result<Self> {
        let mut out = BufWriter::with_capacity(64 * 1024, writer);
        out.write_all(b"#EXTM3U")?;
        for (name, value) in &header.attributes {
            write_attribute(&mut out, name, value)?;
        }
        out.write_all(b"\n")?;
        Ok(M3uWriter {
            out,
            written: 0,
            skipped: 0,
        })
    }

    /// Appends one channel (see the module docs for the layout and the
    /// characters that are replaced). A channel without a usable
    /// `stream_url` is skipped and counted, not an error.
    pub fn write_channel(&mut self, channel: &Channel<'_>) -> Result<()> {
        if format_channel(&mut self.out, channel)? {
            self.written += 1;
        } else {
            self.note_unwritable(channel.id, &channel.channel_name);
        }
        Ok(())
    }

    /// Appends a batch formatted elsewhere (on a worker thread): the same
    /// bytes, counts and warnings as writing its channels one by one.
    pub fn write_formatted(&mut self, batch: &FormattedBatch) -> Result<()> {
        self.out.write_all(&batch.text)?;
        self.written += batch.written;
        for (id, name) in &batch.unwritable {
            self.note_unwritable(*id, name);
        }
        Ok(())
    }

    fn note_unwritable(&mut self, id: u64, name: &str) {
        self.skipped += 1;
        if self.skipped <= MAX_WARNINGS {
            log::warn!("m3u output: channel {id} ({name:?}) has no usable stream URL; not written");
        }
    }

    /// Channels written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Channels skipped because they had no usable `stream_url`.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Flushes everything and returns the underlying writer.
    pub fn finish(self) -> Result<W> {
        let mut writer = self
            .out
            .into_inner()
            .map_err(|e| Error::from(e.into_error()))?;
        writer.flush()?;
        Ok(writer)
    }
}

/// A batch turned into M3U text off the writer's thread, for
/// [`M3uWriter::write_formatted`].
#[derive(Debug, Default)]
pub struct FormattedBatch {
    text: Vec<u8>,
    written: u64,
    /// Channels with no usable stream URL: (id, name), for the warnings.
    unwritable: Vec<(u64, String)>,
}

impl FormattedBatch {
    /// Formats `batch` as [`M3uWriter::write_channel`] would, one channel
    /// after another.
    pub fn format(batch: &[Channel<'_>]) -> Self {
        let mut formatted = FormattedBatch::default();
        for channel in batch {
            // Writing into a Vec cannot fail.
            if format_channel(&mut formatted.text, channel).unwrap_or(false) {
                formatted.written += 1;
            } else {
                formatted
                    .unwritable
                    .push((channel.id, channel.channel_name.to_string()));
            }
        }
        formatted
    }

    /// Channels of the batch, written or not.
    pub fn channels(&self) -> u64 {
        self.written + self.unwritable.len() as u64
    }
}

/// Appends `channel` as M3U text (see the module docs), or nothing and
/// `false` if it has no usable stream URL.
fn format_channel(out: &mut impl Write, channel: &Channel<'_>) -> std::io::Result<bool> {
    let url = channel.stream_url.trim();
    if url.is_empty() || url.starts_with('#') {
        return Ok(false);
    }
    out.write_all(b"#EXTINF:")?;
    let duration = channel.duration.as_ref();
    if duration.is_empty()
        || duration
            .bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b',' | b'=' | b'"'))
    {
        out.write_all(b"-1")?;
    } else {
        out.write_all(duration.as_bytes())?;
    }
    for (name, value) in [
        ("tvg-id", &channel.tvg_id),
        ("tvg-name", &channel.tvg_name),
        ("tvg-chno", &channel.tvg_chno),
        ("tvg-logo", &channel.tvg_logo),
        ("tvg-shift", &channel.tvg_shift),
        ("group-title", &channel.group_title),
    ] {
        if !value.is_empty() {
            write_attribute(out, name, value)?;
        }
    }
    for attribute in &channel.attributes {
        write_attribute(out, &attribute.name, &attribute.value)?;
    }
    out.write_all(b",")?;
    write_text(out, &channel.channel_name)?;
    out.write_all(b"\n")?;
    for extra in &channel.extras {
        let extra = extra.trim();
        if extra.is_empty() || is_directive(extra, "#EXTINF") || is_directive(extra, "#EXTM3U") {
            continue;
        }
        if !extra.starts_with('#') {
            out.write_all(b"#")?;
        }
        write_text(out, extra)?;
        out.write_all(b"\n")?;
    }
    write_text(out, url)?;
    out.write_all(b"\n")?;
    Ok(true)
}

/// ` name="value"`, with the replacements of the module docs.
fn write_attribute(out: &mut impl Write, name: &str, value: &str) -> std::io::Result<()> {
    out.write_all(b" ")?;
    write_replacing(
        out,
        name,
        |rest| {
            rest.iter()
                .position(|&b| b.is_ascii_whitespace() || matches!(b, b'=' | b',' | b'"'))
        },
        |_| b'_',
    )?;
    out.write_all(b"=\"")?;
    write_replacing(
        out,
        value,
        |rest| memchr::memchr3(b'"', b'\r', b'\n', rest),
        |b| if b == b'"' { b'\'' } else { b' ' },
    )?;
    out.write_all(b"\"")
}

/// Free text (title, URL, extras line): line breaks become spaces.
fn write_text(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    write_replacing(
        out,
        text,
        |rest| memchr::memchr2(b'\r', b'\n', rest),
        |_| b' ',
    )
}

/// Writes `text`, replacing each byte `find` finds (it returns the first
/// position in what is left) by `substitute(byte)`. `find` finds only ASCII
/// bytes, so UTF-8 stays valid.
fn write_replacing(
    out: &mut impl Write,
    text: &str,
    find: impl Fn(&[u8]) -> Option<usize>,
    substitute: impl Fn(u8) -> u8,
) -> std::io::Result<()> {
    let mut rest = text.as_bytes();
    while let Some((before, found)) = find(rest).map(|i| rest.split_at(i)) {
        let Some((&byte, after)) = found.split_first() else {
            break;
        };
        out.write_all(before)?;
        out.write_all(&[substitute(byte)])?;
        rest = after;
    }
    out.write_all(rest)
}

/// True if `line` starts with the directive `name` (ASCII case-insensitive).
fn is_directive(line: &str, name: &str) -> bool {
    line.get(..name.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::Attribute;
    use crate::m3u::{read_all, M3uReader};
    use crate::OwnedChannel;
    use std::borrow::Cow;
    use std::time::Instant;

    fn write_all(header: &PlaylistHeader, channels: &[OwnedChannel]) -> String {
        let mut writer = M3uWriter::new(Vec::new(), header).unwrap();
        for channel in channels {
            writer.write_channel(channel).unwrap();
        }
        String::from_utf8(writer.finish().unwrap()).unwrap()
    }

    #[test]
    fn layout_and_order() {
        let channel = OwnedChannel {
            id: 9,
            duration: "0".into(),
            tvg_id: "id".into(),
            tvg_name: "name".into(),
            tvg_chno: "5".into(),
            tvg_logo: "logo".into(),
            tvg_shift: "1".into(),
            group_title: "g".into(),
            channel_name: "Title, with comma".into(),
            stream_url: "http://x|user-agent=UA".into(),
            attributes: vec![
                Attribute {
                    name: "tvg-country".into(),
                    value: "".into(),
                },
                Attribute {
                    name: "catchup".into(),
                    value: "default".into(),
                },
            ],
            extras: vec!["#EXTVLCOPT:a=b".into(), "#KODIPROP:c=d".into()],
            ..OwnedChannel::default()
        };
        let header = PlaylistHeader {
            attributes: vec![("url-tvg".into(), "e".into())],
        };
        assert_eq!(
            write_all(&header, &[channel]),
            concat!(
                "#EXTM3U url-tvg=\"e\"\n",
                "#EXTINF:0 tvg-id=\"id\" tvg-name=\"name\" tvg-chno=\"5\" tvg-logo=\"logo\" ",
                "tvg-shift=\"1\" group-title=\"g\" tvg-country=\"\" catchup=\"default\",Title, with comma\n",
                "#EXTVLCOPT:a=b\n#KODIPROP:c=d\n",
                "http://x|user-agent=UA\n",
            )
        );
    }

    #[test]
    fn unrepresentable_characters_are_replaced() {
        let channel = OwnedChannel {
            duration: "1 2".into(),
            tvg_name: "Say \"hi\"\nnow".into(),
            channel_name: "Two\r\nlines".into(),
            stream_url: " http://x/\na \n".into(),
            attributes: vec![Attribute {
                name: "bad name=\"x\",".into(),
                value: "v".into(),
            }],
            extras: vec![
                "no hash".into(),
                "".into(),
                "#EXTINF:-1,evil".into(),
                "#extm3u".into(),
                "#EXTVLCOPT:a\nb".into(),
            ],
            ..OwnedChannel::default()
        };
        let text = write_all(&PlaylistHeader::default(), &[channel]);
        assert_eq!(
            text,
            concat!(
                "#EXTM3U\n",
                "#EXTINF:-1 tvg-name=\"Say 'hi' now\" bad_name__x__=\"v\",Two  lines\n",
                "#no hash\n",
                "#EXTVLCOPT:a b\n",
                "http://x/ a\n",
            )
        );
        let (_, channels, malformed) = read_all(&text, 0);
        assert_eq!((channels.len(), malformed), (1, 0));
        assert_eq!(channels[0].tvg_name, "Say 'hi' now");
    }

    #[test]
    fn channel_without_url_is_skipped() {
        let mut writer = M3uWriter::new(Vec::new(), &PlaylistHeader::default()).unwrap();
        for url in ["", "  ", "#EXTINF:-1,x", "http://ok"] {
            let channel = OwnedChannel {
                stream_url: Cow::Borrowed(url),
                ..OwnedChannel::default()
            };
            writer.write_channel(&channel).unwrap();
        }
        assert_eq!((writer.written(), writer.skipped()), (1, 3));
        let text = String::from_utf8(writer.finish().unwrap()).unwrap();
        assert_eq!(text, "#EXTM3U\n#EXTINF:-1,\nhttp://ok\n");
    }

    #[test]
    fn a_formatted_batch_writes_what_its_channels_would() {
        let file = std::fs::read_to_string(FIXTURE).unwrap();
        let (header, mut channels, _) = read_all(&file, 1);
        channels[3].stream_url = Cow::Borrowed("  ");
        channels[700].stream_url = Cow::Borrowed("#x");
        let one_by_one = write_all(&header, &channels);
        let mut writer = M3uWriter::new(Vec::new(), &header).unwrap();
        for batch in channels.chunks(1000) {
            writer
                .write_formatted(&FormattedBatch::format(batch))
                .unwrap();
        }
        let counts = (writer.written(), writer.skipped());
        assert_eq!(counts, (channels.len() as u64 - 2, 2));
        let formatted = String::from_utf8(writer.finish().unwrap()).unwrap();
        assert!(formatted == one_by_one, "formatted batches differ");
    }

    #[test]
    fn round_trip_of_edge_cases() {
        let input = concat!(
            "\u{feff}#EXTM3U x-tvg-url=\"a,b\" tvg-shift=2\r\n",
            "# comment\r\n",
            "#EXTINF:-1.000 tvg-ID=\"x\" tvg-name=\"\" tvg-id=\"dup\" radio=true hidden,A, \"B\" [C]\r\n",
            "#EXTGRP:Group\r\n",
            "#EXTVLCOPT:http-user-agent=UA\r\n",
            "#KODIPROP:k=v\r\n",
            "http://a|user-agent=UA\r\n",
            "http://host/path/plain.ts\r\n",
            "#EXTINF:0 tvg-name=\"\"Foo\"\" group-title=\"\",Bare\r\n",
            "#EXTGRP:G2\r\n",
            "rtmp://r/app/stream\r\n",
        );
        let (header, first, malformed) = read_all(input, 1);
        assert_eq!((first.len(), malformed), (3, 0));
        let text = write_all(&header, &first);
        let (header2, second, malformed) = read_all(&text, 1);
        assert_eq!(malformed, 0);
        assert_eq!(header2, header);
        assert_eq!(second, first);
    }

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/m3u/iptv-org-index-2021.m3u"
    );

    #[test]
    fn round_trip_of_real_playlist() {
        let file = std::fs::File::open(FIXTURE).unwrap();
        let mut reader = M3uReader::new(std::io::BufReader::new(file), 2);
        let first: Vec<OwnedChannel> = reader.by_ref().map(|c| c.unwrap()).collect();
        // The file has 10,525 `#EXTINF` lines, each followed by its URL (89 of
        // them with `#EXTVLCOPT` lines in between), and nothing malformed: every
        // entry is read, so the count is exactly the number of `#EXTINF` lines.
        assert_eq!(first.len(), 10_525);
        assert_eq!(reader.malformed(), 0);
        assert_eq!(reader.line_number(), 21_140);
        let with_extras = first.iter().filter(|c| !c.extras.is_empty()).count();
        assert_eq!(
            first.iter().map(|c| c.extras.len()).sum::<usize>(),
            89,
            "{with_extras} entries with extras"
        );
        assert_eq!(first[0].tvg_id, "Flix.in");
        assert_eq!(first[0].tvg_name, "&Flix");
        assert_eq!(first[0].channel_name, "&Flix");
        assert_eq!(first[0].group_title, "Movies");
        assert_eq!(first[0].attribute("tvg-language"), Some("English"));
        assert!(first.iter().all(|c| c.source_id == 2 && c.id == 0));

        let text = write_all(reader.header(), &first);
        let mut reader2 = M3uReader::new(text.as_bytes(), 2);
        let second: Vec<OwnedChannel> = reader2.by_ref().map(|c| c.unwrap()).collect();
        assert_eq!(reader2.malformed(), 0);
        assert_eq!(reader2.header(), reader.header());
        assert_eq!(second.len(), first.len());
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a, b);
        }
        // Writing is a fixed point after the first round.
        assert_eq!(write_all(reader2.header(), &second), text);
    }

    /// Parse + write throughput on 100k channels. Run with
    /// `cargo test --release --lib m3u::writer::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release mode"]
    fn throughput() {
        let fixture = std::fs::read_to_string(FIXTURE).unwrap();
        let body = fixture.trim_start_matches("#EXTM3U\n");
        let mut input = String::from("#EXTM3U\n");
        while input.len() < body.len() * 10 {
            input.push_str(body);
        }
        let mut out = Vec::with_capacity(input.len() * 2);
        let start = Instant::now();
        let mut reader = M3uReader::new(input.as_bytes(), 0);
        let mut writer = M3uWriter::new(&mut out, &PlaylistHeader::default()).unwrap();
        let mut count = 0u64;
        for channel in reader.by_ref() {
            writer.write_channel(&channel.unwrap()).unwrap();
            count += 1;
        }
        writer.finish().unwrap();
        let elapsed = start.elapsed();
        println!(
            "{count} channels parsed+written in {elapsed:?}: {:.0} channels/s, {:.0} MB/s in",
            count as f64 / elapsed.as_secs_f64(),
            input.len() as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
}
