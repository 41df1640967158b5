//! The TOML configuration: the seed's `[proxy_generation.wasm_plugins]`
//! section with its keys kept as they are, plus what the pipeline needs.
//!
//! Unknown keys are errors; every error names the file, line, column and key
//! path. Relative paths are resolved against the config file's directory.
//!
//! This file owns the [`Config`] type: loading ([`Config::from_file`],
//! [`Config::from_toml`]), validation, path resolution, the native rules and
//! the plugin settings. The sections' types live in `sections.rs`
//! (`[proxy]`, `[[sources]]`, `[output]`, `[pipeline]`, `[mapping]`,
//! `[filtering]`, `[numbering]`, `[serve]`), `pressure.rs` (`[memory]`,
//! `[store]`, pressure levels by name), `remote.rs` (`[store.redis]`,
//! `[store.s3]`) and `plugins.rs` (the seed's
//! `[proxy_generation.wasm_plugins]`, plugin values, sizes).

mod plugins;
mod pressure;
mod remote;
mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, ErrorKind, Result};

pub use plugins::{
    parse_size, ConfigValue, Fallbacks, ProxyGeneration, Security, Strategies, WasmPlugins,
};
pub use pressure::{parse_level, CompressionName, LevelName, MemoryConfig, StoreConfig};
pub use remote::{RedisConfig, S3Config, S3Settings, SpillTo};
pub use sections::{
    CompressHeld, FilterActionConfig, FilterConfig, FilteringConfig, LastGoodConfig, MappingConfig,
    NumberingConfig, OutputConfig, PipelineConfig, ProxyConfig, ServeConfig, SourceConfig,
};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of the generated proxy.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Playlists to read, in order; each gets its own source id.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Where the playlist goes.
    #[serde(default)]
    pub output: OutputConfig,
    /// Last good copies of the sources.
    #[serde(default)]
    pub last_good: LastGoodConfig,
    /// Batching.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Native data-mapping rules.
    #[serde(default)]
    pub mapping: MappingConfig,
    /// Native include/exclude filters.
    #[serde(default)]
    pub filtering: FilteringConfig,
    /// Channel numbering.
    #[serde(default)]
    pub numbering: NumberingConfig,
    /// Memory-pressure thresholds.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// The spill store: tiers, compression, spill directory.
    #[serde(default)]
    pub store: StoreConfig,
    /// The seed's plugin section.
    #[serde(default)]
    pub proxy_generation: ProxyGeneration,
    /// Per-plugin settings, `[plugins.<name>]`, passed to `get_config`.
    #[serde(default)]
    pub plugins: BTreeMap<String, BTreeMap<String, ConfigValue>>,
    /// The long-running `serve` mode.
    #[serde(default)]
    pub serve: ServeConfig,
    /// The directory of the config file (relative paths were resolved
    /// against it); `None` for a config built from text or in code.
    #[serde(skip)]
    base_directory: Option<PathBuf>,
    /// The native rules, parsed once when the file was read.
    #[serde(skip)]
    native_rules: Option<std::sync::Arc<crate::native::NativeRules>>,
}

