//! Memory pressure: how much of the memory the host may use is in use.
//!
//! [`MemoryMonitor`] reads the memory limit and usage of the host's cgroup
//! (cgroup v2) when it has a limit, otherwise the machine's
//! `/proc/meminfo`, and maps the fraction in use to a
//! [`MemoryPressureLevel`] with [`MemoryThresholds`]. The pipeline asks for
//! the level once per batch, so reads are cached for a short time
//! ([`DEFAULT_CACHE_TTL`]).
//!
//! Where nothing can be read (no `/proc`, e.g. macOS) the level is
//! [`MemoryPressureLevel::Optimal`]: refusing plugins everywhere because the
//! host cannot measure would be worse than not adapting. The failure is
//! logged once. A level can also be forced, for tests and for the command
//! line.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::abi::MemoryPressureLevel;
use crate::{Error, Result};

/// How long a reading is reused before the files are read again.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_millis(250);

/// Fractions of the memory limit in use at which each pressure level starts.
///
/// A fraction below `moderate` is [`MemoryPressureLevel::Optimal`]; at or
/// above `moderate` it is `Moderate`, and so on up to `Emergency`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryThresholds {
    /// Start of [`MemoryPressureLevel::Moderate`] (default 0.60).
    pub moderate: f64,
    /// Start of [`MemoryPressureLevel::High`] (default 0.75).
    pub high: f64,
    /// Start of [`MemoryPressureLevel::Critical`] (default 0.85).
    pub critical: f64,
    /// Start of [`MemoryPressureLevel::Emergency`] (default 0.95).
    pub emergency: f64,
}

impl Default for MemoryThresholds {
    fn default() -> Self {
        MemoryThresholds {
            moderate: 0.60,
            high: 0.75,
            critical: 0.85,
            emergency: 0.95,
        }
    }
}

impl MemoryThresholds {
    /// The level for a fraction of the limit in use (`NaN` counts as 0).
    pub fn level_for(&self, used_fraction: f64) -> MemoryPressureLevel {
        if used_fraction.is_nan() {
            MemoryPressureLevel::Optimal
        } else if used_fraction >= self.emergency {
            MemoryPressureLevel::Emergency
        } else if used_fraction >= self.critical {
            MemoryPressureLevel::Critical
        } else if used_fraction >= self.high {
            MemoryPressureLevel::High
        } else if used_fraction >= self.moderate {
            MemoryPressureLevel::Moderate
        } else {
            MemoryPressureLevel::Optimal
        }
    }

    /// Checks that every threshold is in `0.0..=1.0` and that they do not
    /// decrease from `moderate` to `emergency`.
    ///
    /// # Errors
    /// A configuration error naming the offending threshold.
    pub fn validate(&self) -> Result<()> {
        let named = [
            ("moderate", self.moderate),
            ("high", self.high),
            ("critical", self.critical),
            ("emergency", self.emergency),
        ];
        for (name, value) in named {
            if !(0.0..=1.0).contains(&value) {
                return Err(Error::config(format!(
                    "memory threshold `{name}` is {value}; it must be a fraction between 0.0 \
                     and 1.0 of the memory limit"
                )));
            }
        }
        for pair in named.windows(2) {
            let [(low_name, low), (high_name, high)] = pair else {
                continue;
            };
            if high < low {
                return Err(Error::config(format!(
                    "memory threshold `{high_name}` ({high}) is below `{low_name}` ({low}); \
                     thresholds must not decrease from moderate to emergency"
                )));
            }
        }
        Ok(())
    }
}

/// Where a [`MemorySnapshot`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemorySource {
    /// The cgroup v2 `memory.max` / `memory.current` of the host process.
    CgroupV2,
    /// The machine's `/proc/meminfo` (`MemTotal` / `MemAvailable`).
    ProcMeminfo,
}

impl MemorySource {
    /// Lowercase name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            MemorySource::CgroupV2 => "cgroup_v2",
            MemorySource::ProcMeminfo => "proc_meminfo",
        }
    }
}

impl fmt::Display for MemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One reading of memory use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// Bytes in use. For cgroup v2 this is `memory.current` minus the
    /// reclaimable `inactive_file` page cache of `memory.stat`.
    pub used_bytes: u64,
    /// The limit, in bytes (cgroup limit or total RAM).
    pub limit_bytes: u64,
    /// Bytes still available under the limit.
    pub available_bytes: u64,
    /// Where the numbers come from.
    pub source: MemorySource,
}

