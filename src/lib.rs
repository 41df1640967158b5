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
//!
//! Plugin calls run in fuel slices cut to the thread's free native stack
//! ([`runtime::stack_safe_fuel_slice`]); run pipelines on a thread with a
//! large stack, such as [`PIPELINE_THREAD_STACK`], for large slices. Any
//! thread is safe: a call on a small one moves to a fresh stack segment.
#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod inputs;
pub mod m3u;
pub mod memory;
pub mod native;
pub mod pipeline;
pub mod remote;
pub mod runtime;
pub mod serve;
pub mod signing;
pub mod store;
pub mod watch;

pub use error::{Error, ErrorKind, Result};
pub use m3u_proxy_plugin_abi as abi;

/// Stack size of the threads the CLI and `serve` run pipelines on: room for
/// fuel slices of about 500 000 fuel. Reserved address space, not memory:
/// only the pages a call uses are touched.
pub const PIPELINE_THREAD_STACK: usize = 64 << 20;

/// A channel that owns its strings: the host's unit of data.
pub type OwnedChannel = abi::Channel<'static>;
