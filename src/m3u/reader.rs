//! The streaming M3U reader.
//!
//! Lines are read with `fill_buf`/`consume` into one reusable buffer capped at
//! [`MAX_LINE_LEN`], so memory stays constant whatever the input. Every line
//! is classified by its first characters:
//!
//! - `#EXTM3U …` — the playlist header (only the first one, and only before
//!   the first entry; later ones are ignored);
//! - `#EXTINF:…` — starts an entry (duration, attributes, title);
//! - any other `#…` line — a companion line of the entry being assembled,
//!   kept verbatim in `extras` (`#EXTGRP:` also supplies a missing group);
//! - anything else — the stream URL, which completes the entry.
//!
//! An entry is everything from the line after the previous URL up to and
//! including its own URL. Malformed entries are skipped as a whole and counted
//! (see [`M3uReader::malformed`]); every valid entry survives.

use std::borrow::Cow;
use std::io::{self, BufRead};

use super::{PlaylistHeader, MAX_LINE_LEN};
use crate::abi::Attribute;
use crate::{Error, OwnedChannel, Result};

/// Malformed-entry warnings logged individually; the rest are summarised.
const MAX_WARNINGS: u64 = 20;
/// Companion lines kept per entry; more are dropped (the entry survives).
const MAX_EXTRAS_LINES: usize = 1024;
/// Bytes of companion lines kept per entry; more are dropped.
const MAX_EXTRAS_BYTES: usize = 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How a call to [`read_line`] ended.
enum LineStatus {
    /// No more input.
    Eof,
    /// A whole line is in the buffer (without its `\n`).
    Complete,
    /// The line was longer than [`MAX_LINE_LEN`]; the buffer holds its start.
    TooLong,
}

/// The entry being assembled.
#[derive(Default)]
struct Pending {
    /// Fields filled so far (extras, EXTINF data).
    channel: OwnedChannel,
    /// An `#EXTINF` line belongs to this entry.
    has_extinf: bool,
    /// 1-based line of that `#EXTINF`.
    extinf_line: usize,
    /// The entry is malformed (already counted): skip it up to its URL.
    poisoned: bool,
    /// Index in `channel.extras` of the first `#EXTGRP:` line.
    extgrp: Option<usize>,
    /// Bytes held in `channel.extras`.
    extras_bytes: usize,
    /// Companion lines were dropped because of the per-entry caps.
    extras_dropped: bool,
}

/// A streaming M3U reader: an iterator of the playlist's channels.
///
/// Produced channels have `id` 0 (the pipeline assigns ids) and the
/// `source_id` given to [`M3uReader::new`]. Typed EXTINF attributes
/// (`tvg-id`, `tvg-name`, `tvg-chno`, `tvg-logo`, `tvg-shift`,
/// `group-title`, matched ASCII case-insensitively) go to their fields, every
/// other attribute to `attributes` with its original name, in source order.
/// If a typed attribute appears twice, the first non-empty value fills the
/// field and any later one is kept in `attributes`, so nothing is lost.
///
/// The iterator yields `Err` only for I/O errors, after which it ends.
/// Malformed entries (an `#EXTINF` without URL, an unterminated quote, a line
/// that is not UTF-8 or longer than [`MAX_LINE_LEN`]) are logged with
/// `log::warn!` (the first 20, then one summary at the end), counted in
/// [`M3uReader::malformed`] and skipped.
///
/// ```
/// use m3u_plugin_host::m3u::M3uReader;
/// let input = "#EXTM3U\n#EXTINF:-1 tvg-ID=\"bbc1.uk\" group-title=\"UK\",BBC One, HD\nhttp://x/bbc1\n";
/// let mut reader = M3uReader::new(input.as_bytes(), 0);
/// let channel = reader.next().unwrap().unwrap();
/// assert_eq!(channel.tvg_id, "bbc1.uk");
/// assert_eq!(channel.channel_name, "BBC One, HD");
/// assert!(reader.next().is_none());
/// ```
pub struct M3uReader<R: BufRead> {
    inner: R,
    source_id: u32,
    header: PlaylistHeader,
    /// An `#EXTM3U` line would still be taken as the header.
    header_open: bool,
    /// 1-based number of the last line read.
    line_no: usize,
    /// The current line (at most [`MAX_LINE_LEN`] bytes).
    buf: Vec<u8>,
    pending: Pending,
    malformed: u64,
    /// Warnings wanted so far (logged or not).
    warnings: u64,
    finished: bool,
}

impl<R: BufRead> M3uReader<R> {
    /// A reader of `reader`'s playlist whose channels get `source_id`.
    pub fn new(reader: R, source_id: u32) -> Self {
        M3uReader {
            inner: reader,
            source_id,
            header: PlaylistHeader::default(),
            header_open: true,
            line_no: 0,
            buf: Vec::new(),
            pending: Pending::default(),
            malformed: 0,
            warnings: 0,
            finished: false,
        }
    }

