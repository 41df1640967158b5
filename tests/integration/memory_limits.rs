//! The README's example configuration inside memory-limited cgroups, as a
//! NAS container runs it: 256 MiB with 200k channels, 128 MiB with 100k,
//! 64 MiB with 1M. Each run must complete (never OOM-killed) and write the
//! same sorted, numbered playlist as a run without a limit.
//!
//! The tests create the cgroups themselves, so they need root and a
//! writable cgroup v1 memory controller or cgroup v2 with the memory
//! controller; elsewhere they say that they are skipped and why. `.ci/run`
//! runs them as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::common::repo_path;
use super::derived_playlist;

/// A memory cgroup made for one run, removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    version: u8,
}

impl MemoryCgroup {
    /// A cgroup limited to `limit_mib`, or why none can be made here.
    fn create(name: &str, limit_mib: u64) -> Result<MemoryCgroup, String> {
        let limit = (limit_mib << 20).to_string();
        let unique = format!("m3u-test-{name}-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let dir = v1.join(&unique);
            std::fs::create_dir(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let cgroup = MemoryCgroup { dir, version: 1 };
            cgroup.write("memory.limit_in_bytes", &limit)?;
            // No swap either, where the kernel accounts it.
            let _ = cgroup.write("memory.memsw.limit_in_bytes", &limit);
            return Ok(cgroup);
        }
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers =
            std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
            let dir = v2.join(&unique);
            std::fs::create_dir(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let cgroup = MemoryCgroup { dir, version: 2 };
            cgroup.write("memory.max", &limit)?;
            let _ = cgroup.write("memory.swap.max", "0");
            return Ok(cgroup);
        }
        Err("no writable cgroup v1 memory controller or cgroup v2 memory controller".into())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("cannot write {value} to {}/{file}: {e}", self.dir.display()))
    }

