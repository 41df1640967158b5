//! Keeps every channel. It reads no field, so the host sends it only ids:
//! this is the cheapest possible plugin stage, used to measure call overhead.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct Passthrough;

impl Plugin for Passthrough {
    const DESCRIPTION: &'static str = "Keeps every channel";
    const READS: FieldSet = FieldSet::NONE;
    const PARALLEL_SAFE: bool = true;

    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        Some(self)
    }
}

impl Filter for Passthrough {}

export_plugin!(Passthrough, "passthrough");
