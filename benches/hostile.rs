//! The hostile plugins of issue 12, re-created from its description, each
//! run by the CLI on the real playlist beside the native-only run of the
//! same configuration (a numbering barrier, so everything a plugin makes
//! the host hold is held). Prints, per case: wall time and its difference
//! to native, peak RSS (`VmHWM` from `--stats-json`) and its difference,
//! bytes of log written to stderr, whether the playlist equals the native
//! one, and the load errors or failures the run reported.
//!
//! `cargo bench --bench hostile`. The issue's bar: within a few seconds of
//! the native run, within 64 MiB of its RSS, under 1 MB of log, the native
//! output.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use m3u_plugin_host::abi::{
    Changes, Field, FieldSet, FieldValues, MemoryPressureLevel, Patch, PatchOp, PluginInfo,
    PluginMemoryRequirements, StageOutput, ABI_VERSION,
};

const PLAYLIST: &str = "tests/fixtures/m3u/iptv-org-index-2021.m3u";

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 3);
    for byte in bytes {
        let _ = write!(text, "\\{byte:02x}");
    }
    text
}

/// What a re-created plugin is made of.
struct Plugin<'a> {
    name: String,
    /// Stage bits it declares.
    stages: u32,
    reads: FieldSet,
    arena: u32,
    /// Bytes placed at 1024 (a canned answer, log text).
    data: &'a [u8],
    /// The body of `m3u_execute_stage (param $stage i32) (param $len i32)`;
    /// the arena starts at `$ARENA`, the data at 1024.
    body: &'a str,
    /// Module fields added as they are.
    extra: &'a str,
}

impl Plugin<'_> {
    fn wasm(&self) -> Vec<u8> {
        let info = PluginInfo {
            name: self.name.clone().into(),
            version: "1".into(),
            stages: self.stages,
            reads: self.reads,
            memory: PluginMemoryRequirements {
                max_pressure: MemoryPressureLevel::Emergency,
                ..PluginMemoryRequirements::default()
            },
            ..PluginInfo::default()
        };
        let info = postcard::to_allocvec(&info).expect("info encodes");
        let info_at = 1024 + self.data.len();
        let arena_at = (info_at + info.len()).div_ceil(65536) * 65536;
        let pages = (arena_at + self.arena as usize).div_ceil(65536);
        let body = self.body.replace("$ARENA", &arena_at.to_string());
        let wat = format!(
            r#"(module
  (@custom "m3u_abi_version" "{abi}")
  (import "host" "log" (func $log (param i32 i32 i32)))
  (import "host" "write_channels" (func $write (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 1024) "{data}")
  (data (i32.const {info_at}) "{info}")
  {extra}
  (func (export "m3u_arena_ptr") (result i32) (i32.const {arena_at}))
  (func (export "m3u_arena_capacity") (result i32) (i32.const {arena}))
  (func (export "m3u_plugin_info") (result i32)
    (memory.copy (i32.const {arena_at}) (i32.const {info_at}) (i32.const {info_len}))
    (i32.const {info_len}))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param $stage i32) (param $len i32) (result i32)
    (local $i i32)
    {body}))"#,
            abi = hex(&ABI_VERSION.to_le_bytes()),
            data = hex(self.data),
            info = hex(&info),
            info_len = info.len(),
            arena = self.arena,
            extra = self.extra,
        );
        wat::parse_str(&wat).expect("the plugin assembles")
    }
}

const FILTERING: u32 = 1 << 2;
const MAPPING: u32 = 1 << 1;

/// `keep all` (03) right after the input.
const KEEP_ALL: &str =
    "(i32.store8 (i32.add (i32.const $ARENA) (local.get $len)) (i32.const 3)) (i32.const 1)";

/// A case: its plugin files (name, bytes), the stage it runs at, and the
/// batch size of its run.
struct Case {
    what: &'static str,
    files: Vec<(String, Vec<u8>)>,
    stage: &'static str,
    batch_size: usize,
    /// Whether a strategy names the plugin (else it sits in the directory).
    named: bool,
}

