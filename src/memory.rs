//! Memory pressure: how much of the memory the host may use is in use.
//!
//! [`MemoryMonitor`] reads the memory limit and usage of the host's cgroup
//! when it has a limit, otherwise the machine's `/proc/meminfo`, and maps
//! the fraction in use to a [`MemoryPressureLevel`] with
//! [`MemoryThresholds`].
//!
//! The cgroup is found from `/proc/self/cgroup` (the `0::` line for cgroup
//! v2, the line whose controllers include `memory` for cgroup v1) and the
//! cgroup mounts of `/proc/self/mountinfo` (else `/sys/fs/cgroup` and
//! `/sys/fs/cgroup/unified` for v2, `/sys/fs/cgroup/memory` for v1). This
//! works outside a cgroup namespace, where the path is the full path under
//! the mount, and inside one (or in a Docker container), where the mount
//! point is the container's own cgroup. In each hierarchy the process's
//! cgroup and then each parent up to the mount point is read, since a
//! parent's limit limits its children too:
//!
//! - cgroup v2: limit `memory.max` (`max`: none), usage `memory.current`;
//! - cgroup v1: limit `memory.limit_in_bytes` (from 2^62 or from the
//!   machine's `MemTotal` up: none), usage `memory.usage_in_bytes`;
//!
//! in both minus the reclaimable page cache of `memory.stat`
//! (`inactive_file`; for v1 the hierarchical `total_inactive_file` first).
//! Of all limited cgroups, v2 and v1, the one with the least memory
//! available is reported, as its limit is the one that binds first. Only
//! if none has a limit is `/proc/meminfo` (`MemTotal`, `MemAvailable`)
//! read.
//!
//! The pipeline asks for the level once per batch, so reads are cached for
//! a short time ([`DEFAULT_CACHE_TTL`]).
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
    /// The cgroup v2 `memory.max` / `memory.current` of the host process's
    /// cgroup or of the ancestor whose limit binds.
    CgroupV2,
    /// The cgroup v1 `memory.limit_in_bytes` / `memory.usage_in_bytes` of
    /// the host process's memory cgroup or of the ancestor whose limit binds.
    CgroupV1,
    /// The machine's `/proc/meminfo` (`MemTotal` / `MemAvailable`).
    ProcMeminfo,
}

impl MemorySource {
    /// Lowercase name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            MemorySource::CgroupV2 => "cgroup_v2",
            MemorySource::CgroupV1 => "cgroup_v1",
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
    /// Bytes in use. For a cgroup this is its usage (`memory.current`,
    /// v1 `memory.usage_in_bytes`) minus the reclaimable inactive page cache
    /// of `memory.stat` (`inactive_file`, v1 `total_inactive_file`).
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

