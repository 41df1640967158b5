//! Plugin configuration from the host's TOML (`[plugins.<name>]`).
//!
//! The host hands the whole table over at init: `export_plugin!` exports
//! `m3u_init(config_len)`, the host writes the postcard-encoded
//! [`PluginConfig`] at the arena start, and the dispatcher decodes it into a
//! small map in guest memory before it calls
//! [`Plugin::init`](crate::Plugin::init). [`get`] answers from that map, in
//! `init` and in every later call, and never calls the host: a
//! plugin that only uses [`get`]/[`get_or`] does not import `get_config`, so
//! it loads under an allowlist without it (the default one). Values arrive
//! as text (`5000`, `0.01`, `true` for TOML numbers and booleans).
//!
//! [`lookup_live`] asks the host instead, through `get_config`. Only a
//! plugin that calls it imports `get_config` (the linker drops the import
//! from every other plugin), and such a plugin needs `get_config` in
//! `allowed_host_functions`. The host's values do not change while a plugin
//! is loaded, so [`get`] gives the same answers; `lookup_live` is for
//! plugins that prefer not to keep a copy.

use alloc::collections::BTreeMap;
use alloc::string::String;

use m3u_proxy_plugin_abi::{status, PluginConfig};

use crate::arena::{with_whole_arena, GuestCell, ARENA_BYTES};
use crate::hostcalls::{self, ConfigLookup};
use crate::LogLevel;

/// The table the host handed over at init.
static TABLE: GuestCell<BTreeMap<String, String>> = GuestCell::new(BTreeMap::new());

/// Set when [`lookup_live`] met a value it could not read during `init`.
static LIVE_ERROR_SEEN: GuestCell<bool> = GuestCell::new(false);

/// The value for `key` in the table the host handed over at init, or `None`
/// if the table has none. Needs no host function.
pub fn get(key: &str) -> Option<String> {
    TABLE.with(|table| table.get(key).cloned())
}

/// The value for `key`, or `default`.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| String::from(default))
}

/// Every key the table holds, sorted (e.g. to warn about unknown ones).
pub fn keys() -> alloc::vec::Vec<String> {
    TABLE.with(|table| table.keys().cloned().collect())
}

/// Decodes the table `m3u_init(config_len)` found at the arena start and
/// keeps it for [`get`]. On failure logs why and returns the status for
/// `m3u_init`.
pub(crate) fn receive_table(config_len: i32) -> Result<(), i32> {
    LIVE_ERROR_SEEN.with(|seen| *seen = false);
    let len = usize::try_from(config_len)
        .ok()
        .filter(|len| *len <= ARENA_BYTES);
    let decoded = len.and_then(|len| {
        with_whole_arena(|arena| {
            let (table, rest) =
                postcard::take_from_bytes::<PluginConfig<'_>>(&arena[..len]).ok()?;
            if !rest.is_empty() {
                return None;
            }
            Some(
                table
                    .entries
                    .into_iter()
                    .map(|entry| (entry.key.into_owned(), entry.value.into_owned()))
                    .collect::<BTreeMap<_, _>>(),
            )
        })
        .flatten()
    });
    match decoded {
        Some(table) => {
            TABLE.with(|slot| *slot = table);
            Ok(())
        }
        None => {
            crate::log(
                LogLevel::Error,
                &alloc::format!(
                    "the configuration table from the host ({config_len} bytes) does not \
                     decode as a PluginConfig of at most {ARENA_BYTES} bytes"
                ),
            );
            Err(status::DECODE_ERROR)
        }
    }
}

/// Whether [`lookup_live`] met a value it could not read since the table
/// arrived (which makes `init` fail with `CONFIG_ERROR`).
pub(crate) fn live_error_seen() -> bool {
    LIVE_ERROR_SEEN.with(|seen| *seen)
}

/// The value for `key`, asked from the host with `get_config` now.
///
/// **Imports `get_config`**: a plugin that calls this needs it in the host's
/// `allowed_host_functions`, or it is refused at load. Prefer [`get`].
///
/// Values are read through the arena's 8 KiB scratch region; a longer
/// one is read through the data region, which is free outside stage
/// calls (in `init`). A value that fits neither (or a long one asked for
/// during a stage call) is `None`, logged as an error, and makes `init`
/// fail with `CONFIG_ERROR` — never silently taken for a missing key.
pub fn lookup_live(key: &str) -> Option<String> {
    let first = crate::arena::with_scratch(|scratch| hostcalls::get_config(key, scratch));
    let len = match first {
        Some(ConfigLookup::Value(value)) => return Some(value),
        Some(ConfigLookup::Missing) | None => return None,
        Some(ConfigLookup::TooLong(len)) => len,
    };
    match crate::arena::with_data(|data| hostcalls::get_config(key, data)) {
        Some(ConfigLookup::Value(value)) => Some(value),
        Some(ConfigLookup::Missing) => None,
        Some(ConfigLookup::TooLong(_)) | None => {
            LIVE_ERROR_SEEN.with(|seen| *seen = true);
            crate::log(
                LogLevel::Error,
                &alloc::format!(
                    "config value `{key}` is {len} bytes, more than this plugin can read \
                     here (at most {} bytes in init, {} during a stage call)",
                    crate::arena::DATA_BYTES - key.len() - 1,
                    crate::arena::SCRATCH_BYTES - key.len() - 1
                ),
            );
            None
        }
    }
}
