//! Native (in-process, Rust) implementations of the pipeline stages.
//!
//! These are the strategies the host always has: they need no plugin, are
//! compiled once from the configuration and run per channel, so they serve as
//! the fallback when a plugin fails and as the only strategy at
//! [`MemoryPressureLevel::Emergency`](crate::abi::MemoryPressureLevel::Emergency).
//!
//! - [`filter`]: upstream m3u-proxy's filter expression language and the
//!   include/exclude rule set built from it;
//! - [`dedup`]: duplicate removal by tvg-id, name or URL, streaming or over
//!   the whole playlist (`[filtering.dedup]`);
//! - [`mapping`]: data mapping rules (`[<condition>] SET <field> = "value"`);
//! - [`numbering`]: channel numbering, streaming and in-memory variants.

pub mod dedup;
pub mod filter;
pub mod mapping;
pub mod numbering;