    /// Current memory use: that of the process's cgroup or cgroup ancestor
    /// (v2 or v1) with the least memory available under its limit, or
    /// `/proc/meminfo` if no cgroup has a limit (see the module
    /// documentation). Cached for the cache time-to-live.
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
        if let Some(snapshot) = self.read_cgroups() {
            return Ok(snapshot);
        }
        self.read_meminfo()
    }

    /// The binding cgroup limit, over both cgroup versions: of every limited
    /// cgroup from the process's own up to the mount root of its hierarchy,
    /// the one leaving the least memory available, because a parent's limit
    /// limits its children too and whichever runs out first is what matters.
    /// `None` if no cgroup has a usable limit.
    fn read_cgroups(&self) -> Option<MemorySnapshot> {
        // Without /proc/self/cgroup only the mount roots are read.
        let proc_self_cgroup =
            std::fs::read_to_string(self.root.join("proc/self/cgroup")).unwrap_or_default();
        let mountinfo = std::fs::read_to_string(self.root.join("proc/self/mountinfo")).ok();
        let mem_total = self.mem_total();
        let mut best: Option<MemorySnapshot> = None;
        for version in [CgroupVersion::V2, CgroupVersion::V1] {
            let own_path = version.own_path(&proc_self_cgroup);
            for mount in self.cgroup_mounts(version, mountinfo.as_deref()) {
                for dir in mount.dirs_upwards(own_path) {
                    let Some(snapshot) = version.read_dir(&dir, mem_total) else {
                        continue;
                    };
                    // Strictly smaller: on a tie the cgroup found first (v2
                    // before v1, own before ancestors) is kept.
                    if best.is_none_or(|b| snapshot.available_bytes < b.available_bytes) {
                        best = Some(snapshot);
                    }
                }
            }
        }
        best
    }

    /// Where the hierarchy of `version` is mounted: the matching mounts of
    /// `/proc/self/mountinfo` (which also finds mounts with unusual names,
    /// such as `/sys/fs/cgroup/cpu,memory`), or the usual mount points if
    /// that file cannot be read or lists none.
    fn cgroup_mounts(&self, version: CgroupVersion, mountinfo: Option<&str>) -> Vec<CgroupMount> {
        let listed: Vec<CgroupMount> = mountinfo
            .into_iter()
            .flat_map(str::lines)
            .filter_map(MountinfoEntry::parse)
            .filter(|entry| version.is_mount(entry))
            .map(|entry| CgroupMount {
                dir: self.root.join(entry.mount_point.trim_start_matches('/')),
                root: entry.root,
            })
            .collect();
        if !listed.is_empty() {
            return listed;
        }
        version
            .default_mount_points()
            .iter()
            .map(|point| CgroupMount {
                dir: self.root.join(point),
                root: "/".to_owned(),
            })
            .collect()
    }

    /// The machine's RAM (`MemTotal` of `/proc/meminfo`), used to recognise
    /// cgroup v1 limits too large to ever bind.
    fn mem_total(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.root.join("proc/meminfo")).ok()?;
        kv_bytes(&text, "MemTotal").filter(|&total| total > 0)
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

/// cgroup v1 limits from 2^62 bytes up mean "no limit": the kernel reports
/// an unset limit as the largest page-aligned value (9223372036854771712
/// with 4 KiB pages, a little less with larger pages), never a real size.
const CGROUP_V1_UNLIMITED: u64 = 1 << 62;

/// The two cgroup versions, which name the same numbers differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CgroupVersion {
    /// One hierarchy per controller set; the memory one usually at
    /// `/sys/fs/cgroup/memory` (Docker on many NAS systems, older distros).
    V1,
    /// The unified hierarchy, at `/sys/fs/cgroup` (or
    /// `/sys/fs/cgroup/unified` on hybrid hosts, where it has no memory
    /// controller).
    V2,
}

impl CgroupVersion {
    fn source(self) -> MemorySource {
        match self {
            CgroupVersion::V1 => MemorySource::CgroupV1,
            CgroupVersion::V2 => MemorySource::CgroupV2,
        }
    }

