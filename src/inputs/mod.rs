//! Where the source playlists come from, and what protects the output from
//! a bad one: files, standard input and HTTP(S) URLs ([`SourceSpec`]), each
//! checked on every run and kept as a *last good copy* ([`Inputs`]).
//!
//! # Layout
//!
//! - `mod.rs` (this file): the sources of a run, [`Inputs::open`] and its
//!   [`SourceReport`]s.
//! - `http.rs`: downloads (settings, retries, conditional requests) and
//!   [`mask_url`].
//! - `client.rs`: the HTTP/1.1 exchange itself (framing, redirects, gzip
//!   and deflate, timeouts; TLS with the `https` feature).
//! - `check.rs`: the pass that counts a source's entries as it is copied,
//!   and the verdict (empty, HTML, no channel, shrank too much).
//! - `last_good.rs`: the directory of last good copies.
//!
//! # Last good copies
//!
//! With `[last_good] enabled` (the default) every file and URL source is
//! copied (or downloaded) into a temporary file in the last-good directory
//! while its entries are counted, then judged: empty, an HTML page, no
//! `#EXTINF` entry, or fewer channels than `1 - max_shrink` of the last
//! good copy's, and it is not used. A good one replaces the last good copy
//! and is what the run reads, so a file rewritten during the run cannot mix
//! two versions. A bad one (or a failed download) leaves the last good copy
//! in place and the run reads that instead, reported as `stale` with the
//! reason; with no last good copy yet, the source is an error. A file still
//! being written is waited for (`settle_ms`); a file whose length and
//! modification time match the copy's is not read again; a URL is asked
//! with `If-None-Match` / `If-Modified-Since` and a 304 keeps the copy.

mod check;
pub(crate) mod client;
mod http;
mod last_good;

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use check::{judge, Check, Scanner};
pub use http::{fetch_small, mask_url, DEFAULT_USER_AGENT};

use crate::config::{Config, SourceConfig};
use crate::pipeline::Source;
use crate::{Error, Result};
use last_good::{Meta, Previous, Store};

/// Where one source is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Standard input (`-`): read once, as it comes.
    Stdin,
    /// A file.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

/// One source and its download settings.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// Shown in logs, stats, `/health` and `/metrics`; never holds
    /// credentials unless the config's `name` does.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// The `[[sources]]` table (download settings).
    pub settings: SourceConfig,
}

impl SourceSpec {
    /// The source of a `[[sources]]` table.
    ///
    /// # Errors
    /// Neither or both of `path` and `url`, or a URL this build cannot
    /// fetch; the message says what to write instead.
    pub fn from_config(config: &SourceConfig) -> std::result::Result<SourceSpec, String> {
        let location = match (&config.path, &config.url) {
            (Some(_), Some(_)) => {
                return Err("has both `path` and `url`: give one of them".into());
            }
            (None, None) => {
                return Err(
                    "needs a `path` (a file, or \"-\" for standard input) or a `url` \
                     (http:// or https://)"
                        .into(),
                );
            }
            (Some(path), None) if path.as_os_str() == "-" => Location::Stdin,
            (Some(path), None) => Location::File(path.clone()),
            (None, Some(url)) => Location::Url(checked_url(url)?),
        };
        let name = if config.name.is_empty() {
            match &location {
                Location::Stdin => "stdin".to_string(),
                Location::File(path) => path.display().to_string(),
                Location::Url(url) => mask_url(url),
            }
        } else {
            config.name.clone()
        };
        Ok(SourceSpec {
            name,
            location,
            settings: config.clone(),
        })
    }

    /// The source of a command-line `--input`: `-`, a URL or a file path,
    /// with the default download settings.
    ///
    /// # Errors
    /// A URL this build cannot fetch.
    pub fn from_argument(argument: &Path) -> Result<SourceSpec> {
        let text = argument.to_string_lossy();
        let config = if is_url(&text) {
            SourceConfig::url(text.to_string())
        } else {
            SourceConfig::file(argument)
        };
        SourceSpec::from_config(&config).map_err(|message| {
            Error::config_key("--input", format!("{}: {message}", mask_url(&text)))
        })
    }

