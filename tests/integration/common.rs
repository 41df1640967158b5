//! Shared helpers of the integration tests: the real playlist fixture, the
//! plugins built by build.rs, WAT fixtures and runtimes with chosen limits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use m3u_plugin_host::config::Security;
use m3u_plugin_host::runtime::{PluginRuntime, RuntimeLimits};
use m3u_plugin_host::OwnedChannel;

/// The real iptv-org playlist (2021 snapshot) used as test input.
pub const PLAYLIST_FIXTURE: &str = "tests/fixtures/m3u/iptv-org-index-2021.m3u";

/// Absolute path of a file under the crate root.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Sets `id` to 1..=n in order, as the pipeline does.
pub fn assign_ids(channels: &mut [OwnedChannel]) {
    for (index, channel) in channels.iter_mut().enumerate() {
        channel.id = index as u64 + 1;
    }
}

/// Every channel of the real playlist, parsed with `m3u::read_all` (source 0)
/// and numbered 1..=n. Parsed once per test binary; each caller gets a copy.
pub fn playlist() -> Vec<OwnedChannel> {
    static CHANNELS: OnceLock<Vec<OwnedChannel>> = OnceLock::new();
    CHANNELS
        .get_or_init(|| {
            let path = repo_path(PLAYLIST_FIXTURE);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            let (_header, mut channels, _malformed) = m3u_plugin_host::m3u::read_all(&text, 0);
            assert!(
                channels.len() > 1000,
                "{} holds only {} channels; is the fixture truncated?",
                path.display(),
                channels.len()
            );
            assign_ids(&mut channels);
            channels
        })
        .clone()
}

fn plugin_bytes(dir: &str, env_name: &str, file: &str) -> (Vec<u8>, PathBuf) {
    let path = Path::new(dir).join(file);
    match std::fs::read(&path) {
        Ok(bytes) => (bytes, path),
        Err(error) => panic!(
            "plugin {} is missing ({error}).\nbuild.rs builds it into {env_name}={dir}; \
             it skips that when M3U_SKIP_PLUGIN_BUILD is set. Unset it, run \
             `rustup target add wasm32-unknown-unknown` if needed, and rebuild \
             (`cargo test` reruns build.rs).",
            path.display()
        ),
    }
}

/// Bytes and path of an example plugin (`passthrough.wasm`,
/// `group_normalizer.wasm`) built by build.rs.
pub fn example_plugin(file: &str) -> (Vec<u8>, PathBuf) {
    plugin_bytes(
        env!("M3U_EXAMPLE_PLUGIN_DIR"),
        "M3U_EXAMPLE_PLUGIN_DIR",
        file,
    )
}

/// Bytes and path of a test plugin (`flaky_filter.wasm`) built by build.rs.
pub fn test_plugin(file: &str) -> (Vec<u8>, PathBuf) {
    plugin_bytes(env!("M3U_TEST_PLUGIN_DIR"), "M3U_TEST_PLUGIN_DIR", file)
}

/// Path of a WAT fixture in `tests/fixtures/wat/`.
pub fn wat_path(name: &str) -> PathBuf {
    repo_path("tests/fixtures/wat").join(name)
}

/// The text of a WAT fixture, for tests that derive a variant of it.
pub fn wat_text(name: &str) -> String {
    let path = wat_path(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// A WAT fixture compiled to Wasm bytes.
pub fn wat_file(name: &str) -> Vec<u8> {
    let path = wat_path(name);
    wat::parse_file(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// WAT text compiled to Wasm bytes.
pub fn wat_str(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|error| panic!("invalid WAT: {error}\n{text}"))
}

/// `text` with `from` replaced by `to`; panics if `from` does not occur, so
/// a variant can never silently equal its base.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one `{from}` in the fixture"
    );
    text.replacen(from, to, 1)
}

/// The host functions allowed by default
/// (`proxy_generation.wasm_plugins.security.allowed_host_functions`).
pub fn default_allowlist() -> Vec<String> {
    Security::default().allowed_host_functions
}

/// The default allowlist plus `extra`.
pub fn allowlist_with(extra: &[&str]) -> Vec<String> {
    let mut allowed = default_allowlist();
    allowed.extend(extra.iter().map(|name| name.to_string()));
    allowed
}

/// A runtime with these limits and host functions.
pub fn runtime_with(limits: RuntimeLimits, allowlist: &[String]) -> PluginRuntime {
    PluginRuntime::new(limits, allowlist).expect("runtime with a valid allowlist")
}

/// A runtime with default limits and the default allowlist.
pub fn default_runtime() -> PluginRuntime {
    runtime_with(RuntimeLimits::default(), &default_allowlist())
}

/// Compiles `wasm` under `runtime` (whose allowlist lacks `get_config`) and
/// checks that the plugin does not import it: SDK plugins get their
/// configuration at init.
pub fn assert_compiles_without_get_config(runtime: &PluginRuntime, wasm: &[u8]) {
    let compiled = runtime
        .compile(wasm)
        .unwrap_or_else(|error| panic!("refused without get_config on the allowlist: {error}"));
    let imports = compiled.imports();
    assert!(
        !imports.iter().any(|import| import == "host.get_config"),
        "{imports:?}"
    );
}

/// The file names of a pipeline's idle plugins (valid, not instantiated),
/// in file-name order.
pub fn idle_files(pipeline: &m3u_plugin_host::pipeline::Pipeline) -> Vec<String> {
    let mut files: Vec<String> = pipeline
        .idle_plugins()
        .iter()
        .filter_map(|idle| idle.path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    files.sort_unstable();
    files
}

/// Writes `bytes` to `path` in place (truncate, then write) and sets its
/// modification time to `mtime`.
pub fn write_with_mtime(path: &Path, bytes: &[u8], mtime: std::time::SystemTime) {
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}
