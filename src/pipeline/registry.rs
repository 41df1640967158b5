//! The plugin registry: loading every module of `plugin_directory`
//! (validated, signature-checked, instantiated, initialised), and hot
//! reload between runs.

use std::io::Read;
use std::path::{Path, PathBuf};

use m3u_proxy_plugin_abi::Stage;

use super::strategy::NativeStrategy;
use super::{Pipeline, PluginSlot};
use crate::runtime::PluginRuntime;
use crate::{Error, ErrorKind, Result};

impl Pipeline {
    pub(super) fn load_plugins(&mut self) -> Result<()> {
        let settings = &self.config.proxy_generation.wasm_plugins;
        if !settings.enabled {
            return Ok(());
        }
        let security = &settings.security;
        if security.allow_network_access || security.allow_file_system_access {
            log::warn!(
                "allow_network_access / allow_file_system_access are set, but no host function \
                 offers network or file access: plugins still get neither"
            );
        }
        if !settings.fuel_metering {
            log::warn!(
                "fuel_metering = false: plugins run without fuel budgets or wall-clock timeouts"
            );
        }
        let runtime =
            PluginRuntime::new(settings.runtime_limits(), &security.allowed_host_functions)?;
        let directory = settings.plugin_directory.clone();
        let wants_plugins = Stage::ALL.iter().any(|&stage| {
            settings
                .strategies
                .for_stage(stage)
                .iter()
                .any(|name| NativeStrategy::from_name(name).is_none())
        });
        self.runtime = Some(runtime);
        match plugin_files(&directory) {
            Ok(files) => {
                for path in files {
                    self.load_file(path);
                }
                Ok(())
            }
            Err(error) if !wants_plugins => {
                log::debug!("no plugins loaded from {}: {error}", directory.display());
                Ok(())
            }
            Err(error) => Err(Error::config_key(
                "proxy_generation.wasm_plugins.plugin_directory",
                format!(
                    "cannot read plugin directory {}: {error}; create it, or build the \
                     example plugins with `cargo build`",
                    directory.display()
                ),
            )),
        }
    }

