//! Test plugin: a filter that, on every batch, allocates 64 KiB buffers
//! through the guest's own allocator (Rust's default for
//! `wasm32-unknown-unknown`) and keeps them, without end. The allocator grows
//! linear memory with `memory.grow`; once that would pass the host's
//! `max_memory_per_plugin` the host traps the call, and it fails with
//! `MemoryLimit` instead of the allocator's own out-of-memory abort. Used by
//! the hostile-plugin corpus (`tests/integration/hostile.rs`).
use m3u_proxy_plugin_sdk::prelude::*;

/// Bytes per allocation: large enough that the limit is reached in a few
/// dozen steps, small enough that each one needs a `memory.grow`.
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct AllocBomb {
    /// Everything allocated so far; kept so no allocation can be elided.
    hoard: Vec<Vec<u8>>,
}

impl Plugin for AllocBomb {
    const DESCRIPTION: &'static str = "Allocates until memory runs out (tests only)";
    const READS: FieldSet = FieldSet::NONE;

    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        Some(self)
    }
}

impl Filter for AllocBomb {
    fn filter_batch<'a>(
        &mut self,
        _ctx: &StageContext<'_>,
        _batch: &'a Batch<'a>,
        _keep: &mut KeepMask,
    ) {
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            chunk.push(1u8);
            self.hoard.push(chunk);
        }
    }
}

export_plugin!(AllocBomb, "alloc_bomb");
