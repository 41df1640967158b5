//! Test plugin: a filter that keeps channels whose name does not contain
//! `[Geo-blocked]`, but traps (unreachable) on any batch holding a channel
//! whose name contains the configured `trap_on` text. Used to prove that a
//! failing plugin's batch is re-run by the next strategy with nothing lost.
//! It is also a mapper that changes nothing and traps the same way, so it
//! can fail behind another mapper in a chained strategy.
use m3u_proxy_plugin_sdk::prelude::*;

#[derive(Default)]
struct FlakyFilter {
    trap_on: String,
}

impl Plugin for FlakyFilter {
    const DESCRIPTION: &'static str = "Traps on batches containing `trap_on` (tests only)";
    const READS: FieldSet = FieldSet::of(&[Field::ChannelName]);
    // Whether it traps depends on the batch alone, so workers may run it.
    const PARALLEL_SAFE: bool = true;

    fn init(&mut self) -> Result<(), PluginError> {
        self.trap_on = config::get_or("trap_on", "(240p)");
        Ok(())
    }

    fn as_filter(&mut self) -> Option<&mut dyn Filter> {
        Some(self)
    }

    fn as_mapper(&mut self) -> Option<&mut dyn Mapper> {
        Some(self)
    }
}

impl Mapper for FlakyFilter {
    fn map<'a>(
        &mut self,
        _ctx: &StageContext<'_>,
        channel: ChannelRef<'a>,
        _patches: &mut Patches<'a>,
    ) {
        if channel.name().contains(self.trap_on.as_str()) {
            trap()
        }
    }
}

impl Filter for FlakyFilter {
    fn keep(&mut self, _ctx: &StageContext<'_>, channel: ChannelRef<'_>) -> bool {
        if channel.name().contains(self.trap_on.as_str()) {
            trap()
        }
        !channel.name().contains("[Geo-blocked]")
    }
}

/// A Wasm trap (`unreachable`) in the plugin; built natively (a workspace
/// `cargo test`), where there is no Wasm, a panic stands in for it.
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    panic!("flaky_filter: trap");
}

export_plugin!(FlakyFilter, "flaky_filter");
