//! The host functions, each raw import right above its safe wrapper.
//!
//! A function is only imported by a plugin that (transitively) calls its
//! wrapper: the linker drops unused imports. `get_config` is called only by
//! `config::lookup_live`; `config::get` answers from the table handed over
//! at init, so a plugin that reads its settings with it does not need
//! `get_config` on the host's allowlist.

use crate::LogLevel;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "host")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: i32);
}

/// Sends one log line to the host (which bounds size and rate). The line is
/// staged in the arena's scratch region, cut to fit it.
#[cfg(target_arch = "wasm32")]
pub fn log(level: LogLevel, message: &str) {
    crate::arena::with_scratch(|scratch| {
        let len = message.len().min(scratch.len());
        scratch[..len].copy_from_slice(&message.as_bytes()[..len]);
        // SAFETY: `scratch` is an exclusive slice of the arena; the host only
        // reads `len` bytes from it and bounds-checks them against the arena.
        unsafe { host_log(level as i32, scratch.as_ptr(), len as i32) }
    });
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "host")]
extern "C" {
    #[link_name = "get_memory_usage"]
    fn host_get_memory_usage() -> i64;
}

/// Bytes of linear memory this plugin currently occupies.
#[cfg(target_arch = "wasm32")]
pub fn memory_usage() -> u64 {
    // SAFETY: takes no arguments and touches no guest memory.
    let bytes = unsafe { host_get_memory_usage() };
    bytes.max(0) as u64
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "host")]
extern "C" {
    #[link_name = "write_channels"]
    fn host_write_channels(ptr: *const u8, len: i32) -> i32;
}

/// Appends `bytes` (which must lie in the arena) to the stage output.
#[cfg(target_arch = "wasm32")]
pub(crate) fn write_channels(bytes: &[u8]) -> i32 {
    let len = bytes.len().min(i32::MAX as usize) as i32;
    // SAFETY: `bytes` is a live slice; the host only reads `len` bytes.
    unsafe { host_write_channels(bytes.as_ptr(), len) }
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "host")]
extern "C" {
    #[link_name = "get_config"]
    fn host_get_config(key_ptr: *const u8, key_len: i32, out_ptr: *mut u8, out_cap: i32) -> i32;
}

/// What the host answered for one configuration key.
pub(crate) enum ConfigLookup {
    /// No such key, or the value is not UTF-8.
    Missing,
    /// The value.
    Value(alloc::string::String),
    /// The value is this many bytes: more than the buffer offered.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    TooLong(usize),
}

/// Asks the host for `key`'s value, staging key and value in `buffer` (a
/// region of the arena).
#[cfg(target_arch = "wasm32")]
pub(crate) fn get_config(key: &str, buffer: &mut [u8]) -> ConfigLookup {
    let key_len = key.len();
    if key_len >= buffer.len() {
        return ConfigLookup::Missing;
    }
    let (key_buf, out) = buffer.split_at_mut(key_len);
    key_buf.copy_from_slice(key.as_bytes());
    // SAFETY: both pointers are exclusive, disjoint slices of the arena; the
    // host reads `key_len` bytes and writes at most `out.len()` bytes.
    let len = unsafe {
        host_get_config(
            key_buf.as_ptr(),
            key_len as i32,
            out.as_mut_ptr(),
            out.len() as i32,
        )
    };
    let Ok(len) = usize::try_from(len) else {
        return ConfigLookup::Missing;
    };
    match out.get(..len) {
        Some(value) => core::str::from_utf8(value)
            .map(|text| ConfigLookup::Value(alloc::string::String::from(text)))
            .unwrap_or(ConfigLookup::Missing),
        None => ConfigLookup::TooLong(len),
    }
}

/// Native fallback: the test host keeps the line.
#[cfg(not(target_arch = "wasm32"))]
pub fn log(level: LogLevel, message: &str) {
    crate::testing::record_log(level, message);
}

/// Native fallback: no linear memory to measure.
#[cfg(not(target_arch = "wasm32"))]
pub fn memory_usage() -> u64 {
    0
}

/// Native fallback: the test host collects the output.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn write_channels(bytes: &[u8]) -> i32 {
    crate::testing::record_output(bytes);
    m3u_proxy_plugin_abi::status::OK
}

/// Native fallback: answers from the table handed over at init.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn get_config(key: &str, _buffer: &mut [u8]) -> ConfigLookup {
    match crate::config::get(key) {
        Some(value) => ConfigLookup::Value(value),
        None => ConfigLookup::Missing,
    }
}
