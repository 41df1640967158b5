//! `m3u-plugin-host`: runs the playlist pipeline from a TOML file and
//! inspects plugins. `anyhow` lives here, at the binary's edge, only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use m3u_plugin_host::config::{parse_level, Config};
use m3u_plugin_host::inputs::{Inputs, SourceSpec};
use m3u_plugin_host::pipeline::{M3uSink, Pipeline};
use m3u_plugin_host::runtime::{PluginRuntime, PluginSettings, RuntimeLimits};

#[derive(Parser)]
#[command(
    name = "m3u-plugin-host",
    version,
    about = "IPTV playlist pipeline with sandboxed WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Prints a line to standard output. A closed pipe (`… | head`) ends the
/// process quietly, as command-line tools do; `println!` would panic there,
/// and the release build aborts on a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        if let Err(error) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: writing to standard output: {error}");
            std::process::exit(1);
        }
    }};
}

/// `m3u-plugin-host run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// Input playlist(s): files, http:// URLs, `-` for stdin; replaces
    /// the config's [[sources]].
    #[arg(long, short)]
    input: Vec<PathBuf>,
    /// Fail (exit 1, the output left as it was) rather than write a
    /// playlist with a stale source; as `[last_good] fail_on_stale`.
    #[arg(long)]
    fail_on_stale: bool,
    /// Output file, `-` for stdout; replaces the config's [output].
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Write the run's statistics as JSON to this file.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Pretend this memory pressure (optimal, moderate, high, critical, emergency).
    #[arg(long, value_parser = parse_level)]
    memory_pressure: Option<m3u_plugin_host::abi::MemoryPressureLevel>,
    /// No summary, and only warnings and errors in the log (unless RUST_LOG is set).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: read sources, run the five stages, write M3U.
    Run(RunArgs),
    /// Serve the playlist over HTTP, regenerating it when sources or plugins change.
    Serve {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Input playlist(s): files or http:// URLs; replaces the config's
        /// [[sources]].
        #[arg(long, short)]
        input: Vec<PathBuf>,
        /// Address to listen on; replaces `[serve] listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create an ed25519 key pair for signing plugins.
    Keygen {
        /// Where to write the secret key (refuses to overwrite).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Plugin tools.
    Plugins {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Spill store tools.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Train a zstd dictionary from your own playlists, for
    /// `[store] zstd_dictionary` (with `compression = "zstd"`).
    TrainDictionary {
        /// Playlist(s) to learn from (a few thousand channels or more).
        #[arg(long, short, required = true)]
        input: Vec<PathBuf>,
        /// Where to write the dictionary.
        #[arg(long, short)]
        out: PathBuf,
        /// Largest dictionary size in bytes.
        #[arg(long, default_value_t = 64 * 1024)]
        max_size: usize,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load every plugin of the config's plugin_directory and list them.
    List {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sign a plugin: writes `<file>.sig` beside it.
    Sign {
        /// The `.wasm` file.
        file: PathBuf,
        /// Secret key file from `keygen`.
        #[arg(long, short)]
        key: PathBuf,
    },
    /// Check a plugin's signature against the config's trusted_keys.
    Verify {
        /// The `.wasm` file.
        file: PathBuf,
        /// The TOML configuration with trusted_keys.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a plugin and show its info, imports and exports.
    Inspect {
        /// The `.wasm` file.
        file: PathBuf,
        /// Use this config's limits and allowlist (default: the built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `-q` keeps a run to warnings and errors unless RUST_LOG says otherwise.
    let quiet = matches!(&cli.command, Command::Run(args) if args.quiet);
    let default_level = if quiet { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp(None)
        .init();
    // Plugin calls pause every fuel slice, and a slice is cut to what the
    // free native stack can take (m3u_plugin_host::runtime::
    // stack_safe_fuel_slice): a large stack makes pauses rare. Only the
    // pages actually used are ever touched.
    let worker = std::thread::Builder::new()
        .name("m3u-plugin-host".into())
        .stack_size(m3u_plugin_host::PIPELINE_THREAD_STACK)
        .spawn(move || run_cli(cli));
    let outcome = match worker {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker thread panicked"))),
        Err(error) => Err(anyhow::anyhow!("cannot start the worker thread: {error}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            let interrupted = error
                .downcast_ref::<m3u_plugin_host::Error>()
                .is_some_and(|error| {
                    matches!(error.kind(), m3u_plugin_host::ErrorKind::Interrupted)
                });
            // 128 + SIGINT, as shells report a process stopped by Ctrl-C.
            ExitCode::from(if interrupted { 130 } else { 1 })
        }
    }
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Plugins {
            command: PluginCommand::Inspect { file, config, json },
        } => inspect(&file, config.as_deref(), json),
        Command::Plugins {
            command: PluginCommand::List { config, json },
        } => list(&config, json),
        Command::Plugins {
            command: PluginCommand::Sign { file, key },
        } => {
            let signature = m3u_plugin_host::signing::sign_file(&file, &key)?;
            say!("wrote {}", signature.display());
            Ok(())
        }
        Command::Plugins {
            command: PluginCommand::Verify { file, config },
        } => {
            let config = Config::from_file(&config)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let security = &config.proxy_generation.wasm_plugins.security;
            match m3u_plugin_host::signing::check_plugin(&bytes, &file, security)? {
                m3u_plugin_host::signing::SignatureState::Signed { key } => {
                    say!("{}: valid signature by trusted key {key}", file.display())
                }
                m3u_plugin_host::signing::SignatureState::Unsigned => {
                    say!(
                        "{}: unsigned (allowed: require_signatures = false)",
                        file.display()
                    )
                }
            }
            Ok(())
        }
        Command::Store {
            command:
                StoreCommand::TrainDictionary {
                    input,
                    out,
                    max_size,
                },
        } => {
            let mut channels = Vec::new();
            for path in &input {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                channels.extend(m3u_plugin_host::m3u::read_all(&text, 0).1);
            }
            let dictionary = m3u_plugin_host::store::train_dictionary(&channels, max_size)?;
            std::fs::write(&out, &dictionary)
                .with_context(|| format!("writing {}", out.display()))?;
            say!(
                "{} byte dictionary from {} channels written to {}; set [store] compression = \"zstd\" and zstd_dictionary = \"{}\"",
                dictionary.len(),
                channels.len(),
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Keygen { out } => {
            let public = m3u_plugin_host::signing::write_keypair(&out)?;
            say!("secret key written to {}", out.display());
            say!("public key (add it to trusted_keys): {public}");
            Ok(())
        }
        Command::Serve {
            config,
            input,
            listen,
        } => {
            let config = Config::from_file(&config)?;
            let mut options = m3u_plugin_host::serve::ServeOptions::from_config(&config);
            options.inputs = input;
            if let Some(listen) = listen {
                options.listen = listen;
            }
            m3u_plugin_host::serve::serve_forever(config, options)?;
            Ok(())
        }
    }
}

fn list(config_path: &Path, json: bool) -> Result<()> {
    let config = Config::from_file(config_path)?;
    let pipeline = Pipeline::new(config)?;
    let plugins: Vec<serde_json::Value> = pipeline
        .plugins()
        .iter()
        .map(|slot| {
            let info = slot.instance.info();
            let stats = slot.total_stats();
            serde_json::json!({
                "name": info.name,
                "version": info.version,
                "file": slot.path.display().to_string(),
                "stages": stage_names(info),
                "min_memory_bytes": info.memory.min_bytes,
                "recommended_memory_bytes": info.memory.recommended_bytes,
                "max_pressure": info.memory.max_pressure.name(),
                "signature": slot.signature.label(),
                "circuit_open": slot.disabled,
                "calls": stats.calls,
                "fuel": stats.fuel_consumed,
                "failures": slot.failures,
                "last_error": slot.last_error,
            })
        })
        .collect();
    let idle: Vec<serde_json::Value> = pipeline
        .idle_plugins()
        .iter()
        .map(|idle| {
            serde_json::json!({
                "file": idle.path.display().to_string(),
                "signature": idle.signature.label(),
            })
        })
        .collect();
    if json {
        let report = serde_json::json!({
            "plugins": plugins,
            "idle": idle,
            "not_loaded": pipeline.load_errors(),
        });
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for plugin in &plugins {
        say!(
            "{} {}  stages: {}  memory: {} B min, {} B recommended, up to {} pressure  \
             signature: {}  health: {} (init fuel {})",
            plugin["name"].as_str().unwrap_or_default(),
            plugin["version"].as_str().unwrap_or_default(),
            plugin["stages"]
                .as_array()
                .map(|s| s
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            plugin["min_memory_bytes"],
            plugin["recommended_memory_bytes"],
            plugin["max_pressure"].as_str().unwrap_or_default(),
            plugin["signature"].as_str().unwrap_or_default(),
            if plugin["circuit_open"] == true {
                "switched off"
            } else {
                "ok"
            },
            plugin["fuel"],
        );
    }
    for plugin in &idle {
        say!(
            "idle: {} (valid, signature: {}; not instantiated, as no strategy names it: \
             `plugins inspect` it to see its name and stages)",
            plugin["file"].as_str().unwrap_or_default(),
            plugin["signature"].as_str().unwrap_or_default(),
        );
    }
    for error in pipeline.load_errors() {
        say!("not loaded: {error}");
    }
    Ok(())
}

fn stage_names(info: &m3u_plugin_host::abi::PluginInfo<'_>) -> Vec<&'static str> {
    m3u_plugin_host::abi::Stage::ALL
        .iter()
        .filter(|stage| info.supports(**stage))
        .map(|stage| stage.name())
        .collect()
}

fn run(args: RunArgs) -> Result<()> {
    let RunArgs {
        config: config_path,
        input: inputs,
        fail_on_stale,
        output,
        stats_json,
        memory_pressure,
        quiet,
    } = args;
    let mut config = Config::from_file(&config_path)?;
    if let Some(output) = output {
        config.output.path = output;
    }
    let fail_on_stale = fail_on_stale || config.last_good.fail_on_stale;
    let inputs = if inputs.is_empty() {
        Inputs::from_config(&config)?
    } else {
        let specs = inputs
            .iter()
            .map(|argument| SourceSpec::from_argument(argument))
            .collect::<m3u_plugin_host::Result<Vec<_>>>()?;
        Inputs::new(specs, &config)
    };
    let output_path = config.output.path.clone();
    let mut pipeline = Pipeline::new(config)?;
    if memory_pressure.is_some() {
        pipeline.force_memory_pressure(memory_pressure);
    }
    // Ctrl-C (or SIGTERM) stops the run between batches: spill files go
    // with the process, the temporary output is removed, the old playlist
    // stays. A second one exits at once.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    let handler = ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    if let Err(error) = handler {
        log::warn!(
            "cannot catch Ctrl-C ({error}): an interrupted run may leave its temporary output"
        );
    }
    pipeline.set_interrupt_flag(interrupted);
    let (sources, reports) = inputs.open()?;
    let stale: Vec<String> = reports
        .iter()
        .filter_map(|report| {
            let reason = report.reason.as_ref()?;
            Some(format!("{}: {reason}", report.name))
        })
        .collect();
    if fail_on_stale && !stale.is_empty() {
        anyhow::bail!(
            "not writing the playlist (--fail-on-stale / [last_good] fail_on_stale): stale \
             source(s), whose last good copy would have been used: {}",
            stale.join("; ")
        );
    }
    let mut stats = if output_path.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        pipeline.run(sources, &mut M3uSink::new(stdout))?
    } else {
        write_atomically(&output_path, |file| {
            Ok(pipeline.run(sources, &mut M3uSink::new(file))?)
        })?
    };
    stats.sources = reports;
    if !quiet {
        eprint!("{}", stats.summary());
    }
    if let Some(path) = stats_json {
        let json = serde_json::to_string_pretty(&stats)?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing stats to {}", path.display()))?;
    }
    Ok(())
}

/// Writes to a temporary file beside `path` and renames it into place, so a
/// reader never sees a half-written playlist. Anything that is not a regular
/// file (`/dev/null`, a FIFO, a terminal) is written in place: renaming over
/// it would replace the device with a file.
fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T>,
) -> Result<T> {
    if std::fs::metadata(path).is_ok_and(|metadata| !metadata.is_file()) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut writer = std::io::BufWriter::new(file);
        let value = write(&mut writer)?;
        writer.flush()?;
        return Ok(value);
    }
    let file_name = path
        .file_name()
        .with_context(|| format!("output path {} has no file name", path.display()))?;
    // A name of its own (`.<name>.<random>.tmp`, created exclusively), so
    // runs writing the same output at once never share a temporary file.
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // What `File::create` gives (0666 less the umask), not tempfile's 0600:
    // a playlist is usually read by another user (a web server, a player).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let (file, temp) = builder
        .tempfile_in(directory)
        .with_context(|| format!("creating a temporary file in {}", directory.display()))?
        .into_parts();
    let mut writer = std::io::BufWriter::new(file);
    // On any error below, dropping `temp` removes the temporary file.
    let value = write(&mut writer)?;
    let file = writer
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)
        .with_context(|| format!("writing {}", temp.display()))?;
    // On disk before it replaces the previous playlist: a crash or power
    // cut after the rename leaves the new file whole, not empty.
    file.sync_all()
        .with_context(|| format!("syncing {}", temp.display()))?;
    temp.persist(path)
        .with_context(|| format!("moving output into place at {}", path.display()))?;
    Ok(value)
}

fn inspect(file: &Path, config_path: Option<&Path>, json: bool) -> Result<()> {
    let (limits, allowed, settings, security) = match config_path {
        Some(path) => {
            let config = Config::from_file(path)?;
            let plugins = &config.proxy_generation.wasm_plugins;
            (
                plugins.runtime_limits(),
                plugins.security.allowed_host_functions.clone(),
                config.plugin_settings(),
                plugins.security.clone(),
            )
        }
        None => (
            RuntimeLimits::default(),
            m3u_plugin_host::abi::host_functions::ALL
                .map(String::from)
                .to_vec(),
            PluginSettings::new(),
            m3u_plugin_host::config::Security::default(),
        ),
    };
    let runtime = PluginRuntime::new(limits, &allowed)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let signature = match m3u_plugin_host::signing::check_plugin(&bytes, file, &security) {
        Ok(state) => state.label().to_string(),
        Err(error) => format!("refused: {error}"),
    };
    let problems = runtime.problems(&bytes);
    if !problems.is_empty() {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        if json {
            let report = serde_json::json!({
                "file": file.display().to_string(),
                "signature": signature,
                "problems": problems,
            });
            say!("{}", serde_json::to_string_pretty(&report)?);
        }
        anyhow::bail!(
            "{} is refused, {} problem{}:\n  - {}",
            file.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  - ")
        );
    }
    let compiled = runtime
        .compile(&bytes)
        .with_context(|| format!("validating {}", file.display()))?;
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let instance = runtime
        .instantiate(&compiled, &stem, &settings)
        .with_context(|| format!("instantiating {}", file.display()))?;
    let info = instance.info();
    let stages = stage_names(info);
    let reads: Vec<&str> = m3u_plugin_host::abi::Field::ALL
        .iter()
        .filter(|field| info.reads.contains(**field))
        .map(|field| field.name())
        .collect();
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "size_bytes": compiled.size_bytes(),
        "signature": signature,
        "abi_version": m3u_plugin_host::abi::ABI_VERSION,
        "name": info.name,
        "version": info.version,
        "description": info.description,
        "author": info.author,
        "stages": stages,
        "reads": reads,
        "max_pressure": info.memory.max_pressure.name(),
        "min_memory_bytes": info.memory.min_bytes,
        "arena_bytes": instance.arena_capacity(),
        "init_fuel": instance.stats().fuel_consumed,
        "imports": compiled.imports(),
        "exports": compiled.exports(),
    });
    if json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        say!("{} {} — {}", info.name, info.version, info.description);
        say!(
            "  file:        {} ({} bytes)",
            file.display(),
            compiled.size_bytes()
        );
        say!("  abi version: {}", m3u_plugin_host::abi::ABI_VERSION);
        say!("  signature:   {signature}");
        say!("  stages:      {}", stages.join(", "));
        say!(
            "  reads:       {}",
            if reads.is_empty() {
                "nothing (ids only)".into()
            } else {
                reads.join(", ")
            }
        );
        say!("  max pressure: {}", info.memory.max_pressure.name());
        say!("  arena:       {} bytes", instance.arena_capacity());
        say!("  init fuel:   {}", instance.stats().fuel_consumed);
        say!("  imports:     {}", compiled.imports().join(", "));
        say!("  exports:     {}", compiled.exports().join(", "));
    }
    Ok(())
}