impl MemorySnapshot {
    /// `used_bytes / limit_bytes` (0 if the limit is 0).
    pub fn used_fraction(&self) -> f64 {
        if self.limit_bytes == 0 {
            0.0
        } else {
            self.used_bytes as f64 / self.limit_bytes as f64
        }
    }
}

/// A read failure, kept so that failures are rate-limited too.
#[derive(Clone, Debug)]
struct ReadError {
    path: PathBuf,
    kind: io::ErrorKind,
    message: String,
}

impl ReadError {
    fn new(path: &Path, kind: io::ErrorKind, message: impl Into<String>) -> Self {
        ReadError {
            path: path.to_path_buf(),
            kind,
            message: message.into(),
        }
    }

    fn from_io(path: &Path, error: &io::Error) -> Self {
        ReadError::new(path, error.kind(), error.to_string())
    }

    fn to_error(&self) -> Error {
        Error::io(
            self.path.clone(),
            io::Error::new(self.kind, self.message.clone()),
        )
    }
}

#[derive(Debug, Default)]
struct Cache {
    read_at: Option<Instant>,
    result: Option<std::result::Result<MemorySnapshot, ReadError>>,
}

/// Reads memory use and turns it into a [`MemoryPressureLevel`].
///
/// Shareable between threads (`&self` everywhere). Readings, failed ones
/// included, are reused for the cache time-to-live ([`DEFAULT_CACHE_TTL`]
/// unless changed with [`MemoryMonitor::with_cache_ttl`]).
#[derive(Debug)]
pub struct MemoryMonitor {
    thresholds: MemoryThresholds,
    root: PathBuf,
    cache_ttl: Duration,
    forced: Mutex<Option<MemoryPressureLevel>>,
    cache: Mutex<Cache>,
    warned: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryMonitor {
    /// A monitor reading the real `/sys/fs/cgroup` and `/proc`.
    pub fn new(thresholds: MemoryThresholds) -> Self {
        MemoryMonitor::with_root(thresholds, PathBuf::from("/"))
    }

    /// A monitor reading `<root>/sys/fs/cgroup/...` and `<root>/proc/...`
    /// instead (for tests).
    pub fn with_root(thresholds: MemoryThresholds, root: PathBuf) -> Self {
        MemoryMonitor {
            thresholds,
            root,
            cache_ttl: DEFAULT_CACHE_TTL,
            forced: Mutex::new(None),
            cache: Mutex::new(Cache::default()),
            warned: AtomicBool::new(false),
        }
    }

    /// The same monitor reusing readings for `ttl` (zero: read every time).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// The thresholds in use.
    pub fn thresholds(&self) -> &MemoryThresholds {
        &self.thresholds
    }

    /// Makes [`level`](Self::level) return `level` regardless of readings
    /// (`None` goes back to measuring).
    pub fn force_level(&self, level: Option<MemoryPressureLevel>) {
        *lock(&self.forced) = level;
    }

    /// The forced level, if any.
    pub fn forced_level(&self) -> Option<MemoryPressureLevel> {
        *lock(&self.forced)
    }

    /// Drops the cached reading so the next call reads the files.
    pub fn invalidate(&self) {
        *lock(&self.cache) = Cache::default();
    }

    /// Current memory use: cgroup v2 if the process's cgroup has a limit
    /// (`memory.max` exists and is not `max`), else `/proc/meminfo`.
    /// Cached for the cache time-to-live.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if neither source can be read
    /// (also returned from the cache until it expires).
    pub fn snapshot(&self) -> Result<MemorySnapshot> {
        let mut cache = lock(&self.cache);
        let fresh = cache
            .read_at
            .is_some_and(|at| at.elapsed() < self.cache_ttl);
        if !fresh || cache.result.is_none() {
            cache.result = Some(self.read());
            cache.read_at = Some(Instant::now());
        }
        match &cache.result {
            Some(Ok(snapshot)) => Ok(*snapshot),
            Some(Err(error)) => Err(error.to_error()),
            None => Err(Error::io(
                self.root.clone(),
                io::Error::other("memory was not read"),
            )),
        }
    }

    /// The current pressure level: the forced level if there is one, else
    /// the thresholds applied to [`snapshot`](Self::snapshot). If memory
    /// cannot be read, [`MemoryPressureLevel::Optimal`] (logged once as a
    /// warning).
    pub fn level(&self) -> MemoryPressureLevel {
        if let Some(level) = self.forced_level() {
            return level;
        }
        match self.snapshot() {
            Ok(snapshot) => self.thresholds.level_for(snapshot.used_fraction()),
            Err(error) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "cannot read memory usage ({error}); assuming optimal memory pressure"
                    );
                }
                MemoryPressureLevel::Optimal
            }
        }
    }

    fn read(&self) -> std::result::Result<MemorySnapshot, ReadError> {
        if let Some(snapshot) = self.read_cgroup() {
            return Ok(snapshot);
        }
        self.read_meminfo()
    }

    /// Cgroup directories to try: the process's own cgroup (from
    /// `/proc/self/cgroup`), then the cgroup mount root (which is the
    /// container's cgroup under a cgroup namespace).
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mount = self.root.join("sys/fs/cgroup");
        let mut dirs = Vec::with_capacity(2);
        if let Ok(text) = std::fs::read_to_string(self.root.join("proc/self/cgroup")) {
            // cgroup v2 line: `0::/path`.
            let own = text
                .lines()
                .find_map(|line| line.strip_prefix("0::"))
                .map(|path| path.trim().trim_start_matches('/'))
                .filter(|path| !path.is_empty() && !path.split('/').any(|c| c == ".."));
            if let Some(path) = own {
                dirs.push(mount.join(path));
            }
        }
        dirs.push(mount);
        dirs
    }

    fn read_cgroup(&self) -> Option<MemorySnapshot> {
        for dir in self.cgroup_dirs() {
            let Ok(max) = std::fs::read_to_string(dir.join("memory.max")) else {
                continue;
            };
            let max = max.trim();
            if max == "max" {
                continue;
            }
            let Some(limit) = max.parse::<u64>().ok().filter(|&l| l > 0) else {
                log::debug!(
                    "ignoring unreadable cgroup limit {max:?} in {}",
                    dir.display()
                );
                continue;
            };
            let current = std::fs::read_to_string(dir.join("memory.current"))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            let Some(current) = current else {
                log::debug!("no usable memory.current in {}", dir.display());
                continue;
            };
            let inactive_file = std::fs::read_to_string(dir.join("memory.stat"))
                .ok()
                .and_then(|stat| {
                    stat.lines().find_map(|line| {
                        let value = line.strip_prefix("inactive_file ")?;
                        value.trim().parse::<u64>().ok()
                    })
                })
                .unwrap_or(0);
            let used = current.saturating_sub(inactive_file);
            return Some(MemorySnapshot {
                used_bytes: used,
                limit_bytes: limit,
                available_bytes: limit.saturating_sub(used),
                source: MemorySource::CgroupV2,
            });
        }
        None
    }

    fn read_meminfo(&self) -> std::result::Result<MemorySnapshot, ReadError> {
        let path = self.root.join("proc/meminfo");
        let text =
            std::fs::read_to_string(&path).map_err(|error| ReadError::from_io(&path, &error))?;
        let Some(total) = kv_bytes(&text, "MemTotal").filter(|&t| t > 0) else {
            return Err(ReadError::new(
                &path,
                io::ErrorKind::InvalidData,
                "no usable MemTotal line",
            ));
        };
        let available = kv_bytes(&text, "MemAvailable")
            .or_else(|| {
                // Kernels before 3.14 have no MemAvailable.
                let free = kv_bytes(&text, "MemFree")?;
                Some(
                    free.saturating_add(kv_bytes(&text, "Buffers").unwrap_or(0))
                        .saturating_add(kv_bytes(&text, "Cached").unwrap_or(0)),
                )
            })
            .ok_or_else(|| {
                ReadError::new(
                    &path,
                    io::ErrorKind::InvalidData,
                    "neither MemAvailable nor MemFree is present",
                )
            })?
            .min(total);
        Ok(MemorySnapshot {
            used_bytes: total - available,
            limit_bytes: total,
            available_bytes: available,
            source: MemorySource::ProcMeminfo,
        })
    }
}