    /// The attributes of the `#EXTM3U` line: empty until the first call to
    /// `next()` has read it, and for playlists without one.
    pub fn header(&self) -> &PlaylistHeader {
        &self.header
    }

    /// How many malformed entries (and stray unreadable lines) were skipped
    /// so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// 1-based number of the last line read (0 before the first).
    pub fn line_number(&self) -> usize {
        self.line_no
    }

    /// Logs a warning about `line`, or counts it once the budget is spent.
    fn warn(&mut self, line: usize, message: &str) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            log::warn!("m3u source {}: line {line}: {message}", self.source_id);
        }
    }

    /// Counts one malformed entry and logs why.
    fn count_malformed(&mut self, line: usize, cause: &str) {
        self.malformed += 1;
        self.warn(line, &format!("{cause}; entry skipped"));
    }

    /// Marks the pending entry malformed (once) and drops what it held.
    fn poison(&mut self, line: usize, cause: &str) {
        if !self.pending.poisoned {
            self.pending.poisoned = true;
            self.pending.channel = OwnedChannel::default();
            self.pending.extgrp = None;
            self.count_malformed(line, cause);
        }
    }

    /// Dispatches one complete line.
    fn handle_line(&mut self, raw: &[u8]) -> Option<OwnedChannel> {
        let raw = self.strip_bom(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            return self.handle_bad_line(raw, "line is not valid UTF-8");
        };
        let line = text.trim();
        if line.is_empty() {
            return None;
        }
        if !line.starts_with('#') {
            // No URL holds control characters: this is binary junk that
            // happens to be UTF-8 (NUL runs, a PNG header), not a channel.
            if line.bytes().any(|b| b != b'\t' && b.is_ascii_control()) {
                return self.handle_bad_line(raw, "line has control characters");
            }
            return self.on_url(line);
        }
        if let Some(rest) = strip_prefix_ci(line, "#EXTINF") {
            let body = rest.strip_prefix(':').unwrap_or(rest);
            self.on_extinf(Some(body), "");
        } else if let Some(attributes) = extm3u_body(line) {
            self.on_header(attributes);
        } else {
            self.on_extra(line);
        }
        None
    }

    /// Handles a line that is not UTF-8 or too long (`raw` is its start).
    fn handle_bad_line(&mut self, raw: &[u8], cause: &str) -> Option<OwnedChannel> {
        let raw = self.strip_bom(raw);
        let lead = trim_ascii_start(raw);
        if starts_with_ci(lead, b"#EXTINF") {
            self.on_extinf(None, cause);
        } else if starts_with_ci(lead, b"#EXTM3U") {
            self.warn(self.line_no, &format!("#EXTM3U header: {cause}"));
            let text = String::from_utf8_lossy(lead);
            if let Some(attributes) = extm3u_body(text.trim()) {
                self.on_header(attributes);
            }
        } else if lead.first() == Some(&b'#') {
            self.poison(self.line_no, cause);
        } else {
            // A URL line: it completes (and spoils) the pending entry.
            self.header_open = false;
            let pending = std::mem::take(&mut self.pending);
            if !pending.poisoned {
                self.count_malformed(self.line_no, &format!("stream URL line: {cause}"));
            }
        }
        None
    }

    fn strip_bom<'b>(&self, raw: &'b [u8]) -> &'b [u8] {
        if self.line_no == 1 {
            raw.strip_prefix(BOM).unwrap_or(raw)
        } else {
            raw
        }
    }

    /// `#EXTM3U` line: the header if it is the first one before any entry.
    fn on_header(&mut self, attributes: &str) {
        if self.header_open {
            self.header_open = false;
            scan_attributes(attributes, |name, value| {
                self.header
                    .attributes
                    .push((name.to_owned(), value.to_owned()));
            });
        }
    }

    /// `#EXTINF` line; `body` is `None` when the line was unreadable (`cause`).
    fn on_extinf(&mut self, body: Option<&str>, cause: &str) {
        self.header_open = false;
        if self.pending.has_extinf {
            if !self.pending.poisoned {
                self.count_malformed(
                    self.pending.extinf_line,
                    "#EXTINF without a stream URL (followed by another #EXTINF)",
                );
            }
            self.pending = Pending::default();
        }
        self.pending.has_extinf = true;
        self.pending.extinf_line = self.line_no;
        if self.pending.poisoned {
            return;
        }
        let parsed = match body {
            Some(body) => parse_extinf(body, &mut self.pending.channel),
            None => Err(cause),
        };
        if let Err(cause) = parsed {
            self.poison(self.line_no, cause);
        }
    }

    /// Any other `#` line: kept verbatim in the pending entry's extras.
    fn on_extra(&mut self, line: &str) {
        if self.pending.poisoned {
            return;
        }
        if self.pending.channel.extras.len() >= MAX_EXTRAS_LINES
            || self.pending.extras_bytes + line.len() > MAX_EXTRAS_BYTES
        {
            if !self.pending.extras_dropped {
                self.pending.extras_dropped = true;
                self.warn(
                    self.line_no,
                    "too many companion lines for one entry; dropping the rest",
                );
            }
            return;
        }
        let pending = &mut self.pending;
        if pending.extgrp.is_none() && strip_prefix_ci(line, "#EXTGRP:").is_some() {
            pending.extgrp = Some(pending.channel.extras.len());
        }
        pending.extras_bytes += line.len();
        pending.channel.extras.push(Cow::Owned(line.to_owned()));
    }

    /// A URL line: completes the pending entry.
    fn on_url(&mut self, url: &str) -> Option<OwnedChannel> {
        self.header_open = false;
        let pending = std::mem::take(&mut self.pending);
        if pending.poisoned {
            return None;
        }
        let mut channel = pending.channel;
        if !pending.has_extinf {
            channel.duration = Cow::Borrowed("-1");
            channel.channel_name = owned(name_from_url(url));
        }
        if channel.group_title.is_empty() {
            let group = pending
                .extgrp
                .and_then(|i| channel.extras.get(i))
                .and_then(|line| line.get("#EXTGRP:".len()..))
                .map(str::trim);
            if let Some(group) = group {
                channel.group_title = owned(group);
            }
        }
        channel.stream_url = owned(url);
        channel.source_id = self.source_id;
        channel.id = 0;
        Some(channel)
    }

    /// End of input: an open `#EXTINF` has no URL; log the summary.
    fn end_of_input(&mut self) {
        self.finished = true;
        let pending = std::mem::take(&mut self.pending);
        if pending.has_extinf && !pending.poisoned {
            self.count_malformed(
                pending.extinf_line,
                "#EXTINF without a stream URL (end of input)",
            );
        }
        if self.warnings > MAX_WARNINGS {
            log::warn!(
                "m3u source {}: {} more warnings not shown; {} malformed entries skipped in total",
                self.source_id,
                self.warnings - MAX_WARNINGS,
                self.malformed
            );
        }
    }
}

