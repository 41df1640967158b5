//! The plugin registry: loading the modules of `plugin_directory`, and hot
//! reload between runs.
//!
//! Every file is read (only if regular), signature-checked and validated.
//! Only the plugins a strategy may run are instantiated and initialised: a
//! plugin's name comes from its `m3u_plugin_info`, so the files whose stem
//! is a name some strategy lists (`url-rewriter.wasm` or `url_rewriter.wasm`
//! for `url_rewriter`) are instantiated first, and the others only while a
//! listed name is still not found; the rest stay *idle* (validated, no
//! instance, no memory, their `m3u_init` never run).

use std::collections::HashSet;
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
        let mut runtime =
            PluginRuntime::new(settings.runtime_limits(), &security.allowed_host_functions)?;
        if let Some(redis) = &self.config.store.redis {
            runtime.set_claims_backend(crate::remote::ClaimsBackend::Redis {
                config: Box::new(redis.clone()),
                instance: self.config.redis_instance(),
            });
        }
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
                self.admit_files(files);
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

    /// The plugin names the strategy lists mention (chain members included).
    fn listed_plugin_names(&self) -> HashSet<String> {
        let strategies = &self.config.proxy_generation.wasm_plugins.strategies;
        Stage::ALL
            .iter()
            .flat_map(|&stage| strategies.for_stage(stage))
            .flat_map(|name| name.split(super::strategy::CHAIN_SEPARATOR))
            .filter(|member| NativeStrategy::from_name(member).is_none())
            .map(str::to_string)
            .collect()
    }

    /// Whether a listed name is neither a loaded plugin's nor a failed
    /// file's (whose name is unknown: its stem stands for it).
    fn has_unresolved_name(&self, listed: &HashSet<String>) -> bool {
        listed.iter().any(|name| {
            !self.plugins.iter().any(|slot| slot.name() == name)
                && !self.failed_plugin_names.contains(name)
        })
    }

    /// Loads the files that are neither loaded nor idle-and-unchanged: the
    /// ones a listed name points at first, then the others while a listed
    /// name is unresolved; what is left is validated and kept idle.
    fn admit_files(&mut self, files: Vec<PathBuf>) {
        let listed = self.listed_plugin_names();
        let (named, others): (Vec<PathBuf>, Vec<PathBuf>) = files
            .into_iter()
            .partition(|path| stem_is_listed(path, &listed));
        for path in named {
            self.load_file(path);
        }
        for path in others {
            if self.has_unresolved_name(&listed) {
                self.load_file(path);
            } else if !self.idle.iter().any(|idle| idle.path == path) {
                self.validate_file(path);
            }
        }
    }

    /// Checks a file as loading would (size, signature, shape, imports,
    /// exports, Wasm validation) without instantiating it: it stays idle.
    fn validate_file(&mut self, path: PathBuf) {
        let validated = (|| -> Result<IdlePlugin> {
            let runtime = self
                .runtime
                .as_ref()
                .ok_or_else(|| Error::config("wasm plugins are disabled"))?;
            let stamp = file_stamp(&path).map_err(|error| Error::io(&path, error))?;
            let bytes = read_module(&path, runtime.limits().max_module_bytes)?;
            let signature = crate::signing::check_plugin(
                &bytes,
                &path,
                &self.config.proxy_generation.wasm_plugins.security,
            )?;
            runtime.compile(&bytes)?;
            Ok(IdlePlugin {
                path: path.clone(),
                signature,
                stamp,
            })
        })();
        match validated {
            Ok(idle) => {
                log::debug!(
                    "plugin file {} is valid; no strategy names it, so it is not instantiated",
                    path.display()
                );
                self.failed_files.remove(&path);
                self.load_problems.remove(&path);
                self.idle.push(idle);
            }
            Err(error) => self.record_load_failure(&path, &error),
        }
    }

    /// Loads a file that is not loaded yet; a failure is reported and kept.
    fn load_file(&mut self, path: PathBuf) {
        self.idle.retain(|idle| idle.path != path);
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
        // An idle file that changed or went away is checked again (or
        // forgotten); one that did not stays idle unless a name needs it.
        self.idle
            .retain(|idle| file_stamp(&idle.path).is_ok_and(|now| now == idle.stamp));
        let Ok(files) = plugin_files(&directory) else {
            return;
        };
        // Problems of files that are gone are gone too.
        self.load_problems.retain(|path, _| files.contains(path));
        self.failed_files.retain(|path, _| files.contains(path));
        let candidates: Vec<PathBuf> = files
            .into_iter()
            .filter(|path| {
                let loaded = self.plugins.iter().any(|slot| slot.path == *path);
                let failed_unchanged = self
                    .failed_files
                    .get(path)
                    .is_some_and(|stamp| file_stamp(path).is_ok_and(|now| now == *stamp));
                !loaded && !failed_unchanged
            })
            .collect();
        self.admit_files(candidates);
    }
}

/// A plugin file that passed every check of loading but was not
/// instantiated, because no strategy names it (see the module's doc).
#[derive(Clone, Debug)]
pub struct IdlePlugin {
    /// The file.
    pub path: PathBuf,
    /// Whether it is signed by a trusted key.
    pub signature: crate::signing::SignatureState,
    stamp: FileStamp,
}

/// Whether a file's stem, as written or with `-` read as `_`, is a listed
/// plugin name.
fn stem_is_listed(path: &Path, listed: &HashSet<String>) -> bool {
    let Some(stem) = path.file_stem().map(|stem| stem.to_string_lossy()) else {
        return false;
    };
    listed.contains(stem.as_ref()) || listed.contains(&stem.replace('-', "_"))
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
