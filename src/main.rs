//! `m3u-plugin-host`: runs the playlist pipeline from a TOML file and
//! inspects plugins. `anyhow` lives here, at the binary's edge, only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use m3u_plugin_host::config::{parse_level, Config};
use m3u_plugin_host::pipeline::{M3uSink, Pipeline, Source};
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

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: read sources, run the five stages, write M3U.
    Run {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Input playlist(s), `-` for stdin; replaces the config's [[sources]].
        #[arg(long, short)]
        input: Vec<PathBuf>,
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
    },
    /// Plugin tools.
    Plugins {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
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
    let quiet = matches!(cli.command, Command::Run { quiet: true, .. });
    let default_level = if quiet { "warn" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp(None)
        .init();
    match run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            input,
            output,
            stats_json,
            memory_pressure,
            quiet,
        } => run(&config, input, output, stats_json, memory_pressure, quiet),
        Command::Plugins {
            command: PluginCommand::Inspect { file, config, json },
        } => inspect(&file, config.as_deref(), json),
    }
}

fn run(
    config_path: &Path,
    inputs: Vec<PathBuf>,
    output: Option<PathBuf>,
    stats_json: Option<PathBuf>,
    memory_pressure: Option<m3u_plugin_host::abi::MemoryPressureLevel>,
    quiet: bool,
) -> Result<()> {
    let mut config = Config::from_file(config_path)?;
    if let Some(output) = output {
        config.output.path = output;
    }
    let output_path = config.output.path.clone();
    let mut pipeline = Pipeline::new(config)?;
    if memory_pressure.is_some() {
        pipeline.force_memory_pressure(memory_pressure);
    }
    let sources = if inputs.is_empty() {
        pipeline.configured_sources()?
    } else {
        inputs
            .iter()
            .map(|path| Source::open(path))
            .collect::<m3u_plugin_host::Result<Vec<_>>>()?
    };
    let stats = if output_path.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        pipeline.run(sources, &mut M3uSink::new(stdout))?
    } else {
        write_atomically(&output_path, |file| {
            Ok(pipeline.run(sources, &mut M3uSink::new(file))?)
        })?
    };
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
/// reader never sees a half-written playlist.
fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<T>,
) -> Result<T> {
    let file_name = path
        .file_name()
        .with_context(|| format!("output path {} has no file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let file =
        std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let result = write(&mut writer).and_then(|value| {
        writer.flush()?;
        Ok(value)
    });
    match result {
        Ok(value) => {
            std::fs::rename(&temp, path)
                .with_context(|| format!("moving output into place at {}", path.display()))?;
            Ok(value)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            Err(error)
        }
    }
}

fn inspect(file: &Path, config_path: Option<&Path>, json: bool) -> Result<()> {
    let (limits, allowed, settings) = match config_path {
        Some(path) => {
            let config = Config::from_file(path)?;
            let plugins = &config.proxy_generation.wasm_plugins;
            (
                plugins.runtime_limits(),
                plugins.security.allowed_host_functions.clone(),
                config.plugin_settings(),
            )
        }
        None => (
            RuntimeLimits::default(),
            m3u_plugin_host::abi::host_functions::ALL
                .map(String::from)
                .to_vec(),
            PluginSettings::new(),
        ),
    };
    let runtime = PluginRuntime::new(limits, &allowed)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
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
    let stages: Vec<&str> = m3u_plugin_host::abi::Stage::ALL
        .iter()
        .filter(|stage| info.supports(**stage))
        .map(|stage| stage.name())
        .collect();
    let reads: Vec<&str> = m3u_plugin_host::abi::Field::ALL
        .iter()
        .filter(|field| info.reads.contains(**field))
        .map(|field| field.name())
        .collect();
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "size_bytes": compiled.size_bytes(),
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
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} {} — {}", info.name, info.version, info.description);
        println!(
            "  file:        {} ({} bytes)",
            file.display(),
            compiled.size_bytes()
        );
        println!("  abi version: {}", m3u_plugin_host::abi::ABI_VERSION);
        println!("  stages:      {}", stages.join(", "));
        println!(
            "  reads:       {}",
            if reads.is_empty() {
                "nothing (ids only)".into()
            } else {
                reads.join(", ")
            }
        );
        println!("  max pressure: {}", info.memory.max_pressure.name());
        println!("  arena:       {} bytes", instance.arena_capacity());
        println!("  init fuel:   {}", instance.stats().fuel_consumed);
        println!("  imports:     {}", compiled.imports().join(", "));
        println!("  exports:     {}", compiled.exports().join(", "));
    }
    Ok(())
}
