//! Arbitrary UTF-8 through `Config::from_toml`: an error or a config, never a
//! panic. A config that loads is also turned into plugin settings (the
//! `get_config` view), which formats every `[plugins.*]` value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3u_plugin_host::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(config) => {
            let _ = config.plugin_settings();
        }
        Err(error) => {
            // Error messages quote the input; rendering them must not panic.
            let _ = error.to_string();
        }
    }
});
