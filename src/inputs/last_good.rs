//! The directory of last good copies: one `<key>.m3u` per source, the copy
//! that last passed the checks, and `<key>.json` beside it with what is
//! known about it (channels, bytes, the HTTP validators, the stamp of the
//! file it was copied from). New copies are written to a temporary file in
//! the same directory and renamed over the old one only once they passed.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::http::Validators;

/// What is known about a last good copy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The source's display name (credentials masked).
    pub source: String,
    /// `#EXTINF` entries in the copy.
    pub channels: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The `ETag` it was downloaded with.
    #[serde(default)]
    pub etag: Option<String>,
    /// Its `Last-Modified`.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// When it was saved, in seconds since 1970.
    pub saved_unix: u64,
    /// For a file source, the length and modification time (ns since 1970)
    /// of the file the copy was made from: while they stay the same the
    /// copy is used without reading the file again.
    #[serde(default)]
    pub file_stamp: Option<(u64, u128)>,
}

impl Meta {
    /// The validators to send with the next download.
    pub fn validators(&self) -> Validators {
        Validators {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
        }
    }

    /// Now, as [`Meta::saved_unix`].
    pub fn now_unix() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }
}

/// A source's last good copy.
pub struct Previous {
    /// What is known about it.
    pub meta: Meta,
    /// The copy.
    pub path: PathBuf,
}

/// The directory of copies.
pub struct Store {
    directory: PathBuf,
}

impl Store {
    /// The store in `directory` (created when the first copy is saved).
    pub fn new(directory: PathBuf) -> Store {
        Store { directory }
    }

    /// Where the copies are.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The last good copy of the source with `key`, if there is one whose
    /// description can be read.
    pub fn previous(&self, key: &str) -> Option<Previous> {
        let path = self.directory.join(format!("{key}.m3u"));
        let text = std::fs::read_to_string(self.directory.join(format!("{key}.json"))).ok()?;
        let meta: Meta = serde_json::from_str(&text).ok()?;
        path.is_file().then_some(Previous { meta, path })
    }

    /// Whether copies can be written: creates the directory and a
    /// temporary file in it.
    ///
    /// # Errors
    /// Why not, naming the directory.
    pub fn writable(&self) -> Result<(), String> {
        self.temporary().map(drop).map_err(|error| {
            format!(
                "cannot write in the last-good directory {}: {error}",
                self.directory.display()
            )
        })
    }

    /// A new temporary file in the directory, removed when dropped unless
    /// committed.
    ///
    /// # Errors
    /// The directory cannot be created or written.
    pub fn temporary(&self) -> std::io::Result<tempfile::NamedTempFile> {
        std::fs::create_dir_all(&self.directory)?;
        tempfile::Builder::new()
            .prefix(".incoming.")
            .suffix(".tmp")
            .tempfile_in(&self.directory)
    }

    /// Makes `copy` the last good copy of `key`, described by `meta`.
    ///
    /// # Errors
    /// The copy or its description cannot be written.
    pub fn commit(
        &self,
        key: &str,
        copy: tempfile::NamedTempFile,
        meta: &Meta,
    ) -> std::io::Result<PathBuf> {
        copy.as_file().sync_all()?;
        let path = self.directory.join(format!("{key}.m3u"));
        copy.persist(&path).map_err(|error| error.error)?;
        let mut description = self.temporary()?;
        let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
        std::io::Write::write_all(&mut description, &json)?;
        description.as_file().sync_all()?;
        description
            .persist(self.directory.join(format!("{key}.json")))
            .map_err(|error| error.error)?;
        Ok(path)
    }
}

/// A file name for a source: its name's letters and digits, and a hash of
/// its location (a URL with its credentials masked), so two sources with
/// the same name do not share a copy.
pub fn key(name: &str, location: &str) -> String {
    let mut readable: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    readable = readable.trim_matches('-').to_string();
    // FNV-1a, 64 bits: stable across builds and Rust versions.
    let hash = location
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    if readable.is_empty() {
        format!("{hash:016x}")
    } else {
        format!("{readable}-{hash:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_readable_stable_and_distinct() {
        assert_eq!(
            key("iptv-org 2021", "/data/a.m3u"),
            key("iptv-org 2021", "/data/a.m3u")
        );
        assert_ne!(key("same", "/data/a.m3u"), key("same", "/data/b.m3u"));
        assert!(key("iptv-org 2021", "/x").starts_with("iptv-org-2021-"));
        assert!(key("../../etc/passwd", "/x").starts_with("etc-passwd-"));
        assert_eq!(key("", "/x").len(), 16);
    }
}
