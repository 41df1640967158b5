//! The spill store when things go wrong: a spill disk that fills up and a
//! run interrupted with Ctrl-C never leave a truncated playlist or a spill
//! file behind, and the error names the store and what to do; a zstd
//! dictionary trained from the user's playlist makes held blocks smaller.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::common::repo_path;
use super::derived_playlist;

fn scratch(name: &str) -> PathBuf {
    let dir = repo_path("target/test-scratch/spill").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn inputs_dir() -> PathBuf {
    repo_path("target/test-scratch/derived")
}

/// A native config that sorts its output (`sorted_writer`) and spills to
/// `spill`.
fn sorting_config(dir: &Path, spill: &Path) -> PathBuf {
    let config = dir.join("sorting.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nspill_directory = {spill:?}\n\
             [proxy_generation.wasm_plugins]\nenabled = false\n\
             [proxy_generation.wasm_plugins.strategies]\n\
             channel_numbering = [\"inmemory_numbering\"]\n\
             m3u_generation = [\"sorted_writer\"]\n"
        ),
    )
    .unwrap();
    config
}

/// The CLI sorting `input` into `output` at critical pressure (everything
/// held goes to disk at once), spilling to `spill`.
fn sorting_run(dir: &Path, spill: &Path, input: &Path, output: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"));
    command
        .args(["run", "-q", "--config"])
        .arg(sorting_config(dir, spill))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--memory-pressure", "critical"]);
    command
}

fn entries_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A tmpfs of `size` mounted at `dir` (root only), unmounted on drop.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> Result<TinyDisk, String> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}): not root?"));
        }
        Ok(TinyDisk(dir.to_path_buf()))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_spill_disk_fails_the_run_without_touching_the_playlist() {
    let dir = scratch("full-disk");
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let _disk = match TinyDisk::mount(&spill, "256k") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: cannot make a tiny spill disk: {why}");
            return;
        }
    };
    let input = derived_playlist::derived_input(&inputs_dir(), 100_000);
    let output = dir.join("playlist.m3u");
    std::fs::write(&output, "#EXTM3U\nthe previous playlist\n").unwrap();
    let out = sorting_run(&dir, &spill, &input, &output).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("spill store `disk`"), "{stderr}");
    assert!(stderr.contains(&spill.display().to_string()), "{stderr}");
    assert!(stderr.contains("disk is full"), "{stderr}");
    assert!(stderr.contains("spill_directory"), "{stderr}");
    // The old playlist stays, whole; no temporary output, no spill file.
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "#EXTM3U\nthe previous playlist\n"
    );
    // The three files and the source's last good copy (src/inputs).
    assert_eq!(entries_in(&dir).len(), 4, "{:?}", entries_in(&dir));
    assert!(dir.join("playlist.m3u.last-good").is_dir());
    assert!(entries_in(&spill).is_empty(), "{:?}", entries_in(&spill));
}

#[test]
fn ctrl_c_stops_the_run_and_leaves_the_old_playlist_and_no_spill() {
    let dir = scratch("interrupt");
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let input = derived_playlist::derived_input(&inputs_dir(), 200_000);
    let output = dir.join("playlist.m3u");
    std::fs::write(&output, "#EXTM3U\nthe previous playlist\n").unwrap();
    let child = sorting_run(&dir, &spill, &input, &output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run is under way: its temporary output
    // (`.playlist.m3u.<random>.tmp`) exists.
    let temp_outputs = || -> Vec<String> {
        entries_in(&dir)
            .into_iter()
            .filter(|name| name.starts_with(".playlist.m3u.") && name.ends_with(".tmp"))
            .collect()
    };
    let started = std::time::Instant::now();
    while temp_outputs().is_empty() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "#EXTM3U\nthe previous playlist\n"
    );
    assert!(temp_outputs().is_empty(), "the temporary output is removed");
    assert!(entries_in(&spill).is_empty(), "{:?}", entries_in(&spill));
}

#[test]
fn a_trained_zstd_dictionary_holds_smaller_with_the_same_output() {
    let dir = scratch("dictionary");
    let playlist = repo_path(super::common::PLAYLIST_FIXTURE);
    let dictionary = dir.join("playlists.dict");
    let out = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
        .args(["store", "train-dictionary", "--input"])
        .arg(&playlist)
        .arg("--out")
        .arg(&dictionary)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("zstd_dictionary"));
    let run = |name: &str, store: &str| -> (String, serde_json::Value) {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "{store}\n[proxy_generation.wasm_plugins]\nenabled = false\n\
                 [proxy_generation.wasm_plugins.strategies]\n\
                 channel_numbering = [\"inmemory_numbering\"]\n"
            ),
        )
        .unwrap();
        let output = dir.join(format!("{name}.m3u"));
        let stats = dir.join(format!("{name}.json"));
        let out = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
            .args(["run", "-q", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&playlist)
            .arg("--output")
            .arg(&output)
            .arg("--stats-json")
            .arg(&stats)
            .args(["--memory-pressure", "high"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            std::fs::read_to_string(output).unwrap(),
            serde_json::from_str(&std::fs::read_to_string(stats).unwrap()).unwrap(),
        )
    };
    let (plain_zstd, plain_stats) = run("zstd", "[store]\ncompression = \"zstd\"\n");
    let (with_dict, dict_stats) = run(
        "zstd-dict",
        &format!("[store]\ncompression = \"zstd\"\nzstd_dictionary = {dictionary:?}\n"),
    );
    assert_eq!(plain_zstd, with_dict);
    let stored = |stats: &serde_json::Value| stats["holds"][0]["stored_bytes"].as_u64().unwrap();
    assert_eq!(dict_stats["holds"][0]["codec"], "zstd-3+dict");
    assert!(
        stored(&dict_stats) < stored(&plain_stats),
        "{} with the dictionary, {} without",
        stored(&dict_stats),
        stored(&plain_stats)
    );
}