impl<R: BufRead> Iterator for M3uReader<R> {
    type Item = Result<OwnedChannel>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let status = match read_line(&mut self.inner, &mut self.buf) {
                Ok(status) => status,
                Err(source) => {
                    self.finished = true;
                    return Some(Err(Error::from(source)));
                }
            };
            let line = std::mem::take(&mut self.buf);
            let produced = match status {
                LineStatus::Eof => {
                    self.end_of_input();
                    None
                }
                LineStatus::Complete => {
                    self.line_no += 1;
                    self.handle_line(&line)
                }
                LineStatus::TooLong => {
                    self.line_no += 1;
                    self.handle_bad_line(&line, "line longer than 64 KiB")
                }
            };
            self.buf = line;
            if produced.is_some() {
                return produced.map(Ok);
            }
        }
        None
    }
}

/// Reads one line into `buf` (cleared first) without its `\n`, keeping at
/// most [`MAX_LINE_LEN`] bytes and consuming the rest of a longer line.
fn read_line<R: BufRead>(inner: &mut R, buf: &mut Vec<u8>) -> io::Result<LineStatus> {
    buf.clear();
    let mut any = false;
    let mut too_long = false;
    loop {
        let available = match inner.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => LineStatus::Eof,
                (true, false) => LineStatus::Complete,
                (true, true) => LineStatus::TooLong,
            });
        }
        any = true;
        let (content, used, end_of_line) = match memchr::memchr(b'\n', available) {
            Some(i) => (available.get(..i).unwrap_or(available), i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            let room = MAX_LINE_LEN.saturating_sub(buf.len());
            if content.len() > room {
                buf.extend_from_slice(content.get(..room).unwrap_or_default());
                too_long = true;
            } else {
                buf.extend_from_slice(content);
            }
        }
        inner.consume(used);
        if end_of_line {
            return Ok(if too_long {
                LineStatus::TooLong
            } else {
                LineStatus::Complete
            });
        }
    }
}