fn loop_body(count: u64, each: &str) -> String {
    format!(
        "(block $done (loop $more (br_if $done (i32.ge_u (local.get $i) (i32.const {count}))) \
         {each} (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $more)))"
    )
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let plugin = |name: &str, stages, reads, arena, data: &[u8], body: &str, extra: &str| {
        Plugin {
            name: name.to_string(),
            stages,
            reads,
            arena,
            data,
            body,
            extra,
        }
        .wasm()
    };
    let case = |what, name: &str, wasm: Vec<u8>, stage, batch_size| Case {
        what,
        files: vec![(name.to_string(), wasm)],
        stage,
        batch_size,
        named: true,
    };
    // 1. A small arena multiplies a per-call log cap: 32 lines of 2000 bytes
    // (the arena's bytes) on every call, a few channels per call.
    let body = format!(
        "{} {KEEP_ALL}",
        loop_body(
            32,
            "(call $log (i32.const 3) (i32.const $ARENA) (i32.const 2000))"
        )
    );
    let arena = 4096;
    cases.push(case(
        "log flood, 4 KiB arena",
        "log_flood",
        plugin("log_flood", FILTERING, FieldSet::ALL, arena, &[], &body, ""),
        "filtering",
        1024,
    ));
    // 2. ~125M fuel per call that never fails per call.
    let body = format!("{} {KEEP_ALL}", loop_body(16_000_000, ""));
    cases.push(case(
        "125M fuel per call, 4 KiB arena",
        "fuel_burner",
        plugin(
            "fuel_burner",
            FILTERING,
            FieldSet::ALL,
            arena,
            &[],
            &body,
            "",
        ),
        "filtering",
        1024,
    ));
    // 3. Push the arena again and again until refused, then answer "pushed".
    let body = format!(
        "(block $full (loop $more (br_if $full (i32.ne (call $write (i32.const $ARENA) \
         (i32.const {half})) (i32.const 0))) (br $more))) (i32.const 0)",
        half = 1 << 19
    );
    cases.push(case(
        "output up to the cap on every call",
        "output_flood",
        plugin(
            "output_flood",
            FILTERING,
            FieldSet::ALL,
            1 << 20,
            &[],
            &body,
            "",
        ),
        "filtering",
        1024,
    ));
    // 4. 65,536 SetAttribute patches with distinct names on channel 0.
    let patches = (0..65_536)
        .map(|k| Patch {
            index: 0,
            op: PatchOp::SetAttribute(format!("x-{k}").into(), "v".into()),
        })
        .collect();
    let answer = postcard::to_allocvec(&StageOutput::Patches(patches)).expect("encodes");
    let body = format!(
        "(memory.copy (i32.add (i32.const $ARENA) (local.get $len)) (i32.const 1024) \
         (i32.const {len})) (i32.const {len})",
        len = answer.len()
    );
    cases.push(case(
        "65,536 distinct attributes on one channel",
        "attribute_bomb",
        plugin(
            "attribute_bomb",
            MAPPING,
            FieldSet::NONE,
            4 << 20,
            &answer,
            &body,
            "",
        ),
        "data_mapping",
        1024,
    ));
    // 5. m3u_execute_stage re-exporting a host import.
    let wasm = wat::parse_file("tests/fixtures/wat/reexported_import.wat").expect("fixture");
    cases.push(case(
        "execute_stage is a re-exported import",
        "reexported_import",
        wasm,
        "filtering",
        1024,
    ));
    // 6. A FIFO named x.wasm (made by `run_case`).
    cases.push(Case {
        what: "a FIFO named x.wasm",
        files: vec![("x".into(), Vec::new())],
        stage: "filtering",
        batch_size: 1024,
        named: true,
    });
    // 7. Element segments: 2.2M items (the probe's 15.5M in 14.8 MiB cost
    // 436 MiB to instantiate).
    let items = " $f".repeat(2_200_000);
    let extra = format!("(func $f) (elem func{items})");
    cases.push(case(
        "2.2M element-segment items",
        "element_bomb",
        plugin(
            "element_bomb",
            FILTERING,
            FieldSet::NONE,
            1 << 16,
            &[],
            KEEP_ALL,
            &extra,
        ),
        "filtering",
        1024,
    ));
    // 8. An 8 MiB plugin name.
    let name = "n".repeat(8 << 20);
    let long_name = plugin(&name, FILTERING, FieldSet::NONE, 9 << 20, &[], KEEP_ALL, "");
    cases.push(case(
        "8 MiB plugin name",
        "long_name",
        long_name.clone(),
        "filtering",
        1024,
    ));
    // The probe's version: no strategy names it (it is only validated).
    cases.push(Case {
        named: false,
        ..case(
            "8 MiB plugin name, no strategy names it",
            "idle_long_name",
            long_name,
            "filtering",
            1024,
        )
    });
    // 9. A 60 KiB group title for every channel of a 64-channel batch
    // (3.75 MiB per batch), held by the numbering barrier.
    let mut titles = FieldValues::new(Field::GroupTitle);
    let title = "g".repeat(60 << 10);
    for index in 0..64 {
        titles.push(index, &title);
    }
    let answer = postcard::to_allocvec(&StageOutput::Changes(Changes {
        fields: vec![titles],
        ..Changes::default()
    }))
    .expect("encodes");
    let body = format!(
        "(memory.copy (i32.add (i32.const $ARENA) (local.get $len)) (i32.const 1024) \
         (i32.const {len})) (i32.const {len})",
        len = answer.len()
    );
    cases.push(case(
        "60 KiB into every channel's group title",
        "field_bloat",
        plugin(
            "field_bloat",
            MAPPING,
            FieldSet::NONE,
            8 << 20,
            &answer,
            &body,
            "",
        ),
        "data_mapping",
        64,
    ));
    // 10. A 64-bit memory.
    let wat = format!(
        r#"(module (@custom "m3u_abi_version" "{abi}") (memory (export "memory") i64 17)
  (func (export "m3u_arena_ptr") (result i32) (i32.const 65536))
  (func (export "m3u_arena_capacity") (result i32) (i32.const 1048576))
  (func (export "m3u_plugin_info") (result i32) (i32.const -1))
  (func (export "m3u_init") (result i32) (i32.const 0))
  (func (export "m3u_cleanup") (result i32) (i32.const 0))
  (func (export "m3u_check_memory_pressure") (param i32) (result i32) (i32.const 1))
  (func (export "m3u_execute_stage") (param i32 i32) (result i32) (i32.const 1)))"#,
        abi = hex(&ABI_VERSION.to_le_bytes())
    );
    cases.push(case(
        "a 64-bit memory",
        "memory64",
        wat::parse_str(&wat).expect("assembles"),
        "filtering",
        1024,
    ));
    // 11. 20,000 calls per stage call to a function with 20,000 locals
    // (refused at load: more than 1,024), with 1,024 and with none: the same
    // fuel, different time (fuel in the notes).
    for (what, name, locals) in [
        (
            "20,000 calls per batch, 20,000 locals each",
            "wide_frames",
            20_000,
        ),
        (
            "20,000 calls per batch, 1,024 locals each (the most allowed)",
            "wide_allowed",
            1024,
        ),
        (
            "20,000 calls per batch, no locals (for the ratio)",
            "narrow_frames",
            0,
        ),
    ] {
        let extra = if locals == 0 {
            "(func $callee)".to_string()
        } else {
            format!("(func $callee (local{}))", " i64".repeat(locals))
        };
        let body = format!("{} {KEEP_ALL}", loop_body(20_000, "(call $callee)"));
        cases.push(case(
            what,
            name,
            plugin(name, FILTERING, FieldSet::NONE, 1 << 16, &[], &body, &extra),
            "filtering",
            1024,
        ));
    }
    cases
}

