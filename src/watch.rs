//! Noticing that files changed without reading them: a file's [`Stamp`]
//! (modification time and size, optionally with a companion file's), the
//! files of a directory with given extensions, and a log line saying what
//! differs between two sets of stamps. Used by `serve` to decide when to
//! regenerate, and by plugin hot reload to decide what to reload.
//!
//! A stamp is a cheap guess, not a checksum: a file rewritten within the
//! timestamp resolution of its file system to exactly the same size keeps
//! its stamp. Replacing files by rename always changes it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What identifies one version of a file: its modification time and size,
/// and those of its companion file (such as a plugin's detached `.sig`) when
/// it was stamped with one. Compare stamps with `==`; the default stamp
/// matches no file that exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Modification time, if the file system reports one.
    pub modified: Option<SystemTime>,
    /// Size in bytes.
    pub len: u64,
    /// Modification time and size of the companion file; `None` when there is
    /// no companion or it does not exist.
    pub companion: Option<(Option<SystemTime>, u64)>,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            companion: None,
        }
    }
}

/// The stamp of a file.
///
/// # Errors
/// The file does not exist or cannot be inspected.
pub fn stamp(path: &Path) -> io::Result<Stamp> {
    Ok(Stamp::of(&std::fs::metadata(path)?))
}

/// The stamp of a file together with its companion (e.g. a plugin module and
/// its detached signature, [`crate::signing::signature_path`]): it changes
/// when either file changes, and when the companion appears or disappears.
///
/// # Errors
/// `path` itself does not exist or cannot be inspected; a missing companion
/// is not an error.
pub fn stamp_with_companion(path: &Path, companion: &Path) -> io::Result<Stamp> {
    let mut stamp = stamp(path)?;
    stamp.companion = std::fs::metadata(companion)
        .ok()
        .map(|metadata| (metadata.modified().ok(), metadata.len()));
    Ok(stamp)
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| extensions.contains(&ext))
}

/// The entries of `directory` whose extension is one of `extensions`
/// (compared exactly, without the dot), sorted. Not recursive.
///
/// # Errors
/// The directory cannot be read.
pub fn files_with_extensions(directory: &Path, extensions: &[&str]) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| has_extension(path, extensions))
        .collect();
    files.sort();
    Ok(files)
}

/// The entries of `directory` with the extension `extension` (without the
/// dot), sorted: [`files_with_extensions`] with one extension.
///
/// # Errors
/// The directory cannot be read.
pub fn files_with_extension(directory: &Path, extension: &str) -> io::Result<Vec<PathBuf>> {
    files_with_extensions(directory, &[extension])
}

/// Stamps of watched paths; `None` for a path that does not exist (so that
/// its appearance is a change too).
pub type Stamps = BTreeMap<PathBuf, Option<Stamp>>;

/// The stamps of `paths`, missing files included as `None`.
pub fn stamps<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Stamps {
    paths
        .into_iter()
        .map(|path| (path.clone(), stamp(path).ok()))
        .collect()
}

/// The files of `directory` with one of `extensions`, with their stamps;
/// empty when the directory cannot be read (a directory that appears later
/// shows up as files appearing).
pub fn directory_stamps(directory: &Path, extensions: &[&str]) -> BTreeMap<PathBuf, Stamp> {
    files_with_extensions(directory, extensions)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|path| stamp(&path).ok().map(|s| (path, s)))
        .collect()
}

/// Says what differs between two stamp sets, for the log: at most three
/// paths (`appeared`, `disappeared`, `changed`), then how many more.
pub fn describe_change(before: &Stamps, after: &Stamps) -> String {
    let mut changes = Vec::new();
    for (path, now) in after {
        match (before.get(path), now) {
            (None | Some(None), Some(_)) => changes.push(format!("{} appeared", path.display())),
            (Some(Some(_)), None) => changes.push(format!("{} disappeared", path.display())),
            (Some(old), now) if old != now => changes.push(format!("{} changed", path.display())),
            _ => {}
        }
    }
    for path in before.keys().filter(|path| !after.contains_key(*path)) {
        changes.push(format!("{} disappeared", path.display()));
    }
    let total = changes.len();
    changes.truncate(3);
    if total > changes.len() {
        changes.push(format!("{} more", total - changes.len()));
    }
    changes.join(", ")
}

/// `O_NONBLOCK` on Linux (every architecture this crate builds for): an
/// `open` that would wait (a FIFO with no writer) returns at once.
#[cfg(target_os = "linux")]
const OPEN_NONBLOCKING: i32 = 0o4000;

