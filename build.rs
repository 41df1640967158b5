//! Builds the plugins in `plugins/` (examples) and `tests/plugins/` (test
//! doubles) for `wasm32-unknown-unknown` from source, so no compiled `.wasm`
//! is ever committed. The files land in `target/plugins/` and
//! `target/test-plugins/`; their paths reach the code as
//! `M3U_EXAMPLE_PLUGIN_DIR` and `M3U_TEST_PLUGIN_DIR`.
//!
//! Hand-written WAT plugins (`plugins/*/*.wat`) are assembled with the `wat`
//! crate into `target/plugins/<file stem>.wasm`.
//!
//! Plugins in other languages (C, Zig, AssemblyScript: a directory of
//! `plugins/` with a `build.sh` and no `Cargo.toml`) are built by their
//! `build.sh <output.wasm>` into `target/plugins/<dir, - as _>.wasm`, with
//! `M3U_FOREIGN_BUILD_DIR` pointing at a scratch directory under `target/`
//! for their caches. A missing compiler does not stop the host's build: the
//! script's message (how to install it) becomes a cargo warning, and the
//! tests that need the plugin say so.
//!
//! Set `M3U_SKIP_PLUGIN_BUILD=1` to skip this (e.g. inside a cross container
//! without the wasm target); tests that need plugins will then say so.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "wasm-plugin";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                manifest_dir.join(dir)
            }
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let groups = [
        (
            "plugins",
            target_dir.join("plugins"),
            "M3U_EXAMPLE_PLUGIN_DIR",
        ),
        (
            "tests/plugins",
            target_dir.join("test-plugins"),
            "M3U_TEST_PLUGIN_DIR",
        ),
    ];
    for watched in [
        "plugins",
        "tests/plugins",
        "crates/sdk/src",
        "crates/abi/src",
        "sdk-c",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    println!("cargo:rerun-if-env-changed=M3U_SKIP_PLUGIN_BUILD");
    for (_, out_dir, env_name) in &groups {
        println!("cargo:rustc-env={env_name}={}", out_dir.display());
    }
    if env::var_os("M3U_SKIP_PLUGIN_BUILD").is_some() {
        println!("cargo:warning=M3U_SKIP_PLUGIN_BUILD is set: example plugins were not built");
        return;
    }

    compile_wat_plugins(&manifest_dir.join("plugins"), &target_dir.join("plugins"));
    build_foreign_plugins(
        &manifest_dir.join("plugins"),
        &target_dir.join("plugins"),
        &target_dir.join("foreign-build"),
    );

    let mut packages = Vec::new();
    for (dir, out_dir, _) in &groups {
        for package in plugin_packages(&manifest_dir.join(dir)) {
            packages.push((package, out_dir.clone()));
        }
    }
    if packages.is_empty() {
        return;
    }
    check_wasm_target();

    let build_dir = target_dir.join("wasm-plugin-build");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&manifest_dir)
        .args(["build", "--target", WASM_TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(&build_dir);
    for (package, _) in &packages {
        command.args(["-p", package]);
    }
    // The outer build's environment is for the host (and, under `cargo
    // clippy`, for clippy): start the guest build from a clean one, with the
    // same toolchain as the outer build.
    command.env_clear();
    for var in [
        "PATH",
        "HOME",
        "RUSTUP_HOME",
        "CARGO_HOME",
        "TMPDIR",
        "LANG",
    ] {
        if let Some(value) = env::var_os(var) {
            command.env(var, value);
        }
    }
    if let Some(rustc) = env::var_os("RUSTC") {
        command.env("RUSTC", rustc);
    }
    command.stdin(std::process::Stdio::null());
    // A smaller shadow stack leaves more of the memory limit to the plugin.
    command.env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
        "-C link-arg=-zstack-size=262144",
    );
    let output = command.output().unwrap_or_else(|error| {
        panic!("could not run cargo to build the example plugins: {error}")
    });
    if !output.status.success() {
        panic!(
            "building the plugins in plugins/ and tests/plugins/ for {WASM_TARGET} failed.\n\
             Fix the plugin's compile error below (the {WASM_TARGET} target is installed; \
             see build.rs).\n\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = build_dir.join(WASM_TARGET).join(PROFILE);
    for (package, out_dir) in &packages {
        fs::create_dir_all(out_dir).expect("create plugin output directory");
        let file = format!("{}.wasm", package.replace('-', "_"));
        let from = built.join(&file);
        fs::copy(&from, out_dir.join(&file))
            .unwrap_or_else(|error| panic!("copy {}: {error}", from.display()));
    }
}

/// Compiles every hand-written `dir/*/*.wat` plugin (e.g.
/// `plugins/dedup-wat/dedup_wat.wat`) with the `wat` crate into
/// `out_dir/<file stem>.wasm`. A syntax error fails the build, naming the file.
fn compile_wat_plugins(dir: &Path, out_dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut sources: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| fs::read_dir(entry.path()).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "wat"))
        .collect();
    sources.sort();
    for source in sources {
        println!("cargo:rerun-if-changed={}", source.display());
        let wasm = wat::parse_file(&source).unwrap_or_else(|error| {
            panic!(
                "compiling the WAT plugin {} failed:\n{error}",
                source.display()
            )
        });
        let stem = source
            .file_stem()
            .expect("a .wat file has a stem")
            .to_string_lossy();
        fs::create_dir_all(out_dir).expect("create plugin output directory");
        let to = out_dir.join(format!("{stem}.wasm"));
        fs::write(&to, wasm).unwrap_or_else(|error| panic!("write {}: {error}", to.display()));
    }
}

