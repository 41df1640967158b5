//! The logo cache behind `/logos/{sha256}`: `logo_mapper`'s
//! `rewrite_logos` points players at `{base}/logos/{sha256 of the logo's
//! URL}`. After each generation the regenerator finds the hashes the
//! playlist refers to and the URLs they came from ([`referenced_logos`]:
//! every `tvg-logo` of the sources as read, and every URL in the plugins'
//! settings, such as logo_mapper's tables); the cache downloads each logo
//! once, with a few worker threads, keeps it on disk, and serves it. Until
//! a logo is cached, or when it cannot be (not an image, too large, the
//! origin down), `/logos/{sha256}` redirects to the original URL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::STOP_CHECK;

/// A logo's answer.
pub(super) enum Logo {
    /// Cached: its bytes and content type.
    Cached(Vec<u8>, String),
    /// Not cached (yet, or it cannot be): where it is.
    Redirect(String),
    /// No logo of the playlist has this hash.
    Unknown,
}

/// What the download workers share with the routes and the regenerator.
pub(super) struct LogoCache {
    /// `None`: nowhere to keep logos; every known logo redirects.
    directory: Option<PathBuf>,
    max_bytes: u64,
    /// Hash → original URL, of the latest generation.
    index: RwLock<HashMap<String, String>>,
    /// Hashes waiting for a download.
    queue: Mutex<VecDeque<String>>,
    wake: Condvar,
}

impl LogoCache {
    pub(super) fn new(directory: Option<PathBuf>, max_bytes: u64) -> LogoCache {
        LogoCache {
            directory,
            max_bytes,
            index: RwLock::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
        }
    }

    /// The logos of a new generation: replaces the index and queues every
    /// logo not cached yet (each once per generation).
    pub(super) fn update(&self, logos: HashMap<String, String>) {
        let missing: Vec<String> = logos
            .keys()
            .filter(|hash| self.file(hash).is_some_and(|file| !file.is_file()))
            .cloned()
            .collect();
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = logos;
        if missing.is_empty() {
            return;
        }
        log::info!("logo cache: {} logos to download", missing.len());
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.clear();
        queue.extend(missing);
        self.wake.notify_all();
    }

    /// The answer for `/logos/{hash}`.
    pub(super) fn answer(&self, hash: &str) -> Logo {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Logo::Unknown;
        }
        let hash = hash.to_ascii_lowercase();
        let url = self.url_of(&hash);
        if let Some(file) = self.file(&hash) {
            if let (Ok(bytes), Ok(kind)) = (
                std::fs::read(&file),
                std::fs::read_to_string(file.with_extension("type")),
            ) {
                return Logo::Cached(bytes, kind);
            }
        }
        url.map_or(Logo::Unknown, Logo::Redirect)
    }

    /// The original URL of a logo of the latest generation.
    fn url_of(&self, hash: &str) -> Option<String> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .cloned()
    }

    /// Where a logo is kept, if logos are kept.
    fn file(&self, hash: &str) -> Option<PathBuf> {
        self.directory
            .as_ref()
            .map(|directory| directory.join(hash))
    }

    /// True when logos are downloaded (a directory to keep them in).
    pub(super) fn downloads(&self) -> bool {
        self.directory.is_some()
    }

    /// A download worker: takes queued logos until `stopped` says so.
    pub(super) fn work(&self, stopped: &dyn Fn() -> bool) {
        while !stopped() {
            let next = {
                let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let (mut queue, _) = self
                    .wake
                    .wait_timeout_while(queue, STOP_CHECK, |queue| queue.is_empty())
                    .unwrap_or_else(PoisonError::into_inner);
                queue.pop_front()
            };
            let Some(hash) = next else { continue };
            if let Some(url) = self.url_of(&hash) {
                if let Err(reason) = self.download(&hash, &url) {
                    log::warn!(
                        "logo cache: {} not cached ({reason}); /logos/{hash} redirects to it",
                        crate::inputs::mask_url(&url)
                    );
                }
            }
        }
    }

    fn download(&self, hash: &str, url: &str) -> Result<(), String> {
        let (bytes, kind) = crate::inputs::fetch_small(
            url,
            self.max_bytes,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )?;
        if !kind.to_ascii_lowercase().starts_with("image/") {
            return Err(format!("its Content-Type is `{kind}`, not an image"));
        }
        let (Some(directory), Some(file)) = (&self.directory, self.file(hash)) else {
            return Err("no logo_cache_directory".into());
        };
        std::fs::create_dir_all(directory)
            .and_then(|()| write_then_rename(&file.with_extension("type"), kind.as_bytes()))
            .and_then(|()| write_then_rename(&file, &bytes))
            .map_err(|error| format!("cannot write {}: {error}", directory.display()))
    }
}

