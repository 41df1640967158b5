//! One generation of the served playlist, as players and caching proxies
//! want it: the plain bytes, a gzip copy made once per generation, an
//! `ETag` from the content and a `Last-Modified` that moves only when the
//! content did.

use std::io::Write;
use std::time::SystemTime;

/// A complete playlist, shared by every request that serves it.
pub(super) struct Served {
    /// The playlist.
    pub plain: Vec<u8>,
    /// The same, gzip-compressed (made once, when the generation succeeded).
    pub gzip: Vec<u8>,
    /// `"<hash of the content>"`, quoted as HTTP wants it.
    pub etag: String,
    /// When this content was first served, as an HTTP date.
    pub last_modified: String,
    /// The same as a time, for `If-Modified-Since`.
    modified: SystemTime,
}

impl Served {
    /// A new generation; keeps `previous`'s `Last-Modified` when the
    /// content is the same.
    pub fn new(plain: Vec<u8>, previous: Option<&Served>) -> Served {
        let etag = format!("\"{:016x}-{:x}\"", content_hash(&plain), plain.len());
        let modified = match previous {
            Some(previous) if previous.etag == etag => previous.modified,
            _ => whole_seconds(SystemTime::now()),
        };
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(plain.len() / 4),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail.
        let gzip = encoder
            .write_all(&plain)
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        Served {
            last_modified: httpdate::fmt_http_date(modified),
            plain,
            gzip,
            etag,
            modified,
        }
    }

    /// True when a request with these validators already has this content:
    /// `If-None-Match` (`*`, or a list holding this ETag, weak or not)
    /// decides when present, else `If-Modified-Since`.
    pub fn not_modified(
        &self,
        if_none_match: Option<&str>,
        if_modified_since: Option<&str>,
    ) -> bool {
        if let Some(tags) = if_none_match {
            return tags
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag);
        }
        if_modified_since
            .and_then(|date| httpdate::parse_http_date(date).ok())
            .is_some_and(|since| self.modified <= since)
    }
}

/// HTTP dates have whole seconds.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs())
}

/// FNV-1a over 8-byte words: stable, fast enough for hundreds of MB per
/// generation; an ETag, not a security check.
fn content_hash(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        hash = (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for byte in words.remainder() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_follows_the_content_and_last_modified_stays_with_it() {
        let first = Served::new(b"#EXTM3U\n#EXTINF:-1,A\nhttp://a\n".to_vec(), None);
        let same = Served::new(first.plain.clone(), Some(&first));
        assert_eq!(same.etag, first.etag);
        assert_eq!(same.last_modified, first.last_modified);
        let other = Served::new(b"#EXTM3U\n".to_vec(), Some(&first));
        assert_ne!(other.etag, first.etag);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(first.gzip.as_slice()),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded, first.plain);
    }

    #[test]
    fn conditional_requests() {
        let served = Served::new(b"x".to_vec(), None);
        let etag = served.etag.clone();
        assert!(served.not_modified(Some(&etag), None));
        assert!(served.not_modified(Some(&format!("\"a\", W/{etag}")), None));
        assert!(served.not_modified(Some("*"), None));
        assert!(!served.not_modified(Some("\"other\""), Some(&served.last_modified)));
        assert!(served.not_modified(None, Some(&served.last_modified)));
        assert!(!served.not_modified(None, Some("Thu, 01 Jan 1970 00:00:00 GMT")));
        assert!(!served.not_modified(None, Some("garbage")));
        assert!(!served.not_modified(None, None));
    }
}