impl Default for MemoryMonitor {
    /// A monitor with the default thresholds, reading the real system.
    fn default() -> Self {
        MemoryMonitor::new(MemoryThresholds::default())
    }
}

/// The value of a `Key:   123 kB` line (`/proc/meminfo`, `/proc/self/status`)
/// in bytes.
fn kv_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            None => Some(value),
            Some(unit) if unit.eq_ignore_ascii_case("kb") => value.checked_mul(1024),
            Some(_) => None,
        }
    })
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kv_bytes(&status, key)
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`),
/// `None` where that file does not exist.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM")
}

/// Current resident set size of this process (`VmRSS` of
/// `/proc/self/status`), `None` where that file does not exist.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::atomic::AtomicUsize;

    /// A fake filesystem root, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "m3u-plugin-host-memory-{}-{}-{}",
                std::process::id(),
                name,
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp root");
            FakeRoot(dir)
        }

        fn write(&self, path: &str, content: &str) -> &Self {
            let path = self.0.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dirs");
            }
            std::fs::write(path, content).expect("write fake file");
            self
        }

        fn monitor(&self) -> MemoryMonitor {
            MemoryMonitor::with_root(MemoryThresholds::default(), self.0.clone())
                .with_cache_ttl(Duration::ZERO)
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MEMINFO: &str = "MemTotal:        1000 kB\n\
                           MemFree:          50 kB\n\
                           MemAvailable:     100 kB\n\
                           Buffers:          20 kB\n\
                           Cached:           30 kB\n\
                           HugePages_Total:       0\n";

    #[test]
    fn cgroup_v2_with_a_limit() {
        let root = FakeRoot::new("cgroup");
        root.write("sys/fs/cgroup/memory.max", "1000000\n")
            .write("sys/fs/cgroup/memory.current", "600000\n")
            .write("proc/meminfo", MEMINFO);
        let monitor = root.monitor();
        let snapshot = monitor.snapshot().expect("snapshot");
        assert_eq!(
            snapshot,
            MemorySnapshot {
                used_bytes: 600_000,
                limit_bytes: 1_000_000,
                available_bytes: 400_000,
                source: MemorySource::CgroupV2,
            }
        );
        assert_eq!(monitor.level(), MemoryPressureLevel::Moderate);
    }

    #[test]
    fn cgroup_v2_discounts_inactive_file_cache() {
        let root = FakeRoot::new("cgroup-stat");
        root.write("sys/fs/cgroup/memory.max", "1000000")
            .write("sys/fs/cgroup/memory.current", "900000")
            .write(
                "sys/fs/cgroup/memory.stat",
                "anon 100\nfile 500000\nactive_file 100000\ninactive_file 400000\n",
            );
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!(snapshot.used_bytes, 500_000);
        assert_eq!(snapshot.available_bytes, 500_000);
        assert_eq!(root.monitor().level(), MemoryPressureLevel::Optimal);
    }

    #[test]
    fn own_cgroup_from_proc_self_cgroup_comes_first() {
        let root = FakeRoot::new("own-cgroup");
        root.write("proc/self/cgroup", "0::/app.slice/m3u.service\n")
            .write("sys/fs/cgroup/app.slice/m3u.service/memory.max", "2000")
            .write("sys/fs/cgroup/app.slice/m3u.service/memory.current", "1900")
            .write("sys/fs/cgroup/memory.max", "1000000")
            .write("sys/fs/cgroup/memory.current", "1");
        let monitor = root.monitor();
        let snapshot = monitor.snapshot().expect("snapshot");
        assert_eq!(snapshot.limit_bytes, 2000);
        assert_eq!(snapshot.used_bytes, 1900);
        assert_eq!(monitor.level(), MemoryPressureLevel::Emergency);

        // Own cgroup unlimited: the mount root's limit is used.
        root.write("sys/fs/cgroup/app.slice/m3u.service/memory.max", "max");
        let snapshot = monitor.snapshot().expect("snapshot");
        assert_eq!(snapshot.limit_bytes, 1_000_000);
        assert_eq!(snapshot.used_bytes, 1);
    }

    #[test]
    fn max_falls_back_to_meminfo() {
        let root = FakeRoot::new("max");
        root.write("sys/fs/cgroup/memory.max", "max\n")
            .write("sys/fs/cgroup/memory.current", "600000\n")
            .write("proc/meminfo", MEMINFO);
        let monitor = root.monitor();
        let snapshot = monitor.snapshot().expect("snapshot");
        assert_eq!(
            snapshot,
            MemorySnapshot {
                used_bytes: 900 * 1024,
                limit_bytes: 1000 * 1024,
                available_bytes: 100 * 1024,
                source: MemorySource::ProcMeminfo,
            }
        );
        assert_eq!(monitor.level(), MemoryPressureLevel::Critical);
    }

    #[test]
    fn no_cgroup_or_garbage_limit_falls_back_to_meminfo() {
        let root = FakeRoot::new("no-cgroup");
        root.write("proc/meminfo", MEMINFO);
        assert_eq!(
            root.monitor().snapshot().expect("snapshot").source,
            MemorySource::ProcMeminfo
        );
        root.write("sys/fs/cgroup/memory.max", "lots")
            .write("sys/fs/cgroup/memory.current", "5");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot").source,
            MemorySource::ProcMeminfo
        );
        // A limit without memory.current is not usable either.
        let root = FakeRoot::new("no-current");
        root.write("sys/fs/cgroup/memory.max", "1000")
            .write("proc/meminfo", MEMINFO);
        assert_eq!(
            root.monitor().snapshot().expect("snapshot").source,
            MemorySource::ProcMeminfo
        );
    }

    #[test]
    fn meminfo_without_memavailable() {
        let root = FakeRoot::new("old-kernel");
        root.write(
            "proc/meminfo",
            "MemTotal: 1000 kB\nMemFree: 200 kB\nBuffers: 100 kB\nCached: 100 kB\n",
        );
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!(snapshot.available_bytes, 400 * 1024);
        assert_eq!(snapshot.used_bytes, 600 * 1024);
        assert!((snapshot.used_fraction() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn unreadable_memory_is_an_error_and_optimal() {
        let root = FakeRoot::new("nothing");
        let monitor = root.monitor();
        let error = monitor.snapshot().expect_err("nothing to read");
        assert!(matches!(error.kind(), ErrorKind::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("meminfo"), "{error}");
        assert_eq!(monitor.level(), MemoryPressureLevel::Optimal);
        assert_eq!(monitor.level(), MemoryPressureLevel::Optimal);

        root.write("proc/meminfo", "MemFree: 5 kB\n");
        let error = monitor.snapshot().expect_err("no MemTotal");
        assert!(error.to_string().contains("MemTotal"), "{error}");
    }

    #[test]
    fn thresholds_map_fractions_to_levels() {
        let t = MemoryThresholds::default();
        assert_eq!(t.level_for(0.0), MemoryPressureLevel::Optimal);
        assert_eq!(t.level_for(0.599), MemoryPressureLevel::Optimal);
        assert_eq!(t.level_for(0.60), MemoryPressureLevel::Moderate);
        assert_eq!(t.level_for(0.749), MemoryPressureLevel::Moderate);
        assert_eq!(t.level_for(0.75), MemoryPressureLevel::High);
        assert_eq!(t.level_for(0.85), MemoryPressureLevel::Critical);
        assert_eq!(t.level_for(0.9499), MemoryPressureLevel::Critical);
        assert_eq!(t.level_for(0.95), MemoryPressureLevel::Emergency);
        assert_eq!(t.level_for(1.7), MemoryPressureLevel::Emergency);
        assert_eq!(t.level_for(f64::NAN), MemoryPressureLevel::Optimal);
        let custom = MemoryThresholds {
            moderate: 0.1,
            high: 0.2,
            critical: 0.3,
            emergency: 0.4,
        };
        assert_eq!(custom.level_for(0.25), MemoryPressureLevel::High);
    }

    #[test]
    fn thresholds_validation() {
        assert!(MemoryThresholds::default().validate().is_ok());
        let bad = MemoryThresholds {
            high: 0.5,
            ..MemoryThresholds::default()
        };
        let message = bad.validate().expect_err("decreasing").to_string();
        assert!(
            message.contains("`high` (0.5) is below `moderate` (0.6)"),
            "{message}"
        );
        let bad = MemoryThresholds {
            emergency: 1.5,
            ..MemoryThresholds::default()
        };
        assert!(bad
            .validate()
            .expect_err("too big")
            .to_string()
            .contains("`emergency` is 1.5"));
        let bad = MemoryThresholds {
            moderate: f64::NAN,
            ..MemoryThresholds::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn forced_level_wins() {
        let root = FakeRoot::new("forced");
        root.write("sys/fs/cgroup/memory.max", "100")
            .write("sys/fs/cgroup/memory.current", "10");
        let monitor = root.monitor();
        assert_eq!(monitor.level(), MemoryPressureLevel::Optimal);
        monitor.force_level(Some(MemoryPressureLevel::Critical));
        assert_eq!(monitor.forced_level(), Some(MemoryPressureLevel::Critical));
        assert_eq!(monitor.level(), MemoryPressureLevel::Critical);
        monitor.force_level(None);
        assert_eq!(monitor.level(), MemoryPressureLevel::Optimal);

        // Also when nothing can be read.
        let empty = FakeRoot::new("forced-empty");
        let monitor = empty.monitor();
        monitor.force_level(Some(MemoryPressureLevel::Emergency));
        assert_eq!(monitor.level(), MemoryPressureLevel::Emergency);
    }

    #[test]
    fn readings_are_cached() {
        let root = FakeRoot::new("cache");
        root.write("sys/fs/cgroup/memory.max", "100")
            .write("sys/fs/cgroup/memory.current", "10");
        let monitor = MemoryMonitor::with_root(MemoryThresholds::default(), root.0.clone())
            .with_cache_ttl(Duration::from_secs(3600));
        assert_eq!(monitor.snapshot().expect("snapshot").used_bytes, 10);
        root.write("sys/fs/cgroup/memory.current", "99");
        assert_eq!(monitor.snapshot().expect("snapshot").used_bytes, 10);
        assert_eq!(monitor.level(), MemoryPressureLevel::Optimal);
        monitor.invalidate();
        assert_eq!(monitor.snapshot().expect("snapshot").used_bytes, 99);
        assert_eq!(monitor.level(), MemoryPressureLevel::Emergency);

        // Without a cache every call reads.
        let uncached = root.monitor();
        root.write("sys/fs/cgroup/memory.current", "70");
        assert_eq!(uncached.level(), MemoryPressureLevel::Moderate);
        root.write("sys/fs/cgroup/memory.current", "80");
        assert_eq!(uncached.level(), MemoryPressureLevel::High);
    }

    #[test]
    fn failures_are_cached_too() {
        let root = FakeRoot::new("cache-fail");
        let monitor = MemoryMonitor::with_root(MemoryThresholds::default(), root.0.clone())
            .with_cache_ttl(Duration::from_secs(3600));
        assert!(monitor.snapshot().is_err());
        root.write("proc/meminfo", MEMINFO);
        assert!(monitor.snapshot().is_err());
        monitor.invalidate();
        assert_eq!(
            monitor.snapshot().expect("snapshot").source,
            MemorySource::ProcMeminfo
        );
    }

    #[test]
    fn key_value_parsing() {
        let status = "Name:\tcargo\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads: 4\nBad: 1 MB\n";
        assert_eq!(kv_bytes(status, "VmHWM"), Some(2048 * 1024));
        assert_eq!(kv_bytes(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(kv_bytes(status, "Threads"), Some(4));
        assert_eq!(kv_bytes(status, "Bad"), None);
        assert_eq!(kv_bytes(status, "VmSwap"), None);
        assert_eq!(kv_bytes("VmRSSX: 5 kB\n", "VmRSS"), None);
        assert_eq!(kv_bytes("VmRSS: 99999999999999999999 kB\n", "VmRSS"), None);
    }

    #[test]
    fn own_rss_is_readable_on_linux() {
        if Path::new("/proc/self/status").exists() {
            assert!(peak_rss_bytes().expect("VmHWM") > 0);
            assert!(current_rss_bytes().expect("VmRSS") > 0);
        } else {
            assert_eq!(peak_rss_bytes(), None);
        }
    }

    #[test]
    fn thresholds_deserialize_with_defaults() {
        use serde::de::value::{Error as DeError, MapDeserializer};
        let map = MapDeserializer::<_, DeError>::new([("high", 0.7f64)].into_iter());
        let t = MemoryThresholds::deserialize(map).expect("deserialize");
        assert_eq!(
            t,
            MemoryThresholds {
                high: 0.7,
                ..MemoryThresholds::default()
            }
        );
    }
}