fn write_then_rename(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_os_string();
    temporary.push(".part");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// Lowercase hex SHA-256 of a logo URL, as logo_mapper computes it.
pub(super) fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The hashes after `/logos/` in the playlist's `tvg-logo` values.
fn hashes_in(playlist: &[u8]) -> HashSet<String> {
    logo_values(playlist)
        .filter_map(|logo| {
            let at = logo.find("/logos/")?;
            let hash = logo.get(at + 7..at + 7 + 64)?;
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| hash.to_ascii_lowercase())
        })
        .collect()
}

/// Every `tvg-logo="…"` value of an M3U text.
fn logo_values(playlist: &[u8]) -> impl Iterator<Item = &str> {
    memchr::memmem::find_iter(playlist, b"tvg-logo=\"").filter_map(move |at| {
        let start = at + 10;
        let end = start + memchr::memchr2(b'"', b'\n', playlist.get(start..)?)?;
        std::str::from_utf8(&playlist[start..end]).ok()
    })
}

/// The logos `playlist` refers to under `/logos/`, with the URLs they were
/// made from: searched among the `tvg-logo` values of `inputs` (the files
/// the run read) and the http(s) words of `settings` (plugin settings).
pub(super) fn referenced_logos(
    playlist: &[u8],
    inputs: &[PathBuf],
    settings: &[String],
) -> HashMap<String, String> {
    let wanted = hashes_in(playlist);
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let mut consider = |url: &str| {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return;
        }
        let hash = sha256_hex(url);
        if wanted.contains(&hash) {
            found.entry(hash).or_insert_with(|| url.to_string());
        }
    };
    for text in settings {
        for word in text.split(|c: char| c.is_whitespace() || c == '|') {
            consider(word);
        }
    }
    for path in inputs {
        // Line by line: a source can be hundreds of MB.
        let read = std::fs::File::open(path).and_then(|file| {
            let mut reader = std::io::BufReader::with_capacity(256 << 10, file);
            let mut line = Vec::new();
            while std::io::BufRead::read_until(&mut reader, b'\n', &mut line)? > 0 {
                logo_values(&line).for_each(|logo| consider(logo.trim()));
                line.clear();
            }
            Ok(())
        });
        if let Err(error) = read {
            log::warn!("logo cache: cannot read {}: {error}", path.display());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_urls_are_matched_like_logo_mapper_makes_them() {
        let url = "http://img.example/a.png";
        let hash = sha256_hex(url);
        assert_eq!(hash.len(), 64);
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let playlist = format!(
            "#EXTM3U\n#EXTINF:-1 tvg-logo=\"http://proxy/logos/{hash}\",A\nhttp://a\n\
             #EXTINF:-1 tvg-logo=\"http://proxy/logos/{}\",B\nhttp://b\n",
            sha256_hex("http://table.example/b.png")
        );
        let dir = std::env::temp_dir().join(format!("m3u-logos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("in.m3u");
        std::fs::write(
            &input,
            format!("#EXTINF:-1 tvg-logo=\"{url}\",A\nhttp://a\n"),
        )
        .unwrap();
        let settings = vec!["B | http://table.example/b.png\nC | http://unused/c.png".to_string()];
        let found = referenced_logos(playlist.as_bytes(), &[input], &settings);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[&hash], url);
        let _ = std::fs::remove_dir_all(dir);
    }
}
