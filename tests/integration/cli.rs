//! The `m3u-plugin-host` binary as a user runs it: the bundled example on the
//! real playlist, forced memory pressure, a failing plugin, and bad config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::pipeline::{plugin_dir, scratch_dir};

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"));
    command.env("RUST_LOG", "warn");
    command
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "exit {:?}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strategies(stats: &serde_json::Value) -> Vec<String> {
    stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["strategy"].as_str().unwrap().to_string())
        .collect()
}

fn entries(m3u: &str) -> usize {
    m3u.lines().filter(|l| l.starts_with("#EXTINF")).count()
}

#[test]
fn example_config_runs_with_plugins_and_writes_stats() {
    let dir = scratch_dir("cli-example");
    let output = dir.join("out.m3u");
    let stats_path = dir.join("stats.json");
    let result = ok(bin()
        .args(["run", "--config"])
        .arg(repo().join("examples/pipeline.toml"))
        .arg("--output")
        .arg(&output)
        .arg("--stats-json")
        .arg(&stats_path)
        .args(["--memory-pressure", "optimal"])
        .output()
        .unwrap());
    let summary = String::from_utf8_lossy(&result.stderr);
    assert!(summary.contains("10525 channels in"), "{summary}");
    let stats = stats(&stats_path);
    assert_eq!(stats["channels_loaded"], 10_525);
    assert_eq!(stats["plugin_failures"], 0);
    assert_eq!(
        strategies(&stats),
        [
            "inmemory_full",
            "dedup+group_normalizer+sports_optimizer+logo_mapper+native_mapping",
            "dedup+sports_optimizer+native_filter",
            "inmemory_numbering",
            "sorted_writer"
        ]
    );
    let plugin_calls = |name: &str| -> u64 {
        stats["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map_or(0, |p| p["calls"].as_u64().unwrap())
    };
    let batches = stats["batches"].as_u64().unwrap();
    // dedup and the sports optimizer run in both stages, the others in one
    // (a batch whose columns fill more than half a plugin's arena goes in
    // two calls: dedup reads three fields, and one batch of the real
    // playlist is that large for it).
    assert!((2 * batches..=2 * batches + 4).contains(&plugin_calls("dedup")));
    assert_eq!(plugin_calls("sports_optimizer"), 2 * batches);
    assert_eq!(plugin_calls("logo_mapper"), batches);
    let m3u = std::fs::read_to_string(&output).unwrap();
    assert!(m3u.starts_with("#EXTM3U"));
    assert_eq!(
        entries(&m3u) as u64,
        stats["channels_written"].as_u64().unwrap()
    );
    assert!(
        !m3u.contains("group-title=\"\""),
        "empty groups were filled by the plugin"
    );
    // The catalogue did its work: duplicates merged, sports numbered from 100.
    assert!(m3u.contains(" x-alternate-urls=\"http"));
    assert!(m3u.contains("tvg-chno=\"100\" group-title=\"Sports"));
    assert!(stats["channels_written"].as_u64().unwrap() < 10_525 - 1_000);
}

#[test]
fn forced_pressure_moves_holds_to_disk_with_the_same_channels() {
    let dir = scratch_dir("cli-pressure");
    let run = |level: &str| -> (serde_json::Value, String) {
        let output = dir.join(format!("{level}.m3u"));
        let stats_path = dir.join(format!("{level}.json"));
        ok(bin()
            .args(["run", "-q", "--config"])
            .arg(repo().join("examples/pipeline.toml"))
            .arg("--output")
            .arg(&output)
            .arg("--stats-json")
            .arg(&stats_path)
            .args(["--memory-pressure", level])
            .output()
            .unwrap());
        (stats(&stats_path), std::fs::read_to_string(output).unwrap())
    };
    let (low, low_m3u) = run("moderate");
    let (critical, critical_m3u) = run("critical");
    let (high, high_m3u) = run("emergency");
    let tier_of = |stats: &serde_json::Value, holder: &str| -> String {
        stats["holds"]
            .as_array()
            .expect("holds")
            .iter()
            .find(|hold| hold["holder"] == holder)
            .map(|hold| hold["tier"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // Every holding strategy stays chosen; only its tier follows the
    // pressure: plain, compressed from high, disk from critical.
    for stats in [&low, &critical, &high] {
        assert_eq!(strategies(stats)[0], "inmemory_full");
        assert_eq!(strategies(stats)[3], "inmemory_numbering");
        assert_eq!(strategies(stats)[4], "sorted_writer");
    }
    assert_eq!(tier_of(&low, "inmemory_numbering"), "plain");
    assert_eq!(tier_of(&critical, "inmemory_numbering"), "disk");
    assert_eq!(tier_of(&critical, "sorted_writer"), "disk");
    assert_eq!(tier_of(&high, "inmemory_full"), "disk");
    assert_eq!(entries(&low_m3u), entries(&high_m3u));
    assert_eq!(entries(&low_m3u), entries(&critical_m3u));
}

#[test]
fn failing_plugin_run_equals_the_native_only_run() {
    let dir = scratch_dir("cli-flaky");
    let plugins = plugin_dir(&["flaky_filter"]);
    let input = repo().join("tests/fixtures/m3u/iptv-org-index-2021.m3u");
    let write_config = |name: &str, filtering: &str| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "[[filtering.filters]]\naction = \"exclude\"\n\
                 expression = 'channel_name case_sensitive contains \"[Geo-blocked]\"'\n\
                 [proxy_generation.wasm_plugins]\nplugin_directory = {:?}\n\
                 [proxy_generation.wasm_plugins.security]\n\
                 allowed_host_functions = [\"log\", \"read_channels\", \"write_channels\", \"get_config\"]\n\
                 [proxy_generation.wasm_plugins.strategies]\nfiltering = {filtering}\n",
                plugins.display().to_string()
            ),
        )
        .unwrap();
        path
    };
    let run = |config: &Path, out: &str| -> String {
        let output = dir.join(out);
        ok(bin()
            .args(["run", "-q", "--config"])
            .arg(config)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .arg("--stats-json")
            .arg(dir.join(format!("{out}.json")))
            .output()
            .unwrap());
        std::fs::read_to_string(output).unwrap()
    };
    let with_plugin = run(
        &write_config("plugin.toml", "[\"flaky_filter\"]"),
        "plugin.m3u",
    );
    let native = run(&write_config("native.toml", "[]"), "native.m3u");
    assert_eq!(with_plugin, native, "byte-identical output");
    let stats = stats(&dir.join("plugin.m3u.json"));
    assert_eq!(
        stats["plugins"][0]["failures"], 3,
        "default max_plugin_failures"
    );
    assert_eq!(stats["plugins"][0]["disabled"], true);
    assert_eq!(stats["fallbacks"], 3);
}

#[test]
fn bad_config_fails_with_line_column_and_key() {
    let dir = scratch_dir("cli-bad");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"64 parsecs\"\n",
    )
    .unwrap();
    let output = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2, column 25"), "{stderr}");
    assert!(
        stderr.contains("proxy_generation.wasm_plugins.max_memory_per_plugin"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown size unit"), "{stderr}");
}

#[test]
fn output_goes_to_stdout_and_input_from_stdin() {
    use std::io::Write;
    let dir = scratch_dir("cli-stdio");
    let config = dir.join("c.toml");
    std::fs::write(&config, "[numbering]\nstart = 7\n").unwrap();
    let mut child = bin()
        .args(["run", "-q", "--config"])
        .arg(&config)
        .args(["--input", "-", "--output", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"#EXTM3U\n#EXTINF:-1,One\nhttp://one\n")
        .unwrap();
    let output = ok(child.wait_with_output().unwrap());
    let m3u = String::from_utf8(output.stdout).unwrap();
    assert_eq!(m3u, "#EXTM3U\n#EXTINF:-1 tvg-chno=\"7\",One\nhttp://one\n");
}

#[test]
fn plugins_inspect_reports_info_and_imports() {
    let file = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join("group_normalizer.wasm");
    let output = ok(bin()
        .args(["plugins", "inspect", "--json"])
        .arg(&file)
        .output()
        .unwrap());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["name"], "group_normalizer");
    assert_eq!(report["stages"], serde_json::json!(["data_mapping"]));
    assert_eq!(report["reads"], serde_json::json!(["group_title"]));
    // It reads its settings from the table handed over at init, so it does
    // not import get_config (the hand-written dedup_wat still does, below).
    let imports = report["imports"].as_array().unwrap();
    assert!(!imports.is_empty(), "{imports:?}");
    assert!(
        imports.iter().all(|i| i
            .as_str()
            .is_some_and(|i| i.starts_with("host.") && i != "host.get_config")),
        "{imports:?}"
    );
}

#[test]
fn plugins_list_shows_loaded_and_idle_plugins_of_the_example() {
    let output = ok(bin()
        .args(["plugins", "list", "--json", "--config"])
        .arg(repo().join("examples/pipeline.toml"))
        .output()
        .unwrap());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut loaded: Vec<&str> = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|plugin| plugin["name"].as_str().unwrap())
        .collect();
    loaded.sort_unstable();
    assert_eq!(
        loaded,
        [
            "dedup",
            "group_normalizer",
            "logo_mapper",
            "sports_optimizer"
        ],
        "the plugins the example's strategies name, and only those"
    );
    let idle: Vec<&str> = report["idle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|idle| idle["file"].as_str().unwrap())
        .collect();
    for file in ["passthrough.wasm", "url_rewriter.wasm"] {
        assert!(idle.iter().any(|path| path.ends_with(file)), "{idle:?}");
    }
    assert_eq!(report["not_loaded"], serde_json::json!([]));
    let text = ok(bin()
        .args(["plugins", "list", "--config"])
        .arg(repo().join("examples/pipeline.toml"))
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|line| line.starts_with("idle: ") && line.contains("url_rewriter.wasm")),
        "{text}"
    );
}

#[test]
fn plugins_inspect_lists_every_problem_of_a_module_at_once() {
    // No ABI section, a WASI import, an unknown host function, and only one
    // of the required exports.
    let wasm = wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
          (import "host" "open_socket" (func (param i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "m3u_plugin_info") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let file = scratch_dir("cli-inspect-problems").join("wasi.wasm");
    std::fs::write(&file, wasm).unwrap();
    let output = bin()
        .args(["plugins", "inspect", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a refused module fails the command"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| problem.as_str().unwrap())
        .collect();
    assert!(problems[0].contains("m3u_abi_version"), "{problems:#?}");
    assert!(
        problems[1].contains("`wasi_snapshot_preview1.fd_write`"),
        "{problems:#?}"
    );
    assert!(
        problems[2].contains("`host.open_socket`") && problems[2].contains("no such host function"),
        "{problems:#?}"
    );
    // m3u_plugin_info is there; the other six required functions are not.
    let missing: Vec<&&str> = problems
        .iter()
        .filter(|problem| problem.starts_with("plugin export `"))
        .collect();
    assert_eq!(missing.len(), 6, "{problems:#?}");
    assert!(!problems.iter().any(|p| p.contains("`m3u_plugin_info`")));
    assert_eq!(problems.len(), 9, "{problems:#?}");
    // The text form says the same on stderr.
    let output = bin()
        .args(["plugins", "inspect"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is refused, 9 problems:"), "{stderr}");
    assert!(stderr.contains("`host.open_socket`"), "{stderr}");
}

#[test]
fn concurrent_runs_to_one_output_each_write_their_own_temporary_file() {
    let dir = scratch_dir("cli-concurrent-output");
    let config = dir.join("c.toml");
    std::fs::write(&config, "").unwrap();
    let input = repo().join("tests/fixtures/m3u/iptv-org-index-2021.m3u");
    let run_to = |output: &Path| {
        bin()
            .args(["run", "-q", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(output)
            .spawn()
            .unwrap()
    };
    let shared = dir.join("out.m3u");
    let runs: Vec<_> = (0..4).map(|_| run_to(&shared)).collect();
    for run in runs {
        ok(run.wait_with_output().unwrap());
    }
    // The output is one whole playlist, the same as a run's alone.
    let alone = dir.join("alone.m3u");
    ok(run_to(&alone).wait_with_output().unwrap());
    let written = std::fs::read_to_string(&shared).unwrap();
    assert!(entries(&written) > 10_000);
    assert_eq!(written, std::fs::read_to_string(&alone).unwrap());
    // No temporary file is left behind, and the output may be read by
    // whom a file created here may (0666 less the umask, not 0600).
    let reference = dir.join("reference");
    std::fs::write(&reference, "").unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_unstable();
    // (`*.last-good` hold the source's last good copy, src/inputs.)
    assert_eq!(
        names,
        [
            "alone.m3u",
            "alone.m3u.last-good",
            "c.toml",
            "out.m3u",
            "out.m3u.last-good",
            "reference"
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&shared), mode(&reference));
}

#[test]
fn output_to_a_fifo_is_written_in_place_not_replaced() {
    let dir = scratch_dir("cli-fifo");
    let fifo = dir.join("out.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|status| status.success()) {
        eprintln!("mkfifo unavailable: skipping");
        return;
    }
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let config = dir.join("c.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = bin()
        .args(["run", "-q", "--config"])
        .arg(&config)
        .args(["--input", "-", "--output"])
        .arg(&fifo)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"#EXTM3U\n#EXTINF:-1,One\nhttp://one\n")
        .unwrap();
    ok(child.wait_with_output().unwrap());
    assert!(reader.join().unwrap().contains("http://one"));
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced by a regular file");
}

#[test]
/// The hand-written WAT plugin (plugins/dedup-wat) through `plugins inspect`.
fn plugins_inspect_reads_the_wat_dedup_plugin() {
    let file = Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join("dedup_wat.wasm");
    let output = bin()
        .env("RUST_LOG", "warn")
        .args(["plugins", "inspect", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["name"], "dedup_wat");
    assert_eq!(report["version"], "0.1.0");
    assert_eq!(report["stages"], serde_json::json!(["filtering"]));
    assert_eq!(report["reads"], serde_json::json!(["stream_url"]));
    let mut imports: Vec<&str> = report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    imports.sort();
    assert_eq!(
        imports,
        [
            "host.get_config",
            "host.log",
            "host.read_channels",
            "host.write_channels"
        ]
    );
}

#[test]
fn a_closed_standard_output_ends_a_listing_quietly() {
    // `m3u-plugin-host plugins inspect … | head -1`: the reader is gone
    // before the listing is written. The process must end with success and
    // no panic (println! would panic, and the release build aborts).
    let mut child = bin()
        .args(["plugins", "inspect"])
        .arg(Path::new(env!("M3U_EXAMPLE_PLUGIN_DIR")).join("dedup.wasm"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