    fn limit_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        }
    }

    /// `memory.stat` keys of the reclaimable page cache, best first. v1's
    /// plain `inactive_file` leaves out child cgroups while its usage counts
    /// them, so the hierarchical `total_inactive_file` is preferred; v2's
    /// `memory.stat` is hierarchical already.
    fn inactive_file_keys(self) -> &'static [&'static str] {
        match self {
            CgroupVersion::V1 => &["total_inactive_file", "inactive_file"],
            CgroupVersion::V2 => &["inactive_file"],
        }
    }

    /// Mount points (relative to the filesystem root) tried when
    /// `/proc/self/mountinfo` lists none.
    fn default_mount_points(self) -> &'static [&'static str] {
        match self {
            CgroupVersion::V1 => &["sys/fs/cgroup/memory"],
            CgroupVersion::V2 => &["sys/fs/cgroup", "sys/fs/cgroup/unified"],
        }
    }

    /// Whether a mount is this version's hierarchy with the memory
    /// controller (v1 mounts name their controllers in the super options).
    fn is_mount(self, entry: &MountinfoEntry) -> bool {
        match self {
            CgroupVersion::V1 => {
                entry.fs_type == "cgroup" && entry.super_options.split(',').any(|o| o == "memory")
            }
            CgroupVersion::V2 => entry.fs_type == "cgroup2",
        }
    }

    /// The process's cgroup path in this hierarchy, from the text of
    /// `/proc/self/cgroup` (lines `id:controllers:path`; v2 is `0::path`,
    /// v1 memory is e.g. `4:memory:/docker/abc` or `7:cpu,memory:/x`).
    /// `None` if there is no such line or the path leaves the cgroup
    /// namespace (`/../..`), in which case only the mount root is read.
    fn own_path(self, proc_self_cgroup: &str) -> Option<&str> {
        proc_self_cgroup
            .lines()
            .find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                let matches = match self {
                    CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
                    CgroupVersion::V2 => id == "0" && controllers.is_empty(),
                };
                matches.then_some(path.trim())
            })
            .filter(|path| !path.split('/').any(|component| component == ".."))
    }

    /// The limit in a limit file's text, `None` for "no limit" and for
    /// values that cannot be used.
    fn parse_limit(self, text: &str, mem_total: Option<u64>, dir: &Path) -> Option<u64> {
        if self == CgroupVersion::V2 && text == "max" {
            return None;
        }
        let Some(limit) = text.parse::<u64>().ok().filter(|&l| l > 0) else {
            log::debug!(
                "ignoring unreadable cgroup limit {text:?} in {}",
                dir.display()
            );
            return None;
        };
        let unlimited = self == CgroupVersion::V1
            && (limit >= CGROUP_V1_UNLIMITED || mem_total.is_some_and(|total| limit >= total));
        (!unlimited).then_some(limit)
    }

    /// The reading of one cgroup directory, `None` if it does not exist, has
    /// no limit, or its usage cannot be read. Used memory is the usage minus
    /// the inactive page cache, which the kernel reclaims before it runs out.
    fn read_dir(self, dir: &Path, mem_total: Option<u64>) -> Option<MemorySnapshot> {
        let limit_text = std::fs::read_to_string(dir.join(self.limit_file())).ok()?;
        let limit = self.parse_limit(limit_text.trim(), mem_total, dir)?;
        let usage = std::fs::read_to_string(dir.join(self.usage_file()))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        let Some(usage) = usage else {
            log::debug!("no usable {} in {}", self.usage_file(), dir.display());
            return None;
        };
        let inactive_file = std::fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|stat| {
                self.inactive_file_keys()
                    .iter()
                    .find_map(|key| stat_value(&stat, key))
            })
            .unwrap_or(0);
        let used = usage.saturating_sub(inactive_file);
        Some(MemorySnapshot {
            used_bytes: used,
            limit_bytes: limit,
            available_bytes: limit.saturating_sub(used),
            source: self.source(),
        })
    }
}

/// The value of a `key value` line of a cgroup `memory.stat`.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        if name != key {
            return None;
        }
        value.trim().parse().ok()
    })
}

/// A mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CgroupMount {
    /// The mount point, under the monitor's root.
    dir: PathBuf,
    /// The cgroup shown at the mount point (the mountinfo root field): `/`
    /// for the whole hierarchy, `/docker/abc` when a container without a
    /// cgroup namespace sees only its own cgroup there.
    root: String,
}