    /// Times the kernel had to refuse the cgroup memory (v1) or OOM kills
    /// in it (v2).
    fn oom_events(&self) -> u64 {
        let read = |file: &str, key: &str| -> u64 {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        match self.version {
            1 => read("memory.oom_control", "oom_kill "),
            _ => read("memory.events", "oom_kill "),
        }
    }

    /// Runs the CLI inside the cgroup.
    fn run(&self, args: &[&std::ffi::OsStr], stdin: std::process::Stdio) -> Output {
        // The shell moves itself into the cgroup, then becomes the CLI, so
        // every byte the CLI allocates is charged to the cgroup.
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(env!("CARGO_BIN_EXE_m3u-plugin-host"))
            .args(args)
            .stdin(stdin)
            .output()
            .expect("start the CLI in its cgroup")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn can_make_cgroups() -> Result<(), String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Err("not running as root".into());
    }
    MemoryCgroup::create("probe", 64).map(drop)
}

fn scratch() -> PathBuf {
    let dir = repo_path("target/test-scratch/memory-limits");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The example configuration run on `input` inside `limit_mib` (or without
/// a limit), writing `output`.
/// How the CLI gets its input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// `--input FILE`: the planner knows the size.
    File,
    /// `--input -` from a pipe: the size is unknown until the input ends, as
    /// with an HTTP source without `Content-Length`.
    Stdin,
}

fn run_example(
    input: &Path,
    output: &Path,
    limit_mib: Option<u64>,
    feed: Feed,
) -> (Output, Option<u64>) {
    let stats = output.with_extension("json");
    let config = repo_path("examples/pipeline.toml");
    let input_arg: &std::ffi::OsStr = match feed {
        Feed::File => input.as_os_str(),
        Feed::Stdin => "-".as_ref(),
    };
    let stdin = || match feed {
        Feed::File => std::process::Stdio::null(),
        Feed::Stdin => std::fs::File::open(input).expect("open the input").into(),
    };
    let args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "-q".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--input".as_ref(),
        input_arg,
        "--output".as_ref(),
        output.as_os_str(),
        "--stats-json".as_ref(),
        stats.as_os_str(),
    ];
    match limit_mib {
        Some(limit) => {
            let name = output.file_stem().unwrap().to_string_lossy().into_owned();
            let cgroup = MemoryCgroup::create(&name, limit).expect("cgroup");
            let out = cgroup.run(&args, stdin());
            (out, Some(cgroup.oom_events()))
        }
        None => {
            let out = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
                .args(&args)
                .stdin(stdin())
                .output()
                .expect("run the CLI");
            (out, None)
        }
    }
}

/// Runs the example on `channels` derived channels without a limit, then
/// fed each way in `feeds` inside `limit_mib`: every limited run completes
/// and writes the unlimited run's playlist. Returns the limited runs'
/// statistics.
fn limited_runs_match_unlimited(
    channels: usize,
    limit_mib: u64,
    feeds: &[Feed],
) -> Vec<serde_json::Value> {
    let dir = scratch();
    let input = derived_playlist::derived_input(&dir, channels);
    let free = dir.join(format!("free-{channels}.m3u"));
    let (out, _) = run_example(&input, &free, None, Feed::File);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read(&free).unwrap();
    let _ = std::fs::remove_file(&free);
    let mut all_stats = Vec::new();
    for (index, feed) in feeds.iter().enumerate() {
        let limited = dir.join(format!("limited-{channels}-{index}.m3u"));
        let (out, oom_kills) = run_example(&input, &limited, Some(limit_mib), *feed);
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.success(),
            "{channels} channels in {limit_mib} MiB: {:?} (signal {:?}, OOM kills \
             {oom_kills:?}): {}",
            out.status,
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(oom_kills, Some(0));
        let stats: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(limited.with_extension("json")).unwrap())
                .unwrap();
        // The run saw the container's limit, not the machine's memory.
        assert_eq!(stats["memory_limit_bytes"], limit_mib << 20, "{stats}");
        let same = std::fs::read(&limited).unwrap() == expected;
        assert!(
            same,
            "{channels} channels: the limited run's playlist differs from the free one's"
        );
        let written = stats["channels_written"].as_u64().unwrap();
        assert!(
            written > channels as u64 / 2,
            "{written} of {channels} written"
        );
        let _ = std::fs::remove_file(&limited);
        all_stats.push(stats);
    }
    all_stats
}

fn skipped(channels: usize, limit_mib: u64) -> bool {
    match can_make_cgroups() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED: {limit_mib} MiB / {channels} channels: {why}");
            true
        }
    }
}

#[test]
fn example_config_200k_channels_in_256_mib() {
    if !skipped(200_000, 256) {
        limited_runs_match_unlimited(200_000, 256, &[Feed::File]);
    }
}

#[test]
fn example_config_100k_channels_in_128_mib() {
    if !skipped(100_000, 128) {
        limited_runs_match_unlimited(100_000, 128, &[Feed::File]);
    }
}

/// Also from a pipe: the planner cannot know the size, so every holder
/// starts plain and must move down while the run goes on, by its budget
/// and by the pressure it reads from the cgroup.
#[test]
fn example_config_1m_channels_in_64_mib_from_a_file_and_from_a_pipe() {
    if skipped(1_000_000, 64) {
        return;
    }
    let stats = limited_runs_match_unlimited(1_000_000, 64, &[Feed::File, Feed::Stdin]);
    let moves: Vec<(String, String, u64)> = stats[1]["holds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|hold| hold["switches"].as_array().unwrap())
        .map(|switch| {
            (
                switch["to"].as_str().unwrap().to_string(),
                switch["reason"].as_str().unwrap().to_string(),
                switch["at_channels"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        moves
            .iter()
            .any(|(to, reason, at)| to == "disk" && reason.contains("memory pressure") && *at > 0),
        "a holder moved to disk mid-run because of the pressure: {moves:?}"
    );
}
