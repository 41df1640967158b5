//! The host functions, each raw import right above its safe wrapper.
//!
//! A function is only imported by a plugin that (transitively) calls its
//! wrapper: the linker drops unused imports. `get_config` is called only by
//! `config::lookup_live`; `config::get` answers from the table handed over
//! at init, so a plugin that reads its settings with it does not need
//! `get_config` on the host's allowlist.

use alloc::string::String;
use alloc::vec::Vec;

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

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "host")]
extern "C" {
    #[link_name = "claim_keys"]
    fn host_claim_keys(keys_ptr: *const u8, keys_len: i32, out_ptr: *mut u8, out_cap: i32) -> i32;
}

/// Keys longer than this are claimed by a 64-bit hash of theirs instead
/// (`h:` and 16 hex digits), so any key fits the scratch region.
pub const MAX_CLAIM_KEY_BYTES: usize = 1024;

/// Claims `keys`, in order, in this plugin's own shared key set (the
/// `claim_keys` host function, which must be on the host's allowlist):
/// `keep` gets one entry per key, `true` where this call is the key's first
/// claim (in this run, or, with a Redis store, by this proxy instance among
/// all that share it). The host fails the call (and the batch falls back)
/// if its store fails. Natively (unit tests) the set is the process's,
/// emptied by [`crate::testing::TestHost::start_run`].
pub fn claim_keys(keys: &[&[u8]], keep: &mut Vec<bool>) {
    keep.clear();
    let long: Vec<String> = keys
        .iter()
        .filter(|key| key.len() > MAX_CLAIM_KEY_BYTES)
        .map(|key| long_key(key))
        .collect();
    let mut long = long.iter();
    let keys: Vec<&[u8]> = keys
        .iter()
        .map(|key| match key.len() > MAX_CLAIM_KEY_BYTES {
            true => long.next().map_or(*key, |short| short.as_bytes()),
            false => *key,
        })
        .collect();
    claim_chunks(&keys, keep);
}

/// `h:` and the 64-bit FNV-1a hash of a long key, in hex.
fn long_key(key: &[u8]) -> String {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut text = String::from("h:");
    for shift in (0..16).rev() {
        let digit = (hash >> (shift * 4)) & 0xf;
        text.push(char::from(b"0123456789abcdef"[digit as usize]));
    }
    text
}

/// Appends `value` as an unsigned LEB128 varint (postcard's integers).
#[cfg(target_arch = "wasm32")]
fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Sends the keys in as many `claim_keys` calls as the scratch region
/// needs, each a postcard `Vec<&[u8]>` followed by room for its answers.
#[cfg(target_arch = "wasm32")]
fn claim_chunks(keys: &[&[u8]], keep: &mut Vec<bool>) {
    let mut encoded = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let room = crate::arena::SCRATCH_BYTES;
        // Greedily: each key costs its varint, its bytes and one answer.
        let mut used = 5;
        let mut end = start;
        while end < keys.len() {
            let cost = 3 + keys[end].len() + 1;
            if used + cost > room {
                break;
            }
            used += cost;
            end += 1;
        }
        encoded.clear();
        push_varint(&mut encoded, end - start);
        for key in &keys[start..end] {
            push_varint(&mut encoded, key.len());
            encoded.extend_from_slice(key);
        }
        let count = end - start;
        let answered = crate::arena::with_scratch(|scratch| {
            let (input, output) = scratch.split_at_mut(encoded.len());
            input.copy_from_slice(&encoded);
            // SAFETY: both pointers are exclusive, disjoint slices of the
            // arena's scratch region; the host reads `input.len()` bytes and
            // writes at most `count` bytes into `output`.
            let answered = unsafe {
                host_claim_keys(
                    input.as_ptr(),
                    input.len() as i32,
                    output.as_mut_ptr(),
                    count as i32,
                )
            };
            keep.extend(output[..count].iter().map(|&answer| answer == 1));
            answered
        });
        assert_eq!(
            answered,
            Some(count as i32),
            "claim_keys: the host answered for a different number of keys"
        );
        start = end;
    }
}

/// Native fallback: the test host's set.
#[cfg(not(target_arch = "wasm32"))]
fn claim_chunks(keys: &[&[u8]], keep: &mut Vec<bool>) {
    keep.extend(keys.iter().map(|key| crate::testing::claim_key(key)));
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