impl Config {
    /// Reads and checks a config file; relative paths in it are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, wrong types, unknown keys, bad values.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::io(path, error))?;
        let mut config = Config::from_toml(&text).map_err(|error| error.in_config_file(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses TOML text (paths stay as written).
    ///
    /// # Errors
    /// TOML syntax, wrong types, unknown keys, bad values — with line, column
    /// and key path.
    pub fn from_toml(text: &str) -> Result<Config> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let inner = error.into_inner();
            let location = inner.span().map(|span| line_column(text, span.start));
            Error::from(ErrorKind::Config {
                path: None,
                location,
                key: (key != "." && !key.is_empty()).then_some(key),
                message: inner.message().to_string(),
            })
        })?;
        config.validate()?;
        let mut config = config;
        config.native_rules = Some(std::sync::Arc::new(crate::native::NativeRules::parse(
            &config,
        )?));
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        for (index, source) in self.sources.iter().enumerate() {
            crate::inputs::SourceSpec::from_config(source)
                .map_err(|message| Error::config_key(format!("sources[{index}]"), message))?;
        }
        if !(0.0..=1.0).contains(&self.last_good.max_shrink) {
            return Err(Error::config_key(
                "last_good.max_shrink",
                "must be a share between 0.0 and 1.0 (0.5 = refuse a source that lost more than \
                 half of its channels; 1.0 = never refuse one for shrinking)",
            ));
        }
        if !(1..=19).contains(&self.store.zstd_level) {
            return Err(Error::config_key(
                "store.zstd_level",
                format!(
                    "{} is not a zstd level: use 1 (fast) to 19 (small)",
                    self.store.zstd_level
                ),
            ));
        }
        if self.store.disk_from.0 < self.store.compress_from.0 {
            return Err(Error::config_key(
                "store.disk_from",
                "must not be below store.compress_from (data is compressed before it spills)",
            ));
        }
        if let Some(redis) = &self.store.redis {
            redis.check()?;
        }
        if let Some(s3) = &self.store.s3 {
            s3.settings()?;
        }
        let spill_target_missing = match self.store.spill_to {
            SpillTo::Disk => None,
            SpillTo::Redis => self.store.redis.is_none().then_some("[store.redis]"),
            SpillTo::S3 => self.store.s3.is_none().then_some("[store.s3]"),
        };
        if let Some(section) = spill_target_missing {
            return Err(Error::config_key(
                "store.spill_to",
                format!("spills to a backend that is not configured: add a {section} section"),
            ));
        }
        if self.pipeline.batch_size == 0 {
            return Err(Error::config_key(
                "pipeline.batch_size",
                "must be at least 1",
            ));
        }
        let m = &self.memory;
        let ordered = [m.moderate, m.high, m.critical, m.emergency];
        if ordered.iter().any(|t| !(0.0..=1.0).contains(t))
            || ordered.windows(2).any(|pair| pair[0] > pair[1])
        {
            return Err(Error::config_key(
                "memory",
                "thresholds must be fractions between 0 and 1 with \
                 moderate <= high <= critical <= emergency",
            ));
        }
        let plugins = &self.proxy_generation.wasm_plugins;
        if plugins.max_memory_per_plugin < (2 << 20) {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.max_memory_per_plugin",
                "must be at least 2MB: an SDK plugin's stack and arena alone take about 1.3 MiB",
            ));
        }
        if plugins.timeout_seconds == 0 {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.timeout_seconds",
                "must be at least 1",
            ));
        }
        if plugins.fuel_per_call == 0 {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.fuel_per_call",
                "must be at least 1",
            ));
        }
        crate::runtime::check_allowlist(&plugins.security.allowed_host_functions)?;
        for key in &plugins.security.trusted_keys {
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::config_key(
                    "proxy_generation.wasm_plugins.security.trusted_keys",
                    format!(
                        "`{key}` is not an ed25519 public key: expected 64 hex digits, as \
                         printed by `m3u-plugin-host keygen`"
                    ),
                ));
            }
        }
        if plugins.security.require_signatures && plugins.security.trusted_keys.is_empty() {
            return Err(Error::config_key(
                "proxy_generation.wasm_plugins.security.require_signatures",
                "require_signatures = true needs at least one key in trusted_keys",
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.as_os_str() != "-" && path.is_relative() {
                *path = base.join(&*path);
            }
        };
        for source in &mut self.sources {
            if let Some(path) = &mut source.path {
                resolve(path);
            }
        }
        resolve(&mut self.output.path);
        if let Some(path) = &mut self.last_good.directory {
            resolve(path);
        }
        if let Some(path) = &mut self.serve.logo_cache_directory {
            resolve(path);
        }
        self.base_directory = Some(base.to_path_buf());
        resolve(&mut self.proxy_generation.wasm_plugins.plugin_directory);
        if let Some(path) = &mut self.store.spill_directory {
            resolve(path);
        }
        if let Some(path) = &mut self.store.zstd_dictionary {
            resolve(path);
        }
    }

    /// The directory of the sources' last good copies, if one is kept:
    /// `[last_good] directory`; by default `<output>.last-good/` beside an
    /// output file, or `last-good/` beside the config file when the output
    /// is standard output; none for a config built from text without a
    /// `directory`, or with `enabled = false`.
    pub fn last_good_directory(&self) -> Option<PathBuf> {
        if !self.last_good.enabled {
            return None;
        }
        if let Some(directory) = &self.last_good.directory {
            return Some(directory.clone());
        }
        let base = self.base_directory.as_deref()?;
        let output = &self.output.path;
        Some(match (output.parent(), output.file_name()) {
            (Some(parent), Some(name)) if output.as_os_str() != "-" => {
                let mut directory = name.to_os_string();
                directory.push(".last-good");
                parent.join(directory)
            }
            _ => base.join("last-good"),
        })
    }

    /// This instance's name in Redis claims: `[store.redis] instance`, by
    /// default the host name, the configuration's directory and the output
    /// path (stable across runs, different for another instance).
    pub fn redis_instance(&self) -> String {
        if let Some(instance) = self.store.redis.as_ref().and_then(|r| r.instance.clone()) {
            return instance;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        let base = self
            .base_directory()
            .map(|dir| dir.display().to_string())
            .unwrap_or_default();
        format!("{host}:{base}:{}", self.output.path.display())
    }

    /// The directory of the configuration file (`None` for a config built
    /// from text).
    pub fn base_directory(&self) -> Option<&Path> {
        self.base_directory.as_deref()
    }

    /// Where `serve` keeps downloaded logos, if anywhere: `[serve]
    /// logo_cache_directory`, by default `logo-cache/` beside the config
    /// file; none with `logo_cache = false` or for a config built from text
    /// without a directory.
    pub fn logo_cache_directory(&self) -> Option<PathBuf> {
        if !self.serve.logo_cache {
            return None;
        }
        self.serve.logo_cache_directory.clone().or_else(|| {
            self.base_directory
                .as_ref()
                .map(|base| base.join("logo-cache"))
        })
    }

    /// The native rules (`[mapping]`, `[filtering]`): those parsed when the
    /// file was read, or parsed now for a configuration built in code (or
    /// changed since).
    ///
    /// # Errors
    /// A rule that does not parse, naming its key.
    pub fn native_rules(&self) -> Result<std::sync::Arc<crate::native::NativeRules>> {
        match &self.native_rules {
            Some(rules) if rules.parsed_from(self) => Ok(rules.clone()),
            _ => crate::native::NativeRules::parse(self).map(std::sync::Arc::new),
        }
    }

    /// Config values of every plugin as text, for `get_config`.
    pub fn plugin_settings(&self) -> crate::runtime::PluginSettings {
        self.plugins
            .iter()
            .map(|(plugin, values)| {
                let values = values
                    .iter()
                    .map(|(key, value)| (key.clone(), value.to_string()))
                    .collect();
                (plugin.clone(), values)
            })
            .collect()
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_location_and_path() {
        let text = "[proxy_generation.wasm_plugins]\nenabled = true\ntimeout_secs = 3\n";
        let error = Config::from_toml(text).unwrap_err();
        let ErrorKind::Config {
            location,
            key,
            message,
            ..
        } = error.kind()
        else {
            panic!("not a config error: {error}")
        };
        assert_eq!(*location, Some((3, 1)));
        assert_eq!(
            key.as_deref(),
            Some("proxy_generation.wasm_plugins.timeout_secs")
        );
        assert!(
            message.contains("unknown field `timeout_secs`"),
            "{message}"
        );
        assert!(
            message.contains("timeout_seconds"),
            "lists the known keys: {message}"
        );
    }

    #[test]
    fn wrong_types_and_bad_sizes_name_the_key() {
        let error = Config::from_toml("[proxy_generation.wasm_plugins]\ntimeout_seconds = \"x\"\n")
            .unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(error.to_string().contains("timeout_seconds"), "{error}");
        let error = Config::from_toml(
            "[proxy_generation.wasm_plugins]\nmax_memory_per_plugin = \"64 parsecs\"\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("max_memory_per_plugin"),
            "{error}"
        );
        assert!(error.to_string().contains("unknown size unit"), "{error}");
    }

    #[test]
    fn unknown_host_functions_and_bad_rules_are_refused() {
        let error = Config::from_toml(
            "[proxy_generation.wasm_plugins.security]\nallowed_host_functions = [\"fd_write\"]\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("known: log"), "{error}");
        let error = Config::from_toml(
            "[[filtering.filters]]\naction = \"include\"\nexpression = 'channel_name frobs \"x\"'\n",
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("filtering.filters[0].expression"),
            "{error}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let mut config =
            Config::from_toml("[[sources]]\npath = \"a.m3u\"\n[output]\npath = \"-\"\n").unwrap();
        config.resolve_paths(Path::new("/etc/m3u"));
        assert_eq!(
            config.sources[0].path.as_deref(),
            Some(Path::new("/etc/m3u/a.m3u"))
        );
        assert_eq!(config.output.path, Path::new("-"));
        assert_eq!(
            config.proxy_generation.wasm_plugins.plugin_directory,
            Path::new("/etc/m3u/./plugins")
        );
    }
}
