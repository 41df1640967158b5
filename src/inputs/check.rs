//! Is it still a playlist? A single pass over a source's bytes as they are
//! copied or downloaded ([`Scanner`]), and the verdict against the source's
//! last good copy ([`judge`]).

use memchr::memmem;

/// The marker of one channel entry.
const ENTRY: &[u8] = b"#EXTINF";

/// What a pass over a source found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Bytes seen.
    pub bytes: u64,
    /// `#EXTINF` entries seen: the channels, give or take malformed ones.
    pub channels: u64,
    /// The first byte after white space (and a UTF-8 byte-order mark) is
    /// `<`: an HTML error page, or XML, not M3U.
    pub markup: bool,
}

/// Counts entries across the chunks of one stream.
pub struct Scanner {
    finder: memmem::Finder<'static>,
    check: Check,
    /// The start of the stream is still white space (or nothing).
    leading: bool,
    /// The last `ENTRY.len() - 1` bytes, for a marker split across chunks.
    tail: Vec<u8>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            finder: memmem::Finder::new(ENTRY),
            check: Check::default(),
            leading: true,
            tail: Vec::with_capacity(2 * ENTRY.len()),
        }
    }
}

impl Scanner {
    /// Takes the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.check.bytes += chunk.len() as u64;
        if self.leading {
            let text = chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk);
            if let Some(first) = text.iter().find(|byte| !byte.is_ascii_whitespace()) {
                self.leading = false;
                self.check.markup = *first == b'<';
            }
        }
        // A marker that starts in the tail and ends in this chunk (the tail
        // is shorter than the marker, so every match here spans both).
        let keep = ENTRY.len() - 1;
        let head = &chunk[..chunk.len().min(keep)];
        let tail_len = self.tail.len();
        self.tail.extend_from_slice(head);
        self.check.channels += self.finder.find_iter(&self.tail).count() as u64;
        self.tail.truncate(tail_len);
        self.check.channels += self.finder.find_iter(chunk).count() as u64;
        self.tail
            .extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
        let excess = self.tail.len().saturating_sub(keep);
        self.tail.drain(..excess);
    }

    /// What the stream held.
    pub fn finish(&self) -> Check {
        self.check
    }
}

/// Why a source is not used, or `Ok` when it may replace its last good
/// copy (which had `previous_channels`).
pub fn judge(check: Check, previous_channels: Option<u64>, max_shrink: f64) -> Result<(), String> {
    if check.bytes == 0 {
        return Err("it is empty (0 bytes)".into());
    }
    if check.markup {
        return Err("it is an HTML (or XML) page, not a playlist".into());
    }
    if check.channels == 0 {
        return Err(format!(
            "it holds no channel (no #EXTINF entry in {} bytes)",
            check.bytes
        ));
    }
    if let Some(previous) = previous_channels.filter(|previous| *previous > 0) {
        if (check.channels as f64) < previous as f64 * (1.0 - max_shrink) {
            return Err(format!(
                "it shrank from {previous} to {} channels, more than [last_good] max_shrink = {} \
                 allows (raise it if the provider really dropped them)",
                check.channels, max_shrink
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Check {
        let mut scanner = Scanner::default();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.finish()
    }

    #[test]
    fn counts_entries_split_across_chunks_at_every_offset() {
        let text =
            b"#EXTM3U\n#EXTINF:-1,A\nhttp://a\n#EXTINF:-1,B\nhttp://b\n#EXTINF:-1,C\nhttp://c\n";
        for split in 0..text.len() {
            for second in split..text.len() {
                let check = scan(&[&text[..split], &text[split..second], &text[second..]]);
                assert_eq!(check.channels, 3, "split at {split} and {second}");
                assert_eq!(check.bytes, text.len() as u64);
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(scan(&bytes).channels, 3);
    }

    #[test]
    fn markup_is_seen_after_white_space_and_a_byte_order_mark() {
        assert!(scan(&[b"  \n", b"\xEF\xBB\xBF<html>"]).markup);
        assert!(scan(&[b"\xEF\xBB\xBF<!DOCTYPE html>"]).markup);
        assert!(!scan(&[b"\n#EXTM3U\n<b>"]).markup);
    }

    #[test]
    fn judge_refuses_empty_markup_junk_and_collapse() {
        let good = Check {
            bytes: 100,
            channels: 60,
            markup: false,
        };
        assert!(judge(good, None, 0.5).is_ok());
        assert!(judge(good, Some(120), 0.5).is_ok());
        let shrank = judge(good, Some(121), 0.5).unwrap_err();
        assert!(shrank.contains("shrank from 121 to 60"), "{shrank}");
        assert!(judge(good, Some(1_000_000), 1.0).is_ok());
        assert!(judge(Check::default(), None, 0.5)
            .unwrap_err()
            .contains("empty"));
        let junk = Check {
            bytes: 9,
            channels: 0,
            markup: false,
        };
        assert!(judge(junk, None, 0.5).unwrap_err().contains("no channel"));
        let html = Check {
            markup: true,
            ..good
        };
        assert!(judge(html, Some(60), 0.5).unwrap_err().contains("HTML"));
    }
}