/// Opens `path` for reading only if it is a regular file (or a link to
/// one): a FIFO, socket or device in a watched directory would block or
/// never end. The file is opened without blocking and checked again after
/// opening, so a path swapped in between cannot block either.
///
/// # Errors
/// The path cannot be opened, or it is not a regular file (`InvalidInput`,
/// saying so).
pub fn open_regular_file(path: &Path) -> io::Result<std::fs::File> {
    let not_regular = || io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, OPEN_NONBLOCKING);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "m3u-watch-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn at(len: u64) -> Option<Stamp> {
        Some(Stamp {
            len,
            ..Stamp::default()
        })
    }

    #[test]
    fn a_stamp_follows_size_and_existence() {
        let dir = scratch("stamp");
        let file = dir.join("a.m3u");
        assert!(stamp(&file).is_err(), "no file, no stamp");
        std::fs::write(&file, b"#EXTM3U\n").unwrap();
        let first = stamp(&file).unwrap();
        assert_eq!(first.len, 8);
        assert_eq!(first.companion, None);
        assert_eq!(stamp(&file).unwrap(), first, "unchanged file, same stamp");
        std::fs::write(&file, b"#EXTM3U\n#EXTINF:-1,x\n").unwrap();
        assert_ne!(stamp(&file).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_companion_changes_the_stamp_when_it_appears_changes_or_goes() {
        let dir = scratch("companion");
        let module = dir.join("p.wasm");
        let signature = dir.join("p.wasm.sig");
        assert!(stamp_with_companion(&module, &signature).is_err());
        std::fs::write(&module, b"\0asm").unwrap();
        let alone = stamp_with_companion(&module, &signature).unwrap();
        assert_eq!(
            alone,
            stamp(&module).unwrap(),
            "no companion: the file's stamp"
        );
        std::fs::write(&signature, b"sig").unwrap();
        let signed = stamp_with_companion(&module, &signature).unwrap();
        assert_ne!(signed, alone);
        assert_eq!(signed.companion.map(|(_, len)| len), Some(3));
        std::fs::write(&signature, b"other signature").unwrap();
        let resigned = stamp_with_companion(&module, &signature).unwrap();
        assert_ne!(resigned, signed, "only the companion changed");
        std::fs::remove_file(&signature).unwrap();
        assert_eq!(stamp_with_companion(&module, &signature).unwrap(), alone);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directory_files_are_filtered_by_extension_and_sorted() {
        let dir = scratch("directory");
        for name in ["b.wasm", "a.wasm", "a.wasm.sig", "notes.txt", "wasm"] {
            std::fs::write(dir.join(name), name).unwrap();
        }
        assert_eq!(
            files_with_extension(&dir, "wasm").unwrap(),
            [dir.join("a.wasm"), dir.join("b.wasm")]
        );
        let stamps = directory_stamps(&dir, &["wasm", "sig"]);
        let names: Vec<_> = stamps.keys().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(names, ["a.wasm", "a.wasm.sig", "b.wasm"]);
        assert_eq!(stamps[&dir.join("a.wasm.sig")].len, 10);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(files_with_extension(&dir, "wasm").is_err());
        assert!(directory_stamps(&dir, &["wasm"]).is_empty());
    }

    #[test]
    fn missing_paths_are_stamped_as_none() {
        let dir = scratch("missing");
        let there = dir.join("there.m3u");
        std::fs::write(&there, b"x").unwrap();
        let gone = dir.join("gone.m3u");
        let stamps = stamps([&there, &gone]);
        assert_eq!(stamps[&gone], None);
        assert_eq!(stamps[&there].map(|s| s.len), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_are_described_for_the_log() {
        let a = Path::new("/a.m3u").to_path_buf();
        let b = Path::new("/p/b.wasm").to_path_buf();
        let before: Stamps = [(a.clone(), at(1)), (b.clone(), at(2))].into();
        let after: Stamps = [(a, at(3))].into();
        assert_eq!(
            describe_change(&before, &after),
            "/a.m3u changed, /p/b.wasm disappeared"
        );
        let missing: Stamps = [(Path::new("/c.m3u").to_path_buf(), None)].into();
        let present: Stamps = [(Path::new("/c.m3u").to_path_buf(), at(1))].into();
        assert_eq!(describe_change(&missing, &present), "/c.m3u appeared");
        assert_eq!(describe_change(&present, &missing), "/c.m3u disappeared");
        let many: Stamps = (0..5)
            .map(|i| (PathBuf::from(format!("/{i}.m3u")), at(i)))
            .collect();
        assert_eq!(
            describe_change(&Stamps::new(), &many),
            "/0.m3u appeared, /1.m3u appeared, /2.m3u appeared, 2 more"
        );
    }
}