impl CgroupMount {
    /// The directory of the cgroup at `path` (from `/proc/self/cgroup`) and
    /// then each parent up to the mount point, whose limits bind too.
    /// Directories that do not exist are listed as well (and read as
    /// nothing): if the path cannot be mapped exactly, walking up still
    /// reaches the mount point, which is the container's cgroup when the
    /// container sees only its own subtree.
    fn dirs_upwards(&self, path: Option<&str>) -> Vec<PathBuf> {
        let relative = path.map_or("", |path| self.relative(path));
        let start = if relative.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(relative)
        };
        start
            .ancestors()
            .take_while(|dir| dir.starts_with(&self.dir))
            .map(Path::to_path_buf)
            .collect()
    }

    /// `path` relative to the mount point: with the mount's root removed
    /// when it starts with it (outside a namespace, and in Docker whose
    /// mount root is the container's cgroup), as it is otherwise (inside a
    /// cgroup namespace both are relative to the namespace root).
    fn relative<'a>(&self, path: &'a str) -> &'a str {
        let root = self.root.trim_end_matches('/');
        let under_root = path
            .strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or(path);
        under_root.trim_matches('/')
    }
}

/// The fields of a `/proc/self/mountinfo` line that locate a cgroup mount.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountinfoEntry {
    /// The directory of the mounted filesystem shown at the mount point.
    root: String,
    mount_point: String,
    fs_type: String,
    super_options: String,
}

impl MountinfoEntry {
    /// Parses `id parent major:minor root mount-point options [optional
    /// fields] - fs-type source super-options`.
    fn parse(line: &str) -> Option<Self> {
        let (mount, filesystem) = line.split_once(" - ")?;
        let mut mount = mount.split(' ');
        let root = mount.nth(3)?;
        let mount_point = mount.next()?;
        let mut filesystem = filesystem.split(' ');
        let fs_type = filesystem.next()?;
        let super_options = filesystem.nth(1)?;
        Some(MountinfoEntry {
            root: unescape_mountinfo(root),
            mount_point: unescape_mountinfo(mount_point),
            fs_type: fs_type.to_owned(),
            super_options: super_options.to_owned(),
        })
    }
}

