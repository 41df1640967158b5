//! m3u-plugin-host: a streaming IPTV playlist pipeline whose stages can be
//! replaced or extended by sandboxed WebAssembly plugins.
#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod m3u;
pub mod memory;
pub mod native;
pub mod pipeline;
pub mod runtime;

pub use error::{Error, ErrorKind, Result};
pub use m3u_proxy_plugin_abi as abi;

/// A channel that owns its strings: the host's unit of data.
pub type OwnedChannel = abi::Channel<'static>;
