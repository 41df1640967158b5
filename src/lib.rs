//! m3u-plugin-host: a streaming IPTV playlist pipeline whose stages can be
//! replaced or extended by sandboxed WebAssembly plugins.
//!
//! ```no_run
//! use m3u_plugin_host::config::Config;
//! use m3u_plugin_host::pipeline::{M3uSink, Pipeline, Source};
//!
//! // Parse and check the TOML (line, column and key path on error).
//! let config = Config::from_file("proxy.toml".as_ref())?;
//! // Compile rules, load and validate every plugin of `plugin_directory`.
//! let mut pipeline = Pipeline::new(config)?;
//! // Feed sources, write M3U to any `Write`.
//! let sources = vec![Source::open("provider.m3u".as_ref())?];
//! let stats = pipeline.run(sources, &mut M3uSink::new(std::io::stdout()))?;
//! eprintln!("{}", stats.summary());
//! # Ok::<(), m3u_plugin_host::Error>(())
//! ```
//!
//! The core types, what they cost and how long they live:
//! - [`config::Config`]: plain data, parsed once.
//! - [`pipeline::Pipeline`]: owns the plugin instances (one wasmi `Store`
//!   each) and the compiled rules; build it once, run it many times. `Send`.
//! - [`runtime::PluginRuntime`]: one wasmi `Engine` (fuel on) and the linker
//!   with the allowlisted host functions; cheap to clone, shared.
//! - [`runtime::PluginInstance`]: one instantiated plugin, its memory and
//!   counters; calls are metered by fuel and bounded by a deadline.
//! - [`OwnedChannel`]: one playlist entry with every attribute and companion
//!   line, so a parse → write round trip loses nothing.
//! - [`Error`]: the one error type; match on [`Error::kind`].
#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod m3u;
pub mod memory;
pub mod native;
pub mod pipeline;
pub mod runtime;
pub mod serve;
pub mod signing;

pub use error::{Error, ErrorKind, Result};
pub use m3u_proxy_plugin_abi as abi;

/// A channel that owns its strings: the host's unit of data.
pub type OwnedChannel = abi::Channel<'static>;