/// Parses an `#EXTINF` line after `#EXTINF:` into `channel`'s duration,
/// attributes and title. Fails only on an unterminated quote.
fn parse_extinf(body: &str, channel: &mut OwnedChannel) -> std::result::Result<(), &'static str> {
    // The title starts after the first comma outside double quotes.
    let bytes = body.as_bytes();
    let mut in_quotes = false;
    let mut comma = None;
    for i in memchr::memchr2_iter(b'"', b',', bytes) {
        if bytes.get(i) == Some(&b'"') {
            in_quotes = !in_quotes;
        } else if !in_quotes {
            comma = Some(i);
            break;
        }
    }
    let (head, title) = match comma {
        Some(i) => (body.get(..i).unwrap_or(""), body.get(i + 1..).unwrap_or("")),
        None if in_quotes => return Err("unterminated quote in #EXTINF"),
        None => (body, ""),
    };

    // Duration: the first token, unless it is already an attribute.
    let head = head.trim_start();
    let token_end = head
        .bytes()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(head.len());
    let token = head.get(..token_end).unwrap_or("");
    let attributes = if token.bytes().any(|b| b == b'=' || b == b'"') {
        head
    } else {
        channel.duration = duration(token);
        head.get(token_end..).unwrap_or("")
    };

    scan_attributes(attributes, |name, value| {
        let typed = if name.len() < 6 {
            None
        } else if name.eq_ignore_ascii_case("tvg-id") {
            Some(&mut channel.tvg_id)
        } else if name.eq_ignore_ascii_case("tvg-name") {
            Some(&mut channel.tvg_name)
        } else if name.eq_ignore_ascii_case("tvg-logo") {
            Some(&mut channel.tvg_logo)
        } else if name.eq_ignore_ascii_case("group-title") {
            Some(&mut channel.group_title)
        } else if name.eq_ignore_ascii_case("tvg-chno") {
            Some(&mut channel.tvg_chno)
        } else if name.eq_ignore_ascii_case("tvg-shift") {
            Some(&mut channel.tvg_shift)
        } else {
            None
        };
        match typed {
            Some(field) if field.is_empty() => *field = owned(value),
            _ => channel.attributes.push(Attribute {
                name: attribute_name(name),
                value: owned(value),
            }),
        }
    });
    channel.channel_name = owned(title.trim());
    Ok(())
}

/// Calls `f(name, value)` for each `name="value"`, `name=value` or bare `name`
/// (empty value) in `s`. Quoted values run to the next `"` (or the end),
/// unquoted ones to whitespace or `"`; a quoted string with no name is
/// skipped.
fn scan_attributes<'s>(s: &'s str, mut f: impl FnMut(&'s str, &'s str)) {
    let bytes = s.as_bytes();
    let len = bytes.len();
    let slice = |from: usize, to: usize| s.get(from..to).unwrap_or("");
    let mut i = 0;
    loop {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let Some(&first) = bytes.get(i) else { break };
        let start = i;
        if first != b'=' && first != b'"' {
            while bytes
                .get(i)
                .is_some_and(|&b| !(b.is_ascii_whitespace() || b == b'=' || b == b'"'))
            {
                i += 1;
            }
        }
        let name = slice(start, i);
        match bytes.get(i) {
            Some(b'=') => {
                i += 1;
                let value = if bytes.get(i) == Some(&b'"') {
                    let from = i + 1;
                    let to = find_quote(bytes, from).unwrap_or(len);
                    i = to + 1;
                    slice(from, to)
                } else {
                    let from = i;
                    while bytes
                        .get(i)
                        .is_some_and(|&b| !(b.is_ascii_whitespace() || b == b'"'))
                    {
                        i += 1;
                    }
                    slice(from, i)
                };
                f(name, value);
            }
            Some(b'"') if name.is_empty() => {
                i = find_quote(bytes, i + 1).map_or(len, |to| to + 1);
            }
            _ => f(name, ""),
        }
    }
}

/// Position of the next `"` at or after `from`.
fn find_quote(bytes: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'"', bytes.get(from..)?).map(|i| from + i)
}

/// The attributes after `#EXTM3U`, if `line` is an `#EXTM3U` line.
fn extm3u_body(line: &str) -> Option<&str> {
    let rest = strip_prefix_ci(line, "#EXTM3U")?;
    match rest.bytes().next() {
        None => Some(rest),
        Some(b) if b.is_ascii_whitespace() => Some(rest),
        Some(_) => None,
    }
}

/// `s` without `prefix` (ASCII case-insensitive), if it starts with it.
fn strip_prefix_ci<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn starts_with_ci(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn trim_ascii_start(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if first.is_ascii_whitespace() {
            bytes = rest;
        } else {
            break;
        }
    }
    bytes
}

/// A channel name for a URL without `#EXTINF`: its last path segment
/// (without query, fragment or `|header` suffix), or the whole URL.
fn name_from_url(url: &str) -> &str {
    let end = url.find(['|', '?', '#']).unwrap_or(url.len());
    let base = url.get(..end).unwrap_or(url).trim_end_matches('/');
    let path = match base.find("://") {
        Some(scheme_end) => {
            let authority = base.get(scheme_end + 3..).unwrap_or("");
            match authority.find('/') {
                Some(slash) => authority.get(slash..).unwrap_or(""),
                None => "",
            }
        }
        None => base,
    };
    // Trimmed like an `#EXTINF` title, so the name survives a write → read.
    match path.rsplit('/').next().map(str::trim) {
        Some(segment) if !segment.is_empty() => segment,
        _ => url,
    }
}