struct Outcome {
    seconds: f64,
    rss_mib: f64,
    log_bytes: usize,
    output: Vec<u8>,
    note: String,
}

fn config(dir: &Path, output: &Path, stage: &str, plugin: Option<&str>, batch: usize) -> PathBuf {
    let native = match stage {
        "data_mapping" => "native_mapping",
        _ => "native_filter",
    };
    let strategy = match plugin {
        Some(name) => format!("{stage} = [\"{name}\", \"{native}\"]\n"),
        None => String::new(),
    };
    let text = format!(
        "[pipeline]\nbatch_size = {batch}\nworkers = 1\n\
         [output]\npath = {output:?}\n\
         [proxy_generation.wasm_plugins]\nplugin_directory = {dir:?}\n\
         [proxy_generation.wasm_plugins.strategies]\n\
         channel_numbering = [\"inmemory_numbering\"]\n{strategy}"
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

fn run(config: &Path, output: &Path) -> Outcome {
    let stats_path = config.with_extension("json");
    let started = Instant::now();
    let result = Command::new(env!("CARGO_BIN_EXE_m3u-plugin-host"))
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--input",
            PLAYLIST,
            "--memory-pressure",
            "optimal",
            "--stats-json",
        ])
        .arg(&stats_path)
        .output()
        .expect("run m3u-plugin-host");
    let seconds = started.elapsed().as_secs_f64();
    let stats: serde_json::Value = std::fs::read_to_string(&stats_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut note = String::new();
    if !result.status.success() {
        note = format!("exit {:?}; ", result.status.code());
    }
    if let Some(errors) = stats["plugin_load_errors"].as_array() {
        for error in errors {
            let text = error.as_str().unwrap_or_default();
            let _ = write!(note, "not loaded: {}; ", &text[..text.len().min(160)]);
        }
    }
    if let Some(plugins) = stats["plugins"].as_array() {
        for plugin in plugins {
            let last: String = plugin["last_error"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(100)
                .collect();
            let _ = write!(
                note,
                "fuel {}, failures {}, log lines dropped {}, last error: {last}; ",
                plugin["fuel"], plugin["failures_by_kind"], plugin["log_lines_dropped"]
            );
        }
    }
    Outcome {
        seconds,
        rss_mib: stats["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
        log_bytes: result.stderr.len(),
        output: std::fs::read(output).unwrap_or_default(),
        note,
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-bench");
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "{:<62} {:>8} {:>8} {:>9} {:>9} {:>10} {:>6}  notes",
        "case", "time s", "+native", "RSS MiB", "+native", "log bytes", "same"
    );
    for case in cases() {
        let dir = root.join(case.files[0].0.chars().take(32).collect::<String>());
        std::fs::create_dir_all(&dir).expect("case directory");
        let native_out = dir.join("native.m3u");
        let native = run(
            &config(&dir, &native_out, case.stage, None, case.batch_size),
            &native_out,
        );
        for (name, bytes) in &case.files {
            let file = dir.join(format!("{name}.wasm"));
            if bytes.is_empty() {
                let made = Command::new("mkfifo").arg(&file).status();
                assert!(made.is_ok_and(|status| status.success()), "mkfifo");
            } else {
                std::fs::write(&file, bytes).expect("write the plugin");
            }
        }
        let name: String = case.files[0].0.chars().take(64).collect();
        let out = dir.join("plugin.m3u");
        let listed = case.named.then_some(name.as_str());
        let hostile = run(
            &config(&dir, &out, case.stage, listed, case.batch_size),
            &out,
        );
        println!(
            "{:<62} {:>8.2} {:>+8.2} {:>9.1} {:>+9.1} {:>10} {:>6}  {}",
            case.what,
            hostile.seconds,
            hostile.seconds - native.seconds,
            hostile.rss_mib,
            hostile.rss_mib - native.rss_mib,
            hostile.log_bytes,
            if hostile.output == native.output && !native.output.is_empty() {
                "yes"
            } else {
                "NO"
            },
            hostile.note
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