    /// The text the last-good key is made from (credentials masked).
    fn identity(&self) -> String {
        match &self.location {
            Location::Stdin => "-".into(),
            Location::File(path) => path.display().to_string(),
            Location::Url(url) => mask_url(url),
        }
    }

    /// Opens the source as it is: no check, no copy; a URL is streamed
    /// straight into the reader.
    ///
    /// # Errors
    /// The file cannot be opened; the download cannot start.
    pub fn open_unchecked(&self) -> Result<Source> {
        let mut source = match &self.location {
            Location::Stdin => Source::open(Path::new("-"))?,
            Location::File(path) => Source::open(path)?,
            Location::Url(url) => {
                let reader = http::open_stream(url, &self.settings)
                    .map_err(|message| Error::source(&self.name, message))?;
                Source::from_reader(&self.name, BufReader::with_capacity(256 << 10, reader))
            }
        };
        source.name.clone_from(&self.name);
        Ok(source)
    }
}

fn is_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn checked_url(url: &str) -> std::result::Result<String, String> {
    if !is_url(url) {
        return Err(format!(
            "`url` {} must start with http:// or https://",
            mask_url(url)
        ));
    }
    if url[..5].eq_ignore_ascii_case("https") && !cfg!(feature = "https") {
        return Err(format!(
            "{} is https, and this build has no TLS: build with `cargo build --release \
             --features https` (it does not fit the 4 MB ARM size budget, so it is not on by \
             default), or use the provider's http:// URL",
            mask_url(url)
        ));
    }
    Ok(url.to_string())
}

/// How a source was read this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    /// Read and checked; it is now the last good copy.
    Fresh,
    /// Unchanged since its last good copy (same file stamp, or HTTP 304):
    /// the copy was read.
    Unchanged,
    /// Failed or refused: its last good copy was read instead.
    Stale,
    /// Read as it is, without checks (standard input, or `[last_good]
    /// enabled = false`).
    Unchecked,
}

impl SourceStatus {
    /// The status as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            SourceStatus::Fresh => "fresh",
            SourceStatus::Unchanged => "unchanged",
            SourceStatus::Stale => "stale",
            SourceStatus::Unchecked => "unchecked",
        }
    }
}

/// What happened to one source in a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The source's display name.
    pub name: String,
    /// How it was read.
    pub status: SourceStatus,
    /// For `stale`: why the source itself was not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Channel entries in what was read (not known for unchecked sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u64>,
    /// For `stale`: when the copy that was read was saved (s since 1970).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_saved_unix: Option<u64>,
}

/// The sources of a pipeline, with their last good copies.
pub struct Inputs {
    specs: Vec<SourceSpec>,
    /// `None`: `[last_good] enabled = false`.
    protection: Option<Protection>,
}

struct Protection {
    /// `None`: nowhere to keep copies (a config built in code): sources are
    /// still checked, downloads go to an unnamed temporary file.
    store: Option<Store>,
    max_shrink: f64,
    settle: Duration,
}

/// A source that passed, or that is being judged.
struct Candidate {
    check: Check,
    /// Where its bytes are: a temporary copy, or the file itself when
    /// there is no store.
    body: Body,
    validators: http::Validators,
    file_stamp: Option<(u64, u128)>,
}

enum Body {
    Copy(tempfile::NamedTempFile),
    Unnamed(File),
    InPlace(PathBuf),
}

/// How a protected source turned out before it is opened.
enum Acquired {
    Good(Candidate),
    Unchanged(Previous),
    Refused(String),
}

impl Inputs {
    /// The sources and the `[last_good]` settings of `config`.
    pub fn new(specs: Vec<SourceSpec>, config: &Config) -> Inputs {
        let settings = &config.last_good;
        let protection = settings.enabled.then(|| Protection {
            store: config.last_good_directory().map(Store::new),
            max_shrink: settings.max_shrink,
            settle: Duration::from_millis(settings.settle_ms),
        });
        Inputs { specs, protection }
    }