/// Undoes the kernel's octal escapes in mountinfo paths (`\040` for a
/// space, `\134` for a backslash, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    /// How cgroup v1 shows "no limit" with 4 KiB pages.
    const V1_UNLIMITED: &str = "9223372036854771712\n";

    /// A cgroup v1 memory directory (under the fake root) with a limit and
    /// usage.
    fn write_v1(root: &FakeRoot, dir: &str, limit: &str, usage: &str) {
        root.write(&format!("{dir}/memory.limit_in_bytes"), limit)
            .write(&format!("{dir}/memory.usage_in_bytes"), usage);
    }

    /// A cgroup v2 directory (under the fake root) with a limit and usage.
    fn write_v2(root: &FakeRoot, dir: &str, max: &str, current: &str) {
        root.write(&format!("{dir}/memory.max"), max)
            .write(&format!("{dir}/memory.current"), current);
    }

    fn v1_snapshot(used: u64, limit: u64) -> MemorySnapshot {
        MemorySnapshot {
            used_bytes: used,
            limit_bytes: limit,
            available_bytes: limit - used,
            source: MemorySource::CgroupV1,
        }
    }

    #[test]
    fn cgroup_v1_outside_a_namespace_reads_the_own_cgroup() {
        let root = FakeRoot::new("v1-own");
        root.write(
            "proc/self/cgroup",
            "5:cpu:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        )
        .write("proc/meminfo", MEMINFO);
        write_v1(&root, "sys/fs/cgroup/memory", V1_UNLIMITED, "5000000");
        write_v1(
            &root,
            "sys/fs/cgroup/memory/docker/abc",
            "800000\n",
            "700000\n",
        );
        let monitor = root.monitor();
        assert_eq!(
            monitor.snapshot().expect("snapshot"),
            v1_snapshot(700_000, 800_000)
        );
        assert_eq!(monitor.level(), MemoryPressureLevel::Critical);
        assert_eq!(MemorySource::CgroupV1.to_string(), "cgroup_v1");
    }

    #[test]
    fn cgroup_v1_inside_a_namespace_reads_the_mount_root() {
        let root = FakeRoot::new("v1-ns");
        root.write("proc/self/cgroup", "4:memory:/\n")
            .write("proc/meminfo", MEMINFO);
        write_v1(&root, "sys/fs/cgroup/memory", "500000", "250000");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(250_000, 500_000)
        );

        // The same, with the mount listed in /proc/self/mountinfo.
        root.write(
            "proc/self/mountinfo",
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory\n",
        );
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(250_000, 500_000)
        );

        // Docker without a cgroup namespace: the full path in
        // /proc/self/cgroup, the container's cgroup mounted as the root.
        root.write("proc/self/cgroup", "4:memory:/docker/abc\n")
            .write(
                "proc/self/mountinfo",
                "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid master:9 - cgroup \
                 cgroup rw,memory\n",
            );
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(250_000, 500_000)
        );
    }

    #[test]
    fn cgroup_v1_unlimited_falls_back_to_meminfo() {
        let root = FakeRoot::new("v1-unlimited");
        root.write("proc/self/cgroup", "4:memory:/x\n")
            .write("proc/meminfo", MEMINFO);
        write_v1(&root, "sys/fs/cgroup/memory", V1_UNLIMITED, "600000");
        // 4 KiB pages, 64 KiB pages, exactly MemTotal (1000 kB).
        for limit in [V1_UNLIMITED, "9223372036854710272", "1024000"] {
            write_v1(&root, "sys/fs/cgroup/memory/x", limit, "600000");
            assert_eq!(
                root.monitor().snapshot().expect("snapshot").source,
                MemorySource::ProcMeminfo,
                "limit {limit}"
            );
        }
        write_v1(&root, "sys/fs/cgroup/memory/x", "1023999", "600000");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(600_000, 1_023_999)
        );
    }

    #[test]
    fn cgroup_v1_discounts_inactive_file_cache() {
        let root = FakeRoot::new("v1-stat");
        root.write("proc/self/cgroup", "4:memory:/x\n");
        write_v1(&root, "sys/fs/cgroup/memory/x", "1000000", "900000");
        // The hierarchical total first, wherever it is in the file.
        root.write(
            "sys/fs/cgroup/memory/x/memory.stat",
            "cache 500000\ninactive_file 1000\ntotal_cache 500000\n\
             total_inactive_file 400000\n",
        );
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(500_000, 1_000_000)
        );
        root.write(
            "sys/fs/cgroup/memory/x/memory.stat",
            "cache 500000\ninactive_file 100000\n",
        );
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(800_000, 1_000_000)
        );
    }

    #[test]
    fn cgroup_v1_combined_controller_line_and_mount() {
        let root = FakeRoot::new("v1-combined");
        root.write("proc/self/cgroup", "3:cpu,memory:/x\n2:cpuacct:/y\n");
        write_v1(&root, "sys/fs/cgroup/memory/x", "300000", "100000");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(100_000, 300_000)
        );

        // A mount named after both controllers, showing `/docker`: the
        // own cgroup `/docker/abc` is `abc` under it.
        let root = FakeRoot::new("v1-combined-mount");
        root.write("proc/self/cgroup", "3:cpu,memory:/docker/abc\n")
            .write(
                "proc/self/mountinfo",
                "32 31 0:29 /docker /sys/fs/cgroup/cpu,memory rw,relatime - cgroup cgroup \
                 rw,cpu,memory\n\
                 33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n",
            );
        write_v1(&root, "sys/fs/cgroup/cpu,memory", "900000", "100000");
        write_v1(&root, "sys/fs/cgroup/cpu,memory/abc", "300000", "200000");
        write_v1(&root, "sys/fs/cgroup/cpuacct/docker/abc", "1000", "999");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(200_000, 300_000)
        );
    }

    #[test]
    fn hybrid_host_reads_v1_memory_beside_a_v2_without_it() {
        let root = FakeRoot::new("hybrid");
        root.write(
            "proc/self/cgroup",
            "9:name=systemd:/user.slice\n4:memory:/user.slice\n0::/user.slice\n",
        )
        .write(
            "proc/self/mountinfo",
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
             35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup \
             rw,xattr,name=systemd\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
        )
        .write("proc/meminfo", MEMINFO)
        .write("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
        .write("sys/fs/cgroup/unified/user.slice/cgroup.controllers", "")
        .write("sys/fs/cgroup/unified/user.slice/memory.pressure", "");
        write_v1(&root, "sys/fs/cgroup/memory", V1_UNLIMITED, "900000");
        write_v1(&root, "sys/fs/cgroup/memory/user.slice", "600000", "300000");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(300_000, 600_000)
        );
    }

    #[test]
    fn the_ancestor_with_least_available_binds() {
        // cgroup v2: the own cgroup is unlimited, its parent is not.
        let root = FakeRoot::new("v2-parent");
        root.write("proc/self/cgroup", "0::/app.slice/m3u.service\n");
        write_v2(&root, "sys/fs/cgroup", "1000000", "10000");
        write_v2(&root, "sys/fs/cgroup/app.slice", "5000", "4000");
        write_v2(&root, "sys/fs/cgroup/app.slice/m3u.service", "max", "100");
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!((snapshot.limit_bytes, snapshot.used_bytes), (5000, 4000));
        assert_eq!(snapshot.source, MemorySource::CgroupV2);
        // A looser own limit does not hide the parent's...
        write_v2(&root, "sys/fs/cgroup/app.slice/m3u.service", "4500", "100");
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!((snapshot.limit_bytes, snapshot.used_bytes), (5000, 4000));
        // ...a tighter one wins.
        write_v2(&root, "sys/fs/cgroup/app.slice/m3u.service", "1000", "900");
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!((snapshot.limit_bytes, snapshot.used_bytes), (1000, 900));

        // cgroup v1 likewise: the parent's limit is larger but nearly used up.
        let root = FakeRoot::new("v1-parent");
        root.write("proc/self/cgroup", "4:memory:/docker/abc\n");
        write_v1(&root, "sys/fs/cgroup/memory/docker", "400000", "350000");
        write_v1(&root, "sys/fs/cgroup/memory/docker/abc", "300000", "100000");
        assert_eq!(
            root.monitor().snapshot().expect("snapshot"),
            v1_snapshot(350_000, 400_000)
        );
    }

    #[test]
    fn cgroup_v2_inside_a_namespace_reads_the_mount_root() {
        let root = FakeRoot::new("v2-ns");
        root.write("proc/self/cgroup", "0::/\n").write(
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        write_v2(&root, "sys/fs/cgroup", "300000\n", "150000\n");
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!(
            (snapshot.limit_bytes, snapshot.used_bytes),
            (300_000, 150_000)
        );
        assert_eq!(snapshot.source, MemorySource::CgroupV2);

        // Docker without a cgroup namespace: the mount root is the container.
        root.write("proc/self/cgroup", "0::/system.slice/docker-abc.scope\n")
            .write(
                "proc/self/mountinfo",
                "30 23 0:26 /system.slice/docker-abc.scope /sys/fs/cgroup ro,nosuid - cgroup2 \
                 cgroup2 rw\n",
            );
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!(
            (snapshot.limit_bytes, snapshot.used_bytes),
            (300_000, 150_000)
        );

        // A path leaving the namespace is not followed.
        root.write("proc/self/cgroup", "0::/../../elsewhere\n");
        let snapshot = root.monitor().snapshot().expect("snapshot");
        assert_eq!(
            (snapshot.limit_bytes, snapshot.used_bytes),
            (300_000, 150_000)
        );
    }

    #[test]
    fn proc_self_cgroup_lines() {
        let text = "12:cpu,memory:/x\n1:name=systemd:/s\n0::/y\n";
        assert_eq!(CgroupVersion::V1.own_path(text), Some("/x"));
        assert_eq!(CgroupVersion::V2.own_path(text), Some("/y"));
        assert_eq!(CgroupVersion::V1.own_path("2:name=memory:/a\n0::/\n"), None);
        assert_eq!(CgroupVersion::V2.own_path("4:memory:/a\n"), None);
        assert_eq!(CgroupVersion::V1.own_path("4:memory:/a:b\n"), Some("/a:b"));
        assert_eq!(CgroupVersion::V1.own_path("4:memory:/a/../b\n"), None);
    }

    #[test]
    fn mountinfo_lines_and_path_mapping() {
        let entry = MountinfoEntry::parse(
            "35 31 0:32 /docker/a\\040b /sys/fs/cgroup/cpu,memory rw,relatime shared:9 \
             master:2 - cgroup cgroup rw,cpu,memory",
        )
        .expect("parse");
        assert_eq!(entry.root, "/docker/a b");
        assert_eq!(entry.mount_point, "/sys/fs/cgroup/cpu,memory");
        assert!(CgroupVersion::V1.is_mount(&entry));
        assert!(!CgroupVersion::V2.is_mount(&entry));
        assert_eq!(MountinfoEntry::parse("35 31 0:32 / /x rw"), None);
        assert_eq!(unescape_mountinfo("a\\134b\\0\\999"), "a\\b\\0\\999");

        let mount = |root: &str| CgroupMount {
            dir: PathBuf::from("/m"),
            root: root.to_owned(),
        };
        assert_eq!(mount("/").relative("/docker/abc"), "docker/abc");
        assert_eq!(mount("/docker/abc").relative("/docker/abc"), "");
        assert_eq!(mount("/docker").relative("/docker/abc"), "abc");
        assert_eq!(mount("/docker/ab").relative("/docker/abc"), "docker/abc");
        assert_eq!(mount("/docker/abc").relative("/"), "");
        assert_eq!(
            mount("/").dirs_upwards(Some("/a/b")),
            ["/m/a/b", "/m/a", "/m"].map(PathBuf::from)
        );
        assert_eq!(mount("/").dirs_upwards(None), [PathBuf::from("/m")]);
    }

    /// On a machine with a cgroup v1 memory hierarchy (like the CI
    /// container), the real files give a plausible reading.
    #[test]
    fn real_cgroup_v1_machine_reads_plausibly() {
        let limit_file = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        if !limit_file.exists() {
            eprintln!(
                "skipped: {} does not exist (no cgroup v1 memory hierarchy here)",
                limit_file.display()
            );
            return;
        }
        let snapshot = MemoryMonitor::new(MemoryThresholds::default())
            .snapshot()
            .expect("snapshot of the real machine");
        eprintln!("real machine: {snapshot:?}");
        let meminfo = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
        let mem_total = kv_bytes(&meminfo, "MemTotal").expect("MemTotal");
        assert!(snapshot.limit_bytes > 0, "{snapshot:?}");
        assert_eq!(
            snapshot.available_bytes,
            snapshot.limit_bytes.saturating_sub(snapshot.used_bytes)
        );
        match snapshot.source {
            MemorySource::CgroupV1 => assert!(snapshot.limit_bytes < mem_total, "{snapshot:?}"),
            MemorySource::ProcMeminfo => assert_eq!(snapshot.limit_bytes, mem_total),
            MemorySource::CgroupV2 => {}
        }
        // If the own v1 cgroup has a real limit, it is honoured.
        let proc_self_cgroup =
            std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let own_limit = CgroupVersion::V1
            .own_path(&proc_self_cgroup)
            .map(|path| {
                Path::new("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join("memory.limit_in_bytes")
            })
            .and_then(|file| std::fs::read_to_string(file).ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .filter(|&limit| limit < mem_total);
        if let Some(own_limit) = own_limit {
            assert_eq!(snapshot.source, MemorySource::CgroupV1);
            assert!(snapshot.available_bytes <= own_limit, "{snapshot:?}");
        }
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
