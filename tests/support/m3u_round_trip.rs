//! The M3U round-trip property, shared by the `m3u_reader` fuzz target
//! (`fuzz/fuzz_targets/m3u_reader.rs`) and its regression tests
//! (`tests/integration/fuzz_regressions.rs`), both of which include this
//! file with `#[path]`.
//!
//! Parse → write → parse gives back the same channels and header, up to the
//! writer's documented replacements (src/m3u/writer.rs module docs), applied
//! here by `normalise`:
//!
//! - a duration that is empty or contains whitespace, `,`, `=` or `"` is
//!   written as `-1` (the reader yields an empty duration for `#EXTINF:,T`);
//! - `\r`/`\n` inside a field become a space (the reader splits lines on
//!   `\n` only, so a lone `\r` can sit inside a title, value, URL or extra);
//! - `"` in an attribute value becomes `'`;
//! - in attribute names whitespace, `=`, `,` and `"` become `_` (only header
//!   names can hold a `,`: the `#EXTM3U` line has no title to split off);
//! - extras lines that are blank or start with `#EXTINF`/`#EXTM3U` are left out.
//!
//! After that one normalising round, writing must be a fixed point: a second
//! parse → write gives the same bytes.

use std::borrow::Cow;
use std::io::Cursor;

use m3u_plugin_host::m3u::{M3uReader, M3uWriter, PlaylistHeader};
use m3u_plugin_host::OwnedChannel;

pub fn parse(bytes: &[u8]) -> (PlaylistHeader, Vec<OwnedChannel>, u64) {
    let mut reader = M3uReader::new(Cursor::new(bytes), 3);
    let mut channels = Vec::new();
    for channel in reader.by_ref() {
        // A Cursor never fails, so the reader never yields Err.
        channels.push(channel.expect("I/O error from a Cursor"));
    }
    let header = reader.header().clone();
    (header, channels, reader.malformed())
}

fn write(header: &PlaylistHeader, channels: &[OwnedChannel]) -> Vec<u8> {
    let mut writer = M3uWriter::new(Vec::new(), header).expect("writing to a Vec");
    for channel in channels {
        writer.write_channel(channel).expect("writing to a Vec");
    }
    // Every channel the reader produced has a usable URL.
    assert_eq!(writer.skipped(), 0, "the writer skipped a parsed channel");
    writer.finish().expect("writing to a Vec")
}

fn replace(text: &str, f: impl Fn(char) -> Option<char>) -> Cow<'static, str> {
    let out: String = text.chars().map(|c| f(c).unwrap_or(c)).collect();
    if out.is_empty() {
        Cow::Borrowed("")
    } else {
        Cow::Owned(out)
    }
}

fn line_breaks(c: char) -> Option<char> {
    matches!(c, '\r' | '\n').then_some(' ')
}

fn value_chars(c: char) -> Option<char> {
    match c {
        '"' => Some('\''),
        '\r' | '\n' => Some(' '),
        _ => None,
    }
}

fn name_chars(c: char) -> Option<char> {
    (c.is_ascii_whitespace() || matches!(c, '=' | ',' | '"')).then_some('_')
}

fn is_directive(line: &str, name: &str) -> bool {
    line.get(..name.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(name))
}

/// What the writer's documented replacements make of a parsed channel.
fn normalise(channel: &OwnedChannel) -> OwnedChannel {
    let mut c = channel.clone();
    let d = c.duration.as_ref();
    if d.is_empty()
        || d.bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b',' | b'=' | b'"'))
    {
        c.duration = Cow::Borrowed("-1");
    }
    for field in [
        &mut c.tvg_id,
        &mut c.tvg_name,
        &mut c.tvg_chno,
        &mut c.tvg_logo,
        &mut c.tvg_shift,
        &mut c.group_title,
    ] {
        *field = replace(field, value_chars);
    }
    c.channel_name = replace(&c.channel_name, line_breaks);
    c.stream_url = replace(c.stream_url.trim(), line_breaks);
    for attribute in &mut c.attributes {
        attribute.name = replace(&attribute.name, name_chars);
        attribute.value = replace(&attribute.value, value_chars);
    }
    c.extras = c
        .extras
        .iter()
        .map(|e| e.trim())
        .filter(|e| !(e.is_empty() || is_directive(e, "#EXTINF") || is_directive(e, "#EXTM3U")))
        .map(|e| {
            let e = replace(e, line_breaks);
            if e.starts_with('#') {
                e
            } else {
                Cow::Owned(format!("#{e}"))
            }
        })
        .collect();
    c
}

fn normalise_header(header: &PlaylistHeader) -> PlaylistHeader {
    PlaylistHeader {
        attributes: header
            .attributes
            .iter()
            .map(|(n, v)| {
                (
                    replace(n, name_chars).into_owned(),
                    replace(v, value_chars).into_owned(),
                )
            })
            .collect(),
    }
}

/// Panics unless `input` satisfies the round-trip property (module docs).
pub fn assert_round_trip(input: &[u8]) {
    let (header, first, _malformed) = parse(input);
    let text = write(&header, &first);
    let (header2, second, malformed2) = parse(&text);
    assert_eq!(malformed2, 0, "written playlist has malformed entries");
    assert_eq!(header2, normalise_header(&header), "header changed");
    assert_eq!(second.len(), first.len(), "channel count changed");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(b, &normalise(a), "channel changed in the round trip");
    }
    // Fixed point after the first (normalising) round.
    let text2 = write(&header2, &second);
    assert_eq!(
        String::from_utf8_lossy(&text2),
        String::from_utf8_lossy(&text),
        "writing is not a fixed point"
    );
}