/// Runs `dir/<plugin>/build.sh <out_dir>/<plugin, - as _>.wasm` for every
/// directory with a `build.sh` and no `Cargo.toml`. A failure (a missing
/// compiler, most often) removes any older output and becomes a warning
/// carrying the script's message.
fn build_foreign_plugins(dir: &Path, out_dir: &Path, scratch: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut plugins: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("build.sh").is_file() && !path.join("Cargo.toml").exists())
        .collect();
    plugins.sort();
    for plugin in plugins {
        let dir_name = plugin
            .file_name()
            .expect("a directory has a name")
            .to_string_lossy()
            .into_owned();
        let name = dir_name.replace('-', "_");
        fs::create_dir_all(out_dir).expect("create plugin output directory");
        let out = out_dir.join(format!("{name}.wasm"));
        let build_dir = scratch.join(&dir_name);
        fs::create_dir_all(&build_dir).expect("create the foreign build directory");
        let result = Command::new("sh")
            .arg(plugin.join("build.sh"))
            .arg(&out)
            .current_dir(&plugin)
            .env("M3U_FOREIGN_BUILD_DIR", &build_dir)
            .stdin(std::process::Stdio::null())
            .output();
        let problem = match result {
            Ok(output) if output.status.success() && out.is_file() => continue,
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stderr);
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                lines[lines.len().saturating_sub(6)..].join(" | ")
            }
            Err(error) => format!("could not run sh: {error}"),
        };
        let _ = fs::remove_file(&out);
        println!("cargo:warning=plugin {name} ({dir_name}) not built: {problem}");
    }
}

/// Package names of the plugin crates directly under `dir`.
fn plugin_packages(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| fs::read_to_string(entry.path().join("Cargo.toml")).ok())
        .filter_map(|manifest| {
            manifest.lines().find_map(|line| {
                let value = line.strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_string())
            })
        })
        .collect();
    names.sort();
    names
}

/// Makes sure the toolchain has the wasm target. rustup installs the targets
/// of rust-toolchain.toml only when it installs the toolchain itself, so a
/// machine that already had this toolchain lacks them: add it here, once.
fn check_wasm_target() {
    if wasm_target_installed() {
        return;
    }
    println!("cargo:warning=installing the {WASM_TARGET} target with rustup (needed to build the plugins)");
    let added = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .is_ok_and(|status| status.success());
    if !added || !wasm_target_installed() {
        panic!(
            "the {WASM_TARGET} target is not installed and `rustup target add {WASM_TARGET}` \
             did not install it, so the plugins cannot be built. Fix: install it for the \
             toolchain in rust-toolchain.toml (`rustup target add {WASM_TARGET}`), or set \
             M3U_SKIP_PLUGIN_BUILD=1 to build the host without plugins"
        );
    }
}

fn wasm_target_installed() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Some(sysroot) = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    else {
        // No answer from rustc: let the plugin build itself report.
        return true;
    };
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .exists()
}