    /// The config's `[[sources]]`.
    ///
    /// # Errors
    /// No sources; a source table that does not name one.
    pub fn from_config(config: &Config) -> Result<Inputs> {
        if config.sources.is_empty() {
            return Err(Error::config_key(
                "sources",
                "no sources: add a [[sources]] table with a `path` or a `url`, or pass --input",
            ));
        }
        let specs = config
            .sources
            .iter()
            .enumerate()
            .map(|(index, source)| {
                SourceSpec::from_config(source)
                    .map_err(|message| Error::config_key(format!("sources[{index}]"), message))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Inputs::new(specs, config))
    }

    /// The sources, in order.
    pub fn specs(&self) -> &[SourceSpec] {
        &self.specs
    }

    /// The source files (not URLs, not standard input), for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        self.specs
            .iter()
            .filter_map(|spec| match &spec.location {
                Location::File(path) => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// The files the last run read, to be read again (for the logos they
    /// name): each source's last good copy, or the file itself when no
    /// copies are kept; URLs without a copy and stdin are left out.
    pub fn read_paths(&self) -> Vec<PathBuf> {
        let store = self
            .protection
            .as_ref()
            .and_then(|protection| protection.store.as_ref());
        self.specs
            .iter()
            .filter_map(|spec| {
                let copy = store.and_then(|store| {
                    store
                        .previous(&last_good::key(&spec.name, &spec.identity()))
                        .map(|previous| previous.path)
                });
                match &spec.location {
                    Location::File(path) => Some(copy.unwrap_or_else(|| path.clone())),
                    Location::Url(_) => copy,
                    Location::Stdin => None,
                }
            })
            .collect()
    }

    /// Where the last good copies are kept, if anywhere.
    pub fn last_good_directory(&self) -> Option<&Path> {
        self.protection
            .as_ref()
            .and_then(|protection| protection.store.as_ref())
            .map(Store::directory)
    }

    /// Opens every source for a run: checked, with its last good copy
    /// standing in for a bad one; and what happened to each.
    ///
    /// # Errors
    /// A source that cannot be used and has no last good copy; a file that
    /// cannot be opened; the last-good directory cannot be written.
    pub fn open(&self) -> Result<(Vec<Source>, Vec<SourceReport>)> {
        let mut sources = Vec::with_capacity(self.specs.len());
        let mut reports = Vec::with_capacity(self.specs.len());
        // A last-good directory that cannot be written (a read-only place,
        // a full disk) does not stop the run: sources are still checked,
        // without copies, and the log says where and why.
        let without_store;
        let protection = match &self.protection {
            Some(protection) => match protection.store.as_ref().map(Store::writable) {
                Some(Err(error)) => {
                    log::warn!(
                        "no last good copies this run: {error}; sources are still checked, but \
                         a bad one fails the run (set [last_good] directory to a writable place)"
                    );
                    without_store = Protection {
                        store: None,
                        ..*protection
                    };
                    Some(&without_store)
                }
                _ => Some(protection),
            },
            None => None,
        };
        for spec in &self.specs {
            let (source, report) = match (protection, &spec.location) {
                (Some(protection), Location::File(_) | Location::Url(_)) => {
                    protection.open(spec)?
                }
                _ => (spec.open_unchecked()?, unchecked(spec)),
            };
            sources.push(source);
            reports.push(report);
        }
        Ok((sources, reports))
    }
}

fn unchecked(spec: &SourceSpec) -> SourceReport {
    SourceReport {
        name: spec.name.clone(),
        status: SourceStatus::Unchecked,
        reason: None,
        channels: None,
        copy_saved_unix: None,
    }
}

impl Protection {
    fn open(&self, spec: &SourceSpec) -> Result<(Source, SourceReport)> {
        let key = last_good::key(&spec.name, &spec.identity());
        let previous = self.store.as_ref().and_then(|store| store.previous(&key));
        let acquired = self.acquire(spec, previous.as_ref())?;
        let (source, report) = match acquired {
            Acquired::Good(candidate) => {
                let channels = candidate.check.channels;
                let source = self.keep(spec, &key, candidate)?;
                let report = SourceReport {
                    status: SourceStatus::Fresh,
                    channels: Some(channels),
                    ..unchecked(spec)
                };
                (source, report)
            }
            Acquired::Unchanged(previous) => {
                let report = SourceReport {
                    status: SourceStatus::Unchanged,
                    channels: Some(previous.meta.channels),
                    ..unchecked(spec)
                };
                (open_file(spec, &previous.path)?, report)
            }
            Acquired::Refused(reason) => {
                let Some(previous) = previous else {
                    let hint = if self.store.is_some() {
                        "there is no last good copy of it yet to use instead"
                    } else {
                        "and no last good copy is kept (set [last_good] directory)"
                    };
                    return Err(Error::source(&spec.name, format!("{reason}; {hint}")));
                };
                log::warn!(
                    "source {}: {reason}; using its last good copy ({} channels, saved {})",
                    spec.name,
                    previous.meta.channels,
                    describe_age(previous.meta.saved_unix)
                );
                let report = SourceReport {
                    status: SourceStatus::Stale,
                    reason: Some(reason),
                    channels: Some(previous.meta.channels),
                    copy_saved_unix: Some(previous.meta.saved_unix),
                    ..unchecked(spec)
                };
                (open_file(spec, &previous.path)?, report)
            }
        };
        Ok((source, report))
    }

    /// Reads or downloads the source into a candidate and judges it.
    fn acquire(&self, spec: &SourceSpec, previous: Option<&Previous>) -> Result<Acquired> {
        let candidate = match &spec.location {
            Location::File(path) => {
                let stamp = match settle(path, self.settle) {
                    Ok(stamp) => stamp,
                    Err(reason) => return Ok(Acquired::Refused(reason)),
                };
                if let Some(previous) =
                    previous.filter(|previous| previous.meta.file_stamp == Some(stamp))
                {
                    return Ok(Acquired::Unchanged(Previous {
                        meta: previous.meta.clone(),
                        path: previous.path.clone(),
                    }));
                }
                match self.copy_file(spec, path) {
                    Ok(mut candidate) => {
                        candidate.file_stamp = Some(stamp);
                        candidate
                    }
                    Err(reason) => return Ok(Acquired::Refused(reason)),
                }
            }
            Location::Url(url) => {
                let mut body = self.new_body(spec)?;
                let mut scanner = Scanner::default();
                let validators = previous.map(|previous| previous.meta.validators());
                let file = body
                    .file_mut()
                    .ok_or_else(|| Error::config("internal error: a download in place"))?;
                match http::download(url, &spec.settings, validators.as_ref(), file, &mut scanner) {
                    Ok(http::Fetched::NotModified) => match previous {
                        Some(previous) => {
                            return Ok(Acquired::Unchanged(Previous {
                                meta: previous.meta.clone(),
                                path: previous.path.clone(),
                            }))
                        }
                        None => {
                            return Ok(Acquired::Refused(
                                "the server answered 304 Not Modified to a plain request".into(),
                            ))
                        }
                    },
                    Ok(http::Fetched::Body(validators)) => Candidate {
                        check: scanner.finish(),
                        body,
                        validators,
                        file_stamp: None,
                    },
                    Err(reason) => return Ok(Acquired::Refused(reason)),
                }
            }
            Location::Stdin => return Err(Error::config("internal error: stdin is not checked")),
        };
        let previous_channels = previous.map(|previous| previous.meta.channels);
        Ok(
            match judge(candidate.check, previous_channels, self.max_shrink) {
                Ok(()) => Acquired::Good(candidate),
                Err(reason) => Acquired::Refused(reason),
            },
        )
    }

    /// Where a new copy goes: a temporary file in the store, or an unnamed
    /// one without a store.
    fn new_body(&self, spec: &SourceSpec) -> Result<Body> {
        match &self.store {
            Some(store) => store.temporary().map(Body::Copy).map_err(|error| {
                Error::source(
                    &spec.name,
                    format!(
                        "cannot write a copy in the last-good directory {}: {error}",
                        store.directory().display()
                    ),
                )
            }),
            None => tempfile::tempfile().map(Body::Unnamed).map_err(|error| {
                Error::source(
                    &spec.name,
                    format!("cannot create a temporary file: {error}"),
                )
            }),
        }
    }

    /// Copies a file into a new body while scanning it (without a store,
    /// scans it where it is).
    fn copy_file(&self, spec: &SourceSpec, path: &Path) -> std::result::Result<Candidate, String> {
        let mut input =
            File::open(path).map_err(|error| format!("cannot open {}: {error}", path.display()))?;
        let mut scanner = Scanner::default();
        let mut body = match &self.store {
            Some(_) => self.new_body(spec).map_err(|error| error.to_string())?,
            None => Body::InPlace(path.to_path_buf()),
        };
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            let read = match std::io::Read::read(&mut input, &mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
            };
            scanner.feed(&buffer[..read]);
            if let Body::Copy(temp) = &mut body {
                temp.write_all(&buffer[..read])
                    .map_err(|error| format!("cannot write its copy: {error}"))?;
            }
        }
        Ok(Candidate {
            check: scanner.finish(),
            body,
            validators: http::Validators::default(),
            file_stamp: None,
        })
    }

    /// Makes a good candidate the last good copy and opens it.
    fn keep(&self, spec: &SourceSpec, key: &str, candidate: Candidate) -> Result<Source> {
        match (candidate.body, &self.store) {
            (Body::Copy(temp), Some(store)) => {
                let meta = Meta {
                    source: spec.name.clone(),
                    channels: candidate.check.channels,
                    bytes: candidate.check.bytes,
                    etag: candidate.validators.etag,
                    last_modified: candidate.validators.last_modified,
                    saved_unix: Meta::now_unix(),
                    file_stamp: candidate.file_stamp,
                };
                let path = store.commit(key, temp, &meta).map_err(|error| {
                    Error::source(
                        &spec.name,
                        format!(
                            "cannot save its last good copy in {}: {error}",
                            store.directory().display()
                        ),
                    )
                })?;
                open_file(spec, &path)
            }
            (Body::Unnamed(mut file), _) => {
                std::io::Seek::rewind(&mut file).map_err(|error| Error::io("download", error))?;
                let mut source =
                    Source::from_reader(&spec.name, BufReader::with_capacity(256 << 10, file));
                source.size_hint = Some(candidate.check.bytes);
                Ok(source)
            }
            (Body::InPlace(path), _) => open_file(spec, &path),
            (Body::Copy(_), None) => Err(Error::config("internal error: a copy without a store")),
        }
    }
}

impl Body {
    /// The file a download is written to (`None` for a file read in place).
    fn file_mut(&mut self) -> Option<&mut File> {
        match self {
            Body::Copy(temp) => Some(temp.as_file_mut()),
            Body::Unnamed(file) => Some(file),
            Body::InPlace(_) => None,
        }
    }
}

fn open_file(spec: &SourceSpec, path: &Path) -> Result<Source> {
    let mut source = Source::open(path)?;
    source.name.clone_from(&spec.name);
    Ok(source)
}

/// Waits until `path` has not changed for `settle`: returns its length and
/// modification time, or why it is not read (missing, still being written).
fn settle(path: &Path, settle: Duration) -> std::result::Result<(u64, u128), String> {
    const LOOKS: u32 = 10;
    let look = || -> std::result::Result<(u64, SystemTime), String> {
        let metadata = std::fs::metadata(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if !metadata.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let modified = metadata
            .modified()
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Ok((metadata.len(), modified))
    };
    let stamp = |(len, modified): (u64, SystemTime)| {
        let nanos = modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        (len, nanos)
    };
    let mut current = look()?;
    for _ in 0..LOOKS {
        let age = SystemTime::now()
            .duration_since(current.1)
            .unwrap_or(Duration::ZERO);
        if age >= settle {
            return Ok(stamp(current));
        }
        std::thread::sleep(settle);
        let next = look()?;
        if next == current {
            return Ok(stamp(next));
        }
        current = next;
    }
    Err(format!(
        "it is still being written: its size or modification time changed in each of {LOOKS} \
         looks {} ms apart",
        settle.as_millis()
    ))
}

/// "3 min ago", for log lines.
fn describe_age(saved_unix: u64) -> String {
    let age = Meta::now_unix().saturating_sub(saved_unix);
    match age {
        0..=119 => format!("{age} s ago"),
        120..=7199 => format!("{} min ago", age / 60),
        _ => format!("{} h ago", age / 3600),
    }
}