    /// Validates, instantiates and initialises one plugin file.
    fn instantiate_file(&self, path: &Path) -> Result<PluginSlot> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::config("wasm plugins are disabled"))?;
        let stamp = file_stamp(path).map_err(|error| Error::io(path, error))?;
        let bytes = read_module(path, runtime.limits().max_module_bytes)?;
        let signature = crate::signing::check_plugin(
            &bytes,
            path,
            &self.config.proxy_generation.wasm_plugins.security,
        )?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let compiled = runtime.compile(&bytes)?;
        let instance = runtime.instantiate(&compiled, &stem, &self.config.plugin_settings())?;
        let mut slot = PluginSlot::new(instance, path.to_path_buf());
        slot.stamp = stamp;
        slot.signature = signature;
        slot.compiled = Some(compiled);
        Ok(slot)
    }

    /// Loads a file that is not loaded yet; a failure is reported and kept.
    fn load_file(&mut self, path: PathBuf) {
        let loaded = self.instantiate_file(&path).and_then(|slot| {
            let name = slot.name().to_string();
            match self.plugins.iter().any(|other| other.name() == name) {
                true => Err(Error::config(format!(
                    "a plugin named `{name}` is already loaded"
                ))),
                false => Ok(slot),
            }
        });
        match loaded {
            Ok(slot) => {
                log::info!(
                    "loaded plugin `{}` {} from {}",
                    slot.name(),
                    slot.instance.info().version,
                    path.display()
                );
                self.failed_files.remove(&path);
                self.load_problems.remove(&path);
                self.plugins.push(slot);
            }
            Err(error) => self.record_load_failure(&path, &error),
        }
    }

    fn record_load_failure(&mut self, path: &Path, error: &Error) {
        log::warn!("plugin {} not loaded: {error}", path.display());
        self.load_problems
            .insert(path.to_path_buf(), error.to_string());
        if let Some(stem) = path.file_stem() {
            self.failed_plugin_names
                .insert(stem.to_string_lossy().into_owned());
        }
        if let Ok(stamp) = file_stamp(path) {
            self.failed_files.insert(path.to_path_buf(), stamp);
        }
    }

    /// Hot reload (`enable_hot_reload`): picks up plugin files that changed,
    /// appeared or disappeared since the last run. A changed file is fully
    /// validated before it replaces the running version; a broken one leaves
    /// the old version in place and says why. Runs only between pipeline
    /// runs, so no run mixes versions. A replaced plugin starts with fresh
    /// health counters.
    pub fn reload_changed_plugins(&mut self) {
        let directory = self
            .config
            .proxy_generation
            .wasm_plugins
            .plugin_directory
            .clone();
        if self.runtime.is_none() {
            return;
        }
        let mut index = 0;
        while index < self.plugins.len() {
            let path = self.plugins[index].path.clone();
            match file_stamp(&path) {
                Err(_) => {
                    log::warn!(
                        "plugin file {} was removed: unloading `{}`",
                        path.display(),
                        self.plugins[index].name()
                    );
                    self.plugins.remove(index);
                    self.load_problems.remove(&path);
                    continue;
                }
                Ok(stamp) if stamp != self.plugins[index].stamp => {
                    match self.instantiate_file(&path) {
                        Ok(slot) => {
                            log::info!(
                                "reloaded plugin `{}` {} from {}",
                                slot.name(),
                                slot.instance.info().version,
                                path.display()
                            );
                            self.plugins[index] = slot;
                            self.load_problems.remove(&path);
                        }
                        Err(error) => {
                            log::warn!(
                                "changed plugin {} is refused, `{}` keeps running the \
                                 previous version: {error}",
                                path.display(),
                                self.plugins[index].name()
                            );
                            self.load_problems
                                .insert(path.clone(), format!("{error} (previous version kept)"));
                            // Do not retry this exact file on every run.
                            self.plugins[index].stamp = stamp;
                        }
                    }
                }
                Ok(_) => {}
            }
            index += 1;
        }
        let Ok(files) = plugin_files(&directory) else {
            return;
        };
        // Problems of files that are gone are gone too.
        self.load_problems.retain(|path, _| files.contains(path));
        self.failed_files.retain(|path, _| files.contains(path));
        for path in files.iter().cloned() {
            let known = self.plugins.iter().any(|slot| slot.path == path);
            let failed_unchanged = self
                .failed_files
                .get(&path)
                .is_some_and(|stamp| file_stamp(&path).is_ok_and(|now| now == *stamp));
            if !known && !failed_unchanged {
                self.load_file(path);
            }
        }
    }
}

/// What identifies one version of a plugin: the module's stamp, with its
/// detached signature as the companion ([`crate::watch`]).
pub type FileStamp = crate::watch::Stamp;

fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    crate::watch::stamp_with_companion(path, &crate::signing::signature_path(path))
}

/// Reads a plugin file without ever holding more than `limit + 1` bytes of
/// it: a larger file is refused from its size (a file that grows meanwhile
/// is still cut there, and refused by `PluginRuntime::compile`).
fn read_module(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let file = crate::watch::open_regular_file(path).map_err(|error| Error::io(path, error))?;
    let size = file
        .metadata()
        .map_err(|error| Error::io(path, error))?
        .len();
    if size > limit as u64 {
        return Err(ErrorKind::InvalidModule(format!(
            "module is {size} bytes, more than the limit of {limit} bytes"
        ))
        .into());
    }
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::io(path, error))?;
    Ok(bytes)
}

/// The `*.wasm` files of a directory, sorted.
fn plugin_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    crate::watch::files_with_extension(directory, "wasm")
}

/// Failures that stop guest code in the middle of its work, possibly with
/// its heap half-updated: the instance is replaced before its next call.
pub(super) fn aborted_mid_call(error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Trap { .. }
            | ErrorKind::OutOfFuel { .. }
            | ErrorKind::Timeout { .. }
            | ErrorKind::MemoryLimit { .. }
            | ErrorKind::ArenaOverflow { .. }
    )
}