/// An owned field value; empty strings do not allocate.
fn owned(value: &str) -> Cow<'static, str> {
    if value.is_empty() {
        Cow::Borrowed("")
    } else {
        Cow::Owned(value.to_owned())
    }
}

/// The duration as written; the usual values do not allocate.
fn duration(value: &str) -> Cow<'static, str> {
    match value {
        "-1" => Cow::Borrowed("-1"),
        "0" => Cow::Borrowed("0"),
        _ => owned(value),
    }
}

/// An attribute name; common names do not allocate.
fn attribute_name(name: &str) -> Cow<'static, str> {
    Cow::Borrowed(match name {
        "tvg-country" => "tvg-country",
        "tvg-language" => "tvg-language",
        "tvg-url" => "tvg-url",
        "tvg-type" => "tvg-type",
        "tvg-rec" => "tvg-rec",
        "tvg-epgid" => "tvg-epgid",
        "tvg-group" => "tvg-group",
        "group-logo" => "group-logo",
        "catchup" => "catchup",
        "catchup-days" => "catchup-days",
        "catchup-source" => "catchup-source",
        "catchup-correction" => "catchup-correction",
        "timeshift" => "timeshift",
        "radio" => "radio",
        "audio-track" => "audio-track",
        "parent-code" => "parent-code",
        "provider" => "provider",
        "provider-type" => "provider-type",
        "user-agent" => "user-agent",
        "http-referrer" => "http-referrer",
        _ => return owned(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m3u::read_all;

    fn one(input: &str) -> OwnedChannel {
        let (_, mut channels, malformed) = read_all(input, 7);
        assert_eq!(malformed, 0, "{input:?}");
        assert_eq!(channels.len(), 1, "{input:?}");
        channels.remove(0)
    }

    fn names(channels: &[OwnedChannel]) -> Vec<&str> {
        channels.iter().map(|c| c.channel_name.as_ref()).collect()
    }

    fn attrs(channel: &OwnedChannel) -> Vec<(&str, &str)> {
        channel
            .attributes
            .iter()
            .map(|a| (a.name.as_ref(), a.value.as_ref()))
            .collect()
    }

    #[test]
    fn typical_entry() {
        let c = one(concat!(
            "#EXTM3U\n",
            "#EXTINF:-1 tvg-id=\"One.uk\" tvg-name=\"One\" tvg-chno=\"101\" tvg-logo=\"http://l/1.png\" ",
            "tvg-shift=\"-2\" tvg-country=\"UK\" group-title=\"News\" catchup=\"default\",One HD\n",
            "http://example.com/one.m3u8\n"
        ));
        assert_eq!(c.id, 0);
        assert_eq!(c.source_id, 7);
        assert_eq!(c.duration, "-1");
        assert_eq!(c.tvg_id, "One.uk");
        assert_eq!(c.tvg_name, "One");
        assert_eq!(c.tvg_chno, "101");
        assert_eq!(c.tvg_logo, "http://l/1.png");
        assert_eq!(c.tvg_shift, "-2");
        assert_eq!(c.group_title, "News");
        assert_eq!(c.channel_name, "One HD");
        assert_eq!(c.stream_url, "http://example.com/one.m3u8");
        assert_eq!(attrs(&c), [("tvg-country", "UK"), ("catchup", "default")]);
        assert!(c.extras.is_empty());
    }

    #[test]
    fn crlf_and_blank_lines_and_whitespace() {
        let input = "\r\n#EXTM3U\r\n\r\n  \t\r\n  #EXTINF:-1 tvg-id=\"a\",A  \r\n\r\n   http://a/1  \r\n\r\n#EXTINF:0,B\r\nhttp://b/2";
        let (_, channels, malformed) = read_all(input, 0);
        assert_eq!(malformed, 0);
        assert_eq!(names(&channels), ["A", "B"]);
        assert_eq!(channels[0].stream_url, "http://a/1");
        assert_eq!(channels[1].stream_url, "http://b/2");
        assert_eq!(channels[1].duration, "0");
    }

    #[test]
    fn utf8_bom() {
        let (header, channels, malformed) =
            read_all("\u{feff}#EXTM3U tvg-shift=1\n#EXTINF:-1,Ä\nhttp://a\n", 0);
        assert_eq!(malformed, 0);
        assert_eq!(header.attributes, [("tvg-shift".into(), "1".into())]);
        assert_eq!(names(&channels), ["Ä"]);
        // A BOM before a plain playlist's first URL.
        let c = one("\u{feff}http://host/live/news.ts\n");
        assert_eq!(c.stream_url, "http://host/live/news.ts");
    }

    #[test]
    fn attribute_names_are_case_insensitive() {
        let c = one("#EXTINF:-1 tvg-ID=\"x.de\" TVG-NAME=\"X\" Group-Title=\"G\" Tvg-Country=\"DE\",X\nhttp://x\n");
        assert_eq!(c.tvg_id, "x.de");
        assert_eq!(c.tvg_name, "X");
        assert_eq!(c.group_title, "G");
        // Other attributes keep their original spelling.
        assert_eq!(attrs(&c), [("Tvg-Country", "DE")]);
        assert_eq!(c.attribute("tvg-country"), Some("DE"));
    }

    #[test]
    fn duplicate_typed_attribute_is_kept() {
        let c = one("#EXTINF:-1 tvg-id=\"\" tvg-id=\"a\" tvg-id=\"b\",X\nhttp://x\n");
        assert_eq!(c.tvg_id, "a");
        assert_eq!(attrs(&c), [("tvg-id", "b")]);
    }

    #[test]
    fn comma_quotes_and_brackets_in_title() {
        let c = one("#EXTINF:-1 tvg-name=\"News, Weather\" group-title=\"A,B\",News, \"Live\" [HD] (1080p), =x\nhttp://n\n");
        assert_eq!(c.tvg_name, "News, Weather");
        assert_eq!(c.group_title, "A,B");
        assert_eq!(c.channel_name, "News, \"Live\" [HD] (1080p), =x");
    }

    #[test]
    fn unquoted_values_and_durations() {
        let c = one("#EXTINF:-1.000 tvg-id=abc tvg-chno=5 radio=true tvg-logo=\"l\",T\nhttp://t\n");
        assert_eq!(c.duration, "-1.000");
        assert_eq!(c.tvg_id, "abc");
        assert_eq!(c.tvg_chno, "5");
        assert_eq!(c.tvg_logo, "l");
        assert_eq!(attrs(&c), [("radio", "true")]);
        // An unquoted value ends at a comma: the rest is the title.
        let c = one("#EXTINF:-1 tvg-logo=http://l/a.png,Title\nhttp://t\n");
        assert_eq!(c.tvg_logo, "http://l/a.png");
        assert_eq!(c.channel_name, "Title");
        // No duration at all, attributes glued together, no space before comma.
        let c = one("#EXTINF:tvg-id=\"a\"tvg-name=\"b\" ,T\nhttp://t\n");
        assert_eq!(c.duration, "");
        assert_eq!((c.tvg_id.as_ref(), c.tvg_name.as_ref()), ("a", "b"));
        // Bare tokens become attributes with an empty value; no comma: no title.
        let c = one("#EXTINF:-1 tvg-id=\"a\" hidden\nhttp://t\n");
        assert_eq!(attrs(&c), [("hidden", "")]);
        assert_eq!(c.channel_name, "");
        // Stray quoted strings inside the attributes are dropped.
        let c = one("#EXTINF:-1 tvg-name=\"\"Foo\"\" x=1,T\nhttp://t\n");
        assert_eq!(attrs(&c), [("Foo", ""), ("x", "1")]);
        assert_eq!(c.channel_name, "T");
    }

    #[test]
    fn extgrp_fills_missing_group() {
        let (_, channels, _) = read_all(
            concat!(
                "#EXTINF:-1,A\n#EXTGRP:Sports\nhttp://a\n",
                "#EXTGRP:Ignored\n#EXTINF:-1 group-title=\"News\",B\nhttp://b\n",
                "#EXTINF:-1 group-title=\"\",C\n#extgrp: Kids \nhttp://c\n",
            ),
            0,
        );
        assert_eq!(names(&channels), ["A", "B", "C"]);
        assert_eq!(channels[0].group_title, "Sports");
        assert_eq!(channels[0].extras, ["#EXTGRP:Sports"]);
        assert_eq!(channels[1].group_title, "News");
        assert_eq!(channels[1].extras, ["#EXTGRP:Ignored"]);
        assert_eq!(channels[2].group_title, "Kids");
        assert_eq!(channels[2].extras, ["#extgrp: Kids"]);
    }

    #[test]
    fn extvlcopt_kodiprop_and_comments_go_to_extras_in_order() {
        let (_, channels, malformed) = read_all(
            concat!(
                "#EXTM3U\n",
                "# a comment before the entry\n",
                "#KODIPROP:inputstream=inputstream.adaptive\n",
                "#EXTINF:-1,A\n",
                "#EXTVLCOPT:http-user-agent=Mozilla/5.0 (X11; Linux)\n",
                "#KODIPROP:inputstream.adaptive.manifest_type=mpd\n",
                "http://a/manifest.mpd\n",
                "#EXTINF:-1,B\n",
                "http://b\n",
                "#EXTVLCOPT:network-caching=1000\n",
            ),
            0,
        );
        assert_eq!(malformed, 0);
        assert_eq!(names(&channels), ["A", "B"]);
        assert_eq!(
            channels[0].extras,
            [
                "# a comment before the entry",
                "#KODIPROP:inputstream=inputstream.adaptive",
                "#EXTVLCOPT:http-user-agent=Mozilla/5.0 (X11; Linux)",
                "#KODIPROP:inputstream.adaptive.manifest_type=mpd",
            ]
        );
        // Trailing companion lines without an entry are dropped, not malformed.
        assert!(channels[1].extras.is_empty());
    }

    #[test]
    fn url_with_header_suffix_is_kept_whole() {
        let c = one("#EXTINF:-1,A\nhttp://a/x.m3u8|user-agent=Mozilla/5.0 (Windows NT 10.0)&referer=http://r/\n");
        assert_eq!(
            c.stream_url,
            "http://a/x.m3u8|user-agent=Mozilla/5.0 (Windows NT 10.0)&referer=http://r/"
        );
    }

    #[test]
    fn plain_urls_without_extinf() {
        let (header, channels, malformed) = read_all(
            concat!(
                "http://host/live/news.m3u8?token=1|user-agent=x\n",
                "#EXTVLCOPT:a=b\n",
                "udp://@239.0.0.1:1234\n",
                "http://host/\n",
                "/media/films/film.mkv\n",
            ),
            0,
        );
        assert_eq!(malformed, 0);
        assert!(header.attributes.is_empty());
        assert_eq!(
            names(&channels),
            [
                "news.m3u8",
                "udp://@239.0.0.1:1234",
                "http://host/",
                "film.mkv"
            ]
        );
        assert_eq!(channels[0].duration, "-1");
        assert_eq!(channels[1].extras, ["#EXTVLCOPT:a=b"]);
    }

    #[test]
    fn header_attributes() {
        let (header, channels, _) = read_all(
            "#EXTM3U x-tvg-url=\"http://a/epg.xml,http://b/epg.xml\" url-tvg=http://c tvg-shift=\"+1\" catchup=\"append\" catchup-days=7 catchup-source=\"?utc={utc}\"\n#EXTM3U x=ignored\n#EXTINF:-1,A\nhttp://a\n",
            0,
        );
        assert_eq!(
            header.attributes,
            [
                ("x-tvg-url", "http://a/epg.xml,http://b/epg.xml"),
                ("url-tvg", "http://c"),
                ("tvg-shift", "+1"),
                ("catchup", "append"),
                ("catchup-days", "7"),
                ("catchup-source", "?utc={utc}"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(header.attribute("URL-TVG"), Some("http://c"));
        // The second #EXTM3U line is neither header nor extra.
        assert!(channels[0].extras.is_empty());
    }

    #[test]
    fn header_is_available_after_first_next() {
        let input = "#EXTM3U url-tvg=\"e\"\n#EXTINF:-1,A\nhttp://a\n";
        let mut reader = M3uReader::new(input.as_bytes(), 0);
        assert!(reader.header().attributes.is_empty());
        assert!(reader.next().is_some());
        assert_eq!(reader.header().attribute("url-tvg"), Some("e"));
    }

    #[test]
    fn only_headers() {
        for input in [
            "",
            "\n\n",
            "#EXTM3U",
            "#EXTM3U x-tvg-url=\"e\"\r\n\r\n",
            "\u{feff}#EXTM3U\n",
        ] {
            let (_, channels, malformed) = read_all(input, 0);
            assert!(channels.is_empty(), "{input:?}");
            assert_eq!(malformed, 0, "{input:?}");
        }
        let (header, _, _) = read_all("#EXTM3U x-tvg-url=\"e\"", 0);
        assert_eq!(header.attribute("x-tvg-url"), Some("e"));
    }

    #[test]
    fn entry_without_url_is_skipped() {
        let (_, channels, malformed) = read_all(
            concat!(
                "#EXTM3U\n",
                "#EXTINF:-1,NoUrl\n",
                "#EXTVLCOPT:belongs-to-NoUrl\n",
                "#EXTINF:-1,A\n",
                "http://a\n",
                "#EXTINF:-1,AtEof\n",
                "#EXTVLCOPT:x\n",
            ),
            0,
        );
        assert_eq!(names(&channels), ["A"]);
        assert!(channels[0].extras.is_empty());
        assert_eq!(malformed, 2);
    }

    #[test]
    fn unterminated_quote_skips_only_that_entry() {
        let (_, channels, malformed) = read_all(
            concat!(
                "#EXTINF:-1,A\nhttp://a\n",
                "#EXTINF:-1 tvg-name=\"Broken group-title=\"x\",Title\n",
                "http://broken\n",
                "#EXTVLCOPT:x\n#EXTINF:-1 tvg-name=\"Broken,Title\n#KODIPROP:y\n",
                "http://broken2\n",
                "#EXTINF:-1,B\nhttp://b\n",
            ),
            0,
        );
        assert_eq!(names(&channels), ["A", "B"]);
        assert_eq!(malformed, 2);
    }

    #[test]
    fn binary_junk_is_skipped() {
        let mut input = b"#EXTM3U\n#EXTINF:-1,A\nhttp://a\n".to_vec();
        input.extend_from_slice(b"\x00\xff\xfe\x80junk\x01\x02\n");
        input.extend_from_slice(b"#EXTINF:-1,Caf\xe9\nhttp://latin1\n");
        input.extend_from_slice(b"#EXTINF:-1,C\n#EXTVLCOPT:\xc3\x28\nhttp://c\n");
        input.extend_from_slice(b"#EXTINF:-1,D\nhttp://d/\xff\n");
        input.extend_from_slice(b"\xff\xff\xff\xff");
        input.extend_from_slice(b"\n#EXTINF:-1,B\nhttp://b\n");
        let mut reader = M3uReader::new(&input[..], 0);
        let channels: Vec<_> = reader.by_ref().map(|c| c.unwrap()).collect();
        assert_eq!(names(&channels), ["A", "B"]);
        assert_eq!(reader.malformed(), 5);
        assert_eq!(reader.line_number(), 14);
    }

    #[test]
    fn random_bytes_do_not_panic() {
        // A tiny deterministic generator; every byte pattern must be survivable.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"#EXTINF:M3U-1 \"=,\r\n\t|/abc\xff\xc3";
        for round in 0..2000 {
            let len = round % 200;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            let reader = M3uReader::new(&input[..], 0);
            for channel in reader {
                assert!(channel.is_ok());
            }
        }
    }

    /// A reader that serves a huge line in small chunks without holding it.
    struct HugeLine {
        before: &'static [u8],
        huge: usize,
        after: &'static [u8],
        pos: usize,
        chunk: [u8; 4096],
    }

    impl io::Read for HugeLine {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let available = self.fill_buf()?;
            let n = available.len().min(out.len());
            out[..n].copy_from_slice(&available[..n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for HugeLine {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            let (b, h) = (self.before.len(), self.huge);
            if self.pos < b {
                Ok(&self.before[self.pos..])
            } else if self.pos < b + h {
                let n = (b + h - self.pos).min(self.chunk.len());
                Ok(&self.chunk[..n])
            } else {
                Ok(self.after.get(self.pos - b - h..).unwrap_or_default())
            }
        }
        fn consume(&mut self, amount: usize) {
            self.pos += amount;
        }
    }

    #[test]
    fn huge_line_is_skipped_without_buffering_it() {
        for before in [
            &b"#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,Huge\n"[..],
            &b"#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,Huge\n#EXTVLCOPT:"[..],
            &b"#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,"[..],
        ] {
            let input = HugeLine {
                before,
                huge: 50 * 1024 * 1024,
                after: b"\n#EXTINF:-1,B\nhttp://b\n",
                pos: 0,
                chunk: [b'x'; 4096],
            };
            let mut reader = M3uReader::new(input, 0);
            let channels: Vec<_> = reader.by_ref().map(|c| c.unwrap()).collect();
            assert_eq!(names(&channels), ["A", "B"]);
            assert_eq!(reader.malformed(), 1);
            assert!(reader.buf.capacity() <= 2 * MAX_LINE_LEN);
        }
        // A line of exactly MAX_LINE_LEN bytes is still accepted.
        let url = format!("http://{}", "u".repeat(MAX_LINE_LEN - 7));
        let c = one(&format!("#EXTINF:-1,A\n{url}\n"));
        assert_eq!(c.stream_url.len(), MAX_LINE_LEN);
        let (_, channels, malformed) = read_all(&format!("#EXTINF:-1,A\n{url}u\n"), 0);
        assert!(channels.is_empty());
        assert_eq!(malformed, 1);
    }

    #[test]
    fn companion_lines_are_capped() {
        let mut input = String::from("#EXTINF:-1,A\n");
        for i in 0..MAX_EXTRAS_LINES + 10 {
            input.push_str(&format!("#EXTVLCOPT:n={i}\n"));
        }
        input.push_str("http://a\n");
        let c = one(&input);
        assert_eq!(c.extras.len(), MAX_EXTRAS_LINES);
    }

    #[test]
    fn io_error_ends_iteration() {
        struct Failing(u8);
        impl io::Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                self.0 += 1;
                match self.0 {
                    1 => {
                        let data = b"#EXTINF:-1,A\nhttp://a\n";
                        out[..data.len()].copy_from_slice(data);
                        Ok(data.len())
                    }
                    2 => Err(io::Error::new(io::ErrorKind::Interrupted, "again")),
                    _ => Err(io::Error::other("disk on fire")),
                }
            }
        }
        let mut reader = M3uReader::new(io::BufReader::new(Failing(0)), 0);
        assert_eq!(reader.next().unwrap().unwrap().channel_name, "A");
        let err = reader.next().unwrap().unwrap_err();
        assert_eq!(err.label(), "io");
        assert!(reader.next().is_none());
    }
}
